"""W&B tracking with the real wandb package, offline (no network): with
`tracking: {backend: wandb}` every committed stage is one W&B run under `<run>/wandb/`, read
back here with wandb's own reader of its transaction log (`wandb leet inspect --json`), and
its id is kept in the stage's manifest, in the results' provenance and across resumes."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from _exec_helpers import cpx_run, execute_without, manifests
from _exec_runners import make_tracked_plan, resolve

from cpx.execute import execute
from cpx.execute._progress import LineDisplay
from cpx.execute._tracking import TrackingError, offline_runs, upload_hint
from cpx.plan import Plan

wandb = pytest.importorskip("wandb")
WANDB = Path(sys.executable).with_name("wandb")


def with_tracking(run_dir: Path, tracking: dict) -> Plan:
    return make_tracked_plan(run_dir, tracking)


def inspect(run_folder: Path, *flags: str) -> str:
    """wandb's own reader of an offline run's .wandb log (`wandb leet inspect`)."""
    r = subprocess.run(
        [str(WANDB), "leet", "inspect", *flags, str(run_folder)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def offline_run(run_dir: Path, entry: dict) -> dict:
    """What wandb wrote for the run a manifest names: its run record, state, config and
    summary (`--summary --json`), history rows and artifacts (the log's records)."""
    folder = run_dir / entry["dir"]
    out = json.loads(inspect(folder, "--summary", "--json"))
    recs = [json.loads(line) for line in inspect(folder, "--json").splitlines() if line.strip()]
    out["run"] = next(r["run"] for r in recs if r["type"] == "run")
    out["history"] = [r["history"]["item"] for r in recs if r["type"] == "history"]
    out["artifacts"] = [r["artifact"] for r in recs if r["type"] == "artifact"]
    return out


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> tuple[Path, Plan, dict]:
    """One executed run with W&B on (offline), shared by the assertions below."""
    run_dir = tmp_path_factory.mktemp("wandb-run")
    plan = with_tracking(run_dir, {"backend": "wandb", "tags": ["t1"]})
    summary = execute(run_dir, resolver=resolve, devices="cpu", quiet=True)
    assert summary.ok, summary.failed
    return run_dir, plan, summary.results


def test_every_stage_is_an_offline_wandb_run_named_in_its_manifest(tracked):
    run_dir, plan, _ = tracked
    ms = manifests(run_dir)
    ids = {s.id: ms[s.id]["tracking"]["run_id"] for s in plan.stages}
    assert len(set(ids.values())) == len(plan.stages)
    group = f"{run_dir.name}-{plan.spec_hash[:12]}"
    for s in plan.stages:
        t = ms[s.id]["tracking"]
        assert "error" not in t, t
        assert t["backend"] == "wandb" and t["mode"] == "offline" and t["group"] == group, t
        assert t["dir"].startswith("wandb/offline-run-") and t["dir"].endswith(t["run_id"])
        got = offline_run(run_dir, t)
        assert got["run"]["run_id"] == t["run_id"] and got["run"]["display_name"] == s.id
        assert got["run"]["run_group"] == group and got["run"]["project"] == "tracked"
        assert got["run"]["job_type"] == s.kind and got["run"]["tags"] == ["t1"]
        assert (
            got["config"]["cpx"]["hash"] == s.hash and got["config"].get("params", {}) == s.params
        )  # an empty dict reads back as none
        assert got["summary"]["seconds"] == pytest.approx(ms[s.id]["timings"]["seconds"])
        assert got["state"] == "finished" and got["exit_code"] == 0
    sample = offline_run(run_dir, ms["sample/A"]["tracking"])
    assert sample["config"]["arm"] == "A" and sample["config"]["checkpoint"] == 0.5
    assert sample["config"]["params"]["nested"] == {"lr": 0.5}
    stats = offline_run(run_dir, ms["analyze"]["tracking"])
    assert stats["summary"]["stats"]["_type"] == "table-file"
    stats_file = run_dir / "stages" / "analyze" / plan.by_id()["analyze"].hash / "stats.parquet"
    assert stats["summary"]["stats"]["nrows"] == pq.read_metadata(stats_file).num_rows


def test_the_results_provenance_names_every_run_id(tracked):
    run_dir, _, results = tracked
    ms = manifests(run_dir)
    for table, rec in results["tables"].items():
        for used in rec["stages"]:
            assert used["tracking"] == {"backend": "wandb", "run_id": ms[used["id"]]["tracking"]["run_id"]}, table


def test_status_says_how_to_upload(tracked):
    run_dir, plan, _ = tracked
    assert len(offline_runs(run_dir)) == len(plan.stages)
    r = cpx_run("status", str(run_dir))
    assert r.returncode == 0, r.stderr
    assert upload_hint(run_dir) in r.stdout and "wandb sync" in r.stdout


def test_a_resume_logs_nothing_again_and_a_rerun_keeps_its_run_id(tracked, tmp_path):
    src, plan, _ = tracked
    run_dir = tmp_path / "copy"
    shutil.copytree(src, run_dir)
    before = {k: v["tracking"]["run_id"] for k, v in manifests(run_dir).items()}
    n_folders = len(offline_runs(run_dir))
    again = execute(run_dir, resolver=resolve, devices="cpu", quiet=True)
    assert again.ok and again.ran == []
    assert len(offline_runs(run_dir)) == n_folders
    # Lose one stage's output: it re-runs, and is logged under the id its manifest recorded.
    (run_dir / "stages" / "scan" / plan.by_id()["scan/A"].hash / "leakage.parquet").unlink()
    again = execute(run_dir, resolver=resolve, devices="cpu", quiet=True)
    assert again.ok and "scan/A" in again.ran
    after = {k: v["tracking"]["run_id"] for k, v in manifests(run_dir).items()}
    assert after == before
    ids = [d.name.rsplit("-", 1)[1] for d in offline_runs(run_dir)]
    assert set(ids) == set(before.values())  # more folders (W&B resumes the run), no new run


def test_wandb_mode_in_the_environment_overrides_the_spec(tmp_path, ledger, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with_tracking(tmp_path, {"backend": "wandb", "mode": "online"})
    assert execute(tmp_path, resolver=resolve, devices="cpu", quiet=True).ok
    assert all(m["tracking"] == {} for m in manifests(tmp_path).values())
    assert not (tmp_path / "wandb").exists()
    monkeypatch.setenv("WANDB_MODE", "sideways")
    with pytest.raises(TrackingError, match="WANDB_MODE='sideways'"):
        execute(tmp_path, resolver=resolve, devices="cpu", quiet=True)


def test_online_without_credentials_never_prompts_and_never_fails_a_stage(tmp_path, ledger, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # no settings or key of this machine
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with_tracking(tmp_path, {"backend": "wandb"})
    out = io.StringIO()
    summary = execute(tmp_path, resolver=resolve, devices="cpu", display=LineDisplay(out))
    assert summary.ok
    for m in manifests(tmp_path).values():
        assert "run_id" not in m["tracking"] and "WANDB_API_KEY" in m["tracking"]["error"], m["tracking"]
    assert out.getvalue().count("wandb tracking failed") == 1, out.getvalue()


def test_wandb_missing_is_a_clear_error_before_anything_runs(tmp_path):
    with_tracking(tmp_path, {"backend": "wandb"})
    r = execute_without("wandb", tmp_path)
    assert r.returncode == 2, r.stderr
    assert "wandb" in r.stderr and "not installed" in r.stderr and "cpx[wandb]" in r.stderr
    assert not (tmp_path / "stages").exists()
