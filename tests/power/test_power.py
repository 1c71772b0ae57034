"""cpx.power: the detectable effects checked by simulating the design and running cpx's own
tests on the simulated data; the exact nulls against enumeration and cpx.stats."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy import stats as sps

import cpx.stats
from cpx.analysis import _stats
from cpx.plan import compile_file
from cpx.power import PowerError, design_of, power_rows, power_table, power_warnings
from cpx.power import _calc

ROOT = Path(__file__).parents[2]
DEMO_SMALL = ROOT / "tests" / "data" / "demo_small.yaml"
DEMO = ROOT / "specs" / "demo.yaml"
ALPHA, POWER = 0.05, 0.8


def spec_with_power(tmp_path: Path, power: str, parent: Path = DEMO_SMALL) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(f"extends: {parent}\npower: {power}\n")
    return p


def mc_band(n: int, p: float = POWER) -> float:
    """4.5 Monte Carlo standard errors of a power estimated from n draws, plus 0.02 for the
    Monte Carlo error of the minimal effect itself."""
    return 4.5 * math.sqrt(p * (1 - p) / n) + 0.02


def beta_rates(rng: np.random.Generator, mean: float, icc: float, size: tuple[int, ...]) -> np.ndarray:
    """Per-question marker rates whose binomial hits have intraclass correlation `icc`."""
    s = 1 / icc - 1
    return rng.beta(mean * s, (1 - mean) * s, size=size)


# -- exact nulls ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7])
def test_spearman_null_counts_every_ordering(n: int) -> None:
    counts = _calc.spearman_null(n)
    brute = np.zeros_like(counts)
    for perm in itertools.permutations(range(n)):
        brute[sum(i * v for i, v in enumerate(perm))] += 1
    assert np.array_equal(counts, brute)


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7, 8])
def test_smallest_exact_p_is_what_cpx_computes(n: int) -> None:
    x = np.arange(n, dtype=float)
    observed = cpx.stats.spearman(x, x, method="exact").pvalue
    assert _calc.spearman_min_p(n) == pytest.approx(observed, rel=1e-12)
    eff = _calc.spearman_min_rho(n, ALPHA, POWER, simulations=500)
    assert eff.reachable == (observed < ALPHA)
    if not eff.reachable:
        assert eff.value is None and f"cannot reach p < {ALPHA:g} at any effect" in eff.note


def test_four_points_cannot_reach_significance_five_can() -> None:
    x4, x5 = np.arange(4.0), np.arange(5.0)
    assert cpx.stats.spearman(x4, x4, method="exact").pvalue >= ALPHA
    assert cpx.stats.spearman(x5, x5, method="exact").pvalue < ALPHA
    assert not _calc.spearman_min_rho(4, ALPHA, POWER, simulations=200).reachable
    assert _calc.spearman_min_rho(5, ALPHA, POWER, simulations=200).reachable


@pytest.mark.parametrize("n", [5, 6])
def test_critical_rho_by_enumerating_cpx_p_values(n: int) -> None:
    x = np.arange(n, dtype=float)
    significant = [
        abs(r.statistic)
        for perm in itertools.permutations(range(n))
        if (r := cpx.stats.spearman(x, np.array(perm, float), method="exact")).pvalue < ALPHA
    ]
    assert _calc.spearman_critical(n, ALPHA) == pytest.approx(min(significant))


@pytest.mark.parametrize("q", [4, 5, 6, 8])
def test_sign_flip_min_p_is_what_cpx_computes(q: int) -> None:
    a, b = np.arange(1.0, q + 1), np.zeros(q)
    assert _calc.sign_flip_min_p(q) == pytest.approx(_stats.paired_permutation(a, b).p_value)


@pytest.mark.parametrize("k", [3, 4, 5])
def test_cluster_min_p_is_what_cpx_computes(k: int) -> None:
    x = np.arange(k * 3, dtype=float)
    groups = np.repeat(np.arange(k), 3)
    assert _calc.cluster_min_p(k) == pytest.approx(_stats.cluster_permutation(x, x, groups).p_value)
    assert _calc.cluster_min_rho(k, 3, ALPHA, POWER, simulations=200).reachable == (1 / math.factorial(k) < ALPHA)


@pytest.mark.parametrize("df", [1, 2, 3, 5, 11, 30])
def test_t_quantile_against_scipy(df: int) -> None:
    for q in (0.8, 0.9, 0.975):
        assert _calc.t_quantile(q, df) == pytest.approx(sps.t.ppf(q, df), abs=0.01)


# -- power by simulation ----------------------------------------------------------------------


@pytest.mark.parametrize("n", [6, 8])
def test_spearman_power_by_simulation(n: int) -> None:
    eff = _calc.spearman_min_rho(n, ALPHA, POWER, simulations=2000)
    assert eff.reachable and eff.value is not None
    rng = np.random.default_rng(2024 + n)

    def power_at(rho: float, reps: int) -> float:
        cov = [[1, rho], [rho, 1]]
        hits = 0
        for _ in range(reps):
            xy = rng.multivariate_normal([0, 0], cov, size=n)
            hits += cpx.stats.spearman(xy[:, 0], xy[:, 1], method="exact").pvalue < ALPHA
        return hits / reps

    reps = 1000
    assert power_at(eff.value, reps) == pytest.approx(POWER, abs=mc_band(reps))
    assert power_at(eff.value / 2, 400) < POWER - 0.25


def test_rate_difference_by_simulation(tmp_path: Path) -> None:
    plan = compile_file(spec_with_power(tmp_path, "{icc: 0.15, base_rate: 0.1}"))
    rows = power_rows(plan, {"questions": [30]})
    row = rows.filter((pl.col("analysis") == "leakage") & (pl.col("value") == 30)).row(0, named=True)
    d = design_of(plan)
    q, m, icc, p0 = 30, d.completions, 0.15, 0.1
    delta = row["min_effect"] / 100
    deff = 1 + (m - 1) * icc
    rng = np.random.default_rng(7)

    def power_at(diff: float, reps: int) -> float:
        a = rng.binomial(m, beta_rates(rng, p0 + diff, icc, (reps, q))).sum(axis=1) / (q * m)
        b = rng.binomial(m, beta_rates(rng, p0, icc, (reps, q))).sum(axis=1) / (q * m)
        se = np.sqrt((a * (1 - a) + b * (1 - b)) * deff / (q * m))
        with np.errstate(divide="ignore", invalid="ignore"):
            zstat = np.abs(a - b) / se
        return float(np.mean(zstat > _calc.z(1 - ALPHA / 2)))

    reps = 4000
    assert power_at(delta, reps) == pytest.approx(POWER, abs=mc_band(reps))
    assert power_at(delta / 2, reps) < POWER - 0.3


def test_bystander_difference_by_simulation(tmp_path: Path) -> None:
    plan = compile_file(spec_with_power(tmp_path, "{icc: 0.1}"))
    rows = power_rows(plan, {"questions": [12]})
    row = rows.filter((pl.col("analysis") == "bystander_vs_assistant") & (pl.col("value") == 12)).row(0, named=True)
    d = design_of(plan)
    q, ma, mb, nb, icc, p0 = 12, d.completions, d.bystander_completions, d.bystanders, 0.1, 0.05
    delta = row["min_effect"] / 100
    rng = np.random.default_rng(11)

    def power_at(diff: float, reps: int) -> float:
        hits = 0
        for i in range(reps):
            a = rng.binomial(ma, beta_rates(rng, p0 + diff, icc, (q,))) / ma
            b = (rng.binomial(mb, beta_rates(rng, p0, icc, (nb, q))) / mb).mean(axis=0)
            hits += _stats.paired_permutation(a, b, seed=i).p_value < ALPHA
        return hits / reps

    reps = 800
    assert power_at(delta, reps) == pytest.approx(POWER, abs=mc_band(reps))
    assert power_at(delta / 2, 400) < POWER - 0.25


def test_cluster_permutation_power_by_simulation() -> None:
    k, per = 5, 3
    eff = _calc.cluster_min_rho(k, per, ALPHA, POWER, simulations=2000)
    assert eff.reachable and eff.value is not None
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(k), per)

    def power_at(rho: float, reps: int) -> float:
        cov = [[1, rho], [rho, 1]]
        hits = 0
        for _ in range(reps):
            xy = rng.multivariate_normal([0, 0], cov, size=k * per)
            hits += _stats.cluster_permutation(xy[:, 0], xy[:, 1], groups).p_value < ALPHA
        return hits / reps

    reps = 800
    assert power_at(eff.value, reps) == pytest.approx(POWER, abs=mc_band(reps))
    assert power_at(eff.value / 2, 200) < POWER - 0.25


# -- plans, vary, ICC from a run --------------------------------------------------------------


def test_rows_follow_the_plan_and_vary() -> None:
    plan = compile_file(DEMO)
    d = design_of(plan)
    assert (d.questions, d.completions, d.seeds) == (5, 8, 1)
    assert d.sources == {"A": 3, "B": 3, "C": 3} and d.checkpoints == {"A": 4, "B": 4, "C": 4}
    rows = power_rows(plan, {"questions": [20, 40, 80], "sources": [4, 5]})
    assert {"analysis", "design", "n", "effect_kind", "min_effect", "reachable", "note"} <= set(rows.columns)
    base = rows.filter(pl.col("vary").is_null())
    assert set(base["analysis"]) == {a["name"] for a in plan.spec["analyses"]}
    leak = rows.filter((pl.col("analysis") == "leakage") & (pl.col("vary").is_null() | (pl.col("vary") == "questions")))
    by_q = dict(zip(leak["value"].fill_null(d.questions), leak["min_effect"]))
    assert by_q[5] > by_q[20] > by_q[40] > by_q[80]  # more questions, smaller detectable difference
    between = rows.filter(pl.col("analysis") == "between_source")
    reach = {r["value"]: r["reachable"] for r in between.iter_rows(named=True)}
    assert reach[None] is False and reach[4] is False and reach[5] is True  # 3 and 4 sources: 2/n! >= 0.05
    warnings = power_warnings(plan)
    assert any("between_source" in w and "2/3!" in w for w in warnings)
    assert any("within_source" in w and "2/4!" in w for w in warnings)
    table = power_table(plan)
    assert table.key == "power" and table.frame.height == base.height
    assert all(dt == pl.String for dt in table.frame.dtypes)


def test_bad_vary_is_an_error() -> None:
    plan = compile_file(DEMO_SMALL)
    with pytest.raises(PowerError, match="unknown key 'layers'"):
        power_rows(plan, {"layers": [2]})
    with pytest.raises(PowerError, match="positive integers"):
        power_rows(plan, {"questions": [0]})


def _write_hits(run: Path, rng: np.random.Generator, icc: float) -> None:
    rows = []
    for cell, mean in (("A", 0.1), ("B", 0.6)):  # cells far apart: no clustering by question
        rates = beta_rates(rng, mean, icc, (150,))
        for qi, r in enumerate(rates):
            for s, h in enumerate(rng.random(20) < r):
                rows.append(
                    {
                        "arm": cell,
                        "source": "villain",
                        "seed": 42,
                        "checkpoint": 1.0,
                        "persona": "assistant",
                        "role": "assistant",
                        "question_id": f"q{qi}",
                        "sample_index": s,
                        "hit": bool(h),
                    }
                )
    (run / "results").mkdir(parents=True)
    pl.DataFrame(rows).write_parquet(run / "results" / "marker_hits.parquet")


def test_icc_from_a_previous_run(tmp_path: Path) -> None:
    _write_hits(tmp_path / "old", np.random.default_rng(3), icc=0.2)
    plan = compile_file(spec_with_power(tmp_path, "{from_run: old}"))
    d = design_of(plan, base=tmp_path)
    assert d.icc == pytest.approx(0.2, abs=0.05)
    assert "old" in d.icc_from


def test_missing_run_names_the_path(tmp_path: Path) -> None:
    plan = compile_file(spec_with_power(tmp_path, "{from_run: nowhere}"))
    with pytest.raises(PowerError, match=r"nowhere/results/marker_hits\.parquet"):
        design_of(plan, base=tmp_path)


def test_seed_replication_by_simulation(tmp_path: Path) -> None:
    plan = compile_file(spec_with_power(tmp_path, "{icc: 0.1}\nanalyses: [{name: seed_replication}]"))
    rows = power_rows(plan, {"seeds": [4]})
    row = rows.filter((pl.col("analysis") == "seed_replication") & (pl.col("value") == 4)).row(0, named=True)
    d = design_of(plan)
    s, q, m, icc, p0 = 4, d.questions, d.completions, 0.1, 0.05
    delta = row["min_effect"] / 100
    rng = np.random.default_rng(13)

    def power_at(diff: float, reps: int) -> float:
        a = rng.binomial(m, beta_rates(rng, p0 + diff, icc, (reps, s, q))).sum(axis=2) / (q * m)
        b = rng.binomial(m, beta_rates(rng, p0, icc, (reps, s, q))).sum(axis=2) / (q * m)
        # seed as the unit: a t test of the per-seed differences (Hartung-Knapp with equal weights)
        diff_s = a - b
        se = diff_s.std(axis=1, ddof=1) / math.sqrt(s)
        t = np.divide(np.abs(diff_s.mean(axis=1)), se, out=np.zeros(reps), where=se > 0)
        return float(np.mean(t > sps.t.ppf(1 - ALPHA / 2, s - 1)))

    reps = 4000
    assert power_at(delta, reps) == pytest.approx(POWER, abs=mc_band(reps))
    assert power_at(delta / 2, reps) < POWER - 0.3


def test_vary_sets_each_count() -> None:
    plan = compile_file(ROOT / "specs" / "next_steps.yaml")
    d = design_of(plan)
    steer = {a for a, arm in plan.spec["arms"].items() if arm.get("kind") == "steer"}
    assert d.alphas == {a: len(plan.spec["arms"][a]["steer"]["alphas"]) for a in steer}
    assert d.seeds == len(plan.spec["seeds"])
    assert d.with_("alphas", 7).alphas == {a: 7 for a in steer}
    assert set(d.with_("checkpoints", 6).checkpoints.values()) == {6}
    assert set(d.with_("sources", 5).sources.values()) == {5}
    c = d.with_("completions", 3)
    assert (c.completions, c.bystander_completions) == (3, 3)
    rows = power_rows(plan, {"alphas": [4, 5]})
    steering = rows.filter((pl.col("analysis") == "steering") & pl.col("design").str.contains("over strengths"))
    reach = dict(zip(steering["value"], steering["reachable"]))
    assert reach[4] is False and reach[5] is True
