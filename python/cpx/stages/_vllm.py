"""The `vllm` backend of the `sample` stage (optional extra; thin on purpose).

vLLM cannot be installed on the GPU machines this project has, so this path is exercised only
where `import vllm` works. The chain is merged by the worker's model pool and exported once
to `<run>/models/merged-<hash>/`; vLLM loads that folder, draws `n` completions per prompt
with a per-request seed (derived from the sampler's seed and the request index), and stops at
the tokenizer's end-of-turn token.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import json
from pathlib import Path

from cpx.plan import Sampler
from cpx.stages._context import StageContext
from cpx.stages._sampling import Completion, Request


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def request_seed(seed: int, request_index: int) -> int:
    """A 31-bit seed per request, a pure function of (sampler seed, request index)."""
    h = hashlib.blake2b(f"{seed}:{request_index}".encode(), digest_size=4).digest()
    return int.from_bytes(h, "little") & 0x7FFFFFFF


def _export(ctx: StageContext) -> Path:
    chain = ctx.params.model.json()
    digest = hashlib.sha256(json.dumps(chain, sort_keys=True).encode()).hexdigest()[:16]
    dest = Path(ctx.run_dir) / "models" / f"merged-{digest}"
    if not (dest / "config.json").exists():
        tmp = dest.with_name(dest.name + ".tmp")
        ctx.models.export(chain, ctx.inputs, tmp)
        tmp.rename(dest)
    return dest


def sample_vllm(ctx: StageContext, requests: list[Request], sampler: Sampler) -> list[Completion]:
    if not vllm_available():
        raise RuntimeError("backend 'vllm' needs the vllm package: pip install 'cpx[vllm]'")
    from vllm import LLM, SamplingParams

    from cpx.models import render_prompt

    path = _export(ctx)
    if hasattr(ctx.models, "release"):
        ctx.models.release()  # vLLM needs the GPU memory the pool's copy holds
    llm = LLM(model=str(path), seed=sampler.seed, enable_prefix_caching=True)
    try:
        tok = llm.get_tokenizer()
        prompts, params, index = [], [], []
        for i, r in enumerate(requests):
            if r.n == 0:
                continue
            prompts.append(render_prompt(tok, r.system, r.user))
            params.append(
                SamplingParams(
                    n=r.n,
                    temperature=sampler.temperature,
                    top_p=sampler.top_p,
                    max_tokens=sampler.max_tokens,
                    seed=request_seed(sampler.seed, i),
                )
            )
            index.append(i)
        outs = llm.generate(prompts, params)
        result = []
        for i, out in zip(index, outs, strict=True):
            for s, o in enumerate(out.outputs):
                reason = "stop" if o.finish_reason == "stop" else "length"
                result.append(Completion(i, s, o.text, len(o.token_ids), reason))
        return result
    finally:
        del llm
        gc.collect()
