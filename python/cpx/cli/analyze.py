"""`cpx analyze`: the statistics of a run, or of any per-checkpoint metrics table."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cpx.cli import EXIT_USAGE, CLIError
from cpx.cli import _latest as latest


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "analyze",
        help="compute the statistics (stats.parquet, stats.md) of a run or a metrics table",
        description=(
            "Run the analyses on a run (RUN_DIR: as its analyze stage did, with the spec's analysis "
            "settings and the same inputs, so the stats table comes out the same) or on a per-checkpoint metrics "
            "table (--metrics FILE, CSV or Parquet with columns arm, source, seed, checkpoint, "
            "layer, cosine, source_rate, assistant_rate, bystander_rate; missing values "
            "allowed), e.g. one typed in from a paper. Writes stats.parquet and stats.md "
            "(and, for a run, metrics.parquet) into --out."
        ),
    )
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help=f"a run folder (without --metrics: {latest.HELP})")
    p.add_argument("--metrics", metavar="FILE", help="analyse this metrics table instead of a run")
    p.add_argument("--out", metavar="DIR", help="output folder (required with --metrics; default RUN_DIR/analysis)")
    p.add_argument(
        "--checkpoint",
        type=float,
        metavar="F",
        help="the checkpoint of the between-source test and cross-arm table (default: the run's own "
        "analysis settings, else the last)",
    )
    p.add_argument(
        "--n-resamples",
        type=int,
        metavar="N",
        help="Monte Carlo resamples where an exact test is too large (default: the run's own, else 9999)",
    )
    p.add_argument("--seed", type=int, help="seed of the resampling (default: the run's own, else 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cpx.analysis import MetricsError, Options, analyze_metrics, read_metrics, write_outputs

    given = {
        k: v
        for k, v in (("checkpoint", args.checkpoint), ("n_resamples", args.n_resamples), ("seed", args.seed))
        if v is not None
    }
    if args.metrics:
        if args.run_dir:
            raise CLIError("give either RUN_DIR or --metrics FILE, not both", EXIT_USAGE)
        if not args.out:
            raise CLIError("--metrics needs --out DIR", EXIT_USAGE)
        try:
            analysis = analyze_metrics(read_metrics(args.metrics), Options(**given))
        except MetricsError as e:
            raise CLIError(str(e), EXIT_USAGE) from None
        written = write_outputs(analysis, args.out, metrics=False)
    else:
        args.run_dir = latest.resolve(args.run_dir, "analyze")
        analysis = _analyze_run(Path(args.run_dir), given)
        written = write_outputs(analysis, args.out or Path(args.run_dir) / "analysis")
    s = analysis.stats
    tested = int(s["p_value"].is_not_null().sum())
    skipped = int(s["note"].str.starts_with("skipped").sum())
    print(f"{tested} p-values, {skipped} tests skipped (see stats.md)")
    for p in written:
        print(f"wrote {p}")
    return 0


def _analyze_run(run_dir: Path, given: dict[str, Any]) -> Any:
    """A run's analysis as its analyze stage made it: that stage's params (the spec's analysis
    settings) and input folders, with the options given on the command line on top. A run
    without an analyze stage (or whose inputs are gone) is analysed from results/ with the
    defaults."""
    import dataclasses

    import polars as pl

    from cpx.analysis import Options, analyze_tables
    from cpx.plan import Plan, PlanError
    from cpx.report import screens
    from cpx.stages.analyze import analyze_inputs

    try:
        plan = Plan.load(run_dir) if (run_dir / "plan.json").exists() else None
    except PlanError as e:
        raise CLIError(str(e)) from None
    stage = next((s for s in reversed(plan.stages) if s.kind == "analyze"), None) if plan else None
    if plan is not None and stage is not None:
        by_id = plan.by_id()
        inputs = {d: run_dir / "stages" / by_id[d].kind / by_id[d].hash for d in stage.deps}
        if all(p.is_dir() for p in inputs.values()):
            try:
                own = Options.from_params(stage.params)
                if "checkpoint" in given:  # --checkpoint wins over the analyses' own checkpoints
                    given["per"] = {a: {k: v for k, v in o.items() if k != "checkpoint"} for a, o in own.per.items()}
                opts = dataclasses.replace(own, **given)
                return analyze_inputs(opts, inputs, plan)
            except ValueError as e:
                raise CLIError(str(e)) from None
    res = run_dir / "results"
    tables = {
        n: pl.read_parquet(res / f"{n}.parquet")
        for n in ("marker_hits", "leakage", "cosines", "screen")
        if (res / f"{n}.parquet").is_file()
    }
    if "marker_hits" not in tables and "leakage" not in tables:
        raise CLIError(f"{res}: no marker_hits or leakage table; run `cpx execute {run_dir}` first")
    if "screen" not in tables and plan is not None:
        screen = screens(run_dir, plan.stages)
        if screen is not None:
            tables["screen"] = screen
    try:
        return analyze_tables(tables, Options(**given))
    except ValueError as e:
        raise CLIError(str(e)) from None
