"""One GPU against two: a plan of independent branches through the local executor.

Builds a plan of B independent branches; each branch is a GPU stage followed by a CPU stage
that reads its output. The GPU stage is real GPU work with the shape of a training step on a
7B-class layer: bf16 matmuls of (tokens x hidden) by (hidden x hidden), repeated for a fixed
number of steps, its result written to Parquet. The same plan is executed in two fresh run
folders, with `--devices 0` and with `--devices 0,1`, in this one process; the speed-up is
the ratio of the two wall times (ideal: 2.0 for an even number of equal branches).

    python benches/gpu_multi.py                 # on a machine with two GPUs
    python benches/gpu_multi.py --cpu-smoke     # checks the script on a CPU (tiny sizes)
    python benches/gpu_multi.py --plan runs/x/plan.json   # a compiled plan, real stage runners

Needs: torch with CUDA, numpy, pyarrow; not polars, not rich (plain progress lines).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for p in (str(ROOT / "python"), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)


def gpu_stage(ctx: Any) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    p = ctx.params["work"]
    dev = torch.device(ctx.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    g = torch.Generator(device="cpu").manual_seed(ctx.params["seed"])
    x = torch.randn(p["tokens"], p["hidden"], generator=g).to(dev, dtype)
    w = (torch.randn(p["hidden"], p["hidden"], generator=g) / p["hidden"] ** 0.5).to(dev, dtype)
    norms = []
    t = time.perf_counter()
    for step in range(p["steps"]):
        for _ in range(p["layers"]):
            x = torch.tanh(x @ w)
        norms.append(float(x.float().norm()))
        ctx.progress(step + 1, p["steps"])
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t
    pq.write_table(pa.table({"step": np.arange(len(norms)), "norm": norms}), ctx.out_dir / "norms.parquet")
    return {
        "gpu_seconds": seconds,
        "tflops": 2 * p["tokens"] * p["hidden"] ** 2 * p["layers"] * p["steps"] / seconds / 1e12,
    }


def cpu_stage(ctx: Any) -> dict[str, Any]:
    import pyarrow.parquet as pq

    (dep,) = ctx.inputs.values()
    t = pq.read_table(Path(dep) / "norms.parquet")
    (ctx.out_dir / "summary.json").write_text(json.dumps({"rows": t.num_rows}))
    return {"rows": t.num_rows}


def resolve(kind: str) -> Any:
    return gpu_stage if kind == "train" else cpu_stage


def make_plan(run_dir: Path, branches: int, work: dict[str, int]) -> None:
    import hashlib

    from cpx.plan import Plan, Stage

    stages = []
    for b in range(branches):
        params = {"work": work, "seed": b}
        h = hashlib.sha256(json.dumps({"k": "train", "p": params}, sort_keys=True).encode()).hexdigest()
        stages.append(Stage(id=f"train/{b}", kind="train", hash=h, params=params, labels={"branch": b}))
        h2 = hashlib.sha256((h + "scan").encode()).hexdigest()
        stages.append(Stage(id=f"scan/{b}", kind="scan", hash=h2, deps=(f"train/{b}",), params={}))
    Plan(name="gpu-multi", spec={}, spec_hash="0" * 64, stages=stages).save(run_dir / "plan.json")


def run_once(
    devices: str, branches: int, work: dict[str, int], quiet: bool, plan: Path | None = None
) -> tuple[float, dict[str, Any]]:
    import shutil

    from cpx.execute import execute

    with tempfile.TemporaryDirectory(prefix="cpx-gpu-multi-") as d:
        if plan is None:
            make_plan(Path(d), branches, work)
        else:
            shutil.copy(plan, Path(d) / "plan.json")
        t = time.perf_counter()
        s = execute(
            d, devices=devices, resolver=None if plan else "gpu_multi:resolve", quiet=quiet, collect=plan is not None
        )
        wall = time.perf_counter() - t
        if not s.ok:
            raise SystemExit(f"run on {devices} failed: {s.to_json()}")
        kinds = ("train",) if plan is None else ("generate", "train", "sample", "represent")
        ms = [json.loads(m.read_text()) for k in kinds for m in Path(d).glob(f"stages/{k}/*/manifest.json")]
        info = {
            "device": ms[0]["device"]["name"],
            "stage_seconds": sum(m["timings"]["seconds"] for m in ms),
            "tflops": (sum(m["info"]["tflops"] for m in ms) / len(ms)) if plan is None else float("nan"),
            "gpus_used": sorted({m["device"]["visible_devices"] for m in ms}, key=str),
        }
        return wall, info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--branches", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--steps", type=int, default=1200)  # about 10 s per stage on an H100
    ap.add_argument("--plan", type=Path, default=None, help="a compiled plan.json to run instead")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on cpu:1 vs cpu:2")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    work = {"tokens": a.tokens, "hidden": a.hidden, "layers": a.layers, "steps": a.steps}
    one, two = "0", "0,1"
    if a.cpu_smoke:
        work = {"tokens": 64, "hidden": 64, "layers": 2, "steps": 5}
        one, two = "cpu", "cpu:2"
    else:
        from cpx.execute._local import detect_gpus

        if len(detect_gpus()) < 2:  # `make bench` on a machine without two GPUs
            print(
                f"gpu_multi: needs two GPUs, found {len(detect_gpus())}; skipped "
                "(--cpu-smoke checks the script on a CPU)"
            )
            return
    print(
        f"python {platform.python_version()}; {a.branches} independent branches "
        f"(GPU stage + CPU stage); work per GPU stage: {work}"
    )
    if a.plan:
        print(f"plan: {a.plan} (real stage runners)")
    t1, i1 = run_once(one, a.branches, work, a.quiet, a.plan)
    t2, i2 = run_once(two, a.branches, work, a.quiet, a.plan)
    print("\n| devices | wall (s) | sum of GPU-stage times (s) | TFLOP/s per stage | GPUs used |")
    print("|---|---|---|---|---|")
    print(f"| {one} | {t1:.1f} | {i1['stage_seconds']:.1f} | {i1['tflops']:.0f} | {i1['gpus_used']} |")
    print(f"| {two} | {t2:.1f} | {i2['stage_seconds']:.1f} | {i2['tflops']:.0f} | {i2['gpus_used']} |")
    print(f"\ndevice: {i1['device']}; speed-up {two} over {one}: {t1 / t2:.2f}x (ideal 2.00x)")


if __name__ == "__main__":
    main()
