"""Stage runners, one module per stage kind.

These are the only modules that touch torch, transformers, peft or vLLM, and they import
them lazily, inside the functions that need them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cpx._lazy import lazy_exports
from cpx.plan import STAGE_KINDS
from cpx.stages._context import StageContext
from cpx.stages._params import SamplerError, StageParamError
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


__all__ = [
    "DatasetError",
    "HiddenStateError",
    "SamplerError",
    "StageContext",
    "StageParamError",
    "TrainError",
    "get_runner",
    "label_type",
]
