"""The corpus of bad specs: each file lists the errors it must produce (`# expect:` lines).

Every expected error must be reported, at its file:line:column, with its message and
did-you-mean hint, and nothing else may be reported (no noise from follow-on errors).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cpx.plan._compile import compile_spec
from cpx.spec import SpecError, load_spec

BAD = Path(__file__).parent / "bad"
CORPUS = sorted(BAD.glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+) \| (?P<frags>.*)$", re.M)


def _expectations(path: Path) -> list[tuple[str, int, int, list[str]]]:
    return [
        (m["file"], int(m["line"]), int(m["col"]), [f.strip() for f in m["frags"].split(" | ")])
        for m in EXPECT.finditer(path.read_text())
    ]


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 40
    assert all(_expectations(p) for p in CORPUS), [p.name for p in CORPUS if not _expectations(p)]


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_bad_spec_reports_every_error_where_it_is(path: Path) -> None:
    with pytest.raises(SpecError) as info:
        compile_spec(load_spec(path))
    issues = info.value.issues
    expected = _expectations(path)
    assert len(issues) == len(expected), str(info.value)
    for file, line, col, frags in expected:
        match = [
            i
            for i in issues
            if Path(i.location.file).name == file and (i.location.line, i.location.column) == (line, col)
        ]
        assert match, f"no error at {file}:{line}:{col} in\n{info.value}"
        text = str(match[0])
        for frag in frags:
            assert frag in text, f"{frag!r} not in {text!r}"
        # The rendered message carries the position, as an editor jump target.
        assert f"{file}:{line}:{col}:" in text


def test_binary_file_is_a_spec_error(tmp_path: Path) -> None:
    p = tmp_path / "binary.yaml"
    p.write_bytes(bytes(range(256)))
    with pytest.raises(SpecError, match="not a text file"):
        load_spec(p)


def test_non_utf8_file_is_a_spec_error(tmp_path: Path) -> None:
    p = tmp_path / "latin1.yaml"
    p.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(p)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(tmp_path)


def test_bad_override_is_reported_with_the_command_line(tmp_path: Path) -> None:
    demo = Path(__file__).parents[2] / "specs" / "demo.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(demo, ["eval.sampler.temprature=0.7", "seeds.9=1", "novalue"])
    text = str(info.value)
    assert "<command line> -s eval.sampler.temprature=0.7" in text
    assert "did you mean 'temperature'?" in text
    assert "no item '9'" in text and "KEY=VALUE" in text


def test_alias_bomb_and_deep_nesting_are_spec_errors(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpecError, match="after expanding aliases"):
        load_spec(bomb)
    deep = tmp_path / "deep.yaml"
    deep.write_text("seeds: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(SpecError):
        load_spec(deep)
