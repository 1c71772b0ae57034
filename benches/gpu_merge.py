"""Chain switches in the worker's model pool: where the base weights' backup lives (issue 13).

A chain switch restores the base weights an adapter touched and merges the next adapter
(`cpx.models.MergedModel`). The first merge also copies the originals. This bench times, on a
Qwen2.5-7B-shaped model with random bf16 weights and a random r=32 adapter on all 7 linear
layers of every block:

- reference: the backup on the CPU (what main did before: every first merge copies 14 GB to
  the host, every restore copies it back);
- ours: `MergedModel`'s own choice (the GPU when that leaves half its memory free).

Each variant: first merge (with the backup), then `--switches` chain switches (restore + merge
of another adapter), then a last restore checked bit for bit against the untouched weights.
Prints a table and writes JSON (default benches/results/gpu_merge.json).

    python benches/gpu_merge.py              # on a CUDA machine
    python benches/gpu_merge.py --tiny       # 2-layer model on the CPU: a smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import QWEN25_7B, torch_env

TINY = dict(QWEN25_7B, vocab_size=600, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
TINY.update(num_attention_heads=4, num_key_value_heads=2)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def build(device: str, tiny: bool):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = Qwen2ForCausalLM(Qwen2Config(**(TINY if tiny else QWEN25_7B)))
    finally:
        torch.set_default_dtype(prev)
    return model.eval().requires_grad_(False)


def adapter(model, seed: int, r: int = 32):
    """A random rank-r LoRA on every target linear (CPU tensors, as read from a file)."""
    import torch

    from cpx.models import LoraDelta, lora_scale

    g = torch.Generator().manual_seed(seed)
    out = []
    for name, mod in model.named_modules():
        if name.rsplit(".", 1)[-1] in TARGETS:
            o, i = mod.weight.shape
            A = torch.randn(r, i, generator=g) / i**0.5
            B = torch.randn(o, r, generator=g) * 1e-3
            out.append(LoraDelta(name, A, B, lora_scale(64, r, True)))
    return out


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def variant(model, device: str, adapters, switches: int, on_cpu: bool) -> dict[str, Any]:
    import torch

    from cpx.models import MergedModel

    class CpuBackup(MergedModel):
        def backup_device(self, nbytes: int) -> str:
            return "cpu"

    m = (CpuBackup if on_cpu else MergedModel)(model, device)
    probe = dict(model.named_modules())[adapters[0][0].module].weight
    before = probe.detach().clone()
    sync(device)
    t0 = time.perf_counter()
    m.merge(adapters[0])
    sync(device)
    first = time.perf_counter() - t0
    times = []
    for k in range(switches):
        t0 = time.perf_counter()
        m.restore()
        m.merge(adapters[1 + k % (len(adapters) - 1)])
        sync(device)
        times.append(time.perf_counter() - t0)
    m.restore()
    sync(device)
    exact = bool(torch.equal(probe, before))
    kept = m.backups()
    del m
    return {
        "backup_on": sorted(kept),
        "backup_gib": round(sum(kept.values()) / 2**30, 2),
        "first_merge_s": round(first, 3),
        "switch_s": [round(t, 3) for t in times],
        "switch_s_mean": round(sum(times) / len(times), 3),
        "restored_exactly": exact,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU (smoke test)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--switches", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "gpu_merge.json")
    args = ap.parse_args()
    import torch

    device = args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda:0")
    model = build(device, args.tiny)
    adapters = [adapter(model, s) for s in range(3)]
    res: dict[str, Any] = {"env": torch_env(device), "switches": args.switches}
    if device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info(torch.device(device))
        res["gpu_gib"] = {"free_after_load": round(free / 2**30, 1), "total": round(total / 2**30, 1)}
    # The reference twice (first and last), so a process warm-up does not favour either side.
    res["reference (CPU backup)"] = variant(model, device, adapters, args.switches, on_cpu=True)
    res["ours"] = variant(model, device, adapters, args.switches, on_cpu=False)
    res["reference (again)"] = variant(model, device, adapters, args.switches, on_cpu=True)
    ref = min(res["reference (CPU backup)"]["switch_s_mean"], res["reference (again)"]["switch_s_mean"])
    ref_first = min(res["reference (CPU backup)"]["first_merge_s"], res["reference (again)"]["first_merge_s"])
    ours = res["ours"]
    # Against a floor of 1 ms: the rounding of the figures (and of a tiny model's merges).
    res["ratio"] = {
        "first_merge": round(ref_first / max(ours["first_merge_s"], 1e-3), 1),
        "switch": round(ref / max(ours["switch_s_mean"], 1e-3), 1),
    }
    print(f"{'variant':<24} {'backup on':<10} {'GiB':>6} {'first merge s':>14} {'switch s':>9} exact")
    for k in ("reference (CPU backup)", "ours", "reference (again)"):
        v = res[k]
        print(
            f"{k:<24} {','.join(v['backup_on']):<10} {v['backup_gib']:>6} {v['first_merge_s']:>14} "
            f"{v['switch_s_mean']:>9} {v['restored_exactly']}"
        )
    print(
        f"ratio (best reference / ours): first merge {res['ratio']['first_merge']}x, switch {res['ratio']['switch']}x"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    ok = all(res[k]["restored_exactly"] for k in ("reference (CPU backup)", "ours", "reference (again)"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
