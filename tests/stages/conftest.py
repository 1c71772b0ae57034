"""Shared fixtures for the stage tests: the built-in tiny model and a real model pool.

Data and helpers live in `stage_support.py`. The training tests use these too: keep the
names and meanings stable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from stage_support import tiny_ref_for


@pytest.fixture(scope="session")
def tiny_ref() -> dict[str, Any]:
    return tiny_ref_for()


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="session")
def tiny_model(tiny_ref, run_dir):
    """`(model, tokenizer)` of the tiny model on the CPU, loaded once per session. Do not modify."""
    from cpx.models import load_model

    return load_model(tiny_ref, run_dir, "cpu")


@pytest.fixture(scope="session")
def pool(run_dir):
    """The worker's real model pool on the CPU (keeps one base model loaded)."""
    from cpx.models import ModelPool

    return ModelPool("cpu", run_dir)


@pytest.fixture(scope="session")
def tiny_model64(tiny_model):
    """The tiny model in float64: for comparisons across batch shapes, where float32 rounding
    of the logits can move a sampled token across a CDF boundary. Do not modify."""
    import copy

    model, tok = tiny_model
    return copy.deepcopy(model).double(), tok
