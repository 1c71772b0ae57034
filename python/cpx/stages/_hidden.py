"""Hidden states at the last prompt token, captured with forward hooks in one batched pass.

Layer numbering is transformers' `output_hidden_states` convention: layer 0 is the embedding
output, layer i (1 <= i < N) the output of decoder layer i, layer N the final norm's output.
Prompts are left-padded, so the last prompt token of every row sits in the last column.
With steering (`_hooks.steered`), the steered prompts' rows get α · direction added at the steered
layer before any layer is read, in the same batches as the unsteered ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cpx.stages._hooks import HiddenStateError, layer_modules

if TYPE_CHECKING:
    from cpx.stages._hooks import Steering

_CPU_BATCH = 32


def last_prompt_hidden_states(
    model,
    tokenizer,
    prompts: Sequence[str],
    layers: Sequence[int],
    *,
    device: str = "cpu",
    batch_size: int | None = None,
    steering: Steering | None = None,
):
    """`float32 array [len(prompts), len(layers), hidden]`: each rendered prompt's hidden state at
    its last token, at each layer (in the order given).

    `steering` (coefficients one per prompt) adds its vector at its layer to the steered rows.
    """
    import numpy as np
    import torch

    from cpx.stages._hooks import steered

    if not prompts:
        raise HiddenStateError("no prompts to read hidden states from")
    targets = layer_modules(model, layers)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    for i, x in enumerate(ids):
        if not x:
            raise HiddenStateError(f"prompt {i} has no tokens")
    if steering is not None and len(steering.coefficients) != len(prompts):
        raise HiddenStateError(f"{len(steering.coefficients)} steering coefficients for {len(prompts)} prompts")
    if batch_size is None:
        batch_size = len(prompts) if str(device).startswith("cuda") else _CPU_BATCH
    # Similar lengths together: less padding. The result is put back in the caller's order.
    order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    result = np.zeros((len(prompts), len(layers), 0), dtype=np.float32)
    captured: dict[int, Any] = {}

    def hook_for(layer: int):
        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            captured[layer] = h[:, -1].float()

        return hook

    handles = [targets[layer].register_forward_hook(hook_for(layer)) for layer in dict.fromkeys(layers)]
    try:
        with torch.inference_mode(), steered(model, steering) as steer_hook:
            for b in range(math.ceil(len(order) / batch_size)):
                idx = order[b * batch_size : (b + 1) * batch_size]
                width = max(len(ids[i]) for i in idx)
                x = torch.full((len(idx), width), pad, dtype=torch.long)
                m = torch.zeros((len(idx), width), dtype=torch.long)
                for j, i in enumerate(idx):
                    x[j, width - len(ids[i]) :] = torch.tensor(ids[i])
                    m[j, width - len(ids[i]) :] = 1
                captured.clear()
                if steer_hook is not None:
                    steer_hook.rows(idx)
                model(input_ids=x.to(device), attention_mask=m.to(device), use_cache=False, logits_to_keep=1)
                block = torch.stack([captured[layer] for layer in layers], dim=1).cpu().numpy()
                if result.shape[2] == 0:
                    result = np.zeros((len(prompts), len(layers), block.shape[2]), dtype=np.float32)
                result[idx] = block
    finally:
        for h in handles:
            h.remove()
    return result


def centroid_cosines(centroids, centering: str):
    """Cosine matrices per layer from persona centroids `[personas, layers, hidden]`.

    `centering`: "global_mean" subtracts the mean of the personas' centroids (per layer) before
    normalising, "none" uses the centroids as they are. Returns `[layers, personas, personas]`
    (float64); a zero vector (one persona, centred) has no direction, so its cosines are NaN.
    """
    import numpy as np

    c = np.asarray(centroids, dtype=np.float64)
    if centering == "global_mean":
        c = c - c.mean(axis=0, keepdims=True)
    elif centering != "none":
        raise HiddenStateError(f"centering must be 'global_mean' or 'none', got {centering!r}")
    norms = np.linalg.norm(c, axis=2, keepdims=True)
    unit = np.divide(c, norms, out=np.full_like(c, np.nan), where=norms > 0)
    return np.einsum("pld,qld->lpq", unit, unit)
