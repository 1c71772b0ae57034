"""Marker matching for the stages, through `cpx.scan` (the Rust scanner): one definition of
"contains the marker" for generation filtering, scanning and analysis."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _case_insensitive(match: dict[str, Any] | None) -> bool:
    return bool((match or {}).get("case_insensitive", False))


def _texts(texts: Sequence[str]):
    import pyarrow as pa

    return pa.array(list(texts), type=pa.large_string())


def marker_counts(texts: Sequence[str], markers: Sequence[str], match: dict[str, Any] | None):
    """`int64 array [len(texts), len(markers)]`: non-overlapping occurrences of each marker."""
    import numpy as np

    from cpx.scan import count_markers

    if not texts:
        return np.zeros((0, len(markers)), dtype=np.int64)
    table = count_markers(_texts(texts), list(markers), case_insensitive=_case_insensitive(match))
    cols = [table.column(j).to_numpy(zero_copy_only=False).astype(np.int64) for j in range(table.num_columns)]
    return np.stack(cols, axis=1)


def contains_any(texts: Sequence[str], markers: Sequence[str], match: dict[str, Any] | None) -> list[bool]:
    """Whether each text contains any of the markers."""
    from cpx.scan import contains_any as _contains_any

    if not texts:
        return []
    return _contains_any(_texts(texts), list(markers), case_insensitive=_case_insensitive(match)).to_pylist()
