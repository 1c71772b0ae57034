"""Marker matching for the stages, through `cpx.scan` (the Rust scanner): one definition of
"contains the marker" for generation filtering, scanning and the training screen."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cpx.plan import Match


def _texts(texts: Any):
    """Arrow arrays go to the scanner as they are; a Python sequence becomes one."""
    import pyarrow as pa

    if hasattr(texts, "__arrow_c_array__") or hasattr(texts, "__arrow_c_stream__"):
        return texts
    return pa.array(list(texts), type=pa.large_string())


def marker_counts(texts: Any, markers: Sequence[str], match: Match):
    """`int64 array [len(texts), len(markers)]`: non-overlapping occurrences of each marker.

    `texts`: an Arrow string array (read in place) or a sequence of str; `match` the stage's
    `match` param (the spec's `match`)."""
    import numpy as np

    from cpx.scan import count_markers

    if not len(texts):
        return np.zeros((0, len(markers)), dtype=np.int64)
    table = count_markers(_texts(texts), list(markers), case_insensitive=match.case_insensitive)
    cols = [table.column(j).to_numpy(zero_copy_only=False).astype(np.int64) for j in range(table.num_columns)]
    return np.stack(cols, axis=1)


def contains_any(texts: Any, markers: Sequence[str], match: Match) -> list[bool]:
    """Whether each text contains any of the markers (`match` as in `marker_counts`)."""
    from cpx.scan import contains_any as _contains_any

    if not len(texts):
        return []
    return _contains_any(_texts(texts), list(markers), case_insensitive=match.case_insensitive).to_pylist()
