"""Stage runners, one module per stage kind.

These are the only modules that touch torch, transformers, peft or vLLM, and they import
them lazily, inside the functions that need them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from cpx.plan import STAGE_KINDS
from cpx.stages._context import StageContext


def get_runner(kind: str) -> Callable[[StageContext], dict[str, Any] | None]:
    """The `run(ctx)` function of a stage kind."""
    if kind not in STAGE_KINDS:
        raise ValueError(f"unknown stage kind {kind!r}; known: {', '.join(STAGE_KINDS)}")
    return importlib.import_module(f"cpx.stages.{kind}").run


__all__ = ["StageContext", "get_runner"]
