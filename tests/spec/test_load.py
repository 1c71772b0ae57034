"""Loading valid specs: extends, -s overrides, bank files, anchors, x- keys, positions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import yaml

from cpx.plan import compile_file
from cpx.spec import json_schema, load_spec

SPECS = Path(__file__).parents[2] / "specs"
DEMO = SPECS / "demo.yaml"
CP = SPECS / "causal_proximity.yaml"


def _hashes(plan):  # type: ignore[no-untyped-def]
    return {s.id: s.hash for s in plan.stages}


def test_published_specs_load() -> None:
    cp = load_spec(CP)
    assert cp.name == "causal_proximity" and cp.spec.seeds == [42]
    assert cp.spec.model.hub == "Qwen/Qwen2.5-7B-Instruct"
    assert len(cp.spec.personas) == 11 and len(cp.spec.questions.eval) == 20 and len(cp.spec.questions.data) == 40
    assert cp.spec.roles.sources == ["villain", "comedian", "kindergarten_teacher", "software_engineer"]
    assert cp.spec.eval.completions == 10 and cp.spec.eval.sampler.max_tokens == 512
    assert cp.spec.representation.layers == [10, 15, 20, 25]
    demo = load_spec(DEMO)
    assert demo.spec.model.tiny is not None and demo.spec.training["defaults"].lora is not None
    assert demo.spec.training["defaults"].lora.r == 8  # through the YAML anchor


def test_positions_point_at_the_written_value() -> None:
    loaded = load_spec(CP)
    text = CP.read_text().splitlines()
    loc = loaded.where(("roles", "sources", 1))
    assert text[loc.line - 1][loc.column - 1 :].startswith("comedian")
    loc = loaded.where(("training", "marker", "epochs"))
    assert text[loc.line - 1][loc.column - 1 :].startswith("20")


def test_extends_with_changes_equals_overrides(tmp_path: Path) -> None:
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {DEMO}\neval:\n  sampler: {{temperature: 0.7}}\nseeds: [1, 2]\n")
    via_extends = compile_file(child)
    via_set = compile_file(DEMO, ["eval.sampler.temperature=0.7", "seeds=[1, 2]"])
    assert _hashes(via_extends) == _hashes(via_set)
    assert via_extends.name == "demo"  # the name comes from the extended spec
    assert via_extends.spec["eval"]["sampler"]["top_p"] == 1.0  # merged, not replaced


def test_override_value_types() -> None:
    s = load_spec(
        DEMO,
        [
            "eval.backend=vllm",
            "eval.completions=7",
            "arms.B.phases.1.overrides.epochs=4",
            "model.tiny.initializer_range=0.1",
            "eval.sampler.seed=5",
        ],
    ).spec
    assert s.eval.backend == "vllm" and s.eval.completions == 7 and s.eval.sampler.seed == 5
    assert s.arms["B"].phases[1].overrides is not None and s.arms["B"].phases[1].overrides.epochs == 4
    assert s.model.tiny is not None and s.model.tiny.initializer_range == 0.1


def test_banks_from_files_equal_inline(tmp_path: Path) -> None:
    data = yaml.safe_load(DEMO.read_text())
    (tmp_path / "personas.yaml").write_text(yaml.safe_dump(data["personas"]))
    (tmp_path / "eval.txt").write_text("# eval questions, one a line\n" + "\n".join(data["questions"]["eval"]) + "\n")
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(data["questions"]["data"]))
    data["personas"] = "personas.yaml"
    data["questions"] = {"eval": "eval.txt", "data": "data.yaml"}
    spec = tmp_path / "filed.yaml"
    spec.write_text(yaml.safe_dump(json.loads(json.dumps(data)), sort_keys=False))
    assert _hashes(compile_file(spec)) == _hashes(compile_file(DEMO))
    # Errors inside a bank file point into that file.
    (tmp_path / "personas.yaml").write_text("assistant: x\nvillain: ''\n")
    try:
        load_spec(spec)
    except Exception as e:  # noqa: BLE001 - the type is asserted below
        assert type(e).__name__ == "SpecError"
        assert "personas.yaml:2:10: personas.villain: empty" in str(e)
    else:
        raise AssertionError("an empty persona prompt must be an error")


def test_spec_path_relative_model(tmp_path: Path, monkeypatch) -> None:
    from cpx.models import build_tiny

    monkeypatch.setenv("CPX_CACHE_DIR", str(tmp_path / "cache"))
    build_tiny({"corpus": ["a b c"]}, tmp_path / "models" / "m")
    shutil.copy(DEMO, tmp_path / "demo.yaml")
    spec = tmp_path / "local.yaml"
    spec.write_text("extends: demo.yaml\nmodel: {tiny: null, path: models/m}\n")
    base = compile_file(spec).stages[0].params["model"]["base"]
    assert base["kind"] == "path" and base["id"] == str((tmp_path / "models" / "m").resolve())


def test_json_schema_accepts_the_specs_and_is_committed() -> None:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    for path in (CP, DEMO):
        data = json.loads(json.dumps(yaml.safe_load(path.read_text())))
        jsonschema.validate(data, schema)
    bad = {**json.loads(json.dumps(yaml.safe_load(DEMO.read_text()))), "evals": {}}
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(bad))
    assert any("evals" in e.message for e in errors)
    committed = json.loads((SPECS / "spec.schema.json").read_text())
    assert committed == schema, "regenerate: cpx schema -o specs/spec.schema.json"


def test_analysis_and_figure_names_match_what_the_stages_implement() -> None:
    from cpx.analysis._run import ALIASES, ANALYSES
    from cpx.report._build import FIGURE_ALIASES, FIGURES
    from cpx.spec import _schema

    assert set(_schema.ANALYSES) == set(ANALYSES) | set(ALIASES)
    assert set(_schema.FIGURES) == set(FIGURES) | set(FIGURE_ALIASES)
