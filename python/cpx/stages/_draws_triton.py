"""Triton kernels of the fused draws (`_draws.sample_tokens` on the fused path): imported only on CUDA,
or under Triton's interpreter in the tests.

`sample_full` (top_p = 1) draws a token by inverse CDF in three passes over a row's logits;
`sample_top_p` (top_p < 1) finds the nucleus' threshold by a radix search over the logits' bit
patterns instead of sorting the row, then draws; `sample_top_p_reject` draws from the whole
softmax and keeps the draw if it is in the nucleus, else draws again. A row's token depends
only on its logits and its uniform, never on its batch.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _max_and_normaliser(base, vocab, temperature, BLOCK: tl.constexpr):
    """A row's maximum of s = logits / temperature and its sum of exp(s - max), in one online
    pass over the row (a block of lanes at a time)."""
    offs = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    z = tl.zeros([BLOCK], tl.float32)
    for b0 in range(0, vocab, BLOCK):
        s = tl.load(base + b0 + offs, mask=b0 + offs < vocab, other=float("-inf")).to(tl.float32) / temperature
        m_new = tl.maximum(m, s)
        fresh = tl.where(s == float("-inf"), 0.0, tl.exp(s - m_new))
        z = z * tl.exp(tl.where(m_new == float("-inf"), 0.0, m - m_new)) + fresh
        m = m_new
    m_row = tl.max(m, 0)
    return m_row, tl.sum(z * tl.exp(m - m_row), 0)


@triton.jit
def _sample_kernel(LOGITS, U, OUT, stride_row, vocab, temperature, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride_row
    offs = tl.arange(0, BLOCK)
    # pass 1: the maximum and the sum of exp(s - max) of s = logits / temperature
    m_row, z_row = _max_and_normaliser(base, vocab, temperature, BLOCK)
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


def sample_full(logits, temperature: float, u, block: int = 4096):
    """One token per row by inverse CDF over softmax(logits / temperature) in vocabulary order,
    as `_draws.sample_tokens` draws it with top_p = 1, in three passes over the row (`block`
    logits at a time) instead of float32 copies, a softmax and a cumulative sum of the whole batch."""
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
        BLOCK=min(block, triton.next_power_of_2(vocab)),
        num_warps=8,
    )
    return out


# ---- top-p < 1: the nucleus threshold by radix search, then an inverse-CDF draw -----------------
#
# A logit's bit pattern, made a signed integer whose order is the logits' order (`_sort_key`),
# is searched four bits at a time from the top: each pass over the row sums the probability
# mass of the tokens that share the prefix found so far, by their next four bits (16 bins), and
# takes the first bin where the mass below it (ascending, as the sort path accumulates) exceeds
# 1 - top_p. After KEY_BITS / 4 passes the prefix is the threshold's key: the least likely kept
# value. Dividing by a positive temperature keeps the order, so the key is taken on the logits.


@triton.jit
def _sort_key(x, KEY_BITS: tl.constexpr):
    """Signed integers in the order of the floats x (16-bit or 32-bit), -0.0 made +0.0."""
    if KEY_BITS == 16:
        b = x.to(tl.int16, bitcast=True).to(tl.int32)
    else:
        b = x.to(tl.int32, bitcast=True)
    k = b ^ ((b >> (KEY_BITS - 1)) & ((1 << (KEY_BITS - 1)) - 1))
    return tl.where(k == -1, 0, k)


@triton.jit
def _top_p_kernel(
    LOGITS,
    U,
    OUT,
    THRESH,
    NDROP,
    stride_row,
    vocab,
    temperature,
    top_p,
    KEY_BITS: tl.constexpr,
    BLOCK: tl.constexpr,
    DRAW_BLOCK: tl.constexpr,
    ACC: tl.constexpr,
    WRITE_THRESHOLD: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride_row
    offs = tl.arange(0, BLOCK)
    digits = tl.arange(0, 16)
    LEVELS: tl.constexpr = KEY_BITS // 4
    # pass 1: the row's maximum, and the mass of exp(s - max) by the key's top four bits (online:
    # the bins are rescaled when the running maximum grows). ACC keeps a maximum and 16 bins per
    # lane and reduces them once after the loop; otherwise each block is reduced as it is read.
    if ACC:
        m_lane = tl.full([BLOCK], float("-inf"), tl.float32)
        acc = tl.zeros([BLOCK, 16], tl.float32)
        for b0 in range(0, vocab, BLOCK):
            inside = b0 + offs < vocab
            x = tl.load(base + b0 + offs, mask=inside, other=float("-inf"))
            s = x.to(tl.float32) / temperature
            m_new = tl.maximum(m_lane, s)
            e = tl.where(inside & (s > float("-inf")), tl.exp(s - m_new), 0.0)
            d = (_sort_key(x, KEY_BITS) >> (KEY_BITS - 4)) + 8
            scale = tl.where(m_new > float("-inf"), tl.exp(m_lane - m_new), 1.0)
            acc = acc * scale[:, None] + tl.where(d[:, None] == digits[None, :], e[:, None], 0.0)
            m_lane = m_new
        m = tl.max(m_lane, 0)
        bins = tl.sum(acc * tl.where(m_lane > float("-inf"), tl.exp(m_lane - m), 0.0)[:, None], 0)
    else:
        m = float("-inf")
        bins = tl.zeros([16], tl.float32)
        for b0 in range(0, vocab, BLOCK):
            inside = b0 + offs < vocab
            x = tl.load(base + b0 + offs, mask=inside, other=float("-inf"))
            s = x.to(tl.float32) / temperature
            m_new = tl.maximum(m, tl.max(s, 0))
            e = tl.where(inside & (s > float("-inf")), tl.exp(s - m_new), 0.0)
            d = (_sort_key(x, KEY_BITS) >> (KEY_BITS - 4)) + 8
            hist = tl.sum(tl.where(d[:, None] == digits[None, :], e[:, None], 0.0), 0)
            bins = bins * tl.where(m_new > float("-inf"), tl.exp(m - m_new), 1.0) + hist
            m = m_new
    tau = (1.0 - top_p) * tl.sum(bins, 0)
    # mass below the prefix's range, above it, and the prefix (the key's bits found so far)
    below = 0.0
    above = 0.0
    prefix = 0
    n_tied = 1
    tied_mass = 0.0
    counts = tl.zeros([16], tl.int32)
    for level in tl.static_range(LEVELS):
        # the digit of this level is bits [KEY_BITS - 4 (level + 1), KEY_BITS - 4 level) of the key
        if level > 0:
            bins = tl.zeros([16], tl.float32)
            counts = tl.zeros([16], tl.int32)
            if ACC:
                acc = tl.zeros([BLOCK, 16], tl.float32)
                acc_n = tl.zeros([BLOCK, 16], tl.int32)
            for b0 in range(0, vocab, BLOCK):
                inside = b0 + offs < vocab
                x = tl.load(base + b0 + offs, mask=inside, other=float("-inf"))
                s = x.to(tl.float32) / temperature
                k = _sort_key(x, KEY_BITS)
                match = inside & ((k >> (KEY_BITS - 4 * level)) == prefix)
                e = tl.where(match & (s > float("-inf")), tl.exp(s - m), 0.0)
                onehot = ((k >> (KEY_BITS - 4 * (level + 1))) & 15)[:, None] == digits[None, :]
                if ACC:
                    acc += tl.where(onehot, e[:, None], 0.0)
                    if level == LEVELS - 1:
                        acc_n += tl.where(onehot & match[:, None], 1, 0)
                else:
                    bins += tl.sum(tl.where(onehot, e[:, None], 0.0), 0)
                    if level == LEVELS - 1:
                        counts += tl.sum(tl.where(onehot & match[:, None], 1, 0), 0)
            if ACC:
                bins = tl.sum(acc, 0)
                counts = tl.sum(acc_n, 0)
        cum = below + tl.cumsum(bins, 0)
        first = tl.min(tl.where(cum > tau, digits, 16), 0)
        # rounding can leave no bin past tau in a narrowed range: take its last non-empty bin
        last = tl.max(tl.where(bins > 0, digits, 0), 0)
        d = tl.where(first < 16, first, last)
        chosen = digits == d
        below += tl.sum(tl.where(digits < d, bins, 0.0), 0)
        above += tl.sum(tl.where(digits > d, bins, 0.0), 0)
        if level == 0:
            prefix = d - 8
        else:
            prefix = prefix * 16 + d
        if level == LEVELS - 1:
            tied_mass = tl.sum(tl.where(chosen, bins, 0.0), 0)
            n_tied = tl.sum(tl.where(chosen, counts, 0), 0)
    # Tokens tied at the threshold: a stable ascending sort would drop the lowest-index ones
    # first, while the mass below stays <= tau; keep at least one.
    q = tied_mass / tl.maximum(n_tied, 1).to(tl.float32)
    n_drop = tl.where(q > 0, tl.floor((tau - below) / q), 0.0)
    # n_tied starts as 1 for mypy, a Triton tensor after the static loop's last level
    n_drop = tl.minimum(tl.maximum(n_drop, 0.0), (n_tied - 1).to(tl.float32)).to(tl.int32)  # type: ignore[attr-defined]
    if WRITE_THRESHOLD:
        tl.store(THRESH + row, prefix)
        tl.store(NDROP + row, n_drop)
    kept_mass = above + (n_tied - n_drop).to(tl.float32) * q
    target = tl.load(U + row) * kept_mass
    # last pass: the first index (vocabulary order) whose CDF over the kept tokens exceeds the
    # target; it stops at the block that holds it
    running = 0.0
    ties_seen = 0
    found = vocab
    last_kept = -1
    b0 = 0
    doffs = tl.arange(0, DRAW_BLOCK)
    while (b0 < vocab) & (found == vocab):
        inside = b0 + doffs < vocab
        x = tl.load(base + b0 + doffs, mask=inside, other=float("-inf"))
        s = x.to(tl.float32) / temperature
        k = _sort_key(x, KEY_BITS)
        tied = inside & (k == prefix)
        rank = ties_seen + tl.cumsum(tied.to(tl.int32), 0) - 1
        kept = inside & ((k > prefix) | (tied & (rank >= n_drop)))
        e = tl.where(kept, tl.exp(s - m), 0.0)
        cdf = running + tl.cumsum(e, 0)
        found = tl.minimum(found, tl.min(tl.where(kept & (cdf > target), b0 + doffs, vocab), 0))
        last_kept = tl.maximum(last_kept, tl.max(tl.where(kept, b0 + doffs, -1), 0))
        running += tl.sum(e, 0)
        ties_seen += tl.sum(tied.to(tl.int32), 0)
        b0 += DRAW_BLOCK
    # a target past the rounded total of the kept mass takes the last kept token
    tl.store(OUT + row, tl.where(found < vocab, found, tl.maximum(last_kept, 0)).to(tl.int64))


_KEY_BITS = {"torch.bfloat16": 16, "torch.float16": 16, "torch.float32": 32}


# ---- top-p < 1 by rejection: draw from the whole softmax, keep the draw if it is in the nucleus --
#
# A token drawn from softmax(logits / temperature) and kept only if it lies in the nucleus is a
# draw from the nucleus' renormalised distribution: no threshold search. Membership is one pass:
# token c is in the sort path's nucleus iff the mass of the tokens at or below it in a stable
# ascending sort (smaller keys, and equal keys at indices <= c) exceeds 1 - top_p. A rejected
# round draws again with a fresh uniform from a counter-based generator keyed by the row's own
# uniform (so a row's tokens still do not depend on its batch); after ROUNDS rejections the row
# is left to the radix kernel with one more fresh uniform. Each round accepts with probability
# at least top_p.


@triton.jit
def _top_p_reject_kernel(
    LOGITS,
    U,
    OUT,
    U_LEFT,
    stride_row,
    vocab,
    temperature,
    top_p,
    KEY_BITS: tl.constexpr,
    BLOCK: tl.constexpr,
    ROUNDS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride_row
    offs = tl.arange(0, BLOCK)
    # pass 1: the maximum and the sum of exp(s - max), as _sample_kernel
    m_row, z_row = _max_and_normaliser(base, vocab, temperature, BLOCK)
    tau = (1.0 - top_p) * z_row
    u0 = tl.load(U + row)
    seed = u0.to(tl.int32, bitcast=True)
    u = u0
    found = -1
    r = 0
    while (found < 0) & (r < ROUNDS):
        # the first index (vocabulary order) whose CDF of exp(s - max) exceeds u * z: it stops at
        # the block that holds it; a target past the rounded total takes the last token
        target = u * z_row
        running = 0.0
        cand = vocab
        b0 = 0
        while (b0 < vocab) & (cand == vocab):
            inside = b0 + offs < vocab
            s = tl.load(base + b0 + offs, mask=inside, other=float("-inf")).to(tl.float32) / temperature
            cdf = running + tl.cumsum(tl.where(inside, tl.exp(s - m_row), 0.0), 0)
            cand = tl.minimum(cand, tl.min(tl.where(inside & (cdf > target), b0 + offs, vocab), 0))
            running = tl.max(tl.where(inside, cdf, 0.0), 0)
            b0 += BLOCK
        cand = tl.minimum(cand, vocab - 1)
        key_c = _sort_key(tl.load(base + cand), KEY_BITS)
        # the mass at or below the candidate in a stable ascending sort
        at_or_below = tl.zeros([BLOCK], tl.float32)
        for b1 in range(0, vocab, BLOCK):
            idx = b1 + offs
            x = tl.load(base + idx, mask=idx < vocab, other=float("-inf"))
            k = _sort_key(x, KEY_BITS)
            low = (idx < vocab) & ((k < key_c) | ((k == key_c) & (idx <= cand)))
            at_or_below += tl.where(low, tl.exp(x.to(tl.float32) / temperature - m_row), 0.0)
        found = tl.where(tl.sum(at_or_below, 0) > tau, cand, -1)
        r += 1
        u = tl.rand(seed, r)
    # found starts as -1 for mypy, a Triton tensor after the loop's first round (ROUNDS >= 1)
    tl.store(OUT + row, found.to(tl.int64))  # type: ignore[attr-defined]
    # after ROUNDS rejections u is a uniform no round has used
    tl.store(U_LEFT + row, u)


def sample_top_p_reject(logits, temperature: float, top_p: float, u, rounds: int = 8, block: int = 4096):
    """One token per row from softmax(logits / temperature) restricted to the top_p nucleus, by
    rejection: a draw from the whole softmax (inverse CDF in vocabulary order, `u` the first
    round's uniform), kept if it is in the sort path's nucleus, else drawn again (fresh uniforms
    from a counter-based generator keyed by `u`), up to `rounds` times; rows still rejected then
    take `sample_top_p`'s draw with one more fresh uniform (a host synchronisation a call).

    The distribution is the nucleus' renormalised softmax, as `sample_top_p`'s and the sort
    path's; the token drawn from a given `u` is not theirs. Each round accepts with probability
    at least top_p, so at the generate stage's top_p 0.95 a row takes one round 95% of the time
    and falls back about once in 2.6e10 rows. The nucleus' boundary is judged with float32 sums
    in another order than the sort path's cumulative sum (as `sample_top_p`'s is).
    """
    import torch

    if rounds < 1:
        raise ValueError(f"sample_top_p_reject: rounds must be at least 1, got {rounds}")
    rows, vocab = logits.shape
    out = torch.empty(rows, dtype=torch.long, device=logits.device)
    u_left = torch.empty(rows, dtype=torch.float32, device=logits.device)
    _top_p_reject_kernel[(rows,)](
        logits,
        u.to(torch.float32).contiguous(),
        out,
        u_left,
        logits.stride(0),
        vocab,
        float(temperature),
        float(top_p),
        KEY_BITS=_KEY_BITS[str(logits.dtype)],
        BLOCK=min(block, triton.next_power_of_2(vocab)),
        ROUNDS=rounds,
        num_warps=8,
    )
    left = (out < 0).nonzero().squeeze(-1)
    if left.numel():
        out[left] = sample_top_p(logits.index_select(0, left), temperature, top_p, u_left.index_select(0, left))
    return out


def top_p_supported(logits) -> bool:
    """Whether `sample_top_p` takes these logits (a 16-bit or float32 matrix on a GPU, rows contiguous)."""
    return logits.is_cuda and str(logits.dtype) in _KEY_BITS and logits.dim() == 2 and logits.stride(-1) == 1


def sample_top_p(
    logits,
    temperature: float,
    top_p: float,
    u,
    block: int = 2048,
    num_warps: int = 8,
    thresholds: bool = False,
    accumulate: bool = False,
    draw_block: int | None = None,
):
    """One token per row by inverse CDF over softmax(logits / temperature) restricted to the
    top_p nucleus, without sorting the row.

    The nucleus is the sort path's (`_draws.sample_tokens`): the tokens left once the least
    likely ones are dropped while their cumulative probability stays <= 1 - top_p; its threshold
    is found by a radix search over the logits' bit patterns (four bits a pass: 4 passes for
    16-bit logits, 8 for float32) and one more pass draws, so 5 passes over a bf16 row. Tokens
    tied at the threshold value are dropped lowest index first, as a stable ascending sort
    orders them (torch.sort is not stable on the CPU: there the sort path drops the same number
    of tied tokens, not necessarily the same ones). The masses are float32 sums in another order
    than the sort path's cumulative sum, so a row whose boundary sits within that rounding of
    1 - top_p can keep one token more or less.

    The draw runs in vocabulary order over the kept tokens, where the sort path runs in
    ascending probability order: the same distribution from the same uniform `u`, not the same
    token. `thresholds=True` also returns each row's threshold key and the number of tied tokens
    dropped (for `_draws.nucleus_mask`).

    `block` elements are read at a time (`draw_block` in the last pass; default `block`). By
    default each block's 16-bin histogram is reduced across the program as it is read (measured
    on the H200 at 2,200 x 152,064 bf16: 25.8 ms at block 2048 and 8 warps, the sort 32.6 ms:
    benches/RESULTS.md); `accumulate=True` keeps a maximum and 16 bins per lane instead and
    reduces them once a pass (meant for a small block, e.g. 256 with 4 warps; not measured yet).
    """
    import torch

    rows, vocab = logits.shape
    out = torch.empty(rows, dtype=torch.long, device=logits.device)
    thresh = torch.empty(rows, dtype=torch.int32, device=logits.device)
    n_drop = torch.empty(rows, dtype=torch.int32, device=logits.device)
    _top_p_kernel[(rows,)](
        logits,
        u.contiguous(),
        out,
        thresh,
        n_drop,
        logits.stride(0),
        vocab,
        float(temperature),
        float(top_p),
        KEY_BITS=_KEY_BITS[str(logits.dtype)],
        BLOCK=block,
        DRAW_BLOCK=draw_block or block,
        ACC=accumulate,
        WRITE_THRESHOLD=thresholds,
        num_warps=num_warps,
    )
    return (out, thresh, n_drop) if thresholds else out
