"""Experiment tracking: each committed stage logged as one MLflow run, its id kept in the manifest.

Asked for by the spec's `tracking:` section (`backend: mlflow`, optional `uri` and
`experiment`). Without a `uri` the runs go to an MLflow file store in `<run>/mlruns`, which
needs no server and no network. A tracker that fails never fails the stage: the stage is
committed, and the manifest's `tracking` says what went wrong.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cpx.errors import CpxError
from cpx.plan import Plan, Stage

_MAX_PARAM = 500  # characters of a logged parameter value; the manifest keeps the whole value


class TrackingError(CpxError):
    """A tracking section that cannot be used (say, mlflow is not installed)."""


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= _MAX_PARAM else text[: _MAX_PARAM - 1] + "…"


class MlflowTracker:
    def __init__(self, cfg: dict[str, Any], run_dir: Path, plan: Plan):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise TrackingError(
                "the spec asks for tracking with mlflow, which is not installed: "
                "pip install mlflow-skinny (or 'cpx[tracking]')"
            ) from None
        self.uri = cfg.get("uri") or (run_dir / "mlruns").resolve().as_uri()
        if self.uri.startswith("file:"):
            # A local file store is the offline mode: MLflow asks for this opt-in to use it.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.uri)
        name = cfg.get("experiment") or plan.name
        exp = self.client.get_experiment_by_name(name)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(name)
        self.spec_hash = plan.spec_hash

    def log(self, stage: Stage, manifest: dict[str, Any]) -> dict[str, Any]:
        from mlflow.entities import Metric, Param, RunTag

        tags = {
            "cpx.stage_id": stage.id,
            "cpx.kind": stage.kind,
            "cpx.hash": stage.hash,
            "cpx.spec_hash": self.spec_hash,
        }
        tags.update({f"cpx.label.{k}": _param_text(v) for k, v in stage.labels.items() if v is not None})
        run = self.client.create_run(self.experiment_id, run_name=stage.id, tags=tags)
        run_id = run.info.run_id
        params: dict[str, Any] = {}
        _flatten("", stage.params, params)
        numbers: dict[str, Any] = {"seconds": manifest["timings"]["seconds"]}
        _flatten("info", manifest.get("info", {}), numbers)
        metrics = [
            Metric(k, float(v), 0, 0)
            for k, v in numbers.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        self.client.log_batch(
            run_id,
            metrics=metrics,
            params=[Param(k[:250], _param_text(v)) for k, v in params.items()],
            tags=[RunTag("cpx.manifest", os.path.join("stages", stage.kind, stage.hash, "manifest.json"))],
        )
        self.client.set_terminated(run_id)
        return {"backend": "mlflow", "uri": self.uri, "experiment_id": self.experiment_id, "run_id": run_id}


def make_tracker(plan: Plan, run_dir: Path) -> MlflowTracker | None:
    """The tracker the plan's spec asks for, or None."""
    cfg = (plan.spec or {}).get("tracking")
    if not cfg:
        return None
    if cfg.get("backend") != "mlflow":
        raise TrackingError(f"unknown tracking backend {cfg.get('backend')!r}; cpx logs to 'mlflow'")
    return MlflowTracker(cfg, run_dir, plan)


def log_stage(tracker: MlflowTracker | None, stage: Stage, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `tracking` entry: the run's ids, or the error that stopped the logging."""
    if tracker is None:
        return {}
    try:
        return tracker.log(stage, manifest)
    except Exception as e:  # noqa: BLE001 - a tracker outage must not lose a finished stage
        return {"backend": "mlflow", "error": f"{type(e).__name__}: {e}"}
