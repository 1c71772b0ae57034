"""One `cpx execute` per run folder: an advisory lock the kernel drops when its holder dies."""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

from cpx.errors import CpxError
from cpx.execute._store import now_iso


class RunLocked(CpxError):
    """Another process is executing this run folder."""


class RunLock:
    """`flock` on `<run>/.cpx/lock`; the file also says who holds it, for the error message.

    The kernel releases a `flock` when the holding process exits, however it exits
    (SIGKILL included), so a crashed run never leaves a stale lock behind.
    """

    def __init__(self, run_dir: str | os.PathLike[str]):
        self.path = Path(run_dir) / ".cpx" / "lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(self.path)
            os.close(fd)
            raise RunLocked(
                f"{self.path.parent.parent} is being executed by another cpx process{holder}; "
                "wait for it to finish (or stop it) and run again"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso()}).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_locked(run_dir: str | os.PathLike[str]) -> bool:
    """Whether some process holds the run's lock right now (used by `cpx status`)."""
    path = Path(run_dir) / ".cpx" / "lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _describe(path: Path) -> str:
    try:
        d = json.loads(path.read_text())
        return f" (pid {d['pid']} on {d['host']}, since {d['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""
