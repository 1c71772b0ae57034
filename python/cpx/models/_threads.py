"""One CPU thread for small models: their ops are too small to split across threads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

# Below this many parameters a CPU op is too small to split across threads: on the shared
# 2-core machine two threads made the tiny model's training 17x slower than one
# (360 vs 6,100 tokens/s).
_SMALL_MODEL = 50_000_000


@contextmanager
def small_model_threads(model, device: str) -> Iterator[None]:
    """Run the block with one torch thread when `model` is small and on the CPU (every stage
    that runs a model: generate, train, sample, represent). On the shared 2-core machine two
    threads made the tiny model's sampling 5-10x slower than one as well."""
    import torch

    n_params = sum(p.numel() for p in model.parameters())
    before = torch.get_num_threads()
    if device != "cpu" or n_params >= _SMALL_MODEL or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
