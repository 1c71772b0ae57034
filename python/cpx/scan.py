"""Marker scanning: count marker strings in text columns at memory speed (Rust core).

Texts arrive as anything with the Arrow PyCapsule interface (pyarrow Array/ChunkedArray,
polars Series, arro3), read without copying, or as a Python sequence / numpy array of str.
String, large_string and string_view layouts, chunked and sliced arrays all work.

Matching semantics, with Python as the reference: the count of `marker` in `text` is
`text.count(marker)` (non-overlapping occurrences, left to right); case-insensitively it is
`text.lower().count(marker.lower())`, Unicode's full lowercase mapping (so "İ" lowers to
"i̇", the Kelvin sign to "k", a final "Σ" to "ς"). The Unicode tables are Rust's, which may
be newer than those of the running Python for characters added recently. Null texts give
null counts.

`case_insensitive` has no default: cpx's one default is the spec's `match.case_insensitive`
(true), which the stages pass on from their `match` param.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cpx import _core
from cpx.errors import InputError, InputTypeError, _check_build

_check_build(_core)

__all__ = ["contains_any", "count_markers", "hit_rates", "marker_rates"]


def _texts(texts: Any) -> Any:
    if hasattr(texts, "__arrow_c_array__") or hasattr(texts, "__arrow_c_stream__"):
        return texts
    if isinstance(texts, (str, bytes)):
        raise InputTypeError("texts must be a sequence of strings or an Arrow string array, not a single string")
    try:
        return pa.array(texts if hasattr(texts, "__array__") else list(texts))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as e:
        raise InputTypeError(f"texts must be strings: {e}") from None


def _markers(markers: Any) -> list[str]:
    if isinstance(markers, str):
        raise InputTypeError(f"markers must be a list of strings, not a single string (did you mean [{markers!r}]?)")
    out = list(markers)
    for i, m in enumerate(out):
        if not isinstance(m, str):
            raise InputTypeError(f"markers[{i}] must be a str, got {type(m).__name__}")
    if len(set(out)) != len(out):
        dup = next(m for m in out if out.count(m) > 1)
        raise InputError(f"marker {dup!r} is given more than once")
    return out


def _unview(t: pa.Table, columns: Sequence[str]) -> pa.Table:
    """`t` with the view-typed `columns` (polars exports string_view) cast to large types,
    which pyarrow can group and sort."""
    for c in columns:
        typ = t.schema.field(c).type
        if typ == pa.string_view():
            t = t.set_column(t.schema.get_field_index(c), c, pc.cast(t.column(c), pa.large_string()))
        elif typ == pa.binary_view():
            t = t.set_column(t.schema.get_field_index(c), c, pc.cast(t.column(c), pa.large_binary()))
    return t


def count_markers(texts: Any, markers: Sequence[str], *, case_insensitive: bool) -> pa.Table:
    """Counts each marker in each text.

    Returns a table with one UInt32 column per marker, named by the marker, holding the number
    of non-overlapping occurrences in each row (null where the text is null). An empty marker
    or an empty list of markers raises `cpx.errors.InputError` (a `ValueError`); a non-string
    column raises `cpx.errors.InputTypeError`. All markers are counted in one pass over the
    text, in parallel, with the GIL released.
    """
    names = _markers(markers)
    cols = _core.count_markers(_texts(texts), names, case_insensitive)
    return pa.Table.from_arrays([pa.array(c) for c in cols], names=names)


def contains_any(texts: Any, markers: Sequence[str], *, case_insensitive: bool) -> pa.BooleanArray:
    """Whether each text contains at least one of the markers (null where the text is null)."""
    names = _markers(markers)
    return pa.array(_core.contains_any(_texts(texts), names, case_insensitive))


def hit_rates(table: Any, by: Sequence[str], *, hit: str = "hit") -> pa.Table:
    """`n` (rows with a non-null `hit`), `hits` and `rate = hits / n` per group of equal `by`
    values, the groups in the order of their first row: how cpx turns marker hits into rates
    (the scan stage's leakage table, the training screen).

    `table` is a pyarrow Table or anything with `__arrow_c_stream__`; `hit` is a boolean column.
    """
    t = table if isinstance(table, pa.Table) else pa.table(table)
    by = list(by)
    missing = [c for c in [hit, *by] if c not in t.column_names]
    if missing:
        raise InputError(f"column(s) {missing} not in the table (columns: {t.column_names})")
    if not pa.types.is_boolean(t.schema.field(hit).type):
        raise InputTypeError(f"column {hit!r} must be boolean, got {t.schema.field(hit).type}")
    t = _unview(t, by)
    work = {c: t.column(c) for c in by}
    work["_hit"] = pc.cast(t.column(hit), pa.int64())
    work["_row"] = pa.array(range(t.num_rows), pa.int64())
    g = (
        pa.table(work)
        .group_by(by, use_threads=False)
        .aggregate([("_hit", "count"), ("_hit", "sum"), ("_row", "min")])
        .sort_by("_row_min")
    )
    n = pc.cast(g["_hit_count"], pa.int64())
    hits = pc.cast(pc.fill_null(g["_hit_sum"], 0), pa.int64())
    rate = pc.if_else(pc.equal(n, 0), None, pc.divide(pc.cast(hits, pa.float64()), pc.cast(n, pa.float64())))
    return pa.table({**{c: g[c] for c in by}, "n": n, "hits": hits, "rate": rate})


def marker_rates(
    table: Any,
    markers: Sequence[str],
    *,
    text: str = "text",
    by: Sequence[str] = (),
    case_insensitive: bool,
) -> pa.Table:
    """Counts and rates of marker hits per group of rows.

    `table` is a pyarrow Table or anything with `__arrow_c_stream__` (a polars DataFrame).
    For each group of equal `by` values (sorted by them), the result has `n` (rows whose text
    is not null), `hits` (rows containing any marker), `rate` (`hits / n`), and for each marker
    `<marker>_hits` (rows containing it), `<marker>_rate` and `<marker>_count` (occurrences).
    With `by` empty there is one row for the whole table.
    """
    names = _markers(markers)
    t = table if isinstance(table, pa.Table) else pa.table(table)
    by = list(by)
    missing = [c for c in [text, *by] if c not in t.column_names]
    if missing:
        raise InputError(f"column(s) {missing} not in the table (columns: {t.column_names})")
    t = _unview(t, by)
    counts = count_markers(t.column(text), names, case_insensitive=case_insensitive)
    total = counts.column(0)
    for i in range(1, len(names)):
        total = pc.add(total, counts.column(i))
    work = {c: t.column(c) for c in by}
    work["_any"] = pc.cast(pc.greater(total, 0), pa.int64())
    for i in range(len(names)):
        col = counts.column(i)
        work[f"_hit{i}"] = pc.cast(pc.greater(col, 0), pa.int64())
        work[f"_cnt{i}"] = pc.cast(col, pa.int64())
    w = pa.table(work)
    aggs: list[tuple[str, str]] = [("_any", "count"), ("_any", "sum")]
    for i in range(len(names)):
        aggs += [(f"_hit{i}", "sum"), (f"_cnt{i}", "sum")]
    if by:
        g = w.group_by(by, use_threads=False).aggregate(aggs).sort_by([(c, "ascending") for c in by])
    else:
        g = pa.table({f"{c}_{a}": [pc.sum(w[c]).as_py() if a == "sum" else pc.count(w[c]).as_py()] for c, a in aggs})
    n = pc.cast(g["_any_count"], pa.int64())
    out: dict[str, Any] = {c: g[c] for c in by}

    def rate(hits: Any) -> Any:
        return pc.if_else(pc.equal(n, 0), None, pc.divide(pc.cast(hits, pa.float64()), pc.cast(n, pa.float64())))

    def zero_null(a: Any) -> Any:
        return pc.cast(pc.fill_null(a, 0), pa.int64())

    out["n"] = n
    out["hits"] = zero_null(g["_any_sum"])
    out["rate"] = rate(out["hits"])
    for i, m in enumerate(names):
        out[f"{m}_hits"] = zero_null(g[f"_hit{i}_sum"])
        out[f"{m}_rate"] = rate(out[f"{m}_hits"])
        out[f"{m}_count"] = zero_null(g[f"_cnt{i}_sum"])
    return pa.table(out)
