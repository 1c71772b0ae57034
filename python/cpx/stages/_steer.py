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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpx.stages._hooks import HiddenStateError, Steering, embeddings, layer_modules
from cpx.stages._params import StageParamError


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
