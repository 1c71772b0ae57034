"""Running one stage inside a worker (a local worker process or a Ray actor).

The worker calls the stage's runner with a `StageContext` whose `out_dir` is a fresh temporary
folder, writes everything the runner logs (and prints) to the stage's log file, seeds the
RNGs first, and checksums the outputs afterwards. It never touches the stage's final folder:
only the scheduler, which holds the run's lock, renames a finished folder into place.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cpx.errors import is_oom
from cpx.execute import _env
from cpx.execute._store import checksum_tree, now_iso
from cpx.plan import Plan, Stage

Resolver = Callable[[str], Callable[..., Any]]
ProgressSink = Callable[[str, int, int, dict[str, Any]], None]


class LazyModelPool:
    """`ctx.models`: the worker's `cpx.models.ModelPool`, created on first use and then kept.

    A stage that never touches `ctx.models` (dataset, scan, analyze, report) costs nothing, and
    a worker that runs many stages on one base model loads it once.
    """

    def __init__(self, device: str, run_dir: str):
        self._device = device
        self._run_dir = run_dir
        self._pool: Any = None

    # Only private names here: every public attribute is the pool's own (get, export, ...).
    def _created(self) -> bool:
        return self._pool is not None

    def _instance(self) -> Any:
        if self._pool is None:
            from cpx.models import ModelPool

            self._pool = ModelPool(device=self._device, run_dir=self._run_dir)
        return self._pool

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._instance(), name)


class IdleClock:
    """How long a worker waited for work: from the end of its last stage (or its start) to the
    start of the next. The device sits idle all that time, unless another process uses it."""

    def __init__(self) -> None:
        self._free_since = time.perf_counter()

    def waited(self) -> float:
        """Seconds since the worker became free; call when a task arrives."""
        return time.perf_counter() - self._free_since

    def free(self) -> None:
        """Call when a task's result is handed back."""
        self._free_since = time.perf_counter()


def free_accelerator_memory() -> None:
    """Drop what the finished stage left: cycles, and the allocator's cached blocks, so that the
    next stage sizes its batches from memory that is really free."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _fd_redirect(log_file: Any) -> Any:
    """Send file descriptors 1 and 2 to the stage log too: C++ warnings, tqdm, subprocesses.

    Workers are processes of their own, so this touches no one else's output.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


class _Throttle:
    """Forward at most a few progress updates a second (and always the last one)."""

    def __init__(self, sink: ProgressSink | None, stage_id: str, interval: float = 0.2):
        self.sink, self.stage_id, self.interval, self.last = sink, stage_id, interval, 0.0

    def __call__(self, done: int, total: int, **info: Any) -> None:
        if self.sink is None:
            return
        t = time.monotonic()
        if t - self.last >= self.interval or done >= total:
            self.last = t
            self.sink(self.stage_id, int(done), int(total), info)


@functools.lru_cache(maxsize=2)
def _executed_plan(path: str | None) -> Plan | None:
    """The executor's snapshot of the plan it loaded (content-addressed, never rewritten), read
    once per worker."""
    return Plan.load(path) if path else None


def stage_ids(task: dict[str, Any]) -> list[str]:
    """The stages a task runs: one, or the members of a fleet."""
    return [t["stage"]["id"] for t in task.get("members", [task])]


def _stage_logger(name: str, log_file: Any) -> tuple[logging.Logger, logging.Handler]:
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger, handler


def _header(stage: Stage, task: dict[str, Any], device: str, started_wall: float) -> str:
    return (
        f"=== {stage.id} ({stage.kind} {stage.hash[:12]}) attempt {task.get('attempt', 1)} "
        f"on {device} pid {os.getpid()} at {now_iso(started_wall)}\n"
    )


def _info(kind: str, info: Any) -> dict[str, Any]:
    """A runner's return value as the manifest stores it (JSON), or TypeError."""
    if info is not None and not isinstance(info, dict):
        raise TypeError(f"the {kind} runner returned {type(info).__name__}, not a dict or None")
    return json.loads(json.dumps(info, default=str)) if info else {}


def _error_result(e: BaseException, tb: str, seconds: float) -> dict[str, Any]:
    oom = is_oom(e)
    if oom:
        free_accelerator_memory()
    return {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": tb, "oom": oom, "seconds": seconds}


def _ok_result(
    info: dict[str, Any],
    outputs: dict[str, Any],
    seeds: dict[str, Any],
    started_wall: float,
    seconds: float,
    idle_before: float | None,
    device: str,
) -> dict[str, Any]:
    return {
        "ok": True,
        "info": info,
        "outputs": outputs,
        "seeds": seeds,
        "timings": {
            "started": now_iso(started_wall),
            "finished": now_iso(),
            "seconds": seconds,
            **({"idle_before_seconds": round(idle_before, 3)} if idle_before is not None else {}),
        },
        "device": {
            "id": device,
            "name": _env.device_name(device),
            "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        },
        "host": _env.host(),
        "packages": _env.packages(),
        "worker": {"pid": os.getpid()},
    }


def _context(
    stage: Stage,
    task: dict[str, Any],
    models: LazyModelPool,
    device: str,
    log: logging.Logger,
    progress: Any,
    parse: bool = True,
) -> Any:
    """The runner's context. `parse`: the params are parsed here, once, into the kind's type (the
    runner checks none of them again); else on first use of `ctx.params` (a fleet's members, so
    that a member with bad params fails alone; runners of another resolver, which may read
    `ctx.stage.params` instead)."""
    from cpx.plan import parse_params
    from cpx.stages import StageContext

    return StageContext(
        stage=stage,
        typed=parse_params(stage.kind, stage.params, f"stage {stage.id}") if parse else None,
        out_dir=Path(task["out_dir"]),
        inputs={k: Path(v) for k, v in task["inputs"].items()},
        run_dir=Path(task["run_dir"]),
        device=device,
        models=models,
        log=log,
        progress=_Throttle(progress, stage.id),
        batch_limit=task.get("batch_limit"),
        plan=_executed_plan(task.get("plan_path")),
    )


def _own(resolver: Resolver) -> bool:
    """Whether `resolver` gives cpx's own runners (`cpx.stages.get_runner`)."""
    from cpx.stages import get_runner

    return resolver is get_runner


def run_task(
    task: dict[str, Any],
    *,
    resolver: Resolver,
    models: LazyModelPool,
    device: str,
    progress: ProgressSink | None = None,
    idle_before: float | None = None,
) -> dict[str, Any]:
    """Run one stage; return a JSON-able result (`ok` true or false), never raise for a stage error.

    `idle_before`: the seconds the worker waited for this task (`IdleClock`), recorded in the
    result's timings as `idle_before_seconds`.
    """
    stage = Stage.from_json(task["stage"])
    out_dir = Path(task["out_dir"])
    log_path = Path(task["log_path"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    seed, seed_source = _env.stage_seed(stage.params, stage.hash)
    started_wall, t0 = time.time(), time.perf_counter()

    with open(log_path, "a", buffering=1) as log_file:
        logger, handler = _stage_logger(f"cpx.stage.{os.getpid()}", log_file)
        log_file.write(_header(stage, task, device, started_wall))
        if task.get("batch_limit"):
            logger.info("batch size limited to %d after an out-of-memory error", task["batch_limit"])
        try:
            with _fd_redirect(log_file), contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file):
                seeds = _env.seed_everything(seed, stage.kind)
                # cpx's own runners get their params parsed here; another resolver's parse on use.
                ctx = _context(stage, task, models, device, logger, progress, parse=_own(resolver))
                info = _info(stage.kind, resolver(stage.kind)(ctx))
            outputs = checksum_tree(out_dir)
        except BaseException as e:  # every stage error is reported, not raised
            if isinstance(e, KeyboardInterrupt):
                raise
            tb = traceback.format_exc()
            log_file.write(tb)
            return _error_result(e, tb, time.perf_counter() - t0)
        finally:
            logger.removeHandler(handler)
        seconds = time.perf_counter() - t0
        log_file.write(f"finished in {seconds:.3f} s, {len(outputs)} output files\n")
    return _ok_result(
        info, outputs, {"seed": seed, "source": seed_source, **seeds}, started_wall, seconds, idle_before, device
    )


def run_fleet_task(
    task: dict[str, Any],
    *,
    fleet_runner: Callable[..., None],
    models: LazyModelPool,
    device: str,
    report: Callable[[str, dict[str, Any]], None],
    progress: ProgressSink | None = None,
    idle_before: float | None = None,
) -> None:
    """Run the members of a fleet task in one call of the kind's `fleet_runner(ctxs, done)`;
    `report(stage_id, result)` each member's result as soon as the runner says it is done (or
    failed alone). An error that ends the fleet fails every member not yet reported. Never raises
    for a stage error.

    Each member has its own context, temporary folder and stage log (its logger's lines, its
    traceback); what the fleet prints, and the C libraries' output, go to the fleet's log
    (`task["log_path"]`), which each member's log names. Python's and numpy's global RNGs are
    seeded once, with the first member's seed (a train stage seeds torch with its own).
    `idle_before` is recorded on the first member, so that the wait is counted once.
    """
    fleet = task["fleet"]
    stages = [Stage.from_json(t["stage"]) for t in task["members"]]
    started_wall, t0 = time.time(), time.perf_counter()
    fleet_log = Path(task["log_path"])
    fleet_log.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        files = []
        for i, (stage, t) in enumerate(zip(stages, task["members"], strict=True)):
            path = Path(t["log_path"])
            path.parent.mkdir(parents=True, exist_ok=True)
            f = stack.enter_context(open(path, "a", buffering=1))
            f.write(_header(stage, t, device, started_wall))
            f.write(
                f"in fleet {fleet['id']} of {len(stages)} ({', '.join(fleet['members'])}); its output: {fleet_log}\n"
            )
            logger, handler = _stage_logger(f"cpx.stage.{os.getpid()}.{i}", f)
            stack.callback(logger.removeHandler, handler)
            if t.get("batch_limit"):
                logger.info("batch size limited to %d after an out-of-memory error", t["batch_limit"])
            files.append((f, logger))
        out_file = stack.enter_context(open(fleet_log, "a", buffering=1))
        out_file.write(
            f"=== fleet {fleet['id']} of {len(stages)} ({', '.join(fleet['members'])}) "
            f"on {device} pid {os.getpid()} at {now_iso(started_wall)}\n"
        )
        pending = set(range(len(stages)))
        seeds = [_env.stage_seed(s.params, s.hash) for s in stages]

        def done(i: int, info: Any, error: BaseException | None) -> None:
            if i not in pending:
                raise ValueError(f"fleet {fleet['id']}: member {i} is reported twice, or there is no member {i}")
            pending.discard(i)
            f, _ = files[i]
            seconds = time.perf_counter() - t0
            if error is not None:
                tb = "".join(traceback.format_exception(error))
                f.write(tb)
                report(stages[i].id, _error_result(error, tb, seconds))
                return
            try:
                out = _info(stages[i].kind, info)
                outputs = checksum_tree(Path(task["members"][i]["out_dir"]))
            except Exception as e:  # noqa: BLE001 - this member's error, reported for it alone
                tb = traceback.format_exc()
                f.write(tb)
                report(stages[i].id, _error_result(e, tb, seconds))
                return
            f.write(f"finished in {seconds:.3f} s (from the fleet's start), {len(outputs)} output files\n")
            seed, source = seeds[i]
            res = _ok_result(
                out,
                outputs,
                {"seed": seed, "source": source, **global_seeds},
                started_wall,
                seconds,
                idle_before if i == 0 else None,
                device,
            )
            report(stages[i].id, res)

        try:
            with _fd_redirect(out_file), contextlib.redirect_stdout(out_file), contextlib.redirect_stderr(out_file):
                global_seeds = _env.seed_everything(seeds[0][0], stages[0].kind)
                ctxs = [
                    _context(s, t, models, device, logger, progress, parse=False)
                    for s, t, (_, logger) in zip(stages, task["members"], files, strict=True)
                ]
                fleet_runner(ctxs, done)
            if pending:
                raise RuntimeError(f"the fleet runner of fleet {fleet['id']} returned without reporting this member")
        except BaseException as e:  # the error ends the fleet: its members in flight fail with it
            if isinstance(e, KeyboardInterrupt):
                raise
            tb = traceback.format_exc()
            out_file.write(tb)
            result = _error_result(e, tb, time.perf_counter() - t0)
            for i in sorted(pending):
                files[i][0].write(tb)
                report(stages[i].id, dict(result))
