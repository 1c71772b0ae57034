"""Stage runners, one module per stage kind.

These are the only modules that touch torch, transformers, peft or vLLM, and they import
them lazily, inside the functions that need them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cpx._lazy import lazy_exports
from cpx.plan import STAGE_KINDS, Stage
from cpx.stages._context import StageContext
from cpx.plan import SamplerError, StageParamError
from cpx.stages._rows import label_type

if TYPE_CHECKING:
    from cpx.stages._hooks import HiddenStateError
    from cpx.stages._training import TrainError
    from cpx.stages.dataset import DatasetError

# Error classes of modules a worker imports only for the stage kinds it runs.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "DatasetError": "cpx.stages.dataset",
        "HiddenStateError": "cpx.stages._hooks",
        "TrainError": "cpx.stages._training",
    },
)


def get_runner(kind: str) -> Callable[[StageContext], dict[str, Any] | None]:
    """The `run(ctx)` function of a stage kind."""
    if kind not in STAGE_KINDS:
        raise ValueError(f"unknown stage kind {kind!r}; known: {', '.join(STAGE_KINDS)}")
    return importlib.import_module(f"cpx.stages.{kind}").run


def get_fleet_runner(kind: str) -> Callable[..., None] | None:
    """The `run_fleet(ctxs, done)` of a stage kind whose stages can run together as one fleet
    (train), else None."""
    if kind not in STAGE_KINDS:
        raise ValueError(f"unknown stage kind {kind!r}; known: {', '.join(STAGE_KINDS)}")
    return getattr(importlib.import_module(f"cpx.stages.{kind}"), "run_fleet", None)


def fleet_key(stage: Stage) -> str | None:
    """Stages with equal, non-None keys may run together as one fleet (`cpx.stages.train.fleet_key`)."""
    if stage.kind != "train":
        return None
    from cpx.stages.train import fleet_key as train_fleet_key

    return train_fleet_key(stage)


__all__ = [
    "DatasetError",
    "HiddenStateError",
    "SamplerError",
    "StageContext",
    "StageParamError",
    "TrainError",
    "fleet_key",
    "get_fleet_runner",
    "get_runner",
    "label_type",
]
