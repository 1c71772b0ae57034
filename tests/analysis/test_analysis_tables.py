"""Analyses 1, 5 and 6 and the metrics table, on synthetic completions (numpy random hits)."""

import itertools

import numpy as np
import polars as pl
import pytest

from cpx.analysis import (
    MetricsError,
    Options,
    analyze_tables,
    leakage_by_role,
    normalize_metrics,
    read_metrics,
    stats_markdown,
)
from synth_results import ASSISTANT, make_tables

OPTS = Options(n_resamples=999, bootstrap_resamples=400)


@pytest.fixture(scope="module")
def tables():
    return make_tables(seed=1)


@pytest.fixture(scope="module")
def analysis(tables):
    return analyze_tables(tables, OPTS)


def test_leakage_by_role_rates_and_clustered_intervals(tables):
    hits = tables["marker_hits"].filter(pl.col("arm") == "B")
    roles = leakage_by_role(hits, n_resamples=400, seed=3)
    assert roles.height == hits.select("source", "checkpoint").unique().height * 3
    for r in roles.iter_rows(named=True):
        g = hits.filter(
            (pl.col("source") == r["source"])
            & (pl.col("checkpoint") == r["checkpoint"])
            & (pl.col("role") == r["role"])
        )
        assert r["rate"] == pytest.approx(g["hit"].cast(float).mean())
        assert r["n"] == g.height and r["hits"] == g["hit"].sum()
        # a bootstrap over questions stays within the range of the per-question rates
        per_q = g.group_by("question_id").agg(pl.col("hit").cast(float).mean())["hit"]
        assert per_q.min() - 1e-12 <= r["ci_low"] <= r["rate"] <= r["ci_high"] <= per_q.max() + 1e-12


def test_metrics_cosine_is_the_source_assistant_pair(tables, analysis):
    m = analysis.metrics
    assert m.columns[:9] == [
        "arm",
        "source",
        "seed",
        "checkpoint",
        "layer",
        "cosine",
        "source_rate",
        "assistant_rate",
        "bystander_rate",
    ]
    cos = tables["cosines"]
    for r in m.sample(10, seed=0).iter_rows(named=True):
        ref = cos.filter(
            (pl.col("arm") == r["arm"])
            & (pl.col("source") == r["source"])
            & (pl.col("checkpoint") == r["checkpoint"])
            & (pl.col("layer") == r["layer"])
            & (
                ((pl.col("persona_a") == r["source"]) & (pl.col("persona_b") == ASSISTANT))
                | ((pl.col("persona_b") == r["source"]) & (pl.col("persona_a") == ASSISTANT))
            )
        )
        assert ref.height == 1 and r["cosine"] == ref["cosine"][0]
        assert r["specificity"] == pytest.approx(r["source_rate"] - r["bystander_rate"])
    # one row per (labels, layer), no duplicates
    assert m.select("arm", "source", "seed", "checkpoint", "layer").is_duplicated().sum() == 0


def test_bystander_paired_permutation(tables, analysis):
    hits = tables["marker_hits"]
    b = analysis.stats.filter(pl.col("analysis") == "bystander_vs_assistant")
    assert b.height == hits.select("arm", "source", "checkpoint").unique().height
    for r in b.sample(6, seed=1).iter_rows(named=True):
        g = hits.filter(
            (pl.col("arm") == r["arm"]) & (pl.col("source") == r["source"]) & (pl.col("checkpoint") == r["checkpoint"])
        )
        per_q = g.group_by("question_id", "role").agg(pl.col("hit").cast(float).mean())
        a = per_q.filter(pl.col("role") == "assistant").sort("question_id")["hit"].to_numpy()
        y = per_q.filter(pl.col("role") == "bystander").sort("question_id")["hit"].to_numpy()
        d = a - y
        assert r["estimate"] == pytest.approx(d.mean())
        if r["p_method"] == "exact":
            # all 2^6 sign flips of the per-question differences
            null = [np.mean(d * s) for s in itertools.product((1, -1), repeat=len(d))]
            ref = np.mean(np.abs(null) >= abs(d.mean()) - 1e-12)
            assert r["p_value"] == pytest.approx(ref)
        elif r["p_value"] is not None:
            assert 0 < r["p_value"] <= 1


def test_specificity_analysis_and_adapters(analysis):
    st = analysis.stats
    assert analysis.adapters is not None and analysis.adapters.height == 4 * (5 + 2)
    spec = st.filter(pl.col("analysis") == "marker_specificity")
    assert spec.height == analysis.adapters.height
    for name in (
        "specificity_within_source",
        "specificity_between_source",
        "specificity_pooled",
        "specificity_vs_cosine",
    ):
        assert st.filter(pl.col("analysis") == name).height > 0, name
    comp = st.filter(pl.col("analysis") == "specificity_vs_cosine")
    assert comp["p_value"].null_count() == comp.height  # descriptive only


def test_stats_table_contract(analysis):
    st = analysis.stats
    for c in (
        "analysis",
        "arm",
        "source",
        "layer",
        "statistic",
        "estimate",
        "p_value",
        "p_method",
        "n",
        "n_eff",
        "icc",
        "p_adjusted",
    ):
        assert c in st.columns
    assert set(st["p_method"].drop_nulls()) <= {"exact", "asymptotic", "permutation", "cluster_permutation"}
    assert {"exact", "asymptotic", "cluster_permutation"} <= set(st["p_method"].drop_nulls())
    md = stats_markdown(analysis)
    for title in (
        "Leakage by role",
        "Cross-arm comparison",
        "Within-source",
        "Between sources",
        "Pooled over checkpoints",
        "Bystander versus assistant",
        "Marker adapters before merge",
        "Multiple comparisons",
    ):
        assert title in md, title


def test_metrics_file_errors_say_where_and_what(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("arm,source,seed,checkpoint,layer,cosine,source_rate,assistant_rate\n")
    with pytest.raises(MetricsError, match="missing column.*bystander_rate"):
        read_metrics(p)
    p.write_text(
        "arm,source,seed,checkpoint,layer,cosine,source_rate,assistant_rate,bystander_rate\n"
        "B,villain,42,0.2,15,-0.5,0.6,0.2,0.1\nB,villain,42,0.4,15,abc,0.6,0.2,0.1\n"
    )
    with pytest.raises(MetricsError, match=r"'cosine'.*row 2.*'abc'"):
        read_metrics(p)
    p.write_text(
        "arm,source,seed,checkpoint,layer,cosine,source_rate,assistant_rate,bystander_rate\n"
        "B,villain,42,0.2,15,-0.5,60,0.2,0.1\n"
    )
    with pytest.raises(MetricsError, match="fractions"):
        read_metrics(p)
    with pytest.raises(MetricsError, match="no such file"):
        read_metrics(tmp_path / "missing.csv")
    m = normalize_metrics(
        pl.DataFrame(
            {
                "arm": ["B"],
                "source": ["v"],
                "seed": ["42"],
                "checkpoint": ["0.2"],
                "layer": [""],
                "cosine": ["nan"],
                "source_rate": [None],
                "assistant_rate": ["0.2"],
                "bystander_rate": ["0.1"],
            }
        )
    )
    assert m["layer"][0] is None and m["cosine"][0] is None and m["seed"][0] == 42


def test_options_from_params():
    """The spec language's names (docs: specs/*.yaml `analyses:`) and per-analysis options."""
    o = Options.from_params(
        {
            "analyses": [
                {"name": "leakage"},
                {"name": "within_source", "layers": [1, 2]},
                {"name": "between_source", "checkpoint": 0.6},
                {"name": "adapter_specificity"},
            ],
            "points": [{"arm": "B"}],
            "n_resamples": 99,
        }
    )
    assert o.analyses == ("leakage_by_role", "cross_arm", "within_source", "between_source", "marker_specificity")
    assert o.get("between_source", "checkpoint") == 0.6 and o.get("cross_arm", "checkpoint") is None
    assert o.get("within_source", "layers") == (1, 2) and o.n_resamples == 99
    assert Options.from_params({"analyses": []}).analyses == Options().analyses
    with pytest.raises(ValueError, match="unknown analysis 'within'"):
        Options.from_params({"analyses": [{"name": "within"}]})
    with pytest.raises(ValueError, match="unknown option 'chekpoint'"):
        Options.from_params({"analyses": [{"name": "cross_arm", "chekpoint": 1.0}]})
    with pytest.raises(ValueError, match="unknown option 'alpha'"):
        Options.from_params({"alpha": 0.05})


def test_per_analysis_checkpoint_and_layers(tables):
    o = Options.from_params(
        {
            "analyses": [
                {"name": "within_source", "layers": [2]},
                {"name": "pseudo_replication"},
                {"name": "bystander_vs_assistant", "checkpoint": 1.0},
                {"name": "between_source", "checkpoint": 0.5},
            ],
            "n_resamples": 99,
            "bootstrap_resamples": 50,
        }
    )
    st = analyze_tables(tables, o).stats
    assert st.filter(pl.col("analysis") == "within_source")["layer"].unique().to_list() == [2]
    assert st.filter(pl.col("analysis") == "bystander_vs_assistant")["checkpoint"].unique().to_list() == [1.0]
    assert st.filter(pl.col("analysis") == "between_source")["checkpoint"].unique().to_list() == [0.5]
    assert st.filter(pl.col("analysis") == "between_source_pooled")["layer"].n_unique() == 2
    assert st.filter(pl.col("analysis").str.starts_with("specificity")).is_empty()


def test_baseline_without_a_source_is_kept_out_of_source_analyses():
    t = make_tables(seed=4, arms=("B",), sources=("villain", "comedian", "librarian"), baseline=True)
    a = analyze_tables(t, Options(n_resamples=99, bootstrap_resamples=50))
    base = a.metrics.filter(pl.col("arm") == "base")
    assert base.height == 1 and base["source"][0] is None and base["source_rate"][0] is None
    tested = a.stats.filter(pl.col("p_value").is_not_null() & (pl.col("arm") == "base"))
    assert set(tested["analysis"]) <= {"bystander_vs_assistant"}
    assert a.stats.filter(pl.col("analysis") == "within_source")["arm"].unique().to_list() == ["B"]


def test_a_stage_shared_by_two_arms_counts_in_both(tables):
    """The compiler runs a stage reached from two arms once (label `arms`)."""
    hits = tables["marker_hits"].filter((pl.col("arm") != "C") | (pl.col("checkpoint") > 0))
    hits = hits.with_columns(
        pl.when((pl.col("arm") == "A") & (pl.col("checkpoint") == 0.0))
        .then(pl.lit(["A", "C"]))
        .otherwise(pl.concat_list("arm"))
        .alias("arms")
    )
    a = analyze_tables({"marker_hits": hits}, Options(n_resamples=99, bootstrap_resamples=50))
    m = a.metrics.filter(pl.col("checkpoint") == 0.0)
    assert sorted(m["arm"].unique().to_list()) == ["A", "B", "C"]
    both = m.filter(pl.col("arm").is_in(["A", "C"])).sort("arm", "source")
    assert (
        both.filter(pl.col("arm") == "A")["source_rate"].to_list()
        == both.filter(pl.col("arm") == "C")["source_rate"].to_list()
    )
