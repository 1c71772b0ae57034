"""The hand-written `cpx/_core.pyi` matches the built extension (mypy.stubtest)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_stubtest_passes() -> None:
    env = {**os.environ, "CPX_ALLOW_DEBUG_BUILD": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "cpx._core"], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_release_build_flag() -> None:
    from cpx import _core

    assert _core.__build__ in {"debug", "release"}
