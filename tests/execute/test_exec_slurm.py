"""The Slurm executor on a real one-node Slurm (the session's `slurm_cluster`), tiny model, CPU.

- the small demo with two worker jobs gives the local executor's results;
- a worker job cancelled (scancel) in the middle of a stage: the stage runs again on the other
  worker and the results are the same;
- the driver killed with SIGKILL, then SIGTERM, then SIGINT, each followed by a new
  `cpx execute`: no finished stage runs again, the lock refuses a second driver, and no job is
  left in the queue;
- a bad partition or an unreachable controller is an error before any job is submitted.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from _demo import FLEET_OFF, REAL, assert_same_results, compile_demo
from _exec_helpers import cpx_env, cpx_run, manifests
from _exec_runners import ledger_lines

pytestmark = pytest.mark.slow

SLURM = ("--executor", "slurm", "--workers", "2", "--quiet", *FLEET_OFF)


def slurm_execute(cluster, run: Path, ledger: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cpx", "execute", str(run), *SLURM, *extra],
        env=cpx_env(CPX_TEST_LEDGER=str(ledger), **REAL, **cluster.env()),
        capture_output=True,
        text=True,
        timeout=600,
    )


def slurm_popen(cluster, run: Path, ledger: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cpx", "execute", str(run), *SLURM],
        env=cpx_env(CPX_TEST_LEDGER=str(ledger), **REAL, **cluster.env()),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def events(run: Path) -> list[dict]:
    path = run / ".cpx" / "events.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def wait_for(cond, what: str, proc: subprocess.Popen | None = None, timeout: float = 300):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the driver ended ({proc.returncode}) before {what}:\n{proc.stdout.read()}")  # type: ignore[union-attr]
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def wait_empty(cluster, timeout: float = 60) -> None:
    wait_for(lambda: not cluster.jobs(), "the queue to empty", timeout=timeout)


def test_demo_on_slurm_equals_local(tmp_path, reference, slurm_cluster):
    ref, _ = reference
    run = tmp_path / "run"
    compile_demo(run)
    r = slurm_execute(slurm_cluster, run, tmp_path / "ledger.txt")
    assert r.returncode == 0, r.stdout + r.stderr
    assert slurm_cluster.jobs() == {}, "a worker job outlived the driver"
    assert not (run / ".cpx" / "slurm" / "jobs.json").exists()
    assert_same_results(run, ref)
    ms = manifests(run)
    assert {m["executor"]["kind"] for m in ms.values()} == {"slurm"}
    jobs = {m["executor"]["slurm"]["job_id"] for m in ms.values()}
    assert len(jobs) == 2, jobs  # both workers took stages
    started = {e["device"] for e in events(run) if e["event"] == "started"}
    assert started == {f"job{j}" for j in jobs}
    host = slurm_cluster.run("sinfo", "-h", "-o", "%n").stdout.strip()
    assert {(m["executor"]["slurm"]["node"], m["executor"]["slurm"]["partition"]) for m in ms.values()} == {
        (host, "debug")
    }
    # Each worker kept one model pool: one process per job, whatever the stages.
    assert len({m["executor"]["pid"] for m in ms.values()}) == 2
    again = slurm_execute(slurm_cluster, run, tmp_path / "ledger.txt")
    assert again.returncode == 0 and "0 ran, 33 already done" in again.stdout, again.stdout + again.stderr


def test_scancel_of_a_worker_mid_stage(tmp_path, reference, slurm_cluster):
    ref, _ = reference
    run, ledger = tmp_path / "run", tmp_path / "ledger.txt"
    compile_demo(run)
    target = "generate/s42"  # the longest stage (seconds), and the first
    p = slurm_popen(slurm_cluster, run, ledger)
    try:
        wait_for(lambda: any(ln[:2] == ["start", target] for ln in ledger_lines(ledger)), f"{target} to start", p)
        (job,) = [
            e["device"].removeprefix("job") for e in events(run) if e["event"] == "started" and e["stage"] == target
        ]
        assert slurm_cluster.run("scancel", job).returncode == 0
        out, _ = p.communicate(timeout=600)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, out
    assert [ln[1] for ln in ledger_lines(ledger) if ln[0] == "start"].count(target) == 2
    m = manifests(run)[target]
    assert m["executor"]["slurm"]["job_id"] != job and m["attempt"] == 1
    lost = [e for e in events(run) if e["event"] == "failed" and e["stage"] == target]
    assert len(lost) == 1 and f"worker job {job} on " in lost[0]["error"] and "ended (CANCELLED)" in lost[0]["error"]
    wait_empty(slurm_cluster, timeout=10)
    assert_same_results(run, ref)


def test_driver_killed_then_executed_again(tmp_path, reference, slurm_cluster):
    """SIGKILL (jobs left behind, cancelled by the next driver), then SIGTERM, then SIGINT."""
    ref, _ = reference
    run, ledger = tmp_path / "run", tmp_path / "ledger.txt"
    compile_demo(run)
    snapshots = []
    for i, sig in enumerate((signal.SIGKILL, signal.SIGTERM, signal.SIGINT)):
        before = len(manifests(run))
        p = slurm_popen(slurm_cluster, run, ledger)
        try:
            wait_for(lambda: len(manifests(run)) >= before + 4, "four more stages to finish", p)  # noqa: B023
            if i == 0:
                locked = cpx_run("execute", str(run), *SLURM, **slurm_cluster.env())
                assert locked.returncode == 3 and "being executed by another cpx process" in locked.stderr
                jobs = set(json.loads((run / ".cpx" / "slurm" / "jobs.json").read_text())["jobs"])
                assert len(jobs) == 2
            p.send_signal(sig)
            out, _ = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
        snapshots.append({k: json.dumps(v, sort_keys=True) for k, v in manifests(run).items()})
        if sig == signal.SIGKILL:
            # Nothing cancelled them: the workers are still in the queue, recorded in the run.
            assert jobs <= set(slurm_cluster.jobs()), slurm_cluster.jobs()
        else:
            assert p.returncode == 130, out
            assert slurm_cluster.jobs() == {}, f"{sig.name} left jobs behind"
            assert not (run / ".cpx" / "slurm" / "jobs.json").exists()
    assert len(snapshots[-1]) < 33, "the plan finished before the last signal"
    final = slurm_execute(slurm_cluster, run, ledger)
    assert final.returncode == 0, final.stdout + final.stderr
    assert slurm_cluster.jobs() == {}
    cancelled = [e for e in events(run) if e["event"] == "slurm_jobs_cancelled"]
    assert [set(e["jobs"]) for e in cancelled] == [jobs]  # only the SIGKILL left jobs to cancel
    ms = manifests(run)
    for snap in snapshots:
        for sid, text in snap.items():
            assert json.dumps(ms[sid], sort_keys=True) == text, f"{sid} was redone"
    starts = [ln for ln in ledger_lines(ledger) if ln[0] == "start"]
    for sid, m in ms.items():
        committed = datetime.fromisoformat(m["timings"]["committed"]).timestamp()
        assert not [ln for ln in starts if ln[1] == sid and float(ln[2]) > committed], f"{sid} ran twice"
    assert_same_results(run, ref)


def test_bad_partition_and_unreachable_controller(tmp_path, slurm_cluster):
    run = tmp_path / "run"
    compile_demo(run)
    bad = cpx_run("execute", str(run), *SLURM, "--partition", "nosuch", **slurm_cluster.env())
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "Slurm refuses the worker job (--partition=nosuch): invalid partition specified: nosuch" in bad.stderr
    assert slurm_cluster.jobs() == {}
    written = [p for p in ("stages", "logs", ".cpx/slurm", ".cpx/events.jsonl") if (run / p).exists()]
    assert written == []  # nothing written
    # sbatch's own environment gives the defaults: SBATCH_PARTITION is checked the same way.
    env_bad = cpx_run("execute", str(run), *SLURM, SBATCH_PARTITION="nosuch2", **slurm_cluster.env())
    assert env_bad.returncode == 2 and "invalid partition specified: nosuch2" in env_bad.stderr, env_bad.stderr

    conf = tmp_path / "elsewhere.conf"
    text = slurm_cluster.conf.read_text()
    port = next(ln for ln in text.splitlines() if ln.startswith("SlurmctldPort="))
    conf.write_text(text.replace(port, "SlurmctldPort=9"))  # nothing listens on the discard port
    down = cpx_run("execute", str(run), *SLURM, SLURM_CONF=str(conf))
    assert down.returncode == 2, down.stdout + down.stderr
    assert f"the Slurm controller does not answer (SLURM_CONF={conf})" in down.stderr
    assert slurm_cluster.jobs() == {}
    assert not (run / "stages").exists()
