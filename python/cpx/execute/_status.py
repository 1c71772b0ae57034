"""`cpx status`: every stage of a run as done, running, failed or pending, with its timing."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cpx.execute._lock import is_locked
from cpx.execute._store import Store
from cpx.plan import Plan

STATES = ("done", "running", "failed", "pending")


@dataclass
class StageStatus:
    id: str
    kind: str
    hash: str
    state: str
    seconds: float | None = None  # run time of a done or failed stage, time so far of a running one
    finished: str | None = None
    device: str | None = None
    note: str = ""  # why a stage is pending or failed
    log: str | None = None
    idle_before: float | None = None  # seconds its worker waited for it (manifest timings)
    fleet: str | None = None  # the fleet it ran (runs) in, and that fleet's size
    fleet_size: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_status(run_dir: str | os.PathLike[str], *, verify: bool = False) -> list[StageStatus]:
    """The state of every stage of the run's plan.

    A stage is done when its manifest and outputs agree (sizes only, unless `verify`, which
    also compares sha256 as `cpx execute` does). Running, failed and blocked come from the
    run's event log; "running" needs a live `cpx execute` holding the run's lock.
    """
    run_dir = Path(run_dir)
    plan = Plan.load(run_dir)
    store = Store(run_dir)
    live = is_locked(run_dir)
    last: dict[str, dict[str, Any]] = {}
    for ev in store.read_events():
        if "hash" in ev and ev.get("event") in ("started", "failed", "blocked", "done"):
            last[ev["hash"]] = ev
    out = []
    for s in plan.stages:
        log = store.log_path(s)
        log_rel = os.path.relpath(log, store.run_dir) if log.exists() else None
        v = store.verify(s, checksums=verify)
        if v.done:
            m = store.read_manifest(s) or {}
            t = m.get("timings", {})
            dev = m.get("device", {})
            fleet = m.get("executor", {}).get("fleet") or {}
            out.append(
                StageStatus(
                    s.id,
                    s.kind,
                    s.hash,
                    "done",
                    t.get("seconds"),
                    t.get("finished"),
                    dev.get("name") or dev.get("id"),
                    log=log_rel,
                    idle_before=t.get("idle_before_seconds"),
                    fleet=fleet.get("id"),
                    fleet_size=fleet.get("size"),
                )
            )
            continue
        ev = last.get(s.hash, {})
        kind = ev.get("event")
        if kind == "started" and live:
            since = _parse(ev.get("t"))
            secs = (datetime.now(since.tzinfo).timestamp() - since.timestamp()) if since else None
            out.append(
                StageStatus(
                    s.id,
                    s.kind,
                    s.hash,
                    "running",
                    secs,
                    None,
                    ev.get("device"),
                    f"attempt {ev.get('attempt', 1)}",
                    log_rel,
                    fleet=ev.get("fleet"),
                    fleet_size=ev.get("fleet_size"),
                )
            )
        elif kind == "failed":
            out.append(
                StageStatus(s.id, s.kind, s.hash, "failed", None, ev.get("t"), None, str(ev.get("error", "")), log_rel)
            )
        else:
            note = ""
            if kind == "blocked":
                note = f"blocked by failed {ev.get('by')}"
            elif v.reason != "not run":
                note = v.reason
            elif kind == "started":
                note = "interrupted"
            out.append(StageStatus(s.id, s.kind, s.hash, "pending", note=note, log=log_rel))
    return out


def idle_summary(rows: list[StageStatus]) -> dict[str, Any]:
    """The workers' waits before the done stages that recorded one: total, largest (and which),
    and per kind, in seconds. A worker's first stage waits for nothing but its own start."""
    timed = [r for r in rows if r.idle_before is not None]
    by_kind: dict[str, float] = {}
    for r in timed:
        by_kind[r.kind] = by_kind.get(r.kind, 0.0) + float(r.idle_before or 0.0)
    worst = max(timed, key=lambda r: r.idle_before or 0.0, default=None)
    return {
        "stages": len(timed),
        "total_seconds": round(sum(by_kind.values()), 3),
        "max_seconds": worst.idle_before if worst else None,
        "max_stage": worst.id if worst else None,
        "by_kind": {k: round(v, 3) for k, v in sorted(by_kind.items())},
    }


def _parse(t: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(t)
    except (TypeError, ValueError):
        return None
