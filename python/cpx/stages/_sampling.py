"""The batched sampling engine of the `hf` backend: many completions per prompt, near the GPU's limit.

`sample_completions` renders each request with the eval prompt (`cpx.models.render_prompt`),
sorts the prompts by length, and decodes them in large batches with its own loop over the
model's forward:

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
- rows stop at the end-of-turn token; finished rows are dropped from the batch (the cache is
  compacted) once enough of them have finished;
- with `steering` (`_steer`), a forward hook adds α · direction at one layer to the rows of the
  steered requests, in the same batches as the others: an unsteered row gets a coefficient 0
  (exactly its unsteered completion), and the random keys do not change.

torch is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import hashlib
import logging
import math
import struct
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cpx.errors import is_oom
from cpx.stages._params import SamplerError, check_sampler

if TYPE_CHECKING:
    from cpx.stages._hooks import Steering

_ATTN_NAME = "cpx_kv"
_CPU_BATCH = 256
# Compact the batch when this fraction of its rows has finished (checked every _CHECK_EVERY steps).
_COMPACT_FRACTION = 0.25
_CHECK_EVERY = 8


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


def row_keys(seed: int, rows: Sequence[tuple[int, int]]) -> list[int]:
    """A 32-bit key per (request index, sample index): the start of that completion's random stream."""
    out = []
    for r, s in rows:
        h = hashlib.blake2b(struct.pack("<qqq", seed, r, s), digest_size=4).digest()
        out.append(int.from_bytes(h, "little"))
    return out


def _mul32(x, c: int):
    """(x * c) mod 2**32 for int64 tensors holding values < 2**32, without int64 overflow."""
    lo = (x & 0xFFFF) * c
    hi = ((x >> 16) * c) & 0xFFFF
    return (lo + (hi << 16)) & 0xFFFFFFFF


def _fmix32(x):
    """MurmurHash3's 32-bit finaliser on int64 tensors (values < 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def uniforms(keys, step: int):
    """One uniform in [0, 1) per row for decode step `step`, a pure function of (key, step)."""
    import torch

    mixed = _fmix32(keys ^ _fmix32(torch.full_like(keys, (step * 0x9E3779B9 + 0x7F4A7C15) & 0xFFFFFFFF)))
    return (mixed >> 8).to(torch.float32) * (1.0 / (1 << 24))


def sample_tokens(logits, temperature: float, top_p: float, u):
    """Draw one token per row from softmax(logits / temperature) restricted to the top_p nucleus.

    Inverse-CDF sampling with the given uniforms `u` (one per row); temperature 0 is greedy.
    The nucleus is the one transformers' TopPLogitsWarper keeps: the smallest set of most
    likely tokens whose probability reaches top_p (at least one token).
    """
    import torch

    if temperature == 0:
        return logits.argmax(dim=-1)
    # In place on tensors made here: at batch 1,000 and a 152k vocabulary each copy is 600 MB.
    work = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    scaled = work / temperature if temperature != 1.0 else work
    if top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=False)
        del scaled
        drop = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1.0 - top_p)
        drop[:, -1] = False
        sorted_logits.masked_fill_(drop, float("-inf"))
        del drop
        cdf = sorted_logits.softmax(dim=-1).cumsum_(dim=-1)
    else:
        order = None
        cdf = scaled.softmax(dim=-1).cumsum_(dim=-1)
    target = (u * cdf[:, -1]).unsqueeze(-1).contiguous()
    idx = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1).squeeze(-1)
    if order is not None:
        idx = order.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    return idx


# ---------------------------------------------------------------------------------------------
# KV cache and attention


class _PreallocatedKV:
    """A KV cache of fixed capacity, written in place; attention sees only the filled part.

    In prefill mode (`expand` set) the keys and values of the unique prompts are written,
    repeated to their rows, into the buffers, and returned unrepeated for the prefill's own
    attention. Implements the part of transformers' Cache interface the decoder layers use.
    """

    is_compileable = False

    def __init__(self, n_layers: int, capacity: int):
        self.n_layers = n_layers
        self.capacity = capacity
        self.keys: list[Any] = [None] * n_layers
        self.values: list[Any] = [None] * n_layers
        self.length = 0
        self.expand: Any = None  # prefill: row -> prompt index
        self.rows = 0

    def _alloc(self, layer: int, key, value) -> None:
        import torch

        shape_k = (self.rows, key.shape[1], self.capacity, key.shape[3])
        shape_v = (self.rows, value.shape[1], self.capacity, value.shape[3])
        self.keys[layer] = torch.empty(shape_k, dtype=key.dtype, device=key.device)
        self.values[layer] = torch.empty(shape_v, dtype=value.dtype, device=value.device)

    def update(self, key, value, layer_idx: int, *args: Any, **kwargs: Any):
        q = key.shape[2]
        if self.expand is not None:
            if self.keys[layer_idx] is None:
                self._alloc(layer_idx, key, value)
            self.keys[layer_idx][:, :, :q] = key.index_select(0, self.expand)
            self.values[layer_idx][:, :, :q] = value.index_select(0, self.expand)
            return key, value
        end = self.length + q
        k, v = self.keys[layer_idx], self.values[layer_idx]
        k[:, :, self.length : end] = key
        v[:, :, self.length : end] = value
        return k[:, :, :end], v[:, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def keep(self, index) -> None:
        """Keep only the rows in `index` (a copy of the buffers, done when many rows finished)."""
        for i in range(self.n_layers):
            self.keys[i] = self.keys[i].index_select(0, index)
            self.values[i] = self.values[i].index_select(0, index)
        self.rows = int(index.shape[0])


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Scaled dot-product attention with a boolean mask or an additive bias; one-token queries use packed GQA.

    For one query token, the query heads that share a key/value head become that head's query
    axis, so the cache is read once per key/value head instead of being repeated for each
    query head (transformers versions before 5.2x repeat it).
    """
    import torch.nn.functional as F

    b, h, q, d = query.shape
    kvh = key.shape[1]
    rep = h // kvh
    if q == 1:
        packed = query.reshape(b, kvh, rep, d)
        out = F.scaled_dot_product_attention(packed, key, value, attn_mask=attention_mask, scale=scaling)
        return out.reshape(b, 1, h, d), None
    if rep > 1:
        key = key.repeat_interleave(rep, dim=1)
        value = value.repeat_interleave(rep, dim=1)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(_ATTN_NAME, _attention)


def _configs(model) -> list[Any]:
    seen: dict[int, Any] = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            seen.setdefault(id(cfg), cfg)
    return list(seen.values())


@contextmanager
def kv_attention(model):
    """Route the model's attention through `_attention` while sampling; restore it afterwards."""
    _register_attention()
    configs = _configs(model)
    before = [c._attn_implementation for c in configs]
    try:
        for c in configs:
            c._attn_implementation = _ATTN_NAME
        yield
    finally:
        for c, b in zip(configs, before, strict=True):
            c._attn_implementation = b


def _unwrapped(model):
    """The transformers model itself, also when it is wrapped by peft."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _cache_kwarg(model) -> str:
    """transformers 5.2x calls the cache argument `cache`; earlier versions `past_key_values`."""
    import inspect

    params = inspect.signature(_unwrapped(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _check_model(model, capacity: int) -> None:
    cfg = _unwrapped(model).config
    layer_types = getattr(cfg, "layer_types", None) or []
    window = getattr(cfg, "sliding_window", None)
    if "sliding_attention" in layer_types and window is not None and window < capacity:
        raise SamplerError(
            f"the model uses sliding-window attention (window {window}) shorter than prompt + "
            f"max_tokens ({capacity}); the hf sampling engine supports full attention only"
        )


# ---------------------------------------------------------------------------------------------
# Batching


def _row_bytes(model, capacity: int) -> int:
    """Device memory one row of a batch needs: its KV cache plus logits and activations."""
    cfg = _unwrapped(model).config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    elem = next(model.parameters()).element_size()
    kv = 2 * cfg.num_hidden_layers * kv_heads * head_dim * capacity * elem
    # logits in the model dtype, then float32 softmax, cumsum and their temporaries
    logits = cfg.vocab_size * (elem + 4 * 4)
    acts = (cfg.hidden_size * 8 + cfg.intermediate_size * 4) * elem
    return kv + logits + acts


def auto_batch_size(model, device: str, capacity: int, n_rows: int) -> int:
    """Rows per batch: from free device memory on CUDA, a fixed size on the CPU.

    The rows are then spread evenly over the batches that size implies, so the last batch is
    not a small remainder.
    """
    if not str(device).startswith("cuda"):
        cap = _CPU_BATCH
    else:
        import torch

        dev = torch.device(device)
        free, _ = torch.cuda.mem_get_info(dev)
        # Blocks PyTorch's allocator holds but no tensor uses (a previous stage's cache) are free
        # to this process: counting them keeps a stale cache from halving the batch.
        free += torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        budget = int(free * 0.85) - (1 << 30)
        cap = max(1, budget // _row_bytes(model, capacity))
    n_batches = max(1, math.ceil(n_rows / cap))
    return max(1, math.ceil(n_rows / n_batches))


# ---------------------------------------------------------------------------------------------
# The engine


def sample_completions(
    model,
    tokenizer,
    requests: Sequence[Request],
    sampler: dict[str, Any],
    *,
    device: str = "cpu",
    batch_size: int | None = None,
    log: logging.Logger | None = None,
    progress: Callable[..., None] | None = None,
    ignore_eos: bool = False,
    max_batch_size: int | None = None,
    steering: Steering | None = None,
) -> list[Completion]:
    """Sample `r.n` completions for each request; returned ordered by (request, sample).

    `sampler` = {"temperature", "top_p", "max_tokens", "seed"}. `batch_size` counts rows
    (completions decoded together); by default it comes from free memory on CUDA, capped by
    `max_batch_size`. On CUDA out-of-memory the batch is halved and retried (the results do
    not change). `ignore_eos` decodes exactly max_tokens for every row (benchmarks).
    `progress(done, total, tokens=...)` is called after each batch. `steering` (coefficients
    one per request) adds its vector at its layer, at every position, to the steered requests' rows.
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
    sampler: dict[str, Any],
    *,
    device: str = "cpu",
    batch_size: int | None = None,
    log: logging.Logger | None = None,
    progress: Callable[..., None] | None = None,
    ignore_eos: bool = False,
    max_batch_size: int | None = None,
    steering: Steering | None = None,
) -> dict[tuple[int, int], list[int]]:
    """The generated token ids of every (request, sample), max_tokens of them; what follows a
    row's first end-of-turn token is filler.

    Arguments as `sample_completions`.
    """
    import torch

    from cpx.models import render_prompt
    from cpx.stages._hooks import steered

    log = log or logging.getLogger("cpx.sampling")
    sp = check_sampler(sampler)
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
    capacity = max(len(x) for x in ids) + sp["max_tokens"]
    _check_model(model, capacity)
    if batch_size is None:
        batch_size = auto_batch_size(model, device, capacity, len(rows))
    if max_batch_size is not None:
        batch_size = min(batch_size, max_batch_size)
    if batch_size < 1:
        raise SamplerError(f"batch_size must be >= 1, got {batch_size}")
    stops = stop_token_ids(model, tokenizer)
    keys = row_keys(sp["seed"], rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]

    tokens: dict[tuple[int, int], list[int]] = {}
    stop_set = set(stops)
    start, done, n_tok, t0 = 0, 0, 0, time.perf_counter()
    with torch.inference_mode(), kv_attention(model), steered(model, steering) as steer_hook:
        while start < len(rows):
            chunk = rows[start : start + batch_size]
            try:
                out = _decode_batch(
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


def _decode_batch(
    model,
    ids,
    chunk,
    keys,
    sp,
    stops,
    pad,
    *,
    device,
    ignore_eos,
    log,
    steer_hook=None,
) -> list[list[int]]:
    """Decode one batch of rows; returns each row's generated tokens (up to max_tokens).

    `steer_hook` (a `_steer.SteeringHook` or None) is told which request each forward row is of.
    """
    import torch

    dev = torch.device(device)
    T = sp["max_tokens"]
    prompt_of_row = [r for r, _ in chunk]
    uniq = sorted(set(prompt_of_row), key=prompt_of_row.index)
    slot = {r: j for j, r in enumerate(uniq)}
    P = max(len(ids[r]) for r in uniq)
    B = len(chunk)

    # Left-padded prompts: the last prompt token of every row sits at column P - 1.
    prompt = torch.full((len(uniq), P), pad, dtype=torch.long)
    pmask = torch.zeros((len(uniq), P), dtype=torch.bool)
    for j, r in enumerate(uniq):
        n = len(ids[r])
        prompt[j, P - n :] = torch.tensor(ids[r], dtype=torch.long)
        pmask[j, P - n :] = True
    prompt, pmask = prompt.to(dev), pmask.to(dev)
    expand = torch.tensor([slot[r] for r in prompt_of_row], dtype=torch.long, device=dev)

    cache = _PreallocatedKV(_n_layers(model), P + T)
    cache.rows, cache.expand = B, expand
    kw = _cache_kwarg(model)
    if steer_hook is not None:
        steer_hook.rows(uniq)
    pos = (pmask.long().cumsum(-1) - 1).clamp_(min=0)
    causal = torch.ones((P, P), dtype=torch.bool, device=dev).tril_()
    # Pad queries may attend to themselves: a fully masked row would make NaN keys and values.
    eye = torch.eye(P, dtype=torch.bool, device=dev)
    mask4 = ((causal[None] & pmask[:, None, :]) | eye[None])[:, None]
    out = model(
        input_ids=prompt,
        attention_mask=_mask_map(mask4),
        position_ids=pos,
        use_cache=True,
        logits_to_keep=1,
        **{kw: cache},
    )
    logits = out.logits[:, -1].index_select(0, expand)
    del out
    cache.expand = None
    cache.length = P
    if steer_hook is not None:
        steer_hook.rows(prompt_of_row)

    # Additive attention bias over the cache positions, 0 where a row may attend. Its row
    # stride is a multiple of 16 so the slices handed to attention stay aligned for the fused
    # kernels; a float bias is used as is, where a boolean mask is converted at every layer.
    width = -(-(P + T) // 16) * 16
    bias = torch.full((B, 1, 1, width), torch.finfo(cache_dtype(model)).min, dtype=cache_dtype(model), device=dev)
    bias[:, 0, 0, :P].masked_fill_(pmask.index_select(0, expand), 0.0)
    next_pos = pmask.long().sum(-1).index_select(0, expand)
    key_t = torch.tensor(keys, dtype=torch.long, device=dev)
    out_tokens = torch.full((B, T), pad, dtype=torch.long, device=dev)
    stop_t = torch.tensor(stops, dtype=torch.long, device=dev)
    live = torch.arange(B, device=dev)  # batch row of each cache row
    finished = torch.zeros(B, dtype=torch.bool, device=dev)

    for t in range(T):
        nxt = sample_tokens(logits, sp["temperature"], sp["top_p"], uniforms(key_t, t))
        out_tokens[live, t] = nxt
        if t == T - 1:
            break
        if not ignore_eos:
            finished |= torch.isin(nxt, stop_t)
            if (t + 1) % _CHECK_EVERY == 0:
                n_done = int(finished.sum())
                if n_done == finished.shape[0]:
                    break
                if n_done >= _COMPACT_FRACTION * finished.shape[0]:
                    keep = (~finished).nonzero().squeeze(-1)
                    log.debug("step %d: %d of %d rows finished, batch compacted", t + 1, n_done, len(finished))
                    cache.keep(keep)
                    bias, next_pos, key_t = bias[keep], next_pos[keep], key_t[keep]
                    live, nxt, finished = live[keep], nxt[keep], finished[keep]
                    if steer_hook is not None:
                        steer_hook.keep(keep)
        bias[:, 0, 0, P + t] = 0.0
        out = model(
            input_ids=nxt[:, None],
            attention_mask=_mask_map(bias[..., : P + t + 1]),
            position_ids=next_pos[:, None],
            use_cache=True,
            logits_to_keep=1,
            **{kw: cache},
        )
        logits = out.logits[:, -1]
        del out
        cache.length += 1
        next_pos = next_pos + 1
    return out_tokens.cpu().tolist()


def _mask_map(mask) -> dict[str, Any]:
    """A prepared mask per attention type: transformers uses it as is instead of building one."""
    return {"full_attention": mask, "sliding_attention": mask}


def cache_dtype(model):
    """The dtype activations (and so keys and values) have: the embedding weight's."""
    return _unwrapped(model).get_input_embeddings().weight.dtype


def _n_layers(model) -> int:
    cfg = _unwrapped(model).config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(cfg.num_hidden_layers)
