"""Triton kernels of the fused decode path: imported only on CUDA.

`decode_attention` (for `_decode_attn`) is FlashDecoding-style: the cache positions of a row are cut into `splits` chunks; one program
per (row, key/value head, chunk) reads that chunk of the head's keys and values once, for all
the query heads that share it (grouped-query attention without repeating K/V: the group is
the M axis of the two small matrix products), and keeps an online softmax. With one chunk
the program writes the output itself; otherwise each writes its normalised partial output
and log-sum-exp, and a second kernel combines them.

The filled length is read from device memory, so one launch (and one captured CUDA graph)
serves every step of a batch.

`rms_norm` and `silu_gate` (for `_decode_layers`) do in one pass what transformers' RMSNorm
and gated MLP do in several elementwise kernels, with the same roundings (float32 inside, the
activation dtype between the steps that round to it); `rope_store` applies the rotary
embedding to a step's queries and keys and writes its keys and values into the cache, in one
launch, bit for bit as transformers' rotary embedding and the cache's write.

The draws' kernels (a token from each row's logits) are in `_draws_triton`.
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
def _rotate(x1, x2, c1, c2, s1, s2, dt):
    """(x * cos) + (rotate_half(x) * sin) of the halves x1, x2 (float32), each product and the
    sum rounded to `dt` as transformers' apply_rotary_pos_emb rounds them (a product of two
    16-bit floats is exact in float32, so rounding it once gives PyTorch's 16-bit product)."""
    o1 = ((x1 * c1[None, :]).to(dt).to(tl.float32) + (-x2 * s1[None, :]).to(dt).to(tl.float32)).to(dt)
    o2 = ((x2 * c2[None, :]).to(dt).to(tl.float32) + (x1 * s2[None, :]).to(dt).to(tl.float32)).to(dt)
    return o1, o2


@triton.jit
def _rope_store_kernel(
    Q,
    K,
    V,
    COS,
    SIN,
    QOUT,
    KC,
    VC,
    POS,
    stride_q,
    stride_k,
    stride_v,
    stride_c,
    stride_s,
    stride_kcb,
    stride_kch,
    stride_kcn,
    stride_vcb,
    stride_vch,
    stride_vcn,
    H: tl.constexpr,
    KVH: tl.constexpr,
    HP: tl.constexpr,
    KVHP: tl.constexpr,
    HALF: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    pos = tl.load(POS)
    offs = tl.arange(0, HALF)
    c1 = tl.load(COS + b * stride_c + offs).to(tl.float32)
    c2 = tl.load(COS + b * stride_c + HALF + offs).to(tl.float32)
    s1 = tl.load(SIN + b * stride_s + offs).to(tl.float32)
    s2 = tl.load(SIN + b * stride_s + HALF + offs).to(tl.float32)
    dt = QOUT.dtype.element_ty
    hq = tl.arange(0, HP)
    qm = (hq < H)[:, None]
    qp = Q + b * stride_q + hq[:, None] * (2 * HALF) + offs[None, :]
    x1 = tl.load(qp, mask=qm, other=0.0).to(tl.float32)
    x2 = tl.load(qp + HALF, mask=qm, other=0.0).to(tl.float32)
    o1, o2 = _rotate(x1, x2, c1, c2, s1, s2, dt)
    op = QOUT + b * (H * 2 * HALF) + hq[:, None] * (2 * HALF) + offs[None, :]
    tl.store(op, o1, mask=qm)
    tl.store(op + HALF, o2, mask=qm)
    hk = tl.arange(0, KVHP)
    km = (hk < KVH)[:, None]
    kp = K + b * stride_k + hk[:, None] * (2 * HALF) + offs[None, :]
    y1 = tl.load(kp, mask=km, other=0.0).to(tl.float32)
    y2 = tl.load(kp + HALF, mask=km, other=0.0).to(tl.float32)
    p1, p2 = _rotate(y1, y2, c1, c2, s1, s2, dt)
    kc = KC + b * stride_kcb + hk[:, None] * stride_kch + pos * stride_kcn + offs[None, :]
    tl.store(kc, p1, mask=km)
    tl.store(kc + HALF, p2, mask=km)
    vp = V + b * stride_v + hk[:, None] * (2 * HALF) + offs[None, :]
    vc = VC + b * stride_vcb + hk[:, None] * stride_vch + pos * stride_vcn + offs[None, :]
    tl.store(vc, tl.load(vp, mask=km, other=0.0), mask=km)
    tl.store(vc + HALF, tl.load(vp + HALF, mask=km, other=0.0), mask=km)


def rope_store(q, k, v, cos, sin, k_cache, v_cache, position):
    """One decode token per row: rotary embedding of q and k as transformers applies it
    (`(x * cos) + (rotate_half(x) * sin)`, same roundings), k and v written into the caches at
    `position`, in one launch (transformers' rotary and the cache write are about ten
    elementwise kernels a layer).

    q: (B, H * D), k and v: (B, KVH * D), rows of contiguous heads; cos and sin: (B, D);
    k_cache and v_cache: (B, KVH, capacity, D), last axis contiguous; position: (1,) integer
    tensor on the device. Returns the rotated q as (B, H, D).
    """
    import torch

    B, D = cos.shape
    H, KVH = q.shape[1] // D, k.shape[1] // D
    out = torch.empty((B, H, D), dtype=q.dtype, device=q.device)
    _rope_store_kernel[(B,)](
        q,
        k,
        v,
        cos,
        sin,
        out,
        k_cache,
        v_cache,
        position,
        q.stride(0),
        k.stride(0),
        v.stride(0),
        cos.stride(0),
        sin.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        H=H,
        KVH=KVH,
        HP=triton.next_power_of_2(H),
        KVHP=triton.next_power_of_2(KVH),
        HALF=D // 2,
        num_warps=4,
    )
    return out
