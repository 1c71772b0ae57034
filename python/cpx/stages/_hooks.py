"""Forward hooks on a model's hidden states: which module outputs hidden state L (transformers'
`output_hidden_states` numbering: 0 the embeddings, i a decoder layer, N the final norm), and
the steering hook that adds a vector there.

torch is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cpx.errors import CpxError


class HiddenStateError(CpxError, ValueError):
    """Layers or prompts that cannot be read, with what is wrong."""


def _base(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _decoder(model):
    return _base(model).get_decoder()


def layer_modules(model, layers: Sequence[int]) -> dict[int, Any]:
    """The module whose output is hidden state `layer`, for each requested layer."""
    dec = _decoder(model)
    blocks = dec.layers
    n = len(blocks)
    out: dict[int, Any] = {}
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= n:
            raise HiddenStateError(f"layer {layer!r} is out of range: the model has layers 0..{n}")
        out[layer] = dec.embed_tokens if layer == 0 else dec.norm if layer == n else blocks[layer - 1]
    return out


@dataclass(frozen=True)
class Steering:
    """What an engine applies: `vector` (α · direction, `[hidden]`) added at hidden-state `layer`
    to each prompt's rows, times that prompt's `coefficients[i]` (0: not steered)."""

    layer: int
    vector: Any  # numpy float64 [hidden]
    coefficients: tuple[float, ...]


def embeddings(model):
    """The model's input embedding module (of the base model under a peft wrapper)."""
    return _base(model).get_input_embeddings()


class _AddHook:
    """A forward hook adding `coefficient[row] * vector` to a module's output (or its first
    element, for decoder layers that return tuples)."""

    def __init__(self, vector):
        self.vector = vector
        self.coefficients: Any = None

    def __call__(self, module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        v = self.vector.to(device=h.device, dtype=h.dtype)
        if self.coefficients is None:
            raise RuntimeError("steering hook: no coefficients were set for this batch")
        c = self.coefficients.to(device=h.device, dtype=h.dtype)
        if c.shape != (h.shape[0],):
            raise RuntimeError(f"steering hook: {tuple(c.shape)} coefficients for a batch of {h.shape[0]} rows")
        h = h + c.view(-1, *([1] * (h.dim() - 1))) * v
        return (h, *output[1:]) if isinstance(output, tuple) else h


class SteeringHook:
    """The handle `steered` yields: set the coefficients of the rows of the next forward calls."""

    def __init__(self, hook: _AddHook, coefficients: Sequence[float]):
        self._hook = hook
        self.coefficients = tuple(coefficients)

    def rows(self, prompts: Sequence[int]) -> None:
        """The next forwards' batch rows are of these prompts (indices into the coefficients)."""
        import torch

        c = torch.tensor([self.coefficients[i] for i in prompts], dtype=torch.float64)
        self._hook.coefficients = c.to(device=self._hook.vector.device, dtype=self._hook.vector.dtype)

    def keep(self, index) -> None:
        """Keep the coefficients of the rows in `index` (a tensor), as when a batch is compacted."""
        self._hook.coefficients = self._hook.coefficients.index_select(0, index.to(self._hook.coefficients.device))


@contextmanager
def steered(model, steering: Steering | None) -> Iterator[SteeringHook | None]:
    """Register the steering hook on the module of `steering.layer` (first among its forward
    hooks, so hooks that read the layer see the steered output); removed on exit. Yields None
    when `steering` is None."""
    if steering is None:
        yield None
        return
    import torch

    emb = embeddings(model).weight
    vector = torch.as_tensor(steering.vector, dtype=torch.float64).to(device=emb.device, dtype=emb.dtype)
    if vector.dim() != 1 or vector.shape[0] != emb.shape[-1]:
        raise ValueError(f"steering vector of shape {tuple(vector.shape)} for a hidden size of {emb.shape[-1]}")
    if not torch.isfinite(vector).all():
        raise ValueError(f"the steering vector is not finite in the model's dtype {emb.dtype}")
    hook = _AddHook(vector)
    handle = layer_modules(model, [steering.layer])[steering.layer].register_forward_hook(hook, prepend=True)
    try:
        yield SteeringHook(hook, steering.coefficients)
    finally:
        handle.remove()
