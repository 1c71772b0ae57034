//! Correlation statistics (Spearman, Pearson) with their pairings permuted: freely, within
//! groups, or whole clusters' y values.

use super::design::{Block, BlockKind, Design};
use super::eval::{finish, group_layout, is_constant, Scratch};
use super::options::{PermOptions, PermResult, Scheme, Statistic};
use crate::error::{CoreError, Result};
use crate::stats::rank::doubled_ranks;
use crate::stats::{coef, dense_codes, mean};

pub(super) fn pairings(
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
        let (mx, my) = (mean(x), mean(y));
        (
            x.iter().map(|v| v - mx).collect(),
            y.iter().map(|v| v - my).collect(),
        )
    };
    let statistic = if spearman {
        coef::spearman_r(x, y)
    } else {
        coef::pearson_r(x, y)
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
