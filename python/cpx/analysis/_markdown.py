"""stats.md: every analysis as a Markdown table, with how each number was computed."""

from __future__ import annotations

import polars as pl

from cpx.analysis import _tables as T
from cpx.analysis._metrics import trained
from cpx.analysis._run import Analysis


def md_table(frame: pl.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of a frame of strings."""

    def cell(v: object) -> str:
        return str(v if v is not None else T.DASH).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join([head, rule, *body])


def tables(analysis: Analysis) -> list[T.Table]:
    """The display tables of analyses 1-6, steering and seed_replication that have something
    to show, in report order."""
    # steer arms' rows have tables of their own, from the stats rows of `steering`
    s, m, opts = analysis.stats, trained(analysis.metrics), analysis.options
    out: list[T.Table] = []
    if "leakage_by_role" in opts.analyses:
        out.append(T.leakage_table(m))
    if "cross_arm" in opts.analyses:
        out.append(T.cross_arm(m, analysis.checkpoint, opts.confidence_level))
    if "within_source" in opts.analyses:
        out.append(T.within_table(s))
    if "between_source" in opts.analyses:
        out.append(T.between_table(s))
    if "pseudo_replication" in opts.analyses:
        out.append(T.pooled_table(s))
    if "bystander_vs_assistant" in opts.analyses:
        out.append(T.bystander_table(s))
    if "marker_specificity" in opts.analyses:
        if analysis.adapters is not None and analysis.adapters.height:
            out.append(T.adapters_table(analysis.adapters))
        out.append(T.within_table(s, "specificity_within_source", "specificity"))
        out.append(T.between_table(s, "specificity_between_source", "specificity"))
        out.append(T.pooled_table(s, "specificity_pooled", "specificity"))
        out.append(T.comparison_table(s))
    if "steering" in opts.analyses:
        out.append(T.steering_curve_table(s, analysis.steer_layers))
        out.append(T.steering_table(s))
        out.append(T.pooled_table(s, "steering_pooled"))
    if "seed_replication" in opts.analyses:
        out.append(T.seed_table(s))
    return [t for t in out if t.frame.height]


def render_table(t: T.Table, level: int = 2) -> str:
    return f"{'#' * level} {t.title}\n\n{md_table(t.frame)}\n\n{t.caption}\n"


def stats_markdown(analysis: Analysis, *, title: str = "Statistics") -> str:
    """The whole stats.md."""
    parts = [
        f"# {title}\n",
        "Every number below is computed from the data by cpx; p-values say how they were "
        "computed. Tests with too few points are skipped and listed at the end.\n",
    ]
    for t in tables(analysis):
        parts.append(render_table(t))
    fam = T.families(analysis.stats)
    if fam.height:
        parts.append(
            "## Multiple comparisons\n\n" + md_table(fam) + "\n\n"
            "A family is one analysis in one arm with one kind of p-value. Holm "
            "controls the family-wise error rate, Benjamini-Hochberg (BH) the false "
            "discovery rate; stats.parquet holds raw and adjusted p-values "
            "(`p_value`, `p_adjusted`, `p_adjusted_bh`).\n"
        )
    notes = analysis.notes + [f"skipped: {s}" for s in T.skipped(analysis.stats)]
    if notes:
        parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    return "\n".join(parts)
