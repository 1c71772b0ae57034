"""The demo (tests/data/demo_small.yaml, made smaller) with `-s tracking.backend=wandb`, cpx's
real stage runners and the real wandb package offline: every stage one W&B run holding what
the stage measured, read back with wandb's own reader; the report names the run ids; kills
and resumes make no second run of a finished stage; online mode without a network never
fails a stage and never hangs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from _exec_helpers import cpx_env, cpx_popen, cpx_run, manifests
from _exec_runners import ledger_lines, make_tracked_plan
from _demo import DEMO, REAL, SMALL
from test_exec_kill import slow_plan
from test_tracking_wandb import offline_run

from cpx.execute._tracking import offline_runs

pytest.importorskip("wandb")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("demo-wandb")
    args = [sys.executable, "-m", "cpx", "compile", str(DEMO), "--out", str(run), "-q", "-s", "tracking.backend=wandb"]
    for s in SMALL:
        args += ["-s", s]
    r = subprocess.run(args, env=cpx_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "cpx", "execute", str(run), "--devices", "cpu", "--quiet"],
        env=cpx_env(CPX_TEST_LEDGER=str(run / "ledger.txt"), **REAL),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return run


def stage_dir(run: Path, m: dict) -> Path:
    return run / "stages" / m["kind"] / m["hash"]


def test_every_demo_stage_is_a_wandb_run_with_what_it_measured(demo):
    ms = manifests(demo)
    plan = json.loads((demo / "plan.json").read_text())
    assert len(ms) == len(plan["stages"])
    assert all("run_id" in m["tracking"] and "error" not in m["tracking"] for m in ms.values())
    assert len({m["tracking"]["run_id"] for m in ms.values()}) == len(ms)
    assert len(offline_runs(demo)) == len(ms)
    kinds = Counter(m["kind"] for m in ms.values())
    assert {"train", "sample", "scan", "analyze", "report"} <= set(kinds)
    for m in ms.values():
        got = offline_run(demo, m["tracking"])
        assert got["name"] == m["id"] and got["state"] == "finished"
        assert got["run"]["job_type"] == m["kind"]
        assert {k: got["config"].get(k) for k in m["labels"] if m["labels"][k] is not None} == {
            k: v for k, v in m["labels"].items() if v is not None
        }
        if m["kind"] == "train":
            log = pq.read_table(stage_dir(demo, m) / "train_log.parquet").to_pylist()
            history = [h for h in got["history"] if "loss" in h]
            assert len(history) == len(log)  # one row per logged step
            assert [h["_step"] for h in history] == [r["step"] for r in log]
            assert [h["loss"] for h in history] == pytest.approx([r["loss"] for r in log])
            assert [h["grad_norm"] for h in history] == pytest.approx([r["grad_norm"] for r in log])
            assert [h["lr"] for h in history] == pytest.approx([r["lr"] for r in log])
            assert [h["tokens"] for h in history] == [r["tokens"] for r in log]
            seconds = m["info"]["step_seconds"]
            assert [h["tokens_per_s"] for h in history] == pytest.approx(
                [r["tokens"] / s for r, s in zip(log, seconds, strict=True)]
            )
            assert got["summary"]["final_loss"] == pytest.approx(m["info"]["final_loss"])
        elif m["kind"] == "sample":
            roles = Counter(r["role"] for r in pq.read_table(stage_dir(demo, m) / "completions.parquet").to_pylist())
            assert {
                k[len("completions/") :]: v for k, v in got["summary"].items() if k.startswith("completions/")
            } == roles
        elif m["kind"] == "scan":
            rates = {k[len("rate/") :]: v for k, v in got["summary"].items() if k.startswith("rate/")}
            assert rates == pytest.approx(m["info"]["rate_by_role"]) and rates
            leakage = pq.read_metadata(stage_dir(demo, m) / "leakage.parquet").num_rows
            assert got["summary"]["leakage"]["_type"] == "table-file" and got["summary"]["leakage"]["nrows"] == leakage
        elif m["kind"] == "analyze":
            stats = pq.read_metadata(stage_dir(demo, m) / "stats.parquet").num_rows
            assert got["summary"]["stats"]["_type"] == "table-file" and got["summary"]["stats"]["nrows"] == stats
        elif m["kind"] == "report":
            pngs = sorted(p.stem for p in (stage_dir(demo, m) / "figures").glob("*.png"))
            logged = sorted(k.split("/", 1)[1] for k in got["summary"] if k.startswith("figures/"))
            assert logged == pngs and pngs
            assert [a["type"] for a in got["artifacts"] if a["type"] == "report"] == ["report"]
            art = next(a for a in got["artifacts"] if a["type"] == "report")
            files = {e["path"] for e in art["manifest"]["contents"]}
            assert {"report.md", "report.html"} <= files
            # The artifact's staged copies travel with the run folder.
            assert all(Path(e["local_path"]).is_relative_to(demo / "wandb") for e in art["manifest"]["contents"])


def test_the_report_names_the_run_ids_and_how_to_upload(demo):
    ms = manifests(demo)
    report = (demo / "report" / "report.md").read_text()
    upstream = [m for m in ms.values() if m["kind"] != "report"]
    for m in upstream:
        assert m["tracking"]["run_id"] in report, m["id"]
    assert "wandb sync wandb/offline-run-*" in report
    r = cpx_run("status", str(demo))
    assert "wandb sync" in r.stdout and f"{len(ms)} offline run(s)" in r.stdout


def test_kills_and_resumes_make_no_second_run_of_a_finished_stage(tmp_path):
    rng = random.Random(16)
    run = tmp_path / "run"
    plan = make_tracked_plan(run, {"backend": "wandb"}, slow_plan())
    ledger = tmp_path / "ledger.txt"
    kills, snapshots = 0, []
    while kills < 4:
        seen = len(ledger_lines(ledger))
        p = cpx_popen("execute", str(run), "--devices", "cpu:2", "--quiet", CPX_TEST_LEDGER=str(ledger))
        deadline = time.monotonic() + 60
        while len(ledger_lines(ledger)) <= seen + 2 and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.5))
        if p.poll() is not None:
            break
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        kills += 1
        snapshots.append({k: v["tracking"]["run_id"] for k, v in manifests(run).items()})
    assert kills == 4, "the plan finished before four kills; make it slower"
    r = cpx_run("execute", str(run), "--devices", "cpu:2", "--quiet", timeout=300, CPX_TEST_LEDGER=str(ledger))
    assert r.returncode == 0, r.stderr
    final = {k: v["tracking"]["run_id"] for k, v in manifests(run).items()}
    assert len(final) == len(plan.stages) and len(set(final.values())) == len(final)
    for snap in snapshots:  # a stage committed before a kill keeps its run
        assert all(final[k] == v for k, v in snap.items())
    folders = Counter(d.name.rsplit("-", 1)[1] for d in offline_runs(run))
    assert set(folders) == set(final.values())  # no run W&B would see that no manifest names
    # One scheduler logs one stage at a time: a kill cuts at most one log short, and the stage
    # logged again resumes its own run (a second folder of the same id, not a second run).
    assert sum(folders.values()) <= len(final) + kills


def test_online_without_a_network_never_fails_a_stage_and_never_hangs(tmp_path):
    run = tmp_path / "run"
    make_tracked_plan(run, {"backend": "wandb", "mode": "online"})
    r = cpx_run(
        "execute",
        str(run),
        "--devices",
        "cpu",
        timeout=120,  # with one wait of the init timeout for the whole run, not one a stage
        WANDB_API_KEY="x" * 40,
        WANDB_BASE_URL="http://127.0.0.1:9",  # the discard port: nothing answers
        WANDB_INIT_TIMEOUT="5",
        WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    ms = manifests(run)
    assert len(ms) == 4
    first, *rest = sorted(ms.values(), key=lambda m: m["timings"]["committed"])
    assert "could not start" in first["tracking"]["error"] and "run_id" not in first["tracking"]
    assert all(m["tracking"]["error"].startswith("not logged: ") and "run_id" not in m["tracking"] for m in rest)
    assert r.stderr.count("wandb tracking failed") == 2, r.stderr  # the first error, then the skipped ones
    assert "could not start" in r.stderr
