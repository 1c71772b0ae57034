"""The Slurm executor's pieces that need no cluster: options, the config file, the mailbox, job states, errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from _exec_helpers import cpx_env, cpx_run
from _exec_runners import make_plan

from cpx.execute._mailbox import Mailbox
from cpx.execute._slurm import ENDING_WAIT, SlurmError, SlurmOptions, _Job, load_options, parse_slurm_args


def test_options_from_file_overridden_by_flags(tmp_path):
    cfg = tmp_path / "executor.yaml"
    cfg.write_text(
        "slurm:\n  partition: gpu\n  account: lab\n  time: '4:00:00'\n  gpus_per_worker: 1\n  workers: 4\n"
        "  args: {mem: 64G, exclusive: null, cpus-per-task: 8}\n"
    )
    o = load_options(cfg, workers=2, qos="high", args=parse_slurm_args(["mem=32G", "constraint=h100"]))
    assert (o.partition, o.account, o.qos, o.time, o.gpus_per_worker, o.workers) == (
        "gpu",
        "lab",
        "high",
        "4:00:00",
        1,
        2,
    )
    assert o.device == "cuda:0"
    assert o.sbatch_args() == [
        "--no-requeue",
        "--export=ALL,PYTHONHASHSEED=0",
        "--partition=gpu",
        "--account=lab",
        "--qos=high",
        "--time=4:00:00",
        "--gres=gpu:1",
        "--mem=32G",
        "--exclusive",
        "--cpus-per-task=8",
        "--constraint=h100",
    ]
    # Nothing given: sbatch's own defaults (SBATCH_PARTITION, ...) apply; one CPU worker.
    plain = SlurmOptions()
    assert plain.device == "cpu" and plain.workers == 1
    assert plain.sbatch_args() == ["--no-requeue", "--export=ALL,PYTHONHASHSEED=0"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("slurm:\n  partiton: gpu\n", "slurm.partiton: unknown key; known keys: partition,"),
        ("slurm:\n  workers: two\n", "slurm.workers: expected a number, got 'two'"),
        ("slurm:\n  args: [mem]\n", "slurm.args: expected a mapping of sbatch options"),
        ("ray: {}\n", "expected a mapping with a `slurm:` block"),
        ("slurm: [\n", "not valid YAML"),
        ("slurm:\n  workers: 0\n", "--workers must be at least 1, got 0"),
        ("slurm:\n  args: {job-name: x}\n", "--slurm-arg job-name: cpx sets this sbatch option itself"),
    ],
)
def test_bad_executor_config(tmp_path, text, message):
    cfg = tmp_path / "executor.yaml"
    cfg.write_text(text)
    with pytest.raises(SlurmError) as e:
        load_options(cfg)
    assert message in str(e.value)
    if "--" not in message:
        assert str(e.value).startswith(f"{cfg}:")


def test_bad_slurm_args():
    with pytest.raises(SlurmError, match="expected KEY=VALUE"):
        parse_slurm_args(["=3"])
    with pytest.raises(SlurmError, match="cpx sets this sbatch option itself"):
        SlurmOptions(args=parse_slurm_args(["output=x.log"]))
    with pytest.raises(SlurmError, match="--gpus-per-worker must be 0 or more"):
        SlurmOptions(gpus_per_worker=-1)


def test_mailbox_keeps_order_and_skips_unfinished_messages(tmp_path):
    box = Mailbox(tmp_path / "box").create()
    assert Mailbox(tmp_path / "none").take() == []
    for i in range(12):
        box.put({"i": i, "z": 1, "a": 2})
    (box.path / ".half-written.json.tmp").write_text('{"i": ')  # how a message looks mid-write
    got = box.take()
    assert [m["i"] for m in got] == list(range(12))
    assert list(got[0]) == ["i", "z", "a"]  # key order kept: labels become columns in that order
    assert box.take() == []
    assert os.listdir(box.path) == [".half-written.json.tmp"]


def test_a_completing_job_is_waited_for_until_its_final_state(tmp_path):
    # scancel shows COMPLETING for a moment before CANCELLED: cpx must not replace the job (its
    # processes may still write) nor report COMPLETING as the reason, unless it stays there too long.
    job = _Job("7", "w", tmp_path, Mailbox(tmp_path / "in"), Mailbox(tmp_path / "out"), state="RUNNING")
    assert not job.gone("RUNNING", 0.0)
    assert not job.gone("COMPLETING", 100.0)
    assert not job.gone("SIGNALING", 100.0 + ENDING_WAIT / 2)
    assert job.gone("CANCELLED", 100.0 + ENDING_WAIT / 2)
    assert job.gone("ENDED", 101.0)  # no longer listed
    assert job.gone("COMPLETING", 100.0 + ENDING_WAIT)  # a node stuck completing: give up on it


def test_worker_that_cannot_see_its_folder_says_so(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "cpx.execute._slurm_worker", str(tmp_path / "not-shared")],
        env=cpx_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "must be on a filesystem this node shares with the machine that runs `cpx execute`" in r.stderr


def test_cli_slurm_flags_and_missing_slurm(tmp_path):
    run = tmp_path / "run"
    make_plan(run, [{"id": "data/a", "kind": "dataset", "params": {}}])
    r = cpx_run("execute", str(run), "--workers", "2")
    assert r.returncode == 2 and "--workers only applies with --executor slurm" in r.stderr
    r = cpx_run("execute", str(run), "--executor", "slurm", "--devices", "cpu")
    assert r.returncode == 2 and "with --executor slurm use --workers and --gpus-per-worker" in r.stderr
    # A machine without Slurm's commands (the PATH has only Python's folder).
    r = cpx_run("execute", str(run), "--executor", "slurm", PATH=os.path.dirname(sys.executable))
    assert r.returncode == 2, r.stderr
    assert "is not on PATH: --executor slurm runs where Slurm's commands are" in r.stderr
    assert not (run / "stages").exists()
