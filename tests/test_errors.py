"""The exception family: every cpx error is a CpxError, importable from cpx.errors."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import cpx
import cpx.errors


def _modules() -> list[str]:
    # cpx.__main__ runs the CLI when imported.
    names = [m.name for m in pkgutil.walk_packages(cpx.__path__, "cpx.") if m.name != "cpx.__main__"]
    return ["cpx", *names]


def _defined_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _modules():
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == name:
                found[f"{name}.{obj.__qualname__}"] = obj
    return found


def test_every_cpx_error_is_a_cpx_error_and_is_in_cpx_errors():
    found = _defined_exceptions()
    assert len(found) >= 25, sorted(found)
    errors = {k: v for k, v in found.items() if not issubclass(v, Warning)}
    outside = sorted(k for k, v in errors.items() if not issubclass(v, cpx.errors.CpxError))
    assert outside == []
    public = {v.__name__: v for v in found.values() if not v.__name__.startswith("_")}
    missing = sorted(n for n, v in public.items() if getattr(cpx.errors, n, None) is not v)
    assert missing == []
    assert sorted(public) == sorted(cpx.errors.__all__)


def test_mixins_are_kept():
    from cpx.errors import MetricsError, ResultsError, SamplerError, SpecError

    assert issubclass(SamplerError, ValueError) and issubclass(MetricsError, ValueError)
    assert issubclass(ResultsError, LookupError)
    assert issubclass(SpecError, cpx.errors.CpxError)


def test_unknown_name_is_an_attribute_error():
    try:
        cpx.errors.NoSuchError  # noqa: B018 - the attribute access is what is tested
    except AttributeError as e:
        assert "NoSuchError" in str(e)
    else:
        raise AssertionError("cpx.errors.NoSuchError resolved")


def test_importing_cpx_errors_imports_no_other_package():
    code = "import sys, cpx.errors; print(sorted(m for m in sys.modules if m.startswith('cpx.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['cpx._lazy', 'cpx.errors']"
