"""The `analyze` stage: metrics.parquet, stats.parquet and stats.md from the scan,
represent and marker-train stages it depends on (docs/plan-format.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cpx.stages._context import StageContext


def _labels(ctx: StageContext) -> dict[str, dict[str, Any]]:
    """Each input stage's labels from plan.json (empty when there is no plan: the input
    folders' manifests say the same)."""
    from cpx.plan import Plan, PlanError

    try:
        by_id = Plan.load(Path(ctx.run_dir)).by_id()
    except (PlanError, OSError):
        return {}
    return {d: by_id[d].labels for d in ctx.inputs if d in by_id}


def run(ctx: StageContext) -> dict[str, Any]:
    from cpx.analysis import Options, analyze_tables, write_outputs
    from cpx.report._inputs import read_folders

    opts = Options.from_params(ctx.params)
    labels = _labels(ctx)
    tables = read_folders(((p, labels.get(d)) for d, p in ctx.inputs.items()),
                          names=("marker_hits", "leakage", "cosines", "screen"))
    ctx.log.info("analyze: %s", ", ".join(f"{k} {v.height} rows" for k, v in tables.items()))
    analysis = analyze_tables(tables, opts)
    write_outputs(analysis, ctx.out_dir)
    tested = analysis.stats.filter(analysis.stats["p_value"].is_not_null())
    return {"metrics_rows": analysis.metrics.height, "tests": tested.height,
            "skipped": int(analysis.stats["note"].str.starts_with("skipped").sum()),
            "checkpoint": analysis.checkpoint}
