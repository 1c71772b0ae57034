"""Every exception class of cpx, and the warnings of its Rust core, for precise `except` clauses.

Every error cpx raises is a `CpxError`. Errors about argument values are also `ValueError`s,
errors about argument types also `TypeError`s (and a missing result a `LookupError`), so code
that catches the built-in classes keeps working.

The core's classes are defined here; the others are defined next to the code that raises them,
re-exported by their package and here, lazily, so `import cpx.errors` stays as light as the core needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cpx._lazy import lazy_exports

if TYPE_CHECKING:
    from cpx.analysis import MetricsError
    from cpx.cli import CLIError
    from cpx.execute import DeviceError, FleetError, RunLocked, SlurmError, StoreError, TrackingError
    from cpx.models import ChainError, FingerprintError, ModelLoadError
    from cpx.plan import CostError, InvalidParam, PlanError, SamplerError, StageParamError
    from cpx.power import PowerError
    from cpx.report import ReportError
    from cpx.results import ResultsError
    from cpx.spec import SpecError
    from cpx.stages import DatasetError, HiddenStateError, TrainError


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
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "CLIError": "cpx.cli",
        "ChainError": "cpx.models",
        "CostError": "cpx.plan",
        "DatasetError": "cpx.stages",
        "DeviceError": "cpx.execute",
        "FleetError": "cpx.execute",
        "FingerprintError": "cpx.models",
        "HiddenStateError": "cpx.stages",
        "InvalidParam": "cpx.plan",
        "MetricsError": "cpx.analysis",
        "ModelLoadError": "cpx.models",
        "PlanError": "cpx.plan",
        "PowerError": "cpx.power",
        "ReportError": "cpx.report",
        "ResultsError": "cpx.results",
        "RunLocked": "cpx.execute",
        "SamplerError": "cpx.plan",
        "SlurmError": "cpx.execute",
        "SpecError": "cpx.spec",
        "StageParamError": "cpx.plan",
        "StoreError": "cpx.execute",
        "TrackingError": "cpx.execute",
        "TrainError": "cpx.stages",
    },
)


def is_oom(exc: BaseException) -> bool:
    """An accelerator out-of-memory error (torch's `OutOfMemoryError`, or a CUDA runtime error
    saying so), recognised without importing torch."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


__all__ = [
    "CLIError",
    "ChainError",
    "ConstantInputWarning",
    "CostError",
    "CpxError",
    "DatasetError",
    "DebugBuildWarning",
    "DeviceError",
    "EmptyInputError",
    "FingerprintError",
    "FleetError",
    "GroupsError",
    "HiddenStateError",
    "InputError",
    "InputTypeError",
    "InternalError",
    "InvalidParam",
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
