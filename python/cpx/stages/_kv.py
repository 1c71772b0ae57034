"""The decode loop's KV cache and the attention it routes the model through.

The cache is preallocated for prompt + max_tokens and written in place; attention reads only
the filled part (transformers' dynamic cache re-concatenates every step, its static cache
attends over the whole preallocated length: DESIGN.md, "Facts worth knowing"). Single-token
decode attention runs on the key/value heads without repeating them (grouped-query attention
packed into the query axis).

torch and transformers are imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from cpx.stages._decode_attn import DecodeSpan, attend
from cpx.plan import SamplerError

_ATTN_NAME = "cpx_kv"


class PreallocatedKV:
    """A KV cache of fixed capacity, written in place; attention sees only the filled part.

    In prefill mode (`expand` set) the keys and values of the unique prompts are written,
    repeated to their rows, into the buffers, and returned unrepeated for the prefill's own
    attention. With `position` set (the fused path: a (1,) long device tensor) a decode step
    writes its keys and values at that position and returns the whole buffers, so the step does
    not depend on a Python length and replays from a CUDA graph; the attention then reads the
    filled part through its `DecodeSpan`. Implements the part of transformers' Cache interface
    the decoder layers use.
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
        self.position: Any = None  # fused decode: the position written, on the device

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
        if self.position is not None:
            self.keys[layer_idx].index_copy_(2, self.position, key)
            self.values[layer_idx].index_copy_(2, self.position, value)
            return self.keys[layer_idx], self.values[layer_idx]
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
    query head (transformers versions before 5.2x repeat it). A `DecodeSpan` in place of the
    mask selects the fused decode kernel over the whole cache buffers (`_decode_attn`).
    """
    import torch.nn.functional as F

    b, h, q, d = query.shape
    if isinstance(attention_mask, DecodeSpan):
        return attend(query, key, value, attention_mask, d**-0.5 if scaling is None else scaling), None
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


def unwrapped(model):
    """The transformers model itself, also when it is wrapped by peft."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def cache_kwarg(model) -> str:
    """transformers 5.2x calls the cache argument `cache`; earlier versions `past_key_values`."""
    import inspect

    params = inspect.signature(unwrapped(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def check_model(model, capacity: int) -> None:
    cfg = unwrapped(model).config
    layer_types = getattr(cfg, "layer_types", None) or []
    window = getattr(cfg, "sliding_window", None)
    if "sliding_attention" in layer_types and window is not None and window < capacity:
        raise SamplerError(
            f"the model uses sliding-window attention (window {window}) shorter than prompt + "
            f"max_tokens ({capacity}); the hf sampling engine supports full attention only"
        )


def mask_map(mask) -> dict[str, Any]:
    """A prepared mask per attention type: transformers uses it as is instead of building one."""
    return {"full_attention": mask, "sliding_attention": mask}


def cache_dtype(model):
    """The dtype activations (and so keys and values) have: the embedding weight's."""
    return unwrapped(model).get_input_embeddings().weight.dtype


def n_layers(model) -> int:
    cfg = unwrapped(model).config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(cfg.num_hidden_layers)


def fusable(model) -> bool:
    """Whether the fused kernel takes this model's cache: 16-bit floats, a power-of-two head size."""
    import torch

    cfg = unwrapped(model).config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    pow2 = head_dim >= 16 and head_dim & (head_dim - 1) == 0
    return pow2 and cache_dtype(model) in (torch.bfloat16, torch.float16)
