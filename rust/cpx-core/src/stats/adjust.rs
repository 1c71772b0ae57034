//! Multiple-testing adjustment of p-values.

use std::str::FromStr;

use crate::error::{CoreError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdjustMethod {
    Bonferroni,
    Holm,
    /// Benjamini–Hochberg false discovery rate.
    Bh,
}

impl FromStr for AdjustMethod {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "bonferroni" => Ok(Self::Bonferroni),
            "holm" => Ok(Self::Holm),
            "bh" | "fdr_bh" => Ok(Self::Bh),
            _ => Err(CoreError::input(format!(
                "method must be \"holm\", \"bh\" or \"bonferroni\", got {s:?}"
            ))),
        }
    }
}

/// Adjusted p-values, in the input order (as R's `p.adjust`).
pub fn p_adjust(p: &[f64], method: AdjustMethod) -> Result<Vec<f64>> {
    if p.is_empty() {
        return Err(CoreError::empty("p_adjust needs at least one p-value"));
    }
    for (i, &v) in p.iter().enumerate() {
        if v.is_nan() {
            return Err(CoreError::NaN {
                name: "pvalues".into(),
                index: i,
            });
        }
        if !(0.0..=1.0).contains(&v) {
            return Err(CoreError::input(format!(
                "pvalues[{i}] = {v} is not between 0 and 1"
            )));
        }
    }
    let m = p.len();
    let mf = m as f64;
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut out = vec![0f64; m];
    match method {
        AdjustMethod::Bonferroni => {
            for i in 0..m {
                out[i] = (p[i] * mf).min(1.0);
            }
        }
        AdjustMethod::Holm => {
            let mut running = 0f64;
            for (rank, &i) in order.iter().enumerate() {
                running = running.max((mf - rank as f64) * p[i]);
                out[i] = running.min(1.0);
            }
        }
        AdjustMethod::Bh => {
            let mut running = 1f64;
            for (rank, &i) in order.iter().enumerate().rev() {
                running = running.min(mf / (rank as f64 + 1.0) * p[i]);
                out[i] = running.min(1.0);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // R: p.adjust(c(0.01, 0.04, 0.03, 0.2), "holm") = 0.04 0.09 0.09 0.2
        let p = [0.01, 0.04, 0.03, 0.2];
        let h = p_adjust(&p, AdjustMethod::Holm).unwrap();
        for (a, b) in h.iter().zip([0.04, 0.09, 0.09, 0.2]) {
            assert!((a - b).abs() < 1e-15);
        }
        // R: p.adjust(c(0.01, 0.04, 0.03, 0.2), "BH") = 0.04 0.0533 0.0533 0.2
        let bh = p_adjust(&p, AdjustMethod::Bh).unwrap();
        for (a, b) in bh.iter().zip([0.04, 0.16 / 3.0, 0.16 / 3.0, 0.2]) {
            assert!((a - b).abs() < 1e-15, "{bh:?}");
        }
    }
}
