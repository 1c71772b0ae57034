"""A local model folder's content fingerprint: what a `path` model's stage hashes depend on.

A stage hash must not change when the same model sits in another folder (another machine,
another user's home), and must change when its files do. The fingerprint is a sha256 over the
names and contents' sha256 of the folder's own files: the ones `from_pretrained` reads
(config, weights and their index, tokenizer files). Subfolders (a trainer's `checkpoint-*/`
with optimizer state, `runs/` logs) and hidden files are not part of the model and are left
out, so adding one changes nothing. Hashing a 15 GB checkpoint takes a while, so each file's
digest is cached in `$CPX_CACHE_DIR` (default `~/.cache/cpx`)/`file-digests.json`, keyed by
the file's path, device, inode, size, modification and change time (as git does): a file
replaced in any way is read again.

The fingerprint is taken at compile time; files changed between `cpx compile` and `cpx
execute` are not noticed (compile again after changing a local model).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path

from cpx.errors import CpxError

_CHUNK = 1 << 22


class FingerprintError(CpxError, ValueError):
    """A model folder that cannot be fingerprinted, with the path and why."""


def cache_file() -> Path:
    root = os.environ.get("CPX_CACHE_DIR") or Path.home() / ".cache" / "cpx"
    return Path(root) / "file-digests.json"


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


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


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
    """sha256 hex of a model folder's files (relative paths and contents)."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise FingerprintError(f"{folder}: no such model folder")
    if not (folder / "config.json").is_file():
        raise FingerprintError(f"{folder}: not a model folder (no config.json)")
    where = cache_file()
    cache = _load_cache(where)
    changed = False
    h = hashlib.sha256()
    for f in _files(folder):
        try:
            st = f.stat()
            stamp = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
            hit = cache.get(str(f))
            if isinstance(hit, list) and hit[:-1] == stamp:
                digest = hit[-1]
            else:
                digest = _file_digest(f)
                cache[str(f)] = [*stamp, digest]
                changed = True
        except OSError as e:
            raise FingerprintError(f"{f}: cannot be read ({e.strerror or e})") from None
        h.update(f"{f.name}\0{digest}\n".encode())
    if changed:
        _save_cache(where, cache)
    return h.hexdigest()
