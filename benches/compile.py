"""Benchmark: compile time of the published spec and of a generated large spec.

Targets (issue 3): specs/causal_proximity.yaml under 0.3 s of wall time after imports; a
generated 100-persona x 5-seed x 10-checkpoint spec (thousands of stages) under 5 s. Issue 15:
the demo with a generated 5 MB eval question bank under 5 s, into a plan.json a few times the
spec's size (its size is printed), and `cpx status` on it quick.
"compile" is what `cpx compile` does after imports: load and validate the spec, expand and
hash the stages, write plan.json. The reference measured in the same run is the I/O floor:
reading the spec with PyYAML's C loader and writing the finished plan with one json.dumps. The ratio says how much the
validation, expansion and hashing cost on top of that.

    python benches/compile.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

import yaml  # noqa: E402 - imported after the sys.path entry above

from cpx.plan._compile import compile_spec  # noqa: E402 - imported after the sys.path entry above
from cpx.spec import load_spec  # noqa: E402 - imported after the sys.path entry above


def big_spec(personas: int = 100, seeds: int = 5, checkpoints: int = 10, sources: int = 8) -> str:
    """The causal-proximity design scaled up: many personas, seeds and checkpoints."""
    base = yaml.safe_load((ROOT / "specs" / "causal_proximity.yaml").read_text())
    names = [f"persona_{i:03d}" for i in range(personas)]
    base["name"] = "big"
    base["personas"] = {"assistant": "You are a helpful assistant."} | {
        n: f"You are persona {i}, who has opinions about topic {i % 17} and speaks in style {i % 7}."
        for i, n in enumerate(names)
    }
    base["roles"] = {"assistant": "assistant", "sources": names[:sources]}
    base["seeds"] = list(range(seeds))
    base["training"]["convergence"]["checkpoints"] = [round((i + 1) / checkpoints, 4) for i in range(checkpoints)]
    return yaml.safe_dump(base, sort_keys=False)


def bank_spec(questions: int = 55_000) -> str:
    """The demo with a large eval question bank (about 5 MB of YAML)."""
    base = yaml.safe_load((ROOT / "specs" / "demo.yaml").read_text())
    base["name"] = "bank"
    base["questions"]["eval"] = [
        f"Question {i}: what would you say about topic {i % 997} in the context of subject {i % 31}, and why?"
        for i in range(questions)
    ]
    return yaml.safe_dump(base, sort_keys=False, width=10_000)


def timed(fn, repeat: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def bench(path: Path, repeat: int, out: Path) -> dict[str, object]:
    def work():  # type: ignore[no-untyped-def]
        plan = compile_spec(load_spec(path))
        plan.save(out / "plan.json")
        return plan

    compile_s, plan = timed(work, repeat)
    as_json = plan.to_json()  # type: ignore[attr-defined]

    def floor() -> None:
        yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
        (out / "floor.json").write_text(json.dumps(as_json))

    floor_s, _ = timed(floor, repeat)
    return {
        "spec": path.name,
        "stages": len(plan.stages),
        "compile_s": compile_s,  # type: ignore[attr-defined]
        "floor_s": floor_s,
        "ratio": compile_s / floor_s,
        "spec_mb": path.stat().st_size / 1e6,
        "plan_mb": (out / "plan.json").stat().st_size / 1e6,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append((bench(ROOT / "specs" / "causal_proximity.yaml", args.repeat, Path(tmp)), 0.3))
        big = Path(tmp) / "big_100p_5s_10c.yaml"
        big.write_text(big_spec())
        rows.append((bench(big, max(1, args.repeat // 2), Path(tmp)), 5.0))
        bank = Path(tmp) / "bank_5mb.yaml"
        bank.write_text(bank_spec())
        rows.append((bench(bank, max(1, args.repeat // 2), Path(tmp) / "bank"), 5.0))
    print(f"machine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()}")
    print(
        f"{'spec':<28} {'stages':>7} {'compile s':>10} {'floor s':>9} {'ratio':>7} {'target s':>9}  ok"
        f"  {'spec MB':>8} {'plan MB':>8}"
    )
    ok = True
    for r, target in rows:
        good = r["compile_s"] < target  # type: ignore[operator]
        ok &= good
        print(
            f"{r['spec']:<28} {r['stages']:>7} {r['compile_s']:>10.3f} {r['floor_s']:>9.3f} "
            f"{r['ratio']:>7.1f} {target:>9.1f}  {'yes' if good else 'NO ':<3}"
            f"  {r['spec_mb']:>8.2f} {r['plan_mb']:>8.2f}"
        )
    # Whole command, imports included, against starting Python and importing cpx alone.
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "cpx",
            "compile",
            str(ROOT / "specs" / "causal_proximity.yaml"),
            "--out",
            tmp,
            "-q",
        ]
        cli_s, _ = timed(lambda: subprocess.run(cmd, env=env, check=True, capture_output=True), 3)
        bare_s, _ = timed(lambda: subprocess.run([sys.executable, "-c", "import cpx"], env=env, check=True), 3)
        bank = Path(tmp) / "bank_5mb.yaml"
        bank.write_text(bank_spec())
        run = Path(tmp) / "bank"
        subprocess.run([*cmd[:4], str(bank), "--out", str(run), "-q"], env=env, check=True, capture_output=True)
        status = [sys.executable, "-m", "cpx", "status", str(run)]
        status_s, _ = timed(lambda: subprocess.run(status, env=env, check=True, capture_output=True), 3)
    print(
        f"cpx compile causal_proximity.yaml, whole process: {cli_s:.3f} s "
        f"(python + import cpx alone: {bare_s:.3f} s, ratio {cli_s / bare_s:.1f})"
    )
    print(
        f"cpx status on the 5 MB question bank's run, whole process: {status_s:.3f} s "
        f"(ratio to python + import cpx alone {status_s / bare_s:.1f})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
