//! `mean_diff` of two independent samples with the group labels permuted: freely, within
//! groups, or whole clusters between the samples.

use super::design::{Block, BlockKind, Design};
use super::eval::{finish, group_layout, Scratch};
use super::options::{PermOptions, PermResult, Scheme};
use crate::error::{CoreError, Result};
use crate::stats::{dense_codes, mean};

pub(super) fn independent(
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
    let statistic = mean(x) - mean(y);
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
