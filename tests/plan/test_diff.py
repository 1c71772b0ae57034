"""`cpx plan diff` logic: which stages change, and which parameter made them change."""

from __future__ import annotations

from pathlib import Path

from cpx.plan import compile_file
from cpx.plan._diff import diff_plans, flatten, format_diff, mermaid

DEMO = Path(__file__).parents[2] / "tests" / "data" / "demo_small.yaml"


def test_identical_plans_have_an_empty_diff() -> None:
    d = diff_plans(compile_file(DEMO), compile_file(DEMO))
    assert d.empty and d.unchanged == 33


def test_temperature_change_names_the_parameter_and_the_cause() -> None:
    a, b = compile_file(DEMO), compile_file(DEMO, ["eval.sampler.temperature=0.7"])
    d = diff_plans(a, b)
    by = {c.id: c for c in d.changed}
    samples = [s.id for s in a.stages if s.kind == "sample"]
    assert set(samples) <= set(by)
    for sid in samples:
        assert by[sid].params == [("sampler.temperature", 1.0, 0.7)] and by[sid].causes == [sid]
    scan = by["scan/A/villain/s42/ckpt1"]
    assert scan.params == [] and scan.causes == ["sample/A/villain/s42/ckpt1"]
    assert set(by["analyze"].causes) == set(samples)
    text = format_diff(d)
    assert "~ sample/A/villain/s42/ckpt1  sampler.temperature: 1.0 -> 0.7" in text
    assert "~ scan/A/villain/s42/ckpt1  because of sample/A/villain/s42/ckpt1" in text
    assert not d.added and not d.removed


def test_added_and_removed_stages() -> None:
    a, b = compile_file(DEMO), compile_file(DEMO, ["training.convergence.checkpoints=[0.25, 0.5, 1.0]"])
    d = diff_plans(a, b)
    added = {s.id for s in d.added}
    assert "sample/A/villain/s42/ckpt0.25" in added and "train/B/marker/villain/s42/ckpt0.25" in added
    changed = {c.id: c for c in d.changed}
    assert changed["train/A/convergence/villain/s42"].params == [("checkpoints", [0.5, 1.0], [0.25, 0.5, 1.0])]
    back = diff_plans(b, a)
    assert {s.id for s in back.removed} == added


def test_flatten_keys_named_items() -> None:
    flat = flatten({"personas": [{"name": "x", "n": 1}, {"name": "y", "n": 2}], "layers": [1, 2]})
    assert flat == {
        "personas[x].name": "x",
        "personas[x].n": 1,
        "personas[y].name": "y",
        "personas[y].n": 2,
        "layers": [1, 2],
    }


def test_mermaid_has_every_stage_and_edge() -> None:
    plan = compile_file(DEMO)
    text = mermaid(plan)
    assert text.startswith("flowchart LR")
    assert text.count(" --> ") == sum(len(s.deps) for s in plan.stages)
    assert all(f'["{s.id}"]' in text for s in plan.stages)
