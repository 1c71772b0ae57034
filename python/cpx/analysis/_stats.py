"""The one place the analyses call `cpx.stats`: small, typed helpers over its API.

Keeping every call here means a change in the statistics API touches one file, and the
analyses themselves read as statistics, not as argument plumbing.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Array = Sequence[float] | npt.NDArray[np.float64]

# Up to this many points the p-value enumerates all n! orderings (10! = 3.6 million, well
# under a second in the Rust core); above it, a seeded Monte Carlo permutation test.
EXACT_MAX_N = 10


def _stats() -> Any:
    import cpx.stats

    return cpx.stats


@dataclass(frozen=True)
class Test:
    """One p-value and how it was computed."""

    estimate: float
    p_value: float | None
    p_method: str  # exact | asymptotic | permutation | cluster_permutation
    n_permutations: int | None = None


def _exact_flag(res: Any, default: bool) -> bool:
    for attr in ("exact", "is_exact"):
        v = getattr(res, attr, None)
        if isinstance(v, bool):
            return v
    method = getattr(res, "method", None)
    if isinstance(method, str):
        return method == "exact"
    return default


def _n_perm(res: Any) -> int | None:
    for attr in ("n_permutations", "n_resamples", "n_orderings"):
        v = getattr(res, attr, None)
        if isinstance(v, (int, np.integer)) and v > 0:
            return int(v)
    return None


def _f(v: Any) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def spearman(x: Array, y: Array, *, method: str, n_resamples: int = 9999, seed: int = 0) -> Test:
    """Spearman's rho with an "asymptotic" p-value, or an "exact" one (all n! orderings; a
    seeded Monte Carlo permutation p-value above `EXACT_MAX_N` points)."""
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    st = _stats()
    if method == "asymptotic":
        r = st.spearman(xa, ya, method="asymptotic", alternative="two-sided")
        return Test(float(r.statistic), _f(r.pvalue), "asymptotic")
    if len(xa) <= EXACT_MAX_N:
        r = st.spearman(xa, ya, method="exact", alternative="two-sided")
    else:
        r = st.spearman(xa, ya, method="permutation", alternative="two-sided", n_resamples=n_resamples, seed=seed)
    exact = _exact_flag(r, len(xa) <= EXACT_MAX_N)
    n_perm = _n_perm(r) or (math.factorial(len(xa)) if exact else None)
    return Test(float(r.statistic), _f(r.pvalue), "exact" if exact else "permutation", n_perm)


def codes(labels: Sequence[Any]) -> np.ndarray:
    """Integer codes for arbitrary labels (cpx.stats takes cluster labels as integers)."""
    _, inv = np.unique(np.asarray([str(v) for v in labels]), return_inverse=True)
    return inv.astype(np.int64)


def cluster_permutation(x: Array, y: Array, groups: Sequence[Any], *, n_resamples: int = 9999, seed: int = 0) -> Test:
    """Spearman over all points, p-value from exchanging whole clusters' y-trajectories.

    The points of each cluster (source) must be in the same order and of the same number
    (one per shared checkpoint). Under the null the pairing of a source's x-trajectory with
    a source's y-trajectory is arbitrary, so all k! assignments of y-trajectories to sources
    are equally likely; each gives a pooled rho (from cpx.stats), and the p-value is the
    share with |rho| at least the observed one (all k! when k! <= n_resamples, else a seeded
    Monte Carlo sample, counting the observed assignment).
    """
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    labs = list(dict.fromkeys(groups))
    blocks = [np.flatnonzero(np.asarray([g == lab for g in groups])) for lab in labs]
    if len({len(b) for b in blocks}) != 1:
        raise ValueError("cluster_permutation needs clusters of equal size")
    k = len(blocks)
    st = _stats()

    def rho(order: Sequence[int] | npt.NDArray[np.int64]) -> float:
        yy = np.empty_like(ya)
        for b, j in zip(blocks, order):
            yy[b] = ya[blocks[j]]
        return float(st.spearman(xa, yy, method="asymptotic").statistic)

    observed = rho(range(k))
    if math.factorial(k) <= n_resamples:
        null = [rho(p) for p in itertools.permutations(range(k))]
        extreme = sum(abs(v) >= abs(observed) - 1e-12 for v in null)
        return Test(observed, extreme / len(null), "cluster_permutation", len(null))
    rng = np.random.default_rng(seed)
    null = [rho(rng.permutation(k)) for _ in range(n_resamples)]
    extreme = sum(abs(v) >= abs(observed) - 1e-12 for v in null)
    return Test(observed, (extreme + 1) / (n_resamples + 1), "cluster_permutation", n_resamples)


def paired_permutation(a: Array, b: Array, *, n_resamples: int = 9999, seed: int = 0) -> Test:
    """Mean of a - b over pairs, p-value from swapping a and b within each pair (sign flips
    of the differences; exact when 2^n <= n_resamples)."""
    r = _stats().permutation_test(
        np.asarray(a, dtype=np.float64),
        np.asarray(b, dtype=np.float64),
        statistic="mean",
        scheme="samples",
        n_resamples=n_resamples,
        alternative="two-sided",
        seed=seed,
    )
    exact = _exact_flag(r, False)
    return Test(float(r.statistic), _f(r.pvalue), "exact" if exact else "permutation", _n_perm(r))


def cluster_bootstrap_mean(
    values: Array, clusters: Sequence[Any], *, confidence_level: float, n_resamples: int, seed: int
) -> tuple[float, float]:
    """Percentile interval of a mean, resampling whole clusters."""
    r = _stats().bootstrap_ci(
        np.asarray(values, dtype=np.float64),
        statistic="mean",
        method="percentile",
        clusters=codes(clusters),
        confidence_level=confidence_level,
        n_resamples=n_resamples,
        seed=seed,
    )
    return float(r.low), float(r.high)


def icc1(values: Array, groups: Sequence[Any]) -> float | None:
    r = _stats().icc1(np.asarray(values, dtype=np.float64), codes(groups))
    return _f(getattr(r, "statistic", r))


def design_effect(cluster_size: float, icc: float) -> float:
    return float(_stats().design_effect(cluster_size, icc))


def effective_n(n: int, cluster_size: float, icc: float) -> float:
    return float(_stats().effective_n(n, cluster_size, icc))


def p_adjust(pvalues: Array, method: str) -> list[float]:
    return [float(v) for v in _stats().p_adjust(np.asarray(pvalues, dtype=np.float64), method=method)]
