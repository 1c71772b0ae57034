"""`cpx.scan` against Python's `str.count` / `in` on random Unicode text."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from cpx import scan

# ASCII with the marker's own characters, and characters whose lowercase is special: Turkish
# dotted I (lowers to two code points), Kelvin sign (to ASCII k), final sigma, sharp s,
# Cyrillic, CJK, emoji, a combining dot.
ALPHABET = "abikzIKZ[]L T\n" + "İıΣσςßẞКк中😀\u0307\u212aÅå"
texts = st.lists(st.one_of(st.none(), st.text(alphabet=ALPHABET, max_size=60)), max_size=25)
markers = st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=4), min_size=1, max_size=4, unique=True)


def ref_count(t: str, m: str, ci: bool) -> int:
    return t.lower().count(m.lower()) if ci else t.count(m)


@settings(max_examples=150, deadline=None)
@given(texts, markers, st.booleans(), st.sampled_from([pa.string(), pa.large_string(), pa.string_view()]))
def test_counts_match_python(ts: list[str | None], ms: list[str], ci: bool, typ: pa.DataType) -> None:
    got = scan.count_markers(pa.array(ts, type=typ), ms, case_insensitive=ci).to_pydict()
    for m in ms:
        assert got[m] == [None if t is None else ref_count(t, m, ci) for t in ts], m


@settings(max_examples=100, deadline=None)
@given(texts, markers, st.booleans())
def test_contains_any_matches_python_in(ts: list[str | None], ms: list[str], ci: bool) -> None:
    got = scan.contains_any(pa.array(ts, type=pa.large_string()), ms, case_insensitive=ci).to_pylist()
    fold = (lambda s: s.lower()) if ci else (lambda s: s)
    assert got == [None if t is None else any(fold(m) in fold(t) for m in ms) for t in ts]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(alphabet="xyz[ZLT] ", max_size=200), min_size=1, max_size=50), st.integers(0, 10))
def test_ascii_fast_path_with_slices(ts: list[str], offset: int) -> None:
    arr = pa.array(ts).slice(min(offset, len(ts)))
    got = scan.count_markers(arr, ["[zlt]", "z"], case_insensitive=True).to_pydict()
    rows = ts[min(offset, len(ts)) :]
    assert got["[zlt]"] == [t.lower().count("[zlt]") for t in rows]
    assert got["z"] == [t.lower().count("z") for t in rows]
