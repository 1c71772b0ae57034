"""Real, cheap stage runners for the executor's tests and benchmarks.

They write real Parquet and text files in the executor's temporary folder, read their inputs
and check them for completeness, sleep, raise, and keep a ledger (one line appended per start
and per finish) so a test can count how often each stage ran. What they do is driven by the
stage's params:

    ledger: str        file the start/end lines are appended to (else $CPX_TEST_LEDGER, if set)
    rows: int          rows of the table written (default 4)
    chunks: int        the text output is written in this many pieces ...
    sleep: float       ... with this many seconds between them (so a kill can land mid-write)
    fail: bool         raise RuntimeError
    fail_first: int    raise on the first N attempts (counted in the ledger), then succeed
    oom_above: int     raise an OutOfMemoryError unless ctx.batch_limit is at most this
    die: bool          kill the worker process (SIGKILL to itself)
    noop: bool         do nothing at all (scheduler overhead benchmark)

and, for a stage run as a member of a fleet (`run_fleet`, the resolvers' `fleet`):

    fleet_oom_above: int   the whole fleet raises an OutOfMemoryError if it has more members
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

END = "END\n"
TABLE_FILES = {
    "sample": ["completions.parquet"],
    "scan": ["marker_hits.parquet", "leakage.parquet"],
    "represent": ["cosines.parquet"],
    "analyze": ["metrics.parquet", "stats.parquet"],
}


class OutOfMemoryError(RuntimeError):
    """Named like torch's, which is how the executor recognises an out-of-memory error."""


LEDGER_ENV = "CPX_TEST_LEDGER"


def _ledger_path(params: dict[str, Any]) -> str | None:
    return params.get("ledger") or os.environ.get(LEDGER_ENV)


def _ledger(params: dict[str, Any], line: str) -> None:
    path = _ledger_path(params)
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


def ledger_lines(path: str | Path) -> list[list[str]]:
    try:
        return [ln.split(" ") for ln in Path(path).read_text().splitlines() if ln]
    except FileNotFoundError:
        return []


def run(ctx: Any) -> dict[str, Any] | None:
    p = ctx.stage.params  # these runners' own params, not a stage kind's (`ctx.params` is typed)
    if p.get("noop"):
        return None
    sid = ctx.stage.id
    _ledger(p, f"start {sid} {time.time():.6f} {os.getpid()}")
    ledger = _ledger_path(p)
    starts = sum(1 for ln in ledger_lines(ledger) if ln[:2] == ["start", sid]) if ledger else 1
    if p.get("die"):
        os.kill(os.getpid(), signal.SIGKILL)
    if p.get("fail"):
        raise RuntimeError(f"stage {sid} was told to fail")
    if starts <= p.get("fail_first", 0):
        raise RuntimeError(f"stage {sid} fails on attempt {starts}")
    if "oom_above" in p and (ctx.batch_limit is None or ctx.batch_limit > p["oom_above"]):
        raise OutOfMemoryError(f"CUDA out of memory at batch limit {ctx.batch_limit}")

    # Inputs must be complete: every text output ends with END, every table reads.
    upstream = []
    for dep_id, folder in sorted(ctx.inputs.items()):
        text = (Path(folder) / "data.txt").read_text()
        if not text.endswith(END):
            raise RuntimeError(f"input {dep_id} is incomplete")
        upstream.append(text)

    values = np.random.random(p.get("rows", 4))  # the executor seeded numpy's global RNG
    py_value = random.random()
    ctx.log.info("stage %s writing %d rows", sid, len(values))
    print(f"stdout of {sid}")  # goes to the stage log, not the terminal
    os.write(2, f"fd 2 of {sid}\n".encode())  # as a C library writes: also to the stage log

    chunks, sleep = p.get("chunks", 1), p.get("sleep", 0.0)
    with open(ctx.out_dir / "data.txt", "w") as f:
        for i in range(chunks):
            f.write(f"{sid} chunk {i} {values.sum():.12f} {len(upstream)}\n")
            f.flush()
            ctx.progress(i + 1, chunks, tokens=10 * (i + 1))
            if sleep:
                time.sleep(sleep)
        f.write(END)
    table = pa.table(
        {
            "stage": [sid] * len(values),
            "i": list(range(len(values))),
            "value": values.tolist(),
            **{k: [v] * len(values) for k, v in ctx.labels.items()},
        }
    )
    for name in TABLE_FILES.get(ctx.stage.kind, ["table.parquet"]):
        pq.write_table(table, ctx.out_dir / name)
    if ctx.stage.kind == "report":
        (ctx.out_dir / "report.md").write_text(f"# report of {sid}\n" + "".join(upstream))
        (ctx.out_dir / "figures").mkdir()
        (ctx.out_dir / "figures" / "f.txt").write_text("figure\n")
    _ledger(p, f"end {sid} {time.time():.6f} {os.getpid()}")
    return {
        "rows": len(values),
        "py_random": py_value,
        "device": ctx.device,
        "models_imported": "cpx.models" in sys.modules,
        "plan_spec_hash": ctx.plan.spec_hash if ctx.plan is not None else None,
    }


def run_fleet(ctxs: list[Any], done: Any) -> None:
    """A fleet runner with `cpx.stages.train.run_fleet`'s contract: the members one after another,
    each reported as it ends, each with its own seed (as the trainer seeds each member's run);
    a ledger line `fleet <size> <ids>` at its start."""
    from cpx.execute._env import stage_seed

    ids = [c.stage.id for c in ctxs]
    _ledger(ctxs[0].stage.params, f"fleet {len(ctxs)} {' '.join(ids)} {os.getpid()}")
    print(f"fleet of {len(ctxs)}")  # the fleet's output goes to the fleet's log
    for c in ctxs:
        limit = c.stage.params.get("fleet_oom_above")
        if limit is not None and len(ctxs) > limit:
            raise OutOfMemoryError(f"CUDA out of memory in a fleet of {len(ctxs)}")
    for i, c in enumerate(ctxs):
        seed, _ = stage_seed(c.stage.params, c.stage.hash)
        random.seed(seed)
        np.random.seed(seed)
        try:
            info = run(c)
        except Exception as e:  # noqa: BLE001 - one member's error is reported for that member alone
            done(i, None, e)
        else:
            done(i, {**(info or {}), "fleet_size": len(ctxs)}, None)


def resolve(kind: str) -> Any:
    """The resolver the executor is given in tests: every kind runs `run` above."""
    return run


def resolve_fleet(kind: str) -> Any:
    """`resolve`'s fleet runners (the executor looks for a resolver's `fleet`): `run_fleet` for train."""
    return run_fleet if kind == "train" else None


resolve.fleet = resolve_fleet  # type: ignore[attr-defined]


def stage_hash(kind: str, params: dict[str, Any], dep_hashes: list[str]) -> str:
    import hashlib

    blob = json.dumps({"kind": kind, "params": params, "deps": sorted(dep_hashes)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def make_plan(run_dir: str | Path, stages: list[dict[str, Any]], name: str = "t") -> Any:
    """Write `<run_dir>/plan.json` for stages given as {id, kind, deps, params, labels}."""
    from cpx.plan import Plan, Stage

    hashes: dict[str, str] = {}
    out = []
    for s in stages:
        deps = tuple(s.get("deps", ()))
        h = stage_hash(s["kind"], s.get("params", {}), [hashes[d] for d in deps])
        hashes[s["id"]] = h
        out.append(
            Stage(id=s["id"], kind=s["kind"], hash=h, deps=deps, params=s.get("params", {}), labels=s.get("labels", {}))
        )
    plan = Plan(name=name, spec={"name": name}, spec_hash="0" * 64, stages=out)
    plan.check()
    plan.save(Path(run_dir) / "plan.json")
    return plan


def resolve_real(kind: str) -> Any:
    """cpx's own stage runners, with a ledger line before and after each (for the demo tests)."""
    from cpx.stages import get_runner

    inner = get_runner(kind)

    def run_real(ctx: Any) -> Any:
        _ledger({}, f"start {ctx.stage.id} {time.time():.6f} {os.getpid()}")
        out = inner(ctx)
        _ledger({}, f"end {ctx.stage.id} {time.time():.6f} {os.getpid()}")
        return out

    return run_real


def resolve_real_fleet(kind: str) -> Any:
    """cpx's own fleet runners, with a ledger line before each fleet (its members' start lines)
    and an end line as each member is reported."""
    from cpx.stages import get_fleet_runner

    inner = get_fleet_runner(kind)
    if inner is None:
        return None

    def run_real_fleet(ctxs: list[Any], done: Any) -> None:
        ids = [c.stage.id for c in ctxs]
        _ledger({}, f"fleet {len(ctxs)} {' '.join(ids)} {os.getpid()}")
        for sid in ids:
            _ledger({}, f"start {sid} {time.time():.6f} {os.getpid()}")

        def done_and_log(i: int, info: Any, error: Any) -> None:
            if error is None:
                _ledger({}, f"end {ids[i]} {time.time():.6f} {os.getpid()}")
            done(i, info, error)

        inner(ctxs, done_and_log)

    return run_real_fleet


resolve_real.fleet = resolve_real_fleet  # type: ignore[attr-defined]


# A small plan for the tracking tests: generate, sample, scan, analyze, with labels and nested params.
TRACKED_STAGES = [
    {"id": "gen", "kind": "generate", "params": {"rows": 3}},
    {
        "id": "sample/A",
        "kind": "sample",
        "deps": ["gen"],
        "params": {"rows": 5, "nested": {"lr": 0.5}},
        "labels": {"arm": "A", "checkpoint": 0.5},
    },
    {"id": "scan/A", "kind": "scan", "deps": ["sample/A"], "params": {}, "labels": {"arm": "A"}},
    {"id": "analyze", "kind": "analyze", "deps": ["scan/A"], "params": {}},
]


def make_tracked_plan(
    run_dir: str | Path, tracking: dict[str, Any], stages: list[dict[str, Any]] = TRACKED_STAGES
) -> Any:
    """`make_plan` with a spec whose `tracking:` section is `tracking`."""
    plan = make_plan(run_dir, stages, name="tracked")
    plan.spec = {"name": "tracked", "tracking": tracking}
    plan.save(Path(run_dir) / "plan.json")
    return plan
