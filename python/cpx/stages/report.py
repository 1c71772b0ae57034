"""The `report` stage: report.md, report.html and figures/ into its out_dir (the executor
copies them to `<run>/report/`)."""

from __future__ import annotations

from typing import Any

from cpx.stages._context import StageContext


def run(ctx: StageContext) -> dict[str, Any]:
    from cpx.report import FIGURES, build_report, from_stage

    data = from_stage(ctx.stage, ctx.inputs, ctx.run_dir)
    figures = ctx.params.get("figures") or FIGURES
    unknown = [f for f in figures if f not in FIGURES]
    if unknown:
        raise ValueError(f"report params: unknown figure(s) {', '.join(unknown)}; "
                         f"known: {', '.join(FIGURES)}")
    info = build_report(data, ctx.out_dir, title=ctx.params.get("title"), figures=tuple(figures))
    ctx.log.info("report: %s", info)
    return info
