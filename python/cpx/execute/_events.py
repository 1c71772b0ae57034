"""What workers and backends tell the scheduler: one small named type per kind of event.

Every executor's `Backend.poll` returns these. A local worker sends them through a
multiprocessing queue (they pickle); a Slurm worker writes them into its outbox as JSON
(`to_message` / `from_message`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Ready:
    """A worker is up and takes tasks."""

    slot: int
    pid: int


@dataclass(frozen=True)
class Started:
    """A worker began a stage."""

    slot: int
    stage_id: str


@dataclass(frozen=True)
class Progress:
    """A stage's runner reported `done` of `total` items (`info`: tokens and the like)."""

    slot: int
    stage_id: str
    done: int
    total: int
    info: dict[str, Any]


@dataclass(frozen=True)
class Result:
    """A stage ended: `result` is `run_task`'s JSON-able result (`ok` true or false)."""

    slot: int
    stage_id: str
    result: dict[str, Any]


@dataclass(frozen=True)
class Note:
    """Something the person running the plan should read (a Slurm job started, squeue failed)."""

    slot: int
    message: str


Event = Ready | Started | Progress | Result | Note
_TYPES: dict[str, type[Event]] = {t.__name__.lower(): t for t in (Ready, Started, Progress, Result, Note)}  # type: ignore[misc]


def to_message(event: Event) -> dict[str, Any]:
    """The event as a JSON-able dict (for a mailbox)."""
    return {
        "event": type(event).__name__.lower(),
        **{f.name: getattr(event, f.name) for f in dataclasses.fields(event)},
    }


def from_message(message: dict[str, Any]) -> Event:
    """The event a `to_message` dict stands for."""
    fields = dict(message)
    return _TYPES[fields.pop("event")](**fields)


def failed_result(error: str, *, lost: bool = False) -> dict[str, Any]:
    """The result of a stage that ended without its runner's own report: its worker died
    (`lost`: through no fault of the stage, such as a Slurm job cancelled, so it runs again)."""
    out: dict[str, Any] = {"ok": False, "oom": False, "seconds": 0.0, "traceback": "", "error": error}
    if lost:
        out["lost"] = True
    return out
