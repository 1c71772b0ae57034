"""The typed params of each stage kind (cpx.plan._params): the compiler's output parses into them,
stage references are found by walking the types, bad values name where and what, and a shared
value is parsed once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cpx.plan import (
    PARAMS,
    Chain,
    InvalidParam,
    Params,
    Plan,
    SampleParams,
    Sampler,
    SamplerError,
    StageParamError,
    StageRef,
    as_sampler,
    compile_file,
    parse_params,
)
from cpx.plan._hash import stage_hash
from cpx.plan._params import ref_paths

SPECS = Path(__file__).resolve().parents[2] / "specs"


@pytest.fixture(scope="module", params=["demo", "next_steps", "causal_proximity"])
def plan(request, tmp_path_factory) -> Plan:
    """A compiled spec as `cpx execute` reads it: saved, then loaded (shared values resolved)."""
    out = tmp_path_factory.mktemp(request.param) / "plan.json"
    compile_file(SPECS / f"{request.param}.yaml").save(out)
    return Plan.load(out)


def test_every_stage_parses_and_writes_back_the_same_json(plan):
    for s in plan.stages:
        typed = parse_params(s.kind, s.params, f"stage {s.id}")
        assert isinstance(typed, PARAMS[s.kind])
        assert typed.json() == s.params, s.id


def _ids_by_walking(value, found):
    """Every StageRef in a parsed params object, by walking its values (not its type)."""
    if isinstance(value, StageRef):
        found.append(str(value))
    elif isinstance(value, Params):
        for name in value.FIELDS:
            _ids_by_walking(getattr(value, name), found)
    elif isinstance(value, tuple):
        for x in value:
            _ids_by_walking(x, found)
    return found


def test_stage_refs_are_the_deps_they_name(plan):
    """Every stage id a stage's params hold is a StageRef, and is one of its deps; a dep it does not
    name in its params is there for its outputs alone (scan reads its sample stage)."""
    n_refs = 0
    for s in plan.stages:
        refs = _ids_by_walking(parse_params(s.kind, s.params, s.id), [])
        assert set(refs) <= set(s.deps), s.id
        n_refs += len(refs)
    assert n_refs > 0


def test_the_hash_covers_a_ref_by_its_stage_hash_not_its_id(plan):
    """The hasher rewrites exactly the StageRef paths that walking the types finds: renaming a
    referenced stage changes no hash, changing its hash changes the stage's."""
    by_id = plan.by_id()
    for s in plan.stages:
        refs = _ids_by_walking(parse_params(s.kind, s.params, s.id), [])
        if not refs:
            continue
        deps = {d: by_id[d].hash for d in s.deps}
        params = plan.values.refer(s.params)
        assert stage_hash(s.kind, params, deps) == s.hash, s.id
        old = refs[0]
        renamed = json.loads(json.dumps(params).replace(json.dumps(old), json.dumps(old + "~renamed")))
        assert (
            stage_hash(s.kind, renamed, {**{d: h for d, h in deps.items() if d != old}, old + "~renamed": deps[old]})
            == s.hash
        )
        assert stage_hash(s.kind, params, {**deps, old: "0" * 64}) != s.hash
        return
    pytest.fail("no stage names another in its params")


def test_ref_paths_come_from_the_types():
    assert ref_paths(PARAMS["train"]) == (("model", "adapters", "*", "stage"), ("dataset",))
    assert ref_paths(PARAMS["sample"]) == (("model", "adapters", "*", "stage"), ("steer", "direction", "represent"))
    assert ref_paths(PARAMS["analyze"]) == (("points", "*", "scan"), ("points", "*", "represent"))
    assert ref_paths(PARAMS["scan"]) == ()

    class Nested(Params):
        chain: Chain | None = None
        others: tuple[StageRef, ...] = ()

    assert ref_paths(Nested) == (("chain", "adapters", "*", "stage"), ("others", "*"))


def _sample(**patch):
    base = {
        "model": {"base": {"kind": "hub", "id": "org/model"}, "adapters": [{"stage": "train/x", "checkpoint": 0.5}]},
        "personas": [{"name": "villain", "prompt": "p", "role": "source", "n": 2}],
        "questions": [{"id": "q0", "text": "t"}],
        "sampler": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 8, "seed": 1},
        "backend": "hf",
    }
    return {**base, **patch}


@pytest.mark.parametrize(
    ("patch", "msg"),
    [
        ({"backend": "tpu"}, r"params\.backend must be one of auto, hf, vllm, got 'tpu'"),
        (
            {"sampler": {"temperature": -1, "top_p": 1, "max_tokens": 8, "seed": 1}},
            r"params\.sampler\.temperature must",
        ),
        ({"sampler": {"temperature": 1, "top_p": 0, "max_tokens": 8, "seed": 1}}, r"params\.sampler\.top_p must be in"),
        ({"sampler": {"temperature": 1, "top_p": 1, "max_tokens": 8}}, r"params\.sampler: missing key 'seed'"),
        (
            {"sampler": {"temperature": 1, "top_p": 1, "max_tokens": 8, "seed": True}},
            r"sampler\.seed must be an integer",
        ),
        ({"samplr": {}}, r"params: unknown key\(s\) \['samplr'\]"),
        ({"personas": []}, r"params\.personas must be a non-empty list"),
        (
            {"personas": [{"name": "a", "role": "source", "n": 1}] * 2},
            r"params\.personas\[1\] persona 'a' appears twice",
        ),
        ({"personas": "villain"}, r"params\.personas must be a list, got 'villain'"),
        ({"questions": [{"id": "q0"}]}, r"params\.questions\[0\]: missing key 'text'"),
        (
            {"model": {"base": {"kind": "hub", "id": "m"}, "adapters": [{"stage": "t", "checkpoint": 0}]}},
            r"model\.adapters\[0\]\.checkpoint must be in \(0, 1\]",
        ),
        (
            {
                "steer": {
                    "layer": 1,
                    "alpha": 1.0,
                    "normalize": True,
                    "personas": ["pirate"],
                    "direction": {"represent": "r", "source": "a", "assistant": "b"},
                }
            },
            r"params\.steer\.personas names \['pirate'\]",
        ),
        (
            {
                "backend": "vllm",
                "steer": {
                    "layer": 1,
                    "alpha": 1.0,
                    "normalize": True,
                    "personas": ["villain"],
                    "direction": {"represent": "r", "source": "a", "assistant": "b"},
                },
            },
            r"params\.steer needs params\.backend hf",
        ),
    ],
)
def test_a_bad_value_names_the_stage_the_key_and_what(patch, msg):
    with pytest.raises(StageParamError, match=rf"^stage sample/x: .*{msg}"):
        parse_params("sample", _sample(**patch), "stage sample/x")


def test_a_typed_value_is_checked_when_it_is_made():
    with pytest.raises(InvalidParam, match=r"top_p must be in \(0, 1\], got 1\.5"):
        Sampler(temperature=1.0, top_p=1.5, max_tokens=4, seed=0)
    with pytest.raises(SamplerError, match=r"sampler\.max_tokens must be an integer >= 1, got 0"):
        as_sampler({"temperature": 1.0, "top_p": 1.0, "max_tokens": 0, "seed": 0})
    s = Sampler(temperature=0.7, top_p=0.95, max_tokens=4, seed=3)
    assert as_sampler(s) is s
    # The engine takes a generate sampler's mapping as well: `n` is not the engine's.
    assert as_sampler({**s.json(), "n": 5}) == s


def test_a_shared_value_is_parsed_once():
    questions = [{"id": f"q{i}", "text": f"question {i}"} for i in range(1000)]
    memo: dict = {}
    a = parse_params("sample", _sample(questions=questions), "stage a", memo)
    b = parse_params("sample", _sample(questions=questions), "stage b", memo)
    assert isinstance(a, SampleParams) and a.questions is b.questions
    c = parse_params("sample", _sample(questions=[dict(q) for q in questions]), "stage c", memo)
    assert c.questions == a.questions and c.questions is not a.questions


def test_the_runner_gets_typed_params_parsed_once(tmp_path):
    from cpx.plan import Stage
    from cpx.stages import StageContext

    stage = Stage(id="sample/x", kind="sample", hash="0" * 64, params=_sample())
    ctx = StageContext(stage=stage, out_dir=tmp_path, inputs={}, run_dir=tmp_path)
    assert isinstance(ctx.params, SampleParams) and ctx.params is ctx.params
    assert ctx.params.sampler == Sampler(temperature=1.0, top_p=1.0, max_tokens=8, seed=1)
    assert ctx.params.model.adapters[0].stage == "train/x" and isinstance(ctx.params.model.adapters[0].stage, StageRef)
