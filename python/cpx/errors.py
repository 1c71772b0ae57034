"""Exception and warning classes of cpx's Rust core (`cpx._core`), for precise `except` clauses.

Every error the core raises is a `CpxError`. Errors about argument values are also
`ValueError`s, errors about argument types also `TypeError`s, so code that catches the
built-in classes keeps working.
"""

from __future__ import annotations


class CpxError(Exception):
    """Base class of the errors raised by cpx's Rust core."""


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


__all__ = [
    "ConstantInputWarning",
    "CpxError",
    "DebugBuildWarning",
    "EmptyInputError",
    "GroupsError",
    "InputError",
    "InputTypeError",
    "InternalError",
    "LengthMismatchError",
    "NaNError",
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
