"""`cpx plan show|diff|power`: list a plan's stages, draw its DAG, compare two specs or plans, or
tabulate the smallest effects its analyses can detect."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cpx.cli import _latest as latest


def register(sub: Any) -> None:
    p = sub.add_parser(
        "plan",
        help="show a plan's stages or DAG; diff two specs or plans; cost; power",
        description="Inspect plans: `show` lists stages or draws the DAG, `diff` compares two, "
        "`cost` compares a run's GPU time with the cost model and calibrates it, "
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
        help=f"a run folder, a plan.json or a spec file ({latest.HELP})",
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
    cost = verbs.add_parser(
        "cost",
        help="a run's GPU time per stage kind against the cost model; calibrate the model from it",
        description="For the finished stages of RUN_DIR: per stage kind, the cost model's estimate "
        "(with the calibration `cpx compile` would use now), the time the stages took (their "
        "manifests), and the calibration fitted to this run. --save stores that calibration for the "
        "run's device class, and later `cpx compile`s use it. See docs/spec-language.md, 'Cost model'.",
    )
    cost.add_argument("run_dir", metavar="RUN_DIR", help="a run folder with finished GPU stages")
    cost.add_argument("--save", action="store_true", help="save the fitted calibration for the run's GPU")
    cost.add_argument("--device-class", metavar="GPU", help="compare against this GPU's saved calibration")
    cost.add_argument("--json", action="store_true", help="print one JSON object")
    cost.set_defaults(func=run_cost)
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
        help=f"a run folder, a plan.json or a spec file ({latest.HELP})",
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

    args.target = latest.resolve(args.target, "plan show")
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


def run_cost(args: argparse.Namespace) -> int:
    import json

    from cpx.cli import CLIError
    from cpx.plan import (
        GPU_KINDS,
        CostError,
        calibrate,
        load_calibration,
        params_b,
        gpu_seconds,
        run_manifests,
        save_calibration,
        stage_work,
        work_seconds,
    )

    plan = load_any(args.run_dir)
    run_dir = Path(args.run_dir)
    run_dir = run_dir if run_dir.is_dir() else run_dir.parent
    size = params_b(plan.spec)
    try:
        current = load_calibration(args.device_class)
        ms = run_manifests(run_dir, plan)
        fitted = calibrate(plan, ms, size, source=f"calibrated from {run_dir.resolve()}")
    except CostError as e:
        raise CLIError(str(e), 2) from None
    work = stage_work(plan)
    by_id = plan.by_id()
    gpu = sorted((m["timings"].get("started", ""), sid) for sid, m in ms.items() if by_id[sid].kind in GPU_KINDS)
    firsts: dict[Any, str] = {}
    for _, sid in gpu:
        firsts.setdefault((ms[sid].get("executor") or {}).get("pid"), sid)
    rows: list[dict[str, Any]] = []
    for kind in GPU_KINDS:
        ids = [sid for sid in ms if by_id[sid].kind == kind]
        if not ids:
            continue
        n_first = sum(1 for sid in firsts.values() if by_id[sid].kind == kind)
        actual = sum(gpu_seconds(ms[sid])[0] for sid in ids)
        est = sum(work_seconds(work[sid], current, size) for sid in ids) + n_first * current.load_s
        fit = sum(work_seconds(work[sid], fitted, size) for sid in ids) + n_first * fitted.load_s
        rows.append({"kind": kind, "stages": len(ids), "estimate_s": est, "actual_s": actual, "fitted_s": fit})
    load = {"estimate_s": current.load_s, "fitted_s": fitted.load_s, "workers": len(firsts)}
    saved = str(save_calibration(fitted)) if args.save else None
    if args.json:
        out = {"rows": rows, "load": load, "current": current.to_json(), "fitted": fitted.to_json(), "saved": saved}
        json.dump(out, sys.stdout, indent=1)
        print()
        return 0
    print(f"{plan.name}: finished GPU stages against the cost model ({fitted.device}, {size:g}B parameters)")
    print(f"  {'kind':<10} {'stages':>6} {'estimate s':>11} {'actual s':>10} {'est/actual':>10} {'fitted s':>10}")
    for r in rows:
        ratio = r["estimate_s"] / r["actual_s"] if r["actual_s"] else float("nan")
        print(
            f"  {r['kind']:<10} {r['stages']:>6} {r['estimate_s']:>11.1f} {r['actual_s']:>10.1f} "
            f"{ratio:>10.2f} {r['fitted_s']:>10.1f}"
        )
    print(f"  (estimate: rates of one {current.device}, {current.source}; a worker's first stage carries")
    print(
        f"   the model load: estimated {load['estimate_s']:.1f} s, fitted {load['fitted_s']:.1f} s, {load['workers']} worker(s))"
    )
    print("fitted from this run:")
    print(f"  model load {fitted.load_s:.1f} s per worker")
    for kind, k in fitted.kinds.items():
        unit = {"generate": "s per token", "sample": "s per token", "train": "s per token", "represent": "s per prompt"}
        n = fitted.stages.get(kind, 0)
        where = f"{n} stages" if n else "none in this run: built-in rate kept"
        print(f"  {kind:<10} start {k['start_s']:7.2f} s, {k['rate']:.3e} {unit[kind]} ({where})")
    if saved:
        print(f"saved: {saved} (used by `cpx compile` for device class {fitted.device!r})")
    return 0


def run_diff(args: argparse.Namespace) -> int:
    from cpx.plan import diff_plans, format_diff

    d = diff_plans(load_any(args.a), load_any(args.b))
    print(format_diff(d, args.limit))
    return 0


def run_power(args: argparse.Namespace) -> int:
    from cpx.cli import CLIError
    from cpx.power import PowerError, design_of, display, format_text, parse_vary, rows_of, warnings_of

    try:
        vary = parse_vary(args.vary)
    except PowerError as e:
        raise CLIError(str(e), 2) from None
    args.target = latest.resolve(args.target, "plan power")
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
