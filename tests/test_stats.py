"""`cpx.stats` against scipy.stats and brute-force references on random inputs.

Deterministic quantities agree to 1e-12, exact p-values exactly, Monte Carlo p-values and
bootstrap limits within their Monte Carlo error.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest
import scipy.special as sp
import scipy.stats as ss
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cpx import _core, stats

ALTS = ["two-sided", "less", "greater"]


def pairs(min_n: int, max_n: int, grid: int | None = None) -> st.SearchStrategy[tuple[np.ndarray, np.ndarray]]:
    """Paired samples, from a small integer grid (ties) or continuous values."""

    @st.composite
    def make(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
        n = draw(st.integers(min_n, max_n))
        seed = draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        g = grid if grid is not None else draw(st.sampled_from([None, 4, 10]))
        if g is None:
            x = rng.normal(size=n)
            y = 0.5 * x + rng.normal(size=n)
        else:
            x = rng.integers(0, g, size=n).astype(float)
            y = rng.integers(0, g, size=n).astype(float)
        return x, y

    return make()


def nonconstant(x: np.ndarray, y: np.ndarray) -> bool:
    return bool(np.ptp(x) > 0 and np.ptp(y) > 0)


@settings(max_examples=60, deadline=None)
@given(pairs(3, 60), st.sampled_from(ALTS))
def test_spearman_asymptotic_matches_scipy(xy: tuple[np.ndarray, np.ndarray], alt: str) -> None:
    x, y = xy
    assume(nonconstant(x, y))
    ref = ss.spearmanr(x, y, alternative=alt)
    got = stats.spearman(x, y, method="asymptotic", alternative=alt)  # type: ignore[arg-type]
    assert got.statistic == pytest.approx(ref.statistic, abs=1e-12)
    assert got.pvalue == pytest.approx(ref.pvalue, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(pairs(3, 60), st.sampled_from(ALTS))
def test_pearson_asymptotic_matches_scipy(xy: tuple[np.ndarray, np.ndarray], alt: str) -> None:
    x, y = xy
    assume(nonconstant(x, y))
    ref = ss.pearsonr(x, y, alternative=alt)
    got = stats.pearson(x, y, method="asymptotic", alternative=alt)  # type: ignore[arg-type]
    assert got.statistic == pytest.approx(ref.statistic, abs=1e-12)
    assert got.pvalue == pytest.approx(ref.pvalue, abs=1e-12)


def _rank_corr(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    ra = ss.rankdata(a, axis=axis)
    rb = ss.rankdata(b, axis=axis)
    ra = ra - ra.mean(axis=axis, keepdims=True)
    rb = rb - rb.mean(axis=axis, keepdims=True)
    return (ra * rb).sum(axis=axis) / np.sqrt((ra * ra).sum(axis=axis) * (rb * rb).sum(axis=axis))


def _corr(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    a = a - a.mean(axis=axis, keepdims=True)
    b = b - b.mean(axis=axis, keepdims=True)
    return (a * b).sum(axis=axis) / np.sqrt((a * a).sum(axis=axis) * (b * b).sum(axis=axis))


@settings(max_examples=40, deadline=None)
@given(pairs(2, 6), st.sampled_from(ALTS), st.booleans())
def test_exact_correlation_pvalues_equal_scipy_enumeration(
    xy: tuple[np.ndarray, np.ndarray], alt: str, rank: bool
) -> None:
    x, y = xy
    assume(nonconstant(x, y))
    fn = _rank_corr if rank else _corr
    ref = ss.permutation_test(
        (x, y), fn, permutation_type="pairings", vectorized=True, n_resamples=10**6, alternative=alt
    )
    f = stats.spearman if rank else stats.pearson
    got = f(x, y, method="exact", alternative=alt)  # type: ignore[arg-type]
    assert got.exact and got.n_permutations == math.factorial(len(x))
    if abs(ref.statistic) < 1e-12:
        # scipy counts ties within a tolerance relative to the observed statistic: at 0 that
        # tolerance is 0 and float noise (+-1e-17) decides which orderings tie. Enumerate with
        # an absolute tolerance instead.
        assert got.pvalue == pytest.approx(brute_corr_p(x, y, alt, fn), abs=1e-15)
    else:
        assert got.pvalue == ref.pvalue


def brute_corr_p(x: np.ndarray, y: np.ndarray, alt: str, fn=_rank_corr) -> float:
    """All n! orderings of y, the statistic recomputed for each."""
    r0 = fn(x, y)
    perms = np.array(list(itertools.permutations(range(len(y)))))
    null = fn(np.broadcast_to(x, perms.shape), y[perms])
    tol = 1e-9
    ge = float(np.mean(null >= r0 - tol))
    le = float(np.mean(null <= r0 + tol))
    return {"greater": ge, "less": le, "two-sided": min(1.0, 2 * min(ge, le))}[alt]


@settings(max_examples=10, deadline=None)
@given(pairs(7, 8, grid=5), st.sampled_from(ALTS))
def test_spearman_auto_is_exact_and_matches_brute_force(xy: tuple[np.ndarray, np.ndarray], alt: str) -> None:
    x, y = xy
    assume(nonconstant(x, y))
    got = stats.spearman(x, y, alternative=alt)  # type: ignore[arg-type]
    assert got.method == "exact"
    assert got.pvalue == pytest.approx(brute_corr_p(x, y, alt), abs=1e-15)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 5), st.integers(2, 5), st.integers(0, 2**32 - 1), st.sampled_from(ALTS))
def test_mean_diff_exact_equals_scipy(nx: int, ny: int, seed: int, alt: str) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, size=nx).astype(float)
    y = rng.integers(0, 6, size=ny).astype(float)

    def diff(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return a.mean(axis=axis) - b.mean(axis=axis)

    ref = ss.permutation_test(
        (x, y), diff, permutation_type="independent", vectorized=True, n_resamples=10**6, alternative=alt
    )
    got = stats.permutation_test(x, y, statistic="mean_diff", alternative=alt)  # type: ignore[arg-type]
    assert got.exact and got.n_permutations == math.comb(nx + ny, nx)
    assert got.statistic == pytest.approx(ref.statistic, abs=1e-12)
    assert got.pvalue == ref.pvalue


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 9), st.integers(0, 2**32 - 1), st.sampled_from(ALTS))
def test_paired_sign_flips_exact_equal_scipy(n: int, seed: int, alt: str) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 5, size=n).astype(float)
    y = rng.integers(0, 5, size=n).astype(float)

    def mean_diff(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return (a - b).mean(axis=axis)

    ref = ss.permutation_test(
        (x, y), mean_diff, permutation_type="samples", vectorized=True, n_resamples=10**6, alternative=alt
    )
    got = stats.permutation_test(x, y, statistic="mean", alternative=alt)  # type: ignore[arg-type]
    assert got.exact and got.n_permutations == 2**n
    assert got.pvalue == ref.pvalue


@settings(max_examples=8, deadline=None)
@given(pairs(14, 30, grid=None), st.integers(0, 1000))
def test_monte_carlo_pvalue_within_standard_error(xy: tuple[np.ndarray, np.ndarray], seed: int) -> None:
    x, y = xy
    assume(nonconstant(x, y))
    n_mc = 4000
    ref = ss.permutation_test(
        (x, y), _rank_corr, permutation_type="pairings", vectorized=True, n_resamples=40_000, rng=seed
    )
    got = stats.permutation_test(x, y, statistic="spearman", n_resamples=n_mc, seed=seed)
    assert not got.exact and got.n_permutations == n_mc
    p = ref.pvalue
    # two-sided p is twice a tail: its standard error doubles
    se = 2 * math.sqrt(max(p / 2 * (1 - p / 2), 1e-4) * (1 / n_mc + 1 / 40_000))
    assert abs(got.pvalue - p) < 4.5 * se + 2 / n_mc


def test_within_and_cluster_schemes_against_brute_force() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=6)
    y = rng.normal(size=6)
    g = np.array([0, 0, 0, 1, 1, 1])
    r0 = _corr(x, y)
    null = []
    for p0 in itertools.permutations(range(3)):
        for p1 in itertools.permutations(range(3, 6)):
            null.append(_corr(x, y[list(p0 + p1)]))
    null_a = np.array(null)
    got = stats.permutation_test(x, y, statistic="pearson", scheme="within", groups=g, alternative="greater")
    assert got.exact and got.n_permutations == 36
    assert got.pvalue == np.mean(null_a >= r0 - 1e-12)
    # clusters: y constant within 4 clusters of unequal size; permute the clusters' y values
    cl = np.array([0, 0, 1, 1, 1, 2, 3, 3])
    xv = rng.normal(size=8)
    yc = np.array([0.3, 1.7, -0.4, 2.5])
    yv = yc[cl]
    rho0 = _rank_corr(xv, yv)
    nullc = np.array([_rank_corr(xv, yc[list(p)][cl]) for p in itertools.permutations(range(4))])
    got = stats.permutation_test(xv, yv, statistic="spearman", scheme="clusters", groups=cl, alternative="less")
    assert got.exact and got.n_permutations == 24
    assert got.statistic == pytest.approx(rho0, abs=1e-12)
    assert got.pvalue == np.mean(nullc <= rho0 + 1e-9)


def _bca_reference(
    data: np.ndarray, dist: np.ndarray, theta: float, alpha: float, jack: np.ndarray
) -> tuple[float, float]:
    """scipy.stats.bootstrap's BCa interval (its _bca_interval) for a given distribution."""
    B = len(dist)
    z0 = sp.ndtri((np.count_nonzero(dist < theta) + np.count_nonzero(dist <= theta)) / (2 * B))
    n = len(jack)
    u = (n - 1) * (jack.mean() - jack)
    a = (u**3).sum() / n**3 / 6 / ((u**2).sum() / n**2) ** 1.5
    za = sp.ndtri(alpha)
    a1 = sp.ndtr(z0 + (z0 + za) / (1 - a * (z0 + za)))
    a2 = sp.ndtr(z0 + (z0 - za) / (1 - a * (z0 - za)))
    lo, hi = ss.quantile(dist, np.array([a1, a2]))
    return float(lo), float(hi)


@settings(max_examples=20, deadline=None)
@given(st.integers(5, 80), st.integers(0, 2**32 - 1), st.sampled_from(["mean", "median", "std"]))
def test_bca_interval_matches_scipy_formula(n: int, seed: int, statistic: str) -> None:
    rng = np.random.default_rng(seed)
    data = rng.exponential(size=n)
    r = stats.bootstrap_ci(data, statistic=statistic, method="bca", n_resamples=999, seed=seed)  # type: ignore[arg-type]
    f: Callable[[np.ndarray], float] = {
        "mean": np.mean,
        "median": np.median,
        "std": lambda v: np.std(v, ddof=1),
    }[statistic]  # type: ignore[assignment]
    theta = f(data)
    assert r.statistic == pytest.approx(theta, abs=1e-12)
    jack = np.array([f(np.delete(data, i)) for i in range(n)])
    alpha = (1 - 0.95) / 2  # as scipy computes it
    # z0 counts resamples below the estimate: use the estimate as computed by the core, since
    # summation order can move it by an ulp and resample means tie with it
    lo, hi = _bca_reference(data, r.bootstrap_distribution, r.statistic, alpha, jack)
    assert r.low == pytest.approx(lo, abs=1e-12) and r.high == pytest.approx(hi, abs=1e-12)
    assert r.standard_error == pytest.approx(np.std(r.bootstrap_distribution, ddof=1), abs=1e-12)
    p = stats.bootstrap_ci(data, statistic=statistic, method="percentile", n_resamples=999, seed=seed)  # type: ignore[arg-type]
    assert np.array_equal(p.bootstrap_distribution, r.bootstrap_distribution)
    assert (p.low, p.high) == tuple(ss.quantile(p.bootstrap_distribution, np.array([alpha, 1 - alpha])))
    b = stats.bootstrap_ci(data, statistic=statistic, method="basic", n_resamples=999, seed=seed)  # type: ignore[arg-type]
    assert b.low == pytest.approx(2 * theta - p.high, abs=1e-12)


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["percentile", "bca"]))
def test_bootstrap_agrees_with_scipy_within_monte_carlo_error(seed: int, method: str) -> None:
    rng = np.random.default_rng(seed)
    data = rng.gamma(2.0, size=300)
    ref = ss.bootstrap((data,), np.mean, method=method, n_resamples=9999, rng=seed)
    got = stats.bootstrap_ci(data, method=method, n_resamples=9999, seed=seed)  # type: ignore[arg-type]
    se = ref.standard_error
    assert abs(got.low - ref.confidence_interval.low) < 0.2 * se
    assert abs(got.high - ref.confidence_interval.high) < 0.2 * se
    assert abs(got.standard_error - se) < 0.05 * se


def test_clustered_bootstrap_matches_numpy_cluster_resampling() -> None:
    rng = np.random.default_rng(11)
    n_cl, size = 60, 10
    effect = rng.normal(scale=0.5, size=n_cl)
    data = (effect[:, None] + rng.normal(size=(n_cl, size))).ravel()
    labels = np.repeat(np.arange(n_cl), size)
    got = stats.bootstrap_ci(data, clusters=labels, method="percentile", n_resamples=9999, seed=1)
    sums = data.reshape(n_cl, size).sum(axis=1)
    pick = np.random.default_rng(2).integers(0, n_cl, size=(40_000, n_cl))
    ref = sums[pick].sum(axis=1) / (n_cl * size)
    se = ref.std(ddof=1)
    assert got.standard_error == pytest.approx(se, rel=0.05)
    lo, hi = ss.quantile(ref, np.array([0.025, 0.975]))
    assert abs(got.low - lo) < 0.15 * se and abs(got.high - hi) < 0.15 * se
    # clustering widens the interval relative to treating rows as independent
    flat = stats.bootstrap_ci(data, method="percentile", n_resamples=9999, seed=1)
    assert got.standard_error > 1.2 * flat.standard_error
    assert got.n_clusters == n_cl


def test_grouped_bootstrap_equals_per_group_bootstrap() -> None:
    rng = np.random.default_rng(4)
    n = 400
    t = pa.table(
        {
            "hit": rng.random(n) < 0.2,
            "persona": rng.choice(["villain", "assistant", "comedian"], size=n),
            "q": rng.integers(0, 20, size=n),
        }
    )
    out = stats.grouped_bootstrap(
        t, value="hit", by=["persona"], cluster="q", statistic="proportion", n_resamples=999, seed=7
    )
    assert out.column("persona").to_pylist() == ["assistant", "comedian", "villain"]
    pdict = t.to_pydict()
    for k, row in enumerate(out.to_pylist()):
        idx = [i for i, p in enumerate(pdict["persona"]) if p == row["persona"]]
        vals = np.array([pdict["hit"][i] for i in idx], dtype=float)
        cl = np.array([pdict["q"][i] for i in idx])
        one = stats.bootstrap_ci(
            vals, clusters=cl, statistic="proportion", n_resamples=999, seed=_core.group_seed(7, k)
        )
        assert (row["estimate"], row["low"], row["high"]) == (one.statistic, one.low, one.high)
        assert row["n"] == len(idx)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(2, 6), min_size=2, max_size=8), st.integers(0, 2**32 - 1))
def test_icc_matches_anova_by_hand(sizes: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(len(sizes)), sizes)
    values = rng.normal(size=len(sizes))[groups] + rng.normal(size=groups.size)
    N, g = values.size, len(sizes)
    means = np.array([values[groups == j].mean() for j in range(g)])
    msb = (np.array(sizes) * (means - values.mean()) ** 2).sum() / (g - 1)
    msw = ((values - means[groups]) ** 2).sum() / (N - g)
    k = (N - (np.array(sizes) ** 2).sum() / N) / (g - 1)
    r = stats.icc1(values, groups)
    assert r.statistic == pytest.approx((msb - msw) / (msb + (k - 1) * msw), abs=1e-12)
    assert r.pvalue == pytest.approx(ss.f.sf(msb / msw, g - 1, N - g), abs=1e-12)
    rk = stats.icc1k(values, [f"q{j}" for j in groups])
    assert rk.statistic == pytest.approx((msb - msw) / msb, abs=1e-12)
    # Shrout & Fleiss intervals from scipy's F quantiles
    f = msb / msw
    f_lo = f / ss.f.ppf(0.975, g - 1, N - g)
    f_hi = f * ss.f.ppf(0.975, N - g, g - 1)
    assert r.low == pytest.approx((f_lo - 1) / (f_lo + k - 1), abs=1e-9)
    assert r.high == pytest.approx((f_hi - 1) / (f_hi + k - 1), abs=1e-9)
    assert rk.low == pytest.approx(1 - 1 / f_lo, abs=1e-9) and rk.high == pytest.approx(1 - 1 / f_hi, abs=1e-9)


def test_design_effect_and_effective_n() -> None:
    assert stats.design_effect(10, 0.2) == pytest.approx(1 + 9 * 0.2, abs=1e-15)
    assert stats.effective_n(2200, 10, 0.2) == pytest.approx(2200 / 2.8, abs=1e-12)
    with pytest.raises(ValueError):
        stats.design_effect(0.5, 0.1)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=30))
def test_p_adjust_matches_definitions(p: list[float]) -> None:
    pv = np.array(p)
    m = len(pv)
    assert np.allclose(stats.p_adjust(pv, "bonferroni"), np.minimum(pv * m, 1), atol=1e-15, rtol=0)
    assert np.allclose(stats.p_adjust(pv, "bh"), ss.false_discovery_control(pv), atol=1e-12, rtol=0)
    order = np.argsort(pv, kind="stable")
    holm = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * pv[i])
        holm[i] = min(running, 1.0)
    assert np.allclose(stats.p_adjust(pv, "holm"), holm, atol=1e-15, rtol=0)


def test_mean_diff_within_and_clusters_and_sign_flip_clusters_brute_force() -> None:
    rng = np.random.default_rng(8)
    # within: labels permuted only inside each stratum (x then y carry the stratum labels)
    x = rng.integers(0, 9, size=5).astype(float)
    y = rng.integers(0, 9, size=4).astype(float)
    strata = np.array([0, 0, 1, 1, 1, 0, 0, 1, 1])  # for x (5) then y (4)
    v = np.r_[x, y]
    lab = np.r_[np.ones(5, bool), np.zeros(4, bool)]
    obs = x.mean() - y.mean()
    null = []
    s0, s1 = np.flatnonzero(strata == 0), np.flatnonzero(strata == 1)
    k0, k1 = int(lab[s0].sum()), int(lab[s1].sum())
    for c0 in itertools.combinations(s0, k0):
        for c1 in itertools.combinations(s1, k1):
            m = np.zeros(9, bool)
            m[list(c0 + c1)] = True
            null.append(v[m].mean() - v[~m].mean())
    got = stats.permutation_test(x, y, statistic="mean_diff", scheme="within", groups=strata, alternative="greater")
    assert got.exact and got.n_permutations == len(null)
    assert got.pvalue == np.mean(np.array(null) >= obs - 1e-12)
    # clusters: whole clusters move between x and y
    cl = np.array([0, 0, 1, 1, 1, 2, 2, 3, 4])  # clusters 0,1 in x; 2,3,4 in y
    nullc = []
    for cx in itertools.combinations(range(5), 2):
        m = np.isin(cl, cx)
        nullc.append(v[m].mean() - v[~m].mean())
    got = stats.permutation_test(x, y, statistic="mean_diff", scheme="clusters", groups=cl, alternative="less")
    assert got.exact and got.n_permutations == 10
    assert got.pvalue == np.mean(np.array(nullc) <= obs + 1e-12)
    # sign flips of whole clusters
    d = rng.normal(size=7)
    g = np.array([0, 0, 1, 2, 2, 2, 3])
    sums = np.array([d[g == j].sum() for j in range(4)])
    nulls = [float((np.array(s) * sums).sum() / 7) for s in itertools.product([1, -1], repeat=4)]
    got = stats.permutation_test(d, statistic="mean", scheme="clusters", groups=g)
    assert got.exact and got.n_permutations == 16
    ge = np.mean(np.array(nulls) >= d.mean() - 1e-12)
    le = np.mean(np.array(nulls) <= d.mean() + 1e-12)
    assert got.pvalue == pytest.approx(min(1.0, 2 * min(ge, le)), abs=1e-15)
