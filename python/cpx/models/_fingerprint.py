"""A local model folder's content fingerprint: what a `path` model's stage hashes depend on.

A stage hash must not change when the same model sits in another folder (another machine,
another user's home), and must change when its files do. The fingerprint is a sha256 over
every file's path relative to the folder and its content's sha256 (hidden files and folders,
e.g. `.git` or `.cache`, left out). Hashing a 15 GB checkpoint takes a while, so each file's
digest is cached by (absolute path, size, mtime) in `$CPX_CACHE_DIR` (default
`~/.cache/cpx`)/`file-digests.json`: a file rewritten with the same size and modification
time keeps its old digest, as with make and rsync.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

_CHUNK = 1 << 22


class FingerprintError(ValueError):
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
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(root) / f for f in sorted(files) if not f.startswith(".")]
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
        st = f.stat()
        key = str(f)
        hit = cache.get(key)
        if isinstance(hit, list) and len(hit) == 3 and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            digest = hit[2]
        else:
            try:
                digest = _file_digest(f)
            except OSError as e:
                raise FingerprintError(f"{f}: cannot be read ({e.strerror or e})") from None
            cache[key] = [st.st_size, st.st_mtime_ns, digest]
            changed = True
        h.update(f"{f.relative_to(folder).as_posix()}\0{digest}\n".encode())
    if changed:
        _save_cache(where, cache)
    return h.hexdigest()
