"""The `report` stage: report.md, report.html and figures/ into its out_dir (the executor
copies them to `<run>/report/`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cpx.stages._context import StageContext

if TYPE_CHECKING:
    from cpx.plan import ReportParams


def run(ctx: StageContext) -> dict[str, Any]:
    from cpx.report import build_report, figure_names, from_stage

    # The spec's list says which figures come first; the report shows every figure its
    # data allow, so that no analysis goes without its picture.
    p: ReportParams = ctx.params
    figures = figure_names(list(p.figures), rest=True)  # checked before any work
    data = from_stage(ctx.stage, ctx.inputs, ctx.run_dir, ctx.plan)
    info = build_report(data, ctx.out_dir, title=p.title, figures=figures)
    ctx.log.info("report: %s", info)
    return info
