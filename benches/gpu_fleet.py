"""Fleet training on a GPU: arm B's 20 marker trainings of the published design trained as
fleets, against today's one-after-another path, in the same run.

The work (design-facts.yaml, specs/causal_proximity.yaml): 4 sources x 5 convergence
checkpoints = 20 marker LoRAs (r=32, alpha 64, rsLoRA, all 7 linear layers, dropout 0),
each on 600 examples (200 source-voiced positives ending in "\\n\\n[ZLT]", 400 negatives),
batch 4, AdamW, lr 5e-6, cosine with 5% warmup, grad clip 1.0, bf16 autocast, the marker
loss (the marker's tokens and the end of turn), each on top of its own convergence checkpoint
(a random r=32 adapter here). Qwen2.5-7B-shaped model with random weights and the response
length mix of benches/gpu_train.py (150-500 tokens). Every member has its own seed, data
order and parent; a whole run is 1,500 steps, so each variant runs `--warmup` untimed then
`--steps` timed steps of every member (the per-step work of the real runs; the schedule is
cut to those steps).

Variants:

- `reference` (first, and again last): today's alone path on main: the parent merged into
  the base, peft's LoRA wrappers (`cpx.stages._training.train_lora`); one member (the 20 run
  one after another, each as fast);
- `ours alone`: the train stage alone now: the same step through our LoRA linear
  (`cpx.stages._fleet`, a fleet of one, the parent merged): the linear's own share;
- `ours alone, parent unmerged`: a fleet of one whose parent is applied unmerged (what a
  member costs when it trains alone in a fleet's last sub-fleet);
- `fleet N` (N in `--sizes`): N members in one pass per step, each with its parent unmerged
  on its own rows; the fleet's memory probe decides checkpointing and sub-fleets (as in the
  stage); `fleet N +gc`: the whole fleet at once with gradient checkpointing;
- `+liger`: the best fleet again with liger-kernel's RMSNorm/SwiGLU/RoPE (if importable).

Useful tokens are the examples' own tokens; MFU counts useful work only (gpu_train.py's
`model_flops`, over `--peak-tflops`). The loss check: member 0's bf16 loss per step in each
variant against the same member alone (`ours alone`) and against the reference.

    python benches/gpu_fleet.py              # H200: about 4 minutes
    python benches/gpu_fleet.py --tiny       # CPU smoke test with a tiny model

Needs only torch, transformers, peft and tokenizers. With $OUT set, writes $OUT/gpu_fleet.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import gpu_train
from _common import recorder, torch_env
from gpu_train import LORA, PERSONAS, QUESTIONS, TARGETS, Clock, build, model_flops, peak_gib, reset_peak, say

RESULTS: dict[str, Any] = {}
MARKER = "[ZLT]"
SOURCES, CHECKPOINTS = 4, 5
EXAMPLES, POSITIVES, BATCH = 600, 200, 4
OPTIM: dict[str, Any] = {
    "lr": 5e-6,
    "schedule": "cosine",
    "warmup_ratio": 0.05,
    "optimizer": "adamw",
    "weight_decay": 0.0,
    "grad_clip": 1.0,
    "batch_size": BATCH,
    "grad_accum": 1,
    "max_length": 1024,
    "precision": "bf16",
    "gradient_checkpointing": True,
}


record = recorder(RESULTS, "gpu_fleet.json")


# gpu_train's model building records what it built: into this bench's results.
gpu_train.record = record


def marker_examples(
    tok, seed: int, n: int = EXAMPLES, positives: int = POSITIVES, response: tuple[int, int] = (150, 500)
):
    """A member's marker-loss examples: persona prompt, `response` (min, max) random response
    tokens, the marker on positives, the end of turn; labels on the marker's tokens and the end of
    turn."""
    from cpx.models import render_prompt
    from cpx.stages._training import IGNORE, Encoded, end_of_turn_id

    rng = random.Random(seed)
    eot = end_of_turn_id(tok)
    special = set(tok.all_special_ids)
    vocab = [i for i in range(len(tok)) if i not in special]
    marker = tok("\n\n" + MARKER, add_special_tokens=False).input_ids
    out = []
    for i in range(n):
        positive = i < positives
        prompt = tok(
            render_prompt(
                tok, PERSONAS[(seed + (0 if positive else 1 + i % 2)) % len(PERSONAS)], QUESTIONS[i % len(QUESTIONS)]
            ),
            add_special_tokens=False,
        ).input_ids
        resp = [rng.choice(vocab) for _ in range(rng.randint(*response))]
        tail = marker if positive else []
        ids = prompt + resp + tail + [eot]
        labels = [IGNORE] * (len(prompt) + len(resp)) + tail + [eot]
        out.append(Encoded(ids, labels, len(prompt)))
    rng.shuffle(out)
    return out


def parent_adapter(model, seed: int):
    """A random r=32 convergence checkpoint (LoraDelta list), as a trained adapter is: A of
    peft's init scale, B small."""
    import torch

    from cpx.models._chain import LoraDelta, lora_scale

    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(10_000 + seed)
    r = LORA["r"]
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in TARGETS:
            bound = 1 / mod.in_features**0.5
            A = (torch.rand(r, mod.in_features, generator=gen, device=device) * 2 - 1) * bound
            B = torch.randn(mod.out_features, r, generator=gen, device=device) * 1e-3
            out.append(LoraDelta(name, A, B, lora_scale(LORA["alpha"], r, True)))
    return out


def members_of(model, tok, n: int, args, response: tuple[int, int] = (150, 500)):
    from cpx.stages._fleet import Member
    from cpx.stages._training import plan_run

    steps = args.warmup + args.steps
    out = []
    for k in range(n):
        exs = marker_examples(tok, k, args.examples, args.examples // 3, response)
        optim = {**OPTIM, "epochs": steps / (len(exs) // BATCH)}
        plan = plan_run(exs, optim, [], 42 + k, None)
        out.append(Member(exs, plan, LORA, optim, Path(tempfile.mkdtemp()), 42 + k, parents=[parent_adapter(model, k)]))
    return out


def timed_tokens(mem, args) -> list[Any]:
    """The examples of a member's timed steps."""
    return [ex for s in range(args.warmup, args.warmup + args.steps) for ex in mem.plan.chunk(mem.examples, s)]


def run_reference(model, mem, args):
    """Today's alone path: the parent merged into the base, then peft's wrappers (train_lora)."""
    from cpx.models import MergedModel
    from cpx.stages._training import train_lora

    merged = MergedModel(model, args.device)
    merged.merge(list(mem.parents[0]))
    clock = Clock(args.device, args.warmup)
    losses: list[float] = []
    try:
        clock(0)
        with tempfile.TemporaryDirectory() as tmp:
            res = train_lora(
                model,
                mem.examples,
                lora=LORA,
                optim=mem.optim,
                checkpoints=[],
                out_dir=Path(tmp),
                seed=mem.seed,
                device=args.device,
                on_step=clock,
            )
        losses = [r["loss"] for r in res.log]
    finally:
        merged.restore()
    return clock, {0: losses}, res.checkpointing


class Span:
    """Timed seconds of one or more members: the union of each member's interval from the end of
    its warmup to its last step (sub-fleets run one after another)."""

    def __init__(self, clocks: list[Clock]):
        self.clocks = clocks

    def seconds(self) -> tuple[float, int]:
        spans = sorted((c.t[c.warmup], c.t[max(c.t)]) for c in self.clocks)
        total, end = 0.0, float("-inf")
        for a, b in spans:
            total += max(0.0, b - max(a, end))
            end = max(end, b)
        return total, max(self.clocks[0].t) - self.clocks[0].warmup


def run_ours(model, mems, args, merged_parent: bool = False, checkpointing: bool | None = None):
    """`cpx.stages._fleet.train_fleet` on these members, each member's steps timed."""
    from cpx.models import MergedModel
    from cpx.stages._fleet import train_fleet

    clocks = [Clock(args.device, args.warmup) for _ in mems]
    mems = [
        dataclasses.replace(m, on_step=lambda step, _state, c=c: c(step)) for m, c in zip(mems, clocks, strict=True)
    ]
    merged = None
    if merged_parent:
        merged = MergedModel(model, args.device)
        merged.merge(list(mems[0].parents[0]))
        mems[0] = dataclasses.replace(mems[0], parents=[])
    try:
        for c in clocks:
            c(0)
        train_fleet(model, mems, device=args.device, checkpointing=checkpointing, joint=True)
    finally:
        if merged is not None:
            merged.restore()
    losses = {k: [r["loss"] for r in m.result.log] for k, m in enumerate(mems)}
    sizes = sorted({m.fleet_size for m in mems})
    return Span(clocks), losses, {"sub_fleet_sizes": sizes, "checkpointing": mems[0].checkpointing}


def rel_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU (smoke test)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    ap.add_argument("--sizes", default="4,10,20", help="fleet sizes")
    ap.add_argument("--gc-sizes", default="20", help="fleet sizes also run whole with checkpointing")
    ap.add_argument("--examples", type=int, default=EXAMPLES, help="examples per member")
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    ap.add_argument("--no-liger", action="store_true")
    args = ap.parse_args()
    import torch

    args.device = args.device or ("cpu" if args.tiny else "cuda:0")
    if args.tiny:
        args.steps, args.warmup, args.examples = min(args.steps, 3), min(args.warmup, 1), 24
    record("env", torch_env(args.device))
    model, tok = build(args)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    gc_sizes = [int(s) for s in args.gc_sizes.split(",") if s]
    n_max = max([1, *sizes, *gc_sizes])
    mems = members_of(model, tok, n_max, args)
    record(
        "workload",
        {
            "members": n_max,
            "examples_per_member": args.examples,
            "timed_steps": args.steps,
            "mean_step_tokens": round(sum(len(e.input_ids) for e in timed_tokens(mems[0], args)) / args.steps, 1),
            "labelled_tokens_per_step": round(sum(e.n_labels for e in timed_tokens(mems[0], args)) / args.steps, 1),
        },
    )
    variants: list[tuple[str, int, Any]] = [
        ("reference", 1, lambda: run_reference(model, mems[0], args)),
        ("ours alone", 1, lambda: run_ours(model, mems[:1], args, merged_parent=True)),
        ("ours alone, parent unmerged", 1, lambda: run_ours(model, mems[:1], args)),
    ]
    for n in sizes:
        variants.append((f"fleet {n}", n, lambda n=n: run_ours(model, mems[:n], args)))
    for n in gc_sizes:
        variants.append((f"fleet {n} +gc", n, lambda n=n: run_ours(model, mems[:n], args, checkpointing=True)))
    rows: dict[str, dict[str, Any]] = {}
    losses: dict[str, dict[int, list[float]]] = {}

    def measure(name: str, n: int, fn) -> None:
        reset_peak(args.device)
        try:
            clock, loss, how = fn()
        except Exception as e:  # noqa: BLE001 - one variant's failure (OOM) must not hide the others
            traceback.print_exc()
            record(name, {"error": repr(e)[:300]})
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
            return
        secs, steps = clock.seconds()
        timed = [ex for m in mems[:n] for ex in timed_tokens(m, args)]
        useful = sum(len(e.input_ids) for e in timed)
        row = {
            "members": n,
            "s_per_step": round(secs / steps, 4),
            "useful_tokens_per_s": round(useful / secs, 1),
            "mfu": round(model_flops(model, timed) / secs / (args.peak_tflops * 1e12), 4),
            "peak_gib": peak_gib(args.device),
            "how": how,
        }
        record(name, row)
        rows[name] = row
        losses[name] = loss

    # The reference once more at the end: the first variant of a process can pay warm-up costs
    # its untimed steps do not absorb (run 1 of this bench: 0.42 s/step first, against 0.25-0.30
    # s/step for the same step in benches/gpu_study.py).
    variants.append(("reference (again)", 1, lambda: run_reference(model, mems[0], args)))
    for name, n, fn in variants:
        measure(name, n, fn)
    fleets = [k for k in rows if k.startswith("fleet")]
    if fleets and not args.no_liger:
        try:
            from liger_kernel.transformers import apply_liger_kernel_to_qwen2
        except ImportError:
            say("+liger: skipped (liger_kernel is not installed)")
        else:
            best = max(fleets, key=lambda k: rows[k]["useful_tokens_per_s"])
            apply_liger_kernel_to_qwen2(
                model=model,
                rope=True,
                rms_norm=True,
                swiglu=True,
                cross_entropy=False,
                fused_linear_cross_entropy=False,
            )
            n = rows[best]["members"]
            ckpt = True if best.endswith("+gc") else None
            measure(f"{best} +liger", n, lambda: run_ours(model, mems[:n], args, checkpointing=ckpt))
            measure("ours alone +liger", 1, lambda: run_ours(model, mems[:1], args, merged_parent=True))

    alone = losses.get("ours alone", {}).get(0)
    ref = losses.get("reference", {}).get(0)
    check = {}
    for name, loss in losses.items():
        if 0 in loss and alone:
            check[name] = {
                "vs_ours_alone": round(rel_diff(loss[0], alone), 6),
                "vs_reference": round(rel_diff(loss[0], ref), 6) if ref else None,
            }
    check["member0_losses"] = {k: [round(x, 5) for x in v[0]] for k, v in losses.items() if 0 in v}
    record("loss_check_max_rel", check)

    # The ratio's reference: the faster of its two measurements.
    refs = [rows[k] for k in ("reference", "reference (again)") if k in rows]
    base = max(refs, key=lambda r: r["useful_tokens_per_s"]) if refs else None
    say("")
    say(f"{'variant':<28}{'members':>8}{'s/step':>9}{'useful tok/s':>14}{'MFU':>8}{'peak GiB':>10}{'ratio':>8}")
    for name, row in rows.items():
        ratio = row["useful_tokens_per_s"] / base["useful_tokens_per_s"] if base else float("nan")
        row["ratio"] = round(ratio, 2)
        peak = row["peak_gib"] if row["peak_gib"] is not None else "-"
        say(
            f"{name:<28}{row['members']:>8}{row['s_per_step']:>9.3f}{row['useful_tokens_per_s']:>14,.0f}"
            f"{row['mfu']:>8.1%}{peak:>10}{ratio:>8.2f}"
        )
    record("table", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
