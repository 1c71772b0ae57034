"""The scheduler: decides what runs where, commits finished stages, and ends with a summary.

It is the only process that writes into the store's final folders and manifests, and it does
so only while holding the run's lock; workers write into temporary folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cpx.errors import CpxError
from cpx.execute import _env
from cpx.execute._events import Event, Note, Progress, Result
from cpx.execute._lock import RunLock
from cpx.execute._progress import Display, make_display
from cpx.execute._slurm import cancel_recorded
from cpx.execute._store import MANIFEST_FORMAT, Store, now_iso
from cpx.execute._trackers import make_tracker
from cpx.execute._tracking import Tracker, log_stage
from cpx.plan import Plan, Stage

# Out-of-memory retries of a batching stage, each with half the batch: not counted in --retry.
# The runners of these kinds read `ctx.batch_limit` (sampling batch, training micro-batch).
OOM_RETRIES = 4
OOM_KINDS = frozenset({"sample", "generate", "train"})
# Runs of a stage lost with its worker (a Slurm job cancelled, preempted or timed out), retried
# on another worker and not counted in --retry; a stage lost this often fails.
LOST_RETRIES = 3
# RUN/logs/_fleet/<fleet id>.log: what a fleet printed (each member's own log names it).
FLEET_LOGS = "_fleet"
DEFAULT_FIRST_BATCH_LIMIT = 256


class FleetError(CpxError, ValueError):
    """A `--fleet` value that is not auto, off or a number of stages."""


def parse_fleet(value: str | int | None) -> int | None:
    """`--fleet`: the most stages one fleet may hold; None for `auto` (as many as are ready:
    the trainer sizes its fleets to the memory itself), 1 for `off`."""
    if value is None or value == "auto":
        return None
    if value == "off":
        return 1
    if isinstance(value, int) and not isinstance(value, bool):
        n: int | None = value
    elif isinstance(value, str) and value.strip().isdigit():
        n = int(value)
    else:
        n = None
    if n is None or n < 1:
        raise FleetError(f"--fleet {value!r}: expected auto, off, or the most stages a fleet may hold (1 or more)")
    return n


class Backend(Protocol):
    name: str
    slots: list[Any]
    fleets: bool  # whether its workers run fleet tasks (`serve`)

    def start(self) -> None: ...
    def submit(self, slot: int, task: dict[str, Any]) -> None: ...
    def poll(self, timeout: float) -> list[Event]: ...
    def close(self) -> None: ...
    def kill(self) -> None: ...


@dataclass
class StageFailure:
    id: str
    error: str
    log: str
    attempts: int


@dataclass
class RunSummary:
    """What one `cpx execute` did. `exit_code` is 0 only if every stage of the plan is done."""

    run_dir: str
    total: int
    cached: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    failed: list[StageFailure] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    not_started: list[str] = field(default_factory=list)
    rerun_reasons: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.failed or self.blocked or self.not_started)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "run_dir": self.run_dir,
            "total": self.total,
            "ok": self.ok,
            "cached": self.cached,
            "ran": self.ran,
            "failed": [f.__dict__ for f in self.failed],
            "blocked": self.blocked,
            "not_started": self.not_started,
            "rerun_reasons": self.rerun_reasons,
            "seconds": self.seconds,
        }


def model_key(stage: Stage) -> str | None:
    """The base model a stage loads (what a worker keeps warm), or None for stages without one."""
    model = stage.params.get("model")
    if not isinstance(model, dict):
        return None
    base = model.get("base", model)
    return hashlib.sha256(json.dumps(base, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _first_batch_limit(params: dict[str, Any]) -> int:
    for d in (params, params.get("sampler") or {}, params.get("optim") or {}):
        b = d.get("batch_size") if isinstance(d, dict) else None
        if isinstance(b, int) and b > 1:
            return b // 2
    return DEFAULT_FIRST_BATCH_LIMIT


@dataclass
class _Task:
    """What a worker slot runs: one stage, or the members of a fleet, each with its temporary
    folder until its result comes; when it was handed out; the fleet's record for the manifests."""

    tmp: dict[str, Path]
    submitted: float
    fleet: dict[str, Any] | None = None


class Scheduler:
    """Hands ready stages to free worker slots and acts on what the backend reports.

    One `run` per scheduler: the state of that run (what is done, waiting, running, failed,
    and the retry counters) lives on the instance.
    """

    def __init__(
        self,
        plan: Plan,
        store: Store,
        backend: Backend,
        *,
        keep_going: bool = False,
        retry: int = 0,
        display: Display,
        tracker: Tracker | None = None,
        fleet: int | None = None,
    ):
        self.plan, self.store, self.backend = plan, store, backend
        # The most stages of one fleet (None: no cap; 1: no fleets), where the backend runs fleets.
        self.fleet_cap = fleet if getattr(backend, "fleets", False) else 1
        self.tracker = tracker
        self._tracking_notes: set[str] = set()
        self.keep_going, self.retry, self.display = keep_going, retry, display
        self.by_id = plan.by_id()
        self.plan_path = store.snapshot_plan(plan)
        self.users: dict[str, list[str]] = {s.id: [] for s in plan.stages}
        for s in plan.stages:
            for d in s.deps:
                self.users[d].append(s.id)
        self.order = {s.id: i for i, s in enumerate(plan.stages)}
        # A backend whose workers start late (Slurm jobs in the queue) says which are up.
        self.accepting: Callable[[int], bool] = getattr(backend, "accepting", lambda slot: True)
        self.done: set[str] = set()
        self.waiting: list[str] = []  # in plan order, which is a topological order
        self.dead: set[str] = set()  # failed or blocked
        self.running: dict[int, _Task] = {}
        self.slot_model: dict[int, str | None] = {i: None for i in range(len(backend.slots))}
        self.attempts: dict[str, int] = {}
        self.oom_limits: dict[str, int] = {}
        self.oom_tries: dict[str, int] = {}
        self.lost_tries: dict[str, int] = {}
        # Halved for the members of a fleet that ran out of memory: the largest fleet each may join.
        self.member_caps: dict[str, int] = {}
        self._fleet_keys: dict[str, str | None] = {}
        self.stop = False

    def run(self, summary: RunSummary, todo: list[Stage]) -> None:
        self.summary = summary
        self.done = {s.id for s in self.plan.stages} - {s.id for s in todo}
        self.waiting = [s.id for s in todo]
        while True:
            if not self.stop:
                self._dispatch()
            if not self.running and (self.stop or not self._ready() or self._all_up()):
                break
            for ev in self.backend.poll(0.25):
                self._handle(ev)
        summary.not_started.extend(i for i in self.waiting if i not in self.dead)

    # -- handing out work ------------------------------------------------------------------------

    def _ready(self) -> list[str]:
        return [i for i in self.waiting if all(d in self.done for d in self.by_id[i].deps)]

    def _all_up(self) -> bool:
        return all(self.accepting(i) for i in range(len(self.backend.slots)))

    def _dispatch(self) -> None:
        free = [i for i in range(len(self.backend.slots)) if i not in self.running and self.accepting(i)]
        cands = self._ready() if free else []
        for n, slot in enumerate(free):
            kinds = getattr(self.backend.slots[slot], "kinds", None)
            mine = [c for c in cands if kinds is None or self.by_id[c].kind in kinds]
            if not mine:
                continue
            members = self._fleet_of(self._pick(slot, mine), mine, workers=len(free) - n)
            for sid in members:
                cands.remove(sid)
                self.waiting.remove(sid)
            self._submit(slot, [self.by_id[sid] for sid in members])

    def _pick(self, slot: int, candidates: list[str]) -> str:
        """Prefer the model this worker has loaded; then one no other worker has loaded."""
        mine = self.slot_model[slot]
        if mine is not None:
            for c in candidates:
                if model_key(self.by_id[c]) == mine:
                    return c
        others = {k for j, k in self.slot_model.items() if j != slot and k is not None}
        for c in candidates:
            k = model_key(self.by_id[c])
            if k is None or k not in others:
                return c
        return candidates[0]

    def _fleet_key(self, sid: str) -> str | None:
        if sid not in self._fleet_keys:
            from cpx.stages import fleet_key

            self._fleet_keys[sid] = fleet_key(self.by_id[sid])
        return self._fleet_keys[sid]

    def _fleet_of(self, lead: str, candidates: list[str], *, workers: int = 1) -> list[str]:
        """`lead` and the ready stages that can train with it as one fleet (equal fleet keys), in
        plan order, no more than `--fleet` allows nor any member's own cap (after an OOM).

        `workers`: the free workers left in this round, this one included; they share the ready
        stages of the key, so that two free GPUs train two fleets, not one fleet and nothing."""
        key = self._fleet_key(lead)
        if key is None:
            return [lead]
        same = sum(1 for c in candidates if self._fleet_key(c) == key)
        cap = min(self.fleet_cap or same, self.member_caps.get(lead, same), -(-same // workers))
        if cap <= 1:
            return [lead]
        members = [lead]
        for c in candidates:
            if len(members) >= cap:
                break
            own = self.member_caps.get(c, cap)
            if c != lead and own > len(members) and self._fleet_key(c) == key:
                members.append(c)
                cap = min(cap, own)
        return members

    def _member_task(self, stage: Stage, tmp: Path) -> dict[str, Any]:
        return {
            "stage": stage.to_json(),
            "run_dir": str(self.store.run_dir),
            "out_dir": str(tmp),
            "inputs": {d: str(self.store.stage_dir(self.by_id[d])) for d in stage.deps},
            "log_path": str(self.store.log_path(stage)),
            "attempt": self.attempts[stage.id],
            "batch_limit": self.oom_limits.get(stage.id),
            "plan_path": str(self.plan_path),
        }

    def _submit(self, slot: int, stages: list[Stage]) -> None:
        tmps: dict[str, Path] = {}
        for stage in stages:
            self.attempts[stage.id] = self.attempts.get(stage.id, 0) + 1
            tmps[stage.id] = self.store.new_tmp_dir(stage)
        members = [self._member_task(s, tmps[s.id]) for s in stages]
        fleet: dict[str, Any] | None = None
        if len(stages) == 1:
            task = members[0]
        else:
            fleet = {"id": uuid.uuid4().hex[:12], "size": len(stages), "members": [s.id for s in stages]}
            log = self.store.logs_dir / FLEET_LOGS / f"{fleet['id']}.log"
            task = {"fleet": fleet, "members": members, "log_path": str(log)}
            self.display.fleet_started(slot, fleet["id"], fleet["members"])
        self.running[slot] = _Task(tmps, time.perf_counter(), fleet)
        k = model_key(stages[0])
        if k is not None:
            self.slot_model[slot] = k
        for stage in stages:
            in_fleet = {"fleet": fleet["id"], "fleet_size": fleet["size"]} if fleet else {}
            self.store.event(
                "started",
                stage,
                attempt=self.attempts[stage.id],
                worker=slot,
                device=self.backend.slots[slot].label,
                **in_fleet,
            )
            self.display.stage_started(slot, stage)
        self.backend.submit(slot, task)

    def _requeue(self, slot: int, sid: str) -> None:
        self.display.stage_requeued(slot, self.by_id[sid])
        self.waiting.append(sid)
        self.waiting.sort(key=self.order.__getitem__)

    # -- what the backend reports ----------------------------------------------------------------

    def _handle(self, ev: Event) -> None:
        if isinstance(ev, Progress):
            self.display.stage_progress(ev.slot, ev.stage_id, ev.done, ev.total, ev.info)
        elif isinstance(ev, Note):
            self.display.note(ev.message)
        elif isinstance(ev, Result):
            task = self.running.get(ev.slot)
            if task is None or ev.stage_id not in task.tmp:
                return  # a late message from a replaced worker
            tmp = task.tmp.pop(ev.stage_id)
            if not task.tmp:
                del self.running[ev.slot]
            if ev.result["ok"]:
                self._finished(ev.slot, task, ev.stage_id, tmp, ev.result)
            else:
                self._failed(ev.slot, task, ev.stage_id, tmp, ev.result)

    def _finished(self, slot: int, task: _Task, sid: str, tmp: Path, res: dict[str, Any]) -> None:
        stage = self.by_id[sid]
        self._commit(stage, tmp, res, self.attempts[sid], slot, task)
        self.done.add(sid)
        self.summary.ran.append(sid)
        self.store.event("done", stage, seconds=res["timings"]["seconds"])
        self.display.stage_finished(slot, stage, True, res["timings"]["seconds"])

    def _failed(self, slot: int, task: _Task, sid: str, tmp: Path, res: dict[str, Any]) -> None:
        """Run the stage again if its worker was lost, it ran out of memory (in a fleet: in one
        of half the size; alone: with half the batch), or --retry allows; else it fails, and so
        do the stages that need it."""
        stage = self.by_id[sid]
        _remove(tmp)
        log = str(self.store.log_path(stage))
        self.store.event("failed", stage, attempt=self.attempts[sid], error=res["error"], oom=res.get("oom"))
        if res.get("lost") and self.lost_tries.get(sid, 0) < LOST_RETRIES:
            self.lost_tries[sid] = self.lost_tries.get(sid, 0) + 1
            self.attempts[sid] -= 1
            self.display.note(f"{sid}: {res['error']}; running it again")
            self._requeue(slot, sid)
            return
        if res.get("oom") and task.fleet is not None:
            # The fleet's size is what ran out of memory, never the member's batch.
            cap = max(1, task.fleet["size"] // 2)
            self.member_caps[sid] = min(cap, self.member_caps.get(sid, cap))
            self.attempts[sid] -= 1
            self.store.event("fleet_oom_retry", stage, fleet=task.fleet["id"], fleet_cap=self.member_caps[sid])
            self.display.note(
                f"{sid}: out of memory in a fleet of {task.fleet['size']}; retrying in one of at most {cap}"
            )
            self._requeue(slot, sid)
            return
        if (
            res.get("oom")
            and stage.kind in OOM_KINDS
            and self.oom_limits.get(sid, 2) > 1
            and self.oom_tries.get(sid, 0) < OOM_RETRIES
        ):
            limit = self.oom_limits[sid] // 2 if sid in self.oom_limits else _first_batch_limit(stage.params)
            self.oom_limits[sid] = max(1, limit)
            self.oom_tries[sid] = self.oom_tries.get(sid, 0) + 1
            self.member_caps[sid] = 1  # what does not fit alone fits in no fleet: it stays alone
            self.attempts[sid] -= 1
            self.store.event("oom_retry", stage, batch_limit=self.oom_limits[sid])
            self.display.note(f"{sid}: out of memory; retrying with batch size at most {self.oom_limits[sid]}")
            self._requeue(slot, sid)
            return
        if self.attempts[sid] <= self.retry:
            self.display.note(f"{sid} failed ({res['error']}); retry {self.attempts[sid]} of {self.retry}")
            self._requeue(slot, sid)
            return
        self.dead.add(sid)
        self.summary.failed.append(StageFailure(sid, res["error"], log, self.attempts[sid]))
        self.display.stage_finished(slot, stage, False, res.get("seconds", 0.0), error=res["error"], log=log)
        self._block_users(sid)
        if not self.keep_going:
            self.stop = True

    def _block_users(self, stage_id: str) -> None:
        stack = list(self.users[stage_id])
        while stack:
            u = stack.pop()
            if u in self.dead:
                continue
            self.dead.add(u)
            if u in self.waiting:
                self.waiting.remove(u)
            self.summary.blocked.append(u)
            self.store.event("blocked", self.by_id[u], by=stage_id)
            stack.extend(self.users[u])

    def _commit(self, stage: Stage, tmp: Path, res: dict[str, Any], attempt: int, slot: int, task: _Task) -> None:
        timings = dict(res["timings"])
        timings["overhead_seconds"] = max(0.0, time.perf_counter() - task.submitted - timings["seconds"])
        timings["committed"] = now_iso()
        manifest = {
            "format": MANIFEST_FORMAT,
            "id": stage.id,
            "kind": stage.kind,
            "hash": stage.hash,
            "labels": stage.labels,
            "params": stage.params,
            "inputs": {d: self.by_id[d].hash for d in stage.deps},
            "outputs": res["outputs"],
            "info": res.get("info", {}),
            "seeds": res.get("seeds", {}),
            "timings": timings,
            "attempt": attempt,
            "host": res.get("host", {}),
            "device": res.get("device", {}),
            "executor": {
                "kind": self.backend.name,
                "worker": slot,
                **res.get("worker", {}),
                **({"fleet": task.fleet} if task.fleet is not None else {}),
            },
            "packages": res.get("packages", {}),
            "git": _env.git_state(),
            "tracking": {},
            "plan": {"name": self.plan.name, "spec_hash": self.plan.spec_hash},
            "log": os.path.relpath(self.store.log_path(stage), self.store.run_dir),
        }
        manifest["tracking"] = log_stage(self.tracker, stage, manifest, tmp)
        error = manifest["tracking"].get("error")
        if error:
            self.store.event("tracking_failed", stage, error=error)
            if error not in self._tracking_notes:  # a tracker down says so once, not once a stage
                self._tracking_notes.add(error)
                self.display.note(f"warning: {stage.id}: {manifest['tracking']['backend']} tracking failed: {error}")
        self.store.commit(stage, tmp, manifest)


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def execute(
    run_dir: str | os.PathLike[str],
    *,
    devices: str = "auto",
    executor: str = "local",
    address: str | None = None,
    slurm: Any = None,
    keep_going: bool = False,
    retry: int = 0,
    quiet: bool = False,
    resolver: Callable[[str], Any] | str | None = None,
    display: Display | None = None,
    collect: bool = True,
    fleet: str | int | None = "auto",
) -> RunSummary:
    """Run every stage of `<run_dir>/plan.json` that is not done, then collect the results.

    `resolver(kind)` returns a stage kind's runner (default `cpx.stages.get_runner`); it must
    be importable by the workers (a module-level function, or `"module:function"`).
    `slurm` is the `SlurmOptions` of `executor="slurm"` (default: one CPU worker job).
    `fleet`: `auto` (ready train stages of one fleet key run together, as many as are ready),
    `off`, or the most stages of one fleet (`parse_fleet`); the Ray executor runs no fleets.
    Raises `cpx.execute.RunLocked` if another process is executing the run.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    plan = Plan.load(run_dir)
    store = Store(run_dir)
    if retry < 0:
        raise ValueError(f"retry must be >= 0, got {retry}")
    fleet_cap = parse_fleet(fleet)
    if executor == "ray" and fleet_cap not in (None, 1):
        raise FleetError(
            f"--fleet {fleet}: the Ray executor trains one stage at a time (an actor returns one result a "
            "call, so a fleet's members could not be committed one by one); use --fleet off or auto"
        )
    if executor == "local":
        from cpx.execute._local import parse_devices

        slots = parse_devices(devices)  # bad --devices fails before anything is written
    elif executor == "ray":
        from cpx.execute._ray import check_devices

        check_devices(devices)
    elif executor == "slurm":
        from cpx.execute._local import DeviceError
        from cpx.execute._slurm import SlurmOptions, check_cluster

        if devices != "auto":
            raise DeviceError(f"--devices {devices!r}: with --executor slurm use --workers and --gpus-per-worker")
        slurm = slurm if slurm is not None else SlurmOptions()
        check_cluster(slurm)  # no controller, a bad partition: an error before anything is submitted
    else:
        raise ValueError(f"unknown executor {executor!r}; choose local, ray or slurm")
    tracker = make_tracker(plan, run_dir, store)  # a tracking section that cannot work fails here, first
    with RunLock(run_dir):
        store.prepare()
        # The Slurm jobs of an earlier driver of this run that was killed: gone before anything runs.
        cancelled = cancel_recorded(store.run_dir)
        store.clean_tmp()
        summary = RunSummary(run_dir=str(store.run_dir), total=len(plan.stages))
        todo = []
        for s in plan.stages:
            v = store.verify(s)
            if v.done:
                summary.cached.append(s.id)
            else:
                todo.append(s)
                if v.reason != "not run":
                    summary.rerun_reasons[s.id] = v.reason
        display = display or make_display(quiet=quiet)
        backend: Backend
        if executor == "local":
            from cpx.execute._local import LocalBackend

            backend = LocalBackend(slots, str(store.run_dir), resolver)
        elif executor == "ray":
            from cpx.execute._ray import RayBackend

            backend = RayBackend(str(store.run_dir), resolver, address=address, devices=devices)
        else:
            from cpx.execute._slurm import SlurmBackend

            backend = SlurmBackend(str(store.run_dir), resolver, slurm)
        store.event(
            "run_started",
            executor=executor,
            devices=[s.label for s in getattr(backend, "slots", [])] or devices,
            todo=len(todo),
            cached=len(summary.cached),
            fleet=(fleet_cap or "auto") if getattr(backend, "fleets", False) else 1,
        )
        sched = Scheduler(
            plan,
            store,
            backend,
            keep_going=keep_going,
            retry=retry,
            display=display,
            tracker=tracker,
            fleet=fleet_cap,
        )
        display.run_started(plan, len(todo), len(summary.cached), summary.rerun_reasons)
        if cancelled:
            store.event("slurm_jobs_cancelled", jobs=cancelled)
            display.note(f"cancelled Slurm job(s) {', '.join(cancelled)} left by an earlier driver of this run")
        try:
            if todo:
                backend.start()
                display.workers([s.label for s in backend.slots])
                try:
                    sched.run(summary, todo)
                except BaseException:
                    backend.kill()
                    raise
                backend.close()
            if collect:
                from cpx.execute._collect import collect_results

                summary.results = collect_results(plan, store)
        finally:
            summary.seconds = time.perf_counter() - t0
            display.close()
        store.event(
            "run_finished",
            ok=summary.ok,
            ran=len(summary.ran),
            failed=len(summary.failed),
            blocked=len(summary.blocked),
            seconds=summary.seconds,
        )
    return summary
