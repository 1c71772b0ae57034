"""The rough edges a tired user meets: lazy submodules, a closed pipe, a narrow terminal,
SIGINT and SIGTERM, bad numeric arguments to the stats API."""

from __future__ import annotations

import io
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNNERS = ROOT / "tests" / "execute"
DEMO = ROOT / "tests" / "data" / "demo_small.yaml"
sys.path.insert(0, str(RUNNERS))

from _exec_runners import make_plan  # noqa: E402


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "python"), str(RUNNERS)]),
        "CPX_STAGE_RESOLVER": "_exec_runners:resolve",
    }


def test_stats_and_scan_are_attributes_of_cpx_imported_lazily() -> None:
    code = (
        "import sys, cpx\n"
        "before = sorted(m for m in ('cpx.stats', 'cpx.scan', 'numpy', 'pyarrow') if m in sys.modules)\n"
        "r = cpx.stats.spearman([1, 2, 3, 4], [1, 3, 2, 4])\n"
        "hits = cpx.scan.count_markers(['a [ZLT] b', 'none'], ['[ZLT]'], case_insensitive=True).column(0).to_pylist()\n"
        "print(before, r.statistic, hits, 'stats' in dir(cpx))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[]", "0.8", "[1,", "0]", "True"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import cpx

        cpx.nope  # noqa: B018


@pytest.mark.parametrize("argv", [["status", "RUN"], ["plan", "show", "RUN"], ["plan", "diff", "RUN", "RUN"]])
def test_a_closed_pipe_ends_quietly(tmp_path: Path, argv: list[str]) -> None:
    """`cpx status RUN | head -1`, with the reader gone before cpx writes anything."""
    run = tmp_path / "run"
    assert (
        subprocess.run(
            [sys.executable, "-m", "cpx", "compile", str(DEMO), "--out", str(run), "-q"], env=env()
        ).returncode
        == 0
    )
    read, write = os.pipe()
    os.close(read)
    try:
        p = subprocess.run(
            [sys.executable, "-m", "cpx", *[str(run) if a == "RUN" else a for a in argv]],
            env=env(),
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert p.stderr == "" and p.returncode == 141


def test_progress_fits_an_80_column_terminal() -> None:
    from rich.console import Console

    from cpx.execute._progress import RichDisplay
    from cpx.plan import Plan, Stage

    buf = io.StringIO()
    display = RichDisplay(Console(file=buf, width=80, force_terminal=True, color_system=None))
    st = Stage(id="sample/B/kindergarten_teacher/s42/ckpt0.25/marker/ckpt1.0", kind="sample", hash="0" * 64)
    display.run_started(Plan(name="demo", spec={}, spec_hash="0", stages=[st]), 280, 0, {})
    display.workers(["cpu"])
    display.stage_started(0, st)
    display.stage_progress(0, st.id, 1234, 28000, {"tokens": 123456})
    display.progress.refresh()
    display.close()
    lines = [ln.split("\x1b[2K")[-1] for ln in buf.getvalue().splitlines()]
    lines = [ln for ln in lines if "\x1b" not in ln and ln.strip()]
    assert lines and all(len(ln) <= 80 for ln in lines), lines
    last = [ln for ln in lines if "1234/28000" in ln]
    assert last and "tok/s" in last[-1] and "0:00:" in last[-1] and "…" in last[-1]
    assert any("0/280" in ln for ln in lines)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_and_terminate_stop_alike_and_leak_nothing(tmp_path: Path, sig: signal.Signals) -> None:
    make_plan(
        tmp_path,
        [{"id": f"data/{c}", "kind": "dataset", "params": {"chunks": 40, "sleep": 0.25}} for c in "ab"],
    )
    p = subprocess.Popen(
        [sys.executable, "-m", "cpx", "execute", str(tmp_path), "--devices", "cpu:2"],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((tmp_path / "logs").rglob("*.log"))) < 2:
        time.sleep(0.1)
    time.sleep(1.0)
    if sig == signal.SIGINT:
        os.killpg(p.pid, sig)  # Ctrl-C reaches the whole process group
    else:
        os.kill(p.pid, sig)  # kill PID reaches the driver alone
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert err.splitlines()[-1] == "cpx execute: interrupted", err
    assert "leaked" not in err and "Traceback" not in err
    assert not list((tmp_path / "stages").glob("*/*/manifest.json"))


X = np.arange(8.0)
TABLE = pa.table({"v": X, "g": [1] * 8})


def _calls():
    from cpx import stats as S

    return {
        "spearman n_resamples": lambda v: S.spearman(X, X[::-1], method="permutation", n_resamples=v),
        "spearman seed": lambda v: S.spearman(X, X[::-1], method="permutation", seed=v),
        "pearson n_resamples": lambda v: S.pearson(X, X[::-1], method="permutation", n_resamples=v),
        "pearson seed": lambda v: S.pearson(X, X[::-1], method="permutation", seed=v),
        "permutation_test n_resamples": lambda v: S.permutation_test(X, X[::-1], n_resamples=v),
        "permutation_test seed": lambda v: S.permutation_test(X, X[::-1], seed=v),
        "bootstrap_ci n_resamples": lambda v: S.bootstrap_ci(X, n_resamples=v),
        "bootstrap_ci seed": lambda v: S.bootstrap_ci(X, seed=v),
        "bootstrap_ci confidence_level": lambda v: S.bootstrap_ci(X, confidence_level=v),
        "grouped_bootstrap n_resamples": lambda v: S.grouped_bootstrap(TABLE, value="v", by=["g"], n_resamples=v),
        "grouped_bootstrap seed": lambda v: S.grouped_bootstrap(TABLE, value="v", by=["g"], seed=v),
        "grouped_bootstrap confidence_level": lambda v: S.grouped_bootstrap(
            TABLE, value="v", by=["g"], confidence_level=v
        ),
        "icc1 confidence_level": lambda v: S.icc1(X, [1, 1, 2, 2, 3, 3, 4, 4], confidence_level=v),
        "design_effect cluster_size": lambda v: S.design_effect(v, 0.1),
        "design_effect icc": lambda v: S.design_effect(5, v),
        "effective_n n": lambda v: S.effective_n(v, 5, 0.1),
        "effective_n icc": lambda v: S.effective_n(100, 5, v),
    }


@pytest.mark.parametrize("call", sorted(_calls()))
def test_every_numeric_argument_gets_a_typed_error(call: str) -> None:
    from cpx.errors import InputError, InputTypeError

    f = _calls()[call]
    whole = call.endswith(("n_resamples", "seed"))
    for bad in (-5, -(2**70), math.nan, math.inf, *((2**70,) if whole else ())):
        with pytest.raises(InputError):
            f(bad)
    if whole:
        with pytest.raises(InputError, match="whole number"):
            f(1.5)
    for wrong in ("3", None, True, [1]):
        with pytest.raises(InputTypeError, match=call.split()[-1]):
            f(wrong)
