"""The run folder's stage store: one folder per stage hash, committed atomically with its manifest.

Layout (docs/plan-format.md, "Store"):

    <run>/stages/<kind>/<hash>/          outputs + manifest.json
    <run>/stages/<kind>/.tmp-<hash>-<n>/ a stage being written (never read by anyone)
    <run>/logs/<stage id>.log            the stage's log, every attempt appended
    <run>/.cpx/lock                      held by the one `cpx execute` working on the run
    <run>/.cpx/events.jsonl              started / done / failed, one JSON object a line
    <run>/.cpx/plans/<digest>.json       the plan an executor loaded, as its stages read it

A stage is done only if its manifest is present, names the stage's hash, and every output
it lists has the recorded size and sha256. Anything else (a missing manifest, a truncated or
edited file) makes the stage not done, and the executor runs it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cpx.errors import CpxError
from cpx.plan import Plan, Stage

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
_CHUNK = 1 << 20


def now_iso(t: float | None = None) -> str:
    """A UTC timestamp with microseconds, e.g. 2026-11-25T21:48:11.123456+00:00."""
    return datetime.fromtimestamp(time.time() if t is None else t, UTC).isoformat()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def checksum_tree(root: Path) -> dict[str, dict[str, Any]]:
    """`{relative path: {"sha256", "bytes"}}` for every file under root except the manifest."""
    out: dict[str, dict[str, Any]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if rel == MANIFEST:
                continue
            if p.is_symlink():
                raise StoreError(f"{p}: stage outputs must be plain files, not links")
            out[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return out


def write_json_atomic(path: Path, obj: Any, *, fsync: bool = False, sort_keys: bool = True) -> None:
    """Write JSON to a temporary file beside `path` and rename it over `path`.

    `sort_keys=False` keeps the order of every mapping (a message whose order matters).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=sort_keys, default=str)
        f.write("\n")
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


class StoreError(CpxError):
    """The store is in a state the executor cannot use (reported with the path)."""


@dataclass(frozen=True)
class Verdict:
    """Whether a stage's folder holds a complete, unaltered result, and if not, why."""

    done: bool
    reason: str = ""


class Store:
    """Stage folders, logs and bookkeeping of one run folder."""

    def __init__(self, run_dir: str | os.PathLike[str]):
        self.run_dir = Path(run_dir).resolve()
        self.stages_dir = self.run_dir / "stages"
        self.logs_dir = self.run_dir / "logs"
        self.state_dir = self.run_dir / ".cpx"

    # -- paths --------------------------------------------------------------------------------
    def stage_dir(self, stage: Stage) -> Path:
        return self.stages_dir / stage.kind / stage.hash

    def manifest_path(self, stage: Stage) -> Path:
        return self.stage_dir(stage) / MANIFEST

    def log_path(self, stage: Stage) -> Path:
        # Ids are `/`-separated and readable; keep that shape under logs/, but never let an id
        # climb out of the folder.
        parts = [p for p in stage.id.split("/") if p not in ("", ".", "..")]
        return self.logs_dir.joinpath(*parts).with_name(parts[-1] + ".log")

    @property
    def events_path(self) -> Path:
        return self.state_dir / "events.jsonl"

    # -- reading ------------------------------------------------------------------------------
    def read_manifest(self, stage: Stage) -> dict[str, Any] | None:
        try:
            return json.loads(self.manifest_path(stage).read_text())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None

    def verify(self, stage: Stage, *, checksums: bool = True) -> Verdict:
        """Is this stage done? With `checksums=False` only sizes are compared (fast, for status)."""
        d = self.stage_dir(stage)
        if not d.is_dir():
            return Verdict(False, "not run")
        m = self.read_manifest(stage)
        if m is None:
            return Verdict(False, "no readable manifest")
        if m.get("hash") != stage.hash or m.get("kind") != stage.kind:
            return Verdict(False, "manifest belongs to another stage")
        outputs = m.get("outputs")
        if not isinstance(outputs, dict):
            return Verdict(False, "manifest lists no outputs")
        for rel, rec in outputs.items():
            p = d / rel
            try:
                size = p.stat().st_size
            except OSError:
                return Verdict(False, f"output {rel} is missing")
            if size != rec.get("bytes"):
                return Verdict(False, f"output {rel} has {size} bytes, manifest says {rec.get('bytes')}")
            if checksums and sha256_file(p) != rec.get("sha256"):
                return Verdict(False, f"output {rel} does not match its sha256 in the manifest")
        return Verdict(True)

    # -- writing ------------------------------------------------------------------------------
    def snapshot_plan(self, plan: Plan) -> Path:
        """`.cpx/plans/<digest>.json`: the plan as this executor loaded it, for its stages to read.

        Named by its content and never rewritten, so a stage reads the plan its executor ran
        whatever happens to plan.json meanwhile.
        """
        text = json.dumps(plan.to_json(), sort_keys=True)
        path = self.state_dir / "plans" / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
        if not path.is_file():
            plan.save(path)
        return path

    def prepare(self) -> None:
        for d in (self.stages_dir, self.logs_dir, self.state_dir):
            d.mkdir(parents=True, exist_ok=True)

    def new_tmp_dir(self, stage: Stage) -> Path:
        """A fresh, empty folder beside the stage's final folder (same filesystem: rename is atomic)."""
        parent = self.stages_dir / stage.kind
        parent.mkdir(parents=True, exist_ok=True)
        d = parent / f".tmp-{stage.hash[:16]}-{uuid.uuid4().hex[:8]}"
        d.mkdir()
        return d

    def clean_tmp(self) -> int:
        """Remove temporary folders left by an interrupted run (call only while holding the lock)."""
        n = 0
        if not self.stages_dir.is_dir():
            return 0
        for kind_dir in self.stages_dir.iterdir():
            if not kind_dir.is_dir():
                continue
            for d in kind_dir.iterdir():
                if d.name.startswith((".tmp-", ".old-")):
                    shutil.rmtree(d, ignore_errors=True)
                    n += 1
        # Half-built tiny models (cpx.models builds them in `.<name>.<pid>.tmp` and renames).
        for d in (self.run_dir / "models").glob(".*.tmp"):
            shutil.rmtree(d, ignore_errors=True)
            n += 1
        return n

    def commit(self, stage: Stage, tmp_dir: Path, manifest: dict[str, Any]) -> Path:
        """Write the manifest into `tmp_dir` (last), then rename the folder into place.

        A folder already at the final place is not done (the caller checked), so it is moved
        aside first and removed after the rename.
        """
        write_json_atomic(tmp_dir / MANIFEST, manifest, fsync=True)
        final = self.stage_dir(stage)
        old = None
        if final.exists():
            old = final.with_name(f".old-{stage.hash[:16]}-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
        os.replace(tmp_dir, final)
        _fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def event(self, kind: str, stage: Stage | None = None, **fields: Any) -> None:
        """Append one line to the run's event log (what `cpx status` reads for running/failed)."""
        rec: dict[str, Any] = {"t": now_iso(), "event": kind, "pid": os.getpid()}
        if stage is not None:
            rec["stage"] = stage.id
            rec["hash"] = stage.hash
        rec.update(fields)
        line = (json.dumps(rec, default=str) + "\n").encode()
        fd = os.open(self.events_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a killed run left half a line: do not glue onto it
            os.write(fd, line)
        finally:
            os.close(fd)

    def read_events(self) -> list[dict[str, Any]]:
        try:
            lines = self.events_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the last line of a killed run may be cut short
        return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
