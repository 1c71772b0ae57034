//! Permutation tests: exact enumeration when the number of distinct rearrangements is at most
//! `n_resamples`, Monte Carlo otherwise.
//!
//! A design is a list of blocks, each rearranged independently: a permutation of `m` items,
//! a choice of which `k` of `m` items carry the first label, or `m` sign flips. Free designs
//! have one block over all observations; `within` has one block per group; `clusters` has
//! one block over the clusters. Exact enumeration splits the rearrangements into ranges
//! (unranking the first of each), and Monte Carlo resample `i` draws from RNG stream `i`, so
//! results do not depend on the number of threads.
//!
//! `design` (the rearrangements), `null` (the tail counts and p-value), `options` (what is
//! asked and answered), `eval` (shared by the kinds) and one module per kind of test:
//! `pairings` (correlations), `independent` (`mean_diff`), `signs` (`mean`).

mod design;
mod eval;
mod independent;
mod null;
mod options;
mod pairings;
mod signs;

pub use design::{Block, BlockKind, Design};
pub use null::{null_counts, pvalue, NullCounts};
pub use options::{PermOptions, PermResult, Scheme, Statistic};

use crate::error::{CoreError, Result};
use crate::stats::{clean, clean_pairs};

fn take<T: Copy>(v: &[T], keep: &Option<Vec<usize>>) -> Vec<T> {
    match keep {
        None => v.to_vec(),
        Some(k) => k.iter().map(|&i| v[i]).collect(),
    }
}

/// A permutation test of `x` (and `y`) under `opts`. `groups` (one integer label per
/// observation: per pair for paired statistics, per element of `x` then `y` for `mean_diff`)
/// is required by the `within` and `clusters` schemes.
pub fn permutation_test(
    x: &[f64],
    y: Option<&[f64]>,
    groups: Option<&[i64]>,
    opts: &PermOptions,
) -> Result<PermResult> {
    if opts.n_resamples == 0 {
        return Err(CoreError::input("n_resamples must be at least 1"));
    }
    if opts.scheme == Scheme::Free && groups.is_some() {
        return Err(CoreError::input(
            "groups were given but the scheme is free: pass scheme=\"within\" or \"clusters\"",
        ));
    }
    if opts.scheme != Scheme::Free && groups.is_none() {
        return Err(CoreError::input(format!(
            "scheme {:?} needs groups",
            format!("{:?}", opts.scheme).to_lowercase()
        )));
    }
    match opts.statistic {
        Statistic::Spearman | Statistic::Pearson => {
            let y = y.ok_or_else(|| CoreError::input("a correlation statistic needs y"))?;
            if let Some(g) = groups {
                if g.len() != x.len() {
                    return Err(CoreError::length("groups", g.len(), "x", x.len()));
                }
            }
            let (x, y, keep) = clean_pairs(x, y, ("x", "y"), opts.nan_policy)?;
            let groups = groups.map(|g| take(g, &keep));
            pairings::pairings(&x, &y, groups.as_deref(), opts)
        }
        Statistic::MeanDiff => {
            let y = y.ok_or_else(|| CoreError::input("statistic \"mean_diff\" needs y"))?;
            if let Some(g) = groups {
                if g.len() != x.len() + y.len() {
                    return Err(CoreError::groups(format!(
                        "groups must label x then y: {} labels for {} + {} observations",
                        g.len(),
                        x.len(),
                        y.len()
                    )));
                }
            }
            let (xc, kx) = clean(x, "x", opts.nan_policy)?;
            let (yc, ky) = clean(y, "y", opts.nan_policy)?;
            let groups = groups.map(|g| {
                let mut out = take(&g[..x.len()], &kx);
                out.extend(take(&g[x.len()..], &ky));
                out
            });
            independent::independent(&xc, &yc, groups.as_deref(), opts)
        }
        Statistic::Mean => {
            let (d, keep) = match y {
                Some(y) => {
                    let (xc, yc, keep) = clean_pairs(x, y, ("x", "y"), opts.nan_policy)?;
                    (
                        xc.iter().zip(&yc).map(|(a, b)| a - b).collect::<Vec<_>>(),
                        keep,
                    )
                }
                None => clean(x, "x", opts.nan_policy)?,
            };
            if let Some(g) = groups {
                if g.len() != x.len() {
                    return Err(CoreError::length("groups", g.len(), "x", x.len()));
                }
            }
            let groups = groups.map(|g| take(g, &keep));
            signs::sign_flips(&d, groups.as_deref(), opts)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Alternative, NanPolicy};

    fn brute_spearman_p(x: &[f64], y: &[f64]) -> (f64, f64) {
        // all n! orderings of y by Heap's algorithm, statistic r itself
        let r0 = crate::stats::coef::spearman_r(x, y);
        let mut yy = y.to_vec();
        let n = yy.len();
        let mut c = vec![0usize; n];
        let (mut ge, mut le, mut tot) = (0u64, 0u64, 0u64);
        let mut visit = |v: &[f64]| {
            let r = crate::stats::coef::spearman_r(x, v);
            let g = 1e-12;
            if r >= r0 - g {
                ge += 1;
            }
            if r <= r0 + g {
                le += 1;
            }
            tot += 1;
        };
        visit(&yy);
        let mut i = 0;
        while i < n {
            if c[i] < i {
                if i % 2 == 0 {
                    yy.swap(0, i);
                } else {
                    yy.swap(c[i], i);
                }
                visit(&yy);
                c[i] += 1;
                i = 0;
            } else {
                c[i] = 0;
                i += 1;
            }
        }
        (ge as f64 / tot as f64, le as f64 / tot as f64)
    }

    fn opts(statistic: Statistic, scheme: Scheme) -> PermOptions {
        PermOptions {
            statistic,
            scheme,
            alternative: Alternative::Greater,
            n_resamples: 100_000,
            seed: 1,
            nan_policy: NanPolicy::Raise,
            force_exact: false,
        }
    }

    #[test]
    fn exact_pairings_match_brute_force_with_ties() {
        let x = [1.0, 2.0, 2.0, 3.5, 0.5, 7.0, 7.0];
        let y = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0];
        let (ge, le) = brute_spearman_p(&x, &y);
        let mut o = opts(Statistic::Spearman, Scheme::Free);
        let r = permutation_test(&x, Some(&y), None, &o).unwrap();
        assert!(r.exact);
        assert_eq!(r.n_permutations, 5040);
        assert_eq!(r.pvalue, ge);
        o.alternative = Alternative::Less;
        assert_eq!(permutation_test(&x, Some(&y), None, &o).unwrap().pvalue, le);
    }

    #[test]
    fn monte_carlo_is_seeded_and_thread_independent() {
        let x: Vec<f64> = (0..30).map(|i| ((i * 7) % 11) as f64).collect();
        let y: Vec<f64> = (0..30)
            .map(|i| ((i * 5) % 13) as f64 + 0.5 * i as f64)
            .collect();
        let mut o = opts(Statistic::Pearson, Scheme::Free);
        o.n_resamples = 5000;
        let a = permutation_test(&x, Some(&y), None, &o).unwrap();
        std::env::set_var("CPX_NUM_THREADS", "1");
        let b = permutation_test(&x, Some(&y), None, &o).unwrap();
        std::env::remove_var("CPX_NUM_THREADS");
        assert_eq!(a, b);
        assert!(!a.exact);
        o.seed = 2;
        assert_ne!(
            a.pvalue,
            permutation_test(&x, Some(&y), None, &o).unwrap().pvalue
        );
    }

    #[test]
    fn independent_exact_counts_combinations() {
        let x = [1.0, 5.0, 3.0];
        let y = [2.0, 0.0, 1.0, 4.0];
        let r =
            permutation_test(&x, Some(&y), None, &opts(Statistic::MeanDiff, Scheme::Free)).unwrap();
        assert!(r.exact);
        assert_eq!(r.n_permutations, 35);
        // brute force over all 3-subsets of the pooled 7 values
        let v = [1.0, 5.0, 3.0, 2.0, 0.0, 1.0, 4.0];
        let obs = 3.0 - 7.0 / 4.0;
        let mut ge = 0;
        for a in 0..7 {
            for b in a + 1..7 {
                for c in b + 1..7 {
                    let sx = v[a] + v[b] + v[c];
                    let d = sx / 3.0 - (16.0 - sx) / 4.0;
                    if d >= obs - 1e-12 {
                        ge += 1;
                    }
                }
            }
        }
        assert_eq!(r.pvalue, ge as f64 / 35.0);
    }

    #[test]
    fn within_keeps_groups_and_clusters_check_constancy() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let y = [1.0, 3.0, 2.0, 6.0, 4.0, 5.0];
        let g = [0, 0, 0, 1, 1, 1];
        let r = permutation_test(
            &x,
            Some(&y),
            Some(&g),
            &opts(Statistic::Spearman, Scheme::Within),
        )
        .unwrap();
        assert_eq!(r.n_permutations, 36);
        let err = permutation_test(
            &x,
            Some(&y),
            Some(&g),
            &opts(Statistic::Spearman, Scheme::Clusters),
        );
        assert!(matches!(err, Err(CoreError::Groups(_))));
        let yc = [1.0, 1.0, 1.0, 2.0, 2.0, 2.0];
        let g3 = [0, 0, 1, 1, 2, 2];
        let yc3 = [1.0, 1.0, 3.0, 3.0, 2.0, 2.0];
        let r = permutation_test(
            &x,
            Some(&yc3),
            Some(&g3),
            &opts(Statistic::Pearson, Scheme::Clusters),
        )
        .unwrap();
        assert_eq!(r.n_permutations, 6);
        let _ = yc;
    }

    #[test]
    fn sign_flip_exact() {
        let d = [0.5, 1.5, -0.25, 2.0];
        let r = permutation_test(&d, None, None, &opts(Statistic::Mean, Scheme::Free)).unwrap();
        assert_eq!(r.n_permutations, 16);
        let mut ge = 0;
        for mask in 0..16u32 {
            let s: f64 = (0..4)
                .map(|i| if mask >> i & 1 == 1 { -d[i] } else { d[i] })
                .sum();
            if s >= 3.75 - 1e-12 {
                ge += 1;
            }
        }
        assert_eq!(r.pvalue, ge as f64 / 16.0);
    }
}
