"""The power calculations: smallest detectable effects of the tests cpx runs.

Rate differences are analytic (normal approximation with Kish's design effect for questions as
clusters). Exact rank tests use their exact permutation null, counted by dynamic programming;
their power at a population correlation is seeded Monte Carlo, as is the power of the cluster
permutation over sources. docs/power.md gives the formulas and the assumptions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

# cpx's exact Spearman p-value enumerates all n! orderings up to this many points and draws
# this many random orderings above it (cpx.analysis._stats).
EXACT_MAX_N = 10
N_RESAMPLES = 9999
# The cluster permutation over sources: the null of the power simulation uses every
# assignment up to this many, else this many random ones (the identity included).
MAX_CLUSTER_PERMS = 720
# Bisection steps for a Monte Carlo power curve (|rho| to within 1e-3 of the curve).
BISECT_STEPS = 11
RHO_MAX = 0.999
P_TOL = 1e-9  # p-values are compared with this slack: k/n! against alpha


def z(q: float) -> float:
    return NormalDist().inv_cdf(q)


def t_quantile(q: float, df: int) -> float:
    """Student's t quantile, P(T <= t) = q, for a whole number `df`: the exact quantile of
    `cpx.analysis._seeds.t_quantile` (the seed intervals' t), taken one-sided."""
    from cpx.analysis import t_quantile as two_sided

    t = two_sided(abs(2 * q - 1), int(df))
    return t if q >= 0.5 else -t


def _solve_increasing(f: Callable[[float], float], lo: float, hi: float, steps: int = 60) -> float:
    """The smallest x in [lo, hi] with f(x) >= 0 for f increasing (bisection)."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        if f(mid) >= 0:
            hi = mid
        else:
            lo = mid
    return hi


@dataclass(frozen=True)
class Effect:
    """A smallest detectable effect: `value` is None when no effect reaches the power."""

    value: float | None
    reachable: bool
    note: str


def rate_difference(*, n_eff: float, base_rate: float, alpha: float, power: float) -> Effect:
    """Smallest increase d over `base_rate` detected by a two-sided Wald z test of two
    independent rates, each over `n_eff` effective observations:
    d = (z_{1-alpha/2} + z_{power}) * sqrt((p0 (1 - p0) + p1 (1 - p1)) / n_eff), p1 = p0 + d."""
    za, zb = z(1 - alpha / 2), z(power)
    p0 = base_rate

    def gap(d: float) -> float:
        p1 = p0 + d
        return d - (za + zb) * math.sqrt((p0 * (1 - p0) + p1 * (1 - p1)) / n_eff)

    if gap(1 - p0) < 0:
        return Effect(None, False, f"no increase over the base rate {100 * p0:g}% reaches {power:.0%} power")
    return Effect(_solve_increasing(gap, 0.0, 1 - p0), True, "")


def paired_difference(*, pairs: int, sd: float, alpha: float, power: float) -> float:
    """Smallest mean difference detected by a two-sided paired test over `pairs` pairs whose
    differences have standard deviation `sd`, by the t approximation
    d = (t_{pairs-1, 1-alpha/2} + t_{pairs-1, power}) * sd / sqrt(pairs)."""
    df = max(pairs - 1, 1)
    return (t_quantile(1 - alpha / 2, df) + t_quantile(power, df)) * sd / math.sqrt(pairs)


def paired_rate_difference(
    *, pairs: int, var0: float, var1: Callable[[float], float], alpha: float, power: float, base_rate: float
) -> Effect:
    """Smallest increase d over `base_rate` detected by the paired test over `pairs` pairs,
    where a pair's difference has variance var0 + var1(p1) (p1 = base_rate + d): the
    root of d = paired_difference(sd = sqrt(var0 + var1(p1)))."""
    p0 = base_rate

    def gap(d: float) -> float:
        return d - paired_difference(pairs=pairs, sd=math.sqrt(var0 + var1(p0 + d)), alpha=alpha, power=power)

    if gap(1 - p0) < 0:
        return Effect(None, False, f"no increase over the base rate {100 * p0:g}% reaches {power:.0%} power")
    return Effect(_solve_increasing(gap, 0.0, 1 - p0), True, "")


def sign_flip_min_p(pairs: int) -> float:
    """Smallest two-sided p-value of the paired sign-flip test cpx runs: 2 / 2^n when it
    enumerates all 2^n flips (2^n <= 9999), else 1 / (9999 + 1)."""
    if 2**pairs <= N_RESAMPLES:
        return min(1.0, 2 / 2**pairs)
    return 1 / (N_RESAMPLES + 1)


# -- exact Spearman ---------------------------------------------------------------------------


def spearman_null(n: int) -> np.ndarray:
    """counts[t] = how many of the n! orderings pi give T = sum_i i * pi(i) = t (0-based
    ranks), by dynamic programming over the set of ranks already placed. Spearman's rho is
    affine in T: rho = 12 (T - n (n-1)^2 / 4) / (n^3 - n)."""
    if n < 1 or n > 12:
        raise ValueError(f"spearman_null: n = {n} outside 1..12")
    tmax = sum(i * i for i in range(n))
    dp = np.zeros((1 << n, tmax + 1), dtype=np.float64)  # float: exact integers up to 2^53
    dp[0, 0] = 1
    masks = sorted(range(1 << n), key=int.bit_count)
    for mask in masks:
        row = dp[mask]
        if not row.any():
            continue
        i = mask.bit_count()  # the next position to fill
        if i == n:
            continue
        for v in range(n):
            if not mask >> v & 1:
                shift = i * v
                dp[mask | 1 << v, shift:] += row[: tmax + 1 - shift]
    return dp[(1 << n) - 1]


def spearman_min_p(n: int) -> float:
    """Smallest two-sided p-value of cpx's Spearman test with n points (no ties): 2 / n! for
    the exact test (n <= 10), 1 / (9999 + 1) for its Monte Carlo version above."""
    if n < 3:
        return 1.0
    if n <= EXACT_MAX_N:
        return min(1.0, 2 / math.factorial(n))
    return 1 / (N_RESAMPLES + 1)


def spearman_critical(n: int, alpha: float) -> float | None:
    """Smallest |rho| whose two-sided p-value is below `alpha`: from the exact null for
    n <= 10 (p = 2 min(P(T >= t), P(T <= t))), from rho sqrt(n - 1) ~ N(0, 1) above.
    None when no ordering reaches it."""
    if n < 3:
        return None
    if n > EXACT_MAX_N:
        return z(1 - alpha / 2) / math.sqrt(n - 1)
    counts = spearman_null(n)
    total = counts.sum()
    upper = np.cumsum(counts[::-1])[::-1] / total  # P(T >= t)
    lower = np.cumsum(counts) / total  # P(T <= t)
    p = np.minimum(1.0, 2 * np.minimum(upper, lower))
    t = np.arange(len(counts))
    ok = (counts > 0) & (p < alpha - P_TOL)
    if not ok.any():
        return None
    rho = 12 * (t - n * (n - 1) ** 2 / 4) / (n**3 - n)
    return float(np.abs(rho[ok]).min())


def _ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 along the last axis (continuous data: no ties)."""
    return a.argsort(axis=-1).argsort(axis=-1).astype(np.float64)


def _bivariate(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    return rng.standard_normal(shape), rng.standard_normal(shape)


def _abs_spearman(z1: np.ndarray, z2: np.ndarray, rho: float) -> np.ndarray:
    n = z1.shape[-1]
    rx = _ranks(z1)
    ry = _ranks(rho * z1 + math.sqrt(1 - rho * rho) * z2)
    t = (rx * ry).sum(axis=-1)
    return np.abs(12 * (t - n * (n - 1) ** 2 / 4) / (n**3 - n))


def _min_rho(power_at: Callable[[float], float], target: float) -> Effect:
    """Bisection of a Monte Carlo power curve (common random numbers) for the smallest
    correlation with power >= target."""
    if power_at(RHO_MAX) < target:
        return Effect(None, False, f"power stays below {target:.0%} even at rho = {RHO_MAX}")
    lo, hi = 0.0, RHO_MAX
    for _ in range(BISECT_STEPS):
        mid = (lo + hi) / 2
        if power_at(mid) >= target:
            hi = mid
        else:
            lo = mid
    return Effect(hi, True, "")


def spearman_min_rho(n: int, alpha: float, power: float, *, simulations: int, seed: int = 0) -> Effect:
    """Smallest population correlation (bivariate normal) at which cpx's two-sided Spearman
    test over n points rejects at `alpha` with probability `power`."""
    min_p = spearman_min_p(n)
    if n < 3:
        return Effect(None, False, f"{n} point(s): cpx needs 3 for a rank correlation")
    if min_p >= alpha - P_TOL:
        return Effect(
            None,
            False,
            f"cannot reach p < {alpha:g} at any effect: the smallest exact two-sided "
            f"p with {n} points is 2/{n}! = {min_p:.3g}",
        )
    crit = spearman_critical(n, alpha)
    assert crit is not None
    z1, z2 = _bivariate(np.random.default_rng(seed), (simulations, n))
    eff = _min_rho(lambda r: float(np.mean(_abs_spearman(z1, z2, r) >= crit - 1e-12)), power)
    how = "exact null" if n <= EXACT_MAX_N else "permutation null, normal approximation"
    return Effect(
        eff.value, eff.reachable, "; ".join(filter(None, [f"|rho_s| >= {crit:.3f} rejects ({how})", eff.note]))
    )


# -- cluster permutation over sources ---------------------------------------------------------


def cluster_min_p(k: int) -> float:
    """Smallest p-value of the cluster permutation over k sources: 1 / k! when all k!
    assignments are enumerated (k! <= 9999), else 1 / (9999 + 1)."""
    if math.factorial(k) <= N_RESAMPLES:
        return 1 / math.factorial(k)
    return 1 / (N_RESAMPLES + 1)


def _cluster_perms(k: int, rng: np.random.Generator) -> np.ndarray:
    if math.factorial(k) <= MAX_CLUSTER_PERMS:
        return np.array(list(itertools.permutations(range(k))), dtype=np.int64)
    rest = np.array([rng.permutation(k) for _ in range(MAX_CLUSTER_PERMS - 1)], dtype=np.int64)
    return np.vstack([np.arange(k, dtype=np.int64)[None, :], rest])


def _cluster_power_fn(k: int, per: int, alpha: float, simulations: int, seed: int) -> Callable[[float], float]:
    """Power at rho of the pooled Spearman over k sources x `per` points with whole sources
    permuted; the points are independent bivariate normal draws, the same ones at every rho."""
    rng = np.random.default_rng(seed)
    z1, z2 = _bivariate(rng, (simulations, k * per))
    perms = _cluster_perms(k, rng)
    exact = math.factorial(k) <= MAX_CLUSTER_PERMS
    n = k * per
    centre = n * ((n - 1) / 2) ** 2

    def power_at(rho: float) -> float:
        rx = _ranks(z1).reshape(simulations, k, per)
        ry = _ranks(rho * z1 + math.sqrt(1 - rho * rho) * z2).reshape(simulations, k, per)
        m = np.einsum("sjc,slc->sjl", rx, ry)  # m[s, j, l]: x of source j against y of source l
        stats = m[:, np.arange(k)[None, :], perms].sum(axis=-1)  # (simulations, perms)
        dev = np.abs(stats - centre)
        obs = np.abs(np.einsum("sjj->s", m) - centre)
        count = (dev >= obs[:, None] - 1e-9).sum(axis=1)
        p = count / len(perms) if exact else (count + 1) / (len(perms) + 1)
        return float(np.mean(p < alpha - P_TOL))

    return power_at


def cluster_min_rho(k: int, per: int, alpha: float, power: float, *, simulations: int, seed: int = 0) -> Effect:
    """Smallest point-level correlation the cluster permutation over k sources detects."""
    if k < 3:
        return Effect(None, False, f"{k} source(s): cpx needs 3 to permute sources")
    min_p = cluster_min_p(k)
    if min_p >= alpha - P_TOL:
        return Effect(
            None,
            False,
            f"cannot reach p < {alpha:g} at any effect: {k} sources give {k}! = "
            f"{math.factorial(k)} assignments, the smallest p is {min_p:.3g}",
        )
    eff = _min_rho(_cluster_power_fn(k, per, alpha, simulations, seed), power)
    return eff
