"""Fleets: ready train stages of one fleet key handed to one worker together, committed member by member.

The plans' train stages are real `train` stages of the plan format (their fleet keys come from
`cpx.stages.train.fleet_key`), run by the test runners (`_exec_runners.run`, `run_fleet`).
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest
from _demo import assert_same_results, compile_demo
from _demo import execute as execute_demo
from _exec_helpers import cpx_popen, cpx_run, manifests
from _exec_runners import ledger_lines, make_plan, resolve
from cpx.execute import FleetError, Store, execute, parse_fleet, run_status

SHAPE = {
    "model": {"base": {"kind": "tiny", "id": "t"}, "adapters": []},
    "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]},
    "optim": {"precision": "fp32"},
}


def fleet_plan(n: int, *, other_shape: int = 0, **member: dict) -> list[dict]:
    """data -> n train stages of one LoRA shape (+ `other_shape` of another) -> analyze.

    `member` patches the params of train/i by the key `t<i>`."""
    stages = [{"id": "data", "kind": "dataset", "params": {"rows": 3}}]
    for i in range(n + other_shape):
        lora = SHAPE["lora"] if i < n else {**SHAPE["lora"], "r": 8}
        params = {**SHAPE, "lora": lora, "seed": 100 + i, "rows": 2 + i, **member.get(f"t{i}", {})}
        stages.append({"id": f"train/{i}", "kind": "train", "deps": ["data"], "params": params, "labels": {"i": i}})
    stages.append({"id": "analyze", "kind": "analyze", "deps": [f"train/{i}" for i in range(n + other_shape)]})
    return stages


def run(run_dir: Path, **kw):
    kw.setdefault("devices", "cpu")
    kw.setdefault("quiet", True)
    return execute(run_dir, resolver=resolve, **kw)


def fleet_lines(ledger: Path) -> list[list[str]]:
    """The fleet runner's ledger lines: `fleet <size> <member ids> <worker pid>`."""
    return [ln for ln in ledger_lines(ledger) if ln[0] == "fleet"]


def fleets(ledger: Path) -> list[list[str]]:
    """The members of each fleet the fleet runner was called with, in order."""
    return [ln[2:-1] for ln in fleet_lines(ledger)]


def events(run_dir: Path, kind: str) -> list[dict]:
    return [e for e in Store(run_dir).read_events() if e["event"] == kind]


def test_ready_trains_of_one_shape_run_as_one_fleet_and_commit_as_each_is_done(tmp_path, ledger):
    make_plan(tmp_path, fleet_plan(3, other_shape=1))
    summary = run(tmp_path)
    assert summary.ok
    assert fleets(ledger) == [["train/0", "train/1", "train/2"]]  # train/3 has another LoRA rank: alone
    ms = manifests(tmp_path)
    fleet = ms["train/0"]["executor"]["fleet"]
    assert fleet["size"] == 3 and fleet["members"] == ["train/0", "train/1", "train/2"]
    for i in range(3):
        m = ms[f"train/{i}"]
        assert m["executor"]["fleet"] == fleet and m["info"]["fleet_size"] == 3
        assert m["seeds"]["seed"] == 100 + i and m["seeds"]["source"] == "params.seed"
        # A member's time runs from the fleet's start to its own end: later members took longer.
        log = (tmp_path / "logs" / "train" / f"{i}.log").read_text()
        assert f"stage train/{i} writing {2 + i} rows" in log and f"in fleet {fleet['id']} of 3" in log
    assert ms["train/0"]["timings"]["started"] == ms["train/2"]["timings"]["started"]
    assert ms["train/0"]["timings"]["seconds"] < ms["train/2"]["timings"]["seconds"]
    assert ms["train/0"]["timings"]["committed"] < ms["train/2"]["timings"]["committed"]
    assert "fleet" not in ms["train/3"]["executor"] and "fleet" not in ms["data"]["executor"]
    # What the fleet printed is in its own log, which the members' logs name.
    out = (tmp_path / "logs" / "_fleet" / f"{fleet['id']}.log").read_text()
    assert "fleet of 3" in out and "stdout of train/1" in out and "fd 2 of train/2" in out
    started = [e for e in events(tmp_path, "started") if e.get("fleet")]
    assert sorted(e["stage"] for e in started) == ["train/0", "train/1", "train/2"]
    assert {e["fleet_size"] for e in started} == {3}


def test_a_fleet_gives_what_one_stage_at_a_time_gives(tmp_path, ledger):
    a, b = tmp_path / "a", tmp_path / "b"
    make_plan(a, fleet_plan(4))
    make_plan(b, fleet_plan(4))
    assert run(a).ok and run(b, fleet="off").ok
    assert len(fleets(ledger)) == 1
    ma, mb = manifests(a), manifests(b)
    assert not any("fleet" in m["executor"] for m in mb.values())
    assert {k: v["outputs"] for k, v in ma.items()} == {k: v["outputs"] for k, v in mb.items()}
    assert {k: (v["seeds"]["seed"], v["seeds"]["source"]) for k, v in ma.items()} == {
        k: (v["seeds"]["seed"], v["seeds"]["source"]) for k, v in mb.items()
    }


def test_fleet_n_caps_the_fleet_size(tmp_path, ledger):
    make_plan(tmp_path, fleet_plan(5))
    assert run(tmp_path, fleet=2).ok
    assert fleets(ledger) == [["train/0", "train/1"], ["train/2", "train/3"]]  # train/4 runs alone
    assert "fleet" not in manifests(tmp_path)["train/4"]["executor"]


def test_free_workers_share_the_ready_stages_of_a_fleet_key(tmp_path, ledger):
    make_plan(tmp_path, fleet_plan(5, **{f"t{i}": {"sleep": 0.2} for i in range(5)}))
    assert run(tmp_path, devices="cpu:2").ok
    # `data` ran on one worker; when it was done both were free: a fleet of 3 and one of 2.
    assert sorted(len(f) for f in fleets(ledger)) == [2, 3]
    workers = {
        m["executor"]["fleet"]["id"]: m["executor"]["worker"]
        for m in manifests(tmp_path).values()
        if "fleet" in m["executor"]
    }
    assert sorted(workers.values()) == [0, 1]


def test_out_of_memory_halves_the_fleet_never_the_members_batch(tmp_path, ledger):
    make_plan(tmp_path, fleet_plan(4, **{f"t{i}": {"fleet_oom_above": 2} for i in range(4)}))
    assert run(tmp_path).ok  # no --retry: halvings are not failures
    assert [len(f) for f in fleets(ledger)] == [4, 2, 2]
    retries = events(tmp_path, "fleet_oom_retry")
    assert sorted(e["stage"] for e in retries) == [f"train/{i}" for i in range(4)]
    assert {e["fleet_cap"] for e in retries} == {2}
    assert events(tmp_path, "oom_retry") == []
    ms = manifests(tmp_path)
    assert {ms[f"train/{i}"]["executor"]["fleet"]["size"] for i in range(4)} == {2}
    assert {ms[f"train/{i}"]["attempt"] for i in range(4)} == {1}
    log = (tmp_path / "logs" / "train" / "0.log").read_text()
    assert "OutOfMemoryError: CUDA out of memory in a fleet of 4" in log
    assert "batch size limited" not in log


def test_at_fleet_size_one_the_batch_is_halved_as_for_a_stage_alone(tmp_path, ledger):
    member = {"fleet_oom_above": 1, "oom_above": 8, "optim": {**SHAPE["optim"], "batch_size": 32}}
    make_plan(tmp_path, fleet_plan(2, t0=member, t1=member))
    assert run(tmp_path).ok
    assert [len(f) for f in fleets(ledger)] == [2]  # then each alone
    assert [e["fleet_cap"] for e in events(tmp_path, "fleet_oom_retry")] == [1, 1]
    limits = [(e["stage"], e["batch_limit"]) for e in events(tmp_path, "oom_retry")]
    assert sorted(limits) == [("train/0", 8), ("train/0", 16), ("train/1", 8), ("train/1", 16)]
    ms = manifests(tmp_path)
    assert not any("fleet" in ms[f"train/{i}"]["executor"] for i in range(2))
    assert "batch size limited to 8" in (tmp_path / "logs" / "train" / "1.log").read_text()


def test_a_member_that_fails_alone_fails_only_itself_and_its_users(tmp_path, ledger):
    stages = fleet_plan(3, t1={"fail": True})
    stages.append({"id": "after/1", "kind": "scan", "deps": ["train/1"]})
    make_plan(tmp_path, stages)
    summary = run(tmp_path)  # without --keep-going: the rest of the fleet still commits
    assert [f.id for f in summary.failed] == ["train/1"] and "told to fail" in summary.failed[0].error
    assert sorted(summary.blocked) == ["after/1", "analyze"]
    assert sorted(summary.ran) == ["data", "train/0", "train/2"]
    log = (tmp_path / "logs" / "train" / "1.log").read_text()
    assert "RuntimeError: stage train/1 was told to fail" in log
    states = {s.id: s.state for s in run_status(tmp_path)}
    assert states["train/0"] == states["train/2"] == "done" and states["train/1"] == "failed"


def test_fleet_shown_by_status(tmp_path, ledger):
    make_plan(tmp_path, fleet_plan(2))
    assert run(tmp_path).ok
    rows = {r.id: r for r in run_status(tmp_path)}
    assert rows["train/0"].fleet_size == 2 and rows["train/0"].fleet == rows["train/1"].fleet
    assert rows["data"].fleet is None
    r = cpx_run("status", str(tmp_path))
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if " train/0 " in ln)
    assert f"fleet {rows['train/0'].fleet} of 2" in line


def test_bad_fleet_values_are_clear_errors(tmp_path, ledger):
    assert parse_fleet("auto") is None and parse_fleet("off") == 1 and parse_fleet("3") == 3 and parse_fleet(2) == 2
    for bad in ("0", "-1", "x", "", "2.5", 0, True):
        with pytest.raises(FleetError, match="expected auto, off, or the most stages"):
            parse_fleet(bad)
    make_plan(tmp_path, fleet_plan(2))
    with pytest.raises(FleetError):
        run(tmp_path, fleet="many")
    with pytest.raises(FleetError, match="the Ray executor trains one stage at a time"):
        run(tmp_path, executor="ray", fleet=4)
    assert not (tmp_path / "stages").exists()  # nothing was written
    r = cpx_run("execute", str(tmp_path), "--fleet", "zero")
    assert r.returncode == 2 and "--fleet 'zero': expected auto, off" in r.stderr
    assert ledger_lines(ledger) == []


def committed_trains(run_dir: Path) -> set[str]:
    return {sid for sid in manifests(run_dir) if sid.startswith("train/")}


def wait_until(cond, what: str, proc, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"cpx ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.02)


@pytest.mark.slow
def test_sigkill_of_the_driver_then_of_the_worker_mid_fleet_loses_only_the_members_in_flight(tmp_path):
    slow = {"chunks": 4, "sleep": 0.2}
    plan = fleet_plan(6, **{f"t{i}": slow for i in range(6)})
    ref, run_dir, ledger = tmp_path / "ref", tmp_path / "run", tmp_path / "ledger.txt"
    make_plan(ref, plan)
    make_plan(run_dir, plan)
    r = cpx_run("execute", str(ref), "--devices", "cpu", "--quiet", "--fleet", "off")
    assert r.returncode == 0, r.stderr

    # 1. The driver is killed while the fleet of six is on its third member.
    p = cpx_popen("execute", str(run_dir), "--devices", "cpu", "--quiet", CPX_TEST_LEDGER=str(ledger))
    wait_until(lambda: len(committed_trains(run_dir)) >= 2, "two members committed", p)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    first = committed_trains(run_dir)
    snap = {k: json.dumps(v, sort_keys=True) for k, v in manifests(run_dir).items()}
    assert fleets(ledger) == [[f"train/{i}" for i in range(6)]]
    assert 2 <= len(first) < 6, first
    assert all(manifests(run_dir)[sid]["executor"]["fleet"]["size"] == 6 for sid in first)

    # 2. Run again: a fleet of the members not done; its worker is killed after one more commit.
    p = cpx_popen("execute", str(run_dir), "--devices", "cpu", "--quiet", CPX_TEST_LEDGER=str(ledger))
    wait_until(lambda: len(fleets(ledger)) == 2, "the second fleet", p)
    assert fleets(ledger)[1] == [f"train/{i}" for i in range(6) if f"train/{i}" not in first]
    wait_until(lambda: len(committed_trains(run_dir)) > len(first), "a member of the second fleet committed", p)
    worker = int(fleet_lines(ledger)[1][-1])
    os.kill(worker, signal.SIGKILL)
    assert p.wait(timeout=60) == 1  # the members in flight failed with their worker
    second = committed_trains(run_dir)
    assert first < second < {f"train/{i}" for i in range(6)}
    failed = {e["stage"] for e in events(run_dir, "failed")}
    assert failed and failed.isdisjoint(second)

    # 3. Run again: only what is not done runs; nothing committed ran again or changed.
    final = cpx_run("execute", str(run_dir), "--devices", "cpu", "--quiet", CPX_TEST_LEDGER=str(ledger))
    assert final.returncode == 0, final.stdout + final.stderr
    rest = [f"train/{i}" for i in range(6) if f"train/{i}" not in second]
    assert fleets(ledger)[2:] == ([rest] if len(rest) > 1 else [])  # one stage left runs alone
    ms = manifests(run_dir)
    for sid, text in snap.items():
        assert json.dumps(ms[sid], sort_keys=True) == text, f"{sid} was redone"
    for sid, m in ms.items():
        committed = datetime.fromisoformat(m["timings"]["committed"]).timestamp()
        again = [ln for ln in ledger_lines(ledger) if ln[:2] == ["start", sid] and float(ln[2]) > committed]
        assert again == [], f"{sid} ran again after it was committed"
    assert {k: v["outputs"] for k, v in ms.items()} == {k: v["outputs"] for k, v in manifests(ref).items()}
    assert not list(run_dir.glob("stages/*/.tmp-*"))


@pytest.mark.slow
def test_demo_with_fleets_gives_the_results_of_one_stage_at_a_time(tmp_path, reference):
    """The small demo with cpx's real trainer on the tiny model, `--fleet auto`, against the
    session's reference run (`--fleet off`): on the CPU a member trains bit for bit as alone, so
    every stage's output files and every results table are the same."""
    ref, _ = reference
    run_dir, ledger = tmp_path / "fleets", tmp_path / "ledger.txt"
    compile_demo(run_dir)
    r = execute_demo(run_dir, ledger, "--fleet", "auto")
    assert r.returncode == 0, r.stdout + r.stderr
    trained = fleets(ledger)
    assert trained and all(len(f) >= 2 for f in trained)
    ms = manifests(run_dir)
    assert {sid for f in trained for sid in f} == {sid for sid, m in ms.items() if "fleet" in m["executor"]}
    assert fleets(ref / "ledger.txt") == [] and set(manifests(ref)) == set(ms)
    assert_same_results(run_dir, ref)


@pytest.mark.slow
def test_fleets_on_slurm_and_a_job_cancelled_mid_fleet(tmp_path, slurm_cluster):
    """One Slurm worker job runs the fleet; scancel it after one member is committed: the members
    in flight run again, as a fleet, on the job that replaces it."""
    make_plan(tmp_path, fleet_plan(4, **{f"t{i}": {"chunks": 4, "sleep": 0.25} for i in range(4)}))
    ledger = tmp_path / "ledger.txt"
    env = {"CPX_TEST_LEDGER": str(ledger), **slurm_cluster.env()}
    args = ("execute", str(tmp_path), "--executor", "slurm", "--workers", "1", "--quiet")
    p = cpx_popen(*args, **env)
    try:
        wait_until(lambda: len(committed_trains(tmp_path)) >= 1, "a member committed", p, timeout=300)
        (job,) = {
            m["executor"]["slurm"]["job_id"] for sid, m in manifests(tmp_path).items() if sid.startswith("train/")
        }
        assert slurm_cluster.run("scancel", job).returncode == 0
        assert p.wait(timeout=300) == 0
    finally:
        if p.poll() is None:
            p.kill()
    first = fleets(ledger)[0]
    assert first == [f"train/{i}" for i in range(4)]
    ms = manifests(tmp_path)
    by_job = {sid: ms[sid]["executor"]["slurm"]["job_id"] for sid in first}
    kept = sorted(sid for sid, j in by_job.items() if j == job)
    rerun = sorted(sid for sid, j in by_job.items() if j != job)
    assert kept and rerun, by_job
    assert all(ms[sid]["executor"]["fleet"]["size"] == 4 for sid in kept)
    assert fleets(ledger)[1:] == ([rerun] if len(rerun) > 1 else [])
    lost = {e["stage"] for e in events(tmp_path, "failed")}
    assert lost == set(rerun) and all(ms[sid]["attempt"] == 1 for sid in first)


def test_the_displays_show_a_fleet_and_a_bar_per_member(tmp_path, ledger, capsys):
    import io

    from cpx.execute._progress import LineDisplay, RichDisplay

    class Watched(RichDisplay):
        """Notes which bars are up at each progress report."""

        shown: list[set[str]] = []

        def stage_progress(self, *args, **kw) -> None:  # type: ignore[no-untyped-def]
            super().stage_progress(*args, **kw)
            self.shown.append({t.description.strip() for t in self.progress.tasks})

    make_plan(tmp_path / "a", fleet_plan(3))
    make_plan(tmp_path / "b", fleet_plan(3))
    assert execute(tmp_path / "a", devices="cpu", resolver=resolve, display=Watched()).ok
    err = capsys.readouterr().err
    assert "cpu: a fleet of 3 trains together: train/0, train/1, train/2" in err and "cpu: idle" in err
    # A bar per member while the fleet runs; a finished member's bar goes.
    during = [bars for bars in Watched.shown if "cpu: train/2" in bars]
    assert {"cpu: train/0", "cpu: train/1"} <= during[0] and "cpu: idle" not in during[0]
    assert "cpu: train/0" not in during[-1]
    lines = io.StringIO()
    assert execute(tmp_path / "b", devices="cpu", resolver=resolve, display=LineDisplay(lines)).ok
    fleet = manifests(tmp_path / "b")["train/0"]["executor"]["fleet"]["id"]
    assert f"cpu: a fleet of 3 trains together ({fleet}): train/0, train/1, train/2" in lines.getvalue()
    assert "train/2 done in" in lines.getvalue()
