"""Analyses 3 and 4 against scipy and brute-force references on random metrics tables."""

import itertools
import math

import numpy as np
import polars as pl
import pytest
from scipy import stats as ss

from cpx.analysis import analyze_metrics, normalize_metrics


def brute_exact_spearman_p(x, y):
    """Two-sided exact p: the share of all n! orderings of y with |rho| >= |rho observed|."""
    rho = ss.spearmanr(x, y).statistic
    null = [ss.spearmanr(x, np.asarray(y)[list(p)]).statistic for p in itertools.permutations(range(len(y)))]
    return float(np.mean(np.abs(null) >= abs(rho) - 1e-12))


def brute_cluster_p(x, y, groups):
    """Two-sided p from permuting whole clusters' y-blocks (equal-sized, ordered blocks)."""
    labs = list(dict.fromkeys(groups))
    blocks = [[i for i, g in enumerate(groups) if g == lab] for lab in labs]
    obs = ss.spearmanr(x, y).statistic
    xs = np.concatenate([np.asarray(x)[b] for b in blocks])
    null = []
    for p in itertools.permutations(range(len(blocks))):
        ys = np.concatenate([np.asarray(y)[blocks[j]] for j in p])
        null.append(ss.spearmanr(xs, ys).statistic)
    return float(np.mean(np.abs(null) >= abs(obs) - 1e-12))


def icc1_anova(values, groups):
    """ICC(1) from the one-way ANOVA mean squares (balanced groups)."""
    v = np.asarray(values, float)
    labs = sorted(set(groups))
    k, n = len(labs), len(v)
    m = n / k
    grp = [v[[i for i, g in enumerate(groups) if g == lab]] for lab in labs]
    msb = sum(len(g) * (g.mean() - v.mean()) ** 2 for g in grp) / (k - 1)
    msw = sum(((g - g.mean()) ** 2).sum() for g in grp) / (n - k)
    return (msb - msw) / (msb + (m - 1) * msw)


def random_metrics(seed, n_sources=4, checkpoints=(0.2, 0.4, 0.6, 0.8, 1.0), layers=(15, 20)):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_sources):
        level = rng.uniform(0, 0.6)
        for ck in checkpoints:
            rates = np.clip(level + rng.normal(0, 0.08, 3), 0, 1)
            for layer in layers:
                rows.append(("B", f"src{s}", 42, ck, layer, float(rng.uniform(-0.6, 0.6)), *map(float, rates)))
    return normalize_metrics(
        pl.DataFrame(
            rows,
            orient="row",
            schema=[
                "arm",
                "source",
                "seed",
                "checkpoint",
                "layer",
                "cosine",
                "source_rate",
                "assistant_rate",
                "bystander_rate",
            ],
        )
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_within_source_matches_scipy_and_brute_force(seed):
    m = random_metrics(seed)
    st = analyze_metrics(m).stats.filter(pl.col("analysis") == "within_source")
    for (src, layer), g in m.group_by(["source", "layer"]):
        g = g.sort("checkpoint")
        x, y = g["cosine"].to_numpy(), g["assistant_rate"].to_numpy()
        rows = st.filter((pl.col("source") == src) & (pl.col("layer") == layer))
        exact = rows.filter(pl.col("p_method") == "exact").row(0, named=True)
        asym = rows.filter(pl.col("p_method") == "asymptotic").row(0, named=True)
        ref = ss.spearmanr(x, y)
        assert exact["estimate"] == pytest.approx(ref.statistic, abs=1e-12)
        assert asym["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
        assert exact["p_value"] == pytest.approx(brute_exact_spearman_p(x, y), abs=1e-12)
        assert exact["n"] == 5 and exact["n_permutations"] == math.factorial(5)


def test_report_rho_minus_090_at_n5():
    """The seed report: rho = -0.90 over 5 checkpoints, asymptotic p = 0.037; the exact test
    over all 120 orderings gives 10/120."""
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    y = [4.0, 5.0, 3.0, 2.0, 1.0]
    rows = [("B", "villain", 42, ck, 20, c, None, a, None) for ck, c, a in zip((0.2, 0.4, 0.6, 0.8, 1.0), x, y)]
    m = pl.DataFrame(
        rows,
        orient="row",
        schema=[
            "arm",
            "source",
            "seed",
            "checkpoint",
            "layer",
            "cosine",
            "source_rate",
            "assistant_rate",
            "bystander_rate",
        ],
    )
    m = m.with_columns(pl.col("assistant_rate") / 10)
    st = analyze_metrics(m).stats.filter(pl.col("analysis") == "within_source")
    exact = st.filter(pl.col("p_method") == "exact").row(0, named=True)
    asym = st.filter(pl.col("p_method") == "asymptotic").row(0, named=True)
    assert exact["estimate"] == pytest.approx(-0.9)
    assert round(asym["p_value"], 3) == 0.037  # the report's number
    assert asym["p_value"] == pytest.approx(ss.spearmanr(x, y).pvalue, rel=1e-9)
    assert exact["p_value"] == pytest.approx(brute_exact_spearman_p(x, y))
    assert exact["p_value"] > asym["p_value"]


@pytest.mark.parametrize("seed", [3, 4])
def test_between_and_pooled_match_references(seed):
    m = random_metrics(seed)
    st = analyze_metrics(m).stats
    for layer in (15, 20):
        at = m.filter((pl.col("layer") == layer) & (pl.col("checkpoint") == 1.0)).sort("source")
        x, y = at["cosine"].to_numpy(), at["assistant_rate"].to_numpy()
        b = st.filter(
            (pl.col("analysis") == "between_source") & (pl.col("layer") == layer) & (pl.col("p_method") == "exact")
        ).row(0, named=True)
        assert b["estimate"] == pytest.approx(ss.spearmanr(x, y).statistic)
        assert b["p_value"] == pytest.approx(brute_exact_spearman_p(x, y))
        assert b["checkpoint"] == 1.0 and b["n"] == 4

        pts = m.filter(pl.col("layer") == layer).sort(["source", "checkpoint"])
        px, py, grp = (pts["cosine"].to_numpy(), pts["assistant_rate"].to_numpy(), pts["source"].to_list())
        p = st.filter((pl.col("analysis") == "between_source_pooled") & (pl.col("layer") == layer))
        naive = p.filter(pl.col("p_method") == "asymptotic").row(0, named=True)
        clus = p.filter(pl.col("p_method") == "cluster_permutation").row(0, named=True)
        assert naive["p_value"] == pytest.approx(ss.spearmanr(px, py).pvalue, rel=1e-9)
        icc = icc1_anova(py, grp)
        assert naive["icc"] == pytest.approx(icc, abs=1e-9)
        assert naive["icc_x"] == pytest.approx(icc1_anova(px, grp), abs=1e-9)
        assert naive["design_effect"] == pytest.approx(1 + (5 - 1) * icc)
        assert naive["n_eff"] == pytest.approx(20 / (1 + 4 * icc))
        assert clus["p_value"] == pytest.approx(brute_cluster_p(px, py, grp))
        assert clus["estimate"] == pytest.approx(naive["estimate"])
        assert naive["n"] == clus["n"] == 20 and clus["n_clusters"] == 4


def test_holm_and_bh_within_families():
    m = pl.concat(
        [random_metrics(7, n_sources=5), random_metrics(8, n_sources=5).with_columns(pl.lit("A").alias("arm"))]
    )
    st = analyze_metrics(m).stats
    fams = st.filter(pl.col("family").is_not_null()).partition_by("family")
    assert len(fams) >= 8
    for g in fams:
        p = g["p_value"].to_numpy()
        order = np.argsort(p)
        holm = np.empty_like(p)
        holm[order] = np.minimum(1, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
        assert g["p_adjusted"].to_numpy() == pytest.approx(holm)
        assert g["p_adjusted_bh"].to_numpy() == pytest.approx(ss.false_discovery_control(p))
        assert g["analysis"].n_unique() == 1 and g["arm"].n_unique() == 1
        assert g["p_method"].n_unique() == 1


def test_too_few_points_are_skipped_with_a_note():
    m = random_metrics(5).filter(pl.col("checkpoint") <= 0.4)  # 2 checkpoints per source
    m = m.with_columns(pl.when(pl.col("source") == "src0").then(None).otherwise(pl.col("cosine")).alias("cosine"))
    st = analyze_metrics(m).stats
    within = st.filter(pl.col("analysis") == "within_source")
    assert within["p_value"].null_count() == within.height
    assert all(n.startswith("skipped: ") for n in within["note"])
    pooled = st.filter(pl.col("analysis") == "between_source_pooled")
    assert pooled.filter(pl.col("p_method") == "asymptotic")["n"].to_list() == [6, 6]


def test_empty_and_all_missing_tables_do_not_crash():
    cols = ["arm", "source", "seed", "checkpoint", "layer", "cosine", "source_rate", "assistant_rate", "bystander_rate"]
    empty = pl.DataFrame({c: [] for c in cols}, schema={c: pl.String for c in cols})
    assert analyze_metrics(empty).stats.height == 0
    nulls = pl.DataFrame(
        {c: ["B" if c == "arm" else "x" if c == "source" else None] for c in cols}, schema={c: pl.String for c in cols}
    )
    a = analyze_metrics(nulls)
    assert a.stats.filter(pl.col("p_value").is_not_null()).height == 0
    assert any("no cosine values" in n for n in a.notes)
