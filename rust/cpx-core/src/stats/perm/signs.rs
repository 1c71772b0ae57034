//! `mean` of one sample (or of paired differences) with signs flipped: per observation or
//! per cluster.

use super::design::{Block, BlockKind, Design};
use super::eval::{finish, Scratch};
use super::options::{PermOptions, PermResult, Scheme};
use crate::error::{CoreError, Result};
use crate::stats::{dense_codes, mean};

pub(super) fn sign_flips(
    d: &[f64],
    groups: Option<&[i64]>,
    opts: &PermOptions,
) -> Result<PermResult> {
    let n = d.len();
    if n == 0 {
        return Err(CoreError::empty(
            "statistic \"mean\" needs at least 1 observation",
        ));
    }
    let statistic = mean(d);
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
