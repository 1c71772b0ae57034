"""Steer arms' rows and the steering analysis, and replication over seeds, against scipy,
brute force and simulation on random inputs."""

import itertools

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from scipy import stats as ss

from cpx.analysis import Options, analyze_metrics, analyze_tables, stats_markdown
from cpx.analysis._metrics import steered, trained
from cpx.analysis._seeds import random_effects, t_quantile, t_two_sided
from steer_synth import make_steer_tables, with_steer
from synth_results import make_tables
from test_analysis_correlation import brute_cluster_p, brute_exact_spearman_p

OPTS = Options(n_resamples=999, bootstrap_resamples=200)
SEEDS = (42, 43, 44)
OWN = ("steering", "steering_curve", "steering_pooled", "seed_replication")


@pytest.fixture(scope="module")
def plain():
    return make_tables(seed=5, arms=("A", "B"), seeds=SEEDS)


@pytest.fixture(scope="module")
def steer():
    return make_steer_tables(seed=6, seeds=SEEDS)


@pytest.fixture(scope="module")
def both(plain, steer):
    return analyze_tables(with_steer(plain, steer), OPTS)


def test_steer_rows_leave_every_other_analysis_unchanged(plain, steer, both):
    alone = analyze_tables(plain, OPTS)
    assert_frame_equal(trained(both.metrics), alone.metrics)
    assert steered(both.metrics)["arm"].unique().to_list() == ["S"]
    others = [pl.col("analysis").is_in(OWN).not_(), pl.col("arm").ne_missing("S")]
    assert_frame_equal(both.stats.filter(*others), alone.stats.filter(*others))
    # seed_replication of the train arms does not depend on the steer arm either
    rep = [pl.col("analysis") == "seed_replication", pl.col("arm") != "S"]
    assert_frame_equal(both.stats.filter(*rep), alone.stats.filter(*rep))
    assert set(alone.stats.filter(pl.col("analysis").str.starts_with("steering"))["analysis"]) == set()
    # the checkpoint analyses never see the steer arm
    ck = both.stats.filter(pl.col("analysis").is_in(OWN).not_())
    assert "S" not in ck["arm"].to_list()
    assert both.stats.filter(pl.col("analysis").str.starts_with("steering"))["arm"].unique().to_list() == ["S"]


def test_steer_metrics_are_the_raw_rates_and_the_source_assistant_cosine(steer, both):
    sm = steered(both.metrics)
    hits, cos = steer["marker_hits"], steer["cosines"]
    assert sm.select("source", "seed", "alpha", "layer").is_duplicated().sum() == 0
    assert sm.height == hits.select("source", "seed", "alpha").unique().height * 2  # 2 layers
    for r in sm.sample(12, seed=1).iter_rows(named=True):
        at = [pl.col("source") == r["source"], pl.col("seed") == r["seed"], pl.col("alpha") == r["alpha"]]
        for role in ("source", "assistant", "bystander"):
            g = hits.filter(*at, pl.col("role") == role)
            assert r[f"{role}_rate"] == pytest.approx(g["hit"].cast(float).mean())
        ref = cos.filter(
            *at,
            pl.col("layer") == r["layer"],
            ((pl.col("persona_a") == r["source"]) & (pl.col("persona_b") == "assistant"))
            | ((pl.col("persona_b") == r["source"]) & (pl.col("persona_a") == "assistant")),
        )
        assert ref.height == 1 and r["cosine"] == ref["cosine"][0]
        assert r["checkpoint"] is None


def test_steering_spearman_per_seed_matches_scipy_and_brute_force(both):
    sm = steered(both.metrics)
    rows = both.stats.filter(pl.col("analysis") == "steering")
    checked = 0
    for (src, seed, layer), g in sm.group_by(["source", "seed", "layer"]):
        g = g.sort("alpha")
        for y in ("assistant_rate", "bystander_rate"):
            r = rows.filter(
                (pl.col("source") == src) & (pl.col("seed") == seed) & (pl.col("layer") == layer) & (pl.col("y") == y)
            )
            x, v = g["cosine"].to_numpy(), g[y].to_numpy()
            if np.ptp(x) == 0 or np.ptp(v) == 0:
                assert r.height == 1 and r["note"][0].startswith("skipped")
                continue
            exact = r.filter(pl.col("p_method") == "exact").row(0, named=True)
            asym = r.filter(pl.col("p_method") == "asymptotic").row(0, named=True)
            ref = ss.spearmanr(x, v)
            assert exact["estimate"] == pytest.approx(ref.statistic, abs=1e-12)
            assert asym["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
            assert exact["p_value"] == pytest.approx(brute_exact_spearman_p(x, v), abs=1e-12)
            assert exact["n"] == 5
            checked += 1
    assert checked >= 20
    # layer 1 lies before the steered layer: its cosine does not move, every test is skipped
    l1 = rows.filter(pl.col("layer") == 1)
    assert l1.height > 0 and l1["note"].str.starts_with("skipped").all()
    assert rows.filter(pl.col("p_value").is_not_null())["family"].unique().sort().to_list() == [
        "steering/S/asymptotic",
        "steering/S/exact",
    ]


def test_steering_pooled_is_a_cluster_permutation_over_sources_of_the_seed_means(both):
    sm = steered(both.metrics).filter(pl.col("layer") == 2)
    mean = (
        sm.group_by("source", "alpha")
        .agg(pl.col("cosine").mean(), pl.col("assistant_rate").mean(), pl.col("seed").n_unique().alias("k"))
        .sort("source", "alpha")
    )
    assert (mean["k"] == 3).all()
    row = both.stats.filter(
        (pl.col("analysis") == "steering_pooled")
        & (pl.col("layer") == 2)
        & (pl.col("y") == "assistant_rate")
        & (pl.col("p_method") == "cluster_permutation")
    ).row(0, named=True)
    x, y, g = mean["cosine"].to_numpy(), mean["assistant_rate"].to_numpy(), mean["source"].to_list()
    assert row["estimate"] == pytest.approx(ss.spearmanr(x, y).statistic, abs=1e-12)
    assert row["p_value"] == pytest.approx(brute_cluster_p(x, y, g), abs=1e-12)
    assert row["n_clusters"] == 4 and "mean over 3 seeds" in row["note"]


def test_steering_curve_pools_seeds_with_the_random_effects_mean(both):
    sm = steered(both.metrics)
    curve = both.stats.filter(pl.col("analysis") == "steering_curve")
    r = curve.filter(
        (pl.col("source") == "villain") & (pl.col("alpha") == 2.0) & (pl.col("y") == "cosine") & (pl.col("layer") == 2)
    ).row(0, named=True)
    vals = (
        sm.filter((pl.col("source") == "villain") & (pl.col("alpha") == 2.0) & (pl.col("layer") == 2))
        .sort("seed")["cosine"]
        .to_numpy()
    )
    lo, hi = ss.t.interval(0.95, 2, loc=vals.mean(), scale=ss.sem(vals))
    assert r["estimate"] == pytest.approx(vals.mean())
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((max(lo, -1), min(hi, 1)))
    assert r["seed"] is None and r["n_clusters"] == 3
    rates = curve.filter(pl.col("y") == "assistant_rate")
    assert rates.height == 4 * 5 and (rates["ci_low"] >= 0).all() and (rates["ci_high"] <= 1).all()


def test_one_seed_curve_keeps_the_bootstrap_interval_and_seed_replication_is_skipped():
    t = make_steer_tables(seed=7, seeds=(42,), sources=("villain", "comedian", "librarian"))
    a = analyze_tables(t, OPTS)
    sm = steered(a.metrics)
    curve = a.stats.filter((pl.col("analysis") == "steering_curve") & (pl.col("y") == "assistant_rate"))
    for r in curve.iter_rows(named=True):
        m = sm.filter((pl.col("source") == r["source"]) & (pl.col("alpha") == r["alpha"])).row(0, named=True)
        assert (r["estimate"], r["ci_low"], r["ci_high"]) == (
            m["assistant_rate"],
            m["assistant_ci_low"],
            m["assistant_ci_high"],
        )
        assert r["seed"] == 42
    rep = a.stats.filter(pl.col("analysis") == "seed_replication")
    assert rep.height == 1 and rep["note"][0].startswith("skipped: 1 seed(s) (42)")
    assert rep["p_value"].null_count() == 1


def test_seed_replication_per_seed_estimates_and_pooled_interval(plain, both):
    rep = both.stats.filter(pl.col("analysis") == "seed_replication")
    m = trained(both.metrics)
    # within-source rho per seed: scipy on that seed's own trajectory
    wr = rep.filter(
        (pl.col("statistic") == "within_source_rho")
        & (pl.col("arm") == "B")
        & (pl.col("source") == "villain")
        & (pl.col("layer") == 3)
    )
    per = wr.filter(pl.col("seed").is_not_null()).sort("seed")
    assert per["seed"].to_list() == list(SEEDS)
    for r in per.iter_rows(named=True):
        g = m.filter(
            (pl.col("arm") == "B")
            & (pl.col("source") == "villain")
            & (pl.col("layer") == 3)
            & (pl.col("seed") == r["seed"])
        ).sort("checkpoint")
        assert r["estimate"] == pytest.approx(ss.spearmanr(g["cosine"], g["assistant_rate"]).statistic)
    pooled = wr.filter(pl.col("seed").is_null()).row(0, named=True)
    rho = per["estimate"].to_numpy()
    lo, hi = ss.t.interval(0.95, 2, loc=rho.mean(), scale=ss.sem(rho))
    assert pooled["estimate"] == pytest.approx(rho.mean())
    assert (pooled["ci_low"], pooled["ci_high"]) == pytest.approx((max(lo, -1), min(hi, 1)))
    assert pooled["tau2"] == pytest.approx(rho.var(ddof=1)) and pooled["i2"] is None
    # rates at the last checkpoint: inverse-variance weights from each seed's bootstrap
    # interval; a seed with a zero-width interval (a rate of 0 everywhere) makes them equal
    z = ss.norm.ppf(0.975)
    lf = m.filter((pl.col("checkpoint") == 1.0) & (pl.col("layer") == 2))
    kinds = set()
    for (arm, src, stat), g in rep.filter(pl.col("statistic").str.ends_with("rate")).group_by(
        ["arm", "source", "statistic"]
    ):
        per = g.filter(pl.col("seed").is_not_null()).sort("seed")
        got = g.filter(pl.col("seed").is_null()).row(0, named=True)
        ref_rows = lf.filter((pl.col("arm") == arm) & (pl.col("source") == src)).sort("seed")
        role = stat.removesuffix("_rate")
        y = ref_rows[stat].to_numpy()
        assert per["estimate"].to_list() == pytest.approx(y.tolist())
        v = ((ref_rows[f"{role}_ci_high"] - ref_rows[f"{role}_ci_low"]) / (2 * z)).to_numpy() ** 2
        if (v > 0).all():
            ref = dl_hk(y, v)
            kinds.add("inverse_variance")
            assert got["tau2"] == pytest.approx(ref["tau2"], abs=1e-12)
            assert got["i2"] == pytest.approx(ref["i2"], abs=1e-12)
        else:
            sem = ss.sem(y) if np.ptp(y) > 0 else 0.0
            lo, hi = ss.t.interval(0.95, 2, loc=y.mean(), scale=sem) if sem else (y.mean(), y.mean())
            ref = {"mu": y.mean(), "lo": lo, "hi": hi}
            kinds.add("equal")
        assert got["estimate"] == pytest.approx(ref["mu"], abs=1e-12)
        assert got["ci_low"] == pytest.approx(max(0.0, ref["lo"]), abs=1e-12)
        assert got["ci_high"] == pytest.approx(min(1.0, ref["hi"]), abs=1e-12)
    assert kinds == {"inverse_variance", "equal"}
    # the steering rho per seed comes from the steering rows
    sr = rep.filter((pl.col("statistic") == "steering_rho") & pl.col("seed").is_not_null())
    st_rows = both.stats.filter(
        (pl.col("analysis") == "steering") & (pl.col("p_method") == "exact") & (pl.col("y") == "assistant_rate")
    )
    assert sr.height == st_rows.height > 0
    md = stats_markdown(both)
    for title in (
        "Steering curve",
        "Steering: Spearman",
        "Steering pooled over strengths",
        "Replication over seeds",
        "seed 43",
    ):
        assert title in md, title


def dl_hk(y, v, level=0.95):
    """DerSimonian-Laird and Hartung-Knapp written out term by term, for reference."""
    k = len(y)
    w = [1 / vi for vi in v]
    mu_fe = sum(wi * yi for wi, yi in zip(w, y)) / sum(w)
    q = sum(wi * (yi - mu_fe) ** 2 for wi, yi in zip(w, y))
    c = sum(w) - sum(wi * wi for wi in w) / sum(w)
    tau2 = max(0.0, (q - (k - 1)) / c)
    ws = [1 / (vi + tau2) for vi in v]
    mu = sum(wi * yi for wi, yi in zip(ws, y)) / sum(ws)
    var = sum(wi * (yi - mu) ** 2 for wi, yi in zip(ws, y)) / ((k - 1) * sum(ws))
    t = ss.t.ppf(0.5 + level / 2, k - 1)
    return {
        "mu": mu,
        "tau2": tau2,
        "q": q,
        "i2": max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0,
        "lo": mu - t * var**0.5,
        "hi": mu + t * var**0.5,
    }


@settings(max_examples=60, deadline=None)
@given(k=st.integers(2, 8), seed=st.integers(0, 10_000), level=st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_random_effects_matches_the_reference_on_random_inputs(k, seed, level):
    rng = np.random.default_rng(seed)
    y = rng.normal(0, rng.uniform(0.01, 2), k)
    v = rng.uniform(0.001, 1, k)
    got = random_effects(y, v, confidence_level=level)
    ref = dl_hk(y, v, level)
    assert got.weights == "inverse_variance" and got.k == k
    assert got.estimate == pytest.approx(ref["mu"], rel=1e-9, abs=1e-12)
    assert got.tau2 == pytest.approx(ref["tau2"], rel=1e-9, abs=1e-12)
    assert got.q == pytest.approx(ref["q"], rel=1e-9)
    assert got.i2 == pytest.approx(ref["i2"], rel=1e-9, abs=1e-12)
    assert (got.ci_low, got.ci_high) == pytest.approx((ref["lo"], ref["hi"]), rel=1e-9, abs=1e-12)
    # the pooled mean minimises the random-effects weighted squares (an independent route: WLS)
    sw = np.sqrt(1 / (v + got.tau2))
    beta, *_ = np.linalg.lstsq(sw[:, None], sw * y, rcond=None)
    assert got.estimate == pytest.approx(beta[0], rel=1e-9, abs=1e-12)
    # without within-seed variances: equal weights, the plain t interval of the estimates
    eq = random_effects(y, None, confidence_level=level)
    lo, hi = ss.t.interval(level, k - 1, loc=y.mean(), scale=ss.sem(y))
    assert (eq.estimate, eq.ci_low, eq.ci_high) == pytest.approx((y.mean(), lo, hi), rel=1e-9, abs=1e-12)
    assert eq.tau2 == pytest.approx(y.var(ddof=1)) and eq.i2 is None and eq.weights == "equal"
    # equal within-seed variances: DL reduces to tau2 = max(0, s^2 - v)
    same = random_effects(y, [0.3] * k, confidence_level=level)
    assert same.tau2 == pytest.approx(max(0.0, y.var(ddof=1) - 0.3), abs=1e-12)


def test_hartung_knapp_interval_covers_at_its_level_in_simulation():
    """Three seeds from a random-effects model (seed effect tau^2 = 0.04, unequal within
    variances): the 95% interval covers the true mean in about 95% of 4000 draws."""
    rng = np.random.default_rng(11)
    hits = 0
    n = 4000
    for _ in range(n):
        v = rng.uniform(0.005, 0.05, 3)
        y = 0.3 + rng.normal(0, 0.2, 3) + rng.normal(0, np.sqrt(v))
        r = random_effects(y, v)
        hits += r.ci_low <= 0.3 <= r.ci_high
    assert abs(hits / n - 0.95) < 0.025


def test_random_effects_errors_and_zero_variances():
    with pytest.raises(ValueError, match="at least 2 estimates"):
        random_effects([0.1])
    with pytest.raises(ValueError, match="2 variances for 3 estimates"):
        random_effects([0.1, 0.2, 0.3], [0.1, 0.1])
    with pytest.raises(ValueError, match="finite"):
        random_effects([0.1, float("nan")])
    # a rate of 0 on every question has variance 0: equal weights, v-bar from the others
    r = random_effects([0.0, 0.2, 0.4], [0.0, 0.01, 0.02])
    assert r.weights == "equal" and r.within_var == pytest.approx(0.01)
    assert r.tau2 == pytest.approx(np.var([0.0, 0.2, 0.4], ddof=1) - 0.01)


def test_t_quantile_matches_scipy():
    for df, level in itertools.product(range(1, 31), (0.5, 0.8, 0.95, 0.99, 0.999)):
        assert t_quantile(level, df) == pytest.approx(ss.t.ppf(0.5 + level / 2, df), rel=1e-9)
        for t in (0.05, 0.7, 2.5, 12.0):
            assert t_two_sided(t, df) == pytest.approx(1 - 2 * ss.t.sf(t, df), abs=1e-12)


def test_metrics_table_with_alpha_rows_goes_to_steering(both):
    """`cpx analyze --metrics` on a table with steer rows: the same split."""
    m = both.metrics.select(
        "arm",
        "source",
        "seed",
        "checkpoint",
        "alpha",
        "layer",
        "cosine",
        "source_rate",
        "assistant_rate",
        "bystander_rate",
    )
    a = analyze_metrics(m.with_columns(pl.col("alpha").cast(pl.String)), OPTS)
    got = a.stats.filter(pl.col("analysis") == "steering", pl.col("p_method") == "exact")
    ref = both.stats.filter(pl.col("analysis") == "steering", pl.col("p_method") == "exact")
    assert_frame_equal(
        got.select("source", "seed", "layer", "y", "estimate", "p_value"),
        ref.select("source", "seed", "layer", "y", "estimate", "p_value"),
    )
    ws = a.stats.filter(pl.col("analysis") == "within_source")
    assert "S" not in ws["arm"].to_list() and ws.height > 0


def test_a_stage_shared_by_seeds_counts_for_every_seed(plain):
    """A seed-independent stage is labelled with the first seed and lists all in `seeds`."""
    hits = plain["marker_hits"]
    shared = hits.filter((pl.col("seed") == 42) & (pl.col("checkpoint") == 0.0)).with_columns(
        pl.lit(list(SEEDS)).alias("seeds")
    )
    rest = hits.filter((pl.col("checkpoint") != 0.0)).with_columns(pl.concat_list("seed").alias("seeds"))
    a = analyze_tables({"marker_hits": pl.concat([shared, rest])}, OPTS)
    at0 = a.metrics.filter(pl.col("checkpoint") == 0.0).sort("arm", "source", "seed")
    assert at0["seed"].unique().sort().to_list() == list(SEEDS)
    by_seed = at0.group_by("arm", "source").agg(pl.col("source_rate").n_unique().alias("k"))
    assert (by_seed["k"] == 1).all()  # the same rows for every seed


def test_a_stage_a_steer_arm_shares_with_a_train_arm_counts_for_the_train_arm(plain, steer, both):
    """The represent stage of arm A at checkpoint 0 also gives arm S its steering direction
    (labels arms [A, S], no alpha): its rows count for A, and S has no checkpoint point."""

    def listed(df, shared):
        return df.with_columns(
            pl.when(shared).then(pl.lit(["A", "S"])).otherwise(pl.concat_list(pl.col("arm"))).alias("arms")
        )

    shared = (pl.col("arm") == "A") & (pl.col("checkpoint") == 0.0)
    tables = with_steer(
        {**plain, "cosines": listed(plain["cosines"], shared)}, {k: listed(v, pl.lit(False)) for k, v in steer.items()}
    )
    a = analyze_tables(tables, OPTS)
    assert_frame_equal(a.metrics, both.metrics)
    assert trained(a.metrics).filter(pl.col("arm") == "S").is_empty()


def test_pooling_says_when_seeds_are_missing_or_the_interval_has_no_width():
    """Equal correlations from every seed (no within-seed variance) give a zero-width
    Hartung-Knapp interval: the stats note and the table's star say it means nothing; a seed
    without an estimate is named."""
    from cpx.analysis._seeds import seed_replication
    from cpx.analysis._tables import seed_table
    from cpx.analysis._columns import normalize_metrics, stats_frame

    steering = [
        {
            "analysis": "steering",
            "arm": "S",
            "source": "villain",
            "seed": s,
            "layer": 1,
            "x": "cosine",
            "y": "assistant_rate",
            "estimate": rho,
            "n": 5,
            # as `steering` writes them: a test skipped for a constant variable has no p_method
            "p_method": "exact" if rho is not None else None,
        }
        for s, rho in ((1, 0.7), (2, 0.7), (3, None))
    ]
    none = [None] * 3
    metrics = normalize_metrics(
        pl.DataFrame(
            {
                "arm": ["S"] * 3,
                "source": ["villain"] * 3,
                "seed": [1, 2, 3],
                "checkpoint": none,
                "layer": none,
                "cosine": none,
                "source_rate": none,
                "assistant_rate": none,
                "bystander_rate": none,
            }
        )
    )
    rows = seed_replication(metrics, checkpoint=None, steering_rows=steering)
    pooled = [r for r in rows if r.get("seed") is None and r.get("estimate") is not None]
    assert len(pooled) == 1
    note = pooled[0]["note"]
    assert "2 of 3 seeds" in note and "seed(s) 3 have no estimate" in note and "has no width" in note
    assert pooled[0]["ci_low"] == pooled[0]["ci_high"] == pytest.approx(0.7)
    table = seed_table(stats_frame(rows)).frame
    assert table["pooled [interval]"][0].endswith(" *")
