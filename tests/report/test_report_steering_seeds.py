"""The report's Steering, Replication over seeds and Power sections, from a synthetic run with
a steer arm and three seeds, through the analyze and report stages."""

import json
import re

import polars as pl
import pytest

from cpx.plan import Plan, Stage
from cpx.stages import get_runner
from cpx.stages._context import StageContext
from steer_synth import ALPHAS, make_steer_tables
from synth_results import _hash, make_tables, write_run

SEEDS = (42, 43, 44)


def _ctx(plan, stage, run):
    by = plan.by_id()
    inputs = {d: run / "stages" / by[d].kind / by[d].hash for d in stage.deps}
    return StageContext(
        stage=stage, out_dir=run / "stages" / stage.kind / stage.hash, inputs=inputs, run_dir=run, plan=plan
    )


def _add_steer_stages(run, steer):
    """A scan and a represent stage per steered eval point (labels with `alpha`, outputs with
    their label columns, as the stages write them)."""
    stages = []
    keys = ["arm", "source", "seed", "alpha"]
    for kind, table, files in (
        ("scan", "marker_hits", ("marker_hits", "leakage")),
        ("represent", "cosines", ("cosines",)),
    ):
        for key, _ in steer[table].group_by(keys, maintain_order=True):
            labels = {**dict(zip(keys, key)), "checkpoint": None}
            sid = f"{kind}/{key[0]}/{key[1]}/s{key[2]}/a{key[3]}"
            st = Stage(id=sid, kind=kind, hash=_hash(sid), labels=labels)
            folder = run / "stages" / kind / st.hash
            folder.mkdir(parents=True)
            for name in files:
                steer[name].filter(*(pl.col(c) == v for c, v in zip(keys, key))).write_parquet(
                    folder / f"{name}.parquet"
                )
            (folder / "manifest.json").write_text(json.dumps({"id": sid, "kind": kind, "labels": labels}))
            stages.append(st)
    return stages


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("steer_run")
    plan, analyze, report = write_run(run, make_tables(seed=8, arms=("B",), seeds=SEEDS))
    steer_stages = _add_steer_stages(run, make_steer_tables(seed=9, seeds=SEEDS))
    spec = {
        **plan.spec,
        "seeds": list(SEEDS),
        "arms": {"B": {"kind": "train"}, "S": {"kind": "steer", "steer": {"layer": 2, "alphas": list(ALPHAS)}}},
        "questions": {"eval": [f"question {i}" for i in range(6)]},
        "eval": {"completions": 5},
        "power": {"alpha": 0.05, "power": 0.8},
    }
    others = [s for s in plan.stages if s.kind not in ("analyze", "report")]
    ids = {s.id for s in [*others, *steer_stages]}
    points = [
        {
            **{k: s.labels[k] for k in ("arm", "source", "seed", "checkpoint", "alpha") if k in s.labels},
            "scan": s.id,
            "represent": s.id.replace("scan/", "represent/", 1),
        }
        for s in [*others, *steer_stages]
        if s.kind == "scan"
    ]
    assert all(p["represent"] in ids for p in points)
    analyze = Stage(
        id=analyze.id,
        kind="analyze",
        hash=analyze.hash,
        deps=(*analyze.deps, *(s.id for s in steer_stages)),
        params={**analyze.params, "points": points},
    )
    plan = Plan(name=plan.name, spec=spec, spec_hash=plan.spec_hash, stages=[*others, *steer_stages, analyze, report])
    plan.save(run / "plan.json")
    get_runner("analyze")(_ctx(plan, analyze, run))
    info = get_runner("report")(_ctx(plan, report, run))
    out = run / "stages" / "report" / report.hash
    return run, out, info


def test_analyze_stage_reads_alpha_from_the_stage_labels(run):
    rundir, _, _ = run
    a_out = next((rundir / "stages" / "analyze").iterdir())
    m = pl.read_parquet(a_out / "metrics.parquet")
    steer = m.filter(pl.col("alpha").is_not_null())
    assert steer["arm"].unique().to_list() == ["S"]
    assert sorted(steer["alpha"].unique().to_list()) == list(ALPHAS)
    assert m.filter(pl.col("alpha").is_null())["arm"].unique().to_list() == ["B"]
    md = (a_out / "stats.md").read_text()
    assert "Steering curve" in md and "Replication over seeds" in md


def test_report_has_the_steering_seed_and_power_sections(run):
    _, out, info = run
    assert {"steering_curve", "seed_intervals"} <= set(info["figures"])
    md = (out / "report.md").read_text()
    heads = re.findall(r"^## (.+)$", md, flags=re.M)
    for h in ("Results", "Steering", "Replication over seeds", "Figures"):
        assert h in heads, h
    assert heads.index("Steering") < heads.index("Replication over seeds") < heads.index("Figures")
    steer = md[md.index("## Steering") : md.index("## Replication over seeds")]
    assert "figures/steering_curve.png" in steer and "| S | villain | 2 | 3 | L2 |" in steer
    seeds = md[md.index("## Replication over seeds") :]
    assert "figures/seed_intervals.png" in seeds
    assert "| seed 42 | seed 43 | seed 44 | pooled [interval] |" in seeds
    # the checkpoint tables and figures leave the steer arm out
    results = md[md.index("## Results") : md.index("## Steering")]
    assert "| S |" not in results
    for ext in ("png", "svg", "html"):
        for name in ("steering_curve", "seed_intervals"):
            assert (out / "figures" / f"{name}.{ext}").stat().st_size > 1000
    page = (out / "report.html").read_text()
    assert "<h2>Steering</h2>" in page and "<h2>Replication over seeds</h2>" in page
    assert page.count("<svg") >= len(info["figures"])


def test_report_power_section(run):
    _, out, _ = run
    md = (out / "report.md").read_text()
    assert "## Power" in md
    power = md[md.index("## Power") : md.index("## Figures")]
    assert "|---|" in power
