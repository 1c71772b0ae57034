"""The sampler's random stream and its token draws.

A counter-based stream keyed by (seed, request, sample, step): each completion's uniforms are
a pure function of those, so a completion does not depend on the batch it lands in. Tokens are
drawn by inverse CDF from the temperature-scaled softmax restricted to the top_p nucleus; on
the fused (CUDA) path by the Triton kernels of `_draws_triton`.

torch is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Any

# Switches for benches/gpu_eval.py: False makes the fused path sort for top_p < 1 as the CPU does;
# the fused top-p draw, "radix" (`sample_top_p`) or "reject" (`sample_top_p_reject`); launch
# options of the radix kernel other than `sample_top_p`'s defaults.
FUSE_TOP_P = True
TOP_P_DRAW = "radix"
TOP_P_OPTIONS: dict[str, Any] = {}


def row_keys(seed: int, rows: Sequence[tuple[int, int]]) -> list[int]:
    """A 32-bit key per (request index, sample index): the start of that completion's random stream."""
    out = []
    for r, s in rows:
        h = hashlib.blake2b(struct.pack("<qqq", seed, r, s), digest_size=4).digest()
        out.append(int.from_bytes(h, "little"))
    return out


def _mul32(x, c: int):
    """(x * c) mod 2**32 for int64 tensors holding values < 2**32, without int64 overflow."""
    lo = (x & 0xFFFF) * c
    hi = ((x >> 16) * c) & 0xFFFF
    return (lo + (hi << 16)) & 0xFFFFFFFF


def _fmix32(x):
    """MurmurHash3's 32-bit finaliser on int64 tensors (values < 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def uniforms(keys, step: int):
    """One uniform in [0, 1) per row for decode step `step`, a pure function of (key, step)."""
    import torch

    mixed = _fmix32(keys ^ _fmix32(torch.full_like(keys, (step * 0x9E3779B9 + 0x7F4A7C15) & 0xFFFFFFFF)))
    return (mixed >> 8).to(torch.float32) * (1.0 / (1 << 24))


def sample_tokens(logits, temperature: float, top_p: float, u, fused: bool = False):
    """Draw one token per row from softmax(logits / temperature) restricted to the top_p nucleus.

    Inverse-CDF sampling with the given uniforms `u` (one per row); temperature 0 is greedy.
    The nucleus is the one transformers' TopPLogitsWarper keeps: the smallest set of most
    likely tokens whose probability reaches top_p (at least one token). `fused` (CUDA) draws
    with Triton kernels that read the logits a few times instead of materialising float32
    softmax and CDF copies of the batch (and, for top_p < 1, instead of sorting every row):
    - top_p 1 (`sample_full`): the same draw up to the rounding of the CDF (a uniform within
      that rounding of a boundary picks the neighbour);
    - top_p < 1 (`sample_top_p`, 16-bit or float32 logits): the same nucleus, found by a
      radix search for its threshold (up to the rounding of its mass: a row whose boundary
      sits within it of 1 - top_p keeps one token more or less; ties at the threshold keep the
      highest indices, as a stable sort would), and a draw in vocabulary order where this path
      draws in ascending probability order: the same distribution from the same `u`, mostly
      not the same token.
    Either way a row's token depends only on its logits and its `u`, not on its batch.
    """
    import torch

    if temperature == 0:
        return logits.argmax(dim=-1)
    if fused and top_p >= 1.0:
        from cpx.stages._draws_triton import sample_full

        return sample_full(logits, temperature, u)
    if fused and FUSE_TOP_P:
        from cpx.stages._draws_triton import sample_top_p, sample_top_p_reject, top_p_supported

        if top_p_supported(logits):
            if TOP_P_DRAW == "reject":
                return sample_top_p_reject(logits, temperature, top_p, u)
            return sample_top_p(logits, temperature, top_p, u, **TOP_P_OPTIONS)
    # In place on tensors made here: at batch 1,000 and a 152k vocabulary each copy is 600 MB.
    work = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    scaled = work / temperature if temperature != 1.0 else work
    if top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=False)
        del scaled
        _drop_outside_nucleus_(sorted_logits, top_p)
        cdf = sorted_logits.softmax(dim=-1).cumsum_(dim=-1)
    else:
        order = None
        cdf = scaled.softmax(dim=-1).cumsum_(dim=-1)
    target = (u * cdf[:, -1]).unsqueeze(-1).contiguous()
    idx = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1).squeeze(-1)
    if order is not None:
        idx = order.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    return idx


def _drop_outside_nucleus_(sorted_logits, top_p: float):
    """Set to -inf, in place, the ascending-sorted logits outside the top_p nucleus: those whose
    cumulative probability from the least likely up stays <= 1 - top_p (the last one stays).
    Returns the mask of those dropped."""
    drop = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1.0 - top_p)
    drop[:, -1] = False
    sorted_logits.masked_fill_(drop, float("-inf"))
    return drop


def sort_nucleus(logits, temperature: float, top_p: float, stable: bool = False):
    """The top_p nucleus `sample_tokens` keeps on its sorting path, (rows, vocab) bool in
    vocabulary order (for checking the fused path). `stable` sorts ties by index."""
    import torch

    work = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    scaled = work / temperature if temperature != 1.0 else work
    sorted_logits, order = torch.sort(scaled, dim=-1, descending=False, stable=stable)
    keep = ~_drop_outside_nucleus_(sorted_logits, top_p)
    return torch.zeros_like(keep).scatter_(-1, order, keep)


def sort_keys(logits):
    """Signed integers (int64) in the order of the float logits, as the fused top-p kernel keys
    them: the bit pattern with the magnitude bits of negative values flipped; -0.0 is +0.0."""
    import torch

    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[logits.element_size()]
    b = logits.contiguous().view(bits).to(torch.int64)
    width = 8 * logits.element_size()
    k = b ^ ((b >> (width - 1)) & ((1 << (width - 1)) - 1))
    return torch.where(k == -1, 0, k)


def nucleus_mask(logits, thresh, n_drop):
    """The kept tokens, (rows, vocab) bool, of the threshold keys and tie drop counts that
    `_draws_triton.sample_top_p(..., thresholds=True)` returns."""
    import torch

    k = sort_keys(logits)
    t = thresh.to(k.dtype)[:, None]
    tied = k == t
    rank = tied.to(torch.int32).cumsum(-1) - 1
    return (k > t) | (tied & (rank >= n_drop[:, None]))


def search_nucleus(logits, temperature: float, top_p: float):
    """The fused top-p kernel's algorithm in PyTorch, for the CPU and for checking: the top_p
    nucleus (rows, vocab) bool found without sorting.

    The threshold key is searched four bits at a time from the top (`sort_keys`): at each level
    the mass of exp(s - max) of the tokens sharing the prefix found so far is summed by their
    next four bits, and the first bin whose mass below (plus the mass below the prefix) exceeds
    (1 - top_p) times the total is taken (the last non-empty bin where rounding leaves none).
    Tokens above the threshold are kept; of those tied at it, the lowest indices are dropped
    while the mass below stays <= (1 - top_p) times the total, keeping at least one. Masses are
    in the sort path's precision (float64 for float64 logits, else float32).
    """
    import torch

    work = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    s = work / temperature if temperature != 1.0 else work
    rows = s.shape[0]
    e = (s - s.max(dim=-1, keepdim=True).values).exp()
    tau = (1.0 - top_p) * e.sum(dim=-1)
    k = sort_keys(logits)
    width = 8 * logits.element_size()
    below = torch.zeros(rows, dtype=e.dtype, device=e.device)
    prefix = torch.zeros(rows, dtype=torch.int64, device=e.device)
    match = torch.ones_like(k, dtype=torch.bool)
    digits = torch.arange(16, device=e.device)
    for level in range(width // 4):
        shift = width - 4 * (level + 1)
        d_all = (k >> shift) + 8 if level == 0 else (k >> shift) & 15
        bins = torch.zeros(rows, 16, dtype=e.dtype, device=e.device).scatter_add_(1, d_all, torch.where(match, e, 0.0))
        cum = below[:, None] + bins.cumsum(-1)
        first = torch.where(cum > tau[:, None], digits, 16).min(-1).values
        last = torch.where(bins > 0, digits, 0).max(-1).values
        d = torch.where(first < 16, first, last)
        below = below + torch.where(digits < d[:, None], bins, 0.0).sum(-1)
        prefix = d - 8 if level == 0 else prefix * 16 + d
        match &= d_all == d[:, None]
        tied_mass = bins.gather(1, d[:, None]).squeeze(1)
    n_tied = match.sum(-1)
    q = tied_mass / n_tied.clamp(min=1)
    n_drop = torch.where(q > 0, ((tau - below) / q).floor(), 0.0)
    n_drop = torch.minimum(n_drop.clamp(min=0), (n_tied - 1).to(n_drop.dtype)).long()
    rank = match.long().cumsum(-1) - 1
    return (k > prefix[:, None]) | (match & (rank >= n_drop[:, None]))
