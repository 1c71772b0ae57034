"""The fused decode step's layers: RMSNorm, the gated MLP's activation, and attention's rotary
embedding with the cache write, in one kernel each.

transformers' RMSNorm runs about seven elementwise kernels over float32 copies of the
activations, the gated MLP two more over the intermediate width, and the rotary embedding
and the cache write about ten a layer (products, a concatenation, a negation, sums, index
copies); at a batch of thousands of rows they cost a fifth of a decode step.
`fused_layers(model, cache)` routes the RMSNorm, gated-MLP and attention modules of the
families it knows (same roundings, `_decode_triton`) through single-pass Triton kernels while
the fused decode step runs and is captured; everything else, and every module outside that
block, runs as transformers wrote it.

torch is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Families whose RMSNorm is `weight * normalise(x.float()).to(x.dtype)` and whose MLP is
# `down(act(gate(x)) * up(x))`.
_NORMS = {"Qwen2RMSNorm", "Qwen3RMSNorm", "LlamaRMSNorm", "MistralRMSNorm"}
_MLPS = {"Qwen2MLP", "Qwen3MLP", "LlamaMLP", "MistralMLP"}
_SILU = {"SiLU", "SiLUActivation"}
# Families whose attention is q/k/v projections, `(x * cos) + (rotate_half(x) * sin)` on q and k,
# the cache update, attention and o_proj (Qwen3 normalises q and k first: not here).
_ATTENTIONS = {"Qwen2Attention", "LlamaAttention", "MistralAttention"}


def _norm_forward(module) -> Any:
    from cpx.stages._decode_triton import rms_norm

    plain = module.forward

    def forward(hidden_states):
        if hidden_states.dtype != module.weight.dtype or not hidden_states.is_contiguous():
            return plain(hidden_states)
        return rms_norm(hidden_states, module.weight, module.variance_epsilon)

    return forward


def _mlp_forward(module) -> Any:
    from cpx.stages._decode_triton import silu_gate

    def forward(x):
        gate, up = module.gate_proj(x), module.up_proj(x)
        if not (gate.is_contiguous() and up.is_contiguous() and gate.dtype == up.dtype):
            return module.down_proj(module.act_fn(gate) * up)
        return module.down_proj(silu_gate(gate, up))

    return forward


def _attention_forward(module, cache) -> Any:
    """One decode token per row with the cache's `position` set and a `DecodeSpan` as the mask:
    projections, then `rope_store` (rotary embedding of q and k, k and v into the cache), then
    the decode attention kernel and o_proj. Any other call runs the module's own forward."""
    from cpx.stages._decode_attn import DecodeSpan
    from cpx.stages._decode_triton import decode_attention, rope_store

    plain = module.forward
    layer = module.layer_idx

    def forward(hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        span = attention_mask
        k_cache = cache.keys[layer]
        if not (
            isinstance(span, DecodeSpan)
            and position_embeddings is not None
            and hidden_states.dim() == 3
            and hidden_states.shape[1] == 1
            and cache.position is not None
            and k_cache is not None
            and hidden_states.dtype == k_cache.dtype
        ):
            return plain(
                hidden_states, position_embeddings=position_embeddings, attention_mask=attention_mask, **kwargs
            )
        b = hidden_states.shape[0]
        x = hidden_states.reshape(b, -1)
        cos, sin = position_embeddings
        q = rope_store(
            module.q_proj(x),
            module.k_proj(x),
            module.v_proj(x),
            cos.reshape(b, -1),
            sin.reshape(b, -1),
            k_cache,
            cache.values[layer],
            cache.position,
        )
        out = decode_attention(q, k_cache, cache.values[layer], span.start, span.length, module.scaling, span.splits)
        return module.o_proj(out.view(b, 1, -1)), None

    return forward


@contextmanager
def fused_layers(model, cache=None) -> Iterator[None]:
    """Within the block, the model's known RMSNorm and SiLU-gated MLP modules run fused kernels,
    and so does its known attention modules' decode step into `cache` (a `_kv.PreallocatedKV`)
    when one is given."""
    patched = []
    for m in model.modules():
        name = type(m).__name__
        if name in _NORMS and hasattr(m, "variance_epsilon"):
            patched.append((m, _norm_forward(m)))
        elif name in _MLPS and type(getattr(m, "act_fn", None)).__name__ in _SILU:
            patched.append((m, _mlp_forward(m)))
        elif cache is not None and name in _ATTENTIONS and hasattr(m, "layer_idx") and hasattr(m, "scaling"):
            patched.append((m, _attention_forward(m, cache)))
    before = [(m, m.__dict__.get("forward")) for m, _ in patched]
    try:
        for m, forward in patched:
            m.forward = forward
        yield
    finally:
        for m, forward in before:
            if forward is None:
                del m.forward
            else:
                m.forward = forward
