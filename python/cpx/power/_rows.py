"""Power rows per declared analysis, the warnings, and the report's table."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl

from cpx.power import _calc
from cpx.power._design import Design, PowerError, check_vary, design_of

# Reachable comparisons that still need an effect at least this large are flagged as
# underpowered: a rank correlation of 0.8, a rate difference of 10 percentage points.
LARGE_RHO = 0.8
LARGE_PP = 10.0
RATE = "rate difference (pp)"
RHO = "|rho| (bivariate normal)"
Row = dict[str, Any]
SCHEMA = {
    "analysis": pl.String,
    "design": pl.String,
    "n": pl.Int64,
    "effect_kind": pl.String,
    "min_effect": pl.Float64,
    "reachable": pl.Boolean,
    "note": pl.String,
    "vary": pl.String,
    "value": pl.Int64,
    "holm_tests": pl.Int64,
    "holm_min_p": pl.Float64,
}


def _row(analysis: str, design: str, n: int, kind: str, eff: _calc.Effect, *notes: str) -> Row:
    value = None if eff.value is None else (100 * eff.value if kind == RATE else eff.value)
    note = "; ".join(x for x in (eff.note, *notes) if x)
    return {
        "analysis": analysis,
        "design": design,
        "n": n,
        "effect_kind": kind,
        "min_effect": value,
        "reachable": eff.reachable,
        "note": note,
    }


def _groups(counts: dict[str, int]) -> list[tuple[int, list[str]]]:
    """Arms grouped by their count: [(n, [arms])], by n."""
    by: dict[int, list[str]] = {}
    for arm, n in counts.items():
        by.setdefault(n, []).append(arm)
    return sorted(by.items())


def _arms(arms: list[str]) -> str:
    return ("arm " if len(arms) == 1 else "arms ") + ", ".join(arms)


@lru_cache(maxsize=256)
def _rank(n: int, alpha: float, power: float, simulations: int) -> _calc.Effect:
    return _calc.spearman_min_rho(n, alpha, power, simulations=simulations)


@lru_cache(maxsize=256)
def _cluster(k: int, per: int, alpha: float, power: float, simulations: int) -> _calc.Effect:
    return _calc.cluster_min_rho(k, per, alpha, power, simulations=simulations)


def _deff(d: Design, m: int) -> float:
    return 1 + (m - 1) * d.icc


def _leakage(d: Design) -> list[Row]:
    s = d.settings
    deff = _deff(d, d.completions)
    n = d.questions * d.completions
    eff = _calc.rate_difference(n_eff=n / deff, base_rate=s.base_rate, alpha=s.alpha, power=s.power)
    return [
        _row(
            "leakage",
            f"two arms' assistant rates: {d.questions} questions x {d.completions} completions "
            f"each, design effect {deff:.2f}",
            n,
            RATE,
            eff,
            f"two-sided z test of independent rates, questions as clusters (ICC {d.icc:.3f})",
        )
    ]


def _bystander(d: Design) -> list[Row]:
    s = d.settings
    q, ma, mb, b = d.questions, d.completions, d.bystander_completions, d.bystanders
    design = f"{q} questions as pairs: assistant ({ma}) vs mean of {b} bystanders ({mb} each)"
    if b == 0:
        return [_row("bystander_vs_assistant", design, q, RATE, _calc.Effect(None, False, "no bystanders"))]
    min_p = _calc.sign_flip_min_p(q)
    if min_p >= s.alpha - _calc.P_TOL:
        eff = _calc.Effect(
            None,
            False,
            f"cannot reach p < {s.alpha:g} at any effect: {q} questions give "
            f"2^{q} sign flips, the smallest two-sided p is {min_p:.3g}",
        )
        return [_row("bystander_vs_assistant", design, q, RATE, eff)]
    p0 = s.base_rate
    var0 = p0 * (1 - p0) * _deff(d, mb) / (mb * b)
    eff = _calc.paired_rate_difference(
        pairs=q,
        var0=var0,
        var1=lambda p1: p1 * (1 - p1) * _deff(d, ma) / ma,
        alpha=s.alpha,
        power=s.power,
        base_rate=p0,
    )
    return [_row("bystander_vs_assistant", design, q, RATE, eff, "sign-flip test paired by question, t approximation")]


def _rank_rows(
    analysis: str,
    what: str,
    counts: dict[str, int],
    unit: str,
    d: Design,
    missing: str,
    per_seed: bool = False,
    family: Callable[[str], int] | None = None,
) -> list[Row]:
    """Exact rank tests with `counts[arm]` points. `family(arm)`: how many such tests share the
    arm's Holm family (cpx adjusts within one analysis, arm and kind of p-value)."""
    s = d.settings
    if not counts:
        return [_row(analysis, what, 0, RHO, _calc.Effect(None, False, missing))]
    seeds = ""
    if d.seeds > 1:
        seeds = f"one test per seed ({d.seeds})" if per_seed else f"rank test on the mean over {d.seeds} seeds"
    rows = []
    for n, arms in _groups(counts):
        eff = _rank(n, s.alpha, s.power, s.simulations)
        m = max(family(a) for a in arms) if family is not None else 1
        holm = ""
        if eff.reachable and m > 1:
            floor = min(1.0, m * _calc.spearman_min_p(n))
            holm = (
                f"Holm over the {m} tests of its family: the smallest adjusted p is {m} x "
                f"{_calc.spearman_min_p(n):.3g} = {floor:.3g}"
            )
            if floor >= s.alpha - _calc.P_TOL:
                holm += f", so no test of the family passes at {s.alpha:g} after adjustment"
        rows.append(
            {
                **_row(analysis, f"{what}, {_arms(arms)}: {n} {unit}", n, RHO, eff, seeds, holm),
                "holm_tests": m,
                "holm_min_p": min(1.0, m * _calc.spearman_min_p(n)),
            }
        )
    return rows


def _pooled(d: Design, analysis: str = "pseudo_replication", steer: bool = False) -> list[Row]:
    s = d.settings
    rows: list[Row] = []
    counts, unit = (d.alphas, "strengths") if steer else (d.checkpoints, "checkpoints")
    pairs = {a: (d.sources[a], counts[a]) for a in counts if a in d.sources}
    if not pairs:
        what = "no steer arm with sources" if steer else "no train arm with sources"
        return [_row(analysis, "pooled points", 0, RHO, _calc.Effect(None, False, what))]
    by: dict[tuple[int, int], list[str]] = {}
    for a, kc in pairs.items():
        by.setdefault(kc, []).append(a)
    for (k, c), arms in sorted(by.items()):
        eff = _cluster(k, c, s.alpha, s.power, s.simulations)
        rows.append(
            _row(
                analysis,
                f"pooled, {_arms(arms)}: {k} sources x {c} {unit}, sources permuted",
                k * c,
                RHO,
                eff,
                "points independent within a source (optimistic)",
            )
        )
    return rows


def _seeds(d: Design) -> list[Row]:
    s = d.settings
    n = d.seeds
    design = f"{n} seed(s) as clusters, {d.questions} questions x {d.completions} completions a seed"
    if n < 2:
        eff = _calc.Effect(None, False, "one seed: no between-seed variance to estimate")
        return [_row("seed_replication", design, n, RATE, eff)]
    deff = _deff(d, d.completions)
    per_seed = d.questions * d.completions / deff
    p0 = s.base_rate
    eff = _calc.paired_rate_difference(
        pairs=n,
        var0=p0 * (1 - p0) / per_seed,
        var1=lambda p1: p1 * (1 - p1) / per_seed,
        alpha=s.alpha,
        power=s.power,
        base_rate=p0,
    )
    return [
        _row(
            "seed_replication",
            design,
            n,
            RATE,
            eff,
            f"the difference between two arms' rates that a t test over the {n} seeds' estimates "
            f"detects (df {n - 1}; seed_replication's across-seed intervals use the same t), with no "
            "between-seed variance assumed: a lower bound",
        )
    ]


def _analysis_rows(d: Design) -> list[Row]:
    handlers: dict[str, Callable[[Design], list[Row]]] = {
        "leakage": _leakage,
        "leakage_by_role": _leakage,
        "cross_arm": _leakage,
        "within_source": lambda d: _rank_rows(
            "within_source",
            "within source over checkpoints",
            d.checkpoints,
            "checkpoints",
            d,
            "no train arm with checkpoints",
            family=lambda a: d.sources.get(a, 1) * d.layers.get("within_source", 1),
        ),
        "between_source": lambda d: _rank_rows(
            "between_source",
            "between sources at one checkpoint",
            {a: n for a, n in d.sources.items() if a in d.checkpoints},
            "sources",
            d,
            "no train arm with sources",
            family=lambda a: d.layers.get("between_source", 1),
        ),
        "pseudo_replication": _pooled,
        "bystander_vs_assistant": _bystander,
        "adapter_specificity": lambda d: [
            *_rank_rows(
                "adapter_specificity",
                "specificity vs leakage within source",
                d.checkpoints,
                "checkpoints",
                d,
                "no train arm with checkpoints",
            ),
            *_rank_rows(
                "adapter_specificity",
                "specificity vs leakage between sources",
                {a: n for a, n in d.sources.items() if a in d.checkpoints},
                "sources",
                d,
                "no train arm with sources",
            ),
        ],
        "steering": lambda d: [
            *_rank_rows(
                "steering",
                "leakage vs achieved cosine over strengths",
                d.alphas,
                "strengths",
                d,
                "no steer arm",
                per_seed=True,
                # per source, seed and layer, for the assistant's (and the bystanders') leakage
                family=lambda a: d.sources.get(a, 1) * d.seeds * d.steer_layers.get(a, 1) * (2 if d.bystanders else 1),
            ),
            *_pooled(d, "steering", steer=True),
        ],
        "seed_replication": _seeds,
    }
    handlers["marker_specificity"] = handlers["adapter_specificity"]
    return [{**r, "analysis": name} for name in d.analyses if name in handlers for r in handlers[name](d)]


def power_rows(plan: Any, vary: dict[str, list[int]] | None = None, *, base: str | Path | None = None) -> pl.DataFrame:
    """One row per declared analysis and design group (arms with the same counts), times each
    `vary` value: the smallest effect detected at the spec's alpha (two-sided) with its power.

    Columns: `analysis`, `design` (the counts in words), `n` (points, pairs or completions
    the test sees), `effect_kind`, `min_effect` (percentage points or |rho|; null when no
    effect reaches the power), `reachable`, `note`, `vary`/`value` (the varied key and
    its value; null for the plan's own design), and for exact rank tests `holm_tests` (the
    tests in its Holm family) and `holm_min_p` (the smallest Holm-adjusted p they can reach).
    `base`: the folder a relative `power.from_run` is relative to (the spec's folder; default:
    the current directory).
    """
    return rows_of(design_of(plan, base=base), vary)


def rows_of(d: Design, vary: dict[str, list[int]] | None = None) -> pl.DataFrame:
    """`power_rows` of a design already read (the ICC of a `from_run` is read once)."""
    vary = check_vary(vary, d)
    blank = {"holm_tests": None, "holm_min_p": None}
    rows = [{**blank, **r, "vary": None, "value": None} for r in _analysis_rows(d)]
    for key, values in vary.items():
        for v in values:
            rows += [{**blank, **r, "vary": key, "value": v} for r in _analysis_rows(d.with_(key, v))]
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")


def warnings_of(rows: pl.DataFrame, alpha: float) -> list[str]:
    """Unreachable and underpowered comparisons among `rows` (the plan's own design only)."""
    out: list[str] = []
    for r in rows.filter(pl.col("vary").is_null()).iter_rows(named=True):
        head = f"power: {r['analysis']} ({r['design']})"
        if not r["reachable"]:
            out.append(f"{head}: {r['note'] or 'no effect reaches the power'}")
        elif r["holm_min_p"] is not None and r["holm_min_p"] >= alpha - _calc.P_TOL:
            out.append(
                f"{head}: no test can pass after Holm over the {r['holm_tests']} tests of its family "
                f"(smallest adjusted p {r['holm_min_p']:.3g})"
            )
        elif r["effect_kind"] == RHO and r["min_effect"] >= LARGE_RHO:
            out.append(f"{head}: underpowered, only |rho| >= {r['min_effect']:.2f} is detected at p < {alpha:g}")
        elif r["effect_kind"] == RATE and r["min_effect"] >= LARGE_PP:
            out.append(
                f"{head}: underpowered, only a rate difference of {r['min_effect']:.1f} pp or more is "
                f"detected at p < {alpha:g}"
            )
    return out


def power_warnings(plan: Any, *, base: str | Path | None = None) -> list[str]:
    """Warnings for declared comparisons that cannot reach p < alpha or need a large effect."""
    d = design_of(plan, base=base)
    return warnings_of(rows_of(d), d.settings.alpha)


def _effect_text(r: Row) -> str:
    if r["min_effect"] is None:
        return "unreachable" if not r["reachable"] else "–"
    if r["effect_kind"] == RATE:
        return f"{r['min_effect']:.1f} pp"
    return f"|rho| {r['min_effect']:.2f}"


def display(rows: pl.DataFrame) -> pl.DataFrame:
    """`power_rows` as display strings."""
    varied = rows["vary"].drop_nulls().len() > 0
    out = []
    for r in rows.iter_rows(named=True):
        d: Row = {}
        if varied:
            d["Varied"] = "plan" if r["vary"] is None else f"{r['vary']}={r['value']}"
        d |= {
            "Analysis": r["analysis"],
            "Design": r["design"],
            "n": str(r["n"]),
            "Smallest effect": _effect_text(r),
            "Note": r["note"] or "",
        }
        out.append(d)
    cols = (["Varied"] if varied else []) + ["Analysis", "Design", "n", "Smallest effect", "Note"]
    return pl.DataFrame(out, schema={c: pl.String for c in cols}, orient="row")


def caption(d: Design) -> str:
    s = d.settings
    return (
        f"The smallest effect each declared analysis detects at alpha = {s.alpha:g} (two-sided) with "
        f"{s.power:.0%} power. Rates: increase over a base rate of {100 * s.base_rate:g}%, questions as "
        f"clusters with ICC {d.icc:.3f} ({d.icc_from}). Rank tests: the population correlation of a "
        f"bivariate normal, power by {s.simulations} seeded simulations against cpx's exact null. "
        "See docs/power.md."
    )


def power_table(plan: Any, *, base: str | Path | None = None) -> Any:
    """The report's power table (cpx.analysis._tables.Table, key "power")."""
    from cpx.analysis import Table

    d = design_of(plan, base=base)
    return Table(key="power", title="Power: smallest detectable effects", frame=display(rows_of(d)), caption=caption(d))


def format_text(frame: pl.DataFrame) -> str:
    """A display frame as an aligned plain-text table."""
    cols = frame.columns
    cells = [[str(v) for v in row] for row in frame.iter_rows()]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


__all__ = [
    "PowerError",
    "caption",
    "display",
    "format_text",
    "power_rows",
    "power_table",
    "power_warnings",
    "rows_of",
    "warnings_of",
]
