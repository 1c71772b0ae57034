"""Activation steering: the `steer` param of the `sample` and `represent` stages, and the hook that applies it.

The direction at layer L is centroid(source, L) - centroid(assistant, L), read from a
`represent` stage's `centroids.parquet` (optionally scaled to unit length). α · direction is
added to the output of the module whose output is hidden state L (`_hidden._targets`), at
every position of the steered rows, in the model's dtype.

Steered and unsteered prompts share batches: the hook multiplies the vector by a coefficient
per row (1 for a steered row, 0 for the others), so an unsteered row gets exactly `h + 0 = h`
and its outputs are those of the unsteered model, bit for bit, in the same batches.

torch is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Steering:
    """What an engine applies: `vector` (α · direction, `[hidden]`) added at hidden-state `layer`
    to each prompt's rows, times that prompt's `coefficients[i]` (0: not steered)."""

    layer: int
    vector: Any  # numpy float64 [hidden]
    coefficients: tuple[float, ...]


@dataclass(frozen=True)
class Steer:
    """A stage's checked `steer` param with its direction read from the centroids.

    `direction` is the centroid difference (unit length when `normalize`); `norm` is the L2
    norm of the raw difference.
    """

    layer: int
    alpha: float
    normalize: bool
    personas: tuple[str, ...]
    represent: str
    source: str
    assistant: str
    direction: Any  # numpy float64 [hidden]
    norm: float

    def for_prompts(self, persona_of_prompt: Sequence[str]) -> Steering:
        """The engine's steering for prompts whose personas are `persona_of_prompt` (in order)."""
        steered = set(self.personas)
        return Steering(
            self.layer, self.alpha * self.direction, tuple(1.0 if p in steered else 0.0 for p in persona_of_prompt)
        )

    def info(self) -> dict[str, Any]:
        """What a stage reports about its steering."""
        return {
            "alpha": self.alpha,
            "layer": self.layer,
            "normalize": self.normalize,
            "direction_norm": self.norm,
            "personas": list(self.personas),
        }


def steer_of(stage_id: str, params: dict[str, Any], inputs: dict[str, Path]) -> Steer | None:
    """The stage's `params.steer` checked, with its direction; None when it is absent or null.

    `params.personas` must already be checked (a list of mappings with unique names).
    """
    import numpy as np

    from cpx.stages._rows import StageParamError

    s = params.get("steer")
    if s is None:
        return None
    where = f"stage {stage_id}: params.steer"

    def bad(key: str, what: str) -> StageParamError:
        return StageParamError(f"{where}.{key} {what}" if key else f"{where} {what}")

    if not isinstance(s, dict):
        raise bad("", f"must be a mapping or null, got {s!r}")
    keys = {"layer", "alpha", "normalize", "personas", "direction"}
    missing, extra = sorted(keys - set(s)), sorted(set(s) - keys)
    if missing or extra:
        raise bad("", f"needs exactly the keys {sorted(keys)}: missing {missing}, unknown {extra}")
    layer, alpha, normalize = s["layer"], s["alpha"], s["normalize"]
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise bad("layer", f"must be an integer >= 0, got {layer!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise bad("alpha", f"must be a finite number, got {alpha!r}")
    if not isinstance(normalize, bool):
        raise bad("normalize", f"must be true or false, got {normalize!r}")
    names = [p["name"] for p in params["personas"]]
    steered = s["personas"]
    if not isinstance(steered, list) or not steered or not all(isinstance(n, str) for n in steered):
        raise bad("personas", f"must be a non-empty list of persona names, got {steered!r}")
    unknown = [n for n in steered if n not in names]
    if unknown:
        raise bad("personas", f"names {unknown} that are not among params.personas {names}")
    if len(set(steered)) != len(steered):
        raise bad("personas", f"has duplicates: {steered}")

    d = s["direction"]
    dkeys = {"represent", "source", "assistant"}
    if not isinstance(d, dict) or set(d) != dkeys or not all(isinstance(d[k], str) for k in dkeys):
        raise bad("direction", f"must be a mapping of strings with exactly the keys {sorted(dkeys)}, got {d!r}")
    rep = d["represent"]
    if rep not in inputs:
        raise bad("direction.represent", f"{rep!r} is not a dependency of this stage (its deps: {sorted(inputs)})")
    path = Path(inputs[rep]) / "centroids.parquet"
    if not path.is_file():
        raise bad("direction.represent", f"{rep!r} has no centroids.parquet (looked for {path})")
    vectors = _centroids(path, layer)
    if not vectors:
        raise bad("layer", f"{layer} is not a layer of {rep}'s centroids (layers {_layers(path)})")
    for role in ("source", "assistant"):
        if d[role] not in vectors:
            raise bad(f"direction.{role}", f"{d[role]!r} has no centroid in {rep} (personas {sorted(vectors)})")
    diff = vectors[d["source"]] - vectors[d["assistant"]]
    if not np.isfinite(diff).all():
        raise bad("direction", f"is not finite: {rep}'s centroids at layer {layer} hold NaN or inf")
    norm = float(np.linalg.norm(diff))
    if normalize:
        if norm == 0.0:
            raise bad(
                "normalize",
                f"is true but the direction is zero: {d['source']!r} and {d['assistant']!r} "
                f"have the same centroid at layer {layer} in {rep}",
            )
        diff = diff / norm
    return Steer(
        layer=layer,
        alpha=float(alpha),
        normalize=normalize,
        personas=tuple(steered),
        represent=rep,
        source=d["source"],
        assistant=d["assistant"],
        direction=diff,
        norm=norm,
    )


def _centroids(path: Path, layer: int) -> dict[str, Any]:
    """persona -> centroid (float64) at `layer` in a centroids.parquet."""
    import numpy as np
    import polars as pl

    rows = pl.read_parquet(path, columns=["persona", "layer", "vector"]).filter(pl.col("layer") == layer)
    return {r["persona"]: np.asarray(r["vector"], dtype=np.float64) for r in rows.iter_rows(named=True)}


def _layers(path: Path) -> list[int]:
    import polars as pl

    return sorted(pl.read_parquet(path, columns=["layer"])["layer"].unique().to_list())


def check_model(stage_id: str, steer: Steer, model) -> None:
    """The steer layer exists in `model`, the direction has its hidden size, and α · direction
    is finite in the model's dtype."""
    import torch

    from cpx.stages._hidden import HiddenStateError, _targets
    from cpx.stages._rows import StageParamError

    try:
        _targets(model, [steer.layer])
    except HiddenStateError as e:
        raise StageParamError(f"stage {stage_id}: params.steer.layer: {e}") from None
    emb = _embeddings(model)
    if emb.weight.shape[-1] != steer.direction.shape[0]:
        raise StageParamError(
            f"stage {stage_id}: params.steer.direction: {steer.represent}'s centroids have size "
            f"{steer.direction.shape[0]}, the model's hidden size is {emb.weight.shape[-1]}"
        )
    if not torch.isfinite(torch.as_tensor(steer.alpha * steer.direction).to(emb.weight.dtype)).all():
        raise StageParamError(
            f"stage {stage_id}: params.steer.alpha: {steer.alpha} times the direction overflows the model's "
            f"dtype {emb.weight.dtype}"
        )


def _embeddings(model):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.get_input_embeddings()


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

    from cpx.stages._hidden import _targets

    emb = _embeddings(model).weight
    vector = torch.as_tensor(steering.vector, dtype=torch.float64).to(device=emb.device, dtype=emb.dtype)
    if vector.dim() != 1 or vector.shape[0] != emb.shape[-1]:
        raise ValueError(f"steering vector of shape {tuple(vector.shape)} for a hidden size of {emb.shape[-1]}")
    if not torch.isfinite(vector).all():
        raise ValueError(f"the steering vector is not finite in the model's dtype {emb.dtype}")
    hook = _AddHook(vector)
    handle = _targets(model, [steering.layer])[steering.layer].register_forward_hook(hook, prepend=True)
    try:
        yield SteeringHook(hook, steering.coefficients)
    finally:
        handle.remove()
