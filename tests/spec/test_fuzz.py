"""Property tests: whatever a mutated spec looks like, loading raises SpecError or succeeds."""

from __future__ import annotations

import atexit
import copy
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpx.plan._compile import compile_spec
from cpx.spec import SpecError, load_spec

SPECS = Path(__file__).parents[2] / "specs"
DEMO_TEXT = (SPECS / "demo.yaml").read_text()
DEMO_DATA = yaml.safe_load(DEMO_TEXT)
_TMP = Path(tempfile.mkdtemp(prefix="cpx-fuzz-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
# Relative bank files and extends resolve beside the spec: give the mutants a neighbour.
shutil.copy(SPECS / "demo.yaml", _TMP / "demo.yaml")

_CHARS = st.sampled_from(list(":-[]{},&*!|>'\"#\t\n 0123456789.eaz_?%@`\\") + ["\x00", "é", "  ", "\n  - "])


def _load_or_spec_error(text: str | bytes) -> None:
    path = _TMP / "mutant.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    try:
        compile_spec(load_spec(path))
    except SpecError as e:
        assert e.issues, "a SpecError must carry at least one issue"
        for issue in e.issues:
            assert str(issue.location)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_text_mutations_raise_only_spec_errors(data: st.DataObject) -> None:
    text = DEMO_TEXT
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 30)))
        insert = "".join(data.draw(st.lists(_CHARS, max_size=4)))
        text = text[:i] + insert + text[j:]
    _load_or_spec_error(text)


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True),
    st.text(max_size=6),
    st.sampled_from(["villain", "marker", "A.marker", "base", "[ZLT]", ""]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=5), c, max_size=3)),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


_ALL_PATHS = [p for p in _paths(DEMO_DATA) if p]


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        data = data[p]
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_ALL_PATHS), _VALUES, st.booleans())
def test_value_mutations_raise_only_spec_errors(path: tuple[Any, ...], value: Any, delete: bool) -> None:
    data = copy.deepcopy(DEMO_DATA)
    parent = data
    for p in path[:-1]:
        parent = parent[p]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    try:
        text = yaml.safe_dump(json.loads(json.dumps(data, default=str)), allow_unicode=True)
    except ValueError:  # NaN is not JSON; YAML writes it as .nan
        text = yaml.safe_dump(data, allow_unicode=True)
    _load_or_spec_error(text)


_NUMERIC_PATHS = [p for p in _ALL_PATHS if _get(DEMO_DATA, p).__class__ in (int, float)]
_SPECIAL = st.sampled_from(
    [float("inf"), float("-inf"), float("nan"), -0.0, 1e308, 10**30, -(10**30), True, "1e-3", "0x10", 2**63]
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_NUMERIC_PATHS), _SPECIAL)
def test_special_numbers_raise_only_spec_errors(path: tuple[Any, ...], value: Any) -> None:
    data = copy.deepcopy(DEMO_DATA)
    parent = _get(data, path[:-1])
    parent[path[-1]] = value
    _load_or_spec_error(yaml.safe_dump(data, allow_unicode=True))


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_spec_errors(raw: bytes) -> None:
    _load_or_spec_error(raw)
