//! Pearson and Spearman correlation with exact, asymptotic and Monte Carlo p-values.

use std::str::FromStr;

use super::coef::{pearson_r, spearman_r};
use super::perm::{permutation_test, PermOptions, Scheme, Statistic};
use super::{clean_pairs, Alternative, NanPolicy};
use crate::error::{CoreError, Result};
use crate::special::{ibeta, t_sf};

/// Largest n for which `exact` enumeration (n! orderings) is allowed.
pub const MAX_EXACT_N: usize = 11;
/// Largest n for which `auto` chooses exact enumeration.
pub const AUTO_EXACT_N: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorrMethod {
    Auto,
    Exact,
    Asymptotic,
    Permutation,
}

impl FromStr for CorrMethod {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "exact" => Ok(Self::Exact),
            "asymptotic" => Ok(Self::Asymptotic),
            "permutation" => Ok(Self::Permutation),
            _ => Err(CoreError::input(format!(
                "method must be \"auto\", \"exact\", \"asymptotic\" or \"permutation\", got {s:?}"
            ))),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct CorrOptions {
    pub method: CorrMethod,
    pub alternative: Alternative,
    pub n_resamples: u64,
    pub seed: u64,
    pub nan_policy: NanPolicy,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CorrResult {
    pub statistic: f64,
    pub pvalue: f64,
    /// The method actually used (`auto` resolved).
    pub method: CorrMethod,
    /// The p-value comes from enumerating every ordering.
    pub exact: bool,
    /// Orderings evaluated (0 for the asymptotic method).
    pub n_permutations: u64,
    /// Observations used (after dropping NaN pairs).
    pub n: usize,
    /// An input was constant: statistic and p-value are NaN.
    pub constant: bool,
}

fn pearson_asymptotic(r: f64, n: usize, alt: Alternative) -> f64 {
    if n == 2 {
        return 1.0;
    }
    // r ~ Beta(n/2 - 1, n/2 - 1) on [-1, 1] (scipy.stats.pearsonr)
    let ab = n as f64 / 2.0 - 1.0;
    let sf = |r: f64| ibeta(ab, ab, (1.0 - r) / 2.0, (1.0 + r) / 2.0);
    match alt {
        Alternative::Greater => sf(r),
        Alternative::Less => ibeta(ab, ab, (1.0 + r) / 2.0, (1.0 - r) / 2.0),
        Alternative::TwoSided => (2.0 * sf(r.abs())).min(1.0),
    }
}

fn spearman_asymptotic(r: f64, n: usize, alt: Alternative) -> f64 {
    // t = r sqrt((n - 2) / (1 - r^2)) ~ t(n - 2) (scipy.stats.spearmanr)
    let dof = n as f64 - 2.0;
    if dof <= 0.0 {
        return f64::NAN;
    }
    let t = r * (dof / ((r + 1.0) * (1.0 - r))).max(0.0).sqrt();
    match alt {
        Alternative::Greater => t_sf(t, dof),
        Alternative::Less => t_sf(-t, dof),
        Alternative::TwoSided => {
            if t.is_infinite() {
                0.0
            } else {
                let (a, b) = ((1.0 - r) * (1.0 + r), r * r);
                ibeta(dof / 2.0, 0.5, a, b).min(1.0)
            }
        }
    }
}

fn correlation(
    x: &[f64],
    y: &[f64],
    opts: &CorrOptions,
    statistic: Statistic,
) -> Result<CorrResult> {
    let (x, y, _) = clean_pairs(x, y, ("x", "y"), opts.nan_policy)?;
    let n = x.len();
    if n < 2 {
        return Err(CoreError::empty(format!(
            "a correlation needs at least 2 observations, got {n}"
        )));
    }
    let method = match opts.method {
        CorrMethod::Auto if n <= AUTO_EXACT_N => CorrMethod::Exact,
        CorrMethod::Auto => CorrMethod::Asymptotic,
        m => m,
    };
    if method == CorrMethod::Exact && n > MAX_EXACT_N {
        return Err(CoreError::input(format!(
            "method=\"exact\" enumerates n! orderings and is limited to n <= {MAX_EXACT_N}, got n = {n}: use method=\"permutation\""
        )));
    }
    let r = if statistic == Statistic::Spearman {
        spearman_r(&x, &y)
    } else {
        pearson_r(&x, &y)
    };
    if r.is_nan() {
        return Ok(CorrResult {
            statistic: f64::NAN,
            pvalue: f64::NAN,
            method,
            exact: false,
            n_permutations: 0,
            n,
            constant: true,
        });
    }
    match method {
        CorrMethod::Asymptotic => {
            let p = if statistic == Statistic::Spearman {
                spearman_asymptotic(r, n, opts.alternative)
            } else {
                pearson_asymptotic(r, n, opts.alternative)
            };
            Ok(CorrResult {
                statistic: r,
                pvalue: p,
                method,
                exact: false,
                n_permutations: 0,
                n,
                constant: false,
            })
        }
        _ => {
            let p = permutation_test(
                &x,
                Some(&y),
                None,
                &PermOptions {
                    statistic,
                    scheme: Scheme::Free,
                    alternative: opts.alternative,
                    n_resamples: opts.n_resamples,
                    seed: opts.seed,
                    nan_policy: NanPolicy::Raise,
                    force_exact: method == CorrMethod::Exact,
                },
            )?;
            Ok(CorrResult {
                statistic: r,
                pvalue: p.pvalue,
                method,
                exact: p.exact,
                n_permutations: p.n_permutations,
                n,
                constant: false,
            })
        }
    }
}

/// Spearman's rank correlation and its p-value.
pub fn spearman(x: &[f64], y: &[f64], opts: &CorrOptions) -> Result<CorrResult> {
    correlation(x, y, opts, Statistic::Spearman)
}

/// Pearson's correlation and its p-value.
pub fn pearson(x: &[f64], y: &[f64], opts: &CorrOptions) -> Result<CorrResult> {
    correlation(x, y, opts, Statistic::Pearson)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(method: CorrMethod) -> CorrOptions {
        CorrOptions {
            method,
            alternative: Alternative::TwoSided,
            n_resamples: 9999,
            seed: 0,
            nan_policy: NanPolicy::Raise,
        }
    }

    #[test]
    fn asymptotic_matches_scipy() {
        // scipy.stats.spearmanr / pearsonr on these inputs
        let x = [
            1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0,
        ];
        let y = [
            2.0, 1.0, 4.0, 3.0, 7.0, 5.0, 6.0, 9.0, 8.0, 12.0, 10.0, 11.0,
        ];
        let s = spearman(&x, &y, &o(CorrMethod::Asymptotic)).unwrap();
        assert!((s.statistic - 0.9370629370629372).abs() < 1e-14);
        assert!((s.pvalue - 6.9931649532105415e-06).abs() < 1e-17);
        let p = pearson(&x, &y, &o(CorrMethod::Asymptotic)).unwrap();
        assert!((p.statistic - 0.9370629370629369).abs() < 1e-14);
        assert!((p.pvalue - 6.993164953210718e-06).abs() < 1e-17);
    }

    #[test]
    fn constant_and_nan_inputs() {
        let r = spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0], &o(CorrMethod::Auto)).unwrap();
        assert!(r.constant && r.statistic.is_nan());
        let e = spearman(
            &[1.0, f64::NAN, 3.0],
            &[1.0, 2.0, 3.0],
            &o(CorrMethod::Auto),
        );
        assert!(matches!(e, Err(CoreError::NaN { index: 1, .. })));
        let mut om = o(CorrMethod::Auto);
        om.nan_policy = NanPolicy::Omit;
        let r = spearman(&[1.0, f64::NAN, 3.0, 4.0], &[1.0, 2.0, 3.0, 5.0], &om).unwrap();
        assert_eq!(r.n, 3);
        assert!(matches!(
            pearson(&[1.0, 2.0], &[1.0], &om),
            Err(CoreError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn auto_is_exact_for_small_n() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [1.0, 3.0, 2.0, 5.0, 4.0];
        let r = spearman(&x, &y, &o(CorrMethod::Auto)).unwrap();
        assert!(r.exact);
        assert_eq!(r.n_permutations, 120);
        assert_eq!(r.method, CorrMethod::Exact);
    }
}
