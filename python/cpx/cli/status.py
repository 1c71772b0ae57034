"""`cpx status [RUN_DIR]`: every stage as done, running, failed or pending, with its timing."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cpx.cli import _latest as latest


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="show which stages of a run are done, running, failed or pending",
        description="List every stage of RUN_DIR/plan.json with its state and timing, then the counts and "
        "how long the workers sat idle before the done stages (per kind, and the longest wait).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="?", help=f"run folder ({latest.HELP})")
    p.add_argument("--json", action="store_true", help="one JSON object: stages and counts")
    p.add_argument(
        "--verify", action="store_true", help="also compare every output's sha256 with its manifest (slower)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cpx.cli import CLIError
    from cpx.execute import STATES, idle_summary, offline_runs, run_status, upload_hint
    from cpx.plan import PlanError

    args.run_dir = latest.resolve(args.run_dir, "status")
    try:
        rows = run_status(args.run_dir, verify=args.verify)
    except PlanError as e:
        raise CLIError(str(e), 2) from None
    counts = {s: sum(1 for r in rows if r.state == s) for s in STATES}
    idle = idle_summary(rows)
    if args.json:
        json.dump(
            {
                "run_dir": args.run_dir,
                "counts": counts,
                "idle": idle,
                "stages": [r.to_json() for r in rows],
                "wandb_offline_runs": [str(p) for p in offline_runs(args.run_dir)],
            },
            sys.stdout,
            indent=1,
        )
        print()
        return 0
    width = max((len(r.id) for r in rows), default=5)
    for r in rows:
        secs = f"{r.seconds:9.2f} s" if r.seconds is not None else " " * 11
        extra = r.note or (r.device or "")
        if r.fleet:
            extra = f"{extra}, fleet {r.fleet} of {r.fleet_size}" if extra else f"fleet {r.fleet} of {r.fleet_size}"
        print(f"{r.state:<8} {r.id:<{width}} {secs}  {extra}".rstrip())
    print(", ".join(f"{counts[s]} {s}" for s in STATES))
    if idle["stages"]:
        kinds = ", ".join(f"{k} {v:.1f} s" for k, v in idle["by_kind"].items())
        print(
            f"workers idle before stages: {idle['total_seconds']:.1f} s in all ({kinds}); "
            f"longest {idle['max_seconds']:.2f} s before {idle['max_stage']}"
        )
    hint = upload_hint(args.run_dir)
    if hint:
        print(hint)
    return 0
