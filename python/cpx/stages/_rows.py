"""Helpers shared by the sampling, representation and scanning stages: label columns and
Parquet output."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cpx.plan import StageParamError


def label_type(key: str, value: Any):
    import pyarrow as pa

    known = {
        "arm": pa.string(),
        "source": pa.string(),
        "phase": pa.string(),
        "recipe": pa.string(),
        "seed": pa.int64(),
        "checkpoint": pa.float64(),
        "alpha": pa.float64(),
        "purpose": pa.string(),
        "seeds": pa.list_(pa.int64()),
    }
    if key in known:
        return known[key]
    return pa.scalar(value).type if value is not None else pa.string()


def labelled_table(labels: dict[str, Any], columns: dict[str, Any], schema: dict[str, Any]):
    """A table of the stage's labels (one constant column each, first) and `columns`
    (`schema` gives each data column's pyarrow type)."""
    import pyarrow as pa

    clash = sorted(set(labels) & set(columns))
    if clash:
        raise StageParamError(f"label(s) {clash} have the name of a data column of this stage's output")
    n = len(next(iter(columns.values()))) if columns else 0
    arrays, fields = [], []
    for k, v in labels.items():
        t = label_type(k, v)
        arrays.append(pa.array([v] * n, type=t))
        fields.append(pa.field(k, t))
    for k, v in columns.items():
        arrays.append(v.cast(schema[k]) if isinstance(v, pa.Array) else pa.array(v, type=schema[k]))
        fields.append(pa.field(k, schema[k]))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def write_parquet(table, path: str | os.PathLike[str]) -> Path:
    """Write a table to `path` through a temporary file and a rename."""
    import pyarrow.parquet as pq

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


# The columns a completion table may have: (pyarrow type name, value of a completion `c` of
# persona `per` to question `q`).
_COMPLETION_COLUMNS: dict[str, tuple[str, Any]] = {
    "persona": ("string", lambda per, q, c: per.name),
    "role": ("string", lambda per, q, c: per.role),
    "question_id": ("string", lambda per, q, c: q.id),
    "question": ("string", lambda per, q, c: q.text),
    "sample_index": ("int64", lambda per, q, c: c.sample_index),
    "text": ("string", lambda per, q, c: c.text),
    "n_tokens": ("int64", lambda per, q, c: c.n_tokens),
    "finish_reason": ("string", lambda per, q, c: c.finish_reason),
}


def completion_table(labels: dict[str, Any], comps, personas, questions, columns: list[str], keep=None):
    """The labelled table of completions of requests made persona-major (request i is persona
    i // len(questions), question i % len(questions)), with `columns` in that order (names of
    _COMPLETION_COLUMNS); `keep`, one bool per completion, leaves out the others."""
    import pyarrow as pa

    nq = len(questions)
    cols: dict[str, list[Any]] = {k: [] for k in columns}
    for i, c in enumerate(comps):
        if keep is not None and not keep[i]:
            continue
        per, q = personas[c.request_index // nq], questions[c.request_index % nq]
        for k in columns:
            cols[k].append(_COMPLETION_COLUMNS[k][1](per, q, c))
    schema = {k: getattr(pa, _COMPLETION_COLUMNS[k][0])() for k in columns}
    return labelled_table(labels, cols, schema)
