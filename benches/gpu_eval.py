"""One checkpoint's eval on a GPU: cpx's sampling engine against plain `model.generate`, same run.

The work of one checkpoint of the published design: 220 prompts (11 personas x 20 questions)
x 10 completions of exactly 512 new tokens (end of turn ignored, so every run does the same
work), on a Qwen2.5-7B-shaped model with random weights built from its config (bf16, no
download), plus last-prompt-token hidden states of the 220 prompts at 4 layers.

    python benches/gpu_eval.py                       # the full comparison (H100: ~5 min)
    python benches/gpu_eval.py --baseline-batches 1  # time one generate batch, extrapolate
    python benches/gpu_eval.py --completions 550 --max-new-tokens 128   # a quick check
    python benches/gpu_eval.py --tiny                # CPU smoke test with a tiny model
    python benches/gpu_eval.py --profile --variants eager,fused   # per-step breakdown, before/after
    python benches/gpu_eval.py --variants fused,fused_topp   # the generate stage's sampler against the eval's

On CUDA the engine runs in variants (`--variants`): eager (the PyTorch path), kernel (the fused
decode-attention kernel), graphs (the kernel, steps replayed from CUDA graphs) and fused (the
engine's default: graphs and fused elementwise kernels), each at the eval's sampler
(temperature 1, top_p 1) or, with a suffix "_topp", at the generate stage's (temperature 0.7,
top_p 0.95; "_topp_sort": the fused path, but its top-p draw sorts; "_topp_acc": its top-p
kernel accumulating per lane; "_topp_rej": the rejection draw). Every "fused" variant runs
the fused `rope_store` kernel (rotary embedding and cache write; `_decode_step.FUSE_ROPE`, off
in the engine until measured); "_norope" runs transformers' rotary embedding and the cache's
own write instead (the engine's default today). `--profile` adds, per variant, a
torch.profiler breakdown of decode steps 2-4 and of the last steps but two: matrix products,
attention, sampling, other kernels and GPU idle time. Micro-benchmarks of one layer's decode
attention and of the draw run too. Triton is needed for the fused variants.

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
from contextlib import contextmanager
from functools import partial
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


# The generate stage's sampler (on-policy data), against the eval's temperature 1, top_p 1.
GENERATE_SAMPLER = {"temperature": 0.7, "top_p": 0.95}
# The "_acc" variants' top-p kernel: per-lane accumulation at blocks of 256 and 4 warps, the
# fastest draw of the micro-benchmark on the H200 (20.9 ms against the default's 25.7).
TOP_P_ACC = {"block": 256, "num_warps": 4, "accumulate": True, "draw_block": 2048}


def run_engine(model, tok, reqs, args, variant: str = "fused") -> dict[str, Any]:
    """One checkpoint's sampling through the engine: `variant` "eager" (the PyTorch path:
    attention over an additive bias, no graphs), "kernel" (the fused decode-attention kernel,
    no graphs), "graphs" (the kernel, steps replayed from CUDA graphs) or "fused" (the
    engine's default on CUDA: graphs, and single-pass RMSNorm, gated activation and draw), at the eval's sampler (temperature 1, top_p 1). Suffixes: "_topp"
    samples at the generate stage's (temperature 0.7, top_p 0.95: the fused path's top-p
    kernel); "_sort" makes the fused path sort for top_p as the PyTorch path does; "_acc" runs
    the top-p kernel with per-lane accumulation (`TOP_P_ACC`); "_rej" draws top-p by rejection
    (`sample_top_p_reject`); "_norope"
    leaves out the fused rotary embedding and cache write."""
    import cpx.stages._decode_step as DS
    import cpx.stages._draws as DR
    from cpx.stages._sampling import sample_completions

    base, *flags = variant.split("_")
    assert base in ("eager", "kernel", "graphs", "fused") and set(flags) <= {"topp", "sort", "acc", "rej", "norope"}, (
        variant
    )
    fused = base != "eager"
    sampler = {"temperature": 1.0, "top_p": 1.0, "max_tokens": args.max_new_tokens, "seed": 42}
    if "topp" in flags:
        sampler.update(GENERATE_SAMPLER)
    DS.USE_GRAPHS = base in ("graphs", "fused")
    DS.FUSE_ELEMENTWISE = base == "fused"
    default_rope = DS.FUSE_ROPE
    DS.FUSE_ROPE = "norope" not in flags
    default_top_p = DR.FUSE_TOP_P
    DR.FUSE_TOP_P = "sort" not in flags
    if "acc" in flags:
        DR.TOP_P_OPTIONS = dict(TOP_P_ACC)
    default_draw = DR.TOP_P_DRAW
    if "rej" in flags:
        DR.TOP_P_DRAW = "reject"
    try:
        # warm-up: kernels, cuBLAS handles, the allocator
        sample_completions(
            model, tok, reqs[:2], {**sampler, "max_tokens": 4}, device=args.device, ignore_eos=True, fused=fused
        )
        reset_peak(args.device)
        T = args.max_new_tokens
        windows = [(2, 5), (T - 5, T - 2)] if args.profile and T >= 16 else []
        with profiled_steps(windows, graphs=DS.USE_GRAPHS) as prof:
            t0 = time.perf_counter()
            comps = sample_completions(
                model,
                tok,
                reqs,
                sampler,
                device=args.device,
                batch_size=args.batch_size,
                ignore_eos=True,
                log=_logger(),
                fused=fused,
            )
            sync(args.device)
            secs = time.perf_counter() - t0
    finally:
        DS.USE_GRAPHS = DS.FUSE_ELEMENTWISE = True
        DS.FUSE_ROPE = default_rope
        DR.FUSE_TOP_P = default_top_p
        DR.TOP_P_OPTIONS = {}
        DR.TOP_P_DRAW = default_draw
    n_tok = sum(c.n_tokens for c in comps)
    assert len(comps) == sum(r.n for r in reqs), "engine returned the wrong number of completions"
    assert all(c.n_tokens == args.max_new_tokens for c in comps), "engine stopped early with ignore_eos"
    out = {
        "variant": variant,
        "temperature": sampler["temperature"],
        "top_p": sampler["top_p"],
        "seconds": round(secs, 2),
        "tokens": n_tok,
        "tokens_per_s": round(n_tok / secs, 1),
        "peak_gib": peak_gib(args.device),
    }
    if prof:
        out["profile"] = prof
    return out


# Where a decode step's GPU time goes: kernels are attributed to the innermost of these regions
# (record_function ranges the profile wraps around the engine's functions) or matrix-product ops.
_MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"}
_ATTENTION_KERNELS = ("_split_kernel", "_combine_kernel", "fmha", "flash", "attention")
_MATMUL_KERNELS = ("gemm", "nvjet", "xmma", "cutlass", "cublas")


@contextmanager
def profiled_steps(windows: list[tuple[int, int]], graphs: bool):
    """Profile the decode steps [a, b) of each window with torch.profiler; yields a dict that
    holds, when the run is over, each window's per-step breakdown (ms): matrix products,
    attention over the cache, sampling, other kernels, and GPU idle time (launch and Python
    overhead), against the step's wall time."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    import cpx.stages._decode as D
    import cpx.stages._kv as KV

    results: dict[str, Any] = {}
    if not windows:
        yield results
        return
    original_sample, original_attention = D.sample_tokens, KV._attention
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    calls = {"n": 0}
    state: dict[str, Any] = {}

    def attention(*a, **kw):
        with record_function("cpx.attention"):
            return original_attention(*a, **kw)

    def sampling(*a, **kw):
        t = calls["n"]
        calls["n"] += 1
        for w0, w1 in windows:
            if t == w0:
                if cuda:
                    torch.cuda.synchronize()
                state["prof"] = profile(activities=activities)
                state["prof"].__enter__()
                state["t0"] = time.perf_counter()
            elif t == w1:
                if cuda:
                    torch.cuda.synchronize()
                wall = time.perf_counter() - state["t0"]
                state["prof"].__exit__(None, None, None)
                path = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu_eval_trace_{w0}.json"
                state["prof"].export_chrome_trace(str(path))
                results[f"steps_{w0}_{w1}"] = step_breakdown(path, w1 - w0, wall, graphs)
                path.unlink()
        with record_function("cpx.sampling"):
            return original_sample(*a, **kw)

    D.sample_tokens, KV._attention = sampling, attention
    try:
        yield results
    finally:
        D.sample_tokens, KV._attention = original_sample, original_attention


def step_breakdown(trace: Path, n_steps: int, wall: float, graphs: bool) -> dict[str, float]:
    """Per-step milliseconds by category from a Chrome trace of the profiler."""
    events = json.loads(trace.read_text())["traceEvents"]
    kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
    launches = {
        e["args"]["correlation"]: e
        for e in events
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})
    }
    regions = [
        e
        for e in events
        if "dur" in e
        and (
            (e.get("cat") == "user_annotation" and e.get("name") in ("cpx.attention", "cpx.sampling"))
            or (e.get("cat") == "cpu_op" and e.get("name") in _MATMUL_OPS)
        )
    ]

    def category(k) -> str:
        launch = launches.get(k.get("args", {}).get("correlation"))
        if launch is not None and "Graph" not in launch.get("name", ""):
            x, tid = launch["ts"], launch.get("tid")
            inner = [r for r in regions if r.get("tid") == tid and r["ts"] <= x <= r["ts"] + r["dur"]]
            if inner:
                name = max(inner, key=lambda r: r["ts"])["name"]
                return {"cpx.attention": "attention", "cpx.sampling": "sampling"}.get(name, "matmul")
            return "other"
        low = k["name"].lower()
        if any(a.lower() in low for a in _ATTENTION_KERNELS):
            return "attention"
        if any(m in low for m in _MATMUL_KERNELS):
            return "matmul"
        return "other"

    totals = {"matmul": 0.0, "attention": 0.0, "sampling": 0.0, "other": 0.0}
    others: dict[str, list[float]] = {}
    spans = []
    for k in kernels:
        cat = category(k)
        totals[cat] += k["dur"]
        if cat == "other":
            o = others.setdefault(k["name"][:120], [0.0, 0])
            o[0] += k["dur"]
            o[1] += 1
        spans.append((k["ts"], k["ts"] + k["dur"]))
    busy, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            busy += b - max(a, end)
            end = b
    ms = {f"{k}_ms": round(v / 1e3 / n_steps, 3) for k, v in totals.items()}
    ms["gpu_busy_ms"] = round(busy / 1e3 / n_steps, 3)
    ms["wall_ms"] = round(wall * 1e3 / n_steps, 3)
    ms["gpu_idle_ms"] = round(max(0.0, wall * 1e3 - busy / 1e3) / n_steps, 3)
    ms["kernels_per_step"] = round(len(kernels) / n_steps, 1)
    # the "other" kernels that take the most time: name -> [ms a step, launches a step]
    top = sorted(others.items(), key=lambda kv: -kv[1][0])[:12]
    ms["other_top"] = {name: [round(t / 1e3 / n_steps, 3), round(n / n_steps, 1)] for name, (t, n) in top}
    return ms


def run_attention(model, args) -> dict[str, Any]:
    """One layer's decode attention at the engine's batch, at the start and the end of a run:
    the fused kernel (a few launch configurations) against the PyTorch path (SDPA with the
    additive bias), as ms a call and the cache bandwidth it reaches."""
    import torch
    import torch.nn.functional as F
    import triton

    from cpx.stages._decode_attn import splits_for
    from cpx.stages._decode_triton import decode_attention

    cfg = model.config
    rows, kvh, h = min(args.completions, 2200), cfg.num_key_value_heads, cfg.num_attention_heads
    d = cfg.hidden_size // h
    capacity, prompt = 60 + args.max_new_tokens, 60
    gen = torch.Generator(device=args.device).manual_seed(0)
    k = torch.randn(rows, kvh, capacity, d, device=args.device, generator=gen).bfloat16()
    v = torch.randn(rows, kvh, capacity, d, device=args.device, generator=gen).bfloat16()
    q = torch.randn(rows, h, 1, d, device=args.device, generator=gen).bfloat16()
    start = torch.randint(0, 30, (rows,), device=args.device, generator=gen, dtype=torch.int32)
    out: dict[str, Any] = {"rows": rows, "capacity": capacity}
    for name, n in (("start", prompt + 3), ("end", capacity - 2)):
        length = torch.tensor([n], dtype=torch.int32, device=args.device)
        gbytes = 2 * rows * kvh * (n - float(start.float().mean())) * d * 2 / 1e9
        pos = torch.arange(n, device=args.device)
        bias = torch.where(pos[None] >= start[:, None], 0.0, torch.finfo(torch.bfloat16).min).bfloat16()
        bias = bias[:, None, None, :]
        packed = q.reshape(rows, kvh, h // kvh, d)
        ms = triton.testing.do_bench(
            partial(F.scaled_dot_product_attention, packed, k[:, :, :n], v[:, :, :n], attn_mask=bias),
            return_mode="median",
        )
        res = {"pytorch_ms": round(ms, 4), "pytorch_tb_s": round(gbytes / ms, 2)}
        auto = splits_for(rows, kvh, capacity, args.device)
        for bn, warps, stages in ((64, 4, 2), (64, 4, 3), (128, 4, 2), (128, 8, 2), (32, 4, 3)):
            fused = partial(decode_attention, q[:, :, 0], k, v, start, length, d**-0.5, auto, bn, warps, stages)
            ms = triton.testing.do_bench(fused, return_mode="median")
            res[f"fused_bn{bn}_w{warps}_s{stages}_ms"] = round(ms, 4)
            res[f"fused_bn{bn}_w{warps}_s{stages}_tb_s"] = round(gbytes / ms, 2)
        out[name] = res
    return out


def run_sampling(model, args) -> dict[str, Any]:
    """`sample_tokens` alone on random logits of the engine's batch, by sampler setting (ms a call)."""
    import torch

    from cpx.stages._draws import sample_tokens, uniforms
    from cpx.stages._kv import cache_dtype

    rows = min(args.completions, 2200)
    gen = torch.Generator(device=args.device).manual_seed(0)
    logits = torch.randn(rows, model.config.vocab_size, device=args.device, generator=gen) * 3
    logits = logits.to(cache_dtype(model))
    keys = torch.arange(rows, device=args.device, dtype=torch.long) * 7919
    out: dict[str, Any] = {"rows": rows, "vocab": model.config.vocab_size}
    cases = (
        ("greedy", 0.0, 1.0, False),
        ("t1", 1.0, 1.0, False),
        ("t1_fused", 1.0, 1.0, True),
        ("t0.7_p0.95", 0.7, 0.95, False),
        ("t0.7_p0.95_fused", 0.7, 0.95, True),
    )
    for name, temperature, top_p, fused in cases:
        if fused and not args.device.startswith("cuda"):
            continue
        for _ in range(2):
            sample_tokens(logits, temperature, top_p, uniforms(keys, 0), fused=fused)
        sync(args.device)
        t0 = time.perf_counter()
        for step in range(10):
            sample_tokens(logits, temperature, top_p, uniforms(keys, step), fused=fused)
        sync(args.device)
        out[f"{name}_ms"] = round((time.perf_counter() - t0) * 100, 3)
    if args.device.startswith("cuda"):
        a = sample_tokens(logits, 1.0, 1.0, uniforms(keys, 0))
        b = sample_tokens(logits, 1.0, 1.0, uniforms(keys, 0), fused=True)
        out["t1_fused_same_token_fraction"] = round(float((a == b).float().mean()), 4)
        out["top_p"] = run_top_p_checks(logits, keys)
    return out


def run_top_p_checks(logits, keys) -> dict[str, Any]:
    """The fused top-p draw at the generate stage's sampler on the micro-benchmark's logits:
    its nucleus against the sorting path's (a stable sort: ties in index order), where its
    draws land, and its time by block size and warps (medians of triton.testing.do_bench)."""
    import triton.testing

    from cpx.stages._draws_triton import sample_top_p, sample_top_p_reject
    from cpx.stages._draws import nucleus_mask
    from cpx.stages._draws import sample_tokens, sort_nucleus, uniforms

    t, p = GENERATE_SAMPLER["temperature"], GENERATE_SAMPLER["top_p"]
    u = uniforms(keys, 0)
    tok, thresh, n_drop = sample_top_p(logits, t, p, u, thresholds=True)
    kept = nucleus_mask(logits, thresh, n_drop)
    want = sort_nucleus(logits, t, p, stable=True)
    off = (kept != want).sum(-1)
    ref = sample_tokens(logits, t, p, u)
    out: dict[str, Any] = {
        "kept_tokens_mean": round(float(kept.sum(-1).float().mean()), 1),
        "rows_same_nucleus_fraction": round(float((off == 0).float().mean()), 4),
        "max_tokens_apart": int(off.max()),
        "draw_in_sort_nucleus_fraction": round(float(want.gather(1, tok[:, None]).float().mean()), 4),
        "same_token_as_sort_path_fraction": round(float((tok == ref).float().mean()), 4),
        "sort_ms": round(triton.testing.do_bench(lambda: sample_tokens(logits, t, p, u), return_mode="median"), 3),
    }
    # the rejection draw: where its draws land, and its time over 10 uniforms (its rounds vary)
    rej = sample_top_p_reject(logits, t, p, u)
    out["reject_draw_in_sort_nucleus_fraction"] = round(float(want.gather(1, rej[:, None]).float().mean()), 4)
    us = [uniforms(keys, step) for step in range(10)]
    out["reject_ms"] = round(
        triton.testing.do_bench(lambda: [sample_top_p_reject(logits, t, p, x) for x in us], return_mode="median") / 10,
        3,
    )
    del kept, want
    # (accumulate per lane, block, draw block, warps); the first is sample_top_p's default
    for acc, block, draw, warps in (
        (False, 2048, 2048, 8),
        (False, 1024, 1024, 8),
        (True, 128, 1024, 4),
        (True, 256, 2048, 4),
        (True, 512, 2048, 8),
    ):
        fn = partial(sample_top_p, logits, t, p, u, block, warps, accumulate=acc, draw_block=draw)
        name = f"fused_{'acc_' if acc else ''}b{block}_d{draw}_w{warps}"
        out[f"{name}_ms"] = round(triton.testing.do_bench(fn, return_mode="median"), 3)
        got = fn()
        out[f"{name}_same_token_fraction"] = round(float((got == tok).float().mean()), 4)
    return out


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


def check_decode(model, tok, args, fused: bool | None = None) -> dict[str, Any]:
    """The engine's logits at every decode step against a plain forward over the whole sequence
    (transformers' own attention, no cache, one row at a time): catches a cache or attention
    kernel that computes the wrong thing on this GPU, which random weights would hide.
    `fused` as the engine's (None: the fused path where it runs)."""
    import torch

    import cpx.stages._decode as D
    import cpx.stages._sampling as S
    from cpx.models import render_prompt

    reqs = workload(args)[:: max(1, len(PERSONAS) * len(QUESTIONS) // 4)][:4]
    reqs = [S.Request(r.system, r.user, 2) for r in reqs]
    steps = 8
    seen: list[tuple[Any, Any]] = []
    original = D.sample_tokens

    def recording(logits, temperature, top_p, u, **kw):
        out = original(logits, temperature, top_p, u, **kw)
        seen.append((logits.float().cpu(), out.cpu()))
        return out

    D.sample_tokens = recording
    try:
        S.sample_token_ids(
            model,
            tok,
            reqs,
            {"temperature": 1.0, "top_p": 1.0, "max_tokens": steps, "seed": 1},
            device=args.device,
            batch_size=64,
            ignore_eos=True,
            fused=fused,
        )
    finally:
        D.sample_tokens = original
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
    ap.add_argument(
        "--variants",
        default=None,
        help="engine variants, comma-separated, of eager (the PyTorch path), kernel (fused attention), "
        "graphs (fused attention + CUDA graphs) and fused (graphs + fused elementwise kernels, the "
        "default engine), each optionally with suffixes _topp (the generate stage's sampler, temperature 0.7, "
        "top_p 0.95), _sort (the fused path sorting for top_p), _acc (the top-p kernel accumulating per lane), _rej (top-p by rejection) "
        "and _norope (no fused rotary kernel); "
        "default: eager,graphs,fused on CUDA, eager on the CPU",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="torch.profiler breakdown of decode steps 2-4 and the last steps but two of each engine run",
    )
    ap.add_argument("--skip-hidden", action="store_true")
    ap.add_argument("--skip-attention", action="store_true", help="no micro-benchmark of decode attention")
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

    from cpx.stages._decode_attn import fused_available

    fusable = fused_available(args.device)
    variants = (args.variants or ("eager,graphs,fused" if fusable else "eager")).split(",")
    phases: list[tuple[str, Any]] = [("decode_check", lambda: check_decode(model, tok, args))]
    if fusable:
        phases.append(("decode_check_eager", lambda: check_decode(model, tok, args, fused=False)))
    phases.append(("sampling", lambda: run_sampling(model, args)))
    if fusable and not args.skip_attention:
        phases.append(("attention", lambda: run_attention(model, args)))
    for v in variants:
        phases.append((f"engine_{v}", lambda v=v: run_engine(model, tok, reqs, args, v)))
    if not args.skip_hidden:
        phases.append(("hidden_states", lambda: run_hidden(model, tok, args)))
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

    say("\n| method | s / checkpoint | tokens/s | peak GiB | floor / time | speed-up vs generate |")
    say("|---|---|---|---|---|---|")
    gen = RESULTS.get("generate", {})
    speedups = {}
    for name in ["generate"] + [f"engine_{v}" for v in variants]:
        r = RESULTS.get(name)
        if not r or "error" in r:
            continue
        frac = floor / r["seconds"] if r["seconds"] else float("nan")
        ratio = gen["seconds"] / r["seconds"] if "seconds" in gen else None
        if ratio is not None and name != "generate":
            speedups[name] = round(ratio, 2)
        say(
            f"| {name} | {r['seconds']:.1f}{' (extrapolated)' if r.get('extrapolated') else ''} | "
            f"{r['tokens_per_s']:.0f} | {r['peak_gib']} | {frac:.2f} | "
            f"{'' if ratio is None else f'{ratio:.2f}x'} |"
        )
    if speedups:
        record("speedup", speedups)
    # the generate stage's sampler against the eval's, variant by variant
    vs_eval = {}
    for v in variants:
        ref = "_".join(f for f in v.split("_") if f not in ("topp", "sort", "acc", "rej"))
        a, b = RESULTS.get(f"engine_{v}", {}), RESULTS.get(f"engine_{ref}", {})
        if ref != v and "tokens_per_s" in a and "tokens_per_s" in b:
            vs_eval[f"engine_{v}"] = round(a["tokens_per_s"] / b["tokens_per_s"], 3)
    if vs_eval:
        record("tokens_per_s_vs_eval_sampler", vs_eval)
    # the fused rotary kernel against the engine without it, variant by variant
    vs_norope = {}
    for v in variants:
        a, b = RESULTS.get(f"engine_{v}", {}), RESULTS.get(f"engine_{v}_norope", {})
        if "seconds" in a and "seconds" in b:
            vs_norope[f"engine_{v}"] = round(b["seconds"] / a["seconds"], 3)
    if vs_norope:
        record("speedup_vs_norope", vs_norope)
    for name in [f"engine_{v}" for v in variants]:
        for window, b in RESULTS.get(name, {}).get("profile", {}).items():
            say(
                f"{name} {window}: wall {b['wall_ms']} ms/step = matmul {b['matmul_ms']} + attention "
                f"{b['attention_ms']} + sampling {b['sampling_ms']} + other {b['other_ms']} + GPU idle "
                f"{b['gpu_idle_ms']} ({b['kernels_per_step']} kernels/step)"
            )
    h = RESULTS.get("hidden_states", {})
    if "seconds" in h:
        say(f"hidden states: {h['prompts']} prompts x {len(h['layers'])} layers in {h['seconds']:.3f} s")
    checks = [n for n, _ in phases if n.startswith("decode_check")]
    ok = all(RESULTS.get(n, {}).get("ok", False) for n in checks)
    if not ok:
        say("WARNING: the engine's logits disagree with a plain forward (decode_check): timings are not valid")
    save()
    return 0 if ok and all("error" not in RESULTS.get(n, {}) for n, _ in phases) else 1


if __name__ == "__main__":
    sys.exit(main())
