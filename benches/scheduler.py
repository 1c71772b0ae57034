"""Scheduler overhead per stage, with stages that do nothing.

Runs plans of N no-op stages (a chain, so each stage waits for the one before it, and a
fan-out of independent stages on two workers) through `cpx.execute.execute` and reports the
wall time per stage beyond the fixed start-up (worker spawn, plan load), measured as the
slope between a small and a large plan. Reference, same run: the no-op runner called
in-process, which is what a stage costs with no scheduler at all. Target: < 50 ms per stage.

    .venv/bin/python benches/scheduler.py [--small 20] [--large 220]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "tests" / "execute")]

from _exec_runners import make_plan, run  # noqa: E402 - imported after the sys.path entry above

from cpx.execute import execute  # noqa: E402 - imported after the sys.path entry above
from cpx.execute._env import host  # noqa: E402 - imported after the sys.path entry above


def plan(n: int, shape: str) -> list[dict]:
    stages = []
    for i in range(n):
        deps = [f"s{i - 1}"] if shape == "chain" and i else []
        stages.append({"id": f"s{i}", "kind": "dataset", "deps": deps, "params": {"noop": True, "i": i}})
    return stages


def timed(n: int, shape: str, devices: str) -> float:
    with tempfile.TemporaryDirectory() as d:
        make_plan(d, plan(n, shape))
        t = time.perf_counter()
        s = execute(d, devices=devices, resolver="_exec_runners:resolve", quiet=True)
        dt = time.perf_counter() - t
        assert s.ok and len(s.ran) == n, s.to_json()
        return dt


def reference(n: int) -> float:
    """The runner called in-process n times: a stage's cost with no scheduler."""
    from cpx.plan import Stage
    from cpx.stages import StageContext

    t = time.perf_counter()
    for i in range(n):
        st = Stage(id=f"s{i}", kind="dataset", hash="0" * 64, params={"noop": True})
        run(StageContext(stage=st, out_dir=Path("."), inputs={}, run_dir=Path(".")))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=20)
    ap.add_argument("--large", type=int, default=220)
    a = ap.parse_args()
    h = host()
    print(f"machine: {h['cpu']}, {platform.python_version()}, {h['platform']}")
    ref = reference(a.large) / a.large
    print(f"reference: no-op runner in-process: {ref * 1e3:.4f} ms per stage")
    print(f"{'plan':<22}{'N small':>8}{'t small':>10}{'N large':>9}{'t large':>10}{'ms/stage':>10}{'x ref':>10}")
    for shape, devices in (("chain", "cpu"), ("independent", "cpu:2")):
        ts, tl = timed(a.small, shape, devices), timed(a.large, shape, devices)
        per = (tl - ts) / (a.large - a.small)
        print(
            f"{shape + ' ' + devices:<22}{a.small:>8}{ts:>9.2f}s{a.large:>9}{tl:>9.2f}s{per * 1e3:>10.2f}"
            f"{per / ref:>10.0f}"
        )
    print("target: < 50 ms per stage")


if __name__ == "__main__":
    main()
