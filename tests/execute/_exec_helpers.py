"""Helpers for the executor's tests: a `cpx` subprocess runner and manifest reading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "python"


def cpx_env(**extra: str) -> dict[str, str]:
    """Environment for a `python -m cpx` subprocess that runs the test runners."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(HERE), env.get("PYTHONPATH", "")])
    env["CPX_STAGE_RESOLVER"] = "_exec_runners:resolve"
    env.update(extra)
    return env


def cpx_popen(*args: str, **extra: str) -> subprocess.Popen[bytes]:
    """Start `cpx` in the background (its output discarded: it is about to be killed)."""
    return subprocess.Popen(
        [sys.executable, "-m", "cpx", *args], env=cpx_env(**extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def cpx_run(*args: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cpx", *args], env=cpx_env(**extra), capture_output=True, text=True, timeout=timeout
    )


def manifests(run_dir: Path) -> dict[str, dict]:
    """Stage id -> manifest, for every committed stage folder."""
    out = {}
    for m in (run_dir / "stages").glob("*/*/manifest.json"):
        d = json.loads(m.read_text())
        out[d["id"]] = d
    return out
