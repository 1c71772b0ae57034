"""cpx: declarative, cached, resumable LLM fine-tuning experiments with honest statistics.

`import cpx` stays light: no torch, polars or altair is imported here.
"""

from __future__ import annotations

from importlib import metadata as _metadata
from typing import Any

try:
    __version__ = _metadata.version("cpx")
except _metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"


def open(run_dir):  # noqa: A001 - mirrors the documented `cpx.open(run_dir)`
    """Open a run folder's results as polars LazyFrames (see `cpx.results`)."""
    from cpx.results import open_results

    return open_results(run_dir)


# Submodules users call as attributes (`cpx.stats.spearman`, `cpx.scan.count_markers`),
# imported on first use: `import cpx` (and so `cpx compile`) does not pay for numpy and pyarrow.
_LAZY = ("stats", "scan", "errors", "results")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"cpx.{name}")
    raise AttributeError(f"module 'cpx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["__version__", "open", "scan", "stats"]
