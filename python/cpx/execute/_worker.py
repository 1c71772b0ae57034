"""The worker loop (stages in, results out, models kept warm) and the local executor's worker process."""

from __future__ import annotations

import ctypes
import importlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from cpx.execute._events import Event, Progress, Ready, Result, Started
from cpx.execute._task import IdleClock, LazyModelPool, Resolver, free_accelerator_memory, run_task

# `module:function` of a resolver to use instead of `cpx.stages.get_runner` (tests, custom kinds).
RESOLVER_ENV = "CPX_STAGE_RESOLVER"


def resolve_resolver(ref: Any) -> Resolver:
    """A resolver given as a callable, as `"module:function"`, or None.

    None means `$CPX_STAGE_RESOLVER` if set, else `cpx.stages.get_runner`.
    """
    if ref is None:
        ref = os.environ.get(RESOLVER_ENV) or None
    if ref is None:
        from cpx.stages import get_runner

        return get_runner
    if isinstance(ref, str):
        module, _, attr = ref.partition(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
    return ref  # type: ignore[no-any-return]


def _die_with_parent(parent_pid: int) -> None:
    """Never outlive the scheduler: an orphaned worker must not keep writing into the run."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:  # for platforms without PR_SET_PDEATHSIG
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="cpx-parent-watch").start()


def _exit_on_term(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def worker_main(
    slot: int,
    device: str,
    visible: str | None,
    run_dir: str,
    resolver_ref: Any,
    tasks: mp.Queue,  # type: ignore[type-arg]
    events: mp.Queue,  # type: ignore[type-arg]
    parent_pid: int,
) -> None:
    """A local worker process: die with the scheduler, see only its own GPU, then `serve`."""
    _die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group; the scheduler decides what stops, not the worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The scheduler stops a worker with SIGTERM: exit through Python, so that multiprocessing's
    # finalizers unregister the semaphores this process made (a SIGKILLed worker leaves them to
    # the resource tracker, which warns about "leaked semaphore objects" at shutdown).
    signal.signal(signal.SIGTERM, _exit_on_term)
    if visible is not None:
        # Before torch is imported: the worker sees only its own GPU, as cuda:0.
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    serve(slot, device, run_dir, resolver_ref, tasks.get, events.put)


def serve(
    slot: int,
    device: str,
    run_dir: str,
    resolver_ref: Any,
    get_task: Callable[[], dict[str, Any] | None],
    put_event: Callable[[Event], None],
    annotate: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """The worker loop of every executor: take a task, run it, report the result; stop at None.

    The model pool lives as long as the loop, so consecutive stages on one base model load it
    once. `annotate(result)` adds executor details (a Slurm job id) to each result.
    """
    resolver = resolve_resolver(resolver_ref)
    models = LazyModelPool(device, run_dir)

    def progress(stage_id: str, done: int, total: int, info: dict[str, Any]) -> None:
        put_event(Progress(slot, stage_id, done, total, info))

    clock = IdleClock()
    put_event(Ready(slot, os.getpid()))
    while True:
        task = get_task()
        if task is None:
            break
        stage_id = task["stage"]["id"]
        put_event(Started(slot, stage_id))
        result = run_task(
            task, resolver=resolver, models=models, device=device, progress=progress, idle_before=clock.waited()
        )
        if annotate is not None:
            annotate(result)
        put_event(Result(slot, stage_id, result))
        clock.free()
        if "torch" in sys.modules:
            # While the scheduler commits: free the finished stage's tensors caught in cycles and
            # the allocator's cache, so the next stage's batch is sized from truly free memory.
            free_accelerator_memory()
