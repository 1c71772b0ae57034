"""The `sample` stage: eval completions of a model chain for every persona and question.

Per-persona completion counts (`n`), and temperature, top_p, max_tokens and seed from the spec.
Backends: `hf` (the batched engine in `_sampling`, CPU and GPU), `vllm` (optional, thin), and
`auto` (vllm when it is importable and the device is a GPU, else hf). With `steer` (activation
steering, `_steer`: α · direction added at one layer to the steered personas' rows) only hf can
sample, and `auto` is hf.

Output `completions.parquet`: labels + `persona, role, question_id, sample_index, text,
n_tokens, finish_reason` (docs/plan-format.md).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from cpx.stages._context import StageContext

if TYPE_CHECKING:
    from cpx.plan import SampleParams


def resolve_backend(name: str, device: str, *, steer: bool = False) -> str:
    """The backend that samples: `auto` is vllm on a GPU where vLLM is installed, else hf; with
    `steer` it is hf (the params type refuses vllm with steer: it has no hook for steering)."""
    if steer:
        return "hf"
    if name == "auto":
        from cpx.stages._vllm import vllm_available

        return "vllm" if str(device).startswith("cuda") and vllm_available() else "hf"
    return name


def run(ctx: StageContext) -> dict[str, Any]:
    from cpx.models import small_model_threads
    from cpx.stages._rows import completion_table, write_parquet
    from cpx.stages._sampling import Request, sample_completions
    from cpx.stages._steer import check_model, steer_of

    p: SampleParams = ctx.params
    sid = ctx.stage.id
    personas, questions = p.personas, p.questions
    steer = steer_of(sid, p.steer, ctx.inputs)
    backend = resolve_backend(p.backend, ctx.device, steer=steer is not None)
    requests = [Request(per.prompt, q.text, per.n) for per in personas for q in questions]

    t0 = time.perf_counter()
    if backend == "vllm":
        from cpx.stages._vllm import sample_vllm

        comps = sample_vllm(ctx, requests, p.sampler)
    else:
        model, tok = ctx.models.get(p.model.json(), ctx.inputs)
        steering = None
        if steer is not None:
            check_model(sid, steer, model)
            steering = steer.for_prompts([per.name for per in personas for _ in questions])
        with small_model_threads(model, ctx.device):
            comps = sample_completions(
                model,
                tok,
                requests,
                p.sampler,
                device=ctx.device,
                log=ctx.log,
                progress=ctx.progress,
                max_batch_size=ctx.batch_limit,
                steering=steering,
            )
    seconds = time.perf_counter() - t0

    columns = ["persona", "role", "question_id", "sample_index", "text", "n_tokens", "finish_reason"]
    table = completion_table(ctx.labels, comps, personas, questions, columns)
    write_parquet(table, ctx.out_dir / "completions.parquet")
    n_tokens = sum(c.n_tokens for c in comps)
    info: dict[str, Any] = {
        "backend": backend,
        "completions": len(comps),
        "tokens": n_tokens,
        "finish_reasons": dict(sorted(Counter(c.finish_reason for c in comps).items())),
        "seconds": round(seconds, 3),
        "tokens_per_s": round(n_tokens / seconds, 1) if seconds > 0 else None,
    }
    if steer is not None:
        info["steer"] = steer.info()
    return info
