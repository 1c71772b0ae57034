"""Weights & Biases tracking: each committed stage one W&B run, offline first, its id never lost.

`tracking: {backend: wandb, project, entity, group, mode, tags}`. Every stage is a run named
after the stage's id, in a group named after the plan (run folder and spec hash), with the
stage's labels and params as config and what it measured as history and summary (a train
stage's loss curve, a scan's marker rates by role, analyze's stats table, the report's
figures and files). In offline mode (the default) the runs are written to `<run>/wandb/`
and uploaded later with `wandb sync`; `WANDB_MODE` overrides the spec's mode.

A run's id is chosen before the run exists and recorded in the run's event log; a stage
logged again (its commit was interrupted, or its outputs were lost) gets the id it had, so
W&B sees one run per stage whatever the kills. Online mode is bounded: W&B's init and
finish timeouts (`WANDB_INIT_TIMEOUT`, `WANDB_FINISH_TIMEOUT` override cpx's defaults), and
after a run that could not start, the later stages are not tried (one wait, not one a stage).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpx.execute._tracking import RunIds, TrackingError, require
from cpx.plan import Plan, Stage

if TYPE_CHECKING:
    from cpx.execute._store import Store

INIT_TIMEOUT = 30.0  # seconds an online wandb.init may take to reach the server (W&B's own default: 90)
# Offline, init only starts W&B's local service: a slow machine, not a network, is what it waits
# for, so it keeps W&B's own default (an offline run failed to start under load on a 2-core machine).
OFFLINE_INIT_TIMEOUT = 90.0
FINISH_TIMEOUT = 120.0  # seconds run.finish() may spend uploading; the rest stays on disk for `wandb sync`
_MODES = {"offline": "offline", "dryrun": "offline", "online": "online", "run": "online", "disabled": "disabled"}
_MAX_TABLE_ROWS = 10_000  # rows of a results table logged as a W&B Table (the Parquet file has them all)


def wandb_mode(cfg: dict[str, Any]) -> str:
    """offline, online or disabled: `WANDB_MODE` if set, else the spec's mode, else offline."""
    env = os.environ.get("WANDB_MODE")
    mode = env or cfg.get("mode") or "offline"
    if mode not in _MODES:
        raise TrackingError(f"WANDB_MODE={env!r}: use offline, online or disabled")
    return _MODES[mode]


def _seconds(var: str, default: float) -> float:
    text = os.environ.get(var)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise TrackingError(f"{var}={text!r}: a number of seconds") from None
    if value <= 0:
        raise TrackingError(f"{var}={text!r}: a positive number of seconds")
    return value


@contextlib.contextmanager
def _data_dirs(root: Path) -> Iterator[None]:
    """W&B's staging and cache folders inside `<run>/wandb/` (unless the user set them), so an
    offline run's artifact files travel with the run folder."""
    saved = {k: os.environ.get(k) for k in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR")}
    for k, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache")):
        if saved[k] is None:
            os.environ[k] = str(root / sub)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


class WandbTracker:
    backend = "wandb"

    def __init__(self, cfg: dict[str, Any], plan: Plan, store: Store):
        self.wandb = wandb = require("wandb", "wandb", "wandb (or 'cpx[wandb]')")
        self.run_dir = store.run_dir
        self.mode = wandb_mode(cfg)
        self.project = cfg.get("project") or plan.name
        self.entity = cfg.get("entity")
        self.group = cfg.get("group") or f"{self.run_dir.name}-{plan.spec_hash[:12]}"
        self.tags = list(cfg.get("tags") or [])
        self.plan_name, self.spec_hash = plan.name, plan.spec_hash
        self.init_timeout = _seconds(
            "WANDB_INIT_TIMEOUT", INIT_TIMEOUT if self.mode == "online" else OFFLINE_INIT_TIMEOUT
        )
        self.finish_timeout = _seconds("WANDB_FINISH_TIMEOUT", FINISH_TIMEOUT)
        self.ids = RunIds(store, self.backend)
        # Why the later stages are not tried: a run that could not start in online mode.
        self.broken: str | None = None
        if self.mode == "online" and not wandb.login(prompt=False, verify=False):
            # wandb.init would ask for a key on a terminal and wait: never let it.
            self.broken = "online mode needs W&B credentials: set WANDB_API_KEY or run `wandb login` (or mode: offline)"

    def _entry(self, **extra: Any) -> dict[str, Any]:
        out = {"backend": "wandb", "mode": self.mode, "project": self.project, "group": self.group}
        if self.entity:
            out["entity"] = self.entity
        out.update(extra)
        return out

    def log(self, stage: Stage, manifest: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        if self.broken:
            return self._entry(error=f"not logged: {self.broken}")
        wandb = self.wandb
        known = self.ids.known(stage)
        run_id = known or uuid.uuid4().hex[:16]
        self.ids.record(stage, run_id)  # before the run exists
        online = self.mode == "online"
        settings = wandb.Settings(
            mode=self.mode,
            console="off",
            silent=True,
            disable_git=True,  # the manifest and config keep cpx's own git record
            save_code=False,
            x_save_requirements=False,
            x_disable_stats=True,  # the stage ran in a worker: the scheduler's CPU is not its cost
            init_timeout=self.init_timeout,
            finish_timeout=self.finish_timeout if online else 0.0,
            finish_timeout_raises=online,
        )
        config = {k: v for k, v in stage.labels.items() if v is not None}
        config["params"] = stage.params
        config["cpx"] = {
            "stage": stage.id,
            "kind": stage.kind,
            "hash": stage.hash,
            "plan": self.plan_name,
            "spec_hash": self.spec_hash,
            "run_folder": str(self.run_dir),
            "manifest": os.path.join("stages", stage.kind, stage.hash, "manifest.json"),
            "git": manifest.get("git"),
        }
        with _data_dirs(self.run_dir / "wandb"):
            try:
                run = wandb.init(
                    project=self.project,
                    entity=self.entity,
                    group=self.group,
                    name=stage.id,
                    job_type=stage.kind,
                    tags=self.tags,
                    config=config,
                    id=run_id,
                    resume="allow" if known else None,
                    dir=str(self.run_dir),
                    settings=settings,
                )
            except Exception as e:  # noqa: BLE001 - no network, a bad entity or key, a full disk
                error = f"the W&B run of {stage.id} could not start ({type(e).__name__}: {e})"
                if online:
                    self.broken = error
                return self._entry(error=error)
            entry = self._entry(run_id=run.id)
            if not online:
                entry["dir"] = os.path.relpath(run.settings.sync_dir, self.run_dir)
            try:
                _log_outputs(wandb, run, stage, manifest, out_dir)
            except Exception as e:  # noqa: BLE001 - what was logged stays logged; the run is closed below
                entry["error"] = f"logging the stage's outputs: {type(e).__name__}: {e}"
            try:
                run.finish()
            except Exception as e:  # noqa: BLE001 - the entry says the run did not finish and where its data is
                entry["error"] = (
                    f"the run did not finish ({type(e).__name__}: {e}); its data is in "
                    f"{os.path.relpath(run.settings.sync_dir, self.run_dir)}: upload it with `wandb sync`"
                )
        return entry


def _read(out_dir: Path, name: str) -> list[dict[str, Any]] | None:
    path = out_dir / name
    if not path.is_file():
        return None
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _table(wandb: Any, rows: list[dict[str, Any]]) -> Any:
    """A W&B Table of Parquet rows; nested values (lists, structs) as JSON text."""
    rows = rows[:_MAX_TABLE_ROWS]
    columns = list(rows[0]) if rows else []
    data = [
        [json.dumps(v, default=str) if isinstance(v, list | dict) else v for v in (r[c] for c in columns)] for r in rows
    ]
    return wandb.Table(columns=columns, data=data)


def _numbers(value: Any) -> Any:
    """`info` with only what a W&B summary can chart: numbers (and booleans), nested as given."""
    if isinstance(value, dict):
        out = {str(k): _numbers(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not None and v != {}}
    if isinstance(value, bool | int | float):
        return value
    return None


def _log_outputs(wandb: Any, run: Any, stage: Stage, manifest: dict[str, Any], out_dir: Path) -> None:
    """History, tables, images and summary of one stage, from its outputs and manifest."""
    step = 0
    if stage.kind == "train":
        step_seconds = (manifest.get("info") or {}).get("step_seconds") or []
        for i, row in enumerate(_read(out_dir, "train_log.parquet") or []):
            step = int(row.pop("step"))
            if i < len(step_seconds) and row.get("tokens") and step_seconds[i] > 0:
                row["tokens_per_s"] = row["tokens"] / step_seconds[i]
            run.log({k: v for k, v in row.items() if v is not None}, step=step)
        screen = _read(out_dir, "screen.parquet")
        if screen:
            run.log({"screen": _table(wandb, screen)}, step=step)
    elif stage.kind == "sample":
        by_role: dict[str, list[dict[str, Any]]] = {}
        for r in _read(out_dir, "completions.parquet") or []:
            if "role" in r:
                by_role.setdefault(str(r["role"]), []).append(r)
        for role, rs in sorted(by_role.items()):
            run.summary[f"completions/{role}"] = len(rs)
            if "n_tokens" in rs[0]:
                run.summary[f"tokens_per_completion/{role}"] = sum(r["n_tokens"] for r in rs) / len(rs)
            if "finish_reason" in rs[0]:
                run.summary[f"length_stop_rate/{role}"] = sum(r["finish_reason"] == "length" for r in rs) / len(rs)
    elif stage.kind == "scan":
        for role, rate in sorted(((manifest.get("info") or {}).get("rate_by_role") or {}).items()):
            run.summary[f"rate/{role}"] = rate
        leakage = _read(out_dir, "leakage.parquet")
        if leakage:
            run.log({"leakage": _table(wandb, leakage)}, step=step)
    elif stage.kind == "analyze":
        stats = _read(out_dir, "stats.parquet")
        if stats:
            run.log({"stats": _table(wandb, stats)}, step=step)
    elif stage.kind == "report":
        figures = sorted((out_dir / "figures").glob("*.png"))
        if figures:
            run.log({f"figures/{p.stem}": wandb.Image(str(p)) for p in figures}, step=step)
        art = wandb.Artifact(
            f"report-{stage.hash[:12]}", type="report", metadata={"stage": stage.id, "hash": stage.hash}
        )
        for p in sorted(out_dir.rglob("*")):
            if p.is_file():
                art.add_file(str(p), name=str(p.relative_to(out_dir)))
        run.log_artifact(art)
    summary = _numbers(manifest.get("info") or {})
    summary["seconds"] = manifest["timings"]["seconds"]
    run.summary.update(summary)
