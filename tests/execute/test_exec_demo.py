"""The demo plan (specs/demo.yaml, made smaller with -s overrides) with cpx's real stage runners.

- ten SIGKILLs at random moments of its execution, each followed by a resume: the outputs and
  results equal an uninterrupted run's, and no stage committed before a kill ran again;
- the Ray executor on a local 2-CPU cluster gives the local executor's results.

One uninterrupted local run (the session's `reference` fixture, in conftest.py) is the reference for both.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime

import pytest
from _demo import FLEET_OFF, REAL, assert_same_results, compile_demo, execute
from _exec_runners import ledger_lines
from _exec_helpers import HERE, SRC, cpx_env, manifests


def test_demo_survives_ten_sigkills(tmp_path, reference):
    ref, _ = reference
    run, ledger = tmp_path / "run", tmp_path / "ledger.txt"
    compile_demo(run)
    rng = random.Random(7)
    ref_ms = manifests(ref)
    order = sorted(ref_ms, key=lambda sid: ref_ms[sid]["timings"]["started"])
    snapshots, kills = [], 0
    for i in range(10):
        # Kill i lands inside a stage picked at random among the next not-done stages (spread so
        # that the ten kills cover the whole plan), at a random moment of its run time; the
        # first kill may also land in start-up.
        done = set(manifests(run))
        remaining = [sid for sid in order if sid not in done]
        target = rng.choice(remaining[: max(1, len(remaining) // (10 - i))])
        last = target == remaining[-1]
        seen = len(ledger_lines(ledger))
        p = subprocess.Popen(
            [sys.executable, "-m", "cpx", "execute", str(run), "--devices", "cpu", "--quiet", *FLEET_OFF],
            env=cpx_env(CPX_TEST_LEDGER=str(ledger), **REAL),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if i == 0 and rng.random() < 0.5:
            time.sleep(rng.uniform(0.0, 2.0))
        else:
            deadline = time.monotonic() + 600
            while (
                p.poll() is None
                and time.monotonic() < deadline
                and not any(ln[:2] == ["start", target] for ln in ledger_lines(ledger)[seen:])
            ):
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.9 if last else 1.1) * ref_ms[target]["timings"]["seconds"])
        if p.poll() is not None:
            break
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        kills += 1
        snapshots.append({k: json.dumps(v, sort_keys=True) for k, v in manifests(run).items()})
    assert kills == 10
    assert 0 < len(snapshots[-1]) < 33, len(snapshots[-1])
    final = execute(run, ledger)
    assert final.returncode == 0, final.stdout + final.stderr

    starts = [ln for ln in ledger_lines(ledger) if ln[0] == "start"]
    assert len(starts) > 33, "no kill landed while a stage was running"
    ms = manifests(run)
    for snap in snapshots:
        for sid, text in snap.items():
            assert json.dumps(ms[sid], sort_keys=True) == text, f"{sid} was redone"
    for sid, m in ms.items():
        committed = datetime.fromisoformat(m["timings"]["committed"]).timestamp()
        assert not [ln for ln in starts if ln[1] == sid and float(ln[2]) > committed], f"{sid} ran twice"
    assert_same_results(run, ref)


def test_demo_on_ray_equals_local(tmp_path, reference, monkeypatch):
    ray = pytest.importorskip("ray")
    ref, _ = reference
    run = tmp_path / "ray"
    compile_demo(run)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SRC), str(HERE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("CPX_STAGE_RESOLVER", "_exec_runners:resolve_real")
    monkeypatch.setenv("CPX_TEST_LEDGER", str(tmp_path / "ledger.txt"))
    monkeypatch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    from cpx.execute import execute as execute_in_process

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        summary = execute_in_process(run, executor="ray", quiet=True)
    finally:
        ray.shutdown()
    assert summary.ok, summary.to_json()
    assert {m["executor"]["kind"] for m in manifests(run).values()} == {"ray"}
    assert_same_results(run, ref)
