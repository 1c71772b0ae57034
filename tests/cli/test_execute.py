"""`cpx execute` and `cpx status` as a user runs them: subprocesses, exit codes, messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNNERS = ROOT / "tests" / "execute"
sys.path.insert(0, str(RUNNERS))

from _exec_runners import make_plan  # noqa: E402 - imported after the sys.path entry above


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT / "python"), str(RUNNERS), e.get("PYTHONPATH", "")])
    e["CPX_STAGE_RESOLVER"] = "_exec_runners:resolve"
    return e


def cpx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cpx", *args], env=env(), capture_output=True, text=True, timeout=120)


def plan(run: Path, fail: bool = False, sleep: float = 0.0) -> None:
    make_plan(
        run,
        [
            {"id": "data/a", "kind": "dataset", "params": {"chunks": 2, "sleep": sleep}},
            {"id": "data/b", "kind": "dataset", "params": {"fail": fail}},
            {"id": "scan/a", "kind": "scan", "deps": ["data/a"], "params": {}},
            {"id": "scan/b", "kind": "scan", "deps": ["data/b"], "params": {}},
        ],
    )


def test_execute_then_status(tmp_path):
    plan(tmp_path)
    r = cpx("execute", str(tmp_path), "--devices", "cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("done: 4 stages: 4 ran, 0 already done, 0 failed")
    assert "results:" in r.stdout and "marker_hits" in r.stdout
    assert "[4/4]" in r.stderr  # progress lines when stderr is not a terminal
    again = cpx("execute", str(tmp_path), "--quiet")
    assert again.returncode == 0 and "0 ran, 4 already done" in again.stdout and again.stderr == ""
    st = cpx("status", str(tmp_path), "--json")
    assert st.returncode == 0
    data = json.loads(st.stdout)
    assert data["counts"] == {"done": 4, "running": 0, "failed": 0, "pending": 0}
    assert all(s["seconds"] is not None for s in data["stages"])
    assert data["idle"]["stages"] == 4
    assert data["idle"]["total_seconds"] == round(sum(s["idle_before"] for s in data["stages"]), 3)
    text = cpx("status", str(tmp_path)).stdout.splitlines()
    assert text[-2] == "4 done, 0 running, 0 failed, 0 pending"
    assert text[-1].startswith("workers idle before stages: ") and data["idle"]["max_stage"] in text[-1]
    assert text[0].split()[:2] == ["done", "data/a"]


def test_failure_exit_code_summary_and_status(tmp_path):
    plan(tmp_path, fail=True)
    r = cpx("execute", str(tmp_path), "--devices", "cpu", "--keep-going", "--quiet")
    assert r.returncode == 1
    assert "incomplete: 4 stages: 2 ran" in r.stdout
    assert "FAILED data/b after 1 attempt(s): RuntimeError: stage data/b was told to fail" in r.stdout
    assert "log: " + str(tmp_path.resolve() / "logs" / "data" / "b.log") in r.stdout
    assert "blocked by a failure: scan/b" in r.stdout
    st = json.loads(cpx("status", str(tmp_path), "--json").stdout)
    assert st["counts"] == {"done": 2, "running": 0, "failed": 1, "pending": 1}


def test_second_execute_refuses_while_the_first_runs(tmp_path):
    plan(tmp_path, sleep=1.5)
    first = subprocess.Popen(
        [sys.executable, "-m", "cpx", "execute", str(tmp_path), "--quiet"],
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        running = []
        while time.monotonic() < deadline and not running:
            time.sleep(0.1)
            st = cpx("status", str(tmp_path), "--json")
            if st.returncode == 0:
                running = [s["id"] for s in json.loads(st.stdout)["stages"] if s["state"] == "running"]
        assert running == ["data/a"]
        second = cpx("execute", str(tmp_path))
        assert second.returncode == 3
        assert "is being executed by another cpx process (pid " in second.stderr
        assert first.wait(timeout=60) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def test_compile_refuses_a_running_folder_and_stages_read_the_executed_plan(tmp_path):
    from cpx.plan import Plan

    plan(tmp_path, sleep=1.5)
    first = subprocess.Popen(
        [sys.executable, "-m", "cpx", "execute", str(tmp_path), "--quiet"],
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (tmp_path / "logs" / "data" / "a.log").exists():
            time.sleep(0.1)
        before = (tmp_path / "plan.json").read_bytes()
        demo = ROOT / "tests" / "data" / "demo_small.yaml"
        r = cpx("compile", str(demo), "--out", str(tmp_path))
        assert r.returncode == 3, r.stderr
        assert f"is being executed by another cpx process (pid {first.pid} on " in r.stderr
        assert "plan.json is left as it is" in r.stderr
        assert (tmp_path / "plan.json").read_bytes() == before
        # A writer that ignores the lock: the running stages still read the plan that was loaded.
        other = Plan.load(tmp_path)
        other.spec_hash = "1" * 64
        other.save(tmp_path / "plan.json")
        assert first.wait(timeout=60) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    seen = {}
    for m in (tmp_path / "stages").glob("*/*/manifest.json"):
        d = json.loads(m.read_text())
        seen[d["id"]] = d["info"]["plan_spec_hash"]
    assert seen == {s: "0" * 64 for s in ("data/a", "data/b", "scan/a", "scan/b")}


def test_bad_arguments_are_clear(tmp_path):
    r = cpx("execute", str(tmp_path))
    assert r.returncode == 2 and "no plan here; run `cpx compile SPEC` first" in r.stderr
    plan(tmp_path)
    r = cpx("execute", str(tmp_path), "--devices", "gpu0")
    assert r.returncode == 2 and "--devices 'gpu0'" in r.stderr
    r = cpx("execute", str(tmp_path), "--executor", "ray", "--devices", "0,1")
    assert r.returncode == 2 and "Ray assigns the GPUs" in r.stderr
    r = cpx("execute", str(tmp_path), "--retry", "-1")
    assert r.returncode == 2 and "--retry" in r.stderr
    assert not (tmp_path / "stages").exists()
