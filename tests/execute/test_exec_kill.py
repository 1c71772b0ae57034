"""SIGKILL the executor at random moments, resume each time: the end state equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq
from _exec_runners import ledger_lines, make_plan
from _exec_helpers import cpx_popen, cpx_run, manifests


def slow_plan() -> list[dict]:
    """35 stages; each writes its text output in pieces with pauses, so kills land mid-write."""
    slow = {"chunks": 4, "sleep": 0.06}
    n = 16
    stages = [{"id": f"data/{i}", "kind": "dataset", "params": {"rows": 3 + i, **slow}} for i in range(n)]
    stages += [
        {
            "id": f"scan/{i}",
            "kind": "scan",
            "deps": [f"data/{i}", f"data/{(i + 1) % n}"],
            "params": dict(slow),
            "labels": {"arm": f"arm{i}"},
        }
        for i in range(n)
    ]
    stages += [
        {"id": "analyze/x", "kind": "analyze", "deps": [f"scan/{i}" for i in range(0, n, 2)], "params": dict(slow)},
        {"id": "analyze/y", "kind": "analyze", "deps": [f"scan/{i}" for i in range(1, n, 2)], "params": dict(slow)},
        {"id": "report", "kind": "report", "deps": ["analyze/x", "analyze/y"], "params": {}},
    ]
    return stages


def alive_children(pid_list: list[int]) -> list[int]:
    out = []
    for pid in pid_list:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            continue
        if stat.split(") ")[-1][0] != "Z":
            out.append(pid)
    return out


def test_ten_sigkills_then_resume_equal_an_uninterrupted_run(tmp_path):
    rng = random.Random(20261125)
    ref, run = tmp_path / "ref", tmp_path / "run"
    make_plan(ref, slow_plan())
    make_plan(run, slow_plan())
    ledger = tmp_path / "ledger.txt"
    r = cpx_run("execute", str(ref), "--devices", "cpu:2", "--quiet", CPX_TEST_LEDGER=str(tmp_path / "ref-ledger"))
    assert r.returncode == 0, r.stderr

    kills, snapshots, worker_pids = 0, [], set()
    while kills < 10:
        seen = len(ledger_lines(ledger))
        p = cpx_popen("execute", str(run), "--devices", "cpu:2", "--quiet", CPX_TEST_LEDGER=str(ledger))
        if rng.random() < 0.2:  # somewhere in start-up (plan load, verification, worker spawn)
            time.sleep(rng.uniform(0.0, 1.0))
        else:  # somewhere in the stages: mid-write, between stages, mid-commit
            deadline = time.monotonic() + 60
            while len(ledger_lines(ledger)) == seen and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.5))
        if p.poll() is not None:
            break
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        kills += 1
        worker_pids |= {int(ln[3]) for ln in ledger_lines(ledger) if ln[0] == "start"}
        snapshots.append({k: json.dumps(v, sort_keys=True) for k, v in manifests(run).items()})
    assert kills == 10, "the plan finished before ten kills; make it slower"
    # The killed runs made progress, and left work for the last one.
    assert 0 < len(snapshots[-1]) < len(slow_plan()), len(snapshots[-1])
    final = cpx_run("execute", str(run), "--devices", "cpu:2", "--quiet", CPX_TEST_LEDGER=str(ledger))
    assert final.returncode == 0, final.stdout + final.stderr

    # Workers die with their scheduler: none is left running after the kills.
    time.sleep(0.5)
    assert alive_children(sorted(worker_pids)) == []
    # The kills interrupted stages in flight (which then ran again from scratch).
    starts = [ln for ln in ledger_lines(ledger) if ln[0] == "start"]
    assert len(starts) > len(slow_plan()), "no kill landed while a stage was running"
    # A stage committed before a kill was never run again, and its manifest never changed.
    ms = manifests(run)
    for snap in snapshots:
        for sid, text in snap.items():
            assert json.dumps(ms[sid], sort_keys=True) == text, f"{sid} was redone"
    for sid, m in ms.items():
        committed = datetime.fromisoformat(m["timings"]["committed"]).timestamp()
        later = [ln for ln in starts if ln[1] == sid and float(ln[2]) > committed]
        assert later == [], f"{sid} ran again after it was committed"
    # Outputs and results equal the uninterrupted run's, byte for byte.
    mr = manifests(ref)
    assert {k: v["outputs"] for k, v in ms.items()} == {k: v["outputs"] for k, v in mr.items()}
    for table in ("marker_hits", "leakage", "metrics", "stats"):
        a = pq.read_table(run / "results" / f"{table}.parquet").sort_by([("stage", "ascending"), ("i", "ascending")])
        b = pq.read_table(ref / "results" / f"{table}.parquet").sort_by([("stage", "ascending"), ("i", "ascending")])
        assert a.equals(b), table
    assert (run / "report" / "report.md").read_text() == (ref / "report" / "report.md").read_text()
    assert not list(run.glob("stages/*/.tmp-*")) and not list(run.glob(".report-*"))
