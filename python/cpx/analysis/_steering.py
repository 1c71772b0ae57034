"""Steering (`steering`): a steer arm adds alpha * direction to the residual stream at one
layer. Does that move the source-assistant cosine as intended, and does the marker leak to
the assistant (and the bystanders) with it?

A steer arm's eval points are (source, seed, alpha) with no checkpoint; here the strength
plays the part a checkpoint plays on a training trajectory, so the tests are those of the
checkpoint analyses: per (arm, source, seed, layer) Spearman of leakage against the achieved
cosine over strengths with the exact p-value (all n! orderings), and per (arm, layer) all
(source, alpha) points pooled with a p-value from exchanging whole sources' curves (seeds
averaged, as for the checkpoint analyses).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from cpx.analysis._correlation import pooled, within_source
from cpx.analysis._metrics import layer_free, steered
from cpx.analysis._seeds import clip_to_range, interval_variance, random_effects, z_of

Row = dict[str, Any]
RATES = ("source_rate", "assistant_rate", "bystander_rate")
LEAKAGE = ("assistant_rate", "bystander_rate")


def _strengths(note: Any) -> Any:
    return note.replace("checkpoint", "steering strength") if isinstance(note, str) else note


def steering_curve(metrics: pl.DataFrame, *, confidence_level: float = 0.95) -> list[Row]:
    """Per (arm, source, alpha): the source, assistant and bystander rate and, per layer,
    the achieved source-assistant cosine. With one seed, the seed's value and (rates) its
    question-clustered bootstrap interval; with several, the random-effects mean over seeds
    with its Hartung-Knapp interval (`cpx.analysis._seeds.random_effects`)."""
    sm = steered(metrics).filter(pl.col("source").is_not_null())
    if sm.is_empty():
        return []
    parts = [(layer_free(sm), None, y) for y in RATES]
    cos = sm.filter(pl.col("layer").is_not_null() & pl.col("cosine").is_not_null())
    parts += [(g, layer, "cosine") for (layer,), g in cos.group_by(["layer"], maintain_order=True)]
    rows: list[Row] = []
    for df, layer, y in parts:
        role = y.removesuffix("_rate")
        for (arm, src, alpha), g in df.sort("seed").group_by(["arm", "source", "alpha"], maintain_order=True):
            g = g.filter(pl.col(y).is_not_null())
            if g.is_empty():
                continue
            base: Row = {
                "analysis": "steering_curve",
                "arm": arm,
                "source": src,
                "alpha": alpha,
                "layer": layer,
                "x": "alpha",
                "y": y,
                "statistic": "mean",
                "n": g.height,
                "n_clusters": g.height,
            }
            if g.height == 1:
                r = g.row(0, named=True)
                rows.append(
                    {
                        **base,
                        "seed": r["seed"],
                        "estimate": r[y],
                        "ci_low": r.get(f"{role}_ci_low") if y != "cosine" else None,
                        "ci_high": r.get(f"{role}_ci_high") if y != "cosine" else None,
                        "note": "one seed" + ("" if y == "cosine" else ": bootstrap interval over questions"),
                    }
                )
                continue
            var = None
            if y != "cosine" and f"{role}_ci_low" in g.columns:
                z = z_of(confidence_level)
                var = [interval_variance(lo, h, z) for lo, h in zip(g[f"{role}_ci_low"], g[f"{role}_ci_high"])]
            re = random_effects(g[y].to_list(), var, confidence_level=confidence_level)
            low, high = clip_to_range(y, re.ci_low, re.ci_high)
            rows.append(
                {
                    **base,
                    "estimate": re.estimate,
                    "ci_low": low,
                    "ci_high": high,
                    "tau2": re.tau2,
                    "within_var": re.within_var,
                    "i2": re.i2,
                    "note": f"mean over {re.k} seeds, Hartung-Knapp interval (cut to the quantity's range)",
                }
            )
    return rows


def steering(
    metrics: pl.DataFrame,
    *,
    layers: tuple[int, ...] | None = None,
    n_resamples: int = 9999,
    seed: int = 0,
    confidence_level: float = 0.95,
) -> list[Row]:
    """The steering curve (`steering_curve` rows), Spearman of assistant and of bystander
    leakage against the achieved cosine over strengths per (arm, source, seed, layer)
    (`steering`: exact and asymptotic rows, as within_source), and per (arm, layer) the pooled
    test over sources (`steering_pooled`: naive and cluster-permutation rows, as
    pseudo_replication). No rows without steer arms."""
    sm = steered(metrics).filter(pl.col("source").is_not_null())
    if sm.is_empty():
        return []
    rows = steering_curve(sm, confidence_level=confidence_level)
    cos = sm if layers is None else sm.filter(pl.col("layer").is_in(list(layers)))
    # the strength stands where the checkpoint stands on a training trajectory
    traj = cos.with_columns(pl.col("alpha").alias("checkpoint"))
    for y in LEAKAGE:
        for (s,), g in traj.sort("seed").group_by(["seed"], maintain_order=True):
            for r in within_source(g, x="cosine", y=y, analysis="steering"):
                rows.append({**r, "seed": s, "note": _strengths(r.get("note"))})
        for r in pooled(traj, x="cosine", y=y, analysis="steering_pooled", n_resamples=n_resamples, seed=seed):
            rows.append({**r, "note": _strengths(r.get("note"))})
    return rows


def steer_layers_of(spec: dict[str, Any]) -> dict[str, int]:
    """Each steer arm's steered layer from a resolved spec (`arms.<name>.steer.layer`)."""
    out: dict[str, int] = {}
    for name, arm in (spec.get("arms") or {}).items():
        steer = arm.get("steer") if isinstance(arm, dict) else None
        if isinstance(steer, dict) and steer.get("layer") is not None:
            out[str(name)] = int(steer["layer"])
    return out
