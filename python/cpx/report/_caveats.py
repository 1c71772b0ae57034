"""The caveats a careful reviewer would raise, generated from the data itself."""

from __future__ import annotations

import math

import polars as pl

from cpx.analysis import ckpt, pval


def _rows(stats: pl.DataFrame, analysis: str, method: str | None = None) -> pl.DataFrame:
    s = stats.filter(pl.col("analysis") == analysis)
    return s.filter(pl.col("p_method") == method) if method else s


def caveats(metrics: pl.DataFrame, stats: pl.DataFrame, adapters: pl.DataFrame | None) -> list[str]:
    """Plain-language caveats, each backed by numbers from the tables."""
    out: list[str] = []
    seeds = metrics["seed"].drop_nulls().unique().to_list()
    if len(seeds) <= 1:
        out.append(
            f"Single seed ({seeds[0] if seeds else 'none recorded'}): every number is a "
            "point estimate with no between-seed variance."
        )
    sources = metrics["source"].drop_nulls().n_unique()
    if 0 < sources < 3:
        out.append(
            f"Only {sources} source persona{'s' if sources > 1 else ''}: no "
            "between-source test is possible (3 sources at the least)."
        )
    elif 3 <= sources < 6:
        out.append(
            f"Only {sources} source personas: a between-source correlation rests on "
            f"{sources} independent units (the smallest exact two-sided p-value over "
            f"{sources} sources is {pval(2 / math.factorial(sources))})."
        )
    pooled = _rows(stats, "between_source_pooled")
    for (arm,), g in pooled.group_by(["arm"], maintain_order=True):
        naive = g.filter((pl.col("p_method") == "asymptotic") & pl.col("icc").is_not_null())
        clus = g.filter(pl.col("p_method") == "cluster_permutation")
        if naive.is_empty():
            continue
        layers = ", ".join(f"L{v}" for v in naive["layer"].to_list() if v is not None)
        out.append(
            f"Pseudo-replication (arm {arm}{', ' + layers if layers else ''}): pooling "
            f"{_span(naive['n'], '{:.0f}')} points from {_span(naive['n_clusters'], '{:.0f}')} "
            f"sources gives naive p = {_span(naive['p_value'], None)}, but ICC(1) = "
            f"{_span(naive['icc'], '{:.2f}')} makes the effective N about "
            f"{_span(naive['n_eff'], '{:.1f}')} (design effect "
            f"{_span(naive['design_effect'], '{:.2f}')}); permuting whole sources gives "
            f"p = {_span(clus['p_value'], None)}."
        )
    within = _rows(stats, "within_source")
    ex = within.filter(pl.col("p_method") == "exact").select("arm", "source", "layer", "p_value")
    asym = within.filter(pl.col("p_method") == "asymptotic").select(
        "arm", "source", "layer", pl.col("p_value").alias("p_asym")
    )
    both = ex.join(asym, on=["arm", "source", "layer"], how="inner", nulls_equal=True)
    flips = both.filter((pl.col("p_asym") < 0.05) & (pl.col("p_value") >= 0.05))
    if flips.height:
        r = flips.row(0, named=True)
        out.append(
            f"Asymptotic p-values mislead at few checkpoints: {flips.height} within-source "
            f"test(s) have asymptotic p < 0.05 but exact p >= 0.05 (e.g. {r['source']} at "
            f"L{r['layer']}: {pval(r['p_asym'])} vs {pval(r['p_value'])})."
        )
    signs = within.filter((pl.col("p_method") == "exact") & pl.col("estimate").is_not_null())
    mixed = []
    for (arm, src), g in signs.group_by(["arm", "source"], maintain_order=True):
        pos = g.filter(pl.col("estimate") > 0)["layer"].to_list()
        neg = g.filter(pl.col("estimate") < 0)["layer"].to_list()
        if pos and neg:
            mixed.append(
                f"{src} (arm {arm}: positive at "
                f"{', '.join(f'L{v}' for v in sorted(pos))}, negative at "
                f"{', '.join(f'L{v}' for v in sorted(neg))})"
            )
    if mixed:
        out.append(
            "Layer dependence: the sign of the within-source correlation changes with "
            "the layer for " + "; ".join(mixed) + "."
        )
    sig = stats.filter(pl.col("p_value").is_not_null() & (pl.col("p_method") != "asymptotic"))
    lost = sig.filter((pl.col("p_value") < 0.05) & (pl.col("p_adjusted") >= 0.05))
    if lost.height:
        out.append(
            f"Multiple comparisons: {lost.height} of {int((sig['p_value'] < 0.05).sum())} "
            "tests with p < 0.05 are not significant after Holm's correction within "
            "their family."
        )
    if adapters is not None and adapters.height:
        bad = adapters.filter(pl.col("class") != "specific")
        if bad.height:
            several = adapters["seed"].n_unique() > 1
            items = [
                f"{r['source']} (arm {r['arm']}"
                + (f", seed {r['seed']}" if several else "")
                + (f" @{ckpt(r['checkpoint'])}" if r["checkpoint"] else "")
                + f": {r['class']}, source {100 * r['source_rate']:.0f}%, "
                f"{r['top_other']} {100 * r['top_other_rate']:.0f}%)"
                for r in bad.iter_rows(named=True)
            ]
            out.append(
                f"Non-specific marker adapters ({bad.height} of {adapters.height}): "
                + "; ".join(items[:6])
                + ("; ..." if len(items) > 6 else "")
                + ". Their markers say little about leakage to the assistant."
            )
    skipped = int(stats["note"].str.starts_with("skipped").sum())
    if skipped:
        out.append(f"{skipped} test(s) were skipped for too few data points (listed in stats.md).")
    return out


def _span(values: pl.Series, fmt: str | None) -> str:
    """'a' or 'a to b' over the non-null values (p-values formatted as in the tables)."""
    v = values.drop_nulls()
    if v.is_empty():
        return "–"
    f = (lambda x: pval(x)) if fmt is None else (lambda x: fmt.format(x))
    lo, hi = f(v.min()), f(v.max())
    return lo if lo == hi else f"{lo} to {hi}"
