"""The Arrow boundary of `cpx.scan`: layouts, nulls, offsets, chunks, producers, errors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from cpx import scan
from cpx.errors import CpxError, InputError, InputTypeError

TEXTS = ["a [ZLT] b [zlt]", None, "nothing", "[Zlt][ZLT]", "", "İ [zLt]"]
MARKERS = ["[ZLT]", "b"]


def reference(texts: Sequence[str | None], markers: list[str], ci: bool = True) -> dict[str, list[int | None]]:
    out: dict[str, list[int | None]] = {}
    for m in markers:
        out[m] = [None if t is None else (t.lower().count(m.lower()) if ci else t.count(m)) for t in texts]
    return out


@pytest.mark.parametrize("typ", [pa.string(), pa.large_string(), pa.string_view()])
def test_layouts_and_nulls(typ: pa.DataType) -> None:
    arr = pa.array(TEXTS, type=typ)
    got = scan.count_markers(arr, MARKERS, case_insensitive=True).to_pydict()
    assert got == reference(TEXTS, MARKERS)
    assert scan.count_markers(arr, MARKERS, case_insensitive=True).schema.field("[ZLT]").type == pa.uint32()


@pytest.mark.parametrize("typ", [pa.string(), pa.large_string(), pa.string_view()])
def test_sliced_arrays_keep_offsets(typ: pa.DataType) -> None:
    arr = pa.array(TEXTS * 3, type=typ).slice(4, 9)
    expect = (TEXTS * 3)[4:13]
    assert scan.count_markers(arr, MARKERS, case_insensitive=True).to_pydict() == reference(expect, MARKERS)
    assert scan.contains_any(arr, ["[zlt]"], case_insensitive=True).to_pylist() == [
        None if t is None else "[zlt]" in t.lower() for t in expect
    ]


def test_chunked_and_sliced_chunked() -> None:
    chunked = pa.chunked_array([pa.array(TEXTS[:2]), pa.array(TEXTS[2:]).slice(1), pa.array([], pa.string())])
    expect = TEXTS[:2] + TEXTS[3:]
    assert scan.count_markers(chunked, MARKERS, case_insensitive=True).to_pydict() == reference(expect, MARKERS)


def test_polars_and_python_inputs() -> None:
    expect = reference(TEXTS, MARKERS)
    assert scan.count_markers(pl.Series(TEXTS), MARKERS, case_insensitive=True).to_pydict() == expect
    assert scan.count_markers(TEXTS, MARKERS, case_insensitive=True).to_pydict() == expect
    plain = [t or "" for t in TEXTS]
    assert scan.count_markers(np.array(plain), MARKERS, case_insensitive=True).to_pydict() == reference(plain, MARKERS)
    # a large polars frame column arrives as several chunks
    big = pl.concat([pl.DataFrame({"t": TEXTS}), pl.DataFrame({"t": TEXTS})], rechunk=False)["t"]
    assert scan.count_markers(big, MARKERS, case_insensitive=True).to_pydict() == reference(TEXTS * 2, MARKERS)


def test_case_sensitive() -> None:
    got = scan.count_markers(TEXTS, MARKERS, case_insensitive=False).to_pydict()
    assert got == reference(TEXTS, MARKERS, ci=False)


def test_many_rows_parallel_blocks() -> None:
    rng = np.random.default_rng(0)
    words = np.array(["alpha", "[ZLT]", "beta", "[zlt]", "gamma delta"])
    texts = [" ".join(rng.choice(words, size=rng.integers(0, 30))) for _ in range(10_000)]
    got = scan.count_markers(pa.array(texts, pa.large_string()), ["[zlt]"], case_insensitive=True).column(0).to_pylist()
    assert got == [t.lower().count("[zlt]") for t in texts]


def test_errors_are_cpx_classes() -> None:
    with pytest.raises(InputError, match="empty"):
        scan.count_markers(TEXTS, [], case_insensitive=True)
    with pytest.raises(ValueError, match="empty string"):
        scan.count_markers(TEXTS, ["a", ""], case_insensitive=True)
    with pytest.raises(InputError, match="more than once"):
        scan.count_markers(TEXTS, ["a", "a"], case_insensitive=True)
    with pytest.raises(InputTypeError, match="string array"):
        scan.count_markers(pa.array([1, 2]), ["a"], case_insensitive=True)
    with pytest.raises(InputTypeError, match="single string"):
        scan.count_markers(TEXTS, "[ZLT]", case_insensitive=True)
    with pytest.raises(CpxError):
        scan.contains_any(object(), ["a"], case_insensitive=True)


def test_marker_rates_against_python() -> None:
    rng = np.random.default_rng(1)
    n = 300
    texts = [
        None if rng.random() < 0.05 else ("x [ZLT]" if rng.random() < 0.3 else "y") * int(rng.integers(1, 3))
        for _ in range(n)
    ]
    persona = rng.choice(["villain", "comedian"], size=n).tolist()
    arm = rng.choice(["A", "B"], size=n).tolist()
    table = pa.table({"text": texts, "persona": persona, "arm": arm})
    got = scan.marker_rates(table, ["[zlt]"], by=["arm", "persona"], case_insensitive=True).to_pylist()
    keys = sorted(set(zip(arm, persona)))
    assert [(r["arm"], r["persona"]) for r in got] == keys
    for row in got:
        rows = [t for t, a, p in zip(texts, arm, persona) if (a, p) == (row["arm"], row["persona"]) and t is not None]
        hits = sum("[zlt]" in t.lower() for t in rows)
        assert row["n"] == len(rows)
        assert row["hits"] == hits == row["[zlt]_hits"]
        assert row["rate"] == pytest.approx(hits / len(rows), abs=1e-15)
        assert row["[zlt]_count"] == sum(t.lower().count("[zlt]") for t in rows)
    # polars frames work too, and no `by` gives one overall row
    overall = scan.marker_rates(pl.from_arrow(table), ["[zlt]"], case_insensitive=True).to_pylist()
    assert overall[0]["n"] == sum(t is not None for t in texts)
    with pytest.raises(InputError, match="not in the table"):
        scan.marker_rates(table, ["x"], by=["nope"], case_insensitive=True)


def test_hit_rates_against_python() -> None:
    rng = np.random.default_rng(2)
    n = 400
    hit = [None if rng.random() < 0.05 else bool(rng.random() < 0.3) for _ in range(n)]
    persona = rng.choice(["villain", "comedian", "nurse"], size=n).tolist()
    seed = rng.choice([1, 2], size=n).tolist()
    got = scan.hit_rates(pa.table({"persona": persona, "seed": seed, "hit": hit}), ["persona", "seed"]).to_pylist()
    keys = list(dict.fromkeys(zip(persona, seed)))  # first-appearance order
    assert [(r["persona"], r["seed"]) for r in got] == keys
    for row in got:
        mine = [h for h, p, s in zip(hit, persona, seed) if (p, s) == (row["persona"], row["seed"]) and h is not None]
        assert (row["n"], row["hits"]) == (len(mine), sum(mine))
        assert row["rate"] == sum(mine) / len(mine)
    with pytest.raises(InputTypeError, match="must be boolean"):
        scan.hit_rates(pa.table({"p": ["a"], "hit": [1]}), ["p"])
    with pytest.raises(InputError, match="not in the table"):
        scan.hit_rates(pa.table({"hit": [True]}), ["p"])


@pytest.mark.parametrize("typ", [pa.string(), pa.large_string()])
def test_null_slots_with_bytes_are_null(typ: pa.DataType) -> None:
    # a null slot may still span bytes in the values buffer; they must not be counted
    data = b"[zlt] a[ZLT][zlt]b"
    width = np.int32 if typ == pa.string() else np.int64
    offsets = np.array([0, 6, 12, 18], dtype=width)
    validity = pa.array([True, False, True]).buffers()[1]
    arr = pa.Array.from_buffers(typ, 3, [validity, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data)])
    assert scan.count_markers(arr, ["[ZLT]"], case_insensitive=True).column(0).to_pylist() == [1, None, 1]
    assert scan.contains_any(arr, ["[ZLT]"], case_insensitive=True).to_pylist() == [True, None, True]
