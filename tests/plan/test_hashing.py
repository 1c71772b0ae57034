"""Semantic hashing: what must not change a hash, and exactly what a parameter change re-hashes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from cpx.plan import Plan, compile_file

SPECS = Path(__file__).parents[2] / "specs"
CP = SPECS / "causal_proximity.yaml"
DEMO = SPECS / "demo.yaml"


def _hashes(plan: Plan) -> dict[str, str]:
    return {s.id: s.hash for s in plan.stages}


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("spec", [CP, DEMO], ids=["causal_proximity", "demo"])
def test_formatting_comments_key_order_and_anchors_change_nothing(tmp_path: Path, spec: Path) -> None:
    ref = compile_file(spec)
    # Written out: no comments, no anchors (a JSON round trip expands aliases), sorted keys.
    data = json.loads(json.dumps(yaml.safe_load(spec.read_text())))
    flat = _write(tmp_path, "flat.yaml", yaml.safe_dump(data, sort_keys=True, width=10_000))
    assert "&" not in flat.read_text() and "#" not in flat.read_text()

    # Reversed key order everywhere, in flow style.
    def rev(v: object) -> object:
        if isinstance(v, dict):
            return {k: rev(v[k]) for k in reversed(list(v))}
        if isinstance(v, list):
            return [rev(x) for x in v]
        return v

    flow = _write(tmp_path, "flow.yaml", yaml.safe_dump(rev(data), sort_keys=False, default_flow_style=True))
    for variant in (flat, flow):
        plan = compile_file(variant)
        assert _hashes(plan) == _hashes(ref)
        assert plan.spec_hash == ref.spec_hash


def test_display_names_change_no_hash(tmp_path: Path) -> None:
    """Renaming arms and phases keeps every hash but analyze's and report's, whose outputs name the arms."""
    ref = compile_file(DEMO)
    text = DEMO.read_text()
    # Rename the arms and the phases (and references to them), the spec and its description.
    for old, new in (("A:", "marker_first:"), ("B:", "convergence_first:"), ("C:", "control:")):
        text = re.sub(rf"(?m)^  {old}", f"  {new}", text)
    text = text.replace("merge: A.marker", "merge: marker_first.mk").replace("name: marker,", "name: mk,")
    text = text.replace("name: demo", "name: renamed").replace("description: Causal", "description: Other")
    renamed = compile_file(_write(tmp_path, "renamed.yaml", text))
    assert renamed.name == "renamed"
    work = {s.hash for s in ref.stages if s.kind not in ("analyze", "report")}
    assert {s.hash for s in renamed.stages if s.kind not in ("analyze", "report")} == work
    assert len(work) == len(ref.stages) - 2
    # The spec's own name and description are display only.
    plain = compile_file(
        _write(
            tmp_path,
            "plain.yaml",
            DEMO.read_text().replace("name: demo", "name: other").replace("description: Causal", "description: Other"),
        )
    )
    assert _hashes(plain) == _hashes(ref) and plain.spec_hash == ref.spec_hash
    assert any(s.id.startswith("train/marker_first/mk/") for s in renamed.stages)


def _descendants(plan: Plan, roots: set[str]) -> set[str]:
    users: dict[str, list[str]] = {}
    for s in plan.stages:
        for d in s.deps:
            users.setdefault(d, []).append(s.id)
    out, todo = set(roots), list(roots)
    while todo:
        for u in users.get(todo.pop(), []):
            if u not in out:
                out.add(u)
                todo.append(u)
    return out


@pytest.mark.parametrize(
    ("override", "direct_kinds"),
    [
        ("eval.sampler.temperature=0.7", {"sample"}),
        ("training.marker.lora.r=16", {"train"}),
        ("representation.layers=[10, 15, 20]", {"represent"}),
        ("datasets.generic.examples=300", {"dataset"}),
        ("eval.intervals.n_resamples=500", {"scan"}),
        ("arms.B.phases.1.overrides.epochs=20", {"train"}),
    ],
)
def test_a_parameter_change_rehashes_exactly_that_stage_and_its_descendants(
    override: str, direct_kinds: set[str]
) -> None:
    a = compile_file(CP)
    b = compile_file(CP, [override])
    ia, ib = a.by_id(), b.by_id()
    assert set(ia) == set(ib)
    # Independent reference: stages whose own params differ, then everything downstream of them.
    direct = {sid for sid in ia if ia[sid].params != ib[sid].params and ia[sid].kind != "analyze"}
    assert direct and {ia[sid].kind for sid in direct} == direct_kinds
    expected = _descendants(a, direct)
    changed = {sid for sid in ia if ia[sid].hash != ib[sid].hash}
    assert changed == expected


def test_rank_of_the_marker_rehashes_marker_training_only() -> None:
    a, b = compile_file(CP), compile_file(CP, ["training.marker.lora.r=16"])
    ia, ib = a.by_id(), b.by_id()
    changed = {sid for sid in ia if ia[sid].hash != ib[sid].hash}
    assert not {sid for sid in changed if ia[sid].kind in ("generate", "dataset")}
    assert "train/B/convergence/villain/s42" not in changed
    assert "train/A/marker/villain/s42" in changed and "train/B/marker/villain/s42/ckpt0.2" in changed
    # Arm A's convergence starts from the marker model: it must re-run too.
    assert "train/A/convergence/villain/s42" in changed


def test_hashes_are_the_same_in_another_process(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "python"), "PYTHONHASHSEED": "123"}
    subprocess.run(
        [sys.executable, "-m", "cpx", "compile", str(CP), "--out", str(out), "-q"],
        env=env,
        check=True,
        capture_output=True,
    )
    other = Plan.load(out)
    assert _hashes(other) == _hashes(compile_file(CP))
