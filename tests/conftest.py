"""Every test runs in a scratch current folder: `cpx compile` records its run folder in
./runs/LATEST, and a test must never write that into the checkout."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _scratch_cwd(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
