"""One decode step's forward on the fused CUDA path, replayed from a CUDA graph.

The step's attention is the fused decode kernel (`_decode_attn`), its RMSNorm and gated-MLP
activation single-pass kernels (`_decode_layers`; with `FUSE_ROPE`, the rotary embedding and
the cache write too).

The step reads everything that changes from one step to the next from device tensors (the
token and position of each row, the cache position written, the filled length: `DecodeSpan`),
so a graph captured once for a batch shape replays every later step of that batch, at any
cache length: the CPU no longer issues the forward's few hundred launches one by one. A
compacted batch is a new shape: its graph is captured at its next step (the old one is
dropped first, so one graph's memory is held at a time).

torch is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from cpx.stages._decode_attn import DecodeSpan, splits_for
from cpx.stages._decode_layers import fused_layers
from cpx.stages._kv import PreallocatedKV, mask_map

# Switches for benches/gpu_eval.py's variants: steps without graphs; without the fused elementwise
# kernels (RMSNorm, gated activation, the top_p = 1 draw). FUSE_ROPE routes attention through the
# fused rotary embedding and cache write (`_decode_layers`); it stays off until it has run on a
# GPU (its bit-for-bit check against transformers' rotary ran in Triton's interpreter in float16
# only: tests/stages/test_decode_layers.py; the GPU checks are in test_sampling_gpu.py).
USE_GRAPHS = True
FUSE_ELEMENTWISE = True
FUSE_ROPE = False


class FusedStep:
    """Callable as `step(tokens, positions, written)` -> the step's last-position logits (rows, vocab).

    `tokens` and `positions` are (rows,) long tensors; `written` is the cache position the
    step's keys and values go to (the filled length before the step).
    """

    def __init__(self, model, cache: PreallocatedKV, cache_kw: str, start, log):
        import torch

        dev = start.device
        self.model, self.cache, self.cache_kw, self.log = model, cache, cache_kw, log
        cache.position = torch.zeros(1, dtype=torch.long, device=dev)
        kv_heads = next(k for k in cache.keys if k is not None).shape[1]
        self.span = DecodeSpan(
            start.to(torch.int32),
            torch.zeros(1, dtype=torch.int32, device=dev),
            splits_for(int(start.shape[0]), kv_heads, cache.capacity, dev),
        )
        self.graphs = USE_GRAPHS
        self._graph: Any = None
        self._tokens: Any = None
        self._positions: Any = None
        self._logits: Any = None

    def keep(self, index) -> None:
        """Keep only the rows in `index` (the cache is compacted by its owner); the graph goes."""
        self.span.keep(index)
        self._graph = self._tokens = self._positions = self._logits = None

    def _forward(self, tokens, positions):
        cache = self.cache if FUSE_ROPE else None
        with fused_layers(self.model, cache) if FUSE_ELEMENTWISE else nullcontext():
            out = self.model(
                input_ids=tokens,
                attention_mask=mask_map(self.span),
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **{self.cache_kw: self.cache},
            )
        return out.logits[:, -1]

    def __call__(self, tokens, positions, written: int):
        import torch

        self.cache.position.fill_(written)
        self.span.length.fill_(written + 1)
        if not self.graphs:
            return self._forward(tokens[:, None], positions[:, None])
        if self._graph is not None:
            self._tokens.copy_(tokens[:, None])
            self._positions.copy_(positions[:, None])
            self._graph.replay()
            return self._logits
        # This step runs eagerly on a side stream (it also warms up what capture needs), then the
        # same step is captured into a graph without running; later steps replay it.
        self._tokens = tokens[:, None].clone()
        self._positions = positions[:, None].clone()
        side = torch.cuda.Stream(tokens.device)
        side.wait_stream(torch.cuda.current_stream(tokens.device))
        with torch.cuda.stream(side):
            logits = self._forward(self._tokens, self._positions)
        torch.cuda.current_stream(tokens.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._logits = self._forward(self._tokens, self._positions)
        except RuntimeError as e:
            self.log.warning("CUDA graph capture failed (%s): decoding this batch without graphs", e)
            self.graphs = False
            self._logits = None
            return logits
        self._graph = graph
        return logits
