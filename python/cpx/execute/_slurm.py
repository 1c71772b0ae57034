"""The Slurm executor: each worker is a Slurm job that runs the local executor's worker loop.

The scheduler, the store and the lock stay in the driver (`cpx execute --executor slurm` on a
login node). Workers are batch jobs submitted with `sbatch` and watched with `squeue`; each runs
`python -m cpx.execute._slurm_worker DIR`, keeps its model loaded across stages and writes
stage outputs into temporary folders of the run folder, which must be on a filesystem the
compute nodes share with the driver, at the same path.

Driver and workers talk through that filesystem only (no port to open between a login node
and compute nodes): each job has a folder `RUN/.cpx/slurm/<session>/<worker>/` with an inbox
(tasks from the driver) and an outbox (events from the worker), both `Mailbox`es of atomically
renamed JSON files, and the driver touches `driver.alive` there every few seconds; a worker
whose driver has gone quiet for `idle_timeout` seconds leaves.

A job that ends (scancel, preemption, time limit, node failure) loses only its stage in
flight, which the scheduler runs again on another worker, and is replaced by a new job. The
jobs of a session are recorded in `RUN/.cpx/slurm/jobs.json` until they are gone, so a driver
that was killed outright has its jobs cancelled by the next `cpx execute` of the run.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpx.errors import CpxError
from cpx.execute._events import Event, Note, Progress, Ready, Result, failed_result, from_message
from cpx.execute._local import PYTHON_HASH_SEED
from cpx.execute._mailbox import Mailbox
from cpx.execute._store import write_json_atomic
from cpx.execute._task import stage_ids

SLURM_DIR = Path(".cpx") / "slurm"
JOBS_FILE = "jobs.json"
HEARTBEAT = "driver.alive"
WORKER_FILE = "worker.json"
# Where each job's own output (the worker process' stdout and stderr) is kept: RUN/logs/_slurm/JOBID.out
JOB_LOGS = Path("logs") / "_slurm"
# Job states in which a worker runs or may still start. Anything else (CANCELLED, PREEMPTED,
# TIMEOUT, NODE_FAIL, FAILED, OUT_OF_MEMORY, ... or no longer listed) means it is gone, or, for
# ENDING_STATES, that it is going.
LIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "RESIZING", "REQUEUED"})
# A job on its way out: its processes may still run, and its final state (CANCELLED, TIMEOUT, ...)
# is not known yet. cpx waits up to ENDING_WAIT seconds for that state before it replaces the job,
# so the old worker cannot still be writing while a new one starts the same stage.
ENDING_STATES = frozenset({"COMPLETING", "SIGNALING", "STAGE_OUT"})
ENDING_WAIT = 60.0
# States in which processes of a job may still be running.
STOPPING_STATES = LIVE_STATES | {"COMPLETING", "SIGNALING", "STOPPED", "STAGE_OUT"}
# Ended before its worker started, through no fault of the worker: submit a new job.
REPLACEABLE = frozenset({"CANCELLED", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"})
# sbatch options cpx sets itself (a --slurm-arg naming one is an error).
RESERVED_ARGS = frozenset({"job-name", "J", "output", "o", "error", "e", "wrap", "parsable", "array", "a", "requeue"})
SQUEUE_EVERY = 2.0
HEARTBEAT_EVERY = 2.0
# Jobs of one worker slot that end before their worker starts, in a row, before cpx gives up.
MAX_REPLACEMENTS = 3


class SlurmError(CpxError):
    """Slurm cannot run the workers: no Slurm commands, no controller, a job Slurm refuses."""


@dataclass
class SlurmOptions:
    """What every worker job asks for. None means sbatch's own default (its SBATCH_* variables)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    gpus_per_worker: int = 0
    workers: int = 1
    args: dict[str, str | None] = field(default_factory=dict)
    # Seconds a RUNNING job may take to start its worker (import cpx, read its folder).
    ready_timeout: float = 300.0
    # Seconds an idle worker waits for a silent driver before it leaves.
    idle_timeout: float = 300.0

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise SlurmError(f"--workers must be at least 1, got {self.workers}")
        if self.gpus_per_worker < 0:
            raise SlurmError(f"--gpus-per-worker must be 0 or more, got {self.gpus_per_worker}")
        for key in self.args:
            if key.lstrip("-") in RESERVED_ARGS:
                raise SlurmError(f"--slurm-arg {key}: cpx sets this sbatch option itself")
            if not key or key.startswith("-"):
                raise SlurmError(f"--slurm-arg {key!r}: give the sbatch option without dashes, as KEY=VALUE")

    @property
    def device(self) -> str:
        return "cuda:0" if self.gpus_per_worker > 0 else "cpu"

    def sbatch_args(self) -> list[str]:
        """The options every worker job is submitted with (besides its name and output file)."""
        out = ["--no-requeue", f"--export=ALL,PYTHONHASHSEED={PYTHON_HASH_SEED}"]
        for flag, value in (
            ("partition", self.partition),
            ("account", self.account),
            ("qos", self.qos),
            ("time", self.time),
        ):
            if value:
                out.append(f"--{flag}={value}")
        if self.gpus_per_worker:
            out.append(f"--gres=gpu:{self.gpus_per_worker}")
        for key, value in self.args.items():
            out.append(f"--{key}" if value is None else f"--{key}={value}")
        return out


def parse_slurm_args(items: list[str]) -> dict[str, str | None]:
    """`KEY=VALUE` (or a bare `KEY` flag) items of --slurm-arg, in order."""
    out: dict[str, str | None] = {}
    for item in items:
        key, eq, value = item.partition("=")
        out[key.strip().lstrip("-")] = value if eq else None
        if not key.strip().lstrip("-"):
            raise SlurmError(f"--slurm-arg {item!r}: expected KEY=VALUE, such as mem=32G")
    return out


_CONFIG_KEYS = (
    "partition",
    "account",
    "qos",
    "time",
    "gpus_per_worker",
    "workers",
    "args",
    "ready_timeout",
    "idle_timeout",
)


def load_options(config_file: str | os.PathLike[str] | None = None, **given: Any) -> SlurmOptions:
    """Options from the `slurm:` block of an executor config file, overridden by `given` (not None)."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values = _read_config(Path(config_file))
    for key, value in given.items():
        if value is None:
            continue
        if key == "args":
            values["args"] = {**values.get("args", {}), **value}
        else:
            values[key] = value
    return SlurmOptions(**values)


def _read_config(path: Path) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SlurmError(f"{path}: cannot read the executor config: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SlurmError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("slurm"), dict):
        raise SlurmError(f"{path}: expected a mapping with a `slurm:` block")
    block = doc["slurm"]
    unknown = sorted(set(block) - set(_CONFIG_KEYS))
    if unknown:
        raise SlurmError(f"{path}: slurm.{unknown[0]}: unknown key; known keys: {', '.join(_CONFIG_KEYS)}")
    types: dict[str, type | tuple[type, ...]] = {
        "workers": int,
        "gpus_per_worker": int,
        "ready_timeout": (int, float),
        "idle_timeout": (int, float),
    }
    for key, want in types.items():
        if key in block and (isinstance(block[key], bool) or not isinstance(block[key], want)):
            raise SlurmError(f"{path}: slurm.{key}: expected a number, got {block[key]!r}")
    for key in ("partition", "account", "qos", "time"):
        if key in block and block[key] is not None:
            block[key] = str(block[key])
    args = block.get("args", {})
    if not isinstance(args, dict):
        raise SlurmError(f"{path}: slurm.args: expected a mapping of sbatch options (mem: 32G)")
    block["args"] = {str(k): (None if v is None or v is True else str(v)) for k, v in args.items()}
    return dict(block)


def _slurm_cmd(args: list[str], *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    exe = shutil.which(args[0])
    if exe is None:
        raise SlurmError(
            f"{args[0]} is not on PATH: --executor slurm runs where Slurm's commands are (a login node of the cluster)"
        )
    try:
        return subprocess.run([exe, *args[1:]], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{shlex.join(args)}` did not answer within {timeout:.0f} s") from None


def check_cluster(options: SlurmOptions) -> None:
    """Raise SlurmError unless the controller answers and accepts a worker job as asked.

    `sbatch --test-only` validates partition, account, QOS, time and GPUs without submitting.
    """
    ping = _slurm_cmd(["scontrol", "ping"], timeout=30)
    text = (ping.stdout + ping.stderr).strip()
    if ping.returncode != 0 or " is UP" not in text:
        conf = os.environ.get("SLURM_CONF")
        where = f" (SLURM_CONF={conf})" if conf else ""
        raise SlurmError(f"the Slurm controller does not answer{where}: {_one_line(text)}")
    test = _slurm_cmd(["sbatch", "--test-only", *options.sbatch_args(), "--wrap", "true"])
    if test.returncode != 0:
        raise SlurmError(
            f"Slurm refuses the worker job ({' '.join(options.sbatch_args()[2:]) or 'no options'}): "
            f"{_one_line(test.stderr or test.stdout)}"
        )


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("*")]
    return "; ".join(dict.fromkeys(ln.removeprefix("sbatch: error: ") for ln in lines)) or "no output"


def squeue(job_ids: list[str]) -> dict[str, dict[str, str]] | None:
    """State, node and partition of each listed job still known to Slurm; None if squeue failed."""
    if not job_ids:
        return {}
    r = _slurm_cmd(["squeue", "-h", "--states=all", "-j", ",".join(job_ids), "-o", "%i|%T|%N|%P|%j|%r"], timeout=60)
    if r.returncode != 0:
        if "Invalid job id" in r.stderr:  # every one of them has left Slurm's memory
            return {}
        return None
    out = {}
    for line in r.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 6:
            out[parts[0]] = dict(zip(("state", "node", "partition", "name", "reason"), parts[1:], strict=True))
    return out


def _cancel_and_wait(job_ids: list[str], timeout: float = 60.0) -> None:
    """scancel the jobs and wait until none of their processes can still write into the run."""
    if not job_ids:
        return
    _slurm_cmd(["scancel", *job_ids])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = squeue(job_ids)
        if states is not None and not any(s["state"] in STOPPING_STATES for s in states.values()):
            return
        time.sleep(0.5)


def jobs_path(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / SLURM_DIR / JOBS_FILE


def cancel_recorded(run_dir: str | os.PathLike[str]) -> list[str]:
    """Cancel the jobs a previous driver of this run left (it was killed); return their ids.

    Called with the run's lock held, before temporary folders are cleaned, so no old worker is
    still writing when the new driver starts. A job is cancelled only if Slurm still knows it
    under the name cpx gave it.
    """
    path = jobs_path(run_dir)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except ValueError:
        record = {"jobs": {}}
    jobs: dict[str, str] = record.get("jobs", {})
    if jobs and shutil.which("squeue") is None:
        return []  # not on the cluster: the workers leave by themselves once the driver is silent
    states = squeue(list(jobs))
    if states is None:
        return []  # the controller did not answer: keep the record for the next driver
    mine = [j for j, name in jobs.items() if j in states and states[j]["name"] == name]
    _cancel_and_wait([j for j in mine if states[j]["state"] in STOPPING_STATES])
    for d in path.parent.iterdir():
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
    path.unlink(missing_ok=True)
    return mine


@dataclass
class SlurmSlot:
    """One worker position; the job behind it changes when a job ends and is replaced."""

    label: str
    device: str
    kinds: frozenset[str] | None = None


@dataclass
class _Job:
    id: str
    name: str
    dir: Path
    inbox: Mailbox
    outbox: Mailbox
    state: str = "PENDING"
    node: str = ""
    reason: str = ""
    ready: bool = False
    running_since: float | None = None
    ending_since: float | None = None  # when squeue first showed it in an ENDING_STATES state
    inflight: list[str] = field(default_factory=list)  # its stages not yet reported

    def gone(self, state: str, now: float) -> bool:
        """Whether a job squeue shows in `state` has ended: not live, and not ending for less than ENDING_WAIT."""
        if state in LIVE_STATES:
            return False
        if state in ENDING_STATES:
            self.ending_since = now if self.ending_since is None else self.ending_since
            return now - self.ending_since >= ENDING_WAIT
        return True


def _resolver_ref(resolver: Any) -> str | None:
    if resolver is None or isinstance(resolver, str):
        return resolver
    return f"{resolver.__module__}:{resolver.__qualname__}"


class SlurmBackend:
    """Submits one job per worker slot, feeds them tasks through their inboxes, watches squeue."""

    name = "slurm"
    fleets = True  # the worker jobs run `serve`, which runs fleet tasks

    def __init__(self, run_dir: str, resolver: Any, options: SlurmOptions):
        self.run_dir, self.options = Path(run_dir), options
        self.resolver = _resolver_ref(resolver)
        self.session = uuid.uuid4().hex[:10]
        self.dir = self.run_dir / SLURM_DIR / self.session
        self.job_logs = self.run_dir / JOB_LOGS
        self.slots = [SlurmSlot(f"slurm{i}", options.device) for i in range(options.workers)]
        self._jobs: list[_Job] = []
        self._submitted = [0] * options.workers
        self._early_ends = [0] * options.workers
        self._live: dict[str, str] = {}  # job id -> name, as recorded in jobs.json
        self._last_squeue = self._last_beat = 0.0
        self._squeue_failing = False
        self._saved_sigterm: Any = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._saved_sigterm = signal.signal(signal.SIGTERM, _terminate)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.job_logs.mkdir(parents=True, exist_ok=True)
        self._beat(force=True)
        try:
            for i in range(len(self.slots)):
                self._jobs.append(self._submit(i))
        except BaseException:  # sbatch refused one, or Ctrl-C: no job of a half-started session stays
            self.kill()
            raise

    def _submit(self, slot: int) -> _Job:
        self._submitted[slot] += 1
        wdir = self.dir / f"w{slot}-{self._submitted[slot]}"
        inbox, outbox = Mailbox(wdir / "inbox").create(), Mailbox(wdir / "outbox").create()
        write_json_atomic(
            wdir / WORKER_FILE,
            {
                "slot": slot,
                "device": self.options.device,
                "run_dir": str(self.run_dir),
                "resolver": self.resolver,
                "heartbeat": str(self.dir / HEARTBEAT),
                "idle_timeout": self.options.idle_timeout,
            },
        )
        name = f"cpx-{self.session}-w{slot}"
        command = f"exec {shlex.quote(sys.executable)} -m cpx.execute._slurm_worker {shlex.quote(str(wdir))}"
        r = _slurm_cmd(
            [
                "sbatch",
                "--parsable",
                f"--job-name={name}",
                f"--output={self.job_logs / '%j.out'}",
                *self.options.sbatch_args(),
                "--wrap",
                command,
            ]
        )
        if r.returncode != 0:
            raise SlurmError(f"sbatch refused worker {slot}: {_one_line(r.stderr or r.stdout)}")
        job_id = r.stdout.strip().split(";")[0]
        self._live[job_id] = name
        self._record()
        self.slots[slot].label = f"job{job_id}"
        return _Job(job_id, name, wdir, inbox, outbox)

    def _job_log(self, job: _Job) -> Path:
        return self.job_logs / f"{job.id}.out"

    def _record(self) -> None:
        write_json_atomic(
            jobs_path(self.run_dir),
            {"session": self.session, "pid": os.getpid(), "host": socket.gethostname(), "jobs": self._live},
        )

    def _beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_beat >= HEARTBEAT_EVERY:
            (self.dir / HEARTBEAT).write_text(f"{os.getpid()} {time.time():.3f}\n")
            self._last_beat = now

    # -- the scheduler's side ------------------------------------------------------------------

    def accepting(self, slot: int) -> bool:
        """Whether the slot's worker is up: a task for a job still in the queue would wait there."""
        return self._jobs[slot].ready

    def submit(self, slot: int, task: dict[str, Any]) -> None:
        job = self._jobs[slot]
        job.inflight = stage_ids(task)
        job.inbox.put(task)

    def poll(self, timeout: float) -> list[Event]:
        deadline = time.monotonic() + timeout
        out: list[Event] = []
        while True:
            self._beat()
            for job in self._jobs:
                out.extend(self._read(job))
            if time.monotonic() - self._last_squeue >= SQUEUE_EVERY:
                out.extend(self._watch())
            if out or time.monotonic() >= deadline:
                return out
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _read(self, job: _Job) -> list[Event]:
        out: list[Event] = []
        for msg in job.outbox.take():
            ev = from_message(msg)
            if isinstance(ev, Ready):
                job.ready = True
            elif isinstance(ev, Result):
                if ev.stage_id in job.inflight:
                    job.inflight.remove(ev.stage_id)
                out.append(ev)
            elif isinstance(ev, Progress):
                out.append(ev)
        return out

    def _watch(self) -> list[Event]:
        """Compare each job with squeue: note a start, replace a job that ended."""
        self._last_squeue = time.monotonic()
        states = squeue([j.id for j in self._jobs])
        if states is None:
            if not self._squeue_failing:
                self._squeue_failing = True
                return [Note(-1, "squeue failed; cpx keeps the workers and asks again")]
            return []
        self._squeue_failing = False
        out: list[Event] = []
        for slot, job in enumerate(self._jobs):
            info = states.get(job.id)
            state = info["state"] if info else "ENDED"
            if info:
                job.node, job.reason = info["node"] or job.node, info["reason"]
            if state in LIVE_STATES:
                if state != job.state:
                    if state == "RUNNING":
                        job.running_since = time.monotonic()
                    where = f" on {job.node}" if state == "RUNNING" else f" ({job.reason})" if job.reason else ""
                    out.append(Note(slot, f"worker job {job.id}: {state.lower()}{where}"))
                job.state = state
                if (
                    not job.ready
                    and job.running_since is not None
                    and time.monotonic() - job.running_since > self.options.ready_timeout
                ):
                    raise SlurmError(
                        f"worker job {job.id} has run on {job.node} for {self.options.ready_timeout:.0f} s without "
                        f"writing to {job.dir}: the run folder must be on a filesystem the compute nodes share "
                        f"with this machine, at the same path (its output: {self._job_log(job)})"
                    )
                continue
            if not job.gone(state, time.monotonic()):
                continue
            out.extend(self._read(job))  # what it wrote before it ended still counts
            job.state = state if state != "ENDED" else job.state
            self._live.pop(job.id, None)
            why = f"worker job {job.id}{f' on {job.node}' if job.node else ''} ended ({state})"
            out.extend(Result(slot, stage_id, failed_result(why, lost=True)) for stage_id in job.inflight)
            job.inflight = []
            if not job.ready:
                if state not in REPLACEABLE:
                    self._record()
                    raise SlurmError(
                        f"{why} before its worker started; is the run folder on a filesystem the compute nodes "
                        f"share, at the same path? {_tail(self._job_log(job))}"
                    )
                self._early_ends[slot] += 1
                if self._early_ends[slot] >= MAX_REPLACEMENTS:
                    self._record()
                    raise SlurmError(f"{why}; {MAX_REPLACEMENTS} jobs in a row for worker {slot} ended before starting")
            else:
                self._early_ends[slot] = 0
            self._jobs[slot] = self._submit(slot)
            out.append(Note(slot, f"{why}; replaced by job {self._jobs[slot].id}"))
        return out

    def close(self) -> None:
        """Ask every worker to leave, wait for its job to end, cancel what is left."""
        for job in self._jobs:
            job.inbox.put(None)
        deadline = time.monotonic() + 30.0
        ids = [j.id for j in self._jobs]
        while time.monotonic() < deadline:
            self._beat()
            states = squeue(ids)
            if states is not None and not any(s["state"] in STOPPING_STATES for s in states.values()):
                break
            time.sleep(0.2)
        self._end(ids)

    def kill(self) -> None:
        """Cancel every job now (interrupt): the stages in flight are abandoned, not committed."""
        self._end([j.id for j in self._jobs])

    def _end(self, ids: list[str]) -> None:
        _cancel_and_wait(ids)
        self._live.clear()
        jobs_path(self.run_dir).unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        self._jobs = []
        if self._saved_sigterm is not None:
            signal.signal(signal.SIGTERM, self._saved_sigterm)
            self._saved_sigterm = None


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM to the driver: stop as Ctrl-C does, so the jobs are cancelled on the way out."""
    raise KeyboardInterrupt


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return f"(no job output at {path})"
    return "Job output: " + " | ".join(text) if text else f"(empty job output at {path})"
