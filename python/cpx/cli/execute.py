"""`cpx execute RUN_DIR`: run what is not done of a compiled plan, then collect the results."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_LOCKED = 3


def register(sub: Any) -> None:
    p = sub.add_parser(
        "execute",
        help="run a compiled plan (resumes: only stages that are not done run)",
        description=(
            "Run every stage of RUN_DIR/plan.json that is not done, one worker per device, then "
            "collect the results tables into RUN_DIR/results and the report into RUN_DIR/report. "
            "Safe to kill at any moment and run again: finished stages are kept, the stage in "
            "flight starts over."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `cpx compile`")
    p.add_argument(
        "--devices",
        default="auto",
        help="auto (every visible GPU, else the CPU), cpu, cpu:N (N CPU workers), "
        "or GPU indices such as 0,1 (default: auto)",
    )
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local worker processes (default) or a Ray cluster",
    )
    p.add_argument(
        "--address", default=None, help="Ray cluster address (with --executor ray; default: start a local one)"
    )
    p.add_argument(
        "--keep-going", action="store_true", help="after a stage fails, go on with the stages that do not depend on it"
    )
    p.add_argument(
        "--retry",
        type=int,
        default=0,
        metavar="N",
        help="run a failed stage up to N more times before giving up (default 0)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display, only the summary")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cpx.cli import CLIError
    from cpx.execute import DeviceError, RunLocked, TrackingError, execute
    from cpx.plan import PlanError

    if args.retry < 0:
        raise CLIError(f"--retry must be 0 or more, got {args.retry}", 2)
    if args.address and args.executor != "ray":
        raise CLIError("--address only applies with --executor ray", 2)
    try:
        summary = execute(
            args.run_dir,
            devices=args.devices,
            executor=args.executor,
            address=args.address,
            keep_going=args.keep_going,
            retry=args.retry,
            quiet=args.quiet,
        )
    except RunLocked as e:
        raise CLIError(str(e), EXIT_LOCKED) from None
    except (PlanError, DeviceError, TrackingError) as e:
        raise CLIError(str(e), 2) from None
    except ImportError as e:
        if args.executor == "ray" and "ray" in str(e):
            raise CLIError("--executor ray needs Ray: pip install 'cpx[ray]'", 2) from None
        raise
    if args.json:
        json.dump(summary.to_json(), sys.stdout, indent=1)
        print()
    else:
        print_summary(summary)
    return summary.exit_code


def print_summary(summary: Any) -> None:
    out = sys.stdout
    n_ran, n_cached = len(summary.ran), len(summary.cached)
    head = "done" if summary.ok else "incomplete"
    print(
        f"{head}: {summary.total} stages: {n_ran} ran, {n_cached} already done, "
        f"{len(summary.failed)} failed, {len(summary.blocked)} blocked, "
        f"{len(summary.not_started)} not started ({summary.seconds:.1f} s)",
        file=out,
    )
    for f in summary.failed:
        print(f"  FAILED {f.id} after {f.attempts} attempt(s): {f.error}\n    log: {f.log}", file=out)
    if summary.blocked:
        print(f"  blocked by a failure: {', '.join(summary.blocked)}", file=out)
    if summary.not_started:
        print(
            f"  not started (stopped at the first failure; --keep-going goes on): {', '.join(summary.not_started)}",
            file=out,
        )
    tables = [t for t, r in (summary.results.get("tables") or {}).items() if r.get("rows")]
    if tables:
        print(f"  results: {summary.run_dir}/results/ ({', '.join(tables)})", file=out)
    rep = summary.results.get("report")
    if rep and rep.get("copied"):
        print(f"  report: {summary.run_dir}/report/", file=out)
