"""The batched sampling engine of the `hf` backend: many completions per prompt, near the GPU's limit.

`sample_completions` renders each request with the eval prompt (`cpx.models.render_prompt`),
sorts the prompts by length, and decodes them in large batches with its own loop over the
model's forward (`_decode`):

- each prompt is prefilled once and its keys and values are copied to its n completions;
- the KV cache is preallocated for prompt + max_tokens and written in place, and attention
  reads only the filled part (transformers' dynamic cache re-concatenates every step, its
  static cache attends over the whole preallocated length: DESIGN.md, "Facts worth knowing");
- single-token decode attention runs on the key/value heads without repeating them
  (grouped-query attention packed into the query axis);
- sampling (temperature, top_p) happens on the device from a counter-based random stream keyed
  by (seed, request, sample, step), so a completion does not depend on the batch it lands in:
  the same requests give the same completions at any batch size, after an out-of-memory retry
  too (up to floating point: a different batch shape can round the logits differently, and a
  draw whose uniform falls within that rounding of a CDF boundary then picks the neighbour);
- on CUDA (with Triton, a 16-bit model) the decode steps take the fused path: a
  FlashDecoding-style attention kernel over the cache, single-pass RMSNorm, gated-activation
  and top_p = 1 draw kernels, and each batch's step replayed from a CUDA graph (`_decode_step`);
  the CPU, and `fused=False`, keep the PyTorch path;
- rows stop at the end-of-turn token; finished rows are dropped from the batch (the cache is
  compacted) once enough of them have finished;
- with `steering` (`_steer`), a forward hook adds α · direction at one layer to the rows of the
  steered requests, in the same batches as the others: an unsteered row gets a coefficient 0
  (exactly its unsteered completion), and the random keys do not change.

The pieces live in modules of their own: the random stream and the token draws in `_draws`
(their Triton kernels in `_draws_triton`), the KV cache and the attention routing in `_kv`,
batch sizing in `_batching`, the decode loop of one batch in `_decode`, the fused path in
`_decode_step`, `_decode_attn`, `_decode_layers` and their Triton kernels in `_decode_triton`;
this module renders, orders and batches the requests and retries a batch that ran out of memory.

torch is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cpx.errors import is_oom
from cpx.stages._batching import auto_batch_size
from cpx.stages._decode import decode_batch
from cpx.stages._decode_attn import fused_available
from cpx.stages._draws import row_keys, sample_tokens, uniforms
from cpx.stages._kv import cache_dtype, check_model, fusable, kv_attention
from cpx.plan import Sampler, SamplerError, as_sampler

if TYPE_CHECKING:
    from cpx.stages._hooks import Steering

__all__ = [
    "Completion",
    "Request",
    "SamplerError",
    "row_keys",
    "sample_completions",
    "sample_token_ids",
    "sample_tokens",
    "stop_token_ids",
    "uniforms",
]


@dataclass(frozen=True)
class Request:
    """One prompt: a system prompt (or none), a user message, and how many completions to draw."""

    system: str | None
    user: str
    n: int


@dataclass(frozen=True)
class Completion:
    """One sampled completion.

    `n_tokens` counts the generated tokens including the end-of-turn token when there is one;
    `finish_reason` is "stop" (end of turn) or "length" (max_tokens reached).
    """

    request_index: int
    sample_index: int
    text: str
    n_tokens: int
    finish_reason: str


def stop_token_ids(model, tokenizer) -> list[int]:
    """End-of-turn ids: the tokenizer's eos, the generation config's eos ids, and `<|im_end|>`."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos is not None:
        ids.update(int(e) for e in eos)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(ids)


def sample_completions(
    model,
    tokenizer,
    requests: Sequence[Request],
    sampler: Sampler | Mapping[str, Any],
    *,
    device: str = "cpu",
    batch_size: int | None = None,
    log: logging.Logger | None = None,
    progress: Callable[..., None] | None = None,
    ignore_eos: bool = False,
    max_batch_size: int | None = None,
    steering: Steering | None = None,
    fused: bool | None = None,
) -> list[Completion]:
    """Sample `r.n` completions for each request; returned ordered by (request, sample).

    `sampler`: a `cpx.plan.Sampler` (a stage's, checked with the plan), or a mapping of
    temperature, top_p, max_tokens and seed, checked here (SamplerError). `batch_size` counts rows
    (completions decoded together); by default it comes from free memory on CUDA, capped by
    `max_batch_size`. On CUDA out-of-memory the batch is halved and retried (the results do
    not change). `ignore_eos` decodes exactly max_tokens for every row (benchmarks).
    `progress(done, total, tokens=...)` is called after each batch. `steering` (coefficients
    one per request) adds its vector at its layer, at every position, to the steered requests' rows.
    `fused` decodes with the fused attention kernel and CUDA graphs (`_decode_step`); by default
    on CUDA when Triton is there and the model's cache suits the kernel, else the PyTorch path.
    """
    tokens = sample_token_ids(
        model,
        tokenizer,
        requests,
        sampler,
        device=device,
        batch_size=batch_size,
        log=log,
        progress=progress,
        ignore_eos=ignore_eos,
        max_batch_size=max_batch_size,
        steering=steering,
        fused=fused,
    )
    stop_set = set(stop_token_ids(model, tokenizer))
    keys, bodies, meta = [], [], []
    for i, r in enumerate(requests):
        for s in range(r.n):
            toks = tokens[(i, s)]
            n = _n_generated(toks, stop_set, ignore_eos)
            stopped = not ignore_eos and toks[n - 1] in stop_set
            keys.append((i, s))
            bodies.append(toks[: n - 1] if stopped else toks)
            meta.append((n, "stop" if stopped else "length"))
    if not bodies:
        return []  # some tokenizers read an empty batch as one empty sequence
    texts = tokenizer.batch_decode(bodies, skip_special_tokens=True)
    return [Completion(i, s, text, n, reason) for (i, s), text, (n, reason) in zip(keys, texts, meta, strict=True)]


def sample_token_ids(
    model,
    tokenizer,
    requests: Sequence[Request],
    sampler: Sampler | Mapping[str, Any],
    *,
    device: str = "cpu",
    batch_size: int | None = None,
    log: logging.Logger | None = None,
    progress: Callable[..., None] | None = None,
    ignore_eos: bool = False,
    max_batch_size: int | None = None,
    steering: Steering | None = None,
    fused: bool | None = None,
) -> dict[tuple[int, int], list[int]]:
    """The generated token ids of every (request, sample), max_tokens of them; what follows a
    row's first end-of-turn token is filler.

    Arguments as `sample_completions`.
    """
    import torch

    from cpx.models import render_prompt
    from cpx.stages._hooks import steered

    log = log or logging.getLogger("cpx.sampling")
    sp = as_sampler(sampler)
    for i, r in enumerate(requests):
        if isinstance(r.n, bool) or not isinstance(r.n, int) or r.n < 0:
            raise SamplerError(f"request {i}: n must be an integer >= 0, got {r.n!r}")
    prompts = [render_prompt(tokenizer, r.system, r.user) for r in requests]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    for i, x in enumerate(ids):
        if not x:
            raise SamplerError(f"request {i}: the rendered prompt has no tokens")
    if steering is not None and len(steering.coefficients) != len(requests):
        raise SamplerError(f"{len(steering.coefficients)} steering coefficients for {len(requests)} requests")

    # Longest prompts first: a batch that does not fit fails at once, not at the end.
    order = sorted(range(len(requests)), key=lambda i: (-len(ids[i]), i))
    rows = [(i, s) for i in order for s in range(requests[i].n)]
    if not rows:
        return {}
    capacity = max(len(x) for x in ids) + sp.max_tokens
    check_model(model, capacity)
    if batch_size is None:
        batch_size = auto_batch_size(model, device, capacity, len(rows))
    if max_batch_size is not None:
        batch_size = min(batch_size, max_batch_size)
    if batch_size < 1:
        raise SamplerError(f"batch_size must be >= 1, got {batch_size}")
    if fused is None:
        fused = fused_available(str(device)) and fusable(model)
    elif fused and not (fused_available(str(device)) and fusable(model)):
        raise SamplerError(
            f"the fused decode path needs CUDA, Triton and a bf16/fp16 model with a power-of-two "
            f"head size; device is {device}, model dtype {cache_dtype(model)}"
        )
    stops = stop_token_ids(model, tokenizer)
    keys = row_keys(sp.seed, rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]

    tokens: dict[tuple[int, int], list[int]] = {}
    stop_set = set(stops)
    start, done, n_tok, t0 = 0, 0, 0, time.perf_counter()
    with torch.inference_mode(), kv_attention(model), steered(model, steering) as steer_hook:
        while start < len(rows):
            chunk = rows[start : start + batch_size]
            try:
                out = decode_batch(
                    model,
                    ids,
                    chunk,
                    keys[start : start + batch_size],
                    sp,
                    stops,
                    pad,
                    device=device,
                    ignore_eos=ignore_eos,
                    log=log,
                    steer_hook=steer_hook,
                    fused=fused,
                )
            except Exception as e:  # only out-of-memory is retried
                if not (str(device).startswith("cuda") and is_oom(e)) or batch_size == 1:
                    raise
                del e
                torch.cuda.empty_cache()
                batch_size = max(1, batch_size // 2)
                log.warning("out of memory: retrying with batch size %d", batch_size)
                continue
            tokens.update(zip(chunk, out, strict=True))
            start += len(chunk)
            done += len(chunk)
            n_tok += sum(_n_generated(t, stop_set, ignore_eos) for t in out)
            log.info(
                "sampled %d/%d completions (batch %d, %d tokens so far, %.1f s)",
                done,
                len(rows),
                len(chunk),
                n_tok,
                time.perf_counter() - t0,
            )
            if progress is not None:
                progress(done, len(rows), tokens=n_tok)

    return tokens


def _n_generated(tokens: list[int], stops: set[int], ignore_eos: bool) -> int:
    """Tokens a row really generated: up to and including its first end-of-turn token."""
    if not ignore_eos:
        for k, t in enumerate(tokens):
            if t in stops:
                return k + 1
    return len(tokens)
