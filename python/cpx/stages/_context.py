"""What a stage runner receives (docs/plan-format.md, "Runner interface")."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpx.plan import Params, Plan, Stage, parse_params


def _no_progress(done: int, total: int, **info: Any) -> None:
    return None


@dataclass
class StageContext:
    stage: Stage
    out_dir: Path
    inputs: dict[str, Path]
    run_dir: Path
    device: str = "cpu"
    models: Any = None  # cpx.models.ModelPool, created lazily by the worker
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("cpx.stage"))
    progress: Callable[..., None] = _no_progress
    # Set by the executor when a stage is re-run after an out-of-memory error: the most rows
    # a sampling batch or training micro-batch may hold.
    batch_limit: int | None = None
    # The plan the executor loaded (never plan.json as it is on disk later: a recompile must not
    # change what a running stage reads); None when a runner is called outside an executor.
    plan: Plan | None = None
    # The stage's params as its kind's type (cpx.plan._params), parsed once: by the executor
    # before the runner starts, or here on first use when a runner is called directly.
    typed: Params | None = None

    @property
    def params(self) -> Any:
        """The stage's params, typed (`cpx.plan.PARAMS[kind]`): a bad value raises StageParamError."""
        if self.typed is None:
            self.typed = parse_params(self.stage.kind, self.stage.params, f"stage {self.stage.id}")
        return self.typed

    @property
    def labels(self) -> dict[str, Any]:
        return self.stage.labels
