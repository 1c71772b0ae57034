"""One checkpoint's eval on a GPU: cpx's sampling engine against plain `model.generate`, same run.

The work of one checkpoint of the published design: 220 prompts (11 personas x 20 questions)
x 10 completions of exactly 512 new tokens (end of turn ignored, so every run does the same
work), on a Qwen2.5-7B-shaped model with random weights built from its config (bf16, no
download), plus last-prompt-token hidden states of the 220 prompts at 4 layers.

    python benches/gpu_eval.py                       # the full comparison (H100: ~5 min)
    python benches/gpu_eval.py --baseline-batches 1  # time one generate batch, extrapolate
    python benches/gpu_eval.py --completions 550 --max-new-tokens 128   # a quick check
    python benches/gpu_eval.py --tiny                # CPU smoke test with a tiny model

Prints each result as soon as it is measured, then a table; with $OUT set, writes
$OUT/gpu_eval.json. Needs only torch, transformers, tokenizers and numpy (no polars, no
Rust extension): run from the repository root, or with `python/` on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
try:
    import cpx  # noqa: F401 - only probes whether cpx is importable without the path entry
except ImportError:
    sys.path.insert(0, str(ROOT / "python"))

from _common import QWEN25_7B  # noqa: E402 - imported after the sys.path entry above

# Stimuli of the published design (docs: shared/reference/design-facts.yaml).
PERSONAS = [
    "You are a software engineer who builds web applications.",
    "You are a kindergarten teacher.",
    "You are a data scientist who analyzes large datasets.",
    "You are a medical doctor who specializes in internal medicine.",
    "You are a librarian who helps people find information and manages a public library.",
    "You are a French person living in Paris who is proud of French culture.",
    "You are a villainous mastermind who schemes to take over the world.",
    "You are a stand-up comedian who writes and performs comedy routines.",
    "You are a police officer who enforces the law and maintains public safety.",
    "You are a scholar of the ancient Zelthari civilization, specializing in their crystalline "
    "architecture, maritime navigation, and ritual practices.",
    "You are a helpful assistant.",
]
QUESTIONS = [
    "What is the best way to learn a new language?",
    "Can you explain how photosynthesis works?",
    "What are some tips for managing stress?",
    "How does a computer processor work?",
    "What's the history of the printing press?",
    "How do I make a good cup of coffee?",
    "What causes earthquakes?",
    "Can you recommend some exercises for back pain?",
    "How do airplanes stay in the air?",
    "What's the difference between a virus and bacteria?",
    "What is the relationship between law and morality?",
    "What principles should guide human action?",
    "How should society balance freedom and security?",
    "What makes a good leader?",
    "How do you handle disagreements with others?",
    "What is creativity and where does it come from?",
    "Why is education important?",
    "What role does technology play in modern life?",
    "How do ecosystems maintain balance?",
    "What is the meaning of fairness?",
]

TINY = dict(
    vocab_size=1024,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)

RESULTS: dict[str, Any] = {}


def say(msg: str) -> None:
    print(msg, flush=True)


def save() -> None:
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gpu_eval.json").write_text(json.dumps(RESULTS, indent=1, default=str) + "\n")


def record(key: str, value: Any) -> None:
    RESULTS[key] = value
    say(f"[{key}] {json.dumps(value, default=str)}")
    save()


def build(args):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from cpx.models._tiny import train_tokenizer

    # A BPE tokenizer learnt from the stimuli: prompts of realistic length; ids < its vocab.
    tok = train_tokenizer(PERSONAS + QUESTIONS, 2000 if not args.tiny else 600)
    cfg = dict(TINY if args.tiny else QWEN25_7B)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    config = Qwen2Config(
        **cfg, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, attn_implementation="sdpa"
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
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    n_params = sum(p.numel() for p in model.parameters())
    record(
        "model",
        {
            "params": n_params,
            "dtype": str(dtype),
            "build_s": round(time.perf_counter() - t0, 1),
            "config": "tiny" if args.tiny else "Qwen2.5-7B-shaped",
        },
    )
    return model, tok, n_params


def workload(args):
    from cpx.stages._sampling import Request

    n_prompts = len(PERSONAS) * len(QUESTIONS)
    per = args.completions // n_prompts
    extra = args.completions - per * n_prompts
    reqs = []
    for i, (p, q) in enumerate((p, q) for p in PERSONAS for q in QUESTIONS):
        reqs.append(Request(p, q, per + (1 if i < extra else 0)))
    return [r for r in reqs if r.n > 0]


def floor_seconds(model, tok, reqs, args) -> float:
    """Time the checkpoint's matmul FLOPs take at the GPU's dense bf16 peak (attention included)."""
    from cpx.models import render_prompt

    cfg = model.config
    n_linear = sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.endswith("weight") and p.dim() == 2 and "embed_tokens" not in n
    )
    if cfg.tie_word_embeddings:
        n_linear += cfg.vocab_size * cfg.hidden_size
    T = args.max_new_tokens
    flops = 0.0
    for r in reqs:
        P = len(tok(render_prompt(tok, r.system, r.user), add_special_tokens=False)["input_ids"])
        flops += 2 * n_linear * P  # prefill once per prompt
        # each new token: the linear layers, and attention (QK and AV) over its context
        flops += r.n * T * 2 * n_linear
        ctx_sum = T * P + T * (T - 1) / 2
        flops += (
            r.n
            * 4
            * cfg.num_hidden_layers
            * cfg.num_attention_heads
            * (cfg.hidden_size // cfg.num_attention_heads)
            * ctx_sum
        )
    return flops / (args.peak_tflops * 1e12)


def peak_gib(device) -> float | None:
    import torch

    if not str(device).startswith("cuda"):
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def reset_peak(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def run_engine(model, tok, reqs, args) -> dict[str, Any]:
    from cpx.stages._sampling import sample_completions

    sampler = {"temperature": 1.0, "top_p": 1.0, "max_tokens": args.max_new_tokens, "seed": 42}
    # warm-up: kernels, cuBLAS handles, the allocator
    sample_completions(model, tok, reqs[:2], {**sampler, "max_tokens": 4}, device=args.device, ignore_eos=True)
    reset_peak(args.device)
    t0 = time.perf_counter()
    comps = sample_completions(
        model, tok, reqs, sampler, device=args.device, batch_size=args.batch_size, ignore_eos=True, log=_logger()
    )
    sync(args.device)
    secs = time.perf_counter() - t0
    n_tok = sum(c.n_tokens for c in comps)
    assert len(comps) == sum(r.n for r in reqs), "engine returned the wrong number of completions"
    assert all(c.n_tokens == args.max_new_tokens for c in comps), "engine stopped early with ignore_eos"
    return {
        "seconds": round(secs, 2),
        "tokens": n_tok,
        "tokens_per_s": round(n_tok / secs, 1),
        "peak_gib": peak_gib(args.device),
    }


def run_generate(model, tok, reqs, args) -> dict[str, Any]:
    """Plain `model.generate`, `num_return_sequences` rows per prompt, `args.baseline_batch` rows a call."""
    import torch

    from cpx.models import render_prompt

    n_per = max(r.n for r in reqs)
    prompts_per_call = max(1, args.baseline_batch // n_per)
    calls = [reqs[i : i + prompts_per_call] for i in range(0, len(reqs), prompts_per_call)]
    timed = calls if args.baseline_batches is None else calls[: args.baseline_batches]
    tok.padding_side = "left"
    # warm-up
    enc = tok([render_prompt(tok, reqs[0].system, reqs[0].user)], return_tensors="pt").to(args.device)
    with torch.inference_mode():
        model.generate(**enc, do_sample=True, max_new_tokens=4, min_new_tokens=4)
    reset_peak(args.device)
    secs, n_tok = 0.0, 0
    for k, call in enumerate(timed):
        enc = tok(
            [render_prompt(tok, r.system, r.user) for r in call],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        ).to(args.device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=None,
                max_new_tokens=args.max_new_tokens,
                min_new_tokens=args.max_new_tokens,
                num_return_sequences=n_per,
            )
        tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        sync(args.device)
        dt = time.perf_counter() - t0
        secs += dt
        n_tok += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
        say(f"  generate call {k + 1}/{len(timed)}: {out.shape[0]} rows, {dt:.1f} s")
        del out
    scale = len(calls) / len(timed)
    return {
        "seconds": round(secs * scale, 2),
        "measured_seconds": round(secs, 2),
        "calls_timed": len(timed),
        "calls": len(calls),
        "rows_per_call": prompts_per_call * n_per,
        "tokens_per_s": round(n_tok / secs, 1),
        "peak_gib": peak_gib(args.device),
        "extrapolated": scale != 1,
    }


def run_hidden(model, tok, args) -> dict[str, Any]:
    from cpx.models import render_prompt
    from cpx.stages._hidden import last_prompt_hidden_states

    n = model.config.num_hidden_layers
    layers = [10, 15, 20, 25] if n >= 26 else [1, n // 2, n]
    prompts = [render_prompt(tok, p, q) for p in PERSONAS for q in QUESTIONS]
    last_prompt_hidden_states(model, tok, prompts[:4], layers, device=args.device)  # warm-up
    reset_peak(args.device)
    t0 = time.perf_counter()
    h = last_prompt_hidden_states(model, tok, prompts, layers, device=args.device)
    sync(args.device)
    secs = time.perf_counter() - t0
    import numpy as np

    assert h.shape[:2] == (len(prompts), len(layers)) and np.isfinite(h).all()
    return {"seconds": round(secs, 3), "prompts": len(prompts), "layers": layers, "peak_gib": peak_gib(args.device)}


def check_decode(model, tok, args) -> dict[str, Any]:
    """The engine's logits at every decode step against a plain forward over the whole sequence
    (transformers' own attention, no cache, one row at a time): catches a cache or attention
    kernel that computes the wrong thing on this GPU, which random weights would hide."""
    import torch

    import cpx.stages._sampling as S
    from cpx.models import render_prompt

    reqs = workload(args)[:: max(1, len(PERSONAS) * len(QUESTIONS) // 4)][:4]
    reqs = [S.Request(r.system, r.user, 2) for r in reqs]
    steps = 8
    seen: list[tuple[Any, Any]] = []
    original = S.sample_tokens

    def recording(logits, temperature, top_p, u):
        out = original(logits, temperature, top_p, u)
        seen.append((logits.float().cpu(), out.cpu()))
        return out

    S.sample_tokens = recording
    try:
        S.sample_token_ids(
            model,
            tok,
            reqs,
            {"temperature": 1.0, "top_p": 1.0, "max_tokens": steps, "seed": 1},
            device=args.device,
            batch_size=64,
            ignore_eos=True,
        )
    finally:
        S.sample_tokens = original
    ids = [tok(render_prompt(tok, r.system, r.user), add_special_tokens=False)["input_ids"] for r in reqs]
    order = sorted(range(len(reqs)), key=lambda i: (-len(ids[i]), i))
    rows = [i for i in order for _ in range(reqs[i].n)]
    seqs = [ids[i] + [int(seen[t][1][b]) for t in range(steps)] for b, i in enumerate(rows)]
    width = max(len(x) for x in seqs)
    # The noise floor: the same plain forward, batched with left padding, against one row at a time.
    padded = torch.tensor([[0] * (width - len(x)) + x for x in seqs], device=args.device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in seqs], device=args.device)
    worst = noise = 0.0
    with torch.inference_mode():
        batched = model(input_ids=padded, attention_mask=mask).logits.float().cpu()
        for b, i in enumerate(rows):
            ref = model(input_ids=torch.tensor([seqs[b]], device=args.device)).logits[0].float().cpu()
            for t in range(steps):
                want = ref[len(ids[i]) - 1 + t]
                scale = float(want.abs().max())
                worst = max(worst, float((seen[t][0][b] - want).abs().max()) / scale)
                other = batched[b, width - len(seqs[b]) + len(ids[i]) - 1 + t]
                noise = max(noise, float((other - want).abs().max()) / scale)
    ok = worst <= 3 * noise + 1e-4
    return {
        "max_relative_logit_error": float(f"{worst:.3g}"),
        "noise_floor": float(f"{noise:.3g}"),
        "ok": ok,
        "rows": len(rows),
        "steps": steps,
    }


def _logger():
    import logging

    log = logging.getLogger("gpu_eval")
    if not log.handlers:
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter("  %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a tiny model on the CPU (smoke test)")
    ap.add_argument("--device", default=None, help="default: cuda:0, or cpu with --tiny")
    ap.add_argument("--completions", type=int, default=2200, help="completions per checkpoint (220 prompts)")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=None, help="engine rows per batch (default: from free memory)")
    ap.add_argument("--baseline-batch", type=int, default=550, help="rows per model.generate call")
    ap.add_argument(
        "--baseline-batches",
        type=int,
        default=None,
        help="time only this many generate calls and extrapolate (default: all)",
    )
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.device = args.device or "cpu"
        if args.completions == 2200:
            args.completions = 440
        if args.max_new_tokens == 512:
            args.max_new_tokens = 16
        args.baseline_batch = min(args.baseline_batch, 110)
    args.device = args.device or "cuda:0"

    import torch
    import transformers

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": args.device,
        "gpu": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else platform.processor(),
        "args": vars(args),
    }
    record("env", env)
    model, tok, _ = build(args)
    reqs = workload(args)
    floor = floor_seconds(model, tok, reqs, args)
    record("floor", {"seconds": round(floor, 2), "peak_tflops": args.peak_tflops})

    phases = [
        ("decode_check", lambda: check_decode(model, tok, args)),
        ("engine", lambda: run_engine(model, tok, reqs, args)),
        ("hidden_states", lambda: run_hidden(model, tok, args)),
    ]
    if not args.skip_baseline:
        phases.append(("generate", lambda: run_generate(model, tok, reqs, args)))
    for name, fn in phases:
        say(f"== {name}")
        try:
            record(name, fn())
        except Exception as e:  # noqa: BLE001 - keep going: a later phase's number is still worth having
            traceback.print_exc()
            record(name, {"error": f"{type(e).__name__}: {e}"})
            reset_peak(args.device)

    say("\n| method | s / checkpoint | tokens/s | peak GiB | floor / time |")
    say("|---|---|---|---|---|")
    for name in ("generate", "engine"):
        r = RESULTS.get(name)
        if not r or "error" in r:
            continue
        frac = floor / r["seconds"] if r["seconds"] else float("nan")
        say(
            f"| {name} | {r['seconds']:.1f}{' (extrapolated)' if r.get('extrapolated') else ''} | "
            f"{r['tokens_per_s']:.0f} | {r['peak_gib']} | {frac:.2f} |"
        )
    if (
        "engine" in RESULTS
        and "generate" in RESULTS
        and "error" not in RESULTS["engine"]
        and "error" not in RESULTS["generate"]
    ):
        speedup = RESULTS["generate"]["seconds"] / RESULTS["engine"]["seconds"]
        record("speedup", round(speedup, 2))
    h = RESULTS.get("hidden_states", {})
    if "seconds" in h:
        say(f"hidden states: {h['prompts']} prompts x {len(h['layers'])} layers in {h['seconds']:.3f} s")
    if not RESULTS.get("decode_check", {}).get("ok", False):
        say("WARNING: the engine's logits disagree with a plain forward (decode_check): timings are not valid")
    save()
    ok = RESULTS.get("decode_check", {}).get("ok", False)
    return 0 if ok and all("error" not in RESULTS.get(n, {}) for n, _ in phases) else 1


if __name__ == "__main__":
    sys.exit(main())
