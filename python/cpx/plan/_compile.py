"""Expansion: a validated spec becomes a plan of content-hashed stages.

Per seed: one `generate` stage, the datasets it feeds, the training phases of every arm for
every source, and at every eval point (arm, source, seed, checkpoint) a `sample`, a `scan` and
a `represent` stage; then one `analyze` and one `report`. A steer arm's eval points are
(arm, source, seed, alpha) instead: its model sampled and read with the `steer` param, whose
direction comes from a `represent` stage of the unsteered (or base) model.

Identical work reached from two arms (same kind, params and inputs) is one stage: the first id
it was reached under is kept, and `labels.arms` lists every arm that uses it. Work that does not
depend on the replicate seed (a fixed generation or dataset seed, the base model's hidden
states) is one stage too, and `labels.seeds` lists the seeds that use it.

Each stage kind is built in a module of its own, on the state in `cpx.plan._build.Build`:
`_compile_data` (generate, dataset), `_compile_train` (an arm's phases and their train
stages), `_compile_eval` (an eval point's sample, scan and represent), `_compile_steer` (a
steer arm's points and its direction), `_compile_report` (analyze, report).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cpx.plan import _compile_data as _data
from cpx.plan import _compile_eval as _evaluate
from cpx.plan import _compile_report as _report
from cpx.plan import _compile_steer as _steer
from cpx.plan import _compile_train as _train
from cpx.plan._build import Build
from cpx.plan._hash import canonical, sha256
from cpx.plan._model import Plan
from cpx.spec import Loaded, SpecError, axis_phase

_DISPLAY_KEYS = ("name", "description")


def spec_json(loaded: Loaded) -> dict[str, Any]:
    """The resolved spec as plain JSON (defaults filled in, `extends` applied)."""
    d = loaded.spec.model_dump(mode="json", by_alias=True, exclude={"extends"})
    d["name"] = loaded.name
    power = d.get("power")
    if power and power.get("from_run") and not Path(power["from_run"]).is_absolute():
        # Written relative to the spec; the report stage reads it from the plan, elsewhere.
        power["from_run"] = str((Path(loaded.file).parent / power["from_run"]).resolve())
    return d


def spec_hash(spec: dict[str, Any]) -> str:
    """Hash of the resolved spec; the display name and description do not count."""
    return sha256(canonical({k: v for k, v in spec.items() if k not in _DISPLAY_KEYS}))


def compile_spec(loaded: Loaded) -> Plan:
    """Expand a loaded spec into a Plan (stages in topological order)."""
    b = Build(loaded)
    s = b.s
    for seed in s.seeds:
        _data.generate(b, seed)
        if s.eval.baseline:
            _evaluate.eval_point(b, "base", None, seed, 0.0, [])
        # Arms in name order: a stage reached from two arms is named after the first to
        # reach it, and the YAML's key order must change no id. Steer arms come after the
        # train arms: a train arm's eval point then owns (and labels) the represent stage
        # that a steer arm reads its direction from, whatever the arms are called.
        for arm_name, arm in sorted(s.arms.items(), key=lambda kv: (kv[1].kind == "steer", kv[0])):
            if arm.kind == "steer":
                for source in arm.sources or s.roles.sources:
                    _steer.steer_points(b, arm_name, source, seed)
                continue
            last = len(arm.phases) - 1
            axis = axis_phase(arm)
            for source in arm.sources or s.roles.sources:
                for c in _train.axis_checkpoints(b, arm_name):
                    ckpt = c if arm.phases[last].name == axis else 1.0
                    adapters = _train.model_after(b, arm_name, last, ckpt, c, source, seed)
                    _evaluate.eval_point(b, arm_name, source, seed, c, adapters)
    if b.issues:
        raise SpecError(b.issues)
    _report.analyze_and_report(b)
    spec = spec_json(b.L)
    return Plan(name=b.L.name, spec=spec, spec_hash=spec_hash(spec), stages=b.stages, values=b.values)


def params_b(spec: dict[str, Any]) -> float:
    """The model's size in billions of parameters, for the cost model."""
    m = spec.get("model") or {}
    if m.get("params_b"):
        return float(m["params_b"])
    t = m.get("tiny")
    if t:
        h, layers, inter, vocab = t["hidden_size"], t["num_layers"], t["intermediate_size"], t["vocab_size"]
        return (layers * (4 * h * h + 3 * h * inter) + 2 * vocab * h) / 1e9
    found = re.search(r"(\d+(?:\.\d+)?)\s*[bB]\b", str(m.get("hub") or m.get("path") or ""))
    return float(found.group(1)) if found else 7.0
