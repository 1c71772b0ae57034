"""The Ray executor on a local CPU cluster gives the local executor's results."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest
from _exec_runners import make_plan
from _exec_helpers import HERE, SRC, manifests
from test_exec_engine import diamond

from cpx.execute import execute

ray = pytest.importorskip("ray")


@pytest.fixture
def ray_cluster(monkeypatch):
    # Ray's workers import the test runners: they inherit this environment from ray.init.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SRC), str(HERE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_results_equal_local_results(tmp_path, ray_cluster, monkeypatch):
    local, remote = tmp_path / "local", tmp_path / "ray"
    make_plan(local, diamond(**{"scan/B": {"fail_first": 1}}))
    make_plan(remote, diamond(**{"scan/B": {"fail_first": 1}}))
    monkeypatch.setenv("CPX_TEST_LEDGER", str(tmp_path / "local.ledger"))
    a = execute(local, devices="cpu", resolver="_exec_runners:resolve", quiet=True, retry=1)
    monkeypatch.setenv("CPX_TEST_LEDGER", str(tmp_path / "ray.ledger"))  # actors get CPX_* variables
    b = execute(remote, executor="ray", resolver="_exec_runners:resolve", quiet=True, retry=1)
    assert a.ok and b.ok, (a.failed, b.failed)
    ma, mb = manifests(local), manifests(remote)
    assert {k: v["outputs"] for k, v in ma.items()} == {k: v["outputs"] for k, v in mb.items()}
    assert {v["executor"]["kind"] for v in mb.values()} == {"ray"}
    assert mb["scan/B"]["attempt"] == 2  # --retry works the same under Ray
    assert len({v["executor"]["pid"] for v in mb.values()}) == 2  # both actors worked
    for t in ("completions", "marker_hits", "leakage", "metrics", "stats"):
        ta = pq.read_table(local / "results" / f"{t}.parquet").sort_by([("stage", "ascending"), ("i", "ascending")])
        tb = pq.read_table(remote / "results" / f"{t}.parquet").sort_by([("stage", "ascending"), ("i", "ascending")])
        assert ta.equals(tb), t
    assert (remote / "report" / "report.md").read_text() == (local / "report" / "report.md").read_text()
    # A resume under Ray runs nothing.
    again = execute(remote, executor="ray", resolver="_exec_runners:resolve", quiet=True)
    assert again.ran == [] and again.ok


@pytest.mark.slow
def test_ray_stages_are_tracked_in_wandb(tmp_path, ray_cluster, monkeypatch):
    pytest.importorskip("wandb")
    from _exec_runners import make_tracked_plan

    from cpx.execute._tracking import offline_runs

    plan = make_tracked_plan(tmp_path, {"backend": "wandb"})
    monkeypatch.setenv("CPX_TEST_LEDGER", str(tmp_path / "ledger"))
    summary = execute(tmp_path, executor="ray", resolver="_exec_runners:resolve", quiet=True)
    assert summary.ok, summary.failed
    ms = manifests(tmp_path)
    assert {m["executor"]["kind"] for m in ms.values()} == {"ray"}
    ids = {m["tracking"]["run_id"] for m in ms.values() if "error" not in m["tracking"]}
    assert len(ids) == len(plan.stages)
    assert {d.name.rsplit("-", 1)[1] for d in offline_runs(tmp_path)} == ids
