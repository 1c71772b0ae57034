"""The local executor's backend: one worker process per device, started with "spawn"."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from cpx.errors import CpxError
from cpx.execute._events import Event, Result, failed_result
from cpx.execute._task import stage_ids
from cpx.execute._worker import worker_main

PYTHON_HASH_SEED = "0"
KILL_GRACE_S = 5.0


class DeviceError(CpxError, ValueError):
    """A `--devices` value that names no usable device."""


@dataclass(frozen=True)
class Slot:
    """One worker: the device its stages see (`ctx.device`) and, for a GPU, the physical index."""

    device: str
    visible: str | None = None

    @property
    def label(self) -> str:
        return f"gpu{self.visible}" if self.visible is not None else self.device

    @property
    def gpu(self) -> bool:
        return self.visible is not None


def detect_gpus() -> list[str]:
    """Physical GPU indices this process may use, without importing torch."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [v.strip() for v in env.split(",") if v.strip() and v.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def parse_devices(spec: str) -> list[Slot]:
    """`auto` (every GPU, else one CPU worker), `cpu`, `cpu:N` (N CPU workers), or `0,1,...`."""
    spec = spec.strip()
    if spec == "auto":
        gpus = detect_gpus()
        return [Slot("cuda:0", g) for g in gpus] if gpus else [Slot("cpu")]
    if spec == "cpu":
        return [Slot("cpu")]
    if spec.startswith("cpu:"):
        n = spec[4:]
        if not n.isdigit() or int(n) < 1:
            raise DeviceError(f"--devices {spec!r}: expected cpu:N with N a positive integer")
        return [Slot("cpu") for _ in range(int(n))]
    parts = [p.strip() for p in spec.split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise DeviceError(f"--devices {spec!r}: expected auto, cpu, cpu:N or GPU indices like 0,1")
    if len(set(parts)) != len(parts):
        raise DeviceError(f"--devices {spec!r}: a GPU is listed twice")
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        # Indices count within the GPUs this process may see, as CUDA numbers them.
        visible = [v.strip() for v in env.split(",") if v.strip()]
        bad = [p for p in parts if int(p) >= len(visible)]
        if bad:
            raise DeviceError(
                f"--devices {spec!r}: CUDA_VISIBLE_DEVICES={env!r} shows "
                f"{len(visible)} GPU(s), so there is no GPU {bad[0]}"
            )
        return [Slot("cuda:0", visible[int(p)]) for p in parts]
    return [Slot("cuda:0", p) for p in parts]


class LocalBackend:
    """Worker processes fed through one task queue each; results come back on one shared queue."""

    name = "local"
    fleets = True  # the workers run `serve`, which runs fleet tasks

    def __init__(self, slots: list[Slot], run_dir: str, resolver: Any = None):
        self.slots = slots
        self.run_dir = run_dir
        self.resolver = resolver
        self._ctx = mp.get_context("spawn")
        self._events: Any = self._ctx.Queue()
        self._tasks: list[Any] = []
        self._procs: list[Any] = []
        self._inflight: dict[int, list[str]] = {}  # slot -> its stages not yet reported

    def _spawn(self, i: int) -> None:
        slot = self.slots[i]
        q = self._ctx.Queue()
        p = self._ctx.Process(
            target=worker_main,
            args=(i, slot.device, slot.visible, self.run_dir, self.resolver, q, self._events, os.getpid()),
            name=f"cpx-worker-{slot.label}",
            daemon=True,
        )
        # Python's string hashing is randomised per process, and set order with it (peft writes
        # a set of target modules into adapter_config.json): workers hash the same way every run.
        saved = os.environ.get("PYTHONHASHSEED")
        os.environ["PYTHONHASHSEED"] = PYTHON_HASH_SEED
        try:
            p.start()
        finally:
            if saved is None:
                del os.environ["PYTHONHASHSEED"]
            else:
                os.environ["PYTHONHASHSEED"] = saved
        if i < len(self._procs):
            self._tasks[i], self._procs[i] = q, p
        else:
            self._tasks.append(q)
            self._procs.append(p)

    def start(self) -> None:
        for i in range(len(self.slots)):
            self._spawn(i)

    def submit(self, slot: int, task: dict[str, Any]) -> None:
        self._inflight[slot] = stage_ids(task)
        self._tasks[slot].put(task)

    def poll(self, timeout: float) -> list[Event]:
        out: list[Event] = []
        try:
            out.append(self._events.get(timeout=timeout))
            while True:
                out.append(self._events.get_nowait())
        except queue.Empty:
            pass
        for ev in out:
            if isinstance(ev, Result) and ev.stage_id in self._inflight.get(ev.slot, []):
                self._inflight[ev.slot].remove(ev.stage_id)
        out.extend(self._reap())  # after draining: a result already sent is never lost
        return out

    def _reap(self) -> list[Event]:
        """A worker that died (segfault, OOM killer) fails its stages in flight and is replaced."""
        out: list[Event] = []
        for i, p in enumerate(self._procs):
            if p.is_alive():
                continue
            code = p.exitcode
            p.join()
            self._spawn(i)
            why = f"the worker process on {self.slots[i].label} died (exit code {code})"
            out.extend(Result(i, stage_id, failed_result(why)) for stage_id in self._inflight.pop(i, []))
        return out

    def close(self) -> None:
        for q in self._tasks:
            try:
                q.put(None)
            except (ValueError, OSError):
                pass
        for p in self._procs:
            for _ in range(50):
                p.join(timeout=0.1)
                if not p.is_alive():
                    break
                self._drain()  # a worker exits only once its last messages are read
            if p.is_alive():
                p.kill()
                p.join()
        self._drain()
        for q in [*self._tasks, self._events]:
            q.close()
            q.join_thread()

    def _drain(self) -> None:
        try:
            while True:
                self._events.get_nowait()
        except (queue.Empty, ValueError, OSError):
            pass

    def kill(self) -> None:
        """Stop every worker now (interrupt): the stages in flight are abandoned, not committed.

        SIGTERM first (the worker exits through Python and releases its semaphores), SIGKILL
        for one that has not gone within a few seconds."""
        for p in self._procs:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + KILL_GRACE_S
        for p in self._procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
