"""Activation steering: the `steer` param of the `sample` and `represent` stages (the hook that
applies it is `_hooks.steered`).

The direction at layer L is centroid(source, L) - centroid(assistant, L), read from a
`represent` stage's `centroids.parquet` (optionally scaled to unit length). α · direction is
added to the output of the module whose output is hidden state L (`_hooks.layer_modules`), at
every position of the steered rows, in the model's dtype.

Steered and unsteered prompts share batches: the hook multiplies the vector by a coefficient
per row (1 for a steered row, 0 for the others), so an unsteered row gets exactly `h + 0 = h`
and its outputs are those of the unsteered model, bit for bit, in the same batches.

torch is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpx.plan import StageParamError
from cpx.stages._hooks import HiddenStateError, Steering, embeddings, layer_modules

if TYPE_CHECKING:
    from cpx.plan import Steer


@dataclass(frozen=True)
class SteerVector:
    """A stage's `steer` param with its direction read from the centroids.

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


def steer_of(stage_id: str, steer: Steer | None, inputs: dict[str, Path]) -> SteerVector | None:
    """The stage's `params.steer` with its direction read from the represent stage; None when
    there is none. The param itself was checked with the plan (`cpx.plan.Steer`); what is
    checked here is what only the represent stage's output can say."""
    import numpy as np

    if steer is None:
        return None
    where = f"stage {stage_id}: params.steer"

    def bad(key: str, what: str) -> StageParamError:
        return StageParamError(f"{where}.{key} {what}")

    layer, d = steer.layer, steer.direction
    rep = str(d.represent)
    if rep not in inputs:
        raise bad("direction.represent", f"{rep!r} is not a dependency of this stage (its deps: {sorted(inputs)})")
    path = Path(inputs[rep]) / "centroids.parquet"
    if not path.is_file():
        raise bad("direction.represent", f"{rep!r} has no centroids.parquet (looked for {path})")
    vectors = _centroids(path, layer)
    if not vectors:
        raise bad("layer", f"{layer} is not a layer of {rep}'s centroids (layers {_layers(path)})")
    for role in ("source", "assistant"):
        name = getattr(d, role)
        if name not in vectors:
            raise bad(f"direction.{role}", f"{name!r} has no centroid in {rep} (personas {sorted(vectors)})")
    diff = vectors[d.source] - vectors[d.assistant]
    if not np.isfinite(diff).all():
        raise bad("direction", f"is not finite: {rep}'s centroids at layer {layer} hold NaN or inf")
    norm = float(np.linalg.norm(diff))
    if steer.normalize:
        if norm == 0.0:
            raise bad(
                "normalize",
                f"is true but the direction is zero: {d.source!r} and {d.assistant!r} "
                f"have the same centroid at layer {layer} in {rep}",
            )
        diff = diff / norm
    return SteerVector(
        layer=layer,
        alpha=steer.alpha,
        normalize=steer.normalize,
        personas=steer.personas,
        represent=rep,
        source=d.source,
        assistant=d.assistant,
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


def check_model(stage_id: str, steer: SteerVector, model) -> None:
    """The steer layer exists in `model`, the direction has its hidden size, and α · direction
    is finite in the model's dtype."""
    import torch

    try:
        layer_modules(model, [steer.layer])
    except HiddenStateError as e:
        raise StageParamError(f"stage {stage_id}: params.steer.layer: {e}") from None
    emb = embeddings(model)
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
