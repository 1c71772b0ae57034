"""`cpx execute [RUN_DIR]`: run what is not done of a compiled plan, then collect the results."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cpx.cli import _latest as latest

EXIT_LOCKED = 3


def register(sub: Any) -> None:
    p = sub.add_parser(
        "execute",
        help="run a compiled plan (resumes: only stages that are not done run)",
        description=(
            "Run every stage of RUN_DIR/plan.json that is not done, one worker per device (local), "
            "per Ray actor (ray) or per Slurm job (slurm), then collect the results tables into "
            "RUN_DIR/results and the report into RUN_DIR/report. Safe to kill at any moment and run "
            "again: finished stages are kept, the stages in flight start over."
        ),
        epilog=(
            "Slurm: `cpx execute RUN --executor slurm --workers 4 --gpus-per-worker 1 --partition gpu "
            "--time 4:00:00` submits four worker jobs with sbatch; options left out take sbatch's own "
            "defaults (SBATCH_PARTITION, SBATCH_ACCOUNT, SBATCH_QOS, SBATCH_TIMELIMIT, the cluster's "
            "default partition). RUN must be on a filesystem the compute nodes share, at the same path."
        ),
    )
    p.add_argument(
        "run_dir", metavar="RUN_DIR", nargs="?", help=f"a run folder written by `cpx compile` ({latest.HELP})"
    )
    p.add_argument(
        "--devices",
        default="auto",
        help="auto (every visible GPU, else the CPU), cpu, cpu:N (N CPU workers), "
        "or GPU indices such as 0,1 (default: auto)",
    )
    p.add_argument(
        "--executor",
        choices=("local", "ray", "slurm"),
        default="local",
        help="local worker processes (default), a Ray cluster, or Slurm jobs",
    )
    p.add_argument(
        "--address", default=None, help="Ray cluster address (with --executor ray; default: start a local one)"
    )
    slurm = p.add_argument_group("Slurm (with --executor slurm)")
    slurm.add_argument("--workers", type=int, default=None, metavar="N", help="worker jobs to keep running (default 1)")
    slurm.add_argument(
        "--gpus-per-worker", type=int, default=None, metavar="G", help="GPUs each worker job asks for (default 0: CPU)"
    )
    slurm.add_argument("--partition", default=None, help="partition of the worker jobs (default: $SBATCH_PARTITION)")
    slurm.add_argument("--account", default=None, help="account to charge (default: $SBATCH_ACCOUNT)")
    slurm.add_argument("--qos", default=None, help="quality of service (default: $SBATCH_QOS)")
    slurm.add_argument("--time", default=None, help="time limit of each worker job, e.g. 4:00:00 ($SBATCH_TIMELIMIT)")
    slurm.add_argument(
        "--slurm-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other sbatch option, passed as --KEY=VALUE (repeatable), e.g. --slurm-arg mem=64G",
    )
    slurm.add_argument(
        "--executor-config",
        default=None,
        metavar="FILE",
        help="YAML file with a `slurm:` block (partition, account, qos, time, gpus_per_worker, workers, "
        "args: {KEY: VALUE}); the options above override it",
    )
    p.add_argument(
        "--fleet",
        default="auto",
        metavar="auto|off|N",
        help="hand ready train stages of one base model and LoRA shape to one worker together, as one "
        "fleet that the trainer trains in one call (each member still its own stage, seed, log, manifest "
        "and outputs, committed as soon as it is done). auto (default): as many as are ready, the "
        "trainer splitting them to fit the memory; N: at most N a fleet; off: one stage at a time. An "
        "out-of-memory error halves the fleet, never a member's batch. Not with --executor ray, which "
        "trains one stage at a time (auto means off there)",
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
    from cpx.execute import DeviceError, FleetError, RunLocked, SlurmError, TrackingError, execute, parse_fleet
    from cpx.plan import PlanError

    if args.retry < 0:
        raise CLIError(f"--retry must be 0 or more, got {args.retry}", 2)
    if args.address and args.executor != "ray":
        raise CLIError("--address only applies with --executor ray", 2)
    try:
        parse_fleet(args.fleet)
    except FleetError as e:
        raise CLIError(str(e), 2) from None
    args.run_dir = latest.resolve(args.run_dir, "execute")
    try:
        slurm = slurm_options(args)
        summary = execute(
            args.run_dir,
            devices=args.devices,
            executor=args.executor,
            address=args.address,
            slurm=slurm,
            keep_going=args.keep_going,
            retry=args.retry,
            quiet=args.quiet,
            fleet=args.fleet,
        )
    except RunLocked as e:
        raise CLIError(str(e), EXIT_LOCKED) from None
    except (PlanError, DeviceError, FleetError, TrackingError, SlurmError) as e:
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


SLURM_FLAGS = ("workers", "gpus_per_worker", "partition", "account", "qos", "time", "executor_config")


def slurm_options(args: argparse.Namespace) -> Any:
    """The `SlurmOptions` of --executor slurm (None otherwise; a Slurm flag without it is an error)."""
    from cpx.cli import CLIError
    from cpx.execute import load_options, parse_slurm_args

    if args.executor != "slurm":
        given = [f for f in SLURM_FLAGS if getattr(args, f) is not None] + (["slurm_arg"] if args.slurm_arg else [])
        if given:
            raise CLIError(f"--{given[0].replace('_', '-')} only applies with --executor slurm", 2)
        return None
    return load_options(
        args.executor_config,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        partition=args.partition,
        account=args.account,
        qos=args.qos,
        time=args.time,
        args=parse_slurm_args(args.slurm_arg) or None,
    )


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
