"""Marker specificity (analysis 6): how narrowly a marker adapter fires on its source."""

from __future__ import annotations

from typing import Any

import polars as pl

from cpx.analysis._columns import LABELS
from cpx.analysis._correlation import between_source, pooled, within_source
from cpx.analysis._metrics import layer_free, with_labels

Row = dict[str, Any]

# The classes the train stage's screen warns about (cpx.stages.train.specificity): "absent"
# (the source never shows the marker), "inverted" (another persona shows it at least as
# often), "global" (the others' mean is at least half the source rate), else "specific".
GLOBAL_RATIO = 0.5


def adapter_quality(screen: pl.DataFrame) -> pl.DataFrame:
    """Per marker adapter (train stage labels): source rate, assistant rate, mean bystander
    rate, mean rate of all other personas, the highest other persona, the specificity index
    (source rate minus the mean of the other personas' rates, in [-1, 1]) and a class
    (specific / global / inverted / absent)."""
    df = with_labels(screen)
    if "role" not in df.columns:
        raise ValueError("screen table: missing column 'role'")
    rows: list[Row] = []
    for key, g in df.sort([*LABELS, "persona"], nulls_last=True).group_by(list(LABELS), maintain_order=True):
        src = g.filter(pl.col("role") == "source")
        oth = g.filter(pl.col("role") != "source")
        if src.is_empty() or oth.is_empty():
            continue
        s_rate = float(src["rate"].mean())  # type: ignore[arg-type]
        o_mean = float(oth["rate"].mean())  # type: ignore[arg-type]
        top = oth.sort("rate", descending=True).row(0, named=True)
        asst = g.filter(pl.col("role") == "assistant")["rate"]
        bys = g.filter(pl.col("role") == "bystander")["rate"]
        if s_rate == 0:
            cls = "absent"
        elif top["rate"] >= s_rate:
            cls = "inverted"
        elif o_mean >= GLOBAL_RATIO * s_rate:
            cls = "global"
        else:
            cls = "specific"
        rows.append(
            {
                **dict(zip(LABELS, key)),
                "source_persona": src["persona"][0],
                "source_rate": s_rate,
                "assistant_rate": float(asst.mean()) if asst.len() else None,  # type: ignore[arg-type]
                "bystander_rate": float(bys.mean()) if bys.len() else None,  # type: ignore[arg-type]
                "other_rate": o_mean,
                "top_other": top["persona"],
                "top_other_rate": float(top["rate"]),
                "specificity": s_rate - o_mean,
                "class": cls,
            }
        )
    schema = {
        "arm": pl.String,
        "source": pl.String,
        "seed": pl.Int64,
        "checkpoint": pl.Float64,
        "source_persona": pl.String,
        "source_rate": pl.Float64,
        "assistant_rate": pl.Float64,
        "bystander_rate": pl.Float64,
        "other_rate": pl.Float64,
        "top_other": pl.String,
        "top_other_rate": pl.Float64,
        "specificity": pl.Float64,
        "class": pl.String,
    }
    return pl.DataFrame(rows, schema=schema, orient="row")


def adapter_rows(adapters: pl.DataFrame) -> list[Row]:
    """The specificity index per adapter as stats rows (estimates, no tests)."""
    return [
        {
            "analysis": "marker_specificity",
            **{c: r[c] for c in LABELS},
            "statistic": "specificity_index",
            "x": "other_rate",
            "y": "source_rate",
            "estimate": r["specificity"],
            "note": f"{r['class']} adapter (screen before merge)",
        }
        for r in adapters.iter_rows(named=True)
    ]


def specificity_vs_cosine(metrics: pl.DataFrame, *, checkpoint: float | None, n_resamples: int, seed: int) -> list[Row]:
    """Does specificity (source rate minus bystander rate at the same checkpoint) predict
    assistant leakage better than cosine? The same tests as for cosine (within source,
    between sources at `checkpoint`, pooled with a cluster permutation), plus a descriptive
    row per arm and layer: |rho(specificity)| - |rho(cosine)| between sources."""
    lf = layer_free(metrics)
    rows = within_source(lf, x="specificity", analysis="specificity_within_source", by_layer=False)
    if checkpoint is not None:
        rows += between_source(
            lf, checkpoint=checkpoint, x="specificity", analysis="specificity_between_source", by_layer=False
        )
        cos = between_source(metrics, checkpoint=checkpoint, x="cosine")
        spec = {
            r["arm"]: r
            for r in rows
            if r["analysis"] == "specificity_between_source" and r.get("p_method") not in (None, "asymptotic")
        }
        for r in cos:
            s = spec.get(r["arm"])
            if r.get("p_method") in (None, "asymptotic") or s is None or r.get("estimate") is None:
                continue
            rows.append(
                {
                    "analysis": "specificity_vs_cosine",
                    "arm": r["arm"],
                    "layer": r["layer"],
                    "checkpoint": checkpoint,
                    "x": "specificity vs cosine",
                    "y": "assistant_rate",
                    "statistic": "abs_rho_difference",
                    "estimate": abs(s["estimate"]) - abs(r["estimate"]),
                    "n": r["n"],
                    "note": "descriptive: no test of the difference at this many sources",
                }
            )
    rows += pooled(
        lf, x="specificity", analysis="specificity_pooled", by_layer=False, n_resamples=n_resamples, seed=seed
    )
    return rows
