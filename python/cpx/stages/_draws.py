"""The sampler's random stream and its token draws.

A counter-based stream keyed by (seed, request, sample, step): each completion's uniforms are
a pure function of those, so a completion does not depend on the batch it lands in. Tokens are
drawn by inverse CDF from the temperature-scaled softmax restricted to the top_p nucleus.

torch is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence


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
    likely tokens whose probability reaches top_p (at least one token). `fused` (CUDA, top_p
    1) draws with a Triton kernel that reads the logits three times instead of materialising
    float32 softmax and CDF copies of the batch: the same draw up to the rounding of the CDF
    (a uniform within that rounding of a boundary picks the neighbour).
    """
    import torch

    if temperature == 0:
        return logits.argmax(dim=-1)
    if fused and top_p >= 1.0:
        from cpx.stages._decode_triton import sample_full

        return sample_full(logits, temperature, u)
    # In place on tensors made here: at batch 1,000 and a 152k vocabulary each copy is 600 MB.
    work = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    scaled = work / temperature if temperature != 1.0 else work
    if top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=False)
        del scaled
        drop = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1.0 - top_p)
        drop[:, -1] = False
        sorted_logits.masked_fill_(drop, float("-inf"))
        del drop
        cdf = sorted_logits.softmax(dim=-1).cumsum_(dim=-1)
    else:
        order = None
        cdf = scaled.softmax(dim=-1).cumsum_(dim=-1)
    target = (u * cdf[:, -1]).unsqueeze(-1).contiguous()
    idx = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1).squeeze(-1)
    if order is not None:
        idx = order.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    return idx
