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
from cpx.execute._task import (
    IdleClock,
    LazyModelPool,
    Resolver,
    free_accelerator_memory,
    run_fleet_task,
    run_task,
    stage_ids,
)

# `module:function` of a resolver to use instead of `cpx.stages.get_runner` (tests, custom runners:
# `ctx.params` is the kind's typed params, parsed on first use; `ctx.stage.params` the JSON).
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


def fleet_runner(resolver: Resolver, kind: str) -> Callable[..., None] | None:
    """The `run_fleet(ctxs, done)` a resolver gives for a kind, or None.

    `cpx.stages.get_runner`'s is `cpx.stages.get_fleet_runner`; another resolver gives fleet
    runners through a `fleet` attribute (`kind -> run_fleet or None`), else it has none, and the
    members of a fleet task run one after another.
    """
    from cpx.stages import get_fleet_runner, get_runner

    fleet = get_fleet_runner if resolver is get_runner else getattr(resolver, "fleet", None)
    return fleet(kind) if fleet is not None else None


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
    """The worker loop of the local and Slurm executors: take a task, run it, report the result
    (one per member of a fleet task, as each is done); stop at None.

    The model pool lives as long as the loop, so consecutive stages on one base model load it
    once. `annotate(result)` adds executor details (a Slurm job id) to each result.
    """
    resolver = resolve_resolver(resolver_ref)
    models = LazyModelPool(device, run_dir)

    def progress(stage_id: str, done: int, total: int, info: dict[str, Any]) -> None:
        put_event(Progress(slot, stage_id, done, total, info))

    clock = IdleClock()
    put_event(Ready(slot, os.getpid()))

    def report(stage_id: str, result: dict[str, Any]) -> None:
        if annotate is not None:
            annotate(result)
        put_event(Result(slot, stage_id, result))

    while True:
        task = get_task()
        if task is None:
            break
        for stage_id in stage_ids(task):
            put_event(Started(slot, stage_id))
        members = task.get("members")
        fleet = fleet_runner(resolver, members[0]["stage"]["kind"]) if members else None
        if fleet is not None:
            run_fleet_task(
                task,
                fleet_runner=fleet,
                models=models,
                device=device,
                report=report,
                progress=progress,
                idle_before=clock.waited(),
            )
        else:  # one stage, or a fleet whose kind has no fleet runner: its members one by one
            for t in members or [task]:
                result = run_task(
                    t, resolver=resolver, models=models, device=device, progress=progress, idle_before=clock.waited()
                )
                report(t["stage"]["id"], result)
                clock.free()
        clock.free()
        if "torch" in sys.modules:
            # While the scheduler commits: free the finished stage's tensors caught in cycles and
            # the allocator's cache, so the next stage's batch is sized from truly free memory.
            free_accelerator_memory()
