"""The run folder a command takes when none is given: the one the last `cpx compile` here wrote.

`cpx compile` records its run folder in `runs/LATEST` (relative to the current folder, as the
default run folders are); `execute`, `status`, `report`, `query`, `analyze` and `plan show`
read it back when called without RUN_DIR, and say on stderr which folder they took. Without
runs/LATEST, a current folder that is itself a run folder (has plan.json) is taken.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

LATEST = Path("runs") / "LATEST"
HELP = "default: the run folder of the last `cpx compile` in this folder (runs/LATEST)"


def record(run_dir: Path) -> None:
    """Point runs/LATEST at run_dir (written beside and renamed, so a reader never sees half)."""
    target = run_dir if run_dir.is_absolute() else Path(os.path.relpath(run_dir.resolve(), Path.cwd()))
    LATEST.parent.mkdir(parents=True, exist_ok=True)
    tmp = LATEST.with_name(f".LATEST.{os.getpid()}.tmp")
    tmp.write_text(f"{target}\n")
    os.replace(tmp, LATEST)


def resolve(run_dir: str | None, command: str) -> str:
    """run_dir itself if given; else the folder runs/LATEST names, announced on stderr."""
    from cpx.cli import EXIT_USAGE, CLIError

    if run_dir is not None:
        return run_dir
    try:
        taken = LATEST.read_text().strip()
    except FileNotFoundError:
        if Path("plan.json").is_file():
            print(f"cpx {command}: . (the current folder has a plan.json)", file=sys.stderr)
            return "."
        raise CLIError(
            "no RUN_DIR given and no compiled plan recorded here (runs/LATEST): "
            "run `cpx compile SPEC` first, or give the run folder",
            EXIT_USAGE,
        ) from None
    except OSError as e:
        raise CLIError(f"cannot read {LATEST}: {e.strerror}", EXIT_USAGE) from None
    if not taken or not (Path(taken) / "plan.json").is_file():
        raise CLIError(
            f"{LATEST} names {taken or 'nothing'}, which has no plan.json: run `cpx compile SPEC` again, "
            "or give the run folder",
            EXIT_USAGE,
        )
    print(f"cpx {command}: {taken} (the last `cpx compile` here, {LATEST})", file=sys.stderr)
    return taken
