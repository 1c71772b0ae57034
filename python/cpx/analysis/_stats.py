"""The one place the analyses call `cpx.stats`: small, typed helpers over its API.

Keeping every call here means a change in the statistics API touches one file, and the
analyses themselves read as statistics, not as argument plumbing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Above this many points an exact enumeration of all n! orderings is too slow; a seeded
# Monte Carlo permutation test is used instead and labelled as such.
EXACT_MAX_N = 9


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


def spearman(x: Sequence[float], y: Sequence[float], *, method: str, n_resamples: int = 9999,
             seed: int = 0) -> Test:
    """Spearman's rho with the p-value from `method` ("exact" falls back to a seeded
    permutation test above `EXACT_MAX_N` points)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    st = _stats()
    if method == "asymptotic":
        r = st.spearman(x, y, method="asymptotic", alternative="two-sided")
        return Test(float(r.statistic), _f(r.pvalue), "asymptotic")
    if len(x) <= EXACT_MAX_N:
        r = st.spearman(x, y, method="exact", alternative="two-sided")
        exact = _exact_flag(r, True)
        n_perm = _n_perm(r) or (math.factorial(len(x)) if exact else None)
        return Test(float(r.statistic), _f(r.pvalue), "exact" if exact else "permutation", n_perm)
    r = st.permutation_test(x, y, statistic="spearman", scheme="pairings",
                            n_resamples=n_resamples, alternative="two-sided", seed=seed)
    exact = _exact_flag(r, False)
    return Test(float(r.statistic), _f(r.pvalue), "exact" if exact else "permutation", _n_perm(r))


def cluster_permutation(x: Sequence[float], y: Sequence[float], groups: Sequence[Any], *,
                        n_resamples: int = 9999, seed: int = 0) -> Test:
    """Spearman over all points, p-value from permuting whole clusters (sources)."""
    r = _stats().permutation_test(
        np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64),
        statistic="spearman", scheme="clusters", groups=list(groups),
        n_resamples=n_resamples, alternative="two-sided", seed=seed,
    )
    return Test(float(r.statistic), _f(r.pvalue), "cluster_permutation", _n_perm(r))


def paired_permutation(a: Sequence[float], b: Sequence[float], *, n_resamples: int = 9999,
                       seed: int = 0) -> Test:
    """Mean of a - b over pairs, p-value from swapping a and b within each pair."""
    r = _stats().permutation_test(
        np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
        statistic="mean_difference", scheme="within",
        n_resamples=n_resamples, alternative="two-sided", seed=seed,
    )
    exact = _exact_flag(r, False)
    return Test(float(r.statistic), _f(r.pvalue), "exact" if exact else "permutation", _n_perm(r))


def cluster_bootstrap_mean(values: Sequence[float], clusters: Sequence[Any], *,
                           confidence_level: float, n_resamples: int, seed: int
                           ) -> tuple[float, float]:
    """Percentile interval of a mean, resampling whole clusters."""
    r = _stats().bootstrap_ci(
        np.asarray(values, dtype=np.float64), statistic="mean", method="percentile",
        clusters=list(clusters), confidence_level=confidence_level,
        n_resamples=n_resamples, seed=seed,
    )
    return float(r.low), float(r.high)


def icc1(values: Sequence[float], groups: Sequence[Any]) -> float | None:
    return _f(_stats().icc1(np.asarray(values, dtype=np.float64), list(groups)))


def design_effect(cluster_size: float, icc: float) -> float:
    return float(_stats().design_effect(cluster_size, icc))


def effective_n(n: int, cluster_size: float, icc: float) -> float:
    return float(_stats().effective_n(n, cluster_size, icc))


def p_adjust(pvalues: Sequence[float], method: str) -> list[float]:
    return [float(v) for v in _stats().p_adjust(np.asarray(pvalues, dtype=np.float64), method=method)]
