"""Triton kernels of the fused decode attention (`_decode_attn`): imported only on CUDA.

FlashDecoding-style: the cache positions of a row are cut into `splits` chunks; one program
per (row, key/value head, chunk) reads that chunk of the head's keys and values once, for all
the query heads that share it (grouped-query attention without repeating K/V: the group is
the M axis of the two small matrix products), and keeps an online softmax. With one chunk
the program writes the output itself; otherwise each writes its normalised partial output
and log-sum-exp, and a second kernel combines them.

The filled length is read from device memory, so one launch (and one captured CUDA graph)
serves every step of a batch.
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
