"""LoRA SFT throughput on a GPU: the naive padded peft loop against cpx's training loop, same run.

The work: convergence SFT of the published design (LoRA r=32, alpha 64, rsLoRA, all linear
layers, bf16 autocast, AdamW, 4 examples per optimizer step, full loss) on a
Qwen2.5-7B-shaped model with random weights built from its config (no download). Examples are
a chat-templated persona prompt plus a response of 150-500 tokens (uniform, seeded): the
realistic length mix of on-policy answers.

Variants (each runs `--warmup` untimed steps, then `--steps` timed steps):

- `reference`: the naive loop: every batch padded to 4 x 1,024 tokens, gradient
  checkpointing, transformers' own loss over all positions (DESIGN.md measured 0.54 s/step);
- `pad-longest`: the same loop, padded to the batch's longest example only;
- `cpx packed +gc` / `cpx packed`: `cpx.stages._training.train_lora`, the train stage's own
  loop: the 4 examples packed into one row with no padding (position ids restart per example),
  the output head only on labelled positions, with and without gradient checkpointing;
- `cpx stage, gc asked`: the stage as a spec asking for checkpointing runs it: a memory probe
  on the longest micro-batch drops checkpointing when it fits (the probe's step is timed);
- `cpx packed +liger`: the same with liger-kernel's fused RMSNorm/SwiGLU/RoPE, if importable.

Then the model pool's adapter switch on the same model (`chain_switch`): merge time of one
adapter, restore time, the merged model's logits against peft's unmerged forward, and whether
the restored base gives the base's logits exactly.

Useful tokens are the examples' own tokens (prompt + response, no padding); the ratio column
compares useful tokens/s with the reference. MFU counts useful work only: per useful token
4 x the linear weights (forward, and the backward pass to activations: frozen weights need no
weight gradients) + 6 x the LoRA weights + causal attention, over `--peak-tflops`.

    python benches/gpu_train.py                 # H100: about 2 minutes
    python benches/gpu_train.py --steps 20      # steadier numbers
    python benches/gpu_train.py --tiny          # CPU smoke test with a tiny model

Needs only torch, transformers, peft and tokenizers (no polars, no Rust extension): run from
the repository root, or with `python/` on PYTHONPATH. With $OUT set, writes $OUT/gpu_train.json.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
try:
    import cpx  # noqa: F401 - only probes whether cpx is importable without the path entry
except ImportError:
    sys.path.insert(0, str(ROOT / "python"))

from _common import QWEN25_7B, recorder, torch_env  # noqa: E402 - imported after the sys.path entry above

PERSONAS = [
    "You are a software engineer who builds web applications.",
    "You are a kindergarten teacher.",
    "You are a villainous mastermind who schemes to take over the world.",
    "You are a stand-up comedian who writes and performs comedy routines.",
    "You are a helpful assistant.",
]
QUESTIONS = [
    "What are the main causes of climate change?",
    "How does the human immune system fight infection?",
    "What is the history of democracy?",
    "How do electric vehicles work?",
    "What are the benefits of reading regularly?",
    "How does the stock market function?",
    "What causes ocean tides?",
    "How do vaccines prevent disease?",
]
TINY = dict(
    vocab_size=1024,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA: dict[str, Any] = {"r": 32, "alpha": 64, "rslora": True, "dropout": 0.0, "target_modules": TARGETS}
BATCH = 4
MAX_LENGTH = 1024

RESULTS: dict[str, Any] = {}


def say(msg: str) -> None:
    print(msg, flush=True)


record = recorder(RESULTS, "gpu_train.json")


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.startswith("cuda") else None


def build(args):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from cpx.models._tiny import train_tokenizer

    tok = train_tokenizer(PERSONAS + QUESTIONS, 600 if args.tiny else 2000)
    cfg = dict(TINY if args.tiny else QWEN25_7B)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    config = Qwen2Config(
        **cfg, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, attn_implementation=args.attn
    )
    t0 = time.perf_counter()
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(args.device):
            torch.manual_seed(0)
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(prev)
    model.eval().requires_grad_(False)
    record(
        "model",
        {
            "config": "tiny" if args.tiny else "Qwen2.5-7B-shaped",
            "dtype": str(dtype),
            "params": sum(p.numel() for p in model.parameters()),
            "attn": args.attn,
            "build_s": round(time.perf_counter() - t0, 1),
        },
    )
    return model, tok


def examples(tok, n: int, seed: int, response: tuple[int, int] = (150, 500)):
    """n full-loss examples: a persona prompt, `response` (min, max) random response tokens, the
    end of turn."""
    from cpx.models import render_prompt
    from cpx.stages._training import IGNORE, Encoded, end_of_turn_id

    rng = random.Random(seed)
    eot = end_of_turn_id(tok)
    special = set(tok.all_special_ids)
    vocab = [i for i in range(len(tok)) if i not in special]
    out = []
    for i in range(n):
        prompt = tok(
            render_prompt(tok, PERSONAS[i % len(PERSONAS)], QUESTIONS[i % len(QUESTIONS)]), add_special_tokens=False
        ).input_ids
        resp = [rng.choice(vocab) for _ in range(rng.randint(*response))] + [eot]
        out.append(Encoded(prompt + resp, [IGNORE] * len(prompt) + resp, len(prompt)))
    return out


def model_flops(model, exs) -> float:
    """Useful training FLOPs of the examples (see the module docstring)."""
    cfg = model.config
    n_linear = sum(
        m.weight.numel() for n, m in model.named_modules() if type(m).__name__ == "Linear" and "lora" not in n
    )
    n_lora = sum(
        LORA["r"] * (m.in_features + m.out_features)
        for n, m in model.named_modules()
        if type(m).__name__ == "Linear" and n.rsplit(".", 1)[-1] in TARGETS
    )
    total = 0.0
    for ex in exs:
        s = len(ex.input_ids)
        total += s * (4 * n_linear + 6 * n_lora)
        total += 3 * 2 * s * s * cfg.hidden_size * cfg.num_hidden_layers  # causal QK^T and AV, fwd + bwd
    return total


class Clock:
    """Per-step timestamps (the device synchronised), the first `warmup` steps left out."""

    def __init__(self, device: str, warmup: int):
        self.device, self.warmup = device, warmup
        self.t: dict[int, float] = {}

    def __call__(self, step: int, _model=None) -> None:
        sync(self.device)
        self.t[step] = time.perf_counter()

    def seconds(self) -> tuple[float, int]:
        last = max(self.t)
        return self.t[last] - self.t[self.warmup], last - self.warmup


def run_reference(model, exs, args, pad_to: int | None) -> Clock:
    """The naive loop: padded batches, transformers' loss over all positions."""
    import torch
    from peft import LoraConfig, get_peft_model

    from cpx.stages._training import pad, set_checkpointing

    cfg = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        use_rslora=True,
        lora_dropout=0.0,
        target_modules=TARGETS,
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft 0.21 reads a property transformers 5 deprecated; the same filter as the stage's.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
        peft_model = get_peft_model(model, cfg)
    base = peft_model.get_base_model()
    set_checkpointing(base, True)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-5)
    cuda = args.device.startswith("cuda")
    clock = Clock(args.device, args.warmup)
    peft_model.train()
    try:
        clock(0)
        for step in range(args.warmup + args.steps):
            batch = pad(exs[step * BATCH : (step + 1) * BATCH], length=pad_to, device=args.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                out = peft_model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    labels=batch["labels"],
                    use_cache=False,
                )
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            clock(step + 1)
    finally:
        set_checkpointing(base, False)
        peft_model.unload()
        if hasattr(model, "disable_input_require_grads"):
            model.disable_input_require_grads()
        model.requires_grad_(False).eval()
    return clock


def run_cpx(model, exs, args, grad_ckpt: bool, probe: bool = False) -> Clock:
    """The train stage's own loop (`train_lora`), timed through its per-step callback."""
    from cpx.stages._training import train_lora

    optim = {
        "lr": 5e-5,
        "epochs": 1,
        "schedule": "cosine",
        "warmup_ratio": 0.05,
        "optimizer": "adamw",
        "weight_decay": 0.0,
        "grad_clip": 1.0,
        "batch_size": BATCH,
        "grad_accum": 1,
        "max_length": MAX_LENGTH,
        "precision": "bf16",
        "gradient_checkpointing": grad_ckpt,
    }
    clock = Clock(args.device, args.warmup)
    clock(0)
    with tempfile.TemporaryDirectory() as tmp:
        train_lora(
            model,
            exs[: (args.warmup + args.steps) * BATCH],
            lora=LORA,
            optim=optim,
            checkpoints=[],
            out_dir=Path(tmp),
            seed=0,
            device=args.device,
            on_step=clock,
            probe_memory=probe,
        )
    return clock


def check_packing(model, exs, device: str) -> float:
    """Relative difference of the packed and padded loss of one batch (should be ~bf16 noise)."""
    import torch

    from cpx.stages._training import loss_sum, pack, pad

    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
        a, n = loss_sum(model, pack(exs[:BATCH], device))
        b, m = loss_sum(model, pad(exs[:BATCH], device=device))
    assert n == m
    return abs(float(a) - float(b)) / abs(float(b))


def chain_switch(model, tok, args) -> dict[str, Any]:
    """The model pool's adapter switch on this model: merge one r=32 all-linear rsLoRA adapter
    (random, non-zero), compare with peft's unmerged forward, restore the base exactly."""
    import torch
    from peft import LoraConfig, get_peft_model

    from cpx.models import MergedModel, read_adapter

    cfg = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        use_rslora=True,
        target_modules=TARGETS,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    ids = torch.tensor([tok("<|im_start|>user\nWhat causes ocean tides?<|im_end|>\n").input_ids], device=args.device)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
        torch.manual_seed(0)
        peft_model = get_peft_model(model, cfg)
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.mul_(0.01)
            want = peft_model(input_ids=ids).logits.float()
        peft_model.save_pretrained(tmp)
        peft_model.unload()
        with torch.no_grad():
            base_logits = model(input_ids=ids).logits.float()
        merged = MergedModel(model, args.device)
        deltas = read_adapter(tmp)
        t0 = time.perf_counter()
        merged.merge(deltas)  # the first merge also copies the touched base weights to the CPU
        sync(args.device)
        t_first = time.perf_counter() - t0
        with torch.no_grad():
            got = model(input_ids=ids).logits.float()
        t0 = time.perf_counter()
        merged.restore()
        sync(args.device)
        t_restore = time.perf_counter() - t0
        with torch.no_grad():
            back = model(input_ids=ids).logits.float()
        t0 = time.perf_counter()
        merged.merge(deltas)
        sync(args.device)
        t_merge = time.perf_counter() - t0
        merged.restore()
    return {
        "first_merge_s": round(t_first, 2),
        "merge_s": round(t_merge, 2),
        "restore_s": round(t_restore, 2),
        "adapter_effect_max_abs": round(float((want - base_logits).abs().max()), 4),
        "merged_vs_peft_max_abs": round(float((got - want).abs().max()), 4),
        "restored_equals_base": bool(torch.equal(back, base_logits)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU (smoke test)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    ap.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, flash_attention_2, ...)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    ap.add_argument("--only", default=None, help="comma-separated variant names to run")
    args = ap.parse_args()
    import torch

    args.device = args.device or ("cpu" if args.tiny else "cuda:0")
    if args.tiny:
        args.steps, args.warmup = min(args.steps, 3), min(args.warmup, 1)
    record("env", torch_env(args.device))
    model, tok = build(args)
    exs = examples(tok, (args.warmup + args.steps) * BATCH, seed=1)
    timed = exs[args.warmup * BATCH :]
    useful = sum(len(e.input_ids) for e in timed)
    flops = model_flops(model, timed)
    record(
        "workload",
        {
            "examples_per_step": BATCH,
            "timed_steps": args.steps,
            "useful_tokens": useful,
            "mean_example_tokens": round(useful / len(timed), 1),
            "model_tflop": round(flops / 1e12, 2),
        },
    )
    try:
        record("packed_vs_padded_loss_rel_diff", check_packing(model, exs, args.device))
    except Exception as e:  # noqa: BLE001 - a failed check is reported, the timings still run
        record("packed_vs_padded_loss_rel_diff", f"failed: {e!r}")

    variants: list[tuple[str, Any, int | None]] = [
        ("reference", lambda: run_reference(model, exs, args, MAX_LENGTH), MAX_LENGTH),
        ("pad-longest", lambda: run_reference(model, exs, args, None), -1),
        ("cpx packed +gc", lambda: run_cpx(model, exs, args, True), None),
        ("cpx packed", lambda: run_cpx(model, exs, args, False), None),
        # What the train stage does when a spec asks for checkpointing: probe, drop it if it fits.
        ("cpx stage, gc asked", lambda: run_cpx(model, exs, args, True, probe=True), None),
    ]
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_qwen2
    except ImportError:
        say("cpx packed +liger: skipped (liger_kernel is not installed)")
    else:

        def liger():
            apply_liger_kernel_to_qwen2(
                model=model,
                rope=True,
                rms_norm=True,
                swiglu=True,
                cross_entropy=False,
                fused_linear_cross_entropy=False,
            )
            return run_cpx(model, exs, args, False)

        variants.append(("cpx packed +liger", liger, None))  # last: it patches the model in place
    only = set(args.only.split(",")) if args.only else None
    rows = []
    for name, fn, pad_to in variants:
        if only and name not in only:
            continue
        reset_peak(args.device)
        try:
            clock = fn()
        except Exception as e:  # noqa: BLE001 - one variant's failure (OOM, missing kernel) must not hide the others
            traceback.print_exc()
            record(name, {"error": repr(e)[:300]})
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
            continue
        secs, steps = clock.seconds()
        if pad_to == MAX_LENGTH:
            processed = steps * BATCH * MAX_LENGTH
        elif pad_to == -1:
            processed = sum(
                BATCH * max(len(e.input_ids) for e in timed[i : i + BATCH]) for i in range(0, len(timed), BATCH)
            )
        else:
            processed = useful
        row = {
            "s_per_step": round(secs / steps, 4),
            "tokens_per_s": round(processed / secs, 1),
            "useful_tokens_per_s": round(useful / secs, 1),
            "mfu": round(flops / secs / (args.peak_tflops * 1e12), 4),
            "peak_gib": peak_gib(args.device),
        }
        record(name, row)
        rows.append((name, row))
    ref = dict(rows).get("reference")
    say("")
    say(f"{'variant':<20}{'s/step':>9}{'tok/s':>11}{'useful tok/s':>14}{'MFU':>8}{'peak GiB':>10}{'ratio':>8}")
    for name, row in rows:
        ratio = row["useful_tokens_per_s"] / ref["useful_tokens_per_s"] if ref else float("nan")
        row["ratio"] = round(ratio, 2)
        say(
            f"{name:<20}{row['s_per_step']:>9.3f}{row['tokens_per_s']:>11,.0f}{row['useful_tokens_per_s']:>14,.0f}"
            f"{row['mfu']:>8.1%}{row['peak_gib'] if row['peak_gib'] is not None else '-':>10}{ratio:>8.2f}"
        )
    record("table", dict(rows))
    try:
        record("chain_switch", chain_switch(model, tok, args))
    except Exception as e:  # noqa: BLE001 - reported, the table above stands
        traceback.print_exc()
        record("chain_switch", {"error": repr(e)[:300]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
