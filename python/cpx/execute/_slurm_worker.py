"""A Slurm worker job: `python -m cpx.execute._slurm_worker WORKER_DIR`.

It runs the local executor's worker loop (`cpx.execute._worker.serve`) with the job's folder
in the shared run folder as its queue: tasks come from WORKER_DIR/inbox, events go to
WORKER_DIR/outbox. It leaves when the driver sends None, or when the driver has been silent
(no heartbeat) for the configured idle time.
"""

from __future__ import annotations

import collections
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from cpx.execute._events import to_message
from cpx.execute._mailbox import Mailbox
from cpx.execute._slurm import WORKER_FILE
from cpx.execute._worker import serve

POLL_SECONDS = 0.1


def slurm_details() -> dict[str, str | None]:
    """The job this process runs in, as Slurm's job environment states it."""
    return {
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "node": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
        "partition": os.environ.get("SLURM_JOB_PARTITION"),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m cpx.execute._slurm_worker WORKER_DIR", file=sys.stderr)
        return 2
    wdir = Path(argv[0])
    try:
        cfg = json.loads((wdir / WORKER_FILE).read_text())
    except (OSError, ValueError) as e:
        print(
            f"cpx slurm worker on {socket.gethostname()}: cannot read {wdir / WORKER_FILE} ({e}): the run folder "
            "must be on a filesystem this node shares with the machine that runs `cpx execute`, at the same path",
            file=sys.stderr,
        )
        return 2
    inbox, outbox = Mailbox(wdir / "inbox"), Mailbox(wdir / "outbox")
    heartbeat = Path(cfg["heartbeat"])
    idle_timeout = float(cfg["idle_timeout"])
    pending: collections.deque[Any] = collections.deque()

    def get_task() -> dict[str, Any] | None:
        last, seen = None, time.monotonic()
        while True:
            if not pending:
                pending.extend(inbox.take())
            if pending:
                return pending.popleft()  # type: ignore[no-any-return]
            try:
                beat = heartbeat.stat().st_mtime_ns
            except FileNotFoundError:
                print("cpx slurm worker: the driver's session folder is gone; leaving", file=sys.stderr)
                return None
            # The heartbeat's own mtime is compared with itself, never with this node's clock.
            if beat != last:
                last, seen = beat, time.monotonic()
            elif time.monotonic() - seen > idle_timeout:
                print(
                    f"cpx slurm worker: no heartbeat from the driver for {idle_timeout:.0f} s; leaving", file=sys.stderr
                )
                return None
            time.sleep(POLL_SECONDS)

    details = slurm_details()

    def annotate(result: dict[str, Any]) -> None:
        result.setdefault("worker", {})["slurm"] = details

    serve(
        int(cfg["slot"]),
        cfg["device"],
        cfg["run_dir"],
        cfg["resolver"],
        get_task,
        lambda ev: outbox.put(to_message(ev)),
        annotate,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
