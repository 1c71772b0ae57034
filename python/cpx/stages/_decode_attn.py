"""Decode attention over the in-place KV cache: the fused CUDA path and its pure-PyTorch twin.

A decode step's attention needs, per row, the first valid cache position (prompts are
left-padded) and the filled length; `DecodeSpan` carries them as device tensors and stands in
for the attention mask, so the step's kernels do not change from one step to the next (a
captured CUDA graph replays them). On CUDA with Triton, `attend` runs the FlashDecoding-style
kernel of `_decode_triton`; `reference` computes the same with PyTorch's
scaled_dot_product_attention, for the CPU and for checking.

torch and triton are imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

# Programs per multiprocessor the split aims for; a chunk is at least this many positions.
_PROGRAMS_PER_SM = 4
_MIN_CHUNK = 128


@dataclass
class DecodeSpan:
    """The cache positions a decode step attends to: [start[b], length) for row b.

    `start` is (rows,) int32, `length` (1,) int32, both on the device and updated in place;
    `splits` is how many chunks the fused kernel cuts a row's positions into.
    """

    start: Any
    length: Any
    splits: int

    def keep(self, index) -> None:
        """Keep only the rows in `index` (a compacted batch)."""
        self.start = self.start.index_select(0, index)


@functools.cache
def fused_available(device: str) -> bool:
    """Whether the fused path runs on `device`: CUDA, with Triton importable."""
    if not str(device).startswith("cuda"):
        return False
    import torch

    try:
        import triton  # noqa: F401 - only probes whether the kernels can be built
    except ImportError:
        return False
    return torch.cuda.is_available()


def splits_for(rows: int, kv_heads: int, capacity: int, device) -> int:
    """Chunks per row: enough programs to fill the GPU, each chunk at least _MIN_CHUNK positions."""
    import torch

    n_sm = torch.cuda.get_device_properties(device).multi_processor_count
    want = -(-_PROGRAMS_PER_SM * n_sm // max(1, rows * kv_heads))
    return max(1, min(want, capacity // _MIN_CHUNK))


def attend(query, key, value, span: DecodeSpan, scale: float):
    """Fused decode attention: query (B, H, 1, D), key and value the whole cache buffers
    (B, KVH, capacity, D); returns (B, 1, H, D)."""
    from cpx.stages._decode_triton import decode_attention

    b, h, _, d = query.shape
    out = decode_attention(query[:, :, 0], key, value, span.start, span.length, scale, span.splits)
    return out.reshape(b, 1, h, d)


def reference(query, key, value, span: DecodeSpan, scale: float):
    """What `attend` computes, with PyTorch's attention over the filled part (grouped-query
    heads packed into the query axis, as the eager path does)."""
    import torch
    import torch.nn.functional as F

    b, h, _, d = query.shape
    kvh = key.shape[1]
    n = int(span.length[0])
    pos = torch.arange(n, device=key.device)
    mask = (pos[None, :] >= span.start[:, None].long())[:, None, None, :]
    packed = query.reshape(b, kvh, h // kvh, d)
    out = F.scaled_dot_product_attention(packed, key[:, :, :n], value[:, :, :n], attn_mask=mask, scale=scale)
    return out.reshape(b, 1, h, d)
