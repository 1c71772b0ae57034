"""The analyze and report stages on a synthetic run folder, and `cpx report RUN_DIR`."""

import re
from pathlib import Path
import shutil

import polars as pl
import pytest

from cpx.cli import main
from cpx.report import FIGURES
from cpx.stages import get_runner
from cpx.stages._context import StageContext
from synth_results import make_tables, write_run

# A single-seed run without a steer arm has no data for the steering and per-seed figures.
PLAIN = tuple(f for f in FIGURES if f not in ("steering_curve", "seed_intervals"))


def _ctx(plan, stage, run, out):
    by = plan.by_id()
    inputs = {d: run / "stages" / by[d].kind / by[d].hash for d in stage.deps}
    return StageContext(stage=stage, out_dir=out, inputs=inputs, run_dir=run, plan=plan)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run after execution: stage folders, the analyze and report stages' outputs, and
    results/ as the executor's collection leaves it."""
    run = tmp_path_factory.mktemp("run")
    tables = make_tables(seed=2)
    plan, analyze, report = write_run(run, tables)
    a_out = run / "stages" / "analyze" / analyze.hash
    info = get_runner("analyze")(_ctx(plan, analyze, run, a_out))
    assert info["tests"] > 0
    r_out = run / "stages" / "report" / report.hash
    rinfo = get_runner("report")(_ctx(plan, report, run, r_out))
    results = run / "results"
    results.mkdir()
    for name in ("marker_hits", "leakage", "cosines"):
        tables[name].write_parquet(results / f"{name}.parquet")
    for name in ("metrics", "stats"):
        shutil.copy(a_out / f"{name}.parquet", results / f"{name}.parquet")
    return run, a_out, r_out, rinfo


def test_analyze_stage_outputs(run):
    _, a_out, _, _ = run
    assert {p.name for p in a_out.iterdir()} >= {"metrics.parquet", "stats.parquet", "stats.md"}
    m = pl.read_parquet(a_out / "metrics.parquet")
    assert m["arm"].n_unique() == 3 and m["layer"].drop_nulls().n_unique() == 2


def test_report_stage_has_every_table_figure_and_caveat(run):
    _, _, r_out, info = run
    assert info["figures"] == list(PLAIN)
    md = (r_out / "report.md").read_text()
    for title in (
        "Spec",
        "Provenance",
        "Caveats",
        "Leakage by role",
        "Cross-arm comparison",
        "Within-source trajectories",
        "Between sources at one checkpoint",
        "Pooled over checkpoints",
        "Bystander versus assistant",
        "Marker adapters before merge",
        "specificity",
        "Multiple comparisons",
    ):
        assert title in md, title
    assert "Single seed (42)" in md and "Pseudo-replication" in md
    # one seed: the replication section says why it has no table; no steer arm, no section
    assert "*seed_replication skipped: 1 seed(s) (42), 2 needed" in md
    assert "## Steering" not in md and "## Power" not in md
    assert "Test GPU (cuda)" in md and "0123456789ab" in md
    # GPU-hours: represent and train stages ran on cuda:0 for 90 s each
    n_gpu = len(list((r_out.parent.parent / "represent").iterdir())) + len(
        list((r_out.parent.parent / "train").iterdir())
    )
    assert f"| GPU-hours | {n_gpu * 90 / 3600:.3f} |" in md
    for name in PLAIN:
        for ext in ("png", "svg", "html"):
            f = r_out / "figures" / f"{name}.{ext}"
            assert f.is_file() and f.stat().st_size > 1000, f
        assert (r_out / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{name}.png" in md


def test_report_html_is_self_contained(run):
    _, _, r_out, _ = run
    page = (r_out / "report.html").read_text()
    assert page.count("<svg") >= len(PLAIN)
    assert not re.search(r"""(src|href)=["']?(https?:|//|figures/[^"']*\.(png|js|css))""", page)
    assert "<table>" in page and "Caveats" in page
    interactive = (r_out / "figures" / "hero.html").read_text()
    assert "vega" in interactive and not re.search(r"<script[^>]+src=", interactive)


def test_cpx_report_regenerates_from_results(run, capsys):
    rundir, _, _, _ = run
    assert main(["report", str(rundir)]) == 0
    out = rundir / "report"
    md = (out / "report.md").read_text()
    assert "Cross-arm comparison" in md and "Adapter quality" in md
    assert len(list((out / "figures").glob("*.png"))) == len(PLAIN)
    assert "wrote" in capsys.readouterr().out
    # a second run replaces the folder and leaves no temporary folders behind
    assert main(["report", str(rundir), "--figures", "hero"]) == 0
    assert [p.name for p in (out / "figures").glob("*.png")] == ["hero.png"]
    assert not list(rundir.glob(".report-*"))


def test_cpx_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 1
    assert "metrics.parquet" in capsys.readouterr().err


def test_figure_names_and_aliases():
    from cpx.report import figure_names

    assert figure_names(None) == FIGURES
    assert figure_names(["hero_cross_arm", "cosine_evolution"]) == ("hero", "cosine_evolution")
    assert figure_names(["arm_b_trajectory"], rest=True)[:2] == ("trajectories", "hero")
    assert len(figure_names(["arm_b_trajectory"], rest=True)) == len(FIGURES)
    with pytest.raises(ValueError, match="unknown figure 'hero2'.*known: hero"):
        figure_names(["hero2"])


def test_report_stage_takes_the_executed_plan_not_plan_json(run):
    """A plan.json rewritten after the executor loaded its plan changes nothing the stage reports."""
    import dataclasses

    from cpx.plan import Plan
    from cpx.report import from_stage

    rundir, _, _, _ = run
    on_disk = Plan.load(rundir)
    executed = dataclasses.replace(on_disk, spec_hash="f" * 64, name="executed")
    report = [s for s in on_disk.stages if s.kind == "report"][-1]
    by = on_disk.by_id()
    inputs = {d: rundir / "stages" / by[d].kind / by[d].hash for d in report.deps}
    data = from_stage(report, inputs, rundir, executed)
    assert data.spec_hash == "f" * 64 and data.name == "executed" and data.plan is executed


def test_cpx_analyze_run_reproduces_the_runs_own_stats(run, tmp_path, capsys):
    """`cpx analyze RUN` uses the analyze stage's params (the spec's analysis settings: here a
    bystander test at checkpoint 0.5 and within-source on layer 3 only) and its inputs: the stats
    table comes out as the run's own, to the bit."""
    import dataclasses

    from cpx.plan import Plan

    src, _, _, _ = run
    rundir = tmp_path / "run"
    shutil.copytree(src, rundir)
    plan = Plan.load(rundir)
    params = {
        "analyses": [
            {"name": "leakage"},
            {"name": "within_source", "layers": [3]},
            {"name": "between_source"},
            {"name": "bystander_vs_assistant", "checkpoint": 0.5},
        ],
        "n_resamples": 999,
        "bootstrap_resamples": 300,
        "seed": 3,
    }
    plan.stages = [dataclasses.replace(s, params=params) if s.kind == "analyze" else s for s in plan.stages]
    plan.save(rundir / "plan.json")
    analyze = plan.by_id()["analyze"]
    a_out = tmp_path / "own"
    get_runner("analyze")(_ctx(plan, analyze, rundir, a_out))
    own = pl.read_parquet(a_out / "stats.parquet")
    assert set(own["analysis"]) >= {"bystander_vs_assistant", "within_source"}

    assert main(["analyze", str(rundir), "--out", str(tmp_path / "again")]) == 0
    again = pl.read_parquet(tmp_path / "again" / "stats.parquet")
    assert again.equals(own, null_equal=True)
    assert f"{own['p_value'].is_not_null().sum()} p-values" in capsys.readouterr().out
    # an option given on the command line still wins over the run's own
    assert main(["analyze", str(rundir), "--out", str(tmp_path / "c1"), "--checkpoint", "1.0"]) == 0
    c1 = pl.read_parquet(tmp_path / "c1" / "stats.parquet").filter(pl.col("analysis") == "bystander_vs_assistant")
    assert set(c1["checkpoint"].drop_nulls()) == {1.0}


def test_provenance_counts_the_stages_before_the_report(run):
    """The report stage counts the stages it depends on, not itself (it is not done while it
    writes); here every one but the analyze stage (run without an executor) has a manifest."""
    from cpx.plan import Plan

    rundir, _, r_out, _ = run
    stages = Plan.load(rundir).stages
    with_manifest = [s for s in stages if (rundir / "stages" / s.kind / s.hash / "manifest.json").is_file()]
    md = (r_out / "report.md").read_text()
    assert f"| stages done | {len(with_manifest)} of {len(stages) - 1} stages before this report |" in md
    assert len(with_manifest) == len(stages) - 2


def test_spec_table_spells_out_roles_arms_and_eval_sizes():
    from cpx.plan import compile_file
    from cpx.report._provenance import spec_summary

    spec = compile_file(Path(__file__).parents[2] / "specs" / "demo.yaml").spec
    rows = dict(spec_summary(spec))
    assert rows["sources"] == ", ".join(spec["roles"]["sources"])
    others = [p for p in spec["personas"] if p != "assistant" and p not in spec["roles"]["sources"]]
    assert rows["bystanders"] == ", ".join(others)
    assert rows["arm A"] == "marker (on marker) → convergence (on convergence)"
    assert rows["arm B"].startswith("convergence (on convergence) → marker (on marker; at each checkpoint")
    assert rows["arm C"].startswith("marker (merged from A.marker) → generic (on generic")
    n_q, k, n_p = len(spec["questions"]["eval"]), spec["eval"]["completions"], len(spec["personas"])
    assert rows["eval"].startswith(
        f"{n_q} questions × {k} completions × {n_p} personas = {n_q * k * n_p} completions per eval point"
    )
    assert "roles" not in rows and "arms" not in rows


def test_figures_are_byte_reproducible_whatever_the_row_order(run, tmp_path):
    """Same data, same bytes: the rows of every table shuffled, every figure file identical."""
    import dataclasses

    from cpx.report import build_report, from_run

    rundir, _, _, _ = run
    data = from_run(rundir)

    def shuffled(df):
        return None if df is None else df.sample(fraction=1.0, shuffle=True, seed=7)

    other = dataclasses.replace(
        data,
        analysis=dataclasses.replace(data.analysis, metrics=shuffled(data.analysis.metrics)),
        leakage=shuffled(data.leakage),
        screen=shuffled(data.screen),
    )
    build_report(data, tmp_path / "a", figures=PLAIN)
    build_report(other, tmp_path / "b", figures=PLAIN)
    files = sorted(p.name for p in (tmp_path / "a" / "figures").iterdir())
    assert len(files) == 3 * len(PLAIN)
    differ = [
        f
        for f in files
        if (tmp_path / "a" / "figures" / f).read_bytes() != (tmp_path / "b" / "figures" / f).read_bytes()
    ]
    assert differ == []


def test_hero_figure_has_the_intervals(run):
    import json

    from cpx.report import from_run
    from cpx.report._build import _make

    rundir, _, _, _ = run
    spec = json.loads(_make("hero", from_run(rundir)).to_json())
    layers = spec["spec"]["layer"]
    rule = [lay for lay in layers if (lay.get("mark") or {}).get("type", lay.get("mark")) == "rule"]
    assert rule and rule[0]["encoding"]["y"]["field"] == "ci_low" and rule[0]["encoding"]["y2"]["field"] == "ci_high"
    rows = next(iter(spec["datasets"].values()))
    with_bars = [r for r in rows if r["ci_low"] is not None]
    assert with_bars and all(r["ci_low"] <= r["rate"] <= r["ci_high"] for r in with_bars)
