"""Fixtures for the executor's tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ledger file the test runners append start/end lines to (through $CPX_TEST_LEDGER)."""
    path = tmp_path / "ledger.txt"
    monkeypatch.setenv("CPX_TEST_LEDGER", str(path))
    return path
