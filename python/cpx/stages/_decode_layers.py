"""The fused decode step's elementwise layers: RMSNorm, the gated MLP's activation and (off by
default, `FUSE_ROTARY`) the rotary embedding in one kernel each.

transformers' RMSNorm runs about seven elementwise kernels over float32 copies of the
activations, the gated MLP two more over the intermediate width, and the rotary embedding
of queries and keys twelve (products, a negation, a concatenation, sums); at a batch of
thousands of rows they cost a fifth of a decode step. `fused_layers(model)` routes the
RMSNorm and gated-MLP modules and the attention's `apply_rotary_pos_emb` of the families it
knows (same roundings, `_decode_triton`) through single-pass Triton kernels while the fused
decode step runs and is captured; everything else, and every module outside that block,
runs as transformers wrote it.

torch is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Families whose RMSNorm is `weight * normalise(x.float()).to(x.dtype)` and whose MLP is
# `down(act(gate(x)) * up(x))`.
_NORMS = {"Qwen2RMSNorm", "Qwen3RMSNorm", "LlamaRMSNorm", "MistralRMSNorm"}
_MLPS = {"Qwen2MLP", "Qwen3MLP", "LlamaMLP", "MistralMLP"}
_SILU = {"SiLU", "SiLUActivation"}
# Families whose attention calls its modeling module's `apply_rotary_pos_emb(q, k, cos, sin)`
# with q, k (rows, heads, positions, head_dim) and cos, sin (rows, positions, head_dim).
_ATTENTIONS = {"Qwen2Attention", "Qwen3Attention", "LlamaAttention", "MistralAttention"}

# The rotary kernel is off by default: on the H200 it agreed with a plain forward (decode_check
# within its noise floor) but not bit for bit with transformers' rotary embedding, and its
# speed-up is not measured yet (benches/RESULTS.md); benches/gpu_eval.py's "_rope" turns it on.
FUSE_ROTARY = False


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


def _rotary_function(plain) -> Any:
    from cpx.stages._decode_triton import rotary

    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        one_step = (
            not args
            and not kwargs
            and q.dim() == k.dim() == 4
            and q.shape[2] == k.shape[2] == 1
            and cos.dim() == sin.dim() == 3
            and cos.shape[1] == sin.shape[1] == 1
            and q.dtype == k.dtype == cos.dtype == sin.dtype
            and q.shape[-1] == k.shape[-1] == cos.shape[-1] == sin.shape[-1]
            and q.shape[-1] % 2 == 0
            and (q.shape[-1] // 2) & (q.shape[-1] // 2 - 1) == 0
            and all(t.stride(-1) == 1 for t in (q, k, cos, sin))
        )
        if not one_step:
            return plain(q, k, cos, sin, *args, **kwargs)
        return rotary(q, cos, sin), rotary(k, cos, sin)

    return apply_rotary_pos_emb


@contextmanager
def fused_layers(model) -> Iterator[None]:
    """Within the block, the model's known RMSNorm and SiLU-gated MLP modules, and the rotary
    embedding of its known attention modules, run fused kernels."""
    patched = []
    modules = {}
    for m in model.modules():
        name = type(m).__name__
        if name in _NORMS and hasattr(m, "variance_epsilon"):
            patched.append((m, _norm_forward(m)))
        elif name in _MLPS and type(getattr(m, "act_fn", None)).__name__ in _SILU:
            patched.append((m, _mlp_forward(m)))
        elif FUSE_ROTARY and name in _ATTENTIONS:
            mod = sys.modules.get(type(m).__module__)
            if mod is not None and callable(getattr(mod, "apply_rotary_pos_emb", None)):
                modules[mod.__name__] = mod
    before = [(m, m.__dict__.get("forward")) for m, _ in patched]
    functions = [(mod, mod.apply_rotary_pos_emb) for mod in modules.values()]
    try:
        for m, forward in patched:
            m.forward = forward
        for mod, plain in functions:
            mod.apply_rotary_pos_emb = _rotary_function(plain)
        yield
    finally:
        for mod, plain in functions:
            mod.apply_rotary_pos_emb = plain
        for m, forward in before:
            if forward is None:
                del m.forward
            else:
                m.forward = forward
