//! One-way random-effects intraclass correlation (Shrout & Fleiss ICC(1) and ICC(1,k)) and
//! Kish's design effect.

use super::dense_codes;
use crate::error::{CoreError, Result};
use crate::special::{f_isf, f_sf};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IccResult {
    /// ICC(1) (single measure) or ICC(1,k) (mean of k measures).
    pub statistic: f64,
    /// P-value of the one-way ANOVA F test (H0: ICC = 0; alternative ICC > 0).
    pub pvalue: f64,
    pub f: f64,
    pub df1: f64,
    pub df2: f64,
    pub msb: f64,
    pub msw: f64,
    /// Group size used: the mean size when balanced, `(N - sum n_g^2 / N) / (g - 1)` otherwise.
    pub k: f64,
    pub n: usize,
    pub n_groups: usize,
    /// Confidence interval from the F distribution (Shrout & Fleiss 1979; McGraw & Wong 1996).
    pub low: f64,
    pub high: f64,
}

/// ICC(1) of `values` grouped by `groups` (`average = false`), or ICC(1,k) (`average = true`),
/// with a `confidence_level` interval.
pub fn icc1(
    values: &[f64],
    groups: &[i64],
    average: bool,
    confidence_level: f64,
) -> Result<IccResult> {
    if !(confidence_level > 0.0 && confidence_level < 1.0) {
        return Err(CoreError::input(format!(
            "confidence_level must be between 0 and 1, got {confidence_level}"
        )));
    }
    let n = values.len();
    if groups.len() != n {
        return Err(CoreError::length("groups", groups.len(), "values", n));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(CoreError::NaN {
            name: "values".into(),
            index: i,
        });
    }
    let (codes, g) = dense_codes(groups);
    if g < 2 {
        return Err(CoreError::groups(format!(
            "the ICC needs at least 2 groups, got {g}"
        )));
    }
    if n <= g {
        return Err(CoreError::groups(format!(
            "the ICC needs more observations than groups (some group with 2 or more), got {n} observations in {g} groups"
        )));
    }
    let mut sums = vec![0f64; g];
    let mut sizes = vec![0f64; g];
    for (i, &c) in codes.iter().enumerate() {
        sums[c as usize] += values[i];
        sizes[c as usize] += 1.0;
    }
    let nf = n as f64;
    let grand = super::mean(values);
    let means: Vec<f64> = sums.iter().zip(&sizes).map(|(s, m)| s / m).collect();
    let ssb: f64 = means
        .iter()
        .zip(&sizes)
        .map(|(m, s)| s * (m - grand) * (m - grand))
        .sum();
    let ssw: f64 = codes
        .iter()
        .zip(values)
        .map(|(&c, v)| (v - means[c as usize]) * (v - means[c as usize]))
        .sum();
    let df1 = (g - 1) as f64;
    let df2 = (n - g) as f64;
    let (msb, msw) = (ssb / df1, ssw / df2);
    let k = (nf - sizes.iter().map(|s| s * s).sum::<f64>() / nf) / df1;
    let statistic = if average {
        (msb - msw) / msb
    } else {
        (msb - msw) / (msb + (k - 1.0) * msw)
    };
    let f = msb / msw;
    let half = (1.0 - confidence_level) / 2.0;
    let f_lo = f / f_isf(half, df1, df2);
    let f_hi = f * f_isf(half, df2, df1);
    let (low, high) = if average {
        (1.0 - 1.0 / f_lo, 1.0 - 1.0 / f_hi)
    } else {
        (
            (f_lo - 1.0) / (f_lo + k - 1.0),
            (f_hi - 1.0) / (f_hi + k - 1.0),
        )
    };
    Ok(IccResult {
        statistic,
        pvalue: f_sf(f, df1, df2),
        f,
        df1,
        df2,
        msb,
        msw,
        k,
        n,
        n_groups: g,
        low,
        high,
    })
}

fn check_design(cluster_size: f64, icc: f64) -> Result<()> {
    if !(cluster_size >= 1.0 && cluster_size.is_finite()) {
        return Err(CoreError::input(format!(
            "cluster_size must be at least 1, got {cluster_size}"
        )));
    }
    if !(-1.0..=1.0).contains(&icc) {
        return Err(CoreError::input(format!(
            "icc must be between -1 and 1, got {icc}"
        )));
    }
    Ok(())
}

/// Kish's design effect `1 + (m - 1) * icc` for clusters of (mean) size `m`.
pub fn design_effect(cluster_size: f64, icc: f64) -> Result<f64> {
    check_design(cluster_size, icc)?;
    let d = 1.0 + (cluster_size - 1.0) * icc;
    if d <= 0.0 {
        return Err(CoreError::input(format!(
            "icc {icc} is below -1/(m - 1) for cluster size {cluster_size}: the design effect would be {d}"
        )));
    }
    Ok(d)
}

/// Effective sample size `n / design_effect(m, icc)`.
pub fn effective_n(n: f64, cluster_size: f64, icc: f64) -> Result<f64> {
    if !(n >= 0.0 && n.is_finite()) {
        return Err(CoreError::input(format!(
            "n must be a non-negative number, got {n}"
        )));
    }
    Ok(n / design_effect(cluster_size, icc)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_icc_by_hand() {
        // groups (1,2,3), (4,5,6): grand 3.5, MSB = 2*3*2.25/1 = 13.5, MSW = 4/4 = 1
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let g = [0, 0, 0, 1, 1, 1];
        let r = icc1(&v, &g, false, 0.95).unwrap();
        assert!((r.msb - 13.5).abs() < 1e-12 && (r.msw - 1.0).abs() < 1e-12);
        assert!((r.statistic - 12.5 / 15.5).abs() < 1e-12);
        let rk = icc1(&v, &g, true, 0.95).unwrap();
        assert!((rk.statistic - 12.5 / 13.5).abs() < 1e-12);
        assert!((design_effect(10.0, 0.1).unwrap() - 1.9).abs() < 1e-15);
        assert!((effective_n(2200.0, 10.0, 0.1).unwrap() - 2200.0 / 1.9).abs() < 1e-9);
    }
}
