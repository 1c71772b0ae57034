"""`cpx report`: regenerate a run's report from its results tables and plan.json."""

from __future__ import annotations

import argparse
import os
import shutil
import uuid
from pathlib import Path

from cpx.cli import EXIT_USAGE, CLIError
from cpx.cli import _latest as latest


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "report",
        help="regenerate a run's report (report.md, report.html, figures/)",
        description=(
            "Rebuild RUN_DIR/report/ from RUN_DIR/results/*.parquet and plan.json: "
            "the spec summary and provenance, the analyses' tables, caveats generated "
            "from the data, and figures (PNG, SVG, interactive HTML)."
        ),
    )
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help=f"the run folder ({latest.HELP})")
    p.add_argument("--out", metavar="DIR", help="write here instead of RUN_DIR/report")
    p.add_argument("--title", help="the report's title (default: 'cpx report: <run name>')")
    p.add_argument(
        "--figures",
        nargs="+",
        metavar="NAME",
        help="only these figures (hero, trajectories, heatmap, cosine_evolution, cosine_vs_leakage, adapter_quality)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cpx.plan import PlanError
    from cpx.report import ReportError, build_report, figure_names, from_run

    run_dir = Path(latest.resolve(args.run_dir, "report"))
    if not run_dir.is_dir():
        raise CLIError(f"{run_dir}: no such folder", EXIT_USAGE)
    planned = _report_params(run_dir)
    try:
        # --figures: only those; else the plan's figures first, then the others
        figures = figure_names(args.figures) if args.figures else figure_names(planned.get("figures"), rest=True)
    except ValueError as e:
        raise CLIError(str(e), EXIT_USAGE) from None
    try:
        data = from_run(run_dir)
    except (ReportError, PlanError) as e:
        raise CLIError(str(e)) from None
    dest = Path(args.out) if args.out else run_dir / "report"
    # Build beside the destination and swap it in, so a failed build leaves the old report.
    tmp = dest.with_name(f".{dest.name}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        info = build_report(data, tmp, title=args.title or planned.get("title"), figures=figures)
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}-old-{uuid.uuid4().hex[:8]}")
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"wrote {dest / 'report.md'}, {dest / 'report.html'} and "
        f"{len(info['figures'])} figures in {info['seconds']['total']:.1f} s"
    )
    return 0


def _report_params(run_dir: Path) -> dict:  # type: ignore[type-arg]
    """The params (title, figures) of the plan's report stage; empty without one."""
    import json

    try:
        stages = json.loads((run_dir / "plan.json").read_text())["stages"]
        return dict([s for s in stages if s.get("kind") == "report"][-1].get("params") or {})
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return {}
