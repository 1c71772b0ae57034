"""A fresh list of mistakes a tired researcher makes, each with the message cpx must give.

Specs extend tests/data/demo_small.yaml with one mistake each (YAML 1.1 booleans, values no
machine can run, a missing colon, typos, wrong types); overrides are `-s` arguments, blamed on
themselves, never on a position in the spec file. (Signals: tests/cli/test_rough_edges.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cpx.plan._compile import compile_spec
from cpx.spec import SpecError, load_spec

BASE = Path(__file__).resolve().parents[1] / "data" / "demo_small.yaml"

# (name, what follows `extends:`, line, column, the message after "file:line:col: ")
SPECS = [
    (
        "bool_on",
        "match: {case_insensitive: on}\n",
        2,
        27,
        "match.case_insensitive: wrong type; expected true or false; found string 'on'",
    ),
    (
        "bool_off",
        "generation:\n  drop_marked: off\n",
        3,
        16,
        "generation.drop_marked: wrong type; expected true or false; found string 'off'",
    ),
    (
        "bool_no_baseline",
        "eval:\n  baseline: No\n",
        3,
        13,
        "eval.baseline: wrong type; expected true or false; found string 'No'",
    ),
    (
        "completions_huge",
        "eval:\n  completions: 2000000\n",
        3,
        16,
        "eval.completions: out of range; expected a number <= 1000000; found integer 2000000",
    ),
    (
        "max_tokens_huge",
        "eval:\n  sampler: {max_tokens: 5000000}\n",
        3,
        25,
        "eval.sampler.max_tokens: out of range; expected a number <= 1048576; found integer 5000000",
    ),
    (
        "hidden_size_huge",
        "model:\n  tiny: {hidden_size: 100000}\n",
        3,
        23,
        "model.tiny.hidden_size: out of range; expected a number <= 65536; found integer 100000",
    ),
    (
        "lora_rank_huge",
        "training:\n  defaults:\n    lora: {r: 70000}\n",
        4,
        15,
        "training.defaults.lora.r: out of range; expected a number <= 65536; found integer 70000",
    ),
    (
        "resamples_huge",
        "eval:\n  intervals: {n_resamples: 200000000}\n",
        3,
        28,
        "eval.intervals.n_resamples: out of range; expected a number <= 100000000; found integer 200000000",
    ),
    (
        "epochs_huge",
        "training:\n  convergence: {epochs: 1.0e+6}\n",
        3,
        25,
        "training.convergence.epochs: out of range; expected a number <= 100000.0; found number 1000000.0",
    ),
    (
        "examples_huge",
        "datasets:\n  convergence: {recipe: convergence, examples: 5000000}\n",
        3,
        48,
        "datasets.convergence.examples: out of range; expected a number <= 1000000; found integer 5000000",
    ),
    (
        "last_n_huge",
        "training:\n  marker:\n    loss: {kind: marker, last_n: 2000000}\n",
        4,
        34,
        "training.marker.loss.last_n: out of range; expected a number <= 1000000; found integer 2000000",
    ),
    (
        "colon_top",
        "seeds [42]\n",
        2,
        1,
        "missing ':' after the key 'seeds' (write `seeds: value`, or `seeds:` with its block indented below)",
    ),
    (
        "colon_nested",
        "eval:\n  completions 4\n  backend: hf\n",
        3,
        3,
        "missing ':' after the key 'completions' (write `completions: value`, or `completions:` with its block indented below)",
    ),
    (
        "colon_block",
        "eval\n  completions: 4\n",
        2,
        1,
        "missing ':' after the key 'eval' (write `eval: value`, or `eval:` with its block indented below)",
    ),
    ("seed_negative", "seeds: [42, -1]\n", 2, 13, "seeds[1]: out of range; expected a number >= 0; found integer -1"),
    ("seeds_scalar", "seeds: 42\n", 2, 8, "seeds: wrong type; expected a list; found integer 42"),
    (
        "temperature_quoted",
        'eval:\n  sampler: {temperature: "0.7"}\n',
        3,
        26,
        "eval.sampler.temperature: wrong type; expected a number; found string '0.7'",
    ),
    (
        "source_typo",
        "roles:\n  sources: [villian]\n",
        3,
        13,
        "roles.sources[0]: undefined persona 'villian'; expected one of assistant, villain, librarian, comedian, medical_doctor, french_person (did you mean 'villain'?)",
    ),
    (
        "backend_case",
        "eval:\n  backend: HF\n",
        3,
        12,
        "eval.backend: invalid value; expected one of 'auto', 'hf' or 'vllm'; found string 'HF' (did you mean 'hf'?)",
    ),
    (
        "layers_empty",
        "representation:\n  layers: []\n",
        3,
        11,
        "representation.layers: empty; expected at least 1 item(s); found a list of 0 items",
    ),
    (
        "lr_zero",
        "training:\n  defaults: {lr: 0}\n",
        3,
        18,
        "training.defaults.lr: out of range; expected a number > 0.0; found integer 0",
    ),
    (
        "screen_questions_zero",
        "eval:\n  screen: {questions: 0}\n",
        3,
        23,
        "eval.screen.questions: out of range; expected a number > 0; found integer 0",
    ),
    ("marker_int", "markers:\n  zlt: 42\n", 3, 8, "markers.zlt: wrong type; expected a string; found integer 42"),
    (
        "top_p_above_one",
        "generation:\n  sampler: {top_p: 1.5}\n",
        3,
        20,
        "generation.sampler.top_p: out of range; expected a number <= 1.0; found number 1.5",
    ),
    (
        "completions_fraction",
        "eval:\n  completions: 4.5\n",
        3,
        16,
        "eval.completions: wrong type; expected an integer; found number 4.5",
    ),
    (
        "x_key_underscore",
        "x_lora: {r: 4}\n",
        2,
        1,
        "x_lora: unknown key 'x_lora'; expected one of extends, name, description, seeds, model, personas, roles, questions, markers, match, generation, datasets, training, arms, eval, representation, analyses, report, power, tracking",
    ),
    (
        "negatives_negative",
        "datasets:\n  marker:\n    negatives: {personas: 1, examples_per_persona: -3}\n",
        4,
        52,
        "datasets.marker.negatives.examples_per_persona: out of range; expected a number >= 0; found integer -3",
    ),
    (
        "temperature_nan",
        "eval:\n  sampler: {temperature: .nan}\n",
        3,
        26,
        "eval.sampler.temperature: invalid value; expected a finite number; found number nan",
    ),
    (
        "merge_typo",
        "arms:\n  C:\n    phases:\n      - {name: marker, merge: A.markr}\n      - {name: generic, data: generic, train: convergence}\n",
        5,
        31,
        "arms.C.phases[0].merge: undefined phase 'A.markr'; expected one of A.marker, A.convergence, B.convergence, B.marker, C.marker, C.generic, marker, generic (did you mean 'A.marker'?)",
    ),
    (
        "dtype_typo",
        "model:\n  dtype: float23\n",
        3,
        10,
        "model.dtype: invalid value; expected one of 'auto', 'bfloat16', 'float16' or 'float32'; found string 'float23' (did you mean 'float32'?)",
    ),
]

# (the -s argument, the message after "<command line> -s ARG: ")
OVERRIDES = [
    ("eval.completions=lots", "eval.completions: wrong type; expected an integer; found string 'lots'"),
    ("seeds.5=1", "seeds: no item '5' in this list; expected an index from 0 to 0"),
    ("=3", "bad -s override; expected KEY=VALUE, e.g. eval.sampler.temperature=0.7"),
    ("eval.sampler.temperature", "bad -s override; expected KEY=VALUE, e.g. eval.sampler.temperature=0.7"),
    ("extends=x.yaml", "extends: extends cannot be set with -s (write it in the spec)"),
    ("match.case_insensitive=off", "match.case_insensitive: wrong type; expected true or false; found string 'off'"),
    ("eval.completions=1e7", "eval.completions: wrong type; expected an integer; found number 10000000.0"),
    ("name.first=x", "name: wrong type; expected a string; found a mapping with keys first"),
    (
        "eval.sampler..top_p=1",
        "empty key in 'eval.sampler..top_p'; expected dot-separated keys, e.g. eval.sampler.temperature",
    ),
    (
        "training.defaults.lora.r=100000",
        "training.defaults.lora.r: out of range; expected a number <= 65536; found integer 100000",
    ),
    (
        "eval.backend=vllm2",
        "eval.backend: invalid value; expected one of 'auto', 'hf' or 'vllm'; found string 'vllm2' (did you mean 'vllm'?)",
    ),
    ("roles.sources=villain", "roles.sources: wrong type; expected a list; found string 'villain'"),
]


def test_the_list_is_long_enough() -> None:
    assert len(SPECS) + len(OVERRIDES) >= 30


@pytest.mark.parametrize(("name", "text", "line", "col", "message"), SPECS, ids=[s[0] for s in SPECS])
def test_bad_spec(tmp_path: Path, name: str, text: str, line: int, col: int, message: str) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"extends: {BASE}\n{text}")
    with pytest.raises(SpecError) as info:
        compile_spec(load_spec(path))
    assert [str(i) for i in info.value.issues] == [f"{path}:{line}:{col}: {message}"]


@pytest.mark.parametrize(("override", "message"), OVERRIDES, ids=[o[0] for o in OVERRIDES])
def test_bad_override_is_blamed_on_itself(override: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        compile_spec(load_spec(BASE, [override]))
    assert [str(i) for i in info.value.issues] == [f"<command line> -s {override}: {message}"]


def test_the_issues_own_cases(tmp_path: Path) -> None:
    """`case_insensitive: yes`, a 26-digit completions count, a colon missing above an indented
    block (PyYAML: "mapping values are not allowed" a line late), `-s eval..sampler=1`."""
    path = tmp_path / "s.yaml"
    path.write_text(
        f"extends: {BASE}\nmatch: {{case_insensitive: yes}}\neval:\n  completions: 99999999999999999999999999\n"
    )
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert [str(i) for i in info.value.issues] == [
        f"{path}:2:27: match.case_insensitive: wrong type; expected true or false; found string 'yes'",
        f"{path}:4:16: eval.completions: out of range; expected a number <= 1000000; "
        "found integer 99999999999999999999999999",
    ]
    path.write_text(f"extends: {BASE}\neval:\n  sampler\n    temperature: 0.5\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value.issues[0]).startswith(f"{path}:3:3: missing ':' after the key 'sampler'")
    with pytest.raises(SpecError) as info:
        load_spec(BASE, ["eval..sampler=1"])
    assert str(info.value.issues[0]).startswith("<command line> -s eval..sampler=1: empty key in 'eval..sampler'")
