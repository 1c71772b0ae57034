"""Cosine (or specificity) against assistant leakage: within sources over checkpoints
(analysis 3), between sources at one checkpoint, and pooled with the pseudo-replication
made visible (analysis 4)."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from cpx.analysis import _stats
from cpx.analysis._metrics import mean_over_seeds

MIN_POINTS = 3  # Spearman's rho of fewer points has no null distribution worth the name
Row = dict[str, Any]


def _points(df: pl.DataFrame, x: str, y: str) -> pl.DataFrame:
    return df.filter(pl.col(x).is_not_null() & pl.col(y).is_not_null())


def _skip(base: Row, why: str) -> Row:
    return {**base, "statistic": "spearman_rho", "note": f"skipped: {why}"}


def _degenerate(xs: np.ndarray, ys: np.ndarray) -> str | None:
    if len(xs) < MIN_POINTS:
        return f"{len(xs)} point(s) with both values, {MIN_POINTS} needed"
    if np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return "a variable is constant, rho is undefined"
    return None


def _seed_note(df: pl.DataFrame) -> str | None:
    if "n_seeds" not in df.columns or df.is_empty():
        return None
    n = int(df["n_seeds"].max())  # type: ignore[arg-type]
    return f"mean over {n} seeds" if n > 1 else None


def _averaged(metrics: pl.DataFrame, x: str, y: str, by_layer: bool) -> pl.DataFrame:
    keys = ["arm", "source", "checkpoint"] + (["layer"] if by_layer else [])
    # a point without a checkpoint has no place on a trajectory
    return mean_over_seeds(metrics.filter(pl.col("checkpoint").is_not_null()), keys, [x, y])


def within_source(
    metrics: pl.DataFrame,
    *,
    x: str = "cosine",
    y: str = "assistant_rate",
    analysis: str = "within_source",
    by_layer: bool = True,
) -> list[Row]:
    """Per (arm, source, layer): Spearman of x against y over checkpoints, the exact p-value
    (all n! orderings) and the asymptotic one side by side (two rows)."""
    df = _averaged(metrics, x, y, by_layer)
    keys = ["arm", "source"] + (["layer"] if by_layer else [])
    rows: list[Row] = []
    for key, g in df.group_by(keys, maintain_order=True):
        base: Row = {"analysis": analysis, **dict(zip(keys, key)), "x": x, "y": y}
        if by_layer and base.get("layer") is None and g[x].null_count() == g.height:
            continue  # groups without any x (arms without cosines) are reported once, below
        pts = _points(g, x, y).sort("checkpoint")
        base["n"] = pts.height
        rows += _spearman_rows(base, pts, x, y)
    return rows


def _spearman_rows(base: Row, pts: pl.DataFrame, x: str, y: str, unit: str = "point(s)") -> list[Row]:
    """Spearman of `y` on `x` over `pts`: an exact and an asymptotic row, or one `skipped:`
    row (too few points, a constant variable; `unit` names the points in its note)."""
    xs, ys = pts[x].to_numpy(), pts[y].to_numpy()
    why = _degenerate(xs, ys)
    if why:
        return [_skip(base, why.replace("point(s)", unit))]
    note = _seed_note(pts)
    rows = []
    for method in ("exact", "asymptotic"):
        t = _stats.spearman(xs, ys, method=method)
        rows.append(
            {
                **base,
                "statistic": "spearman_rho",
                "estimate": t.estimate,
                "p_value": t.p_value,
                "p_method": t.p_method,
                "n_permutations": t.n_permutations,
                "note": note,
            }
        )
    return rows


def _at(df: pl.DataFrame, checkpoint: float) -> pl.DataFrame:
    return df.filter((pl.col("checkpoint") - checkpoint).abs() < 1e-9)


def between_source(
    metrics: pl.DataFrame,
    *,
    checkpoint: float,
    x: str = "cosine",
    y: str = "assistant_rate",
    analysis: str = "between_source",
    by_layer: bool = True,
) -> list[Row]:
    """Per (arm, layer) at `checkpoint`: Spearman over sources, exact permutation p-value
    over all orderings of the sources, and the asymptotic one beside it."""
    df = _at(_averaged(metrics, x, y, by_layer), checkpoint)
    keys = ["arm"] + (["layer"] if by_layer else [])
    rows: list[Row] = []
    for key, g in df.group_by(keys, maintain_order=True):
        base: Row = {"analysis": analysis, **dict(zip(keys, key)), "checkpoint": checkpoint, "x": x, "y": y}
        if by_layer and base.get("layer") is None and g[x].null_count() == g.height:
            continue
        pts = _points(g, x, y).sort("source")
        base["n"] = base["n_clusters"] = pts.height
        rows += _spearman_rows(base, pts, x, y, unit="source(s)")
    return rows


def pooled(
    metrics: pl.DataFrame,
    *,
    x: str = "cosine",
    y: str = "assistant_rate",
    analysis: str = "between_source_pooled",
    by_layer: bool = True,
    n_resamples: int = 9999,
    seed: int = 0,
) -> list[Row]:
    """Per (arm, layer): all (source, checkpoint) points pooled.

    Two rows: the naive asymptotic Spearman that treats every point as independent, and
    the same rho with a p-value from permuting whole sources (the checkpoints of a source
    move together). Both carry ICC(1) of y by source (`icc`; of x in `icc_x`), the design
    effect 1 + (m - 1) ICC with m the mean points per source, and Kish's effective N.
    The cluster permutation uses the checkpoints every source has, so that whole
    trajectories can be exchanged.
    """
    df = _averaged(metrics, x, y, by_layer)
    keys = ["arm"] + (["layer"] if by_layer else [])
    rows: list[Row] = []
    for key, g in df.group_by(keys, maintain_order=True):
        base: Row = {"analysis": analysis, **dict(zip(keys, key)), "x": x, "y": y}
        if by_layer and base.get("layer") is None and g[x].null_count() == g.height:
            continue
        pts = _points(g, x, y).sort(["source", "checkpoint"])
        xs, ys = pts[x].to_numpy(), pts[y].to_numpy()
        src = pts["source"].to_list()
        k = len(set(src))
        base["n"], base["n_clusters"] = len(xs), k
        why = _degenerate(xs, ys)
        if why:
            rows.append(_skip(base, why))
            continue
        icc_note: str | None
        if k < 2 or k == len(xs):
            icc = icc_x = deff = n_eff = None
            if k == len(xs):
                icc_note = "one point per source: no clustering to correct for"
                deff, n_eff = 1.0, float(len(xs))
            else:
                icc_note = "a single source: ICC undefined"
        else:
            icc = _stats.icc1(ys, src)
            icc_x = _stats.icc1(xs, src)
            m = len(xs) / k
            # A negative ICC estimate (sampling noise around 0, or exactly -1 at two points a
            # source) is taken as 0: the honest claim is "no clustering", never an effective N
            # above the number of points.
            icc_eff = max(icc, 0.0) if icc is not None else None
            deff = _stats.design_effect(m, icc_eff) if icc_eff is not None else None
            n_eff = _stats.effective_n(len(xs), m, icc_eff) if icc_eff is not None else None
            icc_note = "negative ICC taken as 0 for the design effect" if icc is not None and icc < 0 else None
        clus = {"icc": icc, "icc_x": icc_x, "design_effect": deff, "n_eff": n_eff}
        naive = _stats.spearman(xs, ys, method="asymptotic")
        rows.append(
            {
                **base,
                **clus,
                "statistic": "spearman_rho",
                "estimate": naive.estimate,
                "p_value": naive.p_value,
                "p_method": "asymptotic",
                "note": "; ".join(
                    filter(None, ["naive: treats every point as independent", icc_note, _seed_note(pts)])
                ),
            }
        )
        # Cluster permutation over the checkpoints common to all sources.
        per_src = pts.group_by("source").agg(pl.col("checkpoint"))
        common = set.intersection(*(set(c) for c in per_src["checkpoint"].to_list()))
        bal = pts.filter(pl.col("checkpoint").is_in(sorted(common))).sort(["source", "checkpoint"])
        bx, by_, bsrc = bal[x].to_numpy(), bal[y].to_numpy(), bal["source"].to_list()
        crow: Row = {**base, **clus, "statistic": "spearman_rho", "p_method": "cluster_permutation", "n": len(bx)}
        if k < 3:
            rows.append({**crow, "note": f"skipped: {k} source(s), 3 needed to permute sources"})
            continue
        if _degenerate(bx, by_) or not common:
            rows.append({**crow, "note": "skipped: no checkpoints shared by all sources"})
            continue
        t = _stats.cluster_permutation(bx, by_, bsrc, n_resamples=n_resamples, seed=seed)
        dropped = len(xs) - len(bx)
        notes = [
            f"{dropped} point(s) at checkpoints not shared by all sources left out" if dropped else None,
            _seed_note(pts),
        ]
        rows.append(
            {
                **crow,
                "estimate": t.estimate,
                "p_value": t.p_value,
                "n_permutations": t.n_permutations,
                "note": "; ".join(filter(None, notes)) or None,
            }
        )
    return rows
