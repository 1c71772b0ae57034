"""`cpx compile SPEC`: validate a spec, expand it into stages and write DIR/plan.json."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from cpx.cli import _latest as latest


def register(sub: Any) -> None:
    p = sub.add_parser(
        "compile",
        help="validate a spec and write its plan (DIR/plan.json)",
        description=(
            "Validate the YAML experiment spec SPEC, expand it into a plan of content-hashed stages "
            "and write DIR/plan.json. Prints the stages by kind, how many are already done in DIR's "
            "store, and an estimate of GPU-hours by kind (from the work of each stage and a device class's "
            "measured rates: see --device-class and `cpx plan cost`). A bad spec exits with code 2, lists every "
            "error with file:line:column, and writes nothing."
        ),
        epilog="Example: cpx compile specs/demo.yaml -s eval.sampler.temperature=0.7",
    )
    p.add_argument("spec", metavar="SPEC", help="the spec file (YAML)")
    p.add_argument("--out", "-o", metavar="DIR", help="run folder (default: runs/<spec name>/)")
    p.add_argument(
        "-s",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec value, e.g. -s eval.sampler.temperature=0.7 (repeatable)",
    )
    p.add_argument(
        "--device-class",
        metavar="GPU",
        help="estimate GPU-hours with the cost calibration saved for this GPU (e.g. 'NVIDIA H200'; "
        "default: $CPX_DEVICE_CLASS, else the most recently saved by `cpx plan cost RUN --save`, "
        "else the built-in one)",
    )
    p.add_argument("--check", action="store_true", help="validate and summarise only; write nothing")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the plan's path")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cpx.cli import CLIError
    from cpx.plan import CostError, compile_spec, count_done, load_calibration, params_b, stage_seconds
    from cpx.spec import SpecError, load_spec, unread_layers

    try:
        cal = load_calibration(args.device_class)
    except CostError as e:
        raise CLIError(str(e), 2) from None
    try:
        loaded = load_spec(args.spec, args.overrides)
        plan = compile_spec(loaded)
    except SpecError as e:
        raise CLIError(str(e), 2) from None
    for w in unread_layers(loaded.spec):
        print(f"warning: {w}", file=sys.stderr)
    out = Path(args.out) if args.out else Path("runs") / plan.name
    if not args.check:
        write_plan(plan, out)
        latest.record(out)
    if args.quiet:
        print(out / "plan.json")
        return 0
    done = count_done(out, plan)
    secs = stage_seconds(plan, params_b(plan.spec), cal)
    print(summary(plan, done, secs, f"one {cal.device}, {cal.source}"))
    print(f"\nplan: {out / 'plan.json'}" + (" (not written: --check)" if args.check else ""))
    if plan.spec.get("power"):
        print_power(plan, Path(args.spec).parent)
    return 0


def write_plan(plan: Any, out: Path) -> None:
    """plan.json into out, holding the run's lock: a folder that `cpx execute` is running is
    refused (exit 3), since its executor and `cpx status` would disagree about the plan."""
    from cpx.cli import CLIError
    from cpx.cli.execute import EXIT_LOCKED
    from cpx.execute import RunLock, RunLocked

    try:
        with RunLock(out):
            plan.save(out / "plan.json")
    except RunLocked as e:
        raise CLIError(f"{e}; plan.json is left as it is", EXIT_LOCKED) from None
    except OSError as e:
        raise CLIError(f"cannot write {out / 'plan.json'}: {e.strerror}", 1) from None


def print_power(plan: Any, base: Path) -> None:
    """The power table on stdout, its warnings on stderr (`warning: ...`). A `from_run` that
    cannot be read is a warning here: the plan is already written, the exit status unchanged."""
    from cpx.power import PowerError, design_of, display, format_text, rows_of, warnings_of

    try:
        design = design_of(plan, base=base)
        rows = rows_of(design)
    except PowerError as e:
        print(f"warning: {e}", file=sys.stderr)
        return
    alpha = design.settings.alpha
    print(f"\npower (alpha {alpha:g}, two-sided; docs/power.md):")
    print(format_text(display(rows)))
    for w in warnings_of(rows, alpha):
        print(f"warning: {w}", file=sys.stderr)


def summary(plan: Any, done: dict[str, bool], secs: dict[str, float], rates: str) -> str:
    """Stages, done stages and estimated GPU-hours per kind, as an aligned table."""
    from cpx.plan import STAGE_KINDS

    n = Counter(s.kind for s in plan.stages)
    d = Counter(s.kind for s in plan.stages if done.get(s.id))
    h: dict[str, float] = {}
    for s in plan.stages:
        if not done.get(s.id):
            h[s.kind] = h.get(s.kind, 0.0) + secs.get(s.id, 0.0) / 3600
    lines = [
        f"{plan.name}: {len(plan.stages)} stages, spec {plan.spec_hash[:12]}",
        f"  {'kind':<10} {'stages':>6} {'done':>6} {'GPU-h to go':>12}",
    ]
    for kind in STAGE_KINDS:
        if n[kind]:
            gpu = f"{h[kind]:.2f}" if h.get(kind) else "-"
            lines.append(f"  {kind:<10} {n[kind]:>6} {d[kind]:>6} {gpu:>12}")
    total = sum(h.values())
    lines.append(f"  {'total':<10} {sum(n.values()):>6} {sum(d.values()):>6} {total:>12.2f}")
    lines.append(f"  (GPU-hours: cost model of docs/spec-language.md, rates of {rates})")
    return "\n".join(lines)
