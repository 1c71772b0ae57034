"""The executor end to end, in-process scheduler with real worker processes and real files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from _exec_helpers import manifests
from _exec_runners import ledger_lines, make_plan, resolve
from cpx.execute import RESULT_TABLES, RunLock, RunLocked, Store, execute, run_status
from cpx.plan import Plan


def diamond(**over):
    """gen -> two samples -> scan each -> analyze -> report; `over` patches params by id."""
    stages = [
        {"id": "gen", "kind": "generate", "params": {"rows": 3}},
        {
            "id": "sample/A",
            "kind": "sample",
            "deps": ["gen"],
            "params": {"rows": 5},
            "labels": {"arm": "A", "checkpoint": 0.5},
        },
        {"id": "sample/B", "kind": "sample", "deps": ["gen"], "params": {"rows": 4, "seed": 7}, "labels": {"arm": "B"}},
        {"id": "scan/A", "kind": "scan", "deps": ["sample/A"], "params": {}, "labels": {"arm": "A"}},
        {"id": "scan/B", "kind": "scan", "deps": ["sample/B"], "params": {}, "labels": {"arm": "B"}},
        {"id": "analyze", "kind": "analyze", "deps": ["scan/A", "scan/B"], "params": {}},
        {"id": "report", "kind": "report", "deps": ["analyze"], "params": {}},
    ]
    for s in stages:
        s["params"].update(over.get(s["id"], {}))
    return stages


def starts(ledger: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for ln in ledger_lines(ledger):
        if ln[0] == "start":
            out[ln[1]] = out.get(ln[1], 0) + 1
    return out


def run(run_dir: Path, **kw):
    kw.setdefault("devices", "cpu")
    kw.setdefault("quiet", True)
    return execute(run_dir, resolver=resolve, **kw)


def test_run_commits_every_stage_with_a_manifest_and_collects_results(tmp_path, ledger):
    plan = make_plan(tmp_path, diamond())
    summary = run(tmp_path)
    assert summary.ok and summary.exit_code == 0
    assert sorted(summary.ran) == sorted(s.id for s in plan.stages)
    store = Store(tmp_path)
    ms = manifests(tmp_path)
    for s in plan.stages:
        assert store.verify(s).done
        m = ms[s.id]
        assert m["hash"] == s.hash and m["params"] == s.params and m["labels"] == s.labels
        assert m["inputs"] == {d: plan.by_id()[d].hash for d in s.deps}
        # Every file in the folder but the manifest is listed with its checksum.
        files = sorted(
            p.relative_to(store.stage_dir(s)).as_posix()
            for p in store.stage_dir(s).rglob("*")
            if p.is_file() and p.name != "manifest.json"
        )
        assert sorted(m["outputs"]) == files
        for key in ("timings", "host", "device", "packages", "git", "seeds", "tracking"):
            assert key in m, key
        assert m["device"]["id"] == "cpu"
        assert set(m["git"]) == {"commit", "dirty", "path"}
        assert m["timings"]["seconds"] >= 0
    # A stage that does not touch ctx.models never imports cpx.models (the pool is lazy).
    assert not any(m["info"]["models_imported"] for m in ms.values())
    assert ms["sample/B"]["seeds"]["seed"] == 7 and ms["sample/B"]["seeds"]["source"] == "params.seed"
    assert ms["sample/A"]["seeds"]["source"] == "stage hash"
    assert ms["sample/A"]["seeds"]["torch"] == ms["sample/A"]["seeds"]["seed"]  # a torch kind

    # Results: each table is the concatenation of its stages' tables, labels included.
    comp = pq.read_table(tmp_path / "results" / "completions.parquet").to_pylist()
    expect = []
    for sid in ("sample/A", "sample/B"):
        expect += pq.read_table(store.stage_dir(plan.by_id()[sid]) / "completions.parquet").to_pylist()

    def key(r):
        return r["stage"], r["i"]

    assert sorted(comp, key=key) == sorted([{**r, "checkpoint": r.get("checkpoint")} for r in expect], key=key)
    for t in ("marker_hits", "leakage", "metrics", "stats"):
        assert (tmp_path / "results" / f"{t}.parquet").is_file()
    for t in ("cosines", "screen", "train_log"):  # no represent stage, no train stage
        assert not (tmp_path / "results" / f"{t}.parquet").exists()
    rec = json.loads((tmp_path / "results" / "manifest.json").read_text())
    assert set(rec["tables"]) == set(RESULT_TABLES) - {"cosines", "screen", "train_log"}
    assert rec["tables"]["completions"]["rows"] == 9
    assert (tmp_path / "report" / "report.md").read_text().startswith("# report of report")
    assert (tmp_path / "report" / "figures" / "f.txt").is_file()
    # The stage log holds the runner's log lines and what it printed.
    log = (tmp_path / "logs" / "sample" / "A.log").read_text()
    assert "writing 5 rows" in log and "stdout of sample/A" in log and "fd 2 of sample/A" in log


def test_resume_runs_nothing_twice_and_results_are_deterministic(tmp_path, ledger):
    a, b = tmp_path / "a", tmp_path / "b"
    make_plan(a, diamond())
    make_plan(b, diamond())
    run(a)
    before = starts(ledger)
    again = run(a)
    assert again.ran == [] and len(again.cached) == 7 and again.ok
    assert starts(ledger) == before
    run(b, devices="cpu:2")
    ma, mb = manifests(a), manifests(b)
    assert {k: v["outputs"] for k, v in ma.items()} == {k: v["outputs"] for k, v in mb.items()}
    assert {k: v["seeds"] for k, v in ma.items()} == {k: v["seeds"] for k, v in mb.items()}


def test_truncated_or_altered_outputs_are_detected_and_rerun(tmp_path, ledger):
    plan = make_plan(tmp_path, diamond())
    run(tmp_path)
    store = Store(tmp_path)
    by = plan.by_id()
    original = manifests(tmp_path)
    # Truncate one file; flip a byte of another, keeping its size; delete a manifest.
    p = store.stage_dir(by["sample/A"]) / "completions.parquet"
    p.write_bytes(p.read_bytes()[:-10])
    q = store.stage_dir(by["scan/B"]) / "data.txt"
    data = bytearray(q.read_bytes())
    data[0] ^= 1
    q.write_bytes(bytes(data))
    (store.stage_dir(by["gen"]) / "manifest.json").unlink()
    assert "bytes" in store.verify(by["sample/A"]).reason
    assert "sha256" in store.verify(by["scan/B"]).reason
    assert store.verify(by["scan/B"], checksums=False).done  # sizes alone cannot see a flip
    assert not store.verify(by["gen"]).done
    before = starts(ledger)
    summary = run(tmp_path)
    assert summary.ok
    assert sorted(summary.ran) == ["gen", "sample/A", "scan/B"]
    assert set(summary.rerun_reasons) == {"gen", "sample/A", "scan/B"}
    after = starts(ledger)
    assert {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)} == {
        "gen": 1,
        "sample/A": 1,
        "scan/B": 1,
    }
    # Re-running gives back the same bytes (same seeds), so dependents stay valid.
    now = manifests(tmp_path)
    assert {k: v["outputs"] for k, v in now.items()} == {k: v["outputs"] for k, v in original.items()}


def test_failure_keeps_traceback_and_keep_going_finishes_independent_branches(tmp_path, ledger):
    make_plan(tmp_path, diamond(**{"sample/B": {"fail": True}}))
    summary = run(tmp_path, keep_going=True)
    assert summary.exit_code == 1
    assert [f.id for f in summary.failed] == ["sample/B"]
    assert "told to fail" in summary.failed[0].error
    log = Path(summary.failed[0].log).read_text()
    assert "Traceback (most recent call last)" in log and "RuntimeError: stage sample/B was told to fail" in log
    assert sorted(summary.blocked) == ["analyze", "report", "scan/B"]
    assert sorted(summary.ran) == ["gen", "sample/A", "scan/A"]
    states = {s.id: (s.state, s.note) for s in run_status(tmp_path)}
    assert states["sample/B"][0] == "failed" and "told to fail" in states["sample/B"][1]
    assert states["scan/A"][0] == "done"
    assert states["analyze"] == ("pending", "blocked by failed sample/B")
    # Partial results: completions from the branch that finished, and the manifest says what is missing.
    rec = json.loads((tmp_path / "results" / "manifest.json").read_text())
    assert rec["tables"]["completions"]["missing"] == ["sample/B"]
    assert rec["tables"]["completions"]["rows"] == 5


def test_without_keep_going_nothing_new_starts_after_a_failure(tmp_path, ledger):
    make_plan(
        tmp_path,
        [
            {"id": "x", "kind": "dataset", "params": {"fail": True}},
            {"id": "y", "kind": "dataset", "params": {}},
            {"id": "z", "kind": "dataset", "deps": ["y"], "params": {}},
        ],
    )
    summary = run(tmp_path)
    assert [f.id for f in summary.failed] == ["x"]
    assert summary.ran == [] and summary.not_started == ["y", "z"]
    assert summary.exit_code == 1
    assert starts(ledger) == {"x": 1}


def test_retry_reruns_a_failing_stage(tmp_path, ledger):
    make_plan(tmp_path, [{"id": "flaky", "kind": "dataset", "params": {"fail_first": 2}}])
    first = run(tmp_path, retry=1)
    assert [f.id for f in first.failed] == ["flaky"] and first.failed[0].attempts == 2
    ledger.unlink()
    second = run(tmp_path, retry=2)
    assert second.ok and manifests(tmp_path)["flaky"]["attempt"] == 3
    assert starts(ledger) == {"flaky": 3}


def test_out_of_memory_in_sampling_retries_with_smaller_batches(tmp_path, ledger):
    make_plan(tmp_path, [{"id": "s", "kind": "sample", "params": {"oom_above": 64, "batch_size": 512}}])
    summary = run(tmp_path)  # no --retry: OOM halvings are not counted as failures
    assert summary.ok
    assert starts(ledger) == {"s": 4}  # limits None, 256, 128, 64
    log = (tmp_path / "logs" / "s.log").read_text()
    assert "batch size limited to 64 after an out-of-memory error" in log
    assert "OutOfMemoryError" in log


def test_a_worker_that_dies_fails_its_stage_and_is_replaced(tmp_path, ledger):
    make_plan(
        tmp_path,
        [
            {"id": "dies", "kind": "dataset", "params": {"die": True}},
            {"id": "fine", "kind": "dataset", "params": {}},
        ],
    )
    summary = run(tmp_path, keep_going=True)
    assert [f.id for f in summary.failed] == ["dies"]
    assert "died" in summary.failed[0].error
    assert summary.ran == ["fine"]


def test_scheduler_keeps_a_workers_model_loaded(tmp_path, ledger):
    def model(name):
        return {"base": {"kind": "tiny", "id": name}, "adapters": []}

    stages = [{"id": f"s{i}", "kind": "dataset", "params": {"model": model("AB"[i % 2]), "i": i}} for i in range(6)]
    make_plan(tmp_path, stages)
    run(tmp_path)
    order = [ln[1] for ln in ledger_lines(ledger) if ln[0] == "start"]
    bases = ["AB"[int(s[1:]) % 2] for s in order]
    switches = sum(1 for x, y in zip(bases, bases[1:]) if x != y)
    assert switches == 1, order


def test_the_lock_refuses_a_second_executor(tmp_path, ledger):
    make_plan(tmp_path, diamond())
    with RunLock(tmp_path), pytest.raises(RunLocked, match="being executed by another cpx process"):
        run(tmp_path)
    assert not (tmp_path / "stages").exists() or not any((tmp_path / "stages").rglob("manifest.json"))
    assert run(tmp_path).ok  # released


def test_plan_must_exist(tmp_path):
    from cpx.plan import PlanError

    with pytest.raises(PlanError, match="no plan here"):
        execute(tmp_path, quiet=True)


def test_stale_temporary_folders_are_removed(tmp_path, ledger):
    plan = make_plan(tmp_path, diamond())
    store = Store(tmp_path)
    store.prepare()
    tmp = store.new_tmp_dir(plan.stages[0])
    (tmp / "half.txt").write_text("partial")
    half_model = tmp_path / "models" / ".tiny-0123.999.tmp"  # as cpx.models names a build in progress
    half_model.mkdir(parents=True)
    built = tmp_path / "models" / "tiny-0123"
    built.mkdir()
    assert run(tmp_path).ok
    assert not tmp.exists() and not half_model.exists() and built.exists()
    assert not list((tmp_path / "stages").glob("*/.tmp-*"))
    assert Plan.load(tmp_path).name == "t"


def test_events_survive_a_cut_line(tmp_path):
    store = Store(tmp_path)
    store.prepare()
    store.events_path.write_text('{"event": "started", "hash": "ab')  # a run killed mid-write
    store.event("run_started")
    assert [e["event"] for e in store.read_events()] == ["run_started"]
    assert os.path.getsize(store.events_path) > 0


def test_rich_display_shows_run_and_worker_bars(tmp_path, ledger, capsys):
    from cpx.execute._progress import RichDisplay

    make_plan(
        tmp_path,
        [
            {"id": "slow", "kind": "dataset", "params": {"chunks": 3, "sleep": 0.3}},
            {"id": "boom", "kind": "dataset", "params": {"fail": True}},
        ],
    )
    summary = execute(tmp_path, devices="cpu", resolver=resolve, display=RichDisplay(), keep_going=True)
    assert [f.id for f in summary.failed] == ["boom"]
    err = capsys.readouterr().err
    assert "t (0 cached)" in err and " 2/2 " in err
    assert "FAILED boom: RuntimeError: stage boom was told to fail" in err
    assert "cpu: idle" in err


def test_the_wait_before_each_stage_is_recorded_and_summarised(tmp_path, ledger):
    """Two workers: the second finishes `quick` at once and must wait for `slow` (2 s on the
    first) before it can run `after_b`; that wait is its stage's idle time."""
    from cpx.execute._status import idle_summary

    stages = [
        {"id": "slow", "kind": "generate", "params": {"sleep": 2.0}},
        {"id": "quick", "kind": "generate", "params": {}},
        {"id": "after_a", "kind": "sample", "deps": ["slow"], "params": {}},
        {"id": "after_b", "kind": "sample", "deps": ["slow", "quick"], "params": {}},
    ]
    make_plan(tmp_path, stages)
    assert run(tmp_path, devices="cpu:2").ok
    ms = manifests(tmp_path)
    idle = {sid: m["timings"]["idle_before_seconds"] for sid, m in ms.items()}
    assert all(v >= 0 for v in idle.values())
    assert ms["after_b"]["executor"]["worker"] == ms["quick"]["executor"]["worker"] == 1
    assert idle["after_b"] >= 0.5 > idle["after_a"]
    summary = idle_summary(run_status(tmp_path))
    assert summary["stages"] == 4 and summary["max_stage"] == "after_b"
    assert summary["total_seconds"] == pytest.approx(sum(idle.values()), abs=0.01)
    assert summary["by_kind"]["sample"] == pytest.approx(idle["after_a"] + idle["after_b"], abs=0.01)
