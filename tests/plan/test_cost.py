"""The cost model: work read off the plan, estimates from a calibration, saved calibrations.
(Fitting one to a real run's manifests: tests/execute/test_cost_calibration.py.)"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml
from cpx.plan import compile_file
from cpx.plan._cost import (
    BUILTIN,
    GPU_KINDS,
    Calibration,
    CostError,
    load_calibration,
    save_calibration,
    stage_seconds,
    stage_work,
)

ROOT = Path(__file__).parents[2]
PUBLISHED = ROOT / "specs" / "causal_proximity.yaml"


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


def test_a_damaged_calibration_file_is_a_clear_error(tmp_path: Path) -> None:
    path = save_calibration(BUILTIN)
    assert load_calibration().kinds == BUILTIN.kinds
    path.write_text(json.dumps({"device": "NVIDIA H200", "params_b": 7, "load_s": 1, "kinds": {"sample": {}}}))
    with pytest.raises(CostError, match=re.escape(str(path)) + ": not a cost calibration"):
        load_calibration("NVIDIA H200")
