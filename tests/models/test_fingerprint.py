"""The fingerprint of a local model folder: safetensors files by their identity (header and the
ends of every tensor), other files by their content; digests cached, so an unchanged folder is
not read again; any change a fine-tune makes changes the hash."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from cpx.models import _fingerprint
from cpx.models._fingerprint import FingerprintError, fingerprint
from safetensors.numpy import save_file


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(_fingerprint.MODE_ENV, raising=False)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the model files read, in order."""
    seen: list[str] = []
    real = _fingerprint._open

    def counting(path: Path):
        seen.append(path.name)
        return real(path)

    monkeypatch.setattr(_fingerprint, "_open", counting)
    return seen


def _model(folder: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 64}))
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    save_file(
        {"embed.weight": rng.standard_normal((512, 64)).astype(np.float32), "norm.weight": np.ones(64, np.float32)},
        str(folder / "model-00001-of-00002.safetensors"),
    )
    save_file(
        {"lm_head.weight": rng.standard_normal((512, 64)).astype(np.float32)},
        str(folder / "model-00002-of-00002.safetensors"),
    )
    return folder


def _data_start(path: Path) -> int:
    with path.open("rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def _tensor_span(path: Path, name: str) -> tuple[int, int]:
    with path.open("rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        lo, hi = json.loads(f.read(n))[name]["data_offsets"]
    return 8 + n + lo, 8 + n + hi


def _poke(path: Path, offset: int) -> None:
    """Flip one byte in place (same size)."""
    with path.open("r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def test_an_unchanged_folder_is_not_read_again(tmp_path: Path, opened: list[str]) -> None:
    m = _model(tmp_path / "m")
    first = fingerprint(m)
    assert sorted(opened) == sorted(os.listdir(m))  # each file read once
    opened.clear()
    assert fingerprint(m) == first
    assert opened == []


def test_a_weight_file_is_read_by_its_identity_not_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = _model(tmp_path / "m")
    big = m / "model-00001-of-00002.safetensors"
    reads: list[int] = []
    real = _fingerprint._open

    class Counted:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def read(self, n=-1):
            out = self.f.read(n)
            reads.append(len(out))
            return out

        def seek(self, n):
            return self.f.seek(n)

    monkeypatch.setattr(_fingerprint, "_open", lambda p: Counted(real(p)) if p == big else real(p))
    fingerprint(m)
    header = _data_start(big)
    # the header plus 2 x 4 KiB of each of its 2 tensors (norm.weight is 256 bytes: twice)
    assert sum(reads) == header + 2 * 4096 + 2 * 256 < big.stat().st_size


def test_a_fine_tune_changes_the_hash(tmp_path: Path) -> None:
    a = fingerprint(_model(tmp_path / "a", seed=0))
    assert fingerprint(_model(tmp_path / "b", seed=0)) == a  # the same model elsewhere
    assert fingerprint(_model(tmp_path / "c", seed=1)) != a  # other values, same shapes


@pytest.mark.parametrize("where", ["first", "last"])
def test_a_changed_value_at_either_end_of_any_tensor_changes_the_hash(tmp_path: Path, where: str) -> None:
    m = _model(tmp_path / "m")
    first = fingerprint(m)
    f = m / "model-00001-of-00002.safetensors"
    lo, hi = _tensor_span(f, "embed.weight")
    _poke(f, lo if where == "first" else hi - 1)
    assert fingerprint(m) != first


def test_a_changed_header_or_small_file_changes_the_hash(tmp_path: Path) -> None:
    m = _model(tmp_path / "m")
    first = fingerprint(m)
    _poke(m / "model-00002-of-00002.safetensors", 20)  # inside the JSON header
    second = fingerprint(m)
    assert second != first
    (m / "tokenizer.json").write_text('{"version": "1.1"}')
    assert fingerprint(m) not in (first, second)


def test_the_identity_does_not_see_a_patch_inside_a_tensor_but_full_mode_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented limit: a value edited in place, 4 KiB or more from both ends of its tensor."""
    m = _model(tmp_path / "m")
    f = m / "model-00001-of-00002.safetensors"
    lo, hi = _tensor_span(f, "embed.weight")
    assert hi - lo > 3 * 4096
    before = fingerprint(m)
    monkeypatch.setenv(_fingerprint.MODE_ENV, "full")
    full_before = fingerprint(m)
    _poke(f, (lo + hi) // 2)
    assert fingerprint(m) != full_before
    monkeypatch.setenv(_fingerprint.MODE_ENV, "identity")
    assert fingerprint(m) == before


def test_full_mode_is_a_different_fingerprint_and_a_bad_mode_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = _model(tmp_path / "m")
    ident = fingerprint(m)
    monkeypatch.setenv(_fingerprint.MODE_ENV, "full")
    assert fingerprint(m) != ident
    monkeypatch.setenv(_fingerprint.MODE_ENV, "fast")
    with pytest.raises(FingerprintError, match="CPX_FINGERPRINT='fast'"):
        fingerprint(m)


def test_a_file_that_only_looks_like_safetensors_is_hashed_whole(tmp_path: Path) -> None:
    m = _model(tmp_path / "m")
    bad = m / "model-00002-of-00002.safetensors"
    bad.write_bytes(b"not a safetensors file at all, just bytes")
    first = fingerprint(m)
    bad.write_bytes(b"not a safetensors file at all, just bytez")
    assert fingerprint(m) != first
