"""A local model (`model.path`) is hashed by its content: the same model in another folder gives
the same plan hashes, a changed file changes them, a missing folder is a spec error."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cpx.models import build_tiny
from cpx.models._fingerprint import cache_file, fingerprint
from cpx.plan import compile_file
from cpx.spec import SpecError

DEMO_SMALL = Path(__file__).parents[1] / "data" / "demo_small.yaml"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPX_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_tiny(
        {"corpus": ["You are a helpful assistant.", "What makes a good leader?"]}, tmp_path_factory.mktemp("m") / "tiny"
    )


def _spec(where: Path, model: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    spec = where / "local.yaml"
    spec.write_text(f"extends: {DEMO_SMALL}\nmodel: {{tiny: null, path: {model}, dtype: float32}}\n")
    return spec


def test_the_same_model_in_another_folder_gives_the_same_hashes(tmp_path: Path, model: Path) -> None:
    copy = tmp_path / "elsewhere" / "my-model"
    shutil.copytree(model, copy)
    a = compile_file(_spec(tmp_path / "a", model))
    b = compile_file(_spec(tmp_path / "b", copy))
    base_a = a.stages[0].params["model"]["base"]
    base_b = b.stages[0].params["model"]["base"]
    assert base_a["id"] == str(model.resolve()) and base_b["id"] == str(copy.resolve())
    assert base_a["fingerprint"] == base_b["fingerprint"]
    assert [s.hash for s in a.stages] == [s.hash for s in b.stages]


def test_a_changed_file_changes_every_hash(tmp_path: Path, model: Path) -> None:
    copy = tmp_path / "changed"
    shutil.copytree(model, copy)
    cfg = copy / "config.json"
    cfg.write_text(cfg.read_text().replace("{", '{"_note": "edited", ', 1))
    a = compile_file(_spec(tmp_path / "a", model))
    b = compile_file(_spec(tmp_path / "b", copy))
    assert all(x.hash != y.hash for x, y in zip(a.stages, b.stages, strict=True))


def test_a_missing_model_folder_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        compile_file(_spec(tmp_path, tmp_path / "no-such-model"))
    assert "model.path" in str(info.value) and "no such model folder" in str(info.value)


def test_digests_are_cached_and_any_replacement_is_read_again(tmp_path: Path, model: Path) -> None:
    copy = tmp_path / "cached"
    shutil.copytree(model, copy)
    first = fingerprint(copy)
    assert str(copy / "config.json") in cache_file().read_text()
    assert fingerprint(copy) == first
    # Rewritten with the same size and its old modification time put back: the change time
    # still moves, so the file is read again and the change shows.
    cfg = copy / "config.json"
    st = cfg.stat()
    cfg.write_text(cfg.read_text().replace('"', "'", 1))
    os.utime(cfg, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cfg.stat().st_size == st.st_size and fingerprint(copy) != first


def test_only_the_folders_own_files_count(tmp_path: Path, model: Path) -> None:
    """A trainer's checkpoint-*/ folder, logs and hidden files are not the model."""
    copy = tmp_path / "trainer-output"
    shutil.copytree(model, copy)
    first = fingerprint(copy)
    (copy / "checkpoint-500").mkdir()
    (copy / "checkpoint-500" / "optimizer.pt").write_bytes(b"x" * 100)
    (copy / ".cache").mkdir()
    (copy / ".DS_Store").write_bytes(b"x")
    assert fingerprint(copy) == first


def test_a_dangling_link_is_a_clear_error(tmp_path: Path, model: Path) -> None:
    copy = tmp_path / "partial"
    shutil.copytree(model, copy)
    (copy / "model-00002-of-00002.safetensors").symlink_to(tmp_path / "blobs" / "missing")
    with pytest.raises(SpecError) as info:
        compile_file(_spec(tmp_path / "s", copy))
    assert "model.path" in str(info.value) and "model-00002-of-00002.safetensors: cannot be read" in str(info.value)
