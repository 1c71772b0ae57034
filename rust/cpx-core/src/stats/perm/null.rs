//! The null distribution's tail counts over a design (all rearrangements, or seeded random
//! ones) and the p-value from them.

use rayon::prelude::*;

use super::design::Design;
use crate::rng::Rng;
use crate::stats::Alternative;

/// How often the null statistic was at least / at most the observed one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NullCounts {
    pub greater_equal: u64,
    pub less_equal: u64,
    pub n: u64,
    pub exact: bool,
}

/// Evaluates `eval` over all rearrangements of `design` (when there are at most
/// `n_resamples`, or always with `force_exact`) or over `n_resamples` random ones, and counts
/// those at least as extreme as `observed` (with scipy's relative tolerance of 100 ulp).
pub fn null_counts<S, F>(
    design: &Design,
    eval: &F,
    observed: f64,
    n_resamples: u64,
    seed: u64,
    force_exact: bool,
) -> NullCounts
where
    S: Send,
    F: Fn(&[u32], &mut S) -> f64 + Sync,
    S: Default,
{
    let gamma = (100.0 * f64::EPSILON * observed).abs();
    let total = design.count();
    let tally = |v: f64, c: &mut (u64, u64)| {
        if v >= observed - gamma {
            c.0 += 1;
        }
        if v <= observed + gamma {
            c.1 += 1;
        }
    };
    let add = |a: (u64, u64), b: (u64, u64)| (a.0 + b.0, a.1 + b.1);
    if force_exact || total <= n_resamples as u128 {
        let total = total as u64;
        const CHUNK: u64 = 1 << 13;
        let chunks = total.div_ceil(CHUNK);
        let (ge, le) = crate::parallel::run(|| {
            (0..chunks)
                .into_par_iter()
                .map_init(
                    || (vec![0u32; design.len], S::default()),
                    |(st, scratch), c| {
                        let start = c * CHUNK;
                        let end = (start + CHUNK).min(total);
                        design.unrank(start as u128, st);
                        let mut counts = (0, 0);
                        for _ in start..end {
                            tally(eval(st, scratch), &mut counts);
                            design.advance(st);
                        }
                        counts
                    },
                )
                .reduce(|| (0, 0), add)
        });
        NullCounts {
            greater_equal: ge,
            less_equal: le,
            n: total,
            exact: true,
        }
    } else {
        const CHUNK: u64 = 1 << 10;
        let chunks = n_resamples.div_ceil(CHUNK);
        let (ge, le) = crate::parallel::run(|| {
            (0..chunks)
                .into_par_iter()
                .map_init(
                    || (vec![0u32; design.len], S::default()),
                    |(st, scratch), c| {
                        let start = c * CHUNK;
                        let end = (start + CHUNK).min(n_resamples);
                        let mut counts = (0, 0);
                        for i in start..end {
                            let mut rng = Rng::stream(seed, i);
                            design.randomize(&mut rng, st);
                            tally(eval(st, scratch), &mut counts);
                        }
                        counts
                    },
                )
                .reduce(|| (0, 0), add)
        });
        NullCounts {
            greater_equal: ge,
            less_equal: le,
            n: n_resamples,
            exact: false,
        }
    }
}

/// The p-value from null counts: `count / n` when exact, `(count + 1) / (n + 1)` otherwise;
/// two-sided is twice the smaller tail, at most 1 (as scipy.stats.permutation_test).
pub fn pvalue(c: &NullCounts, alternative: Alternative) -> f64 {
    let adj = if c.exact { 0.0 } else { 1.0 };
    let n = c.n as f64 + adj;
    let greater = (c.greater_equal as f64 + adj) / n;
    let less = (c.less_equal as f64 + adj) / n;
    match alternative {
        Alternative::Greater => greater,
        Alternative::Less => less,
        Alternative::TwoSided => (2.0 * greater.min(less)).min(1.0),
    }
}
