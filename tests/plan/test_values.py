"""Shared values: large persona and question sets and the tiny model's corpus are stored once in plan.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cpx.cli import main
from cpx.plan import PLAN_FORMAT, Plan, PlanError, compile_file

DEMO = Path(__file__).parents[2] / "specs" / "demo.yaml"


def _bank_spec(tmp_path: Path, questions: int) -> Path:
    """The demo with an eval question bank of `questions` generated questions."""
    spec = yaml.safe_load(DEMO.read_text())
    spec["questions"]["eval"] = [
        f"Question {i}: what would you say about topic {i % 997} in the context of subject {i % 31}, and why?"
        for i in range(questions)
    ]
    path = tmp_path / "bank.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False, width=10_000))
    return path


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Plan]:
    """A ~5 MB question bank compiled and written, with the `cpx` command, into a run folder."""
    tmp = tmp_path_factory.mktemp("bank")
    spec = _bank_spec(tmp, 55_000)
    assert spec.stat().st_size > 5_000_000
    assert main(["compile", str(spec), "--out", str(tmp / "run"), "-q"]) == 0
    return spec, tmp / "run" / "plan.json", compile_file(spec)


def test_a_large_question_bank_is_stored_once(bank: tuple[Path, Path, Plan]) -> None:
    spec, plan_json, plan = bank
    users = [s for s in plan.stages if s.params.get("questions") and len(s.params["questions"]) == 55_000]
    assert len(users) > 50  # every sample and represent stage carries the bank
    # The spec once, the bank once, the tiny model's corpus (every text, the bank's too) once.
    text = plan_json.read_text()
    assert text.count('"Question 54321: ') == 3
    assert plan_json.stat().st_size < 4 * spec.stat().st_size
    raw = json.loads(text)
    assert raw["format"] == PLAN_FORMAT == 2
    bank_refs = {s["params"]["questions"]["$value"] for s in raw["stages"] if s["kind"] in ("sample", "represent")}
    assert len(bank_refs) == 1 and bank_refs <= set(raw["values"])


def test_loaded_params_are_the_full_params_and_the_hashes_the_compilers(bank: tuple[Path, Path, Plan]) -> None:
    _, plan_json, plan = bank
    loaded = Plan.load(plan_json)
    assert [(s.id, s.hash) for s in loaded.stages] == [(s.id, s.hash) for s in plan.stages]
    assert all(a.params == b.params for a, b in zip(loaded.stages, plan.stages, strict=True))
    # One object per shared value, not a copy per stage.
    samples = [s for s in loaded.stages if s.kind == "sample"]
    assert all(s.params["questions"] is samples[0].params["questions"] for s in samples)
    # Written again (the executor's snapshot), it is the same file.
    again = loaded.save(plan_json.parent / "again.json")
    assert again.read_text() == plan_json.read_text()


def test_status_and_show_read_the_large_plan(bank: tuple[Path, Path, Plan], capsys: pytest.CaptureFixture[str]) -> None:
    _, plan_json, plan = bank
    assert main(["status", str(plan_json.parent)]) == 0
    assert f"0 done, 0 running, 0 failed, {len(plan.stages)} pending" in capsys.readouterr().out
    assert main(["plan", "show", str(plan_json.parent)]) == 0
    assert f"{len(plan.stages)} stages, 0 done" in capsys.readouterr().out


def test_a_stage_hash_covers_the_shared_values_content(tmp_path: Path) -> None:
    a = compile_file(_bank_spec(tmp_path, 40))
    spec = yaml.safe_load((tmp_path / "bank.yaml").read_text())
    q = spec["questions"]["eval"]
    q[3], q[17] = q[17], q[3]  # the same texts (the tiny model's corpus is unchanged), other questions
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(spec))
    b = compile_file(tmp_path / "other.yaml")
    ia, ib = a.by_id(), b.by_id()
    assert ia["sample/A/villain/s42/ckpt1"].params["model"] == ib["sample/A/villain/s42/ckpt1"].params["model"]
    uses = {sid for sid in ia if ia[sid].params.get("questions") != ib[sid].params.get("questions")}
    uses |= {sid for sid in ia if (ia[sid].params.get("screen") or {}) != (ib[sid].params.get("screen") or {})}
    assert {ia[sid].kind for sid in uses} == {"sample", "represent", "train"}  # train: its marker screen
    changed = {sid for sid in ia if ia[sid].hash != ib[sid].hash}
    assert uses <= changed
    assert not {ia[sid].kind for sid in changed} & {"generate", "dataset"}


def test_a_reference_to_a_missing_value_is_a_clear_error(bank: tuple[Path, Path, Plan], tmp_path: Path) -> None:
    _, plan_json, _ = bank
    raw = json.loads(plan_json.read_text())
    gone = raw["stages"][0]["params"]["personas"]["$value"]
    del raw["values"][gone]
    (tmp_path / "plan.json").write_text(json.dumps(raw))
    with pytest.raises(
        PlanError, match=rf"stage 'generate/s42': refers to value '{gone}', which the plan's values lack"
    ):
        Plan.load(tmp_path)


def test_a_format_1_plan_asks_to_be_compiled_again(bank: tuple[Path, Path, Plan], tmp_path: Path) -> None:
    _, plan_json, _ = bank
    raw = json.loads(plan_json.read_text())
    raw["format"] = 1
    (tmp_path / "plan.json").write_text(json.dumps(raw))
    with pytest.raises(PlanError, match=r"plan format 1, this cpx reads 2; compile the spec again"):
        Plan.load(tmp_path)
