"""The cost model: work read off the plan, estimates from a calibration, a calibration fitted to
a real run's manifests, `cpx plan cost` and `cpx compile` using what it saved."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cpx.plan import compile_file
from cpx.plan._compile import params_b
from cpx.plan._cost import (
    BUILTIN,
    GPU_KINDS,
    Calibration,
    CostError,
    calibrate,
    load_calibration,
    run_manifests,
    save_calibration,
    stage_seconds,
    stage_work,
)

ROOT = Path(__file__).parents[2]
PUBLISHED = ROOT / "specs" / "causal_proximity.yaml"
DEMO = ROOT / "tests" / "data" / "demo_small.yaml"
SMALL = [
    "training.marker.epochs=1",
    "training.convergence.epochs=1",
    "arms.B.phases.1.overrides.epochs=1",
    "datasets.marker.examples=10",
    "datasets.marker.negatives.examples_per_persona=5",
    "datasets.convergence.examples=10",
    "datasets.generic.examples=10",
    "eval.completions=2",
    "eval.screen.completions=1",
    "eval.sampler.max_tokens=8",
    "eval.screen.sampler.max_tokens=8",
    "eval.intervals.n_resamples=50",
]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CPX_DEVICE_CLASS", raising=False)


def test_the_published_designs_work_follows_from_its_spec() -> None:
    spec = yaml.safe_load(PUBLISHED.read_text())
    plan = compile_file(PUBLISHED)
    work = stage_work(plan)
    by_id = plan.by_id()
    tr, ds = spec["training"], spec["datasets"]
    batch = tr["defaults"]["batch_size"]
    sources = len(spec["roles"]["sources"])
    n_ckpt = len(tr["convergence"]["checkpoints"])
    marker_ex = (
        ds["marker"]["examples"]
        + ds["marker"]["negatives"]["personas"] * ds["marker"]["negatives"]["examples_per_persona"]
    )
    marker_epochs_b = spec["arms"]["B"]["phases"][1]["overrides"]["epochs"]
    # arm A's marker (arm C merges the same adapter) and arm B's, one per convergence checkpoint
    marker_steps = sources * math.ceil(marker_ex / batch) * (tr["marker"]["epochs"] + n_ckpt * marker_epochs_b)
    # convergence in arms A and B, generic in arm C: the same recipe size and epochs
    full_steps = 3 * sources * math.ceil(ds["convergence"]["examples"] / batch) * tr["convergence"]["epochs"]
    steps = {"marker": 0, "full": 0}
    for sid, w in work.items():
        if w.kind == "train":
            steps[by_id[sid].params["loss"]["kind"]] += w.steps
    assert steps == {"marker": marker_steps, "full": full_steps} == {"marker": 42000, "full": 6000}
    n_personas = len(spec["personas"])
    per_eval = (
        n_personas
        * len(spec["questions"]["eval"])
        * spec["eval"]["completions"]
        * spec["eval"]["sampler"]["max_tokens"]
    )
    samples = [w for w in work.values() if w.kind == "sample"]
    assert samples and all(w.gen_tokens == per_eval for w in samples)
    (gen,) = [w for w in work.values() if w.kind == "generate"]
    g = spec["generation"]
    assert (
        gen.gen_tokens
        == n_personas * len(spec["questions"]["data"]) * g["completions_per_question"] * g["sampler"]["max_tokens"]
    )
    assert all(w.prompts == n_personas * len(spec["questions"]["eval"]) for w in work.values() if w.kind == "represent")
    assert all(w.units() == 0 for w in work.values() if w.kind not in GPU_KINDS)


def test_an_estimate_is_start_plus_rate_times_work_and_one_model_load() -> None:
    plan = compile_file(PUBLISHED)
    cal = Calibration(
        "Test GPU",
        params_b=14.0,
        load_s=30.0,
        kinds={
            "generate": {"start_s": 1.0, "rate": 1e-4},
            "sample": {"start_s": 2.0, "rate": 2e-5},
            "train": {"start_s": 3.0, "rate": 1e-4},
            "represent": {"start_s": 0.5, "rate": 0.01},
        },
    )
    secs = stage_seconds(plan, 7.0, cal)
    work = stage_work(plan)
    expect = 30.0
    for s in plan.stages:
        w = work[s.id]
        if s.kind == "generate":
            expect += 1.0 + 1e-4 * w.gen_tokens
        elif s.kind == "sample":
            expect += 2.0 + 2e-5 * w.gen_tokens
        elif s.kind == "train":  # its marker screen is charged at the sample rate
            expect += 3.0 + 1e-4 * w.train_tokens + 2e-5 * w.gen_tokens
        elif s.kind == "represent":
            expect += 0.5 + 0.01 * w.prompts
    # a model half the calibration's size: every rate and start at half
    assert sum(secs.values()) == pytest.approx(expect * 7.0 / 14.0)
    assert all(secs[s.id] == 0 for s in plan.stages if s.kind not in GPU_KINDS)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """The small demo through the real executor and stage runners on the CPU."""
    run = tmp_path_factory.mktemp("cost-demo")
    args = [sys.executable, "-m", "cpx", "compile", str(DEMO), "--out", str(run), "-q"]
    for s in SMALL:
        args += ["-s", s]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python"), "CPX_CACHE_DIR": str(run / "cache")}
    assert subprocess.run(args, env=env, capture_output=True, timeout=120).returncode == 0
    r = subprocess.run(
        [sys.executable, "-m", "cpx", "execute", str(run), "--devices", "cpu", "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return run


@pytest.mark.slow
def test_a_calibration_is_fitted_to_the_runs_manifests(demo_run: Path) -> None:
    from cpx.plan import Plan

    plan = Plan.load(demo_run)
    ms = run_manifests(demo_run, plan)
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


@pytest.mark.slow
def test_plan_cost_saves_a_calibration_that_compile_then_uses(demo_run: Path, tmp_path: Path) -> None:
    from cpx.plan import Plan

    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}

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
    # every stage of that run is done: the same folder has nothing left to estimate
    assert "0.00" in cpx("compile", str(DEMO), "--out", str(demo_run), *[x for s in SMALL for x in ("-s", s)]).stdout
    bad = cpx("compile", str(DEMO), "--check", "--device-class", "No Such GPU")
    assert bad.returncode == 2 and "no cost calibration for device class 'No Such GPU'" in bad.stderr
    assert device in bad.stderr  # it lists the ones there are


def test_a_damaged_calibration_file_is_a_clear_error(tmp_path: Path) -> None:
    path = save_calibration(BUILTIN)
    assert load_calibration().kinds == BUILTIN.kinds
    path.write_text(json.dumps({"device": "NVIDIA H200", "params_b": 7, "load_s": 1, "kinds": {"sample": {}}}))
    with pytest.raises(CostError, match=re.escape(str(path)) + ": not a cost calibration"):
        load_calibration("NVIDIA H200")
