"""`cpx plan show|diff|power`: list a plan's stages, draw its DAG, compare two specs or plans, or
tabulate the smallest effects its analyses can detect."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "plan",
        help="show a plan's stages or DAG; diff two specs or plans; power",
        description="Inspect plans: `show` lists stages or draws the DAG, `diff` compares two, "
        "`power` tabulates the smallest detectable effects.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    show = verbs.add_parser(
        "show",
        help="list the stages of a plan (or draw its DAG with --graph)",
        description="List the stages of RUN_DIR/plan.json (or of a spec file, compiled "
        "on the fly): id, kind, short hash, done or not.",
    )
    show.add_argument(
        "target",
        metavar="RUN_DIR|PLAN|SPEC",
        nargs="?",
        default=".",
        help="a run folder, a plan.json or a spec file (default: .)",
    )
    show.add_argument("--graph", action="store_true", help="print the DAG as a mermaid flowchart")
    show.add_argument("--kind", help="only stages of this kind")
    show.set_defaults(func=run_show)
    diff = verbs.add_parser(
        "diff",
        help="which stages change between two specs or plans, and why",
        description="Compare two specs or plans: stages changed (with the parameter that "
        "changed, or the upstream stage whose change they inherit), added and removed.",
    )
    diff.add_argument("a", metavar="A", help="spec file, plan.json or run folder")
    diff.add_argument("b", metavar="B", help="spec file, plan.json or run folder")
    diff.add_argument("--limit", type=int, default=200, help="at most this many stage lines (default 200)")
    diff.set_defaults(func=run_diff)
    power = verbs.add_parser(
        "power",
        help="the smallest effect each declared analysis can detect, optionally over a range of designs",
        description="Print, for each declared analysis, the smallest effect it detects at the spec's `power:` "
        "settings (defaults: alpha 0.05 two-sided, 80% power, ICC 0.1), and warnings for comparisons that "
        "cannot reach significance. --vary tabulates the same for other designs. See docs/power.md.",
        epilog="Example: cpx plan power specs/demo.yaml --vary questions=20,40,80 --vary sources=4,5",
    )
    power.add_argument(
        "target",
        metavar="RUN_DIR|PLAN|SPEC",
        nargs="?",
        default=".",
        help="a run folder, a plan.json or a spec file (default: .)",
    )
    power.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="also for these values of KEY (questions, completions, sources, checkpoints, seeds, alphas); repeatable",
    )
    power.set_defaults(func=run_power)


def load_any(target: str) -> Any:
    """A Plan from a run folder, a plan.json or a spec file; errors are CLIErrors."""
    from cpx.cli import CLIError
    from cpx.plan import Plan, PlanError, compile_file
    from cpx.spec import SpecError

    path = Path(target)
    try:
        if path.suffix in (".yaml", ".yml"):
            return compile_file(path)
        return Plan.load(path)
    except SpecError as e:
        raise CLIError(str(e), 2) from None
    except PlanError as e:
        raise CLIError(str(e), 2) from None


def run_show(args: argparse.Namespace) -> int:
    from cpx.plan import count_done, mermaid

    plan = load_any(args.target)
    if args.graph:
        print(mermaid(plan))
        return 0
    path = Path(args.target)
    if path.suffix in (".yaml", ".yml"):
        run_dir = Path("runs") / plan.name  # where `cpx compile` would put it
    else:
        run_dir = path if path.is_dir() else path.parent
    done = count_done(run_dir, plan)
    stages = [s for s in plan.stages if args.kind in (None, s.kind)]
    width = max((len(s.id) for s in stages), default=2)
    for s in stages:
        mark = "done" if done.get(s.id) else "-"
        print(f"{s.id:<{width}}  {s.kind:<9}  {s.hash[:12]}  {mark:<4}  deps={len(s.deps)}")
    print(f"{len(stages)} stages, {sum(1 for s in stages if done.get(s.id))} done")
    return 0


def run_diff(args: argparse.Namespace) -> int:
    from cpx.plan import diff_plans, format_diff

    d = diff_plans(load_any(args.a), load_any(args.b))
    print(format_diff(d, args.limit))
    return 0


def run_power(args: argparse.Namespace) -> int:
    import sys

    from cpx.cli import CLIError
    from cpx.power import PowerError, design_of, display, format_text, parse_vary, rows_of, warnings_of

    try:
        vary = parse_vary(args.vary)
    except PowerError as e:
        raise CLIError(str(e), 2) from None
    plan = load_any(args.target)
    path = Path(args.target)
    # A relative power.from_run is relative to the spec; for a plan, to the current directory.
    base = path.parent if path.suffix in (".yaml", ".yml") else Path(".")
    try:
        design = design_of(plan, base=base)
        rows = rows_of(design, vary)
    except PowerError as e:
        raise CLIError(str(e), 2) from None
    print(format_text(display(rows)))
    for w in warnings_of(rows, design.settings.alpha):
        print(f"warning: {w}", file=sys.stderr)
    return 0
