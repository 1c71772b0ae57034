"""`cpx analyze`: the statistics of a run, or of any per-checkpoint metrics table."""

from __future__ import annotations

import argparse
from pathlib import Path

from cpx.cli import EXIT_USAGE, CLIError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "analyze",
        help="compute the statistics (stats.parquet, stats.md) of a run or a metrics table",
        description=(
            "Run the analyses on a run's results (RUN_DIR) or on a per-checkpoint metrics "
            "table (--metrics FILE, CSV or Parquet with columns arm, source, seed, checkpoint, "
            "layer, cosine, source_rate, assistant_rate, bystander_rate; missing values "
            "allowed), e.g. one typed in from a paper. Writes stats.parquet and stats.md "
            "(and, for a run, metrics.parquet) into --out."
        ),
    )
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a run folder (default: none)")
    p.add_argument("--metrics", metavar="FILE", help="analyse this metrics table instead of a run")
    p.add_argument("--out", metavar="DIR", help="output folder (required with --metrics; default RUN_DIR/analysis)")
    p.add_argument(
        "--checkpoint",
        type=float,
        metavar="F",
        help="the checkpoint of the between-source test and cross-arm table (default: the last)",
    )
    p.add_argument(
        "--n-resamples",
        type=int,
        default=9999,
        metavar="N",
        help="Monte Carlo resamples where an exact test is too large (default 9999)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cpx.analysis import MetricsError, Options, analyze_metrics, read_metrics, write_outputs

    opts = Options(checkpoint=args.checkpoint, n_resamples=args.n_resamples, seed=args.seed)
    if args.metrics:
        if args.run_dir:
            raise CLIError("give either RUN_DIR or --metrics FILE, not both", EXIT_USAGE)
        if not args.out:
            raise CLIError("--metrics needs --out DIR", EXIT_USAGE)
        try:
            analysis = analyze_metrics(read_metrics(args.metrics), opts)
        except MetricsError as e:
            raise CLIError(str(e), EXIT_USAGE) from None
        written = write_outputs(analysis, args.out, metrics=False)
    else:
        if not args.run_dir:
            raise CLIError("give RUN_DIR or --metrics FILE (see cpx analyze --help)", EXIT_USAGE)
        analysis = _analyze_run(Path(args.run_dir), opts)
        written = write_outputs(analysis, args.out or Path(args.run_dir) / "analysis")
    s = analysis.stats
    tested = int(s["p_value"].is_not_null().sum())
    skipped = int(s["note"].str.starts_with("skipped").sum())
    print(f"{tested} p-values, {skipped} tests skipped (see stats.md)")
    for p in written:
        print(f"wrote {p}")
    return 0


def _analyze_run(run_dir: Path, opts):  # type: ignore[no-untyped-def]
    import polars as pl

    from cpx.analysis import analyze_tables
    from cpx.report import screens
    from cpx.plan import Plan, PlanError

    res = run_dir / "results"
    tables = {
        n: pl.read_parquet(res / f"{n}.parquet")
        for n in ("marker_hits", "leakage", "cosines", "screen")
        if (res / f"{n}.parquet").is_file()
    }
    if "marker_hits" not in tables and "leakage" not in tables:
        raise CLIError(f"{res}: no marker_hits or leakage table; run `cpx execute {run_dir}` first")
    if "screen" not in tables and (run_dir / "plan.json").exists():
        try:
            screen = screens(run_dir, Plan.load(run_dir).stages)
        except PlanError as e:
            raise CLIError(str(e)) from None
        if screen is not None:
            tables["screen"] = screen
    try:
        return analyze_tables(tables, opts)
    except ValueError as e:
        raise CLIError(str(e)) from None
