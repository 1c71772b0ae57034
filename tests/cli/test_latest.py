"""`cpx compile SPEC && cpx execute`: commands without RUN_DIR take the last compiled run folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "tests" / "data" / "demo_small.yaml"
RUNNERS = ROOT / "tests" / "execute"


def cpx(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "python"), str(RUNNERS)]),
        "CPX_STAGE_RESOLVER": "_exec_runners:resolve",  # cheap real runners: this tests the CLI
    }
    return subprocess.run(
        [sys.executable, "-m", "cpx", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["execute"],
        ["status"],
        ["report"],
        ["query", "select 1"],
        ["analyze"],
        ["plan", "show"],
    ],
)
def test_without_a_compiled_plan_the_error_says_to_compile(tmp_path: Path, argv: list[str]) -> None:
    r = cpx(*argv, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "run `cpx compile SPEC` first" in r.stderr and "Traceback" not in r.stderr


def test_compile_then_execute_without_run_dir(tmp_path: Path) -> None:
    r = cpx("compile", str(DEMO), "--out", "runs/small", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "runs" / "LATEST").read_text() == "runs/small\n"
    said = "(the last `cpx compile` here, runs/LATEST)"
    r = cpx("execute", "--devices", "cpu", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[0] == f"cpx execute: runs/small {said}"
    assert "done: 33 stages: 33 ran" in r.stdout
    for argv, name in (
        (["status"], "status"),
        (["plan", "show"], "plan show"),
        (["query", "select count(*) from stats"], "query"),
        # the cheap runners' tables are not a report's or an analysis' input: only the folder taken
        (["report"], "report"),
        (["analyze"], "analyze"),
    ):
        r = cpx(*argv, cwd=tmp_path)
        assert r.stderr.splitlines()[0] == f"cpx {name}: runs/small {said}", argv
        if name not in ("report", "analyze"):
            assert r.returncode == 0, (argv, r.stderr)
    assert "33 done, 0 running, 0 failed, 0 pending" in cpx("status", cwd=tmp_path).stdout.splitlines()
    assert cpx("plan", "show", cwd=tmp_path).stdout.splitlines()[-1] == "33 stages, 33 done"


def test_latest_follows_the_last_compile_and_an_absolute_out(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    assert cpx("compile", str(DEMO), "-q", cwd=tmp_path).returncode == 0
    assert (tmp_path / "runs" / "LATEST").read_text() == "runs/demo\n"
    assert cpx("compile", str(DEMO), "--out", str(other), "-q", cwd=tmp_path).returncode == 0
    assert (tmp_path / "runs" / "LATEST").read_text() == f"{other}\n"
    r = cpx("status", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr.startswith(f"cpx status: {other} ")
    # --check writes nothing, the pointer included
    assert cpx("compile", str(DEMO), "--check", cwd=tmp_path).returncode == 0
    assert (tmp_path / "runs" / "LATEST").read_text() == f"{other}\n"


def test_a_pointer_to_a_removed_run_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "LATEST").write_text("runs/gone\n")
    r = cpx("execute", cwd=tmp_path)
    assert r.returncode == 2
    assert "runs/LATEST names runs/gone, which has no plan.json: run `cpx compile SPEC` again" in r.stderr


def test_inside_a_run_folder_the_folder_itself(tmp_path: Path) -> None:
    assert cpx("compile", str(DEMO), "--out", "run", "-q", cwd=tmp_path).returncode == 0
    r = cpx("status", cwd=tmp_path / "run")
    assert r.returncode == 0 and r.stderr.startswith("cpx status: . (the current folder has a plan.json)")
    assert r.stdout.splitlines()[-1] == "0 done, 0 running, 0 failed, 33 pending"
