"""The fused decode step's elementwise layers: RMSNorm and the gated MLP's activation in one kernel each.

transformers' RMSNorm runs about seven elementwise kernels over float32 copies of the
activations, and the gated MLP two more over the intermediate width; at a batch of thousands
of rows they cost a fifth of a decode step. `fused_layers(model)` routes the RMSNorm and
gated-MLP modules of the families it knows (same roundings, `_decode_triton`) through
single-pass Triton kernels while the fused decode step runs and is captured; everything
else, and every module outside that block, runs as transformers wrote it.

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


@contextmanager
def fused_layers(model) -> Iterator[None]:
    """Within the block, the model's known RMSNorm and SiLU-gated MLP modules run fused kernels."""
    patched = []
    for m in model.modules():
        name = type(m).__name__
        if name in _NORMS and hasattr(m, "variance_epsilon"):
            patched.append((m, _norm_forward(m)))
        elif name in _MLPS and type(getattr(m, "act_fn", None)).__name__ in _SILU:
            patched.append((m, _mlp_forward(m)))
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
