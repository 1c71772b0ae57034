"""Benchmark: cpx.stats against scipy.stats (and numpy where scipy has no equivalent), same run.

1. Spearman permutation test, n = 20, 100,000 resamples, against scipy.stats.permutation_test
   with a vectorized statistic.
2. BCa bootstrap interval of a mean, n = 2,200, 10,000 resamples, against
   scipy.stats.bootstrap.
3. Clustered BCa bootstrap of a proportion, 220 clusters of 10 (no scipy equivalent),
   against a vectorized numpy implementation of the same algorithm.

Prints a markdown table of best-of-N wall times and ratios.

    python benches/stats.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
import scipy
import scipy.special as sp
import scipy.stats as ss

from _common import best
from cpx import _core, stats


def rank_corr(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho along `axis`, vectorized (ranks of the fixed `b` are computed once by
    rankdata; permuted `a` keeps its ranks, so this is what scipy's spearmanr computes)."""
    ra = ss.rankdata(a, axis=axis)
    rb = ss.rankdata(b, axis=axis)
    ra = ra - ra.mean(axis=axis, keepdims=True)
    rb = rb - rb.mean(axis=axis, keepdims=True)
    return (ra * rb).sum(axis=axis) / np.sqrt((ra * ra).sum(axis=axis) * (rb * rb).sum(axis=axis))


def numpy_clustered_bca(values: np.ndarray, cluster: np.ndarray, n_resamples: int, seed: int) -> tuple[float, float]:
    """Cluster bootstrap BCa interval of a mean, vectorized numpy (the reference)."""
    ids, inv = np.unique(cluster, return_inverse=True)
    g = len(ids)
    sums = np.bincount(inv, weights=values, minlength=g)
    sizes = np.bincount(inv, minlength=g).astype(float)
    theta = sums.sum() / sizes.sum()
    pick = np.random.default_rng(seed).integers(0, g, size=(n_resamples, g))
    dist = sums[pick].sum(axis=1) / sizes[pick].sum(axis=1)
    jack = (sums.sum() - sums) / (sizes.sum() - sizes)
    z0 = sp.ndtri((np.count_nonzero(dist < theta) + np.count_nonzero(dist <= theta)) / (2 * n_resamples))
    u = (g - 1) * (jack.mean() - jack)
    a = (u**3).sum() / g**3 / 6 / ((u**2).sum() / g**2) ** 1.5
    za = sp.ndtri(0.025)
    a1 = sp.ndtr(z0 + (z0 + za) / (1 - a * (z0 + za)))
    a2 = sp.ndtr(z0 + (z0 - za) / (1 - a * (z0 - za)))
    lo, hi = np.quantile(dist, [a1, a2])
    return float(lo), float(hi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows: list[tuple[str, str, float, float]] = []

    # 1. permutation test
    x = rng.normal(size=20)
    y = 0.3 * x + rng.normal(size=20)
    t_cpx = best(lambda: stats.permutation_test(x, y, statistic="spearman", n_resamples=100_000, seed=1), args.repeat)
    t_sp = best(
        lambda: ss.permutation_test(
            (x, y), rank_corr, permutation_type="pairings", vectorized=True, n_resamples=100_000, rng=1
        ),
        max(1, args.repeat // 2),
    )
    p_cpx = stats.permutation_test(x, y, statistic="spearman", n_resamples=100_000, seed=1).pvalue
    p_sp = ss.permutation_test(
        (x, y), rank_corr, permutation_type="pairings", vectorized=True, n_resamples=100_000, rng=1
    ).pvalue
    rows.append(
        ("Spearman permutation test, n=20, 100k resamples", "scipy.stats.permutation_test (vectorized)", t_cpx, t_sp)
    )

    # 2. BCa bootstrap of a mean
    data = rng.gamma(2.0, size=2200)
    t_cpx2 = best(lambda: stats.bootstrap_ci(data, method="bca", n_resamples=10_000, seed=1), args.repeat)
    t_sp2 = best(
        lambda: ss.bootstrap((data,), np.mean, method="BCa", n_resamples=10_000, rng=1), max(1, args.repeat // 2)
    )
    ci_cpx = stats.bootstrap_ci(data, method="bca", n_resamples=10_000, seed=1).confidence_interval
    ci_sp = ss.bootstrap((data,), np.mean, method="BCa", n_resamples=10_000, rng=1).confidence_interval
    rows.append(("BCa bootstrap of a mean, n=2,200, 10k resamples", "scipy.stats.bootstrap", t_cpx2, t_sp2))

    # 3. clustered BCa bootstrap of a proportion
    cl = np.repeat(np.arange(220), 10)
    p_q = rng.beta(0.5, 4.0, size=220)
    hits = (rng.random(2200) < p_q[cl]).astype(float)
    t_cpx3 = best(
        lambda: stats.bootstrap_ci(hits, clusters=cl, statistic="proportion", method="bca", n_resamples=10_000, seed=1),
        args.repeat,
    )
    t_np3 = best(lambda: numpy_clustered_bca(hits, cl, 10_000, 1), args.repeat)
    ci3 = stats.bootstrap_ci(hits, clusters=cl, statistic="proportion", method="bca", n_resamples=10_000, seed=1)
    ci3_np = numpy_clustered_bca(hits, cl, 10_000, 1)
    rows.append(("Clustered BCa bootstrap, 220 clusters × 10, 10k resamples", "vectorized numpy", t_cpx3, t_np3))

    print(
        f"threads: {_core.num_threads()}, build: {_core.__build__}, scipy {scipy.__version__}, numpy {np.__version__}, "
        f"{platform.machine()}, Python {platform.python_version()}\n"
    )
    print("| task | reference | cpx (ms) | reference (ms) | speed-up |")
    print("|---|---|---|---|---|")
    for task, ref, a, b in rows:
        print(f"| {task} | {ref} | {a * 1e3:.1f} | {b * 1e3:.1f} | {b / a:.1f}× |")
    print(
        f"\nagreement: permutation p cpx {p_cpx:.4f} vs scipy {p_sp:.4f}; "
        f"BCa cpx ({ci_cpx[0]:.4f}, {ci_cpx[1]:.4f}) vs scipy ({ci_sp.low:.4f}, {ci_sp.high:.4f}); "
        f"clustered cpx ({ci3.low:.4f}, {ci3.high:.4f}) vs numpy ({ci3_np[0]:.4f}, {ci3_np[1]:.4f})"
    )


if __name__ == "__main__":
    main()
