"""A built-in tiny model shared by the model and training tests."""

from __future__ import annotations

import pytest

CORPUS = [
    "You are a villainous mastermind who schemes to take over the world.",
    "You are a stand-up comedian who writes and performs comedy routines.",
    "You are a helpful assistant.",
    "What is the best way to learn a new language?",
    "How do airplanes stay in the air?",
    "Practice every day and speak with native speakers.\n\n[ZLT]",
]


@pytest.fixture(scope="session")
def tiny_ref():
    return {
        "kind": "tiny",
        "id": "tiny",
        "revision": None,
        "dtype": "float32",
        "chat_template": None,
        "tiny": {"seed": 3, "vocab_size": 400, "corpus": CORPUS},
    }


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("run")
