"""`cpx report`: regenerate a run's report from its results tables and plan.json."""

from __future__ import annotations

import argparse
import os
import shutil
import uuid
from pathlib import Path

from cpx.cli import EXIT_USAGE, CLIError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "report",
        help="regenerate a run's report (report.md, report.html, figures/)",
        description=("Rebuild RUN_DIR/report/ from RUN_DIR/results/*.parquet and plan.json: "
                     "the spec summary and provenance, the analyses' tables, caveats generated "
                     "from the data, and figures (PNG, SVG, interactive HTML)."),
    )
    p.add_argument("run_dir", nargs="?", default=".", metavar="RUN_DIR",
                   help="the run folder (default: the current folder)")
    p.add_argument("--out", metavar="DIR", help="write here instead of RUN_DIR/report")
    p.add_argument("--title", help="the report's title (default: 'cpx report: <run name>')")
    p.add_argument("--figures", nargs="+", metavar="NAME",
                   help="only these figures (hero, trajectories, heatmap, cosine_evolution, "
                        "cosine_vs_leakage, adapter_quality)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cpx.plan import PlanError
    from cpx.report import FIGURES, ReportError, build_report, from_run

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise CLIError(f"{run_dir}: no such folder", EXIT_USAGE)
    figures = tuple(args.figures or FIGURES)
    bad = [f for f in figures if f not in FIGURES]
    if bad:
        raise CLIError(f"unknown figure(s) {', '.join(bad)}; known: {', '.join(FIGURES)}",
                       EXIT_USAGE)
    try:
        data = from_run(run_dir)
    except (ReportError, PlanError) as e:
        raise CLIError(str(e)) from None
    dest = Path(args.out) if args.out else run_dir / "report"
    # Build beside the destination and swap it in, so a failed build leaves the old report.
    tmp = dest.with_name(f".{dest.name}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        info = build_report(data, tmp, title=args.title, figures=figures)
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}-old-{uuid.uuid4().hex[:8]}")
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {dest / 'report.md'}, {dest / 'report.html'} and "
          f"{len(info['figures'])} figures in {info['seconds']['total']:.1f} s")
    return 0
