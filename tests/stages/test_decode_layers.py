"""The fused decode step's rotary-embedding-and-cache-write kernel (`_decode_triton.rope_store`)
and the attention forward that uses it (`_decode_layers.fused_layers(model, cache)`).

On the CPU they run through Triton's interpreter (it reads TRITON_INTERPRET when Triton is
imported: hence a process of its own), in float16: the interpreter rounds float32 to bfloat16
towards zero where the GPU rounds to nearest, so bfloat16's bit-for-bit check runs on the GPU
(tests/stages/test_sampling_gpu.py).
"""

from __future__ import annotations

import importlib.util

import pytest
from stage_support import run_in_triton_interpreter

_ROPE_CHECK = """
import torch
from transformers import LlamaConfig, Qwen2Config
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding, apply_rotary_pos_emb

from cpx.stages._decode_triton import rope_store

dtype = torch.float16
B, H, KVH, D, cap = 5, 6, 2, 32, 40
llama_scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 512, "rope_theta": 500000.0}
for rotary in (
    Qwen2RotaryEmbedding(Qwen2Config(hidden_size=H * D, num_attention_heads=H, num_key_value_heads=KVH)),
    LlamaRotaryEmbedding(LlamaConfig(hidden_size=H * D, num_attention_heads=H, num_key_value_heads=KVH,
                                     rope_scaling=llama_scaling)),
):
    gen = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 3000, (B, 1), generator=gen)
    cos, sin = rotary(torch.zeros(B, 1, H * D, dtype=dtype), pos)
    q = (torch.randn(B, H * D, generator=gen) * 3).to(dtype)
    k = (torch.randn(B, KVH * D, generator=gen) * 3).to(dtype)
    v = torch.randn(B, KVH * D, generator=gen).to(dtype)
    k_cache = torch.full((B, KVH, cap, D), 7.0, dtype=dtype)
    v_cache = torch.full((B, KVH, cap, D), 7.0, dtype=dtype)
    q_out = rope_store(q, k, v, cos.reshape(B, -1), sin.reshape(B, -1), k_cache, v_cache, torch.tensor([13]))
    want_q, want_k = apply_rotary_pos_emb(q.view(B, 1, H, D).transpose(1, 2), k.view(B, 1, KVH, D).transpose(1, 2), cos, sin)
    assert torch.equal(q_out, want_q[:, :, 0]), (q_out.float() - want_q[:, :, 0].float()).abs().max()
    assert torch.equal(k_cache[:, :, 13], want_k[:, :, 0])
    assert torch.equal(v_cache[:, :, 13], v.view(B, KVH, D))
    k_cache[:, :, 13] = 7.0
    v_cache[:, :, 13] = 7.0
    assert bool((k_cache == 7.0).all()) and bool((v_cache == 7.0).all()), "wrote outside position 13"
print("ok")
"""

_ATTENTION_CHECK = """
import torch
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention, Qwen2RotaryEmbedding

import cpx.stages._decode_triton as T
from cpx.stages._decode_attn import DecodeSpan
from cpx.stages._decode_layers import fused_layers
from cpx.stages._kv import PreallocatedKV, cache_kwarg, kv_attention

dtype = torch.float16
B, H, KVH, D, cap, length = 3, 4, 2, 16, 24, 10
cfg = Qwen2Config(hidden_size=H * D, num_attention_heads=H, num_key_value_heads=KVH, num_hidden_layers=1)
cfg._attn_implementation = "sdpa"
torch.manual_seed(0)
attn = Qwen2Attention(cfg, 0).to(dtype).eval()
x = torch.randn(B, 1, H * D).to(dtype)
cos, sin = Qwen2RotaryEmbedding(cfg)(x, torch.tensor([[9], [7], [9]]))
calls = []
plain_rope = T.rope_store
T.rope_store = lambda *a: calls.append(1) or plain_rope(*a)
results = []
for fused in (False, True):
    torch.manual_seed(1)
    cache = PreallocatedKV(1, cap)
    cache.keys[0] = torch.randn(B, KVH, cap, D).to(dtype)
    cache.values[0] = torch.randn(B, KVH, cap, D).to(dtype)
    cache.position = torch.tensor([length - 1])
    span = DecodeSpan(torch.tensor([0, 2, 0], dtype=torch.int32), torch.tensor([length], dtype=torch.int32), 2)
    with kv_attention(attn), torch.no_grad(), fused_layers(attn, cache if fused else None):
        # the decoder layer passes the cache under the name its transformers version uses
        out, _ = attn(hidden_states=x, position_embeddings=(cos, sin), attention_mask=span, cache=cache)
    results.append((out, cache.keys[0], cache.values[0]))
assert len(calls) == 1, calls
for a, b in zip(*results):
    assert torch.equal(a, b), (a.float() - b.float()).abs().max()
# outside the decode step (a prefill: several tokens, no DecodeSpan) the module's own forward runs
with kv_attention(attn), torch.no_grad(), fused_layers(attn, PreallocatedKV(1, cap)):
    mask = torch.ones(1, 1, 3, 3, dtype=torch.bool).tril()
    y = torch.randn(1, 3, H * D).to(dtype)
    c3, s3 = Qwen2RotaryEmbedding(cfg)(y, torch.arange(3)[None])
    out, _ = attn(hidden_states=y, position_embeddings=(c3, s3), attention_mask=mask)
assert out.shape == (1, 3, H * D) and len(calls) == 1
print("ok")
"""


needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="needs Triton (its interpreter runs on the CPU)"
)


@needs_triton
def test_rope_store_rounds_as_transformers_rotary_embedding():
    """q and k rotated bit for bit as transformers' apply_rotary_pos_emb (Qwen2's rotary and
    Llama 3's scaled one), k and v written at the cache position and nowhere else."""
    run_in_triton_interpreter(_ROPE_CHECK)


@needs_triton
def test_fused_attention_forward_is_the_modules_own():
    """A decode step through the fused attention forward gives the module's own output and
    cache bit for bit, with one rope_store launch; a prefill runs the module's own forward."""
    run_in_triton_interpreter(_ATTENTION_CHECK)
