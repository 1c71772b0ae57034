//! Permutation tests: exact enumeration when the number of distinct rearrangements is at most
//! `n_resamples`, Monte Carlo otherwise.
//!
//! A design is a list of blocks, each rearranged independently: a permutation of `m` items,
//! a choice of which `k` of `m` items carry the first label, or `m` sign flips. Free designs
//! have one block over all observations; `within` has one block per group; `clusters` has
//! one block over the clusters. Exact enumeration splits the rearrangements into ranges
//! (unranking the first of each), and Monte Carlo resample `i` draws from RNG stream `i`, so
//! results do not depend on the number of threads.

use std::str::FromStr;

use rayon::prelude::*;

use super::{clean, clean_pairs, dense_codes, rank::doubled_ranks, Alternative, NanPolicy};
use crate::error::{CoreError, Result};
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// All orderings of `m` items.
    Perm,
    /// Which `k` of `m` items are labelled 1.
    Comb { k: usize },
    /// A sign (0 = keep, 1 = flip) for each of `m` items.
    Signs,
}

#[derive(Clone, Copy, Debug)]
pub struct Block {
    pub kind: BlockKind,
    pub m: usize,
}

fn binom(n: usize, k: usize) -> u128 {
    if k > n {
        return 0;
    }
    let k = k.min(n - k);
    let mut r: u128 = 1;
    for i in 0..k {
        // exact at every step: r * (n - i) is divisible by (i + 1)
        r = match r.checked_mul((n - i) as u128) {
            Some(v) => v / (i as u128 + 1),
            None => return u128::MAX,
        };
    }
    r
}

fn factorial(n: usize) -> u128 {
    let mut r: u128 = 1;
    for i in 2..=n as u128 {
        r = match r.checked_mul(i) {
            Some(v) => v,
            None => return u128::MAX,
        };
    }
    r
}

fn next_permutation(v: &mut [u32]) -> bool {
    let n = v.len();
    if n < 2 {
        return true;
    }
    let mut i = n - 1;
    while i > 0 && v[i - 1] >= v[i] {
        i -= 1;
    }
    if i == 0 {
        v.reverse();
        return true;
    }
    let mut j = n - 1;
    while v[j] <= v[i - 1] {
        j -= 1;
    }
    v.swap(i - 1, j);
    v[i..].reverse();
    false
}

impl Block {
    /// Number of distinct rearrangements (saturating).
    pub fn count(&self) -> u128 {
        match self.kind {
            BlockKind::Perm => factorial(self.m),
            BlockKind::Comb { k } => binom(self.m, k),
            BlockKind::Signs => {
                if self.m >= 127 {
                    u128::MAX
                } else {
                    1u128 << self.m
                }
            }
        }
    }

    fn base(&self, st: &mut [u32]) {
        match self.kind {
            BlockKind::Perm => st.iter_mut().enumerate().for_each(|(i, v)| *v = i as u32),
            BlockKind::Comb { k } => {
                let m = self.m;
                st.iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v = (i >= m - k) as u32)
            }
            BlockKind::Signs => st.fill(0),
        }
    }

    /// The `r`-th rearrangement in lexicographic order.
    fn unrank(&self, mut r: u128, st: &mut [u32]) {
        let m = self.m;
        match self.kind {
            BlockKind::Perm => {
                let mut avail: Vec<u32> = (0..m as u32).collect();
                for (i, slot) in st.iter_mut().enumerate() {
                    let f = factorial(m - 1 - i);
                    let d = (r / f) as usize;
                    r %= f;
                    *slot = avail.remove(d);
                }
            }
            BlockKind::Comb { k } => {
                let mut ones = k;
                for (i, slot) in st.iter_mut().enumerate() {
                    let rest = m - i - 1;
                    if ones == 0 {
                        *slot = 0;
                        continue;
                    }
                    let with_zero = binom(rest, ones);
                    if r < with_zero {
                        *slot = 0;
                    } else {
                        r -= with_zero;
                        *slot = 1;
                        ones -= 1;
                    }
                }
            }
            BlockKind::Signs => {
                for (i, slot) in st.iter_mut().enumerate() {
                    *slot = ((r >> (m - 1 - i)) & 1) as u32;
                }
            }
        }
    }

    /// Steps to the next rearrangement; returns true when it wrapped around to the first.
    fn advance(&self, st: &mut [u32]) -> bool {
        match self.kind {
            BlockKind::Perm | BlockKind::Comb { .. } => next_permutation(st),
            BlockKind::Signs => {
                for v in st.iter_mut().rev() {
                    if *v == 0 {
                        *v = 1;
                        return false;
                    }
                    *v = 0;
                }
                true
            }
        }
    }

    fn randomize(&self, rng: &mut Rng, st: &mut [u32]) {
        match self.kind {
            BlockKind::Perm | BlockKind::Comb { .. } => {
                self.base(st);
                rng.shuffle(st);
            }
            BlockKind::Signs => {
                let mut bits = 0u64;
                for (i, v) in st.iter_mut().enumerate() {
                    if i % 64 == 0 {
                        bits = rng.next_u64();
                    }
                    *v = (bits & 1) as u32;
                    bits >>= 1;
                }
            }
        }
    }
}

/// A product of blocks; the state is one flat `u32` vector, block after block.
#[derive(Clone, Debug)]
pub struct Design {
    pub blocks: Vec<Block>,
    offsets: Vec<usize>,
    len: usize,
}

impl Design {
    pub fn new(blocks: Vec<Block>) -> Self {
        let mut offsets = Vec::with_capacity(blocks.len());
        let mut len = 0;
        for b in &blocks {
            offsets.push(len);
            len += b.m;
        }
        Design {
            blocks,
            offsets,
            len,
        }
    }

    /// Number of distinct rearrangements of the whole design (saturating).
    pub fn count(&self) -> u128 {
        self.blocks
            .iter()
            .fold(1u128, |acc, b| acc.saturating_mul(b.count()))
    }

    fn slice<'a>(&self, i: usize, st: &'a mut [u32]) -> &'a mut [u32] {
        &mut st[self.offsets[i]..self.offsets[i] + self.blocks[i].m]
    }

    fn unrank(&self, mut r: u128, st: &mut [u32]) {
        for i in (0..self.blocks.len()).rev() {
            let c = self.blocks[i].count();
            self.blocks[i].unrank(r % c, self.slice(i, st));
            r /= c;
        }
    }

    fn advance(&self, st: &mut [u32]) {
        for i in (0..self.blocks.len()).rev() {
            if !self.blocks[i].advance(self.slice(i, st)) {
                return;
            }
        }
    }

    fn randomize(&self, rng: &mut Rng, st: &mut [u32]) {
        for i in 0..self.blocks.len() {
            self.blocks[i].randomize(rng, self.slice(i, st));
        }
    }
}

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
    fn undefined(n: usize) -> Self {
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

fn take<T: Copy>(v: &[T], keep: &Option<Vec<usize>>) -> Vec<T> {
    match keep {
        None => v.to_vec(),
        Some(k) => k.iter().map(|&i| v[i]).collect(),
    }
}

/// Positions sorted by group, the group code of each sorted position, and the blocks' sizes.
fn group_layout(codes: &[u32], g: usize) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..codes.len()).collect();
    order.sort_by_key(|&i| (codes[i], i));
    let mut sizes = vec![0usize; g];
    for &c in codes {
        sizes[c as usize] += 1;
    }
    (order, sizes)
}

fn is_constant(x: &[f64]) -> bool {
    x.iter().all(|&v| v == x[0])
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
            pairings(&x, &y, groups.as_deref(), opts)
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
            independent(&xc, &yc, groups.as_deref(), opts)
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
            sign_flips(&d, groups.as_deref(), opts)
        }
    }
}

fn finish(
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
struct Scratch {
    w: Vec<f64>,
    order: Vec<usize>,
}

fn pairings(
    x: &[f64],
    y: &[f64],
    groups: Option<&[i64]>,
    opts: &PermOptions,
) -> Result<PermResult> {
    let n = x.len();
    if n < 2 {
        return Err(CoreError::empty(format!(
            "a correlation needs at least 2 observations, got {n}"
        )));
    }
    if is_constant(x) || is_constant(y) {
        return Ok(PermResult::undefined(n));
    }
    let spearman = opts.statistic == Statistic::Spearman;
    let (a, b): (Vec<f64>, Vec<f64>) = if spearman {
        // centred doubled ranks are integers: sums of their products are exact
        let c = (n + 1) as f64;
        (
            doubled_ranks(x).into_iter().map(|r| r - c).collect(),
            doubled_ranks(y).into_iter().map(|r| r - c).collect(),
        )
    } else {
        let (mx, my) = (super::mean(x), super::mean(y));
        (
            x.iter().map(|v| v - mx).collect(),
            y.iter().map(|v| v - my).collect(),
        )
    };
    let statistic = if spearman {
        super::coef::spearman_r(x, y)
    } else {
        super::coef::pearson_r(x, y)
    };
    match (opts.scheme, groups) {
        (Scheme::Free, _) | (Scheme::Within, _) => {
            let (order, sizes, boff) = match groups {
                Some(g) if opts.scheme == Scheme::Within => {
                    let (codes, ng) = dense_codes(g);
                    let (order, sizes) = group_layout(&codes, ng);
                    let mut boff = Vec::with_capacity(n);
                    let mut off = 0;
                    for &s in &sizes {
                        boff.extend(std::iter::repeat_n(off as u32, s));
                        off += s;
                    }
                    (order, sizes, boff)
                }
                _ => ((0..n).collect(), vec![n], vec![0u32; n]),
            };
            let a_s: Vec<f64> = order.iter().map(|&i| a[i]).collect();
            let b_s: Vec<f64> = order.iter().map(|&i| b[i]).collect();
            let design = Design::new(
                sizes
                    .iter()
                    .map(|&m| Block {
                        kind: BlockKind::Perm,
                        m,
                    })
                    .collect(),
            );
            let mut identity = vec![0u32; n];
            let mut off = 0;
            for &m in &sizes {
                identity[off..off + m]
                    .iter_mut()
                    .enumerate()
                    .for_each(|(j, v)| *v = j as u32);
                off += m;
            }
            let eval = |st: &[u32], _: &mut Scratch| -> f64 {
                let mut s = 0.0;
                for j in 0..st.len() {
                    s += a_s[j] * b_s[(boff[j] + st[j]) as usize];
                }
                s
            };
            Ok(finish(&design, eval, &identity, statistic, n, opts))
        }
        (Scheme::Clusters, Some(g)) => {
            let (codes, ng) = dense_codes(g);
            if ng < 2 {
                return Err(CoreError::groups(
                    "scheme \"clusters\" needs at least 2 clusters",
                ));
            }
            let mut yc = vec![f64::NAN; ng];
            let mut size = vec![0f64; ng];
            let mut xs = vec![0f64; ng];
            // x side: centred ranks or centred values, summed per cluster
            let ax: Vec<f64> = if spearman {
                let c = (n + 1) as f64;
                doubled_ranks(x)
                    .into_iter()
                    .map(|r| (r - c) / 2.0)
                    .collect()
            } else {
                a.clone()
            };
            for i in 0..n {
                let c = codes[i] as usize;
                if yc[c].is_nan() {
                    yc[c] = y[i];
                } else if yc[c] != y[i] {
                    return Err(CoreError::groups(format!(
                        "scheme \"clusters\" permutes whole clusters' y values, so y must be constant within each cluster; cluster {} has y values {} and {} (at index {i})",
                        g[i], yc[c], y[i]
                    )));
                }
                size[c] += 1.0;
                xs[c] += ax[i];
            }
            let sxx: f64 = ax.iter().map(|v| v * v).sum();
            let nf = n as f64;
            let eval = |st: &[u32], sc: &mut Scratch| -> f64 {
                sc.w.clear();
                sc.w.extend(st.iter().map(|&k| yc[k as usize]));
                if spearman {
                    // ranks of the observation-level y, where cluster c holds size[c] copies
                    sc.order.clear();
                    sc.order.extend(0..ng);
                    let w = &sc.w;
                    sc.order.sort_by(|&p, &q| w[p].total_cmp(&w[q]));
                    let mut ranks = vec![0f64; ng];
                    let mut i = 0;
                    let mut before = 0f64;
                    while i < ng {
                        let mut j = i;
                        let mut cnt = 0f64;
                        while j < ng && w[sc.order[j]] == w[sc.order[i]] {
                            cnt += size[sc.order[j]];
                            j += 1;
                        }
                        let r = before + (cnt + 1.0) / 2.0;
                        for &k in &sc.order[i..j] {
                            ranks[k] = r;
                        }
                        before += cnt;
                        i = j;
                    }
                    sc.w.copy_from_slice(&ranks);
                }
                let (mut sxy, mut sy, mut syy) = (0.0, 0.0, 0.0);
                for c in 0..ng {
                    let v = sc.w[c];
                    sxy += xs[c] * v;
                    sy += size[c] * v;
                    syy += size[c] * v * v;
                }
                let vy = syy - sy * sy / nf;
                sxy / (sxx * vy).sqrt()
            };
            let design = Design::new(vec![Block {
                kind: BlockKind::Perm,
                m: ng,
            }]);
            let identity: Vec<u32> = (0..ng as u32).collect();
            Ok(finish(&design, eval, &identity, statistic, n, opts))
        }
        (Scheme::Clusters, None) => unreachable!("checked by permutation_test"),
    }
}

fn independent(
    x: &[f64],
    y: &[f64],
    groups: Option<&[i64]>,
    opts: &PermOptions,
) -> Result<PermResult> {
    let (nx, ny) = (x.len(), y.len());
    if nx == 0 || ny == 0 {
        return Err(CoreError::empty(format!(
            "\"mean_diff\" needs observations in both samples, got {nx} and {ny}"
        )));
    }
    let n = nx + ny;
    let v: Vec<f64> = x.iter().chain(y).copied().collect();
    let label: Vec<u32> = (0..n).map(|i| (i < nx) as u32).collect();
    let statistic = super::mean(x) - super::mean(y);
    match (opts.scheme, groups) {
        (Scheme::Clusters, Some(g)) => {
            let (codes, ng) = dense_codes(g);
            let mut clab = vec![u32::MAX; ng];
            let mut csum = vec![0f64; ng];
            let mut csize = vec![0f64; ng];
            for i in 0..n {
                let c = codes[i] as usize;
                if clab[c] == u32::MAX {
                    clab[c] = label[i];
                } else if clab[c] != label[i] {
                    return Err(CoreError::groups(format!(
                        "scheme \"clusters\" moves whole clusters between x and y, but cluster {} has observations in both",
                        g[i]
                    )));
                }
                csum[c] += v[i];
                csize[c] += 1.0;
            }
            let kx = clab.iter().filter(|&&l| l == 1).count();
            if kx == 0 || kx == ng {
                return Err(CoreError::groups(
                    "scheme \"clusters\" needs clusters in both x and y",
                ));
            }
            let eval = |st: &[u32], _: &mut Scratch| -> f64 {
                let (mut sx, mut cx, mut sy, mut cy) = (0.0, 0.0, 0.0, 0.0);
                for c in 0..ng {
                    if st[c] == 1 {
                        sx += csum[c];
                        cx += csize[c];
                    } else {
                        sy += csum[c];
                        cy += csize[c];
                    }
                }
                sx / cx - sy / cy
            };
            let design = Design::new(vec![Block {
                kind: BlockKind::Comb { k: kx },
                m: ng,
            }]);
            Ok(finish(&design, eval, &clab, statistic, n, opts))
        }
        _ => {
            let (order, sizes) = match groups {
                Some(g) => {
                    let (codes, ng) = dense_codes(g);
                    group_layout(&codes, ng)
                }
                None => ((0..n).collect(), vec![n]),
            };
            let vs: Vec<f64> = order.iter().map(|&i| v[i]).collect();
            let identity: Vec<u32> = order.iter().map(|&i| label[i]).collect();
            let mut blocks = Vec::with_capacity(sizes.len());
            let mut off = 0;
            for &m in &sizes {
                let k = identity[off..off + m].iter().filter(|&&l| l == 1).count();
                blocks.push(Block {
                    kind: BlockKind::Comb { k },
                    m,
                });
                off += m;
            }
            let eval = |st: &[u32], _: &mut Scratch| -> f64 {
                let (mut sx, mut cx, mut sy, mut cy) = (0.0, 0usize, 0.0, 0usize);
                for j in 0..st.len() {
                    if st[j] == 1 {
                        sx += vs[j];
                        cx += 1;
                    } else {
                        sy += vs[j];
                        cy += 1;
                    }
                }
                sx / cx as f64 - sy / cy as f64
            };
            Ok(finish(
                &Design::new(blocks),
                eval,
                &identity,
                statistic,
                n,
                opts,
            ))
        }
    }
}

fn sign_flips(d: &[f64], groups: Option<&[i64]>, opts: &PermOptions) -> Result<PermResult> {
    let n = d.len();
    if n == 0 {
        return Err(CoreError::empty(
            "statistic \"mean\" needs at least 1 observation",
        ));
    }
    let statistic = super::mean(d);
    let nf = n as f64;
    match (opts.scheme, groups) {
        (Scheme::Within, _) => Err(CoreError::input(
            "scheme \"within\" does not apply to sign flips (statistic \"mean\"): use \"samples\" or \"clusters\"",
        )),
        (Scheme::Clusters, Some(g)) => {
            let (codes, ng) = dense_codes(g);
            let mut dc = vec![0f64; ng];
            for i in 0..n {
                dc[codes[i] as usize] += d[i];
            }
            let eval = |st: &[u32], _: &mut Scratch| -> f64 {
                let mut s = 0.0;
                for c in 0..ng {
                    s += if st[c] == 1 { -dc[c] } else { dc[c] };
                }
                s / nf
            };
            let design = Design::new(vec![Block { kind: BlockKind::Signs, m: ng }]);
            Ok(finish(&design, eval, &vec![0u32; ng], statistic, n, opts))
        }
        _ => {
            let eval = |st: &[u32], _: &mut Scratch| -> f64 {
                let mut s = 0.0;
                for j in 0..n {
                    s += if st[j] == 1 { -d[j] } else { d[j] };
                }
                s / nf
            };
            let design = Design::new(vec![Block { kind: BlockKind::Signs, m: n }]);
            Ok(finish(&design, eval, &vec![0u32; n], statistic, n, opts))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_states(design: &Design) -> Vec<Vec<u32>> {
        let n = design.count() as usize;
        let mut st = vec![0u32; design.len];
        design.unrank(0, &mut st);
        let mut out = Vec::new();
        for r in 0..n {
            let mut u = vec![0u32; design.len];
            design.unrank(r as u128, &mut u);
            assert_eq!(u, st, "unrank({r}) disagrees with stepping");
            out.push(st.clone());
            design.advance(&mut st);
        }
        out
    }

    #[test]
    fn enumeration_is_complete_and_distinct() {
        let design = Design::new(vec![
            Block {
                kind: BlockKind::Perm,
                m: 3,
            },
            Block {
                kind: BlockKind::Comb { k: 2 },
                m: 4,
            },
            Block {
                kind: BlockKind::Signs,
                m: 2,
            },
        ]);
        assert_eq!(design.count(), 6 * 6 * 4);
        let mut states = all_states(&design);
        states.sort();
        states.dedup();
        assert_eq!(states.len(), 144);
    }

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
