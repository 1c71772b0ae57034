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
    return pl.DataFrame(
        [{c: r.get(c, DASH) for c in columns} for r in rows], schema={c: pl.String for c in columns}, orient="row"
    )


def leakage_table(metrics: pl.DataFrame) -> Table:
    lf = layer_free(metrics)
    rows = []
    for r in lf.iter_rows(named=True):
        rows.append(
            {
                "arm": _s(r["arm"]),
                "source": _s(r["source"]),
                "seed": _s(r["seed"]),
                "checkpoint": ckpt(r["checkpoint"]),
                "source %": ci(r["source_rate"], r.get("source_ci_low"), r.get("source_ci_high")),
                "assistant %": ci(r["assistant_rate"], r.get("assistant_ci_low"), r.get("assistant_ci_high")),
                "bystander %": ci(r["bystander_rate"], r.get("bystander_ci_low"), r.get("bystander_ci_high")),
            }
        )
    return Table(
        "leakage_by_role",
        "Leakage by role",
        _frame(rows, ["arm", "source", "seed", "checkpoint", "source %", "assistant %", "bystander %"]),
        "Fraction of completions containing the marker. Brackets: 95% percentile bootstrap "
        "interval resampling whole questions (completions of one question are not independent). "
        "Bystander: the other non-assistant personas, pooled.",
    )


def cross_arm(metrics: pl.DataFrame, checkpoint: float | None, confidence_level: float = 0.95) -> Table:
    t = cross_arm_table(metrics, checkpoint=checkpoint)
    caption = (
        "Baseline: assistant leakage at checkpoint 0 (before any SFT). `<arm> source`: marker "
        "rate on the source persona; `<arm> assistant`: on the assistant."
    )
    seeds = metrics["seed"].drop_nulls().unique().sort().to_list()
    if len(seeds) < 2:
        fmt = t.with_columns([pl.col(c).map_elements(pct, return_dtype=pl.String) for c in t.columns if c != "source"])
        return Table("cross_arm", f"Cross-arm comparison at checkpoint {ckpt(checkpoint)}", fmt, caption)
    # Several seeds: each seed's table, then per cell the mean over seeds with a t interval
    # across them (the seeds are the replicates; their spread is the uncertainty that matters).
    per_seed = [cross_arm_table(metrics.filter(pl.col("seed") == s), checkpoint=checkpoint) for s in seeds]
    rows = []
    for r in t.iter_rows(named=True):
        row = {"source": r["source"]}
        for c in t.columns[1:]:
            vals = [
                float(v)
                for f in per_seed
                if c in f.columns
                for v in f.filter(pl.col("source") == r["source"])[c].to_list()
                if not _missing(v)
            ]
            row[c] = ci(*_across_seeds(vals, confidence_level)) if vals else DASH
        rows.append(row)
    level = f"{100 * confidence_level:g}%"
    return Table(
        "cross_arm",
        f"Cross-arm comparison at checkpoint {ckpt(checkpoint)}",
        _frame(rows, t.columns),
        f"{caption} The mean over {len(seeds)} seeds; brackets: "
        f"{level} t interval across seeds (mean ± t(k − 1) · SD / √k, cut to [0, 100]).",
    )


def _across_seeds(values: list[float], confidence_level: float) -> tuple[float, float | None, float | None]:
    """Mean of per-seed rates and its t interval across them (none from one value): the
    equal-weight case of `random_effects`, cut to [0, 1]."""
    from cpx.analysis._seeds import clip_to_range, random_effects

    if len(values) < 2:
        return values[0], None, None
    re = random_effects(values, confidence_level=confidence_level)
    return (re.estimate, *clip_to_range("rate", re.ci_low, re.ci_high))


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
    for r in sorted(
        _two_sided_rows(stats, analysis), key=lambda r: (str(r["arm"]), r["layer"] or -1, str(r["source"]))
    ):
        rows.append(
            {
                "arm": _s(r["arm"]),
                "source": _s(r["source"]),
                "layer": _layer(r["layer"]),
                "n": _s(r["n"]),
                "rho": num(r["estimate"]),
                "p exact": pval(r["p_value"]) if r["p_method"] == "exact" else DASH,
                "p asymptotic": pval(r["p_asymptotic"]),
                "p Holm": pval(r["p_adjusted"]),
                "note": _s(r["note"]),
            }
        )
    cols = ["arm", "source", "layer", "n", "rho", "p exact", "p asymptotic", "p Holm", "note"]
    if analysis != "within_source":
        cols.remove("layer")
    return Table(
        analysis,
        f"Within-source trajectories: Spearman({x}, assistant leakage) over checkpoints",
        _frame(rows, cols),
        "Exact p: the share of all n! orderings of the checkpoints with |rho| at least "
        "as large. Asymptotic p: the t approximation, shown for comparison only (it is "
        "badly calibrated at a handful of points). Holm: adjusted over every source and layer of "
        "the arm (exact p-values).",
    )


def between_table(stats: pl.DataFrame, analysis: str = "between_source", x: str = "cosine") -> Table:
    rows = []
    for r in sorted(_two_sided_rows(stats, analysis), key=lambda r: (str(r["arm"]), r["layer"] or -1)):
        rows.append(
            {
                "arm": _s(r["arm"]),
                "layer": _layer(r["layer"]),
                "checkpoint": ckpt(r["checkpoint"]),
                "sources": _s(r["n"]),
                "rho": num(r["estimate"]),
                "p exact": pval(r["p_value"]),
                "orderings": _s(r["n_permutations"]),
                "p asymptotic": pval(r["p_asymptotic"]),
                "p Holm": pval(r["p_adjusted"]),
                "note": _s(r["note"]),
            }
        )
    cols = ["arm", "layer", "checkpoint", "sources", "rho", "p exact", "orderings", "p asymptotic", "p Holm", "note"]
    if analysis != "between_source":
        cols.remove("layer")
    return Table(
        analysis,
        f"Between sources at one checkpoint: Spearman({x}, assistant leakage) over sources",
        _frame(rows, cols),
        "Exact p: permutation over all orderings of the sources (n! of them).",
    )


def pooled_table(stats: pl.DataFrame, analysis: str = "between_source_pooled", x: str = "cosine") -> Table:
    s = stats.filter(pl.col("analysis") == analysis)
    naive = {
        (r["arm"], r["layer"], r["y"]): r for r in s.filter(pl.col("p_method") == "asymptotic").iter_rows(named=True)
    }
    clus = {
        (r["arm"], r["layer"], r["y"]): r
        for r in s.filter(pl.col("p_method").ne_missing("asymptotic")).iter_rows(named=True)
    }
    rows = []
    for key in sorted(set(naive) | set(clus), key=lambda k: (str(k[0]), k[1] or -1, str(k[2]))):
        n, c = naive.get(key, {}), clus.get(key, {})
        b = n or c
        rows.append(
            {
                "arm": _s(key[0]),
                "layer": _layer(key[1]),
                "leakage": _role(key[2]),
                "N": _s(b.get("n")),
                "sources": _s(b.get("n_clusters")),
                "rho": num(b.get("estimate")),
                "naive p": pval(n.get("p_value")),
                "ICC": num(b.get("icc")),
                "design effect": num(b.get("design_effect")),
                "effective N": num(b.get("n_eff"), 1),
                "cluster-permutation p": pval(c.get("p_value")),
                "permutations": _s(c.get("n_permutations")),
                "note": "; ".join(
                    dict.fromkeys(part for v in (n.get("note"), c.get("note")) if v for part in v.split("; "))
                )
                or DASH,
            }
        )
    cols = [
        "arm",
        "layer",
        "N",
        "sources",
        "rho",
        "naive p",
        "ICC",
        "design effect",
        "effective N",
        "cluster-permutation p",
        "permutations",
        "note",
    ]
    if analysis == "steering_pooled":
        cols.insert(2, "leakage")
        return Table(
            analysis,
            "Steering pooled over strengths: Spearman(achieved cosine, leakage) and pseudo-replication",
            _frame(rows, cols),
            "All (source, alpha) points of a steer arm pooled, seeds averaged. Naive p "
            "treats every point as independent; the cluster-permutation p exchanges "
            "whole sources' curves over the strengths every source has. ICC(1), "
            "design effect and effective N as for the checkpoint analyses.",
        )
    if analysis != "between_source_pooled":
        cols.remove("layer")
    return Table(
        analysis,
        f"Pooled over checkpoints: Spearman({x}, assistant leakage) and pseudo-replication",
        _frame(rows, cols),
        "Naive p treats every (source, checkpoint) point as independent. ICC(1): share "
        "of the assistant-leakage variance between sources; design effect 1 + (m - 1) "
        "ICC with m points per source; effective N = N / design effect (Kish). The "
        "cluster-permutation p permutes whole sources (their checkpoints move "
        "together), the honest test when points within a source are not independent.",
    )


def _role(y: Any) -> str:
    return DASH if _missing(y) else str(y).removesuffix("_rate")


def alpha_(v: Any) -> str:
    return DASH if _missing(v) else f"{v:g}"


def _ci_num(v: Any, low: Any, high: Any, digits: int = 2) -> str:
    if _missing(v):
        return DASH
    if _missing(low) or _missing(high):
        return num(v, digits)
    return f"{num(v, digits)} [{num(low, digits)}, {num(high, digits)}]"


def shown_layers(stats: pl.DataFrame, steer_layers: dict[str, int] | None = None) -> dict[str, int]:
    """Per steer arm, the layer whose achieved cosine the steering table and figure show: the
    steered layer when known (the spec's `steer.layer`), else the layer where the mean cosine
    moves most across strengths."""
    curve = stats.filter(
        (pl.col("analysis") == "steering_curve") & (pl.col("y") == "cosine") & pl.col("layer").is_not_null()
    )
    out: dict[str, int] = {}
    for (arm,), g in curve.group_by(["arm"], maintain_order=True):
        layers = g["layer"].unique().to_list()
        known = (steer_layers or {}).get(str(arm))
        if known is not None and known in layers:
            out[str(arm)] = int(known)
            continue
        span = (
            g.group_by(["layer", "alpha"])
            .agg(pl.col("estimate").mean())
            .group_by("layer")
            .agg((pl.col("estimate").max() - pl.col("estimate").min()).alias("span"))
        )
        out[str(arm)] = int(span.sort(["span", "layer"], descending=[True, False])["layer"][0])
    return out


def steering_curve_table(stats: pl.DataFrame, steer_layers: dict[str, int] | None = None) -> Table:
    curve = stats.filter(pl.col("analysis") == "steering_curve")
    layers = shown_layers(stats, steer_layers)
    cells: dict[tuple, dict[str, str]] = {}
    for r in curve.sort(["arm", "source", "alpha"]).iter_rows(named=True):
        key = (r["arm"], r["source"], r["alpha"])
        c = cells.setdefault(
            key,
            {"arm": _s(r["arm"]), "source": _s(r["source"]), "alpha": alpha_(r["alpha"]), "seeds": _s(r["n_clusters"])},
        )
        if r["y"] == "cosine":
            if r["layer"] == layers.get(str(r["arm"])):
                c["achieved cosine"] = _ci_num(r["estimate"], r["ci_low"], r["ci_high"], 3)
                c["layer"] = _layer(r["layer"])
        else:
            c[f"{_role(r['y'])} %"] = ci(r["estimate"], r["ci_low"], r["ci_high"])
    cols = ["arm", "source", "alpha", "seeds", "layer", "achieved cosine", "assistant %", "bystander %", "source %"]
    return Table(
        "steering_curve",
        "Steering curve: achieved cosine and leakage per strength",
        _frame(list(cells.values()), cols),
        "Achieved cosine: cos(source, assistant) centroids (global-mean centred) with "
        "the assistant steered, at the steered layer (else the layer where it moves "
        "most). Rates: fraction of completions with the marker. One seed: its value, "
        "with a bootstrap interval over questions for rates. Several: the mean over "
        "seeds with a Hartung-Knapp interval across seeds (t, k - 1 df).",
    )


def steering_table(stats: pl.DataFrame) -> Table:
    s = stats.filter(pl.col("analysis") == "steering")
    key = ("arm", "source", "seed", "layer", "y")
    asym = {tuple(r[k] for k in key): r for r in s.filter(pl.col("p_method") == "asymptotic").iter_rows(named=True)}
    rows = []
    main = s.filter(pl.col("p_method").ne_missing("asymptotic")).sort(
        ["arm", "source", "seed", "layer", "y"], nulls_last=True
    )
    for r in main.iter_rows(named=True):
        a = asym.get(tuple(r[k] for k in key), {})
        rows.append(
            {
                "arm": _s(r["arm"]),
                "source": _s(r["source"]),
                "seed": _s(r["seed"]),
                "layer": _layer(r["layer"]),
                "leakage": _role(r["y"]),
                "n": _s(r["n"]),
                "rho": num(r["estimate"]),
                "p exact": pval(r["p_value"]) if r["p_method"] == "exact" else DASH,
                "p asymptotic": pval(a.get("p_value")),
                "p Holm": pval(r["p_adjusted"]),
                "note": _s(r["note"]),
            }
        )
    return Table(
        "steering",
        "Steering: Spearman(achieved cosine, leakage) over strengths",
        _frame(
            rows, ["arm", "source", "seed", "layer", "leakage", "n", "rho", "p exact", "p asymptotic", "p Holm", "note"]
        ),
        "Per source, seed and layer, over the steering strengths. Exact p: all n! "
        "orderings of the strengths; asymptotic p for comparison only. A layer before "
        "the steered one does not see the steering: its cosine is constant and the test "
        "is skipped. Holm: within the arm, over sources, seeds, layers and both "
        "leakages.",
    )


def seed_table(stats: pl.DataFrame) -> Table:
    s = stats.filter(
        (pl.col("analysis") == "seed_replication") & ~pl.col("note").fill_null("").str.starts_with("skipped")
    )
    seeds = sorted(s["seed"].drop_nulls().unique().to_list())
    key = ("arm", "source", "statistic", "layer", "checkpoint")
    cells: dict[tuple, dict[str, str]] = {}
    for r in s.sort([*key, "seed"], nulls_last=True).iter_rows(named=True):
        k = tuple(r[c] for c in key)
        rate = str(r["statistic"]).endswith("rate")
        c = cells.setdefault(
            k,
            {
                "arm": _s(r["arm"]),
                "source": _s(r["source"]),
                "quantity": str(r["statistic"]).replace("_", " "),
                "layer": _layer(r["layer"]),
                "checkpoint": ckpt(r["checkpoint"]),
            },
        )
        if r["seed"] is not None:
            c[f"seed {r['seed']}"] = pct(r["estimate"]) if rate else num(r["estimate"])
        else:
            c["pooled [interval]"] = (
                ci(r["estimate"], r["ci_low"], r["ci_high"])
                if rate
                else _ci_num(r["estimate"], r["ci_low"], r["ci_high"])
            )
            if "has no width" in (r["note"] or ""):
                c["pooled [interval]"] += " *"
            c["between-seed SD"] = (
                DASH if _missing(r["tau2"]) else (pct(r["tau2"] ** 0.5) if rate else num(r["tau2"] ** 0.5))
            )
            c["I²"] = pct(r["i2"], 0)
    cols = [
        "arm",
        "source",
        "quantity",
        "layer",
        "checkpoint",
        *[f"seed {v}" for v in seeds],
        "pooled [interval]",
        "between-seed SD",
        "I²",
    ]
    return Table(
        "seed_replication",
        "Replication over seeds: per-seed estimates and the across-seed interval",
        _frame(list(cells.values()), cols),
        "Pooled: DerSimonian-Laird random-effects mean over seeds with a Hartung-Knapp "
        "interval (t with k - 1 df, cut to the quantity's range); rates weighted by "
        "their within-seed (question-bootstrap) variance, correlations equally. "
        "Between-seed SD: the square root of tau². I²: the share of the spread of the "
        "per-seed estimates that is between seeds rather than within-seed sampling "
        "noise (– without within-seed variances). Within-source rho here is computed "
        "per seed; the within-source table uses the mean over seeds. A seed without an "
        "estimate (–) is left out of the pooling. *: every seed gave the same value and "
        "there is no within-seed variance, so the interval has no width; that says "
        "nothing about the uncertainty.",
    )


def bystander_table(stats: pl.DataFrame) -> Table:
    rows = []
    for r in stats.filter(pl.col("analysis") == "bystander_vs_assistant").iter_rows(named=True):
        rows.append(
            {
                "arm": _s(r["arm"]),
                "source": _s(r["source"]),
                "seed": _s(r["seed"]),
                "checkpoint": ckpt(r["checkpoint"]),
                "assistant - bystander": pp(r["estimate"]),
                "questions": _s(r["n"]),
                "p": pval(r["p_value"]),
                "method": _s(r["p_method"]),
                "p Holm": pval(r["p_adjusted"]),
                "note": _s(r["note"]),
            }
        )
    return Table(
        "bystander_vs_assistant",
        "Bystander versus assistant leakage",
        _frame(
            rows,
            [
                "arm",
                "source",
                "seed",
                "checkpoint",
                "assistant - bystander",
                "questions",
                "p",
                "method",
                "p Holm",
                "note",
            ],
        ),
        "Assistant rate minus mean bystander rate. p: permutation test paired by question "
        "(the two rates of a question are swapped at random). Near zero means the marker "
        "leaks to the assistant no more than to any other persona.",
    )


def adapters_table(adapters: pl.DataFrame) -> Table:
    rows = []
    for r in adapters.iter_rows(named=True):
        rows.append(
            {
                "arm": _s(r["arm"]),
                "source": _s(r["source"]),
                "seed": _s(r["seed"]),
                "checkpoint": ckpt(r["checkpoint"]),
                "source %": pct(r["source_rate"]),
                "assistant %": pct(r["assistant_rate"]),
                "other personas %": pct(r["other_rate"]),
                "highest other": f"{r['top_other']} ({pct(r['top_other_rate'])})",
                "specificity": num(r["specificity"]),
                "class": r["class"],
            }
        )
    return Table(
        "adapter_quality",
        "Marker adapters before merge (screen)",
        _frame(
            rows,
            [
                "arm",
                "source",
                "seed",
                "checkpoint",
                "source %",
                "assistant %",
                "other personas %",
                "highest other",
                "specificity",
                "class",
            ],
        ),
        "Specificity index: source rate minus the mean rate of all other personas. Absent: the "
        "source never shows the marker; inverted: another persona shows it at least as often as "
        "the source; global: the others' mean is at least half the source rate; specific: "
        "otherwise.",
    )


def comparison_table(stats: pl.DataFrame) -> Table:
    rows = []
    for r in stats.filter(pl.col("analysis") == "specificity_vs_cosine").iter_rows(named=True):
        rows.append(
            {
                "arm": _s(r["arm"]),
                "cosine layer": _layer(r["layer"]),
                "checkpoint": ckpt(r["checkpoint"]),
                "sources": _s(r["n"]),
                "|rho spec| - |rho cos|": num(r["estimate"]),
                "note": _s(r["note"]),
            }
        )
    return Table(
        "specificity_vs_cosine",
        "Does specificity predict assistant leakage better than cosine?",
        _frame(rows, ["arm", "cosine layer", "checkpoint", "sources", "|rho spec| - |rho cos|", "note"]),
        "Positive: specificity ranks the sources' assistant leakage more closely than "
        "cosine does at that layer. Specificity here is source rate minus bystander "
        "rate at the same checkpoint (the assistant is left out to avoid circularity).",
    )


def skipped(stats: pl.DataFrame) -> list[str]:
    out = []
    for r in stats.filter(pl.col("note").str.starts_with("skipped")).iter_rows(named=True):
        y = r["y"] if r["y"] != "assistant_rate" else None
        where = ", ".join(
            f"{k} {v if k != 'checkpoint' else ckpt(v)}"
            for k, v in (
                ("arm", r["arm"]),
                ("source", r["source"]),
                ("seed", r["seed"]),
                ("layer", r["layer"]),
                ("checkpoint", r["checkpoint"]),
                ("alpha", r["alpha"]),
                ("y", y),
            )
            if v is not None
        )
        out.append(f"{r['analysis']} ({where}): {r['note'].removeprefix('skipped: ')}")
    return out


def families(stats: pl.DataFrame) -> pl.DataFrame:
    s = stats.filter(pl.col("family").is_not_null())
    return (
        s.group_by("family")
        .agg(
            pl.len().alias("tests"),
            (pl.col("p_value") < 0.05).sum().alias("p < 0.05"),
            (pl.col("p_adjusted") < 0.05).sum().alias("Holm < 0.05"),
            (pl.col("p_adjusted_bh") < 0.05).sum().alias("BH < 0.05"),
        )
        .sort("family")
        .with_columns(pl.all().cast(pl.String))
    )
