"""Execution: the content-addressed store, the scheduler and its executors (local, Ray, Slurm), collection.

`execute(run_dir)` runs what is not done of `<run_dir>/plan.json`; `run_status(run_dir)` says
where every stage stands. Nothing heavy is imported here: workers import the stage runners,
and the runners import torch.
"""

from cpx.execute._collect import RESULT_SOURCES, RESULT_TABLES, collect_results
from cpx.execute._local import DeviceError, parse_devices
from cpx.execute._lock import RunLock, RunLocked, is_locked
from cpx.execute._scheduler import FleetError, RunSummary, StageFailure, execute, parse_fleet
from cpx.execute._slurm import SlurmError, load_options, parse_slurm_args
from cpx.execute._status import STATES, StageStatus, idle_summary, run_status
from cpx.execute._store import MANIFEST, Store, StoreError, Verdict
from cpx.execute._tracking import TrackingError, offline_runs, upload_hint

__all__ = [
    "DeviceError",
    "FleetError",
    "MANIFEST",
    "RESULT_SOURCES",
    "RESULT_TABLES",
    "RunLock",
    "RunLocked",
    "RunSummary",
    "STATES",
    "SlurmError",
    "StageFailure",
    "StageStatus",
    "Store",
    "StoreError",
    "TrackingError",
    "Verdict",
    "collect_results",
    "execute",
    "idle_summary",
    "is_locked",
    "load_options",
    "offline_runs",
    "parse_devices",
    "parse_fleet",
    "parse_slurm_args",
    "run_status",
    "upload_hint",
]
