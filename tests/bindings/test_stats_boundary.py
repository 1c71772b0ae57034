"""The boundary of `cpx.stats`: input kinds, bad input and its exception classes,
thread-count independence, fork safety."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from cpx import stats
from cpx.errors import (
    ConstantInputWarning,
    CpxError,
    EmptyInputError,
    GroupsError,
    InputError,
    InputTypeError,
    LengthMismatchError,
    NaNError,
)

X = [1.0, 2.5, 3.0, 4.5, 2.0, 7.0, 1.5, 9.0, 3.3, 4.4, 6.1, 0.2]
Y = [2.0, 1.0, 4.0, 3.0, 5.5, 6.0, 0.5, 8.0, 2.2, 5.1, 7.7, 1.1]


@pytest.mark.parametrize(
    "make",
    [
        lambda v: v,
        np.asarray,
        lambda v: np.asarray(v, dtype=np.float32),
        pa.array,
        lambda v: pa.chunked_array([v[:5], v[5:]]),
        pl.Series,
        lambda v: pa.array(v).slice(0),
    ],
)
def test_input_kinds_agree(make: object) -> None:
    ref = stats.spearman(X, Y, method="asymptotic")
    got = stats.spearman(make(X), make(Y), method="asymptotic")  # type: ignore[operator]
    assert got.statistic == pytest.approx(ref.statistic, abs=1e-7)
    assert got.pvalue == pytest.approx(ref.pvalue, rel=1e-6)


def test_integer_and_boolean_arrow_inputs() -> None:
    r = stats.bootstrap_ci(pa.array([True, False, True, True]), statistic="proportion", n_resamples=99)
    assert r.statistic == 0.75
    r = stats.bootstrap_ci(pa.array([1, 2, 3], pa.int8()), n_resamples=99)
    assert r.statistic == 2.0


def test_sliced_arrow_numbers() -> None:
    arr = pa.array([100.0, *X, -100.0]).slice(1, len(X))
    assert stats.pearson(arr, Y).statistic == pytest.approx(stats.pearson(X, Y).statistic, abs=1e-15)


def test_bad_input_raises_cpx_classes() -> None:
    with pytest.raises(LengthMismatchError, match="x has 3 elements but y has 2"):
        stats.spearman([1, 2, 3], [1, 2])
    with pytest.raises(EmptyInputError):
        stats.pearson([], [])
    with pytest.raises(EmptyInputError):
        stats.bootstrap_ci([])
    with pytest.raises(NaNError, match="index 1"):
        stats.spearman([1, float("nan"), 3], [1, 2, 3])
    with pytest.raises(NaNError):
        stats.spearman(pa.array([1.0, None, 3.0]), [1, 2, 3])
    with pytest.raises(InputTypeError, match="numeric"):
        stats.spearman(pa.array(["a", "b", "c"]), [1, 2, 3])
    with pytest.raises(InputTypeError):
        stats.pearson(["a", "b"], [1, 2])
    with pytest.raises(InputError, match="method"):
        stats.spearman(X, Y, method="bogus")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="alternative"):
        stats.spearman(X, Y, alternative="bigger")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="one-dimensional"):
        stats.pearson(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(GroupsError, match="constant within each cluster"):
        stats.permutation_test(X, Y, scheme="clusters", groups=[0] * 6 + [1] * 6)
    with pytest.raises(LengthMismatchError):
        stats.permutation_test(X, Y, scheme="within", groups=[0, 1])
    with pytest.raises(GroupsError, match="null"):
        stats.icc1(X, [None] + [1] * 11)
    with pytest.raises(LengthMismatchError):
        stats.bootstrap_ci(X, clusters=[1, 2])
    with pytest.raises(InputError, match="0/1"):
        stats.bootstrap_ci([0, 1, 2], statistic="proportion")
    with pytest.raises(InputError, match="does not fit"):
        stats.permutation_test(X, Y, statistic="spearman", scheme="independent")
    for cls in (LengthMismatchError, EmptyInputError, NaNError, GroupsError, InputError):
        assert issubclass(cls, ValueError) and issubclass(cls, CpxError)
    assert issubclass(InputTypeError, TypeError)


def test_nan_omit_drops_pairs() -> None:
    x = [*X, float("nan")]
    y = [*Y, 3.0]
    r = stats.spearman(x, y, nan_policy="omit", method="asymptotic")
    assert r.n == len(X)
    assert r.statistic == stats.spearman(X, Y, method="asymptotic").statistic
    b = stats.bootstrap_ci([1.0, float("nan"), 3.0], nan_policy="omit", n_resamples=99)
    assert b.n == 2


def test_constant_input_warns_and_gives_nan() -> None:
    with pytest.warns(ConstantInputWarning):
        r = stats.spearman([1, 1, 1, 1], [1, 2, 3, 4])
    assert np.isnan(r.statistic) and np.isnan(r.pvalue)
    with pytest.warns(ConstantInputWarning):
        r2 = stats.permutation_test([2, 2, 2], [1, 2, 3], statistic="pearson")
    assert np.isnan(r2.pvalue)


THREADS_SCRIPT = """
import json, numpy as np
from cpx import stats
rng = np.random.default_rng(5)
x = rng.normal(size=25); y = x + rng.normal(size=25)
cl = np.repeat(np.arange(50), 4)
out = [
    stats.spearman(x, y, method="permutation", n_resamples=3000, seed=9).pvalue,
    stats.permutation_test(x[:12], y[:12], statistic="mean_diff", n_resamples=2000, seed=1).pvalue,
    stats.bootstrap_ci(rng.normal(size=200), n_resamples=500, seed=4).low,
    stats.bootstrap_ci(rng.normal(size=200), clusters=cl, n_resamples=500, seed=4).high,
    stats.spearman(x[:9], y[:9]).pvalue,
]
print(json.dumps(out))
"""


def _run(threads: str) -> str:
    env = {**os.environ, "CPX_NUM_THREADS": threads, "CPX_ALLOW_DEBUG_BUILD": "1"}
    return subprocess.run(
        [sys.executable, "-c", THREADS_SCRIPT], env=env, capture_output=True, text=True, check=True, timeout=120
    ).stdout


def test_same_seed_same_answer_whatever_the_threads() -> None:
    assert _run("1") == _run("2") == _run("3")


FORK_SCRIPT = """
import os, numpy as np
from cpx import stats
x = np.arange(30.0); y = np.sin(x)
a = stats.spearman(x, y, method="permutation", n_resamples=2000).pvalue
pid = os.fork()
if pid == 0:
    b = stats.spearman(x, y, method="permutation", n_resamples=2000).pvalue
    os._exit(0 if a == b else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


def test_parallel_work_after_fork() -> None:
    env = {**os.environ, "CPX_NUM_THREADS": "2", "CPX_ALLOW_DEBUG_BUILD": "1"}
    out = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "0"


def test_grouped_bootstrap_boundary() -> None:
    t = pl.DataFrame({"v": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "g": ["b", "a", "b", "a", "b", "a"]})
    out = stats.grouped_bootstrap(t, value="v", by=["g"], n_resamples=200).to_pylist()
    assert [r["g"] for r in out] == ["a", "b"]
    assert [r["estimate"] for r in out] == [4.0, 3.0]
    with pytest.raises(InputError, match="not in the table"):
        stats.grouped_bootstrap(t, value="nope", by=["g"])
