"""Helpers shared by the sampling, representation and scanning stages: parameter checks, label
columns and Parquet output."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cpx.errors import CpxError

ROLES = ("source", "assistant", "bystander")


class StageParamError(CpxError, ValueError):
    """A stage parameter that cannot be used, with the stage and the key path."""


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


def check_personas(stage_id: str, personas: Any, *, eval_roles: bool) -> list[dict[str, Any]]:
    """Personas (`name`, `prompt`; with `eval_roles` also `role` and `n`), names unique."""
    where = f"stage {stage_id}: params.personas"
    if not isinstance(personas, list) or not personas:
        raise StageParamError(f"{where} must be a non-empty list, got {personas!r}")
    seen: set[str] = set()
    for i, p in enumerate(personas):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise StageParamError(f"{where}[{i}] needs a string 'name', got {p!r}")
        if p["name"] in seen:
            raise StageParamError(f"{where}[{i}]: persona {p['name']!r} appears twice")
        seen.add(p["name"])
        if p.get("prompt") is not None and not isinstance(p["prompt"], str):
            raise StageParamError(f"{where}[{i}] ({p['name']}): 'prompt' must be a string or null")
        if eval_roles:
            if p.get("role") not in ROLES:
                raise StageParamError(
                    f"{where}[{i}] ({p['name']}): role must be one of {', '.join(ROLES)}, got {p.get('role')!r}"
                )
            n = p.get("n")
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise StageParamError(f"{where}[{i}] ({p['name']}): n must be an integer >= 0, got {n!r}")
    return personas


def check_questions(stage_id: str, questions: Any) -> list[dict[str, Any]]:
    """Questions (`id`, `text`), ids unique."""
    where = f"stage {stage_id}: params.questions"
    if not isinstance(questions, list) or not questions:
        raise StageParamError(f"{where} must be a non-empty list, got {questions!r}")
    seen: set[str] = set()
    for i, q in enumerate(questions):
        if not isinstance(q, dict) or not isinstance(q.get("id"), str) or not isinstance(q.get("text"), str):
            raise StageParamError(f"{where}[{i}] needs a string 'id' and 'text', got {q!r}")
        if q["id"] in seen:
            raise StageParamError(f"{where}[{i}]: question id {q['id']!r} appears twice")
        seen.add(q["id"])
    return questions


def sampler_of(stage_id: str, sampler: Any) -> dict[str, Any]:
    """The engine's sampler (`temperature`, `top_p`, `max_tokens`, `seed`) from a stage's params."""
    from cpx.stages._sampling import SamplerError, check_sampler

    if not isinstance(sampler, dict):
        raise StageParamError(f"stage {stage_id}: params.sampler must be a mapping, got {sampler!r}")
    try:
        return check_sampler({k: sampler[k] for k in ("temperature", "top_p", "max_tokens", "seed") if k in sampler})
    except SamplerError as e:
        raise StageParamError(f"stage {stage_id}: params.{e}") from None
