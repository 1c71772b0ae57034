"""Expansion of the published design and the demo into stages: shape, chains, labels, dedup."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from cpx.plan import Plan, Stage, compile_file
from cpx.spec import load_spec

SPECS = Path(__file__).parents[2] / "specs"
CP = SPECS / "causal_proximity.yaml"
DEMO = SPECS / "demo.yaml"


@pytest.fixture(scope="module")
def cp() -> Plan:
    return compile_file(CP)


def _adapters(stage: Stage) -> list[tuple[str, float]]:
    return [(a["stage"], a["checkpoint"]) for a in stage.params["model"]["adapters"]]


def test_counts_follow_the_design(cp: Plan) -> None:
    spec = load_spec(CP).spec
    n_src, n_seed = len(spec.roles.sources), len(spec.seeds)
    ckpts = spec.training["convergence"].checkpoints
    assert ckpts is not None
    n_ck = len(ckpts)
    points = n_seed * (1 + len(spec.arms) * n_src * n_ck)  # + the base model once per seed
    kinds = Counter(s.kind for s in cp.stages)
    assert kinds["sample"] == kinds["scan"] == kinds["represent"] == points == 61
    # A: marker + convergence; B: convergence + a marker per checkpoint; C: generic (marker shared with A)
    assert kinds["train"] == n_seed * n_src * (2 + 1 + n_ck + 1)
    assert kinds["dataset"] == n_seed * (2 * n_src + 1)
    assert kinds["generate"] == n_seed and kinds["analyze"] == 1 and kinds["report"] == 1


def test_plan_is_topological_with_unique_ids_and_hashes(cp: Plan) -> None:
    cp.check()
    pos = {s.id: i for i, s in enumerate(cp.stages)}
    assert all(pos[d] < pos[s.id] for s in cp.stages for d in s.deps)
    assert len({s.hash for s in cp.stages}) == len(cp.stages)
    assert all(len(s.hash) == 64 and int(s.hash, 16) >= 0 for s in cp.stages)
    for s in cp.stages:  # every adapter a chain names is also a dependency
        if "model" in s.params:
            assert {a for a, _ in _adapters(s)} <= set(s.deps)


def test_chains_per_arm(cp: Plan) -> None:
    by = cp.by_id()
    for src in ("villain", "software_engineer"):
        a_marker = f"train/A/marker/{src}/s42"
        for c in (0.2, 0.6, 1.0):
            tag = format(c, "g")
            assert _adapters(by[f"sample/A/{src}/s42/ckpt{tag}"]) == [
                (a_marker, 1.0),
                (f"train/A/convergence/{src}/s42", c),
            ]
            # Arm C merges the very same marker stage as arm A.
            assert _adapters(by[f"sample/C/{src}/s42/ckpt{tag}"]) == [
                (a_marker, 1.0),
                (f"train/C/generic/{src}/s42", c),
            ]
            b_marker = f"train/B/marker/{src}/s42/ckpt{tag}"
            assert _adapters(by[f"sample/B/{src}/s42/ckpt{tag}"]) == [
                (f"train/B/convergence/{src}/s42", c),
                (b_marker, 1.0),
            ]
            assert _adapters(by[b_marker]) == [(f"train/B/convergence/{src}/s42", c)]
            assert by[b_marker].labels["checkpoint"] == c
        assert by[a_marker].labels["arms"] == ["A", "C"]
        assert _adapters(by[a_marker]) == []
        # Marker epochs: 20 for A and C, the report's 10 for B (a per-arm override).
        assert by[a_marker].params["optim"]["epochs"] == 20
        assert by[f"train/B/marker/{src}/s42/ckpt0.2"].params["optim"]["epochs"] == 10
        assert by[f"train/C/generic/{src}/s42"].params["dataset"] == "dataset/generic/s42"


def test_checkpoint_zero_drops_the_adapter() -> None:
    plan = compile_file(CP, ["training.convergence.checkpoints=[0, 0.5, 1.0]"])
    by = plan.by_id()
    a0 = by["sample/A/villain/s42/ckpt0"]
    assert _adapters(a0) == [("train/A/marker/villain/s42", 1.0)]
    b0 = by["sample/B/villain/s42/ckpt0"]
    assert _adapters(b0) == [("train/B/marker/villain/s42/ckpt0", 1.0)]
    assert _adapters(by["train/B/marker/villain/s42/ckpt0"]) == []  # trained on the base model
    # A and C at checkpoint 0 evaluate the same model: one stage, reachable from both points.
    points = [p for p in by["analyze"].params["points"] if p["checkpoint"] == 0.0 and p["source"] == "villain"]
    assert {p["arm"] for p in points} == {"A", "B", "C"}
    scans = {p["arm"]: p["scan"] for p in points}
    assert scans["A"] == scans["C"] != scans["B"]
    for s in plan.stages:
        if "model" in s.params:
            assert all(c > 0 for _, c in _adapters(s))
        if s.kind == "train":
            assert 0.0 not in s.params["checkpoints"] and 1.0 in s.params["checkpoints"]


def test_labels_on_every_eval_stage(cp: Plan) -> None:
    for s in cp.stages:
        assert {"arm", "source", "seed", "checkpoint"} <= set(s.labels)
        if s.kind in ("sample", "scan", "represent"):
            assert isinstance(s.labels["checkpoint"], float) and 0.0 <= s.labels["checkpoint"] <= 1.0
            assert s.labels["seed"] == 42 and s.labels["arm"] in ("base", "A", "B", "C")
    base = cp.by_id()["sample/base/s42"]
    assert base.labels["arm"] == "base" and base.labels["checkpoint"] == 0.0 and base.labels["source"] is None
    assert _adapters(base) == []


def test_eval_params(cp: Plan) -> None:
    spec = load_spec(CP).spec
    s = cp.by_id()["sample/B/comedian/s42/ckpt0.4"]
    personas = s.params["personas"]
    assert len(personas) == 11 and len(s.params["questions"]) == 20
    roles = {p["name"]: p["role"] for p in personas}
    assert roles["comedian"] == "source" and roles["assistant"] == "assistant"
    assert Counter(roles.values())["bystander"] == 9
    assert all(p["n"] == 10 and p["prompt"] == spec.personas[p["name"]] for p in personas)
    assert s.params["sampler"] == {"temperature": 1.0, "top_p": 1.0, "max_tokens": 512, "seed": 42}
    r = cp.by_id()["represent/B/comedian/s42/ckpt0.4"]
    assert r.params["layers"] == [10, 15, 20, 25] and r.params["centering"] == "global_mean"
    # The code's variant: 30 completions for the assistant when the source is villain or comedian.
    v = compile_file(CP, ["eval.completions_overrides=[{persona: assistant, n: 30, sources: [villain, comedian]}]"])
    by = v.by_id()
    n = {p["name"]: p["n"] for p in by["sample/B/comedian/s42/ckpt0.4"].params["personas"]}
    assert n["assistant"] == 30 and n["comedian"] == 10
    n = {p["name"]: p["n"] for p in by["sample/B/software_engineer/s42/ckpt0.4"].params["personas"]}
    assert n["assistant"] == 10


def test_generate_dataset_and_train_params(cp: Plan) -> None:
    by = cp.by_id()
    g = by["generate/s42"]
    assert len(g.params["personas"]) == 11 and len(g.params["questions"]) == 40
    assert g.params["sampler"] == {"temperature": 0.7, "top_p": 0.95, "max_tokens": 512, "seed": 42, "n": 15}
    assert g.params["markers"] == ["[ZLT]"]
    m = by["dataset/marker/villain/s42"]
    assert m.deps == ("generate/s42",)
    assert m.params["marker"] == "[ZLT]" and m.params["marker_template"] == "\n\n{marker}"
    assert m.params["negatives"] == {"personas": 2, "examples_per_persona": 200}
    assert "assistant" not in {p["name"] for p in m.params["personas"]}
    t = by["train/A/marker/villain/s42"]
    assert t.params["loss"] == {"kind": "marker", "last_n": 1, "marker": "[ZLT]"}
    assert t.params["lora"]["r"] == 32 and t.params["lora"]["rslora"] is True
    assert t.params["screen"]["markers"] == ["[ZLT]"]
    assert {p["role"] for p in t.params["screen"]["personas"]} == {"source", "assistant", "bystander"}
    conv = by["train/B/convergence/villain/s42"]
    assert conv.params["screen"] is None and conv.params["loss"]["kind"] == "full"
    assert conv.params["checkpoints"] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert conv.params["model"]["base"] == {
        "kind": "hub",
        "id": "Qwen/Qwen2.5-7B-Instruct",
        "revision": None,
        "dtype": "bfloat16",
        "chat_template": None,
        "tiny": None,
    }


def test_analyze_and_report_deps(cp: Plan) -> None:
    by = cp.by_id()
    analyze = by["analyze"]
    want = {
        s.id
        for s in cp.stages
        if s.kind in ("scan", "represent") or (s.kind == "train" and s.params["screen"] is not None)
    }
    assert set(analyze.deps) == want
    assert by["report"].deps == ("analyze",)
    assert [a["name"] for a in analyze.params["analyses"]][:2] == ["leakage", "within_source"]
    assert len(analyze.params["points"]) == 61


def test_tiny_model_corpus_has_every_text_the_model_sees() -> None:
    plan = compile_file(DEMO)
    spec = load_spec(DEMO).spec
    base = plan.stages[0].params["model"]["base"]
    assert base["kind"] == "tiny" and base["tiny"]["initializer_range"] == 0.2
    corpus = set(base["tiny"]["corpus"])
    texts = set(spec.personas.values()) | set(spec.questions.eval) | set(spec.questions.data) | {"[ZLT]"}
    assert texts <= corpus
    for s in plan.stages:
        if "model" in s.params:
            assert s.params["model"]["base"] == base


def test_seeds_replicate_the_design() -> None:
    one = compile_file(DEMO)
    two = compile_file(DEMO, ["seeds=[42, 7]"])
    kinds1, kinds2 = Counter(s.kind for s in one.stages), Counter(s.kind for s in two.stages)
    for kind in ("generate", "dataset", "train", "sample", "scan"):
        assert kinds2[kind] == 2 * kinds1[kind]
    # The base model's hidden states do not depend on the seed: one stage serves both seeds.
    assert kinds2["represent"] == 2 * kinds1["represent"] - 1
    s7 = two.by_id()["sample/A/villain/s7/ckpt1"]
    assert s7.params["sampler"]["seed"] == 7 and s7.labels["seed"] == 7
