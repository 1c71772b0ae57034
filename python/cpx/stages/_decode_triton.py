"""Triton kernels of the fused decode path: imported only on CUDA.

`decode_attention` (for `_decode_attn`) is FlashDecoding-style: the cache positions of a row are cut into `splits` chunks; one program
per (row, key/value head, chunk) reads that chunk of the head's keys and values once, for all
the query heads that share it (grouped-query attention without repeating K/V: the group is
the M axis of the two small matrix products), and keeps an online softmax. With one chunk
the program writes the output itself; otherwise each writes its normalised partial output
and log-sum-exp, and a second kernel combines them.

The filled length is read from device memory, so one launch (and one captured CUDA graph)
serves every step of a batch.

`sample_full` (for `_draws.sample_tokens` on the fused path) draws a token by inverse CDF
in three passes over a row's logits. `rms_norm` and `silu_gate` (for `_decode_layers`) do in one pass what transformers' RMSNorm
and gated MLP do in several elementwise kernels, with the same roundings (float32 inside, the
activation dtype between the steps that round to it).
"""

from __future__ import annotations

import triton
import triton.language as tl

_LOG2E = 1.4426950408889634


@triton.jit
def _split_kernel(
    Q,
    K,
    V,
    START,
    LENGTH,
    OUT,
    PART_O,
    PART_LSE,
    qk_scale,
    chunk,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_ob,
    stride_oh,
    REP: tl.constexpr,
    REP_PAD: tl.constexpr,
    D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLITS: tl.constexpr,
):
    b = tl.program_id(0)
    g = tl.program_id(1)
    s = tl.program_id(2)
    length = tl.load(LENGTH)
    start = tl.load(START + b)
    lo = tl.maximum(s * chunk, (start // BLOCK_N) * BLOCK_N)
    hi = tl.minimum((s + 1) * chunk, length)

    offs_h = tl.arange(0, REP_PAD)
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BLOCK_N)
    hmask = offs_h < REP
    heads = g * REP + offs_h
    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=hmask[:, None], other=0.0)

    m_i = tl.full([REP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([REP_PAD], tl.float32)
    acc = tl.zeros([REP_PAD, D], tl.float32)
    k_base = K + b * stride_kb + g * stride_kh
    v_base = V + b * stride_vb + g * stride_vh
    # Every block in [lo, hi) holds at least one position >= start (lo is start rounded down
    # to a block, hi <= length and start < length), so the running maximum stays finite.
    for n0 in range(lo, hi, BLOCK_N):
        pos = n0 + offs_n
        valid = (pos >= start) & (pos < hi)
        k = tl.load(k_base + pos[:, None] * stride_kn + offs_d[None, :], mask=valid[:, None], other=0.0)
        qk = tl.dot(q, tl.trans(k)) * qk_scale
        qk = tl.where(valid[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + pos[:, None] * stride_vn + offs_d[None, :], mask=valid[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    filled = l_i > 0
    out = acc / tl.where(filled, l_i, 1.0)[:, None]
    if SPLITS == 1:
        o_ptr = OUT + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptr, out.to(OUT.dtype.element_ty), mask=hmask[:, None])
    else:
        row = (b * tl.num_programs(1) * REP + heads) * SPLITS + s
        tl.store(PART_O + row[:, None] * D + offs_d[None, :], out, mask=hmask[:, None])
        lse = tl.where(filled, m_i + tl.log2(tl.where(filled, l_i, 1.0)), float("-inf"))
        tl.store(PART_LSE + row, lse, mask=hmask)


@triton.jit
def _combine_kernel(
    PART_O,
    PART_LSE,
    OUT,
    stride_ob,
    stride_oh,
    H: tl.constexpr,
    D: tl.constexpr,
    SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, D)
    smask = offs_s < SPLITS
    row = (b * H + h) * SPLITS + offs_s
    lse = tl.load(PART_LSE + row, mask=smask, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, 0))
    part = tl.load(PART_O + row[:, None] * D + offs_d[None, :], mask=smask[:, None], other=0.0)
    out = tl.sum(part * w[:, None], 0) / tl.sum(w, 0)
    tl.store(OUT + b * stride_ob + h * stride_oh + offs_d, out.to(OUT.dtype.element_ty))


def decode_attention(
    q, k, v, start, length, scale: float, splits: int, block_n: int = 64, num_warps: int = 4, num_stages: int = 2
):
    """Attention of one query token per row over the cache positions [start[b], length).

    q: (B, H, D); k, v: (B, KVH, capacity, D), last axis contiguous; start: (B,) int32;
    length: (1,) int32 on the device. Returns (B, H, D) in q's dtype.
    """
    import torch

    B, H, D = q.shape
    kvh, capacity = k.shape[1], k.shape[2]
    rep = H // kvh
    rep_pad = max(16, triton.next_power_of_2(rep))
    chunk = triton.cdiv(triton.cdiv(capacity, splits), block_n) * block_n
    out = torch.empty((B, H, D), dtype=q.dtype, device=q.device)
    if splits > 1:
        part_o = torch.empty((B * H * splits, D), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((B * H * splits,), dtype=torch.float32, device=q.device)
    else:
        part_o = part_lse = out
    _split_kernel[(B, kvh, splits)](
        q,
        k,
        v,
        start,
        length,
        out,
        part_o,
        part_lse,
        scale * _LOG2E,
        chunk,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        out.stride(0),
        out.stride(1),
        REP=rep,
        REP_PAD=rep_pad,
        D=D,
        BLOCK_N=block_n,
        SPLITS=splits,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    if splits > 1:
        _combine_kernel[(B, H)](
            part_o,
            part_lse,
            out,
            out.stride(0),
            out.stride(1),
            H=H,
            D=D,
            SPLITS=splits,
            SPLITS_PAD=triton.next_power_of_2(splits),
            num_warps=4,
        )
    return out


@triton.jit
def _rms_norm_kernel(X, W, OUT, n, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + row * n + offs, mask=mask, other=0.0).to(tl.float32)
    var = tl.sum(x * x, 0) / n
    y = (x * tl.rsqrt(var + eps)).to(OUT.dtype.element_ty)
    w = tl.load(W + offs, mask=mask, other=0.0)
    tl.store(OUT + row * n + offs, (w.to(tl.float32) * y.to(tl.float32)).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _silu_gate_kernel(G, U, OUT, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(OUT.dtype.element_ty).to(tl.float32)
    tl.store(OUT + offs, (act * u).to(OUT.dtype.element_ty), mask=mask)


def rms_norm(x, weight, eps: float):
    """weight * (x / sqrt(mean(x**2) + eps)) over the last axis, as transformers' RMSNorm
    rounds it: normalised in float32, rounded to x's dtype, then scaled. x contiguous."""
    import torch

    n = x.shape[-1]
    out = torch.empty_like(x)
    _rms_norm_kernel[(x.numel() // n,)](x, weight, out, n, eps, BLOCK=triton.next_power_of_2(n), num_warps=8)
    return out


def silu_gate(gate, up):
    """silu(gate) * up, the activation rounded to gate's dtype before the product (contiguous inputs)."""
    import torch

    out = torch.empty_like(gate)
    numel = gate.numel()
    _silu_gate_kernel[(triton.cdiv(numel, 4096),)](gate, up, out, numel, BLOCK=4096, num_warps=8)
    return out


@triton.jit
def _sample_kernel(LOGITS, U, OUT, stride_row, vocab, temperature, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride_row
    offs = tl.arange(0, BLOCK)
    # pass 1: the maximum and the sum of exp(s - max) of s = logits / temperature (online)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    z = tl.zeros([BLOCK], tl.float32)
    for b0 in range(0, vocab, BLOCK):
        s = tl.load(base + b0 + offs, mask=b0 + offs < vocab, other=float("-inf")).to(tl.float32) / temperature
        m_new = tl.maximum(m, s)
        fresh = tl.where(s == float("-inf"), 0.0, tl.exp(s - m_new))
        z = z * tl.exp(tl.where(m_new == float("-inf"), 0.0, m - m_new)) + fresh
        m = m_new
    m_row = tl.max(m, 0)
    z_row = tl.sum(z * tl.exp(m - m_row), 0)
    # pass 2: the total of the probabilities as rounded (the CDF's last value)
    total = tl.zeros([BLOCK], tl.float32)
    for b0 in range(0, vocab, BLOCK):
        s = tl.load(base + b0 + offs, mask=b0 + offs < vocab, other=float("-inf")).to(tl.float32) / temperature
        total += tl.exp(s - m_row) / z_row
    target = tl.load(U + row) * tl.sum(total, 0)
    # pass 3: the first index whose CDF exceeds the target
    running = 0.0
    found = vocab - 1
    for b0 in range(0, vocab, BLOCK):
        s = tl.load(base + b0 + offs, mask=b0 + offs < vocab, other=float("-inf")).to(tl.float32) / temperature
        cdf = running + tl.cumsum(tl.exp(s - m_row) / z_row, 0)
        hit = tl.min(tl.where((cdf > target) & (b0 + offs < vocab), b0 + offs, vocab), 0)
        found = tl.minimum(found, hit)
        running = tl.max(tl.where(b0 + offs < vocab, cdf, 0.0), 0)
    tl.store(OUT + row, found.to(tl.int64))


def sample_full(logits, temperature: float, u):
    """One token per row by inverse CDF over softmax(logits / temperature) in vocabulary order,
    as `_draws.sample_tokens` draws it with top_p = 1, in three passes over the row instead of
    float32 copies, a softmax and a cumulative sum of the whole batch."""
    import torch

    rows, vocab = logits.shape
    out = torch.empty(rows, dtype=torch.long, device=logits.device)
    _sample_kernel[(rows,)](
        logits,
        u.contiguous(),
        out,
        logits.stride(0),
        vocab,
        float(temperature),
        BLOCK=min(4096, triton.next_power_of_2(vocab)),
        num_warps=8,
    )
    return out
