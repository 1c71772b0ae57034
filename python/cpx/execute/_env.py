"""Where a stage ran: host, device, package versions, git commit; and the seeds it ran with."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import random
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# Packages whose versions change what a stage computes; recorded when installed.
PACKAGES = (
    "cpx",
    "torch",
    "transformers",
    "peft",
    "tokenizers",
    "safetensors",
    "accelerate",
    "vllm",
    "numpy",
    "scipy",
    "polars",
    "pyarrow",
    "ray",
)
# Kinds whose runners use torch: their RNG is seeded with torch's too.
TORCH_KINDS = frozenset({"generate", "train", "sample", "represent"})


@functools.cache
def packages() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


@functools.cache
def git_state() -> dict[str, Any]:
    """The commit and dirty flag of the checkout cpx runs from (null outside a git checkout)."""
    src = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return {"commit": None, "dirty": None, "path": None}
        status = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None, "path": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip()), "path": str(src)}


@functools.cache
def host() -> dict[str, str]:
    return {"name": socket.gethostname(), "platform": platform.platform(), "cpu": _cpu_name()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    """The accelerator's marketing name, read through torch only if the stage loaded it."""
    if device.startswith("cuda") and "torch" in sys.modules:
        torch = sys.modules["torch"]
        try:
            return str(torch.cuda.get_device_name(torch.device(device)))
        except Exception:  # noqa: BLE001 - a name is nice to have, never worth failing a stage
            return device
    if device == "cpu":
        return _cpu_name()
    return device


def stage_seed(params: dict[str, Any], stage_hash: str) -> tuple[int, str]:
    """The seed a stage runs with, and where it came from.

    `params.seed`, else `params.sampler.seed`, else the first 32 bits of the stage hash
    (so a stage with no seed of its own is still reproducible, and differs from its siblings).
    The seed is below 2**32, which every RNG accepts.
    """
    seed = params.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        return seed, "params.seed"
    sampler = params.get("sampler")
    if isinstance(sampler, dict):
        seed = sampler.get("seed")
        if isinstance(seed, int) and not isinstance(seed, bool):
            return seed, "params.sampler.seed"
    digest = stage_hash if _is_hex(stage_hash) else hashlib.sha256(stage_hash.encode()).hexdigest()
    return int(digest[:8], 16), "stage hash"


def _is_hex(s: str) -> bool:
    return len(s) >= 8 and all(c in "0123456789abcdefABCDEF" for c in s)


def seed_everything(seed: int, kind: str) -> dict[str, Any]:
    """Seed python, numpy and (for torch kinds, or when already loaded) torch; return what was set."""
    random.seed(seed)
    seeds: dict[str, Any] = {"python": seed, "python_hash": os.environ.get("PYTHONHASHSEED")}
    import numpy as np

    np.random.seed(seed % 2**32)
    seeds["numpy"] = seed % 2**32
    if kind in TORCH_KINDS or "torch" in sys.modules:
        try:
            import torch
        except ImportError:
            return seeds
        torch.manual_seed(seed)
        seeds["torch"] = seed
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
            seeds["torch_cuda"] = seed
    return seeds
