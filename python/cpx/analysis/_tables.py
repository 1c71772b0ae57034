"""The analyses' results as display tables (strings), shared by stats.md and the report."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import polars as pl

from cpx.analysis._metrics import cross_arm_table, layer_free

DASH = "–"


@dataclass(frozen=True)
class Table:
    """A titled table of display strings with a caption that says how it was computed."""

    key: str
    title: str
    frame: pl.DataFrame
    caption: str = ""


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def pct(v: Any, digits: int = 1) -> str:
    return DASH if _missing(v) else f"{100 * v:.{digits}f}%"


def pp(v: Any) -> str:
    return DASH if _missing(v) else f"{100 * v:+.1f}pp"


def num(v: Any, digits: int = 2) -> str:
    return DASH if _missing(v) else f"{v:.{digits}f}"


def pval(v: Any) -> str:
    if _missing(v):
        return DASH
    if v < 1e-4:
        return "<0.0001"
    return f"{v:.3f}" if v >= 0.001 else f"{v:.4f}"


def ci(rate: Any, low: Any, high: Any) -> str:
    if _missing(rate):
        return DASH
    if _missing(low) or _missing(high):
        return pct(rate)
    return f"{pct(rate)} [{100 * low:.1f}, {100 * high:.1f}]"


def ckpt(v: Any) -> str:
    return DASH if _missing(v) else f"{100 * v:g}%"


def _s(v: Any) -> str:
    return DASH if _missing(v) else str(v)


def _frame(rows: list[dict[str, str]], columns: list[str]) -> pl.DataFrame:
    return pl.DataFrame([{c: r.get(c, DASH) for c in columns} for r in rows],
                        schema={c: pl.String for c in columns}, orient="row")


def leakage_table(metrics: pl.DataFrame) -> Table:
    lf = layer_free(metrics)
    rows = []
    for r in lf.iter_rows(named=True):
        rows.append({
            "arm": _s(r["arm"]), "source": _s(r["source"]), "seed": _s(r["seed"]),
            "checkpoint": ckpt(r["checkpoint"]),
            "source %": ci(r["source_rate"], r.get("source_ci_low"), r.get("source_ci_high")),
            "assistant %": ci(r["assistant_rate"], r.get("assistant_ci_low"),
                              r.get("assistant_ci_high")),
            "bystander %": ci(r["bystander_rate"], r.get("bystander_ci_low"),
                              r.get("bystander_ci_high")),
        })
    return Table("leakage_by_role", "Leakage by role", _frame(
        rows, ["arm", "source", "seed", "checkpoint", "source %", "assistant %", "bystander %"]),
        "Fraction of completions containing the marker. Brackets: 95% percentile bootstrap "
        "interval resampling whole questions (completions of one question are not independent). "
        "Bystander: the other non-assistant personas, pooled.")


def cross_arm(metrics: pl.DataFrame, checkpoint: float | None) -> Table:
    t = cross_arm_table(metrics, checkpoint=checkpoint)
    fmt = t.with_columns([pl.col(c).map_elements(pct, return_dtype=pl.String)
                          for c in t.columns if c != "source"])
    return Table("cross_arm", f"Cross-arm comparison at checkpoint {ckpt(checkpoint)}", fmt,
                 "Baseline: assistant leakage at checkpoint 0 (before any SFT). "
                 "`<arm> source`: marker rate on the source persona; `<arm> assistant`: on the "
                 "assistant. Seeds averaged.")


def _p_of(stats: pl.DataFrame, method: str) -> dict[tuple, dict[str, Any]]:
    out = {}
    for r in stats.filter(pl.col("p_method") == method).iter_rows(named=True):
        out[(r["arm"], r["source"], r["layer"], r["checkpoint"], r["x"])] = r
    return out


def _two_sided_rows(stats: pl.DataFrame, analysis: str) -> list[dict[str, Any]]:
    """Join the exact (or permutation) and asymptotic rows of one test into one record."""
    s = stats.filter(pl.col("analysis") == analysis)
    asym = _p_of(s, "asymptotic")
    out = []
    for r in s.filter(pl.col("p_method").ne_missing("asymptotic")).iter_rows(named=True):
        a = asym.get((r["arm"], r["source"], r["layer"], r["checkpoint"], r["x"]), {})
        out.append({**r, "p_asymptotic": a.get("p_value")})
    return out


def _layer(v: Any) -> str:
    return DASH if _missing(v) else f"L{v}"


def within_table(stats: pl.DataFrame, analysis: str = "within_source", x: str = "cosine") -> Table:
    rows = []
    for r in sorted(_two_sided_rows(stats, analysis),
                    key=lambda r: (str(r["arm"]), r["layer"] or -1, str(r["source"]))):
        rows.append({"arm": _s(r["arm"]), "source": _s(r["source"]), "layer": _layer(r["layer"]),
                     "n": _s(r["n"]), "rho": num(r["estimate"]),
                     "p exact": pval(r["p_value"]) if r["p_method"] == "exact" else DASH,
                     "p asymptotic": pval(r["p_asymptotic"]),
                     "p Holm": pval(r["p_adjusted"]), "note": _s(r["note"])})
    cols = ["arm", "source", "layer", "n", "rho", "p exact", "p asymptotic", "p Holm", "note"]
    if analysis != "within_source":
        cols.remove("layer")
    return Table(analysis, f"Within-source trajectories: Spearman({x}, assistant leakage) "
                 "over checkpoints", _frame(rows, cols),
                 "Exact p: the share of all n! orderings of the checkpoints with |rho| at least "
                 "as large. Asymptotic p: the t approximation, shown for comparison only (it is "
                 "badly calibrated at a handful of points). Holm: adjusted over every source and layer of "
                 "the arm (exact p-values).")


def between_table(stats: pl.DataFrame, analysis: str = "between_source",
                  x: str = "cosine") -> Table:
    rows = []
    for r in sorted(_two_sided_rows(stats, analysis),
                    key=lambda r: (str(r["arm"]), r["layer"] or -1)):
        rows.append({"arm": _s(r["arm"]), "layer": _layer(r["layer"]),
                     "checkpoint": ckpt(r["checkpoint"]), "sources": _s(r["n"]),
                     "rho": num(r["estimate"]), "p exact": pval(r["p_value"]),
                     "orderings": _s(r["n_permutations"]),
                     "p asymptotic": pval(r["p_asymptotic"]), "p Holm": pval(r["p_adjusted"]),
                     "note": _s(r["note"])})
    cols = ["arm", "layer", "checkpoint", "sources", "rho", "p exact", "orderings",
            "p asymptotic", "p Holm", "note"]
    if analysis != "between_source":
        cols.remove("layer")
    return Table(analysis, f"Between sources at one checkpoint: Spearman({x}, assistant "
                 "leakage) over sources", _frame(rows, cols),
                 "Exact p: permutation over all orderings of the sources (n! of them).")


def pooled_table(stats: pl.DataFrame, analysis: str = "between_source_pooled",
                 x: str = "cosine") -> Table:
    s = stats.filter(pl.col("analysis") == analysis)
    naive = {(r["arm"], r["layer"]): r for r in
             s.filter(pl.col("p_method") == "asymptotic").iter_rows(named=True)}
    clus = {(r["arm"], r["layer"]): r for r in
            s.filter(pl.col("p_method").ne_missing("asymptotic")).iter_rows(named=True)}
    rows = []
    for key in sorted(set(naive) | set(clus), key=lambda k: (str(k[0]), k[1] or -1)):
        n, c = naive.get(key, {}), clus.get(key, {})
        b = n or c
        rows.append({"arm": _s(key[0]), "layer": _layer(key[1]), "N": _s(b.get("n")),
                     "sources": _s(b.get("n_clusters")), "rho": num(b.get("estimate")),
                     "naive p": pval(n.get("p_value")), "ICC": num(b.get("icc")),
                     "design effect": num(b.get("design_effect")),
                     "effective N": num(b.get("n_eff"), 1),
                     "cluster-permutation p": pval(c.get("p_value")),
                     "permutations": _s(c.get("n_permutations")),
                     "note": "; ".join(v for v in (n.get("note"), c.get("note")) if v) or DASH})
    cols = ["arm", "layer", "N", "sources", "rho", "naive p", "ICC", "design effect",
            "effective N", "cluster-permutation p", "permutations", "note"]
    if analysis != "between_source_pooled":
        cols.remove("layer")
    return Table(analysis, f"Pooled over checkpoints: Spearman({x}, assistant leakage) and "
                 "pseudo-replication", _frame(rows, cols),
                 "Naive p treats every (source, checkpoint) point as independent. ICC(1): share "
                 "of the assistant-leakage variance between sources; design effect 1 + (m - 1) "
                 "ICC with m points per source; effective N = N / design effect (Kish). The "
                 "cluster-permutation p permutes whole sources (their checkpoints move "
                 "together), the honest test when points within a source are not independent.")


def bystander_table(stats: pl.DataFrame) -> Table:
    rows = []
    for r in stats.filter(pl.col("analysis") == "bystander_vs_assistant").iter_rows(named=True):
        rows.append({"arm": _s(r["arm"]), "source": _s(r["source"]), "seed": _s(r["seed"]),
                     "checkpoint": ckpt(r["checkpoint"]),
                     "assistant - bystander": pp(r["estimate"]), "questions": _s(r["n"]),
                     "p": pval(r["p_value"]), "method": _s(r["p_method"]),
                     "p Holm": pval(r["p_adjusted"]), "note": _s(r["note"])})
    return Table("bystander_vs_assistant", "Bystander versus assistant leakage", _frame(
        rows, ["arm", "source", "seed", "checkpoint", "assistant - bystander", "questions", "p",
               "method", "p Holm", "note"]),
        "Assistant rate minus mean bystander rate. p: permutation test paired by question "
        "(the two rates of a question are swapped at random). Near zero means the marker "
        "leaks to the assistant no more than to any other persona.")


def adapters_table(adapters: pl.DataFrame) -> Table:
    rows = []
    for r in adapters.iter_rows(named=True):
        rows.append({"arm": _s(r["arm"]), "source": _s(r["source"]), "seed": _s(r["seed"]),
                     "checkpoint": ckpt(r["checkpoint"]), "source %": pct(r["source_rate"]),
                     "assistant %": pct(r["assistant_rate"]),
                     "other personas %": pct(r["other_rate"]),
                     "highest other": f"{r['top_other']} ({pct(r['top_other_rate'])})",
                     "specificity": num(r["specificity"]), "class": r["class"]})
    return Table("adapter_quality", "Marker adapters before merge (screen)", _frame(
        rows, ["arm", "source", "seed", "checkpoint", "source %", "assistant %",
               "other personas %", "highest other", "specificity", "class"]),
        "Specificity index: source rate minus the mean rate of all other personas. Absent: the "
        "source never shows the marker; inverted: another persona shows it at least as often as "
        "the source; global: the others' mean is at least half the source rate; specific: "
        "otherwise.")


def comparison_table(stats: pl.DataFrame) -> Table:
    rows = []
    for r in stats.filter(pl.col("analysis") == "specificity_vs_cosine").iter_rows(named=True):
        rows.append({"arm": _s(r["arm"]), "cosine layer": _layer(r["layer"]),
                     "checkpoint": ckpt(r["checkpoint"]), "sources": _s(r["n"]),
                     "|rho spec| - |rho cos|": num(r["estimate"]), "note": _s(r["note"])})
    return Table("specificity_vs_cosine", "Does specificity predict assistant leakage better "
                 "than cosine?", _frame(rows, ["arm", "cosine layer", "checkpoint", "sources",
                                               "|rho spec| - |rho cos|", "note"]),
                 "Positive: specificity ranks the sources' assistant leakage more closely than "
                 "cosine does at that layer. Specificity here is source rate minus bystander "
                 "rate at the same checkpoint (the assistant is left out to avoid circularity).")


def skipped(stats: pl.DataFrame) -> list[str]:
    out = []
    for r in stats.filter(pl.col("note").str.starts_with("skipped")).iter_rows(named=True):
        where = ", ".join(f"{k} {v if k != 'checkpoint' else ckpt(v)}" for k, v in
                          (("arm", r["arm"]), ("source", r["source"]), ("seed", r["seed"]),
                           ("layer", r["layer"]), ("checkpoint", r["checkpoint"]))
                          if v is not None)
        out.append(f"{r['analysis']} ({where}): {r['note'].removeprefix('skipped: ')}")
    return out


def families(stats: pl.DataFrame) -> pl.DataFrame:
    s = stats.filter(pl.col("family").is_not_null())
    return s.group_by("family").agg(
        pl.len().alias("tests"),
        (pl.col("p_value") < 0.05).sum().alias("p < 0.05"),
        (pl.col("p_adjusted") < 0.05).sum().alias("Holm < 0.05"),
        (pl.col("p_adjusted_bh") < 0.05).sum().alias("BH < 0.05"),
    ).sort("family").with_columns(pl.all().cast(pl.String))
