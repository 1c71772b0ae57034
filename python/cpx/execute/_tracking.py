"""Experiment tracking: each committed stage logged as one tracker run, its id kept in the manifest.

Asked for by the spec's `tracking:` section. `backend: mlflow` (optional `uri` and
`experiment`): without a `uri` the runs go to an MLflow file store in `<run>/mlruns`, which
needs no server and no network. `backend: wandb`: Weights & Biases, offline by default, its
runs in `<run>/wandb/` (`cpx.execute._wandb`). The scheduler logs a stage when it commits it,
so workers and Ray actors need neither the tracker's package nor a network. A tracker that
fails never fails the stage: the stage is committed, and the manifest's `tracking` says what
went wrong (an `error` key).
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cpx.errors import CpxError
from cpx.plan import Plan, Stage

if TYPE_CHECKING:
    from cpx.execute._store import Store

_MAX_PARAM = 500  # characters of a logged parameter value; the manifest keeps the whole value


class TrackingError(CpxError):
    """A tracking section that cannot be used (say, mlflow is not installed)."""


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= _MAX_PARAM else text[: _MAX_PARAM - 1] + "…"


class Tracker(Protocol):
    backend: str

    def log(self, stage: Stage, manifest: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        """Log a finished stage (its outputs in `out_dir`); return the manifest's `tracking` entry."""
        ...


def require(module: str, backend: str, install: str) -> Any:
    """Import a tracker's package, or say what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TrackingError(
            f"the spec asks for tracking with {backend}, which is not installed: pip install {install}"
        ) from None


def flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    """`{"a": {"b": 1}}` as `{"a.b": 1}` (into `out`)."""
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


RUN_EVENT = "tracking_run"  # the event that records a stage's tracker run id, before anything is logged into it


class RunIds:
    """The tracker run each stage of a run folder was (or is being) logged as.

    An id is recorded in the run's event log as soon as it exists, before the stage's manifest
    is written: a stage logged again (its commit cut short by a kill, or its outputs lost) gets
    the run it had, from the event log or its old manifest, so a tracker sees one run per stage.
    """

    def __init__(self, store: Store, backend: str):
        self.store, self.backend = store, backend
        self._ids: dict[str, str] | None = None

    def _recorded(self) -> dict[str, str]:
        if self._ids is None:
            self._ids = {
                ev["hash"]: ev["run_id"]
                for ev in self.store.read_events()
                if ev.get("event") == RUN_EVENT and ev.get("backend") == self.backend and ev.get("hash")
            }
        return self._ids

    def known(self, stage: Stage) -> str | None:
        old = (self.store.read_manifest(stage) or {}).get("tracking") or {}
        return self._recorded().get(stage.hash) or (old.get("run_id") if old.get("backend") == self.backend else None)

    def record(self, stage: Stage, run_id: str) -> None:
        ids = self._recorded()
        if ids.get(stage.hash) != run_id:
            ids[stage.hash] = run_id
            self.store.event(RUN_EVENT, stage, backend=self.backend, run_id=run_id)


class MlflowTracker:
    backend = "mlflow"

    def __init__(self, cfg: dict[str, Any], run_dir: Path, plan: Plan, store: Store):
        MlflowClient = require("mlflow.tracking", "mlflow", "mlflow-skinny (or 'cpx[tracking]')").MlflowClient
        self.uri = cfg.get("uri") or (run_dir / "mlruns").resolve().as_uri()
        if self.uri.startswith("file:"):
            # A local file store is the offline mode: MLflow asks for this opt-in to use it.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.uri)
        name = cfg.get("experiment") or plan.name
        exp = self.client.get_experiment_by_name(name)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(name)
        self.spec_hash = plan.spec_hash
        self.ids = RunIds(store, self.backend)

    def _run(self, stage: Stage, tags: dict[str, str]) -> str:
        """The stage's MLflow run: the one it was logged as before, if MLflow still has it, else a new one."""
        from mlflow.exceptions import MlflowException

        known = self.ids.known(stage)
        if known:
            try:
                if self.client.get_run(known).info.experiment_id == self.experiment_id:
                    return known
            except MlflowException:
                pass  # deleted since: a new run
        run_id = self.client.create_run(self.experiment_id, run_name=stage.id, tags=tags).info.run_id
        self.ids.record(stage, run_id)
        return run_id

    def log(self, stage: Stage, manifest: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        from mlflow.entities import Metric, Param, RunTag

        tags = {
            "cpx.stage_id": stage.id,
            "cpx.kind": stage.kind,
            "cpx.hash": stage.hash,
            "cpx.spec_hash": self.spec_hash,
        }
        tags.update({f"cpx.label.{k}": _param_text(v) for k, v in stage.labels.items() if v is not None})
        run_id = self._run(stage, tags)
        params: dict[str, Any] = {}
        flatten("", stage.params, params)
        numbers: dict[str, Any] = {"seconds": manifest["timings"]["seconds"]}
        flatten("info", manifest.get("info", {}), numbers)
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


def log_stage(tracker: Tracker | None, stage: Stage, manifest: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The manifest's `tracking` entry: the run's ids, or the error that stopped the logging."""
    if tracker is None:
        return {}
    try:
        return tracker.log(stage, manifest, out_dir)
    except Exception as e:  # noqa: BLE001 - a tracker outage must not lose a finished stage
        return {"backend": tracker.backend, "error": f"{type(e).__name__}: {e}"}


def run_ids(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Stage id -> its manifest's `tracking` entry, for the stages a tracker logged or tried to."""
    return {m["id"]: m["tracking"] for m in manifests if m.get("id") and (m.get("tracking") or {}).get("backend")}


def offline_runs(run_dir: Path) -> list[Path]:
    """The W&B offline run folders of a run that wait for `wandb sync` (W&B marks a synced one)."""
    return sorted(
        d for d in (Path(run_dir) / "wandb").glob("offline-run-*") if d.is_dir() and not any(d.glob("*.wandb.synced"))
    )


def upload_hint(run_dir: Path) -> str | None:
    """How to upload the run's offline W&B runs, or None when there are none."""
    n = len(offline_runs(run_dir))
    if not n:
        return None
    folder = Path(run_dir) / "wandb"
    return f"W&B: {n} offline run(s) in {folder}; upload: wandb sync {folder}/offline-run-*"
