"""Execution: the content-addressed store, the scheduler and its executors (local, Ray), collection.

`execute(run_dir)` runs what is not done of `<run_dir>/plan.json`; `run_status(run_dir)` says
where every stage stands. Nothing heavy is imported here: workers import the stage runners,
and the runners import torch.
"""

from cpx.execute._collect import RESULT_SOURCES, RESULT_TABLES, collect_results
from cpx.execute._local import DeviceError, parse_devices
from cpx.execute._lock import RunLock, RunLocked, is_locked
from cpx.execute._scheduler import RunSummary, StageFailure, execute
from cpx.execute._status import StageStatus, run_status
from cpx.execute._store import MANIFEST, Store, Verdict

__all__ = [
    "MANIFEST",
    "RESULT_SOURCES",
    "RESULT_TABLES",
    "DeviceError",
    "RunLock",
    "RunLocked",
    "RunSummary",
    "StageFailure",
    "StageStatus",
    "Store",
    "Verdict",
    "collect_results",
    "execute",
    "is_locked",
    "parse_devices",
    "run_status",
]
