//! What a permutation test is asked (statistic, scheme, options) and what it answers.

use std::str::FromStr;

use crate::error::{CoreError, Result};
use crate::stats::{Alternative, NanPolicy};

/// The statistic of a permutation test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Statistic {
    /// Spearman correlation of paired `x`, `y` (pairings permuted).
    Spearman,
    /// Pearson correlation of paired `x`, `y` (pairings permuted).
    Pearson,
    /// `mean(x) - mean(y)` of independent samples (group labels permuted).
    MeanDiff,
    /// `mean(x)` or `mean(x - y)` of paired samples (signs flipped).
    Mean,
}

impl FromStr for Statistic {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "spearman" => Ok(Self::Spearman),
            "pearson" => Ok(Self::Pearson),
            "mean_diff" => Ok(Self::MeanDiff),
            "mean" => Ok(Self::Mean),
            _ => Err(CoreError::input(format!(
                "statistic must be one of \"spearman\", \"pearson\", \"mean_diff\", \"mean\", got {s:?}"
            ))),
        }
    }
}

/// Which rearrangements the null hypothesis allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// The statistic's own free scheme: pairings, independent labels or sign flips.
    Free,
    /// Rearrange only inside each group.
    Within,
    /// Rearrange whole groups (clusters) as units.
    Clusters,
}

impl Scheme {
    /// Parses a scheme name given the statistic (`pairings`, `independent` and `samples`
    /// name the free scheme of the statistic they belong to).
    pub fn parse(s: &str, statistic: Statistic) -> Result<Self> {
        let natural = match statistic {
            Statistic::Spearman | Statistic::Pearson => "pairings",
            Statistic::MeanDiff => "independent",
            Statistic::Mean => "samples",
        };
        match s {
            "within" => Ok(Self::Within),
            "clusters" => Ok(Self::Clusters),
            "pairings" | "independent" | "samples" if s == natural => Ok(Self::Free),
            "pairings" | "independent" | "samples" => Err(CoreError::input(format!(
                "scheme {s:?} does not fit statistic {statistic:?}: its free scheme is {natural:?}"
            ))),
            _ => Err(CoreError::input(format!(
                "scheme must be one of \"pairings\", \"independent\", \"samples\", \"within\", \"clusters\", got {s:?}"
            ))),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct PermOptions {
    pub statistic: Statistic,
    pub scheme: Scheme,
    pub alternative: Alternative,
    pub n_resamples: u64,
    pub seed: u64,
    pub nan_policy: NanPolicy,
    /// Enumerate all rearrangements whatever their number (callers bound the size).
    pub force_exact: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PermResult {
    pub statistic: f64,
    pub pvalue: f64,
    pub exact: bool,
    pub n_permutations: u64,
    /// An input was constant, so the statistic is undefined (NaN).
    pub constant: bool,
    /// Observations used (after dropping NaN).
    pub n: usize,
}

impl PermResult {
    pub(super) fn undefined(n: usize) -> Self {
        PermResult {
            statistic: f64::NAN,
            pvalue: f64::NAN,
            exact: false,
            n_permutations: 0,
            constant: true,
            n,
        }
    }
}
