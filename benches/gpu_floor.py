"""The GEMM floor of the study's LoRA training on one GPU, against cpx's real steps, same run.

Issue #19 asks for the design's training (42,000 marker-loss member steps, 6,000 full-loss
steps, 36 train stages) in <= 1.3 GPU-hours on one H200; benches/gpu_study.py measured 2.36
(RESULTS.md, run 5: a marker step of 0.1568 s a member of a fleet of 5 at ~2,330 tokens a
member, a full-loss step of 0.2948 s at ~2,301 tokens). A LoRA step on a frozen base cannot do
less than the base's matrix products: per token 2 x N FLOPs forward and 2 x N for the input
gradients (no weight gradients), N the linear weights. This bench times exactly those
products with cuBLAS (`torch.mm`, bf16) on a Qwen2.5-7B-shaped model with random weights:

- `GEMM ceiling`: one large square product (`--ceiling-n`, 8192), at the start and the end;
- `GEMM floor`: one step's products, layer by layer as a real step runs them: for each of the
  28 layers (its own 7 weights: nothing stays in L2) the forward of q, k, v, o, gate, up, down
  on (T, in) activations; the output head's forward and input gradient on the labelled rows
  only (as cpx computes it); then the input gradients of each layer, last layer first
  (grad (T, out) @ W (out, in)). Not timed: LoRA's own products, attention, norms, the
  optimizer: the floor is a lower bound. For the design's marker step (`--tokens`, default
  5 members x 2,330; `--head-rows`, 5 x 16) and full-loss step (2,301 tokens, head on all of
  them), and again at the token and labelled-row counts cpx's steps below measured;
- `cpx`: cpx's own fleet step (`cpx.stages._fleet.train_fleet` through benches/gpu_fleet.py):
  5 marker members, each parent applied unmerged (the design's sub-fleet), and the
  convergence stage's full-loss step (a fleet of one, no parent), on examples of the study's
  length: responses of `--response` (540-550) random tokens after this bench tokenizer's
  ~34-token prompts make the study's ~580-token examples (512 generated tokens after Qwen's
  longer prompt). The ratio: cpx's step over the floor at the same tokens and labelled rows.

Then the design's training GPU-hours at the floor, at cpx's measured steps (scaled to the
design's tokens a step), with each stage's rest (saves, merges, screens; gpu_study run 5), and
the share of the measured GEMM ceiling that the goal would need.

    python benches/gpu_floor.py                  # H200: about 1.5 minutes (model build included)
    python benches/gpu_floor.py --skip-fleet     # the floor and the ceiling only: ~30 s
    python benches/gpu_floor.py --tiny           # CPU smoke test with a tiny model

Needs only torch, transformers, peft and tokenizers. With $OUT set, writes $OUT/gpu_floor.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gpu_fleet
import gpu_train
from _common import QWEN25_7B, recorder, torch_env
from gpu_train import LORA, TARGETS, TINY, build, model_flops, peak_gib, reset_peak, say

RESULTS: dict[str, Any] = {}
Shape = tuple[int, int]  # a weight's (out, in)


record = recorder(RESULTS, "gpu_floor.json")


# gpu_train's model building records what it built: into this bench's results.
gpu_train.record = record


# ---------------------------------------------------------------------------------------------
# Timing


def timed(fn: Callable[[], None], device: str, warmup: int, repeat: int) -> list[float]:
    """Seconds of each of `repeat` calls of `fn` after `warmup` untimed ones: CUDA events on a
    GPU (back to back, so the launches' host time hides behind the device's work), else the
    wall clock."""
    import torch

    for _ in range(warmup):
        fn()
    if not device.startswith("cuda"):
        out = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return out
    with torch.cuda.device(device):
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeat)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
    return [start.elapsed_time(end) / 1e3 for start, end in events]


def summary(secs: list[float], flops: float) -> dict[str, Any]:
    med = statistics.median(secs)
    return {
        "s_median": round(med, 6),
        "s_min": round(min(secs), 6),
        "s_all": [round(s, 6) for s in secs],
        "flop": flops,
        "tflop": round(flops / 1e12, 4),
        "tflops": round(flops / med / 1e12, 1),
    }


# ---------------------------------------------------------------------------------------------
# The floor: the base's products of one step


def meta_model(tiny: bool):
    """The model's modules without memory: only the weight shapes are read from it."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):
        return Qwen2ForCausalLM(Qwen2Config(**(TINY if tiny else QWEN25_7B)))


def linear_shapes(model) -> tuple[list[list[Shape]], Shape]:
    """(out, in) of each decoder layer's LoRA targets (q, k, v, o, gate, up, down) and of the
    output head, read from the model's own modules."""
    layers = []
    for layer in model.model.layers:
        by_name = {n.rsplit(".", 1)[-1]: m for n, m in layer.named_modules()}
        layers.append([(by_name[t].weight.shape[0], by_name[t].weight.shape[1]) for t in TARGETS])
    head = model.get_output_embeddings().weight
    return layers, (head.shape[0], head.shape[1])


class FloorWeights:
    """Random weights of those shapes, distinct per layer (a step streams every layer's own
    weights from memory), in the step's dtype."""

    def __init__(self, shapes: tuple[list[list[Shape]], Shape], device: str, dtype):
        import torch

        gen = torch.Generator(device=device).manual_seed(0)
        layers, head = shapes

        def rand(shape: Shape):
            return torch.randn(shape, generator=gen, device=device, dtype=dtype) * 0.02

        self.layers = [[rand(s) for s in layer] for layer in layers]
        self.head = rand(head)
        self.device, self.dtype = device, dtype

    def flops(self, tokens: int, rows: int) -> float:
        """2 x rows x in x out a product: each weight forward and input gradient on every token,
        the head's on the labelled rows."""
        body = sum(w.shape[0] * w.shape[1] for layer in self.layers for w in layer)
        return 4.0 * tokens * body + 4.0 * rows * self.head.shape[0] * self.head.shape[1]


def floor_step(w: FloorWeights, tokens: int, rows: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """One step's products on preallocated buffers (no allocator in the timing), and the head's
    alone. Inputs and outputs are separate tensors by width, so no product reads what it
    writes."""
    import torch

    widths = {n for layer in w.layers for wt in layer for n in wt.shape}
    gen = torch.Generator(device=w.device).manual_seed(1)
    act = {n: torch.randn((tokens, n), generator=gen, device=w.device, dtype=w.dtype) for n in widths}
    out = {n: torch.empty((tokens, n), device=w.device, dtype=w.dtype) for n in widths}
    vocab, hidden = w.head.shape
    h_in = torch.randn((rows, hidden), generator=gen, device=w.device, dtype=w.dtype)
    g_logits = torch.randn((rows, vocab), generator=gen, device=w.device, dtype=w.dtype)
    logits = torch.empty((rows, vocab), device=w.device, dtype=w.dtype)
    g_hidden = torch.empty((rows, hidden), device=w.device, dtype=w.dtype)

    def head() -> None:
        torch.mm(h_in, w.head.t(), out=logits)
        torch.mm(g_logits, w.head, out=g_hidden)

    def step() -> None:
        for layer in w.layers:
            for wt in layer:
                torch.mm(act[wt.shape[1]], wt.t(), out=out[wt.shape[0]])
        head()
        for layer in reversed(w.layers):
            for wt in reversed(layer):
                torch.mm(act[wt.shape[0]], wt, out=out[wt.shape[1]])

    return step, head


def measure_floor(w: FloorWeights, tokens: int, rows: int, args) -> dict[str, Any]:
    import torch

    step, head = floor_step(w, tokens, rows)
    row = {
        "tokens": tokens,
        "head_rows": rows,
        **summary(timed(step, args.device, args.floor_warmup, args.repeat), w.flops(tokens, rows)),
    }
    head_s = statistics.median(timed(head, args.device, args.floor_warmup, args.repeat))
    row["head_s_median"] = round(head_s, 6)
    del step, head
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def measure_ceiling(args, dtype) -> dict[str, Any]:
    """One square product `--ceiling-n` wide, 10 back to back per timing (the events' own
    overhead out of the way)."""
    import torch

    n = args.ceiling_n
    gen = torch.Generator(device=args.device).manual_seed(2)
    a, b = (torch.randn((n, n), generator=gen, device=args.device, dtype=dtype) for _ in range(2))
    c = torch.empty((n, n), device=args.device, dtype=dtype)

    def ten() -> None:
        for _ in range(10):
            torch.mm(a, b, out=c)

    row = {"n": n, **summary(timed(ten, args.device, args.floor_warmup * 3, args.repeat), 10 * 2.0 * n**3)}
    return row


# ---------------------------------------------------------------------------------------------
# cpx's real steps


def step_row(model, mems, args, span, how) -> dict[str, Any]:
    """Seconds, tokens and labelled rows of one step of all `mems` (the mean of the timed steps)."""
    secs, steps = span.seconds()
    timed_exs = [ex for m in mems for ex in gpu_fleet.timed_tokens(m, args)]
    tokens = sum(len(e.input_ids) for e in timed_exs)
    return {
        "members": len(mems),
        "s_per_step": round(secs / steps, 4),
        "s_per_member_step": round(secs / steps / len(mems), 4),
        "tokens_per_step": round(tokens / steps, 1),
        "tokens_per_member_step": round(tokens / steps / len(mems), 1),
        "labelled_per_step": round(sum(e.n_labels for e in timed_exs) / steps, 1),
        "tokens_per_s": round(tokens / secs, 1),
        "mfu": round(model_flops(model, timed_exs) / secs / (args.peak_tflops * 1e12), 4),
        "peak_gib": peak_gib(args.device),
        "how": how,
    }


def cpx_marker(model, tok, args) -> dict[str, Any]:
    """The design's sub-fleet: `--members` marker trainings, each parent applied unmerged."""
    mems = gpu_fleet.members_of(model, tok, args.members, args, args.response)
    reset_peak(args.device)
    span, losses, how = gpu_fleet.run_ours(model, mems, args)
    return {**step_row(model, mems, args, span, how), "member0_losses": [round(x, 5) for x in losses[0]]}


def cpx_full(model, tok, args) -> dict[str, Any]:
    """The convergence stage's step: full loss, a fleet of one on the base (no parent)."""
    from cpx.stages._fleet import Member
    from cpx.stages._training import plan_run

    exs = gpu_train.examples(tok, args.examples, seed=1, response=args.response)
    optim = {**gpu_fleet.OPTIM, "epochs": (args.warmup + args.steps) / (len(exs) // gpu_fleet.BATCH)}
    plan = plan_run(exs, optim, [], 42, None)
    mem = Member(exs, plan, LORA, optim, Path(tempfile.mkdtemp()), 42)
    reset_peak(args.device)
    span, losses, how = gpu_fleet.run_ours(model, [mem], args)
    return {**step_row(model, [mem], args, span, how), "losses": [round(x, 5) for x in losses[0]]}


# Where cpx's marker step spends the device's time beyond the floor: op families by the profiler's
# self device time (a cuBLAS kernel is counted under the op that launched it).
_OP_FAMILIES = (
    ("base and head products", ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul")),
    ("LoRA products (segments)", ("aten::bmm", "aten::baddbmm")),
    ("attention", ("flash", "attention", "attn")),
    ("optimizer", ("_foreach", "adam")),
    ("copies and casts", ("aten::copy_", "aten::to", "aten::_to_copy", "aten::index", "aten::cat", "aten::zeros")),
)


def profile_marker(model, tok, args) -> dict[str, Any]:
    """The marker fleet again for 1 untimed + 2 steps under torch.profiler: device time per
    step by op family (self time, every kernel counted once), the ops that took most, and the
    device's busy share of the wall time (the rest is launch and host time)."""
    import argparse as _argparse

    import torch
    from torch.profiler import ProfilerActivity, profile

    short = _argparse.Namespace(**{**vars(args), "warmup": 1, "steps": 2})
    mems = gpu_fleet.members_of(model, tok, args.members, short, args.response)
    cuda = args.device.startswith("cuda")
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        t0 = time.perf_counter()
        gpu_fleet.run_ours(model, mems, short)
        if cuda:
            torch.cuda.synchronize(args.device)
        wall = time.perf_counter() - t0
    steps = short.warmup + short.steps
    # on the CPU (the smoke test) an op's self CPU time stands in for device time
    self_us = [(e.key, e.self_device_time_total if cuda else e.self_cpu_time_total) for e in prof.key_averages()]
    ops = {key: us / 1e3 / steps for key, us in self_us if us > 0}
    families: dict[str, float] = {}
    for op, ms in ops.items():
        low = op.lower()
        name = next((f for f, keys in _OP_FAMILIES if any(k.lower() in low for k in keys)), "other elementwise")
        families[name] = families.get(name, 0.0) + ms
    busy = sum(ops.values())
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:15]
    return {
        "steps": steps,
        "note": "per step, over the whole run of 3 steps (the fleet's set-up included)",
        "wall_ms_per_step": round(wall * 1e3 / steps, 1),
        "device_busy_ms_per_step": round(busy, 1),
        "families_ms_per_step": {k: round(v, 1) for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
        "top_ops_ms_per_step": {k: round(v, 2) for k, v in top},
    }


# ---------------------------------------------------------------------------------------------
# The design's training hours


def extrapolate(args, floors: dict[str, Any], cpx: dict[str, Any], ceiling_tflops: float) -> dict[str, Any]:
    """GPU-hours of the design's training by each measure, the stages' rest added where said."""
    m_tok, f_tok = args.marker_member_tokens, args.full_tokens
    rest_s = args.marker_stages * args.marker_rest_s + args.full_stages * args.full_rest_s

    def hours(marker_s: float, full_s: float, rest: bool = True) -> float:
        return (args.marker_steps * marker_s + args.full_steps * full_s + (rest_s if rest else 0.0)) / 3600

    fm, ff = floors["marker (design)"], floors["full (design)"]
    # A member's share of the joint floor step: its tokens' share (the head is its rows' share).
    floor_m = fm["s_median"] * m_tok / fm["tokens"]
    floor_f = ff["s_median"] * f_tok / ff["tokens"]
    flops = args.marker_steps * fm["flop"] * m_tok / fm["tokens"] + args.full_steps * ff["flop"] * f_tok / ff["tokens"]
    at_ceiling = flops / (ceiling_tflops * 1e12) / 3600
    at_peak = flops / (args.peak_tflops * 1e12) / 3600
    out: dict[str, Any] = {
        "design": {
            "marker_member_steps": args.marker_steps,
            "marker_tokens_per_member_step": m_tok,
            "full_steps": args.full_steps,
            "full_tokens_per_step": f_tok,
            "rest_s": round(rest_s, 2),
            "rest_hours": round(rest_s / 3600, 4),
        },
        "floor_pflop": round(flops / 1e15, 1),
        "hours_at_ceiling_no_rest": round(at_ceiling, 3),
        "hours_at_nominal_peak_no_rest": round(at_peak, 3),
        "hours_at_floor_no_rest": round(hours(floor_m, floor_f, rest=False), 3),
        "hours_at_floor": round(hours(floor_m, floor_f), 3),
        "hours_study_run5": round(hours(args.study_marker_s, args.study_full_s), 3),
        "goal_hours": args.goal_hours,
        # What the goal asks of the GEMMs: their FLOPs at 100% of the measured ceiling, over
        # the goal (and over the goal less the stages' rest, which no GEMM speed removes).
        "goal_needs_ceiling_share": round(at_ceiling / args.goal_hours, 3),
        "goal_needs_ceiling_share_with_rest": round(at_ceiling / max(args.goal_hours - rest_s / 3600, 1e-9), 3),
        "goal_needs_peak_share": round(at_peak / args.goal_hours, 3),
    }
    marker, full = cpx.get("marker"), cpx.get("full")
    if marker and full:
        # cpx's steps at the design's tokens: measured seconds scaled by tokens.
        cm = marker["s_per_member_step"] * m_tok / marker["tokens_per_member_step"]
        cf = full["s_per_step"] * f_tok / full["tokens_per_step"]
        out["cpx_s_per_marker_member_step_scaled"] = round(cm, 4)
        out["cpx_s_per_full_step_scaled"] = round(cf, 4)
        out["hours_cpx"] = round(hours(cm, cf), 3)
    return out


# ---------------------------------------------------------------------------------------------


def pair(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(",")
    return int(lo), int(hi or lo)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU (smoke test)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--skip-fleet", action="store_true", help="the floor and the ceiling only (no model build)")
    ap.add_argument("--profile", action="store_true", help="cpx's marker step again under torch.profiler, by op family")
    ap.add_argument("--members", type=int, default=5, help="marker members of the fleet (the design's sub-fleet)")
    ap.add_argument("--tokens", type=int, default=None, help="floor tokens (default: members x marker tokens)")
    ap.add_argument("--head-rows", type=int, default=None, help="floor head rows (default: members x 16)")
    ap.add_argument("--full-head-rows", type=int, default=None, help="full floor head rows (default: all tokens)")
    ap.add_argument("--response", type=pair, default=(540, 550), help="response tokens min,max of cpx's examples")
    ap.add_argument("--examples", type=int, default=gpu_fleet.EXAMPLES, help="examples per member")
    ap.add_argument("--steps", type=int, default=6, help="timed steps of cpx's runs")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps of cpx's runs")
    ap.add_argument("--repeat", type=int, default=10, help="timed repeats of each product set (median)")
    ap.add_argument("--floor-warmup", type=int, default=3, help="untimed repeats before")
    ap.add_argument("--ceiling-n", type=int, default=8192)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    design = ap.add_argument_group("the design (defaults: benches/results/gpu_study_4.json)")
    design.add_argument("--marker-steps", type=int, default=42_000, help="marker-loss member steps")
    design.add_argument("--marker-member-tokens", type=int, default=2_330, help="tokens a marker member step")
    design.add_argument("--marker-member-rows", type=int, default=16, help="labelled tokens a marker member step")
    design.add_argument("--full-steps", type=int, default=6_000, help="full-loss steps")
    design.add_argument("--full-tokens", type=int, default=2_301, help="tokens a full-loss step")
    design.add_argument("--marker-stages", type=int, default=24)
    design.add_argument("--full-stages", type=int, default=12)
    design.add_argument("--marker-rest-s", type=float, default=3.49, help="a marker stage's time beyond its steps")
    design.add_argument("--full-rest-s", type=float, default=6.11, help="a full-loss stage's time beyond its steps")
    design.add_argument("--study-marker-s", type=float, default=0.1568, help="gpu_study run 5: s a marker member step")
    design.add_argument("--study-full-s", type=float, default=0.2948, help="gpu_study run 5: s a full-loss step")
    design.add_argument("--goal-hours", type=float, default=1.3)
    args = ap.parse_args()
    args.device = args.device or ("cpu" if args.tiny else "cuda:0")
    if args.tiny:
        args.steps, args.warmup, args.examples = min(args.steps, 2), min(args.warmup, 1), 24
        args.repeat, args.floor_warmup, args.ceiling_n = min(args.repeat, 3), 1, min(args.ceiling_n, 256)
    args.tokens = args.tokens or args.members * args.marker_member_tokens
    args.head_rows = args.head_rows or args.members * args.marker_member_rows
    args.full_head_rows = args.full_head_rows or args.full_tokens
    return args


def measure_cpx(args, failed: list[str]) -> tuple[dict[str, Any], Any]:
    """cpx's two steps on the built model (each failure recorded, the floor still runs); the
    model's shapes for the floor."""
    import torch

    model, tok = build(args)
    cpx: dict[str, Any] = {}
    for key, fn in (("marker", cpx_marker), ("full", cpx_full)):
        try:
            cpx[key] = fn(model, tok, args)
            record(f"cpx {key}", cpx[key])
        except Exception as e:  # noqa: BLE001 - one part's failure (OOM) must not hide the floor
            traceback.print_exc()
            record(f"cpx {key}", {"error": repr(e)[:300]})
            failed.append(f"cpx {key}")
    if args.profile:
        try:
            record("cpx marker profile", profile_marker(model, tok, args))
        except Exception as e:  # noqa: BLE001 - the profile is extra: the floor still runs
            traceback.print_exc()
            record("cpx marker profile", {"error": repr(e)[:300]})
            failed.append("cpx marker profile")
    shapes = linear_shapes(model)
    del model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return cpx, shapes


def main() -> int:
    import torch

    args = parse()
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    record("env", torch_env(args.device))
    record("args", dict(vars(args)))
    failed: list[str] = []
    ceilings = {"start": measure_ceiling(args, dtype)}
    record("ceiling start", ceilings["start"])
    cpx: dict[str, Any] = {}
    if args.skip_fleet:
        shapes = linear_shapes(meta_model(args.tiny))
    else:
        cpx, shapes = measure_cpx(args, failed)
    weights = FloorWeights(shapes, args.device, dtype)
    record(
        "floor weights", {"layers": len(shapes[0]), "per_layer": shapes[0][0], "head": shapes[1], "dtype": str(dtype)}
    )
    runs: list[tuple[str, int, int]] = [
        ("marker (design)", args.tokens, args.head_rows),
        ("full (design)", args.full_tokens, args.full_head_rows),
    ]
    for key in ("marker", "full"):
        if key in cpx:
            runs.append((f"{key} (as cpx's)", round(cpx[key]["tokens_per_step"]), round(cpx[key]["labelled_per_step"])))
    floors: dict[str, Any] = {}
    for name, tokens, rows in runs:
        floors[name] = measure_floor(weights, tokens, rows, args)
        record(f"floor {name}", floors[name])
    del weights
    ceilings["end"] = measure_ceiling(args, dtype)
    record("ceiling end", ceilings["end"])
    ceiling_tflops = max(c["tflops"] for c in ceilings.values())
    for key in ("marker", "full"):
        if key in cpx:
            f = floors[f"{key} (as cpx's)"]
            cpx[key]["over_floor"] = round(cpx[key]["s_per_step"] / f["s_median"], 2)
            cpx[key]["floor_tflops_share_of_ceiling"] = round(f["tflops"] / ceiling_tflops, 3)
    ex = extrapolate(args, floors, cpx, ceiling_tflops)
    record("extrapolation", ex)
    table(args, ceilings, floors, cpx, ex, ceiling_tflops)
    record("table", {"ceilings": ceilings, "floors": floors, "cpx": cpx})
    if failed:
        say(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


def table(args, ceilings, floors, cpx, ex, ceiling_tflops: float) -> None:
    say("")
    say(f"{'products / step':<28}{'tokens':>8}{'head rows':>10}{'s':>9}{'TFLOP':>8}{'TFLOP/s':>9}{'of ceiling':>11}")
    for name, c in ceilings.items():
        say(
            f"{'GEMM ceiling ' + name:<28}{'':>8}{'':>10}{c['s_median'] / 10:>9.4f}{c['tflop'] / 10:>8.2f}"
            f"{c['tflops']:>9.1f}{c['tflops'] / ceiling_tflops:>11.1%}"
        )
    for name, f in floors.items():
        say(
            f"{'GEMM floor ' + name:<28}{f['tokens']:>8}{f['head_rows']:>10}{f['s_median']:>9.4f}{f['tflop']:>8.2f}"
            f"{f['tflops']:>9.1f}{f['tflops'] / ceiling_tflops:>11.1%}"
        )
    if cpx:
        say("")
        say(f"{'cpx step':<28}{'members':>8}{'tokens':>10}{'s':>9}{'tok/s':>10}{'MFU':>8}{'over floor':>12}")
        for key, c in cpx.items():
            say(
                f"{'cpx ' + key:<28}{c['members']:>8}{c['tokens_per_step']:>10,.0f}{c['s_per_step']:>9.4f}"
                f"{c['tokens_per_s']:>10,.0f}{c['mfu']:>8.1%}{c.get('over_floor', float('nan')):>12.2f}"
            )
    d = ex["design"]
    say("")
    say(
        f"design training: {d['marker_member_steps']:,} marker member steps x {d['marker_tokens_per_member_step']:,} "
        f"tokens, {d['full_steps']:,} full-loss steps x {d['full_tokens_per_step']:,} tokens "
        f"({ex['floor_pflop']:,} PFLOP of base products); stages' rest {d['rest_hours']:.3f} h"
    )
    rows = [
        ("at the GEMM ceiling, no rest", ex["hours_at_ceiling_no_rest"]),
        (f"at {args.peak_tflops:g} TFLOP/s, no rest", ex["hours_at_nominal_peak_no_rest"]),
        ("at the GEMM floor, no rest", ex["hours_at_floor_no_rest"]),
        ("at the GEMM floor + rest", ex["hours_at_floor"]),
        ("at cpx's steps (this run) + rest", ex.get("hours_cpx", float("nan"))),
        ("gpu_study run 5 + rest", ex["hours_study_run5"]),
    ]
    for name, h in rows:
        say(f"  {name:<36}{h:>8.3f} GPU-h")
    say(
        f"goal {ex['goal_hours']} h: the base's products at >= {ex['goal_needs_ceiling_share']:.0%} of the measured "
        f"ceiling ({ex['goal_needs_ceiling_share_with_rest']:.0%} with the rest), "
        f">= {ex['goal_needs_peak_share']:.0%} of {args.peak_tflops:g} TFLOP/s"
    )


if __name__ == "__main__":
    sys.exit(main())
