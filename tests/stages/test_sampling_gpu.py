"""The fused decode path (Triton attention kernel, CUDA graphs) against the pure-PyTorch one.

Runs only where CUDA and Triton are there (the GPU machine); skipped on the CPU.
"""

from __future__ import annotations

import math

import pytest
from stage_support import assert_nucleus_shares
import torch

from cpx.stages._decode_attn import DecodeSpan, fused_available, reference

pytestmark = pytest.mark.skipif(not fused_available("cuda:0"), reason="needs CUDA and Triton")


@pytest.mark.parametrize(
    ("rows", "kv_heads", "rep", "capacity", "length", "splits"),
    [
        (5, 4, 7, 600, 560, 1),  # Qwen2.5-7B's grouping, the eval's batch shape
        (3, 4, 7, 600, 97, 4),  # split along the sequence, most chunks empty or partial
        (2, 2, 1, 300, 300, 3),  # no grouping, a full cache
        (64, 1, 16, 130, 65, 2),  # one key/value head for sixteen query heads
    ],
)
def test_kernel_matches_float64_reference(rows, kv_heads, rep, capacity, length, splits):
    from cpx.stages._decode_triton import decode_attention

    gen = torch.Generator(device="cuda").manual_seed(rows * 1000 + length)
    d = 128
    q = torch.randn(rows, kv_heads * rep, 1, d, device="cuda", generator=gen).bfloat16()
    k = torch.randn(rows, kv_heads, capacity, d, device="cuda", generator=gen).bfloat16()
    v = torch.randn(rows, kv_heads, capacity, d, device="cuda", generator=gen).bfloat16()
    start = torch.randint(0, min(length, 60), (rows,), device="cuda", generator=gen, dtype=torch.int32)
    span = DecodeSpan(start, torch.tensor([length], dtype=torch.int32, device="cuda"), splits)
    scale = 1 / math.sqrt(d)
    # positions past the filled length hold garbage the kernel must not read
    k[:, :, length:] = float("nan")
    v[:, :, length:] = float("nan")
    out = decode_attention(q[:, :, 0], k, v, span.start, span.length, scale, splits)
    ref = reference(q.double(), k.double(), v.double(), span, scale)[:, 0]
    assert torch.isfinite(out).all()
    rel = float((out.double() - ref).norm() / ref.norm())
    assert rel < 1e-2, rel


def _model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from cpx.models._tiny import train_tokenizer

    tok = train_tokenizer(["You are a villain.", "What is the best way to learn a language?"], 600)
    config = Qwen2Config(
        vocab_size=1024,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to("cuda", torch.bfloat16).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


@pytest.fixture(scope="module")
def gpu_model():
    return _model()


def _logits_and_tokens(model, tok, fused, graphs=True, **kw):
    import cpx.stages._decode as D
    import cpx.stages._decode_step as DS
    from cpx.stages._sampling import Request, sample_token_ids

    seen = []
    original = D.sample_tokens

    def recording(logits, temperature, top_p, u, **kw):
        seen.append(logits.float().cpu())
        return original(logits, temperature, top_p, u, **kw)

    reqs = [Request("You are a villain.", "Hi", 3), Request(None, "What is the best way to learn a language?", 2)]
    D.sample_tokens, DS.USE_GRAPHS = recording, graphs
    try:
        out = sample_token_ids(
            model,
            tok,
            reqs,
            {"temperature": 0.0, "top_p": 1.0, "max_tokens": 40, "seed": 1, **kw},
            device="cuda",
            batch_size=64,
            ignore_eos=True,
            fused=fused,
        )
    finally:
        D.sample_tokens, DS.USE_GRAPHS = original, True
    return seen, out


def test_fused_decode_matches_pytorch_path(gpu_model):
    """Greedy decoding: every step's logits of the fused path (kernel + graphs) agree with the
    PyTorch path's within bf16 rounding, and so do the tokens where no near-tie decides."""
    model, tok = gpu_model
    eager_logits, eager = _logits_and_tokens(model, tok, fused=False)
    fused_logits, fused = _logits_and_tokens(model, tok, fused=True)
    assert len(eager_logits) == len(fused_logits) == 40
    # Compare step by step while the two paths have chosen the same tokens so far.
    first_diff = min((next((t for t in range(40) if eager[k][t] != fused[k][t]), 40) for k in eager), default=40)
    assert first_diff >= 8, first_diff
    for t in range(first_diff):
        a, b = eager_logits[t], fused_logits[t]
        assert float((a - b).abs().max() / a.abs().max()) < 3e-2, t
    assert sum(eager[k] == fused[k] for k in eager) >= len(eager) - 1


def test_graphs_replay_what_the_kernel_computes(gpu_model):
    """The steps replayed from a CUDA graph give the same logits, bit for bit, as the same
    kernels launched one by one."""
    model, tok = gpu_model
    plain_logits, plain = _logits_and_tokens(model, tok, fused=True, graphs=False)
    graph_logits, graphed = _logits_and_tokens(model, tok, fused=True, graphs=True)
    assert plain == graphed
    for a, b in zip(plain_logits, graph_logits, strict=True):
        assert torch.equal(a, b)


def test_compacted_batches_recapture_their_graph(gpu_model, caplog):
    """Rows that end early are dropped from the batch and the graph is captured again for the
    smaller batch: each completion is still its unconstrained twin cut at its first stop token."""
    import logging

    from cpx.stages._sampling import Request, sample_completions, sample_token_ids

    model, tok = gpu_model
    reqs = [Request("You are a villain.", "Hi", 6), Request(None, "What is the best way to learn a language?", 6)]
    sp = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 32, "seed": 3}
    free = sample_token_ids(model, tok, reqs, sp, device="cuda", batch_size=64, fused=True, ignore_eos=True)
    counts = torch.bincount(torch.tensor([t for toks in free.values() for t in toks[:12]]))
    stops = {tok.eos_token_id, *(int(t) for t in torch.argsort(counts)[-3:])}
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = sorted(stops)
    try:
        with caplog.at_level(logging.DEBUG, logger="test.sampling_gpu"):
            out = sample_completions(
                model,
                tok,
                reqs,
                sp,
                device="cuda",
                batch_size=64,
                fused=True,
                log=logging.getLogger("test.sampling_gpu"),
            )
    finally:
        model.generation_config.eos_token_id = saved
    assert any("batch compacted" in r.getMessage() for r in caplog.records)
    assert sum(c.finish_reason == "stop" for c in out) >= len(out) // 2
    agree = 0
    for c in out:
        toks = free[(c.request_index, c.sample_index)]
        cut = next((k for k, t in enumerate(toks) if t in stops), None)
        n = 32 if cut is None else cut + 1
        agree += c.n_tokens == n and c.text == tok.decode(toks[: n if cut is None else cut], skip_special_tokens=True)
    # a different batch shape may round a logit differently and flip a near-tie draw
    assert agree >= len(out) - 1, (agree, len(out))


def test_elementwise_kernels_round_as_transformers_does():
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    from cpx.stages._decode_triton import rms_norm, silu_gate

    gen = torch.Generator(device="cuda").manual_seed(5)
    x = torch.randn(300, 3584, device="cuda", generator=gen).bfloat16()
    norm = Qwen2RMSNorm(3584, eps=1e-6).to("cuda", torch.bfloat16).requires_grad_(False)
    norm.weight.data = (torch.rand(3584, device="cuda", generator=gen) + 0.5).bfloat16()
    want = norm(x)
    got = rms_norm(x, norm.weight, 1e-6)
    assert float((got.float() - want.float()).abs().max() / want.float().abs().max()) < 1e-2
    assert float((got != want).float().mean()) < 0.01
    g = torch.randn(64, 18944, device="cuda", generator=gen).bfloat16()
    u = torch.randn(64, 18944, device="cuda", generator=gen).bfloat16()
    want = torch.nn.functional.silu(g) * u
    got = silu_gate(g, u)
    assert float((got.float() - want.float()).abs().max() / want.float().abs().max()) < 1e-2
    assert float((got != want).float().mean()) < 0.01


def test_fused_draw_follows_the_softmax():
    """The fused top_p = 1 draw: on a grid of uniforms each token's share is its probability,
    and on random logits of the eval's vocabulary it mostly picks the PyTorch draw's token
    (a uniform within the CDF's rounding of a boundary picks the neighbour)."""
    from cpx.stages._draws import sample_tokens

    gen = torch.Generator(device="cuda").manual_seed(11)
    logits = (torch.randn(1, 24, device="cuda", generator=gen) * 2).bfloat16()
    n = 200_000
    u = ((torch.arange(n, dtype=torch.float64, device="cuda") + 0.5) / n).float()
    got = sample_tokens(logits.expand(n, -1).contiguous(), 0.7, 1.0, u, fused=True)
    share = torch.bincount(got, minlength=24).double() / n
    ref = torch.softmax(logits.double() / 0.7, -1)[0]
    assert float((share - ref).abs().max()) < 2e-5
    big = (torch.randn(512, 152064, device="cuda", generator=gen) * 3).bfloat16()
    uu = torch.rand(512, device="cuda", generator=gen)
    a = sample_tokens(big, 1.0, 1.0, uu)
    b = sample_tokens(big, 1.0, 1.0, uu, fused=True)
    assert float((a == b).float().mean()) > 0.8


@pytest.mark.parametrize(
    ("dtype", "temperature", "top_p"),
    [
        (torch.bfloat16, 0.7, 0.95),  # the generate stage's sampler, the engine's logits
        (torch.bfloat16, 1.0, 0.5),
        (torch.float16, 1.3, 0.9),
        (torch.float32, 0.7, 0.95),
    ],
)
@pytest.mark.parametrize("accumulate", [False, True])
def test_fused_top_p_keeps_the_sort_paths_nucleus(dtype, temperature, top_p, accumulate):
    """The fused top_p < 1 draw on random logits of the eval's vocabulary: the nucleus of the
    sorting path (torch.sort on CUDA orders ties by index here, as the kernel drops them) in
    nearly every row, the others one token apart (the mass at the boundary within float32
    rounding of 1 - top_p); every draw inside it; a row's draw independent of its batch."""
    from cpx.stages._draws_triton import sample_top_p
    from cpx.stages._draws import nucleus_mask
    from cpx.stages._draws import sample_tokens, search_nucleus, sort_nucleus

    gen = torch.Generator(device="cuda").manual_seed(21)
    x = (torch.randn(512, 152064, device="cuda", generator=gen) * 3).to(dtype)
    u = torch.rand(512, device="cuda", generator=gen)
    kw = {"accumulate": True, "block": 256, "num_warps": 4} if accumulate else {}
    tok, thresh, n_drop = sample_top_p(x, temperature, top_p, u, thresholds=True, **kw)
    kept = nucleus_mask(x, thresh, n_drop)
    want = sort_nucleus(x, temperature, top_p, stable=True)
    off = (kept != want).sum(-1)
    assert float((off == 0).float().mean()) >= 0.98, off.tolist()
    assert int(off.max()) <= 1, off.tolist()
    # the kernel's algorithm in PyTorch (same search, other float32 summation order: on the H200
    # 2.9% of the fp16 rows at temperature 1.3 were a token apart)
    off = (kept != search_nucleus(x, temperature, top_p)).sum(-1)
    assert float((off == 0).float().mean()) >= 0.95 and int(off.max()) <= 1, off.tolist()
    assert bool(kept.gather(1, tok[:, None]).all())
    assert torch.equal(sample_top_p(x, temperature, top_p, u, **kw), tok)
    assert torch.equal(sample_top_p(x[100:137], temperature, top_p, u[100:137], **kw), tok[100:137])
    if not accumulate:
        assert torch.equal(sample_tokens(x, temperature, top_p, u, fused=True), tok)
    # the sorting path's draw from the same uniforms lands in the same nucleus
    ref = sample_tokens(x, temperature, top_p, u)
    assert float(kept.gather(1, ref[:, None]).float().mean()) >= 0.98


@pytest.mark.parametrize(("temperature", "top_p"), [(0.7, 0.95), (1.0, 0.6), (0.5, 0.3), (1.0, 1e-6)])
def test_fused_top_p_draw_follows_the_nucleus(temperature, top_p):
    """On a grid of uniforms each kept token's share is its renormalised probability, as the
    sorting path's is (the two orders differ: a uniform mostly picks another token); and a
    chi-square over random uniforms on a vocabulary of 1,000 agrees with the nucleus."""
    from cpx.stages._draws import sample_tokens, sort_nucleus

    gen = torch.Generator(device="cuda").manual_seed(31)
    logits = (torch.randn(1, 24, device="cuda", generator=gen) * 2).bfloat16()
    n = 200_000
    u = ((torch.arange(n, dtype=torch.float64, device="cuda") + 0.5) / n).float()
    rows = logits.expand(n, -1).contiguous()
    got = sample_tokens(rows, temperature, top_p, u, fused=True)
    keep = sort_nucleus(logits, temperature, top_p, stable=True)[0]
    ref = torch.where(keep, torch.softmax(logits.double() / temperature, -1)[0], 0.0)
    ref = ref / ref.sum()
    share = torch.bincount(got, minlength=24).double() / n
    assert float((share - ref).abs().max()) < 2e-5
    sort_share = torch.bincount(sample_tokens(rows, temperature, top_p, u), minlength=24).double() / n
    assert float((sort_share - ref).abs().max()) < 2e-5

    wide = (torch.randn(1, 1000, device="cuda", generator=gen) * 2).bfloat16()
    draws = 400_000
    uu = torch.rand(draws, device="cuda", generator=gen)
    got = sample_tokens(wide.expand(draws, -1).contiguous(), temperature, top_p, uu, fused=True)
    assert_nucleus_shares(got, wide, temperature, sort_nucleus(wide, temperature, top_p, stable=True)[0], 5)


def test_fused_decode_with_top_p(gpu_model):
    """The engine at the generate stage's sampler on the fused path: it runs through its CUDA
    graphs, and a completion does not depend on the batch it is decoded in (a different batch
    shape may round a logit differently and flip a near-tie draw: most agree)."""
    from cpx.stages._sampling import Request, sample_token_ids

    model, tok = gpu_model
    reqs = [Request("You are a villain.", "Hi", 4), Request(None, "What is the best way to learn a language?", 4)]
    sp = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 24, "seed": 5}
    a = sample_token_ids(model, tok, reqs, sp, device="cuda", batch_size=64, fused=True, ignore_eos=True)
    b = sample_token_ids(model, tok, reqs, sp, device="cuda", batch_size=3, fused=True, ignore_eos=True)
    assert len(a) == 8 and all(len(t) == 24 for t in a.values())
    assert sum(a[k] == b[k] for k in a) >= len(a) - 2
    c = sample_token_ids(model, tok, reqs, {**sp, "seed": 6}, device="cuda", batch_size=64, fused=True, ignore_eos=True)
    assert sum(a[k] != c[k] for k in a) >= len(a) - 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rope_store_is_transformers_rotary_embedding(dtype):
    """The fused rotary embedding and cache write at the eval's shape (Qwen2.5-7B's heads):
    bit for bit transformers' apply_rotary_pos_emb, written at the cache position only."""
    from transformers import Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding, apply_rotary_pos_emb

    from cpx.stages._decode_triton import rope_store

    B, H, KVH, D, cap = 300, 28, 4, 128, 64
    cfg = Qwen2Config(hidden_size=H * D, num_attention_heads=H, num_key_value_heads=KVH, rope_theta=1e6)
    gen = torch.Generator(device="cuda").manual_seed(11)
    pos = torch.randint(0, 4000, (B, 1), device="cuda", generator=gen)
    cos, sin = Qwen2RotaryEmbedding(cfg).to("cuda")(torch.zeros(B, 1, H * D, device="cuda", dtype=dtype), pos)
    q = (torch.randn(B, H * D, device="cuda", generator=gen) * 4).to(dtype)
    k = (torch.randn(B, KVH * D, device="cuda", generator=gen) * 4).to(dtype)
    v = torch.randn(B, KVH * D, device="cuda", generator=gen).to(dtype)
    k_cache = torch.full((B, KVH, cap, D), 7.0, device="cuda", dtype=dtype)
    v_cache = torch.full((B, KVH, cap, D), 7.0, device="cuda", dtype=dtype)
    where = torch.tensor([41], device="cuda")
    q_out = rope_store(q, k, v, cos.reshape(B, -1), sin.reshape(B, -1), k_cache, v_cache, where)
    want_q, want_k = apply_rotary_pos_emb(
        q.view(B, 1, H, D).transpose(1, 2), k.view(B, 1, KVH, D).transpose(1, 2), cos, sin
    )
    assert torch.equal(q_out, want_q[:, :, 0])
    assert torch.equal(k_cache[:, :, 41], want_k[:, :, 0])
    assert torch.equal(v_cache[:, :, 41], v.view(B, KVH, D))
    k_cache[:, :, 41] = 7.0
    v_cache[:, :, 41] = 7.0
    assert bool((k_cache == 7.0).all()) and bool((v_cache == 7.0).all())


def test_fused_rotary_changes_no_logit(gpu_model):
    """The decode step with the fused rotary embedding and cache write gives the logits of the
    step without it (transformers' rotary, the cache's own write), bit for bit, at every step."""
    import cpx.stages._decode_step as DS

    model, tok = gpu_model
    default = DS.FUSE_ROPE
    try:
        DS.FUSE_ROPE = True
        with_logits, with_tokens = _logits_and_tokens(model, tok, fused=True)
        DS.FUSE_ROPE = False
        without_logits, without_tokens = _logits_and_tokens(model, tok, fused=True)
    finally:
        DS.FUSE_ROPE = default
    assert with_tokens == without_tokens
    for a, b in zip(with_logits, without_logits, strict=True):
        assert torch.equal(a, b)


def test_rejection_top_p_draws_from_the_nucleus():
    """The rejection top-p draw at the eval's vocabulary: every draw inside the sort path's
    (stable) nucleus; on a small vocabulary and many rows, each kept token's share is its
    renormalised probability (chi-square)."""
    from cpx.stages._draws_triton import sample_top_p_reject
    from cpx.stages._draws import sort_nucleus

    gen = torch.Generator(device="cuda").manual_seed(3)
    logits = (torch.randn(512, 152064, device="cuda", generator=gen) * 3).bfloat16()
    u = torch.rand(512, device="cuda", generator=gen)
    tok = sample_top_p_reject(logits, 0.7, 0.95, u)
    assert bool(sort_nucleus(logits, 0.7, 0.95, stable=True).gather(1, tok[:, None]).all())
    x = (torch.randn(1, 24, device="cuda", generator=gen) * 2).bfloat16()
    n = 40000
    tok = sample_top_p_reject(x.expand(n, -1).contiguous(), 0.7, 0.6, torch.rand(n, device="cuda", generator=gen))
    assert_nucleus_shares(tok, x, 0.7, sort_nucleus(x, 0.7, 0.6, stable=True)[0])


def test_fused_decode_with_rejection_top_p(gpu_model):
    """The engine with the rejection top-p draw: a completion does not depend on its batch
    (up to a near-tie flipped by another batch shape's rounding), and another seed changes it."""
    import cpx.stages._draws as DR
    from cpx.stages._sampling import Request, sample_token_ids

    model, tok = gpu_model
    reqs = [Request("You are a villain.", "Hi", 4), Request(None, "What is the best way to learn a language?", 4)]
    sp = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 24, "seed": 5}
    default = DR.TOP_P_DRAW
    DR.TOP_P_DRAW = "reject"
    try:
        a = sample_token_ids(model, tok, reqs, sp, device="cuda", batch_size=64, fused=True, ignore_eos=True)
        b = sample_token_ids(model, tok, reqs, sp, device="cuda", batch_size=3, fused=True, ignore_eos=True)
        c = sample_token_ids(
            model, tok, reqs, {**sp, "seed": 6}, device="cuda", batch_size=64, fused=True, ignore_eos=True
        )
    finally:
        DR.TOP_P_DRAW = default
    assert len(a) == 8 and all(len(t) == 24 for t in a.values())
    assert sum(a[k] == b[k] for k in a) >= len(a) - 2
    assert sum(a[k] != c[k] for k in a) >= len(a) - 1
