"""Fixtures for the executor's tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _demo import compile_demo, execute
from _slurm_cluster import SlurmCluster


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ledger file the test runners append start/end lines to (through $CPX_TEST_LEDGER)."""
    path = tmp_path / "ledger.txt"
    monkeypatch.setenv("CPX_TEST_LEDGER", str(path))
    return path


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """One uninterrupted local run of the small demo: what every other executor must reproduce."""
    ref = tmp_path_factory.mktemp("demo-ref")
    compile_demo(ref)
    t = time.monotonic()
    r = execute(ref, ref / "ledger.txt")
    seconds = time.monotonic() - t
    assert r.returncode == 0, r.stdout + r.stderr
    return ref, seconds


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A one-node Slurm of the test session's own (munged, slurmctld, slurmd), stopped at the end."""
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
