"""The `analyze` stage: metrics.parquet, stats.parquet and stats.md from the scan,
represent and marker-train stages it depends on (docs/plan-format.md)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpx.stages._context import StageContext

if TYPE_CHECKING:
    from cpx.plan import AnalyzeParams


def run(ctx: StageContext) -> dict[str, Any]:
    from cpx.analysis import Options, write_outputs

    p: AnalyzeParams = ctx.params
    opts = Options.from_params({**p.options, "analyses": [dict(a) for a in p.analyses]})
    analysis = analyze_inputs(opts, ctx.inputs, ctx.plan, ctx.log)
    write_outputs(analysis, ctx.out_dir)
    tested = analysis.stats.filter(analysis.stats["p_value"].is_not_null())
    return {
        "metrics_rows": analysis.metrics.height,
        "tests": tested.height,
        "skipped": int(analysis.stats["note"].str.starts_with("skipped").sum()),
        "checkpoint": analysis.checkpoint,
    }


def analyze_inputs(opts: Any, inputs: dict[str, Path], plan: Any, log: Any = None) -> Any:
    """The analysis of an analyze stage's input folders (dep id -> folder), labelled from
    `plan` (None: from each folder's manifest). `cpx analyze RUN_DIR` calls this too, so that
    re-analysing a run with its own plan gives exactly the stats its analyze stage wrote."""
    from cpx.analysis import analyze_tables, steer_layers_of
    from cpx.report import read_folders

    by_id = plan.by_id() if plan is not None else {}
    labels = {d: by_id[d].labels for d in inputs if d in by_id}
    tables = read_folders(
        ((p, labels.get(d)) for d, p in inputs.items()), names=("marker_hits", "leakage", "cosines", "screen")
    )
    if log is not None:
        log.info("analyze: %s", ", ".join(f"{k} {v.height} rows" for k, v in tables.items()))
    analysis = analyze_tables(tables, opts)
    if plan is not None:
        analysis.steer_layers = steer_layers_of(plan.spec)
    return analysis
