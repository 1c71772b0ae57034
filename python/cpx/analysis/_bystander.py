"""Bystander versus assistant leakage (analysis 5)."""

from __future__ import annotations

from typing import Any

import polars as pl

from cpx.analysis import _stats
from cpx.analysis._columns import LABELS
from cpx.analysis._metrics import layer_free, with_labels
from cpx.scan import hit_rates

Row = dict[str, Any]


def bystander_vs_assistant(
    marker_hits: pl.DataFrame | None, metrics: pl.DataFrame, *, n_resamples: int = 9999, seed: int = 0
) -> list[Row]:
    """Assistant rate minus mean bystander rate per (arm, source, seed, checkpoint).

    With completion-level hits the p-value comes from a permutation test paired by
    question: per question, the assistant's rate and the bystanders' mean rate form a pair,
    and the test swaps the two within pairs. Without hits (a metrics table only) the
    difference is reported without a test.
    """
    rows: list[Row] = []
    if marker_hits is not None and marker_hits.height:
        keys = [*LABELS, "question_id", "role"]
        hits = with_labels(marker_hits).filter(pl.col("role").is_in(["assistant", "bystander"])).select(*keys, "hit")
        per_q = pl.DataFrame(hit_rates(hits, keys)).select(*keys, "rate")
        wide = per_q.pivot(on="role", index=[*LABELS, "question_id"], values="rate")
        for c in ("assistant", "bystander"):
            if c not in wide.columns:
                wide = wide.with_columns(pl.lit(None, pl.Float64).alias(c))
        wide = wide.sort([*LABELS, "question_id"], nulls_last=True)
        for i, (key, g) in enumerate(wide.group_by(list(LABELS), maintain_order=True)):
            base: Row = {
                "analysis": "bystander_vs_assistant",
                **dict(zip(LABELS, key)),
                "x": "bystander_rate",
                "y": "assistant_rate",
                "statistic": "assistant_minus_bystander",
            }
            pairs = g.filter(pl.col("assistant").is_not_null() & pl.col("bystander").is_not_null())
            base["n"] = base["n_clusters"] = pairs.height
            if pairs.height < 2:
                rows.append({**base, "note": f"skipped: {pairs.height} question(s) with both roles"})
                continue
            a, b = pairs["assistant"].to_numpy(), pairs["bystander"].to_numpy()
            if (a == b).all():
                rows.append(
                    {
                        **base,
                        "estimate": 0.0,
                        "p_value": 1.0,
                        "p_method": "exact",
                        "note": "assistant and bystander rates equal on every question",
                    }
                )
                continue
            t = _stats.paired_permutation(a, b, n_resamples=n_resamples, seed=seed + i)
            rows.append(
                {
                    **base,
                    "estimate": t.estimate,
                    "p_value": t.p_value,
                    "p_method": t.p_method,
                    "n_permutations": t.n_permutations,
                    "note": "paired by question",
                }
            )
        return rows
    lf = layer_free(metrics)
    for r in lf.iter_rows(named=True):
        if r.get("assistant_rate") is None or r.get("bystander_rate") is None:
            continue
        rows.append(
            {
                "analysis": "bystander_vs_assistant",
                **{c: r[c] for c in LABELS},
                "x": "bystander_rate",
                "y": "assistant_rate",
                "statistic": "assistant_minus_bystander",
                "estimate": r["assistant_rate"] - r["bystander_rate"],
                "note": "no completion-level hits: difference only, no test",
            }
        )
    return rows
