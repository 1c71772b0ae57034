"""Tracking: with `tracking: {backend: mlflow}` every committed stage is one MLflow run in a
file store under the run folder, and its run id is kept in the stage's manifest."""

from __future__ import annotations

from pathlib import Path

import pytest
from _exec_helpers import execute_without, manifests
from _exec_runners import TRACKED_STAGES, make_tracked_plan, resolve

from cpx.execute import execute
from cpx.execute._tracking import TrackingError
from cpx.plan import Plan

mlflow = pytest.importorskip("mlflow")


def _with_tracking(run_dir: Path, tracking: dict) -> Plan:
    return make_tracked_plan(run_dir, tracking, TRACKED_STAGES[:3])


def test_every_stage_is_an_mlflow_run_named_in_its_manifest(tmp_path, ledger):
    plan = _with_tracking(tmp_path, {"backend": "mlflow", "uri": None, "experiment": None})
    summary = execute(tmp_path, resolver=resolve, devices="cpu", quiet=True)
    assert summary.ok
    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("tracked")
    ms = manifests(tmp_path)
    for s in plan.stages:
        t = ms[s.id]["tracking"]
        assert t["backend"] == "mlflow" and t["experiment_id"] == exp.experiment_id, t
        run = client.get_run(t["run_id"])
        assert run.info.run_name == s.id and run.info.status == "FINISHED"
        assert run.data.tags["cpx.hash"] == s.hash
        assert run.data.metrics["seconds"] == pytest.approx(ms[s.id]["timings"]["seconds"])
    sample = client.get_run(ms["sample/A"]["tracking"]["run_id"])
    assert sample.data.params["nested.lr"] == "0.5" and sample.data.tags["cpx.label.arm"] == "A"
    assert len({ms[s.id]["tracking"]["run_id"] for s in plan.stages}) == len(plan.stages)


def test_a_failing_tracker_never_fails_the_stage(tmp_path, ledger, monkeypatch):
    # An experiment that exists but was deleted: MLflow refuses every run logged into it.
    uri = (tmp_path / "mlruns").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    client.delete_experiment(client.create_experiment("gone"))
    plan = _with_tracking(tmp_path, {"backend": "mlflow", "uri": uri, "experiment": "gone"})
    summary = execute(tmp_path, resolver=resolve, devices="cpu", quiet=True)
    assert summary.ok
    ms = manifests(tmp_path)
    for s in plan.stages:
        assert "run_id" not in ms[s.id]["tracking"] and "error" in ms[s.id]["tracking"], ms[s.id]["tracking"]


def test_mlflow_missing_is_a_clear_error_before_anything_runs(tmp_path):
    _with_tracking(tmp_path, {"backend": "mlflow"})
    r = execute_without("mlflow", tmp_path)
    assert r.returncode == 2, r.stderr
    assert "mlflow" in r.stderr and "not installed" in r.stderr
    assert not (tmp_path / "stages").exists()


def test_unknown_backend_is_refused(tmp_path):
    _with_tracking(tmp_path, {"backend": "tensorboard"})
    with pytest.raises(TrackingError, match="unknown tracking backend"):
        execute(tmp_path, resolver=resolve, devices="cpu", quiet=True)


def test_a_stage_logged_again_keeps_its_mlflow_run(tmp_path, ledger):
    plan = _with_tracking(tmp_path, {"backend": "mlflow", "uri": None, "experiment": None})
    assert execute(tmp_path, resolver=resolve, devices="cpu", quiet=True).ok
    before = {k: m["tracking"]["run_id"] for k, m in manifests(tmp_path).items()}
    # Lose an output: the stage runs again and is logged into the run it had, not a new one.
    (tmp_path / "stages" / "scan" / plan.by_id()["scan/A"].hash / "leakage.parquet").unlink()
    again = execute(tmp_path, resolver=resolve, devices="cpu", quiet=True)
    assert again.ok and again.ran == ["scan/A"]
    assert {k: m["tracking"]["run_id"] for k, m in manifests(tmp_path).items()} == before
    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    runs = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(before.values())
