"""Every exception class of cpx, and the warnings of its Rust core, for precise `except` clauses.

Every error cpx raises is a `CpxError`. Errors about argument values are also `ValueError`s,
errors about argument types also `TypeError`s (and a missing result a `LookupError`), so code
that catches the built-in classes keeps working.

The core's classes are defined here; the others are defined next to the code that raises them
and re-exported here lazily, so `import cpx.errors` stays as light as the core needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cpx.analysis._columns import MetricsError
    from cpx.cli import CLIError
    from cpx.execute._local import DeviceError
    from cpx.execute._lock import RunLocked
    from cpx.execute._slurm import SlurmError
    from cpx.execute._store import StoreError
    from cpx.execute._tracking import TrackingError
    from cpx.models._chain import ChainError
    from cpx.models._fingerprint import FingerprintError
    from cpx.models._load import ModelLoadError
    from cpx.plan._model import PlanError
    from cpx.power._design import PowerError
    from cpx.report._load import ReportError
    from cpx.results import ResultsError
    from cpx.spec._errors import SpecError
    from cpx.stages._hidden import HiddenStateError
    from cpx.stages._rows import StageParamError
    from cpx.stages._sampling import SamplerError
    from cpx.stages._training import TrainError
    from cpx.stages.dataset import DatasetError


class CpxError(Exception):
    """Base class of every error cpx raises (its Rust core's and its packages')."""


class InputError(CpxError, ValueError):
    """An argument has a value the computation does not accept (bad option, empty marker...)."""


class LengthMismatchError(InputError):
    """Inputs that must have one element per observation have different lengths."""


class EmptyInputError(InputError):
    """An input has no observations (or too few for the computation)."""


class NaNError(InputError):
    """An input contains NaN (or null) while `nan_policy` is "raise"."""


class GroupsError(InputError):
    """Group or cluster labels do not line up with the data or the design."""


class InputTypeError(CpxError, TypeError):
    """An input has a type the computation does not accept (e.g. strings where numbers go)."""


class InternalError(CpxError, RuntimeError):
    """A bug in cpx's core (a caught panic); please report it with the input that caused it."""


class ConstantInputWarning(RuntimeWarning):
    """An input is constant, so a correlation is undefined: its statistic is NaN."""


class DebugBuildWarning(RuntimeWarning):
    """`cpx._core` was built without optimizations: statistics and scanning are slow."""


# Each package's error class: the module that defines it (imported on first use).
_ELSEWHERE = {
    "CLIError": "cpx.cli",
    "ChainError": "cpx.models._chain",
    "DatasetError": "cpx.stages.dataset",
    "DeviceError": "cpx.execute._local",
    "FingerprintError": "cpx.models._fingerprint",
    "HiddenStateError": "cpx.stages._hidden",
    "MetricsError": "cpx.analysis._columns",
    "ModelLoadError": "cpx.models._load",
    "PlanError": "cpx.plan._model",
    "PowerError": "cpx.power._design",
    "ReportError": "cpx.report._load",
    "ResultsError": "cpx.results",
    "RunLocked": "cpx.execute._lock",
    "SamplerError": "cpx.stages._sampling",
    "SlurmError": "cpx.execute._slurm",
    "SpecError": "cpx.spec._errors",
    "StageParamError": "cpx.stages._rows",
    "StoreError": "cpx.execute._store",
    "TrackingError": "cpx.execute._tracking",
    "TrainError": "cpx.stages._training",
}


def __getattr__(name: str) -> type[CpxError]:
    module = _ELSEWHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'cpx.errors' has no attribute {name!r}")
    cls: type[CpxError] = getattr(importlib.import_module(module), name)
    globals()[name] = cls
    return cls


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ELSEWHERE))


__all__ = [
    "CLIError",
    "ChainError",
    "ConstantInputWarning",
    "CpxError",
    "DatasetError",
    "DebugBuildWarning",
    "DeviceError",
    "EmptyInputError",
    "FingerprintError",
    "GroupsError",
    "HiddenStateError",
    "InputError",
    "InputTypeError",
    "InternalError",
    "LengthMismatchError",
    "MetricsError",
    "ModelLoadError",
    "NaNError",
    "PlanError",
    "PowerError",
    "ReportError",
    "ResultsError",
    "RunLocked",
    "SamplerError",
    "SlurmError",
    "SpecError",
    "StageParamError",
    "StoreError",
    "TrackingError",
    "TrainError",
]


def _check_build(core: object) -> None:
    """Warns once if the extension is a debug build (set CPX_ALLOW_DEBUG_BUILD=1 to silence)."""
    import os
    import warnings

    global _checked
    if _checked:
        return
    _checked = True
    if getattr(core, "__build__", "release") == "debug" and not os.environ.get("CPX_ALLOW_DEBUG_BUILD"):
        warnings.warn(
            "cpx._core is a debug build and runs slowly; rebuild it with `maturin develop --release` (or `make setup`)",
            DebugBuildWarning,
            stacklevel=3,
        )


_checked = False
