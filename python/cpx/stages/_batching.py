"""How many rows the sampling engine decodes together: from free device memory on CUDA.

torch is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import math

from cpx.stages._kv import unwrapped

_CPU_BATCH = 256


def _row_bytes(model, capacity: int) -> int:
    """Device memory one row of a batch needs: its KV cache plus logits and activations."""
    cfg = unwrapped(model).config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    elem = next(model.parameters()).element_size()
    kv = 2 * cfg.num_hidden_layers * kv_heads * head_dim * capacity * elem
    # logits in the model dtype, then float32 softmax, cumsum and their temporaries
    logits = cfg.vocab_size * (elem + 4 * 4)
    acts = (cfg.hidden_size * 8 + cfg.intermediate_size * 4) * elem
    return kv + logits + acts


def auto_batch_size(model, device: str, capacity: int, n_rows: int) -> int:
    """Rows per batch: from free device memory on CUDA, a fixed size on the CPU.

    The rows are then spread evenly over the batches that size implies, so the last batch is
    not a small remainder.
    """
    if not str(device).startswith("cuda"):
        cap = _CPU_BATCH
    else:
        import torch

        dev = torch.device(device)
        free, _ = torch.cuda.mem_get_info(dev)
        # Blocks PyTorch's allocator holds but no tensor uses (a previous stage's cache) are free
        # to this process: counting them keeps a stale cache from halving the batch.
        free += torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        budget = int(free * 0.85) - (1 << 30)
        cap = max(1, budget // _row_bytes(model, capacity))
    n_batches = max(1, math.ceil(n_rows / cap))
    return max(1, math.ceil(n_rows / n_batches))
