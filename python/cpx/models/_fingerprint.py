"""A local model folder's content fingerprint: what a `path` model's stage hashes depend on.

A stage hash must not change when the same model sits in another folder (another machine,
another user's home), and must change when its files do. The fingerprint is a sha256 over the
names and digests of the folder's own files: the ones `from_pretrained` reads (config,
weights and their index, tokenizer files). Subfolders (a trainer's `checkpoint-*/` with
optimizer state, `runs/` logs) and hidden files are not part of the model and are left out,
so adding one changes nothing.

A file's digest is its full sha256, except for a `.safetensors` weight file, whose digest is
its *identity*: its size, its whole header (every tensor's name, dtype, shape and byte range)
and the first and last 4 KiB of every tensor's data. That reads a few MB of a 15 GB
checkpoint instead of all of it (`cpx compile` of a Qwen2.5-7B folder: 14.6 s before, well
under a second now on a folder never seen). What it sees: any change of a tensor's name,
dtype or shape, any added or removed tensor, any change of the file's size, and any change of
a tensor's values that touches its first or last 4 KiB, which fine-tuning, re-initialisation,
re-quantisation or another seed always do (they change every element). What it does not see:
an edit inside one tensor that leaves its first and last 4 KiB as they were (hand-patching a
few values in place). Set `CPX_FINGERPRINT=full` to hash every byte of the weights too (each
file read once, then cached as below); the two modes give different fingerprints, so switching
re-runs the stages of that model.

Either digest is cached in `$CPX_CACHE_DIR` (default `~/.cache/cpx`)/`file-digests.json`, keyed
by the file's path, device, inode, size, modification and change time (as git does) and the
mode: an unchanged folder is not read again at all, and a file replaced in any way is.

The fingerprint is taken at compile time; files changed between `cpx compile` and `cpx
execute` are not noticed (compile again after changing a local model).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import tempfile
from pathlib import Path
from typing import BinaryIO

from cpx.errors import CpxError

_CHUNK = 1 << 22
_EDGE = 4096  # bytes hashed at each end of a tensor's data
MODE_ENV = "CPX_FINGERPRINT"
MODES = ("identity", "full")


class FingerprintError(CpxError, ValueError):
    """A model folder that cannot be fingerprinted, with the path and why."""


def cache_file() -> Path:
    root = os.environ.get("CPX_CACHE_DIR") or Path.home() / ".cache" / "cpx"
    return Path(root) / "file-digests.json"


def mode() -> str:
    m = os.environ.get(MODE_ENV) or "identity"
    if m not in MODES:
        raise FingerprintError(f"${MODE_ENV}={m!r}: expected one of {', '.join(MODES)}")
    return m


def _load_cache(path: Path) -> dict[str, list]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_cache(path: Path, cache: dict[str, list]) -> None:
    """Write through a temporary file and a rename; a cache that cannot be written is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".file-digests.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(cache, f)
        os.replace(tmp, path)
    except OSError:
        pass


def _open(path: Path) -> BinaryIO:
    """Every read of a model file goes through here (the tests count them)."""
    return path.open("rb")


def _full_digest(path: Path) -> str:
    h = hashlib.sha256()
    with _open(path) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _safetensors_identity(path: Path, size: int) -> str | None:
    """The identity digest of a safetensors file, or None if its header is not one."""
    with _open(path) as f:
        raw = f.read(8)
        if len(raw) != 8:
            return None
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, 100 << 20):
            return None
        header = f.read(n)
        try:
            meta = json.loads(header)
        except ValueError:
            return None
        if not isinstance(meta, dict):
            return None
        h = hashlib.sha256(b"safetensors-identity-v1\0")
        h.update(struct.pack("<Q", size) + raw + header)
        start = 8 + n
        spans = []
        for name, t in meta.items():
            if name == "__metadata__":
                continue
            offs = t.get("data_offsets") if isinstance(t, dict) else None
            if not (isinstance(offs, list) and len(offs) == 2 and 0 <= offs[0] <= offs[1] <= size - start):
                return None
            spans.append((offs[0], offs[1]))
        for lo, hi in sorted(spans):
            for a, b in ((lo, min(hi, lo + _EDGE)), (max(lo, hi - _EDGE), hi)):
                f.seek(start + a)
                h.update(f.read(b - a))
        return h.hexdigest()


def _digest(path: Path, size: int, how: str) -> str:
    if how == "identity" and path.suffix == ".safetensors":
        ident = _safetensors_identity(path, size)
        if ident is not None:
            return ident
    return _full_digest(path)


def _files(folder: Path) -> list[Path]:
    """The folder's own regular files (symlinks followed), hidden ones left out."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        raise FingerprintError(f"{folder}: cannot be listed ({e.strerror or e})") from None
    out = []
    for name in names:
        f = folder / name
        if name.startswith(".") or f.is_dir():
            continue
        try:
            st = f.stat()
        except OSError as e:  # a dangling symlink (a partial download), a file removed meanwhile
            raise FingerprintError(f"{f}: cannot be read ({e.strerror or e})") from None
        if stat.S_ISREG(st.st_mode):
            out.append(f)
    return out


def fingerprint(folder: str | os.PathLike[str]) -> str:
    """sha256 hex of a model folder's files (names and digests; see the module's docstring)."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise FingerprintError(f"{folder}: no such model folder")
    if not (folder / "config.json").is_file():
        raise FingerprintError(f"{folder}: not a model folder (no config.json)")
    how = mode()
    where = cache_file()
    cache = _load_cache(where)
    changed = False
    h = hashlib.sha256(b"" if how == "full" else b"identity\0")
    for f in _files(folder):
        try:
            st = f.stat()
            stamp = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, how]
            hit = cache.get(str(f))
            if isinstance(hit, list) and hit[:-1] == stamp:
                digest = hit[-1]
            else:
                digest = _digest(f, st.st_size, how)
                cache[str(f)] = [*stamp, digest]
                changed = True
        except OSError as e:
            raise FingerprintError(f"{f}: cannot be read ({e.strerror or e})") from None
        h.update(f"{f.name}\0{digest}\n".encode())
    if changed:
        _save_cache(where, cache)
    return h.hexdigest()
