//! What the three kinds of test share: group layouts, the scratch space of a statistic's
//! evaluation, and turning a design and a statistic into a result.

use super::design::Design;
use super::null::{null_counts, pvalue};
use super::options::{PermOptions, PermResult};

/// Positions sorted by group, the group code of each sorted position, and the blocks' sizes.
pub(super) fn group_layout(codes: &[u32], g: usize) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..codes.len()).collect();
    order.sort_by_key(|&i| (codes[i], i));
    let mut sizes = vec![0usize; g];
    for &c in codes {
        sizes[c as usize] += 1;
    }
    (order, sizes)
}

pub(super) fn is_constant(x: &[f64]) -> bool {
    x.iter().all(|&v| v == x[0])
}

pub(super) fn finish(
    design: &Design,
    eval: impl Fn(&[u32], &mut Scratch) -> f64 + Sync,
    identity: &[u32],
    statistic: f64,
    n: usize,
    opts: &PermOptions,
) -> PermResult {
    let observed = eval(identity, &mut Scratch::default());
    let c = null_counts(
        design,
        &eval,
        observed,
        opts.n_resamples,
        opts.seed,
        opts.force_exact,
    );
    PermResult {
        statistic,
        pvalue: pvalue(&c, opts.alternative),
        exact: c.exact,
        n_permutations: c.n,
        constant: false,
        n,
    }
}

#[derive(Default)]
pub(super) struct Scratch {
    pub(super) w: Vec<f64>,
    pub(super) order: Vec<usize>,
}
