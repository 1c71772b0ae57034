"""Reading stage outputs into tables: the files of a set of stage folders, with each row
labelled by the stage that wrote it."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl

from cpx.analysis import LABELS

# Files that stages write and the analyses read, by table name.
STAGE_FILES = {
    "marker_hits": "marker_hits.parquet",
    "leakage": "leakage.parquet",
    "cosines": "cosines.parquet",
    "screen": "screen.parquet",
    "completions": "completions.parquet",
    "metrics": "metrics.parquet",
    "stats": "stats.parquet",
}


def _stage_labels(folder: Path, labels: dict[str, Any] | None) -> dict[str, Any]:
    if labels is not None:
        return labels
    try:
        return dict(json.loads((folder / "manifest.json").read_text()).get("labels") or {})
    except (OSError, ValueError):
        return {}


def label_rows(df: pl.DataFrame, labels: dict[str, Any]) -> pl.DataFrame:
    """Add the stage's labels as columns where the table lacks them (`alpha` only where the
    stage has one: a steer arm's eval point)."""
    want = [*LABELS, *(["alpha"] if labels.get("alpha") is not None else [])]
    add = [pl.lit(labels.get(c)).alias(c) for c in want if c not in df.columns]
    return df.with_columns(add) if add else df


def read_folders(
    folders: Iterable[tuple[Path, dict[str, Any] | None]], names: Iterable[str] = tuple(STAGE_FILES)
) -> dict[str, pl.DataFrame]:
    """Concatenate each named table over the folders that have it. `folders` pairs a stage
    folder with its labels (None: read them from the folder's manifest.json)."""
    parts: dict[str, list[pl.DataFrame]] = {}
    for folder, labels in folders:
        folder = Path(folder)
        for name in names:
            path = folder / STAGE_FILES[name]
            if path.is_file():
                df = label_rows(pl.read_parquet(path), _stage_labels(folder, labels))
                parts.setdefault(name, []).append(df)
    return {n: pl.concat(p, how="diagonal_relaxed") for n, p in parts.items()}
