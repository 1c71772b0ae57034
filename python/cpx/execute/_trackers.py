"""The tracker a spec's `tracking:` section asks for, among the backends: MLflow
(`_tracking`) and Weights & Biases (`_wandb`, which builds on `_tracking`'s run records)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cpx.execute._tracking import MlflowTracker, Tracker, TrackingError
from cpx.plan import Plan

if TYPE_CHECKING:
    from cpx.execute._store import Store


def make_tracker(plan: Plan, run_dir: Path, store: Store) -> Tracker | None:
    """The tracker the plan's spec asks for, or None (no `tracking:`, or WANDB_MODE=disabled)."""
    cfg = (plan.spec or {}).get("tracking")
    if not cfg:
        return None
    backend = cfg.get("backend")
    if backend == "mlflow":
        return MlflowTracker(cfg, run_dir, plan, store)
    if backend == "wandb":
        from cpx.execute._wandb import WandbTracker, wandb_mode

        return None if wandb_mode(cfg) == "disabled" else WandbTracker(cfg, plan, store)
    raise TrackingError(f"unknown tracking backend {backend!r}; cpx logs to 'mlflow' or 'wandb'")
