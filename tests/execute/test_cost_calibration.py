"""The cost model fitted to a real run: the small demo's session reference run (real stage
runners on the CPU), `cpx plan cost` on it, and `cpx compile` using the calibration it saved."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _demo import DEMO, SMALL
from _exec_helpers import SRC
from cpx.plan import Plan
from cpx.plan._compile import params_b
from cpx.plan._cost import BUILTIN, GPU_KINDS, calibrate, load_calibration, run_manifests, stage_seconds, stage_work


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CPX_DEVICE_CLASS", raising=False)


@pytest.mark.slow
def test_a_calibration_is_fitted_to_the_runs_manifests(reference: tuple[Path, float]) -> None:
    run = reference[0]
    plan = Plan.load(run)
    ms = run_manifests(run, plan)
    cal = calibrate(plan, ms, params_b(plan.spec))
    work = stage_work(plan)
    cpu = {m["device"]["name"] for m in ms.values() if m["kind"] in GPU_KINDS}
    assert cal.device == cpu.pop()
    first = min((m["timings"]["started"], sid) for sid, m in ms.items() if m["kind"] in GPU_KINDS)[1]
    core_key = {"generate": "seconds", "sample": "seconds", "train": "train_seconds"}
    for kind in GPU_KINDS:
        ids = [sid for sid, m in ms.items() if m["kind"] == kind]
        assert cal.stages[kind] == len(ids) > 0
        secs = {sid: ms[sid]["timings"]["seconds"] for sid in ids}
        units = sum(work[sid].units() for sid in ids)
        if kind in core_key:
            core = {sid: ms[sid]["info"][core_key[kind]] for sid in ids}
            assert cal.kinds[kind]["rate"] == pytest.approx(sum(core.values()) / units)
            screen = cal.kinds["sample"]["rate"] if kind == "train" else 0.0
            rest = [secs[s] - core[s] - screen * work[s].gen_tokens for s in ids if s != first]
            assert cal.kinds[kind]["start_s"] == pytest.approx(max(0.0, sum(rest) / len(rest)) if rest else 0.0)
        else:  # represent reports no loop time: seconds per prompt, no start
            warm = [s for s in ids if s != first]
            assert cal.kinds[kind]["rate"] == pytest.approx(
                sum(secs[s] for s in warm) / sum(work[s].units() for s in warm)
            )
    # the model load is what the worker's first GPU stage took beyond the fitted model of it,
    # so with it that stage's estimate is what it took
    assert cal.load_s > 0
    assert stage_seconds(plan, params_b(plan.spec), cal)[first] == pytest.approx(ms[first]["timings"]["seconds"])


def test_a_fleet_member_counts_its_share_of_the_fleets_time(reference: tuple[Path, float]) -> None:
    """Members of a fleet of F each record the fleet's time (from its start to their end):
    the fit counts 1/F of it, so the same work trained by fleets of 2 fits the same rates."""
    import copy

    run = reference[0]
    plan = Plan.load(run)
    ms = run_manifests(run, plan)
    alone = calibrate(plan, ms, params_b(plan.spec))
    fleets = copy.deepcopy(ms)
    trains = [m for m in fleets.values() if m["kind"] == "train"]
    assert trains
    for m in trains:
        m["info"]["fleet_size"] = 2
        m["timings"]["seconds"] *= 2
        m["info"]["train_seconds"] *= 2
    shared = calibrate(plan, fleets, params_b(plan.spec))
    assert shared.kinds["train"] == pytest.approx(alone.kinds["train"])
    assert shared.load_s == pytest.approx(alone.load_s)


@pytest.mark.slow
def test_plan_cost_saves_a_calibration_that_compile_then_uses(reference: tuple[Path, float], tmp_path: Path) -> None:
    demo_run = reference[0]
    env = {**os.environ, "PYTHONPATH": str(SRC)}

    def cpx(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cpx", *a], env=env, capture_output=True, text=True, timeout=120)

    r = cpx("plan", "cost", str(demo_run), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["saved"] is None and out["current"]["device"] == BUILTIN.device
    assert {row["kind"] for row in out["rows"]} == set(GPU_KINDS)
    ms = run_manifests(demo_run, Plan.load(demo_run))
    for row in out["rows"]:
        ids = [m for m in ms.values() if m["kind"] == row["kind"]]
        assert row["stages"] == len(ids) and row["actual_s"] == pytest.approx(sum(m["timings"]["seconds"] for m in ids))
    text = cpx("plan", "cost", str(demo_run), "--save")
    assert text.returncode == 0, text.stderr
    saved = Path(re.search(r"saved: (\S+)", text.stdout).group(1))
    device = json.loads(saved.read_text())["device"]
    assert saved.parent == Path(os.environ["CPX_CACHE_DIR"]) / "cost" and "est/actual" in text.stdout

    comp = cpx("compile", str(DEMO), "--out", str(tmp_path / "again"), *[x for s in SMALL for x in ("-s", s)])
    assert comp.returncode == 0, comp.stderr
    assert f"rates of one {device}, calibrated from {demo_run.resolve()}" in comp.stdout
    plan = Plan.load(tmp_path / "again")
    cal = load_calibration()
    hours = sum(stage_seconds(plan, params_b(plan.spec), cal).values()) / 3600
    total = re.search(r"^\s*total\s+\d+\s+\d+\s+([\d.]+)", comp.stdout, re.MULTILINE)
    assert float(total.group(1)) == pytest.approx(hours, abs=0.006)
    # every stage of that run is done: nothing left to estimate there (--check writes nothing)
    done = cpx("compile", str(DEMO), "--check", "--out", str(demo_run), *[x for s in SMALL for x in ("-s", s)])
    assert re.search(r"^\s*total\s+33\s+33\s+0\.00$", done.stdout, re.MULTILINE), done.stdout
    bad = cpx("compile", str(DEMO), "--check", "--device-class", "No Such GPU")
    assert bad.returncode == 2 and "no cost calibration for device class 'No Such GPU'" in bad.stderr
    assert device in bad.stderr  # it lists the ones there are
