"""Multiple comparisons (analysis 7): Holm and Benjamini-Hochberg within each family."""

from __future__ import annotations

import polars as pl

from cpx.analysis import _stats


def family_of(analysis: str, arm: str | None, p_method: str) -> str:
    """A family is one analysis in one arm with one kind of p-value: e.g. the exact p-values
    of every source and layer of the within-source trajectories of arm B."""
    return f"{analysis}/{arm if arm is not None else '-'}/{p_method}"


def adjust(stats: pl.DataFrame) -> pl.DataFrame:
    """Fill `family`, `p_adjusted` (Holm) and `p_adjusted_bh` (Benjamini-Hochberg) for every
    row with a p-value; rows without one keep nulls. Raw p-values are left as they are."""
    fam = [
        family_of(a, arm, m) if p is not None and m is not None else None
        for a, arm, m, p in zip(stats["analysis"], stats["arm"], stats["p_method"], stats["p_value"])
    ]
    holm: list[float | None] = [None] * stats.height
    bh: list[float | None] = [None] * stats.height
    groups: dict[str, list[int]] = {}
    for i, f in enumerate(fam):
        if f is not None:
            groups.setdefault(f, []).append(i)
    for idx in groups.values():
        ps = [stats["p_value"][i] for i in idx]
        for i, h, b in zip(idx, _stats.p_adjust(ps, "holm"), _stats.p_adjust(ps, "bh")):
            holm[i], bh[i] = h, b
    return stats.with_columns(
        pl.Series("family", fam, dtype=pl.String),
        pl.Series("p_adjusted", holm, dtype=pl.Float64),
        pl.Series("p_adjusted_bh", bh, dtype=pl.Float64),
    )
