//! Correlation coefficients alone (no p-values): what the correlation tests in `corr` and the
//! permutation tests in `perm` both compute, so that neither module needs the other's.

use super::rank::doubled_ranks;

/// Pearson's r as scipy computes it (centred, normalised, clipped to [-1, 1]); NaN when an
/// input is constant.
pub fn pearson_r(x: &[f64], y: &[f64]) -> f64 {
    let (mx, my) = (super::mean(x), super::mean(y));
    let xm: Vec<f64> = x.iter().map(|v| v - mx).collect();
    let ym: Vec<f64> = y.iter().map(|v| v - my).collect();
    let nx = xm.iter().map(|v| v * v).sum::<f64>().sqrt();
    let ny = ym.iter().map(|v| v * v).sum::<f64>().sqrt();
    if nx == 0.0 || ny == 0.0 || x.iter().all(|&v| v == x[0]) || y.iter().all(|&v| v == y[0]) {
        return f64::NAN;
    }
    let r: f64 = xm.iter().zip(&ym).map(|(a, b)| (a / nx) * (b / ny)).sum();
    r.clamp(-1.0, 1.0)
}

/// Spearman's rho: Pearson's r of the average ranks, computed from centred doubled ranks,
/// which are integers, so that sums are exact (a perfect rank correlation is exactly 1).
pub fn spearman_r(x: &[f64], y: &[f64]) -> f64 {
    let c = (x.len() + 1) as f64;
    let a: Vec<f64> = doubled_ranks(x).into_iter().map(|r| r - c).collect();
    let b: Vec<f64> = doubled_ranks(y).into_iter().map(|r| r - c).collect();
    let saa: f64 = a.iter().map(|v| v * v).sum();
    let sbb: f64 = b.iter().map(|v| v * v).sum();
    if saa == 0.0 || sbb == 0.0 {
        return f64::NAN;
    }
    let sab: f64 = a.iter().zip(&b).map(|(p, q)| p * q).sum();
    (sab / (saa * sbb).sqrt()).clamp(-1.0, 1.0)
}
