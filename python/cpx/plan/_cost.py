"""A documented cost model: GPU-hours per stage kind, from the measurements in DESIGN.md.

Reference point (one H100, a Qwen2.5-7B-shaped model, plain transformers + peft):
sampling 5,000 new tokens/s at large batch; LoRA training 7,600 tokens/s (r=32, all linear,
bf16, gradient checkpointing); hidden states of 220 prompts in 0.6 s. Throughput is taken
to scale inversely with the parameter count, and every GPU stage pays a fixed start cost
(loading the model: 5 s + 2 s per billion parameters).

- generate / sample / train's screen: completions x max_tokens new tokens at the sampling rate.
- train: examples x epochs x tokens per example at the training rate, where tokens per example
  = min(max_length, 64 prompt tokens + 60 % of the generation's max_tokens).
- represent: prompts x (0.6 s / 220).
- dataset, scan, analyze, report run on CPU and cost no GPU time.

It is an estimate for planning, not a promise: batch sizes, sequence lengths and the GPU
change it by a factor of two either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cpx.plan._model import Plan

SAMPLE_TOKENS_PER_S_7B = 5000.0
TRAIN_TOKENS_PER_S_7B = 7600.0
REPRESENT_S_PER_PROMPT_7B = 0.6 / 220
GPU_KINDS = ("generate", "train", "sample", "represent")


def _start_cost(params_b: float) -> float:
    return 5.0 + 2.0 * params_b


def _sampling_s(
    personas: list[dict[str, Any]], n_questions: int, sampler: dict[str, Any], n_default: int, scale: float
) -> float:
    completions = sum(p.get("n", n_default) for p in personas) * n_questions
    return completions * sampler["max_tokens"] / (SAMPLE_TOKENS_PER_S_7B * scale)


def stage_seconds(plan: Plan, params_b: float) -> dict[str, float]:
    """Estimated GPU-seconds of every stage (0 for CPU kinds), by stage id."""
    scale = 7.0 / max(params_b, 1e-3)
    by_id = plan.by_id()
    gen_tokens = {}
    for s in plan.stages:
        if s.kind == "generate":
            gen_tokens[s.id] = s.params["sampler"]["max_tokens"]
    out: dict[str, float] = {}
    for s in plan.stages:
        p = s.params
        if s.kind not in GPU_KINDS:
            out[s.id] = 0.0
            continue
        t = _start_cost(params_b)
        if s.kind == "generate":
            t += _sampling_s(p["personas"], len(p["questions"]), p["sampler"], p["sampler"]["n"], scale)
        elif s.kind == "sample":
            t += _sampling_s(p["personas"], len(p["questions"]), p["sampler"], 1, scale)
        elif s.kind == "represent":
            t += len(p["personas"]) * len(p["questions"]) * REPRESENT_S_PER_PROMPT_7B / scale
        elif s.kind == "train":
            data = by_id[p["dataset"]]
            dp = data.params
            examples = dp["examples"]
            if dp["recipe"] == "marker":
                examples += dp["negatives"]["personas"] * dp["negatives"]["examples_per_persona"]
            gen = next((gen_tokens[d] for d in data.deps if d in gen_tokens), 512)
            per_example = min(p["optim"]["max_length"], 64 + 0.6 * gen)
            t += examples * p["optim"]["epochs"] * per_example / (TRAIN_TOKENS_PER_S_7B * scale)
            if p.get("screen"):
                sc = p["screen"]
                t += _sampling_s(sc["personas"], len(sc["questions"]), sc["sampler"], 1, scale)
        out[s.id] = t
    return out


def count_done(run_dir: str | Path, plan: Plan) -> dict[str, bool]:
    """Whether each stage has a manifest in the run's store (`stages/<kind>/<hash>/manifest.json`).

    A quick count for `cpx compile`'s summary; `cpx status` verifies outputs against manifests.
    """
    root = Path(run_dir) / "stages"
    return {s.id: (root / s.kind / s.hash / "manifest.json").is_file() for s in plan.stages}
