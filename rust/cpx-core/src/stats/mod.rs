//! Statistics over `f64` slices: correlations ([`corr`]), permutation tests ([`perm`]),
//! bootstrap intervals ([`boot`]), intraclass correlation ([`icc`]) and p-value adjustment
//! ([`adjust`]).

pub mod adjust;
pub mod boot;
pub mod coef;
pub mod corr;
pub mod icc;
pub mod perm;
pub mod rank;

use std::str::FromStr;

use crate::error::{CoreError, Result};

/// The alternative hypothesis of a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alternative {
    TwoSided,
    Less,
    Greater,
}

impl FromStr for Alternative {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "two-sided" => Ok(Self::TwoSided),
            "less" => Ok(Self::Less),
            "greater" => Ok(Self::Greater),
            _ => Err(CoreError::input(format!(
                "alternative must be \"two-sided\", \"less\" or \"greater\", got {s:?}"
            ))),
        }
    }
}

/// What to do with NaN values in the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NanPolicy {
    Raise,
    Omit,
}

impl FromStr for NanPolicy {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "raise" => Ok(Self::Raise),
            "omit" => Ok(Self::Omit),
            _ => Err(CoreError::input(format!(
                "nan_policy must be \"raise\" or \"omit\", got {s:?}"
            ))),
        }
    }
}

fn check_infinite(x: &[f64], name: &str) -> Result<()> {
    if let Some(i) = x.iter().position(|v| v.is_infinite()) {
        return Err(CoreError::input(format!(
            "{name} contains an infinite value at index {i}"
        )));
    }
    Ok(())
}

/// The observations of `x` kept under `policy` (NaN raises or is dropped), and the indices
/// they came from (`None` when all were kept).
pub fn clean(x: &[f64], name: &str, policy: NanPolicy) -> Result<(Vec<f64>, Option<Vec<usize>>)> {
    check_infinite(x, name)?;
    match x.iter().position(|v| v.is_nan()) {
        None => Ok((x.to_vec(), None)),
        Some(i) if policy == NanPolicy::Raise => Err(CoreError::NaN {
            name: name.into(),
            index: i,
        }),
        Some(_) => {
            let keep: Vec<usize> = (0..x.len()).filter(|&i| !x[i].is_nan()).collect();
            Ok((keep.iter().map(|&i| x[i]).collect(), Some(keep)))
        }
    }
}

/// The pairs `clean_pairs` keeps: x, y, and (when some were dropped) the kept indices.
pub type CleanPairs = (Vec<f64>, Vec<f64>, Option<Vec<usize>>);

/// Pairs `(x[i], y[i])`, checked for equal length; pairs with a NaN raise or are dropped.
pub fn clean_pairs(
    x: &[f64],
    y: &[f64],
    names: (&str, &str),
    policy: NanPolicy,
) -> Result<CleanPairs> {
    if x.len() != y.len() {
        return Err(CoreError::length(names.0, x.len(), names.1, y.len()));
    }
    check_infinite(x, names.0)?;
    check_infinite(y, names.1)?;
    let bad = |i: usize| x[i].is_nan() || y[i].is_nan();
    match (0..x.len()).find(|&i| bad(i)) {
        None => Ok((x.to_vec(), y.to_vec(), None)),
        Some(i) if policy == NanPolicy::Raise => {
            let name = if x[i].is_nan() { names.0 } else { names.1 };
            Err(CoreError::NaN {
                name: name.into(),
                index: i,
            })
        }
        Some(_) => {
            let keep: Vec<usize> = (0..x.len()).filter(|&i| !bad(i)).collect();
            Ok((
                keep.iter().map(|&i| x[i]).collect(),
                keep.iter().map(|&i| y[i]).collect(),
                Some(keep),
            ))
        }
    }
}

/// Dense codes `0..g` for arbitrary integer labels, in order of first appearance sorted by
/// label value; returns `(codes, number_of_groups)`.
pub fn dense_codes(labels: &[i64]) -> (Vec<u32>, usize) {
    let mut uniq: Vec<i64> = labels.to_vec();
    uniq.sort_unstable();
    uniq.dedup();
    let codes = labels
        .iter()
        .map(|l| uniq.binary_search(l).expect("label is present") as u32)
        .collect();
    (codes, uniq.len())
}

/// Sum in index order (the order numpy uses for short arrays).
#[inline]
pub(crate) fn sum(x: &[f64]) -> f64 {
    x.iter().sum()
}

#[inline]
pub(crate) fn mean(x: &[f64]) -> f64 {
    sum(x) / x.len() as f64
}

/// scipy.stats.quantile(..., method="linear") of sorted data (Hyndman & Fan type 7, with
/// scipy's arithmetic, which scipy.stats.bootstrap uses).
pub(crate) fn quantile_sorted(sorted: &[f64], p: f64) -> f64 {
    if p.is_nan() || sorted.is_empty() {
        return f64::NAN;
    }
    let n = sorted.len() as f64;
    let jg = p * n + (1.0 - p);
    let jp1 = jg.floor();
    let j = jp1 - 1.0;
    let g = if j < 0.0 { 0.0 } else { jg % 1.0 };
    let last = n - 1.0;
    let j = j.clamp(0.0, last) as usize;
    let jp1 = jp1.clamp(0.0, last) as usize;
    (1.0 - g) * sorted[j] + g * sorted[jp1]
}
