"""specs/next_steps.yaml end to end on the tiny model with the real runners: a steer arm, three
seeds and a power section compile, execute and report.

Checks what only a whole run shows: the steer arm's strength 0 reproduces the unsteered model's
completions and hidden states exactly (the stages that hold them are different stages of the
plan, run separately); a positive strength moves the measured source-assistant cosine toward
the source; the report shows the steering curve, the across-seed intervals and the power table.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from cpx.plan import Plan

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "next_steps.yaml"


def _cpx(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    return subprocess.run(
        [sys.executable, "-m", "cpx", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("next-steps")
    r = _cpx("compile", str(SPEC), "--out", str(out), timeout=120)
    assert r.returncode == 0, r.stderr
    # The power section is printed at compile time, with its warnings on stderr.
    assert "power (alpha 0.05" in r.stdout and "warning: power:" in r.stderr
    r = _cpx("execute", str(out), "--devices", "cpu", "--quiet", timeout=1200)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def _stage_table(run: Path, plan: Plan, sid: str, name: str) -> pl.DataFrame:
    stage = plan.by_id()[sid]
    return pl.read_parquet(run / "stages" / stage.kind / stage.hash / name)


def test_strength_zero_is_the_unsteered_model_exactly(run: Path) -> None:
    plan = Plan.load(run)
    spec = plan.spec
    checked = 0
    for seed in spec["seeds"]:
        for src in spec["roles"]["sources"]:
            steered = f"S/{src}/s{seed}/alpha0"
            plain = f"A/{src}/s{seed}/ckpt0"  # the same model (arm A's marker adapter), unsteered
            cols = ["persona", "question_id", "sample_index", "text", "n_tokens", "finish_reason"]
            a = _stage_table(run, plan, f"sample/{steered}", "completions.parquet").select(cols).sort(cols[:3])
            b = _stage_table(run, plan, f"sample/{plain}", "completions.parquet").select(cols).sort(cols[:3])
            assert a.equals(b)
            cols = ["layer", "persona_a", "persona_b", "cosine"]
            a = _stage_table(run, plan, f"represent/{steered}", "cosines.parquet").select(cols).sort(cols[:3])
            b = _stage_table(run, plan, f"represent/{plain}", "cosines.parquet").select(cols).sort(cols[:3])
            assert a.equals(b)
            checked += 1
    assert checked == len(spec["seeds"]) * len(spec["roles"]["sources"])


def test_a_positive_strength_moves_the_cosine_toward_the_source(run: Path) -> None:
    plan = Plan.load(run)
    layer = plan.spec["arms"]["S"]["steer"]["layer"]
    cos = pl.read_parquet(run / "results" / "cosines.parquet").filter(
        (pl.col("arm") == "S")
        & (pl.col("layer") == layer)
        & (pl.col("persona_b") == "assistant")
        & (pl.col("persona_a") == pl.col("source"))
    )
    assert cos["alpha"].null_count() == 0  # the direction stage is not one of arm S's points
    assert cos.height == 3 * 3 * 5  # seeds x sources x strengths
    for (src, seed), g in cos.group_by(["source", "seed"]):
        by_alpha = dict(zip(g["alpha"].to_list(), g["cosine"].to_list(), strict=True))
        assert by_alpha[0.5] > by_alpha[0.0], (src, seed, by_alpha)
        # alpha 1 adds the whole raw centroid difference: the assistant's centroid at the steered
        # layer becomes the source's, so after centring the two point the same way.
        assert by_alpha[1.0] == pytest.approx(1.0, abs=1e-4), (src, seed, by_alpha)


def test_seed_independent_work_ran_once(run: Path) -> None:
    plan = Plan.load(run)
    gens = [s for s in plan.stages if s.kind == "generate"]
    assert len(gens) == 1 and gens[0].labels["seeds"] == plan.spec["seeds"]
    hits = pl.read_parquet(run / "results" / "marker_hits.parquet")
    assert sorted(hits["seed"].unique().to_list()) == plan.spec["seeds"]


def test_the_report_shows_steering_seeds_and_power(run: Path) -> None:
    md = (run / "report" / "report.md").read_text()
    for heading in ("## Steering", "## Replication over seeds", "## Power"):
        assert heading in md, heading
    figures = {p.stem for p in (run / "report" / "figures").iterdir()}
    assert {"steering_curve", "seed_intervals"} <= figures, figures
    stats = pl.read_parquet(run / "results" / "stats.parquet")
    assert {"steering", "seed_replication"} <= set(stats["analysis"].unique().to_list())


def test_power_holm_families_are_the_tests_the_analysis_ran(run: Path) -> None:
    """The power table's Holm family of each exact rank test is the number of tests (run or
    skipped for a constant variable) that analysis wrote for the arm: not typed in, counted."""
    from cpx.power import power_rows

    rows = power_rows(Plan.load(run)).filter(pl.col("holm_tests").is_not_null())
    stats = pl.read_parquet(run / "results" / "stats.parquet")
    checked = 0
    for r in rows.iter_rows(named=True):
        arm = r["design"].split(", arm ")[1].split(":")[0]
        planned = stats.filter(
            (pl.col("analysis") == r["analysis"]) & (pl.col("arm") == arm) & pl.col("p_method").ne_missing("asymptotic")
        )
        assert planned.height == r["holm_tests"], (r["analysis"], arm, planned.height, r["holm_tests"])
        checked += 1
    assert checked >= 2


def test_train_tables_hold_one_copy_per_train_stage(run: Path) -> None:
    """results/screen and results/train_log: each train stage's rows once, with its labels,
    though arm A's marker adapter is also arm S's (what the report's adapter table reads)."""
    plan = Plan.load(run)
    trains = [s for s in plan.stages if s.kind == "train"]
    for table, file in (("screen", "screen.parquet"), ("train_log", "train_log.parquet")):
        parts = [
            pl.read_parquet(run / "stages" / "train" / s.hash / file)
            for s in trains
            if (run / "stages" / "train" / s.hash / file).is_file()
        ]
        got = pl.read_parquet(run / "results" / f"{table}.parquet")
        assert got.height == sum(p.height for p in parts) > 0
        assert got["arm"].null_count() == 0 and got["seed"].null_count() == 0
    shared = pl.read_parquet(run / "results" / "screen.parquet").filter(pl.col("arms").list.len() > 1)
    assert shared.height and set(shared["arms"][0].to_list()) == {"A", "S"}
