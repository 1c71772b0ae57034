"""The seed report's own numbers, recomputed from the values it states
(tests/data/seed_report_metrics.csv)."""

import itertools
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy import stats as ss

from cpx.analysis import adapter_quality, analyze_metrics, cross_arm_table, read_metrics

CSV = Path(__file__).resolve().parents[1] / "data" / "seed_report_metrics.csv"


@pytest.fixture(scope="module")
def metrics():
    return read_metrics(CSV)


@pytest.fixture(scope="module")
def analysis(metrics):
    return analyze_metrics(metrics)


def test_between_source_at_100_percent_is_0083(analysis, metrics):
    """Cosine (L15) and assistant leakage rank the four sources identically at 100%: rho = 1,
    and the exact permutation p over all 4! = 24 orderings is 2/24 two-sided (the report's
    0.083), while the asymptotic formula would claim p < 0.0001."""
    row = analysis.stats.filter((pl.col("analysis") == "between_source") & (pl.col("p_method") == "exact")).row(
        0, named=True
    )
    at = metrics.filter((pl.col("arm") == "B") & (pl.col("checkpoint") == 1.0))
    x, y = at["cosine"].to_numpy(), at["assistant_rate"].to_numpy()
    null = [ss.spearmanr(x, y[list(p)]).statistic for p in itertools.permutations(range(4))]
    ref = np.mean(np.abs(null) >= abs(ss.spearmanr(x, y).statistic) - 1e-12)
    assert row["estimate"] == pytest.approx(1.0)
    assert row["p_value"] == pytest.approx(ref)
    assert round(row["p_value"], 3) == 0.083  # the report's number
    assert row["n_permutations"] == math.factorial(4) and row["layer"] == 15
    asym = analysis.stats.filter((pl.col("analysis") == "between_source") & (pl.col("p_method") == "asymptotic"))[
        "p_value"
    ][0]
    assert asym < 1e-4


def test_within_source_needs_more_than_the_report_states(analysis):
    """The report gives two checkpoints per source; the five needed for its rho are missing,
    so every within-source test is skipped with a note rather than invented."""
    w = analysis.stats.filter(pl.col("analysis") == "within_source")
    assert w.height == 4
    assert w["note"].to_list() == ["skipped: 2 point(s) with both values, 3 needed"] * 4


def test_bystander_minus_assistant_matches_the_report(analysis):
    """The report's 'Asst - Bystander' column: +0.7, +0.9, +10.2, +22.7 pp."""
    b = analysis.stats.filter(pl.col("analysis") == "bystander_vs_assistant")
    got = {r["source"]: round(100 * r["estimate"], 1) for r in b.iter_rows(named=True)}
    assert got == {"villain": 0.7, "comedian": 0.9, "kindergarten_teacher": 10.2, "software_engineer": 22.7}
    assert b["p_value"].null_count() == b.height  # no completion-level data, no test


def test_cross_arm_table(metrics):
    t = cross_arm_table(metrics, checkpoint=1.0)
    assert t.columns == [
        "source",
        "baseline",
        "A source",
        "A assistant",
        "B source",
        "B assistant",
        "C source",
        "C assistant",
    ]
    v = t.filter(pl.col("source") == "villain").row(0, named=True)
    assert (v["baseline"], v["B source"], v["C source"]) == (0.0, 0.6, 0.885)


def test_adapter_classes_from_the_report():
    """'KT's adapter is inverted (15% source, 58% SW eng, 44% assistant) and SW eng's is
    global (74% source, 64% assistant)': the classes follow from those rates alone."""
    rows = [
        ("A", "kindergarten_teacher", "kindergarten_teacher", "source", 0.15),
        ("A", "kindergarten_teacher", "software_engineer", "bystander", 0.58),
        ("A", "kindergarten_teacher", "assistant", "assistant", 0.44),
        ("A", "software_engineer", "software_engineer", "source", 0.74),
        ("A", "software_engineer", "assistant", "assistant", 0.64),
    ]
    screen = pl.DataFrame(rows, orient="row", schema=["arm", "source", "persona", "role", "rate"])
    q = adapter_quality(screen)
    got = dict(zip(q["source"], q["class"]))
    assert got == {"kindergarten_teacher": "inverted", "software_engineer": "global"}
    kt = q.filter(pl.col("source") == "kindergarten_teacher").row(0, named=True)
    assert kt["top_other"] == "software_engineer"
    assert kt["specificity"] == pytest.approx(0.15 - (0.58 + 0.44) / 2)


def test_cross_arm_display_has_a_t_interval_across_seeds(metrics):
    """With several seeds each cell is the mean over seeds with a t interval across them
    (scipy's t), cut to [0, 1]; with one seed the cells are plain rates."""
    from cpx.analysis import _tables as T

    rng = np.random.default_rng(7)
    seeds = [1, 2, 3, 4]
    parts = []
    for s in seeds:
        noisy = metrics.with_columns(
            pl.lit(s, pl.Int64).alias("seed"),
            *[
                (pl.col(c) + pl.Series(rng.normal(0, 0.05, metrics.height))).clip(0, 1).alias(c)
                for c in ("source_rate", "assistant_rate")
            ],
        )
        parts.append(noisy)
    many = pl.concat(parts)
    table = T.cross_arm(many, 1.0, 0.9).frame
    for arm_col, col in (("B source", "source_rate"), ("A assistant", "assistant_rate")):
        arm = arm_col.split()[0]
        vals = [
            p.filter((pl.col("arm") == arm) & (pl.col("source") == "villain") & (pl.col("checkpoint") == 1.0))[
                col
            ].mean()
            for p in parts
        ]
        lo, hi = ss.t.interval(0.9, len(vals) - 1, loc=np.mean(vals), scale=ss.sem(vals))
        want = T.ci(np.mean(vals), max(0.0, lo), min(1.0, hi))
        assert table.filter(pl.col("source") == "villain")[arm_col][0] == want
    one = T.cross_arm(parts[0], 1.0).frame
    assert "[" not in one.filter(pl.col("source") == "villain")["B source"][0]
