"""A message queue in a folder, for a driver and a worker that share only a filesystem.

Each message is one JSON file, written under a hidden name and renamed into place, so a reader
never sees half a message (rename is atomic on POSIX filesystems and on NFS within one
folder). File names sort in the order one writer put them; a folder has one writer and one
reader (the driver writes a worker's inbox, the worker its outbox).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from cpx.execute._store import write_json_atomic


class Mailbox:
    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._seq = 0
        self._prefix = f"{time.time_ns():020d}-{os.getpid()}"

    def create(self) -> Mailbox:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def put(self, message: Any) -> None:
        self._seq += 1
        # Key order is kept: a stage's labels become columns of its tables in that order.
        write_json_atomic(self.path / f"{self._prefix}-{self._seq:09d}.json", message, sort_keys=False)

    def take(self) -> list[Any]:
        """Every complete message now in the folder, oldest first, each removed once read."""
        try:
            names = sorted(n for n in os.listdir(self.path) if n.endswith(".json") and not n.startswith("."))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            p = self.path / name
            try:
                out.append(json.loads(p.read_text()))
            except FileNotFoundError:
                continue
            p.unlink(missing_ok=True)
        return out
