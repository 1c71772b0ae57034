"""The `analyze` stage: metrics.parquet, stats.parquet and stats.md from the scan,
represent and marker-train stages it depends on (docs/plan-format.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cpx.stages._context import StageContext


def _plan(ctx: StageContext) -> Any:
    """The run's plan, None when there is no plan.json (the input folders' manifests then
    give the labels)."""
    from cpx.plan import Plan, PlanError

    try:
        return Plan.load(Path(ctx.run_dir))
    except (PlanError, OSError):
        return None


def run(ctx: StageContext) -> dict[str, Any]:
    from cpx.analysis import Options, analyze_tables, write_outputs
    from cpx.report import read_folders

    from cpx.analysis import steer_layers_of

    opts = Options.from_params(ctx.params)
    plan = _plan(ctx)
    by_id = plan.by_id() if plan is not None else {}
    labels = {d: by_id[d].labels for d in ctx.inputs if d in by_id}
    tables = read_folders(
        ((p, labels.get(d)) for d, p in ctx.inputs.items()), names=("marker_hits", "leakage", "cosines", "screen")
    )
    ctx.log.info("analyze: %s", ", ".join(f"{k} {v.height} rows" for k, v in tables.items()))
    analysis = analyze_tables(tables, opts)
    if plan is not None:
        analysis.steer_layers = steer_layers_of(plan.spec)
    write_outputs(analysis, ctx.out_dir)
    tested = analysis.stats.filter(analysis.stats["p_value"].is_not_null())
    return {
        "metrics_rows": analysis.metrics.height,
        "tests": tested.height,
        "skipped": int(analysis.stats["note"].str.starts_with("skipped").sum()),
        "checkpoint": analysis.checkpoint,
    }
