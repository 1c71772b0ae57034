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
    # wandb.init in this test process points WANDB_SERVICE at its own W&B service; a `cpx`
    # subprocess starts its own, as from a shell (sharing this one, a W&B run of the kill test
    # failed to start in 2 of 2 runs after the in-process W&B tests; 0 of 4 without them).
    env.pop("WANDB_SERVICE", None)
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


def execute_without(package: str, run_dir: Path) -> subprocess.CompletedProcess[str]:
    """`cpx execute RUN_DIR` in a Python where importing `package` fails, as if not installed."""
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def without(name, *a, **k):\n"
        f"    if name.split('.')[0] == {package!r}: raise ImportError(name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = without\n"
        "from cpx.cli import main\n"
        f"sys.exit(main(['execute', {str(run_dir)!r}, '--devices', 'cpu', '--quiet']))\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
