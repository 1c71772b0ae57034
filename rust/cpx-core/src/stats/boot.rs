//! Bootstrap confidence intervals (percentile, basic, BCa), optionally resampling whole
//! clusters, following scipy.stats.bootstrap's definitions.

use std::str::FromStr;

use rayon::prelude::*;

use super::{dense_codes, quantile_sorted};
use crate::error::{CoreError, Result};
use crate::rng::Rng;
use crate::special::{ndtr, ndtri};

/// Largest number of bootstrap resamples (their statistics are kept: 8 bytes each).
pub const MAX_RESAMPLES: u64 = 100_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootStatistic {
    Mean,
    Median,
    /// The mean of 0/1 data (other values are an error).
    Proportion,
    Sum,
    /// Standard deviation with `ddof = 1`.
    Std,
    /// Variance with `ddof = 1`.
    Var,
}

impl FromStr for BootStatistic {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Self::Mean),
            "median" => Ok(Self::Median),
            "proportion" => Ok(Self::Proportion),
            "sum" => Ok(Self::Sum),
            "std" => Ok(Self::Std),
            "var" => Ok(Self::Var),
            _ => Err(CoreError::input(format!(
                "statistic must be one of \"mean\", \"median\", \"proportion\", \"sum\", \"std\", \"var\", got {s:?}"
            ))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootMethod {
    Percentile,
    Basic,
    Bca,
}

impl FromStr for BootMethod {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "percentile" => Ok(Self::Percentile),
            "basic" => Ok(Self::Basic),
            "bca" | "BCa" => Ok(Self::Bca),
            _ => Err(CoreError::input(format!(
                "method must be \"percentile\", \"basic\" or \"bca\", got {s:?}"
            ))),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct BootOptions {
    pub statistic: BootStatistic,
    pub method: BootMethod,
    pub confidence_level: f64,
    pub n_resamples: u64,
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BootResult {
    pub statistic: f64,
    pub low: f64,
    pub high: f64,
    /// Standard deviation (ddof = 1) of the bootstrap distribution.
    pub standard_error: f64,
    pub n: usize,
    /// Number of clusters resampled (`n` when unclustered).
    pub n_clusters: usize,
    /// The bootstrap distribution has a single value (e.g. no hits at all): the interval is
    /// that value, and BCa's acceleration, undefined here, is taken as 0.
    pub degenerate: bool,
    /// The statistic of each resample, in resample order.
    pub distribution: Vec<f64>,
}

fn check_values(data: &[f64], stat: BootStatistic) -> Result<()> {
    for (i, &v) in data.iter().enumerate() {
        if v.is_nan() {
            return Err(CoreError::NaN {
                name: "data".into(),
                index: i,
            });
        }
        if v.is_infinite() {
            return Err(CoreError::input(format!(
                "data contains an infinite value at index {i}"
            )));
        }
        if stat == BootStatistic::Proportion && v != 0.0 && v != 1.0 {
            return Err(CoreError::input(format!(
                "statistic \"proportion\" needs 0/1 (or boolean) data, got {v} at index {i}"
            )));
        }
    }
    Ok(())
}

/// The statistic of `v`, which may be reordered (median selects in place).
fn stat_of(v: &mut [f64], stat: BootStatistic) -> f64 {
    let n = v.len();
    match stat {
        BootStatistic::Mean | BootStatistic::Proportion => super::mean(v),
        BootStatistic::Sum => super::sum(v),
        BootStatistic::Median => {
            let mid = n / 2;
            let (_, m, _) = v.select_nth_unstable_by(mid, |a, b| a.total_cmp(b));
            let hi = *m;
            if n % 2 == 1 {
                hi
            } else {
                let lo = v[..mid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
                lo + (hi - lo) / 2.0
            }
        }
        BootStatistic::Var | BootStatistic::Std => {
            let m = super::mean(v);
            let ss: f64 = v.iter().map(|x| (x - m) * (x - m)).sum();
            let var = ss / (n as f64 - 1.0);
            if stat == BootStatistic::Var {
                var
            } else {
                var.sqrt()
            }
        }
    }
}

/// Observations grouped by cluster: members of cluster `c` are `values[starts[c]..starts[c+1]]`.
struct Clustered {
    values: Vec<f64>,
    starts: Vec<usize>,
    sums: Vec<f64>,
}

impl Clustered {
    fn new(data: &[f64], codes: &[u32], g: usize) -> Self {
        let mut order: Vec<usize> = (0..data.len()).collect();
        order.sort_by_key(|&i| (codes[i], i));
        let values: Vec<f64> = order.iter().map(|&i| data[i]).collect();
        let mut starts = vec![0usize; g + 1];
        for &c in codes {
            starts[c as usize + 1] += 1;
        }
        for c in 0..g {
            starts[c + 1] += starts[c];
        }
        let sums = (0..g)
            .map(|c| super::sum(&values[starts[c]..starts[c + 1]]))
            .collect();
        Clustered {
            values,
            starts,
            sums,
        }
    }
    fn members(&self, c: usize) -> &[f64] {
        &self.values[self.starts[c]..self.starts[c + 1]]
    }
    fn size(&self, c: usize) -> usize {
        self.starts[c + 1] - self.starts[c]
    }
}

/// Bootstrap interval of `statistic(data)`; with `clusters` (one label per observation),
/// whole clusters are drawn with replacement and BCa's jackknife leaves out one cluster at
/// a time. Resample `i` draws from RNG stream `i` of `seed`.
pub fn bootstrap_ci(
    data: &[f64],
    clusters: Option<&[i64]>,
    opts: &BootOptions,
) -> Result<BootResult> {
    let n = data.len();
    if n == 0 {
        return Err(CoreError::empty(
            "bootstrap_ci needs at least one observation",
        ));
    }
    if !(opts.confidence_level > 0.0 && opts.confidence_level < 1.0) {
        return Err(CoreError::input(format!(
            "confidence_level must be between 0 and 1, got {}",
            opts.confidence_level
        )));
    }
    if opts.n_resamples < 2 || opts.n_resamples > MAX_RESAMPLES {
        return Err(CoreError::input(format!(
            "n_resamples must be between 2 and {MAX_RESAMPLES} (the distribution is kept in memory), got {}",
            opts.n_resamples
        )));
    }
    check_values(data, opts.statistic)?;
    if matches!(opts.statistic, BootStatistic::Std | BootStatistic::Var) && n < 2 {
        return Err(CoreError::empty(
            "statistic \"std\"/\"var\" needs at least 2 observations",
        ));
    }
    let stat = opts.statistic;
    let theta_hat = stat_of(&mut data.to_vec(), stat);
    let b = opts.n_resamples as usize;
    let mut dist = vec![0f64; b];
    let (jack, n_clusters): (Vec<f64>, usize) = match clusters {
        None => {
            let additive = matches!(
                stat,
                BootStatistic::Mean | BootStatistic::Proportion | BootStatistic::Sum
            );
            crate::parallel::run(|| {
                dist.par_chunks_mut(256).enumerate().for_each_init(
                    || vec![0f64; n],
                    |buf, (ci, out)| {
                        for (k, o) in out.iter_mut().enumerate() {
                            let mut rng = Rng::stream(opts.seed, (ci * 256 + k) as u64);
                            *o = if additive {
                                // the same draws as the other statistics, summed without storing them
                                let mut s = 0.0;
                                draw_indices(&mut rng, n, |i| s += data[i]);
                                if stat == BootStatistic::Sum {
                                    s
                                } else {
                                    s / n as f64
                                }
                            } else {
                                let mut j = 0;
                                draw_indices(&mut rng, n, |i| {
                                    buf[j] = data[i];
                                    j += 1;
                                });
                                stat_of(buf, stat)
                            };
                        }
                    },
                );
            });
            let jack = if opts.method != BootMethod::Bca {
                Vec::new()
            } else if additive && n >= 2 {
                // leave-one-out means in O(n)
                let total = super::sum(data);
                let m = (n - 1) as f64;
                data.iter()
                    .map(|v| {
                        if stat == BootStatistic::Sum {
                            total - v
                        } else {
                            (total - v) / m
                        }
                    })
                    .collect()
            } else {
                jackknife(data, stat)
            };
            (jack, n)
        }
        Some(labels) => {
            if labels.len() != n {
                return Err(CoreError::length("clusters", labels.len(), "data", n));
            }
            let (codes, g) = dense_codes(labels);
            let cl = Clustered::new(data, &codes, g);
            let additive = matches!(
                stat,
                BootStatistic::Mean | BootStatistic::Proportion | BootStatistic::Sum
            );
            crate::parallel::run(|| {
                dist.par_chunks_mut(256).enumerate().for_each_init(
                    || Vec::with_capacity(n * 2),
                    |buf: &mut Vec<f64>, (ci, out)| {
                        for (k, o) in out.iter_mut().enumerate() {
                            let mut rng = Rng::stream(opts.seed, (ci * 256 + k) as u64);
                            *o = if additive {
                                let (mut s, mut m) = (0.0, 0usize);
                                for _ in 0..g {
                                    let c = rng.below(g as u64) as usize;
                                    s += cl.sums[c];
                                    m += cl.size(c);
                                }
                                if stat == BootStatistic::Sum {
                                    s
                                } else {
                                    s / m as f64
                                }
                            } else {
                                buf.clear();
                                for _ in 0..g {
                                    let c = rng.below(g as u64) as usize;
                                    buf.extend_from_slice(cl.members(c));
                                }
                                stat_of(buf, stat)
                            };
                        }
                    },
                );
            });
            let jack = if opts.method == BootMethod::Bca {
                if g < 2 {
                    return Err(CoreError::groups(
                        "BCa with clusters needs at least 2 clusters",
                    ));
                }
                (0..g)
                    .map(|leave| {
                        let mut v: Vec<f64> = (0..g)
                            .filter(|&c| c != leave)
                            .flat_map(|c| cl.members(c).iter().copied())
                            .collect();
                        stat_of(&mut v, stat)
                    })
                    .collect()
            } else {
                Vec::new()
            };
            (jack, g)
        }
    };
    Ok(interval(theta_hat, dist, &jack, opts, n, n_clusters))
}

/// Calls `f` with `n` indices drawn uniformly from `0..n` (Lemire's multiply-shift with
/// rejection on 32-bit halves of each 64-bit output: unbiased, two draws per output).
#[inline]
fn draw_indices(rng: &mut Rng, n: usize, mut f: impl FnMut(usize)) {
    if n as u64 > u32::MAX as u64 {
        for _ in 0..n {
            f(rng.below(n as u64) as usize);
        }
        return;
    }
    let n64 = n as u64;
    let threshold = (n as u32).wrapping_neg() % (n as u32);
    let mut left = n;
    while left > 0 {
        let r = rng.next_u64();
        let m = (r & 0xFFFF_FFFF) * n64;
        if (m as u32) >= threshold {
            f((m >> 32) as usize);
            left -= 1;
            if left == 0 {
                break;
            }
        }
        let m = (r >> 32) * n64;
        if (m as u32) >= threshold {
            f((m >> 32) as usize);
            left -= 1;
        }
    }
}

fn jackknife(data: &[f64], stat: BootStatistic) -> Vec<f64> {
    let n = data.len();
    if n < 2 {
        return vec![];
    }
    crate::parallel::run(|| {
        (0..n)
            .into_par_iter()
            .map_init(
                || Vec::with_capacity(n),
                |v: &mut Vec<f64>, i| {
                    v.clear();
                    v.extend_from_slice(&data[..i]);
                    v.extend_from_slice(&data[i + 1..]);
                    stat_of(v, stat)
                },
            )
            .collect()
    })
}

fn interval(
    theta_hat: f64,
    dist: Vec<f64>,
    jack: &[f64],
    opts: &BootOptions,
    n: usize,
    n_clusters: usize,
) -> BootResult {
    let b = dist.len();
    let mut sorted = dist.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let degenerate = sorted[0] == sorted[b - 1];
    let alpha = (1.0 - opts.confidence_level) / 2.0;
    let (q_lo, q_hi) = match opts.method {
        BootMethod::Percentile | BootMethod::Basic => (alpha, 1.0 - alpha),
        BootMethod::Bca => {
            // scipy's _bca_interval: z0 from the 'mean' percentile of theta_hat, a_hat from
            // the jackknife
            let below = sorted.partition_point(|&v| v < theta_hat);
            let at_most = sorted.partition_point(|&v| v <= theta_hat);
            let z0 = ndtri((below + at_most) as f64 / (2 * b) as f64);
            let nj = jack.len() as f64;
            let a_hat = if jack.len() < 2 {
                0.0
            } else {
                let dot = super::mean(jack);
                let (mut num, mut den) = (0.0, 0.0);
                for &t in jack {
                    let u = (nj - 1.0) * (dot - t);
                    num += u * u * u;
                    den += u * u;
                }
                let (num, den) = (num / (nj * nj * nj), den / (nj * nj));
                if den == 0.0 {
                    0.0
                } else {
                    num / 6.0 / den.powf(1.5)
                }
            };
            let z_alpha = ndtri(alpha);
            let num1 = z0 + z_alpha;
            let num2 = z0 - z_alpha;
            (
                ndtr(z0 + num1 / (1.0 - a_hat * num1)),
                ndtr(z0 + num2 / (1.0 - a_hat * num2)),
            )
        }
    };
    let (mut low, mut high) = if degenerate {
        (sorted[0], sorted[0])
    } else {
        (
            quantile_sorted(&sorted, q_lo),
            quantile_sorted(&sorted, q_hi),
        )
    };
    if opts.method == BootMethod::Basic {
        (low, high) = (2.0 * theta_hat - high, 2.0 * theta_hat - low);
    }
    let m = super::mean(&dist);
    let se = (dist.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (b as f64 - 1.0)).sqrt();
    BootResult {
        statistic: theta_hat,
        low,
        high,
        standard_error: se,
        n,
        n_clusters,
        degenerate,
        distribution: dist,
    }
}

/// Bootstrap intervals for each group of `values` (group labels `groups`, optional cluster
/// labels `clusters`), in order of sorted group label. Group `k` (0-based in that order) uses
/// seed `group_seed(seed, k)`, so its result equals `bootstrap_ci` on that group alone.
pub fn grouped_bootstrap(
    values: &[f64],
    groups: &[i64],
    clusters: Option<&[i64]>,
    opts: &BootOptions,
) -> Result<Vec<(i64, BootResult)>> {
    if groups.len() != values.len() {
        return Err(CoreError::length(
            "groups",
            groups.len(),
            "values",
            values.len(),
        ));
    }
    if let Some(c) = clusters {
        if c.len() != values.len() {
            return Err(CoreError::length(
                "clusters",
                c.len(),
                "values",
                values.len(),
            ));
        }
    }
    if values.is_empty() {
        return Err(CoreError::empty("grouped_bootstrap needs at least one row"));
    }
    let (codes, g) = dense_codes(groups);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); g];
    for (i, &c) in codes.iter().enumerate() {
        members[c as usize].push(i);
    }
    crate::parallel::run(|| {
        members
            .par_iter()
            .enumerate()
            .map(|(k, idx)| {
                let v: Vec<f64> = idx.iter().map(|&i| values[i]).collect();
                let cl: Option<Vec<i64>> = clusters.map(|c| idx.iter().map(|&i| c[i]).collect());
                let o = BootOptions {
                    seed: group_seed(opts.seed, k as u64),
                    ..*opts
                };
                let mut r = bootstrap_ci(&v, cl.as_deref(), &o)?;
                r.distribution = Vec::new();
                Ok((groups[idx[0]], r))
            })
            .collect()
    })
}

/// The seed used for the `k`-th group by [`grouped_bootstrap`].
pub fn group_seed(seed: u64, k: u64) -> u64 {
    Rng::stream(seed ^ 0x5851_F42D_4C95_7F2D, k).next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(method: BootMethod) -> BootOptions {
        BootOptions {
            statistic: BootStatistic::Mean,
            method,
            confidence_level: 0.95,
            n_resamples: 2000,
            seed: 3,
        }
    }

    #[test]
    fn percentile_interval_brackets_the_mean_and_is_seeded() {
        let data: Vec<f64> = (0..200).map(|i| ((i * 37) % 101) as f64 / 10.0).collect();
        let a = bootstrap_ci(&data, None, &o(BootMethod::Percentile)).unwrap();
        assert!(a.low < a.statistic && a.statistic < a.high);
        let b = bootstrap_ci(&data, None, &o(BootMethod::Percentile)).unwrap();
        assert_eq!(a, b);
        // the standard error is near sd / sqrt(n)
        let m = data.iter().sum::<f64>() / 200.0;
        let sd = (data.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / 199.0).sqrt();
        assert!((a.standard_error / (sd / 200f64.sqrt()) - 1.0).abs() < 0.1);
    }

    #[test]
    fn degenerate_proportion() {
        let data = vec![0.0; 50];
        let mut opts = o(BootMethod::Bca);
        opts.statistic = BootStatistic::Proportion;
        let r = bootstrap_ci(&data, None, &opts).unwrap();
        assert!(r.degenerate);
        assert_eq!((r.low, r.high), (0.0, 0.0));
        assert!(matches!(
            bootstrap_ci(&[0.0, 2.0], None, &opts),
            Err(CoreError::Input(_))
        ));
    }

    #[test]
    fn clustered_resamples_whole_clusters() {
        // each cluster is constant, so every resample mean is a mean of cluster values
        let data: Vec<f64> = (0..40).map(|i| (i / 10) as f64).collect();
        let cl: Vec<i64> = (0..40).map(|i| i / 10).collect();
        let r = bootstrap_ci(&data, Some(&cl), &o(BootMethod::Bca)).unwrap();
        assert_eq!(r.n_clusters, 4);
        for v in &r.distribution {
            assert!((v * 4.0 - (v * 4.0).round()).abs() < 1e-9);
        }
    }

    #[test]
    fn median_even_and_odd() {
        assert_eq!(stat_of(&mut [3.0, 1.0, 2.0], BootStatistic::Median), 2.0);
        assert_eq!(
            stat_of(&mut [4.0, 1.0, 3.0, 2.0], BootStatistic::Median),
            2.5
        );
    }
}
