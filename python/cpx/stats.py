"""Statistics for evaluation results, computed by cpx's Rust core.

Correlations with exact, asymptotic and permutation p-values; permutation tests with free,
within-group and whole-cluster schemes; bootstrap intervals (percentile, basic, BCa) that
can resample whole clusters (completions of one question are not independent); one-way ICC
and Kish's design effect; p-value adjustment.

Numbers arrive as numpy arrays, Python sequences or anything with the Arrow PyCapsule
interface (Arrow nulls count as NaN). Randomized functions take `seed` and `n_resamples`;
resample `i` draws from its own random stream, so a seed gives the same answer whatever the
number of threads (`CPX_NUM_THREADS`). Results are frozen dataclasses with `.statistic` and
`.pvalue` (intervals: `.low`, `.high`). Bad input raises a `cpx.errors.CpxError` subclass.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cpx import _core
from cpx.scan import _unview
from cpx.errors import (
    ConstantInputWarning,
    GroupsError,
    InputError,
    InputTypeError,
    _check_build,
)

_check_build(_core)

__all__ = [
    "BootstrapResult",
    "CorrelationResult",
    "ICCResult",
    "PermutationTestResult",
    "bootstrap_ci",
    "design_effect",
    "effective_n",
    "grouped_bootstrap",
    "icc1",
    "icc1k",
    "p_adjust",
    "pearson",
    "permutation_test",
    "spearman",
]

Alternative = Literal["two-sided", "less", "greater"]
NanPolicy = Literal["raise", "omit"]


@dataclass(frozen=True)
class CorrelationResult:
    """A correlation and its p-value.

    `method` is the method used ("auto" resolved), `exact` says whether the p-value comes from
    enumerating all n! orderings, `n_permutations` how many orderings were evaluated (0 for
    "asymptotic"), `n` how many pairs were used.
    """

    statistic: float
    pvalue: float
    method: str
    exact: bool
    n_permutations: int
    n: int


@dataclass(frozen=True)
class PermutationTestResult:
    """A permutation test: `exact` says whether all rearrangements were enumerated (then
    `pvalue` is count / n_permutations), else `pvalue` is (count + 1) / (n_permutations + 1)."""

    statistic: float
    pvalue: float
    exact: bool
    n_permutations: int
    n: int


@dataclass(frozen=True, eq=False)
class BootstrapResult:
    """A bootstrap confidence interval `[low, high]` around `statistic`.

    `degenerate` is true when every resample gave the same value (for example a proportion of
    0 hits): the interval is then that value. `bootstrap_distribution` holds the statistic of
    each resample.
    """

    statistic: float
    low: float
    high: float
    standard_error: float
    confidence_level: float
    method: str
    n: int
    n_clusters: int
    degenerate: bool
    bootstrap_distribution: np.ndarray = field(repr=False)

    @property
    def confidence_interval(self) -> tuple[float, float]:
        """`(low, high)`."""
        return (self.low, self.high)


@dataclass(frozen=True)
class ICCResult:
    """One-way random-effects ICC with its ANOVA F test (H0: ICC = 0, against ICC > 0) and
    an F-based confidence interval `[low, high]` (Shrout & Fleiss 1979).

    `k` is the group size used (the mean size when balanced; Donner's adjusted size
    `(N - sum(n_g^2) / N) / (g - 1)` otherwise).
    """

    statistic: float
    pvalue: float
    f: float
    df1: float
    df2: float
    msb: float
    msw: float
    k: float
    n: int
    n_groups: int
    low: float
    high: float


def _is_arrow(x: Any) -> bool:
    return hasattr(x, "__arrow_c_array__") or hasattr(x, "__arrow_c_stream__")


def _numbers(x: Any, name: str) -> Any:
    """An Arrow object as is (the core reads it), else a 1-D float64 numpy array."""
    if _is_arrow(x):
        return x
    try:
        a = np.ascontiguousarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputTypeError(f"{name} must be numbers: {e}") from None
    if a.ndim != 1:
        raise InputError(f"{name} must be one-dimensional, got shape {a.shape}")
    return a


_U64_MAX = 2**64 - 1


def _whole(v: Any, name: str, least: int) -> int:
    """An integer argument checked before the binding, which would raise a bare OverflowError
    or TypeError: a wrong type is an InputTypeError, a wrong value an InputError (the class a
    value the core rejects gets)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer, float, np.floating)):
        raise InputTypeError(f"{name} must be an integer, got {type(v).__name__} {v!r}")
    if isinstance(v, (float, np.floating)) and not (np.isfinite(v) and float(v).is_integer()):
        raise InputError(f"{name} must be a whole number, got {v!r}")
    n = int(v)
    if not least <= n <= _U64_MAX:
        raise InputError(f"{name} must be between {least} and {_U64_MAX}, got {n}")
    return n


def _real(v: Any, name: str) -> float:
    """A float argument: a number (not a bool or a string), else an InputTypeError; NaN and
    the ranges are left to the core, which raises InputError."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise InputTypeError(f"{name} must be a number, got {type(v).__name__} {v!r}")
    return float(v)


def _to_arrow(x: Any, name: str) -> pa.Array:
    try:
        if isinstance(x, pa.ChunkedArray):
            return x.combine_chunks()
        if _is_arrow(x):
            a = pa.array(x) if hasattr(x, "__arrow_c_array__") else pa.chunked_array(x)
            return a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a
        return pa.array(np.asarray(x) if not isinstance(x, (list, tuple)) else x)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
        raise InputTypeError(f"{name} must be a sequence of labels: {e}") from None


def _codes(labels: Any, name: str, n: int | None = None) -> np.ndarray:
    """Integer codes (int64) for arbitrary group labels."""
    a = _to_arrow(labels, name)
    if n is not None and len(a) != n:
        from cpx.errors import LengthMismatchError

        raise LengthMismatchError(f"length mismatch: {name} has {len(a)} elements but the data has {n}")
    if a.null_count:
        first = pc.index(pc.is_null(a), True).as_py()
        raise GroupsError(f"{name} contains a null label at index {first}")
    if a.type == pa.string_view():
        a = a.cast(pa.large_string())
    # codes in order of sorted label value, so that a subset of the rows gets codes in the
    # same relative order (resampling, which draws clusters by code, then agrees)
    uniq = pc.unique(a)
    uniq = uniq.take(pc.sort_indices(uniq))
    return np.asarray(pc.index_in(a, value_set=uniq).to_numpy(zero_copy_only=False), dtype=np.int64)


def _warn_constant(what: str) -> None:
    warnings.warn(
        f"an input of {what} is constant: the correlation is undefined (statistic and p-value are NaN)",
        ConstantInputWarning,
        stacklevel=3,
    )


def _corr(
    fn: Any, what: str, x: Any, y: Any, method: str, alternative: str, n_resamples: int, seed: int, nan_policy: str
) -> CorrelationResult:
    stat, p, used, exact, nperm, n, constant = fn(
        _numbers(x, "x"),
        _numbers(y, "y"),
        method,
        alternative,
        _whole(n_resamples, "n_resamples", 1),
        _whole(seed, "seed", 0),
        nan_policy,
    )
    if constant:
        _warn_constant(what)
    return CorrelationResult(stat, p, used, exact, nperm, n)


def spearman(
    x: Any,
    y: Any,
    *,
    method: Literal["auto", "exact", "asymptotic", "permutation"] = "auto",
    alternative: Alternative = "two-sided",
    n_resamples: int = 9999,
    seed: int = 0,
    nan_policy: NanPolicy = "raise",
) -> CorrelationResult:
    """Spearman's rank correlation of paired `x`, `y` (ties get average ranks) and its p-value.

    - "exact": the permutation distribution over all n! orderings of `y` (n <= 11); the
      default ("auto") for n <= 10, where the asymptotic t approximation misleads.
    - "asymptotic": Student's t with n - 2 degrees of freedom, as scipy.stats.spearmanr.
    - "permutation": `n_resamples` random orderings (exact if n! <= n_resamples).

    Two-sided p-values are twice the smaller one-sided p-value (scipy.stats.permutation_test).
    A constant input gives NaN with a `ConstantInputWarning`; NaN raises `NaNError` unless
    `nan_policy="omit"`, which drops incomplete pairs.
    """
    return _corr(_core.spearman, "spearman", x, y, method, alternative, n_resamples, seed, nan_policy)


def pearson(
    x: Any,
    y: Any,
    *,
    method: Literal["auto", "exact", "asymptotic", "permutation"] = "auto",
    alternative: Alternative = "two-sided",
    n_resamples: int = 9999,
    seed: int = 0,
    nan_policy: NanPolicy = "raise",
) -> CorrelationResult:
    """Pearson's correlation of paired `x`, `y` and its p-value.

    Methods as in `spearman`; "asymptotic" is the exact test under bivariate normality used
    by scipy.stats.pearsonr (r ~ Beta(n/2 - 1, n/2 - 1) on [-1, 1]).
    """
    return _corr(_core.pearson, "pearson", x, y, method, alternative, n_resamples, seed, nan_policy)


def permutation_test(
    x: Any,
    y: Any = None,
    *,
    statistic: Literal["spearman", "pearson", "mean_diff", "mean"] = "spearman",
    scheme: Literal["pairings", "independent", "samples", "within", "clusters"] | None = None,
    groups: Any = None,
    n_resamples: int = 9999,
    alternative: Alternative = "two-sided",
    seed: int = 0,
    nan_policy: NanPolicy = "raise",
) -> PermutationTestResult:
    """A permutation test of `statistic`.

    The statistic fixes the design: "spearman"/"pearson" correlate paired `x`, `y` and permute
    the pairings; "mean_diff" is `mean(x) - mean(y)` of independent samples and permutes the
    sample labels; "mean" is `mean(x)` (or `mean(x - y)` for paired `y`) and flips signs.
    `scheme` restricts the rearrangements (default: the free scheme of the statistic):

    - "within": rearrange only inside each group of `groups`;
    - "clusters": rearrange whole groups as units (for correlations, `y` must be constant
      within each group and the groups' `y` values are permuted; for "mean_diff", every group
      lies wholly in `x` or in `y` and group labels are permuted; for "mean", each group's
      sign is flipped as one).

    `groups` has one label per pair (correlations, "mean"), or per element of `x` followed by
    `y` ("mean_diff"). Exact enumeration is used whenever the number of distinct
    rearrangements is at most `n_resamples`; otherwise the p-value is Monte Carlo,
    (count + 1) / (n_resamples + 1). Comparisons use scipy's relative tolerance (100 ulp).
    """
    xs = _numbers(x, "x")
    ys = None if y is None else _numbers(y, "y")
    g = None
    if groups is not None:
        g = _codes(groups, "groups")
    stat, p, exact, nperm, n, constant = _core.permutation_test(
        xs,
        ys,
        g,
        statistic,
        scheme,
        alternative,
        _whole(n_resamples, "n_resamples", 1),
        _whole(seed, "seed", 0),
        nan_policy,
    )
    if constant:
        _warn_constant(statistic)
    return PermutationTestResult(stat, p, exact, nperm, n)


def _drop_nan(data: Any, clusters: Any, nan_policy: str) -> tuple[Any, Any]:
    if nan_policy == "raise":
        return data, clusters
    if nan_policy != "omit":
        raise InputError(f'nan_policy must be "raise" or "omit", got {nan_policy!r}')
    d = np.asarray(pa.array(data).to_numpy(zero_copy_only=False) if _is_arrow(data) else data, dtype=np.float64)
    keep = ~np.isnan(d)
    if clusters is not None:
        if len(clusters) != len(d):
            return d, clusters  # the core reports the mismatch
        clusters = np.asarray(clusters)[keep]
    return np.ascontiguousarray(d[keep]), clusters


def bootstrap_ci(
    data: Any,
    *,
    statistic: Literal["mean", "median", "proportion", "sum", "std", "var"] = "mean",
    method: Literal["percentile", "basic", "bca"] = "bca",
    clusters: Any = None,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    nan_policy: NanPolicy = "raise",
) -> BootstrapResult:
    """Bootstrap confidence interval of `statistic(data)` (two-sided).

    Definitions follow scipy.stats.bootstrap: "percentile" and "basic" intervals, and "bca"
    (bias-corrected and accelerated, with a jackknife estimate of the acceleration). With
    `clusters` (one label per observation), whole clusters are drawn with replacement and the
    jackknife leaves out one cluster at a time; "mean"/"proportion" of a resample is then the
    mean over all its observations. "proportion" needs 0/1 or boolean data.
    """
    data, clusters = _drop_nan(data, clusters, nan_policy)
    d = _numbers(data, "data")
    c = None if clusters is None else _codes(clusters, "clusters")
    stat, low, high, se, n, ncl, degenerate, dist = _core.bootstrap_ci(
        d,
        c,
        statistic,
        method,
        _real(confidence_level, "confidence_level"),
        _whole(n_resamples, "n_resamples", 1),
        _whole(seed, "seed", 0),
    )
    return BootstrapResult(
        stat, low, high, se, confidence_level, method, n, ncl, degenerate, np.frombuffer(dist, dtype=np.float64)
    )


def grouped_bootstrap(
    table: Any,
    *,
    value: str,
    by: Sequence[str],
    cluster: str | None = None,
    statistic: Literal["mean", "median", "proportion", "sum", "std", "var"] = "mean",
    method: Literal["percentile", "basic", "bca"] = "bca",
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> pa.Table:
    """`bootstrap_ci` of column `value` for each group of equal `by` values of an Arrow table.

    For example the leakage rate with its interval per (arm, source, checkpoint, persona),
    clustered by question: `grouped_bootstrap(hits, value="hit", by=[...],
    cluster="question_id", statistic="proportion")`. Returns the `by` columns (groups sorted
    by them) and `n`, `n_clusters`, `estimate`, `low`, `high`, `standard_error`,
    `degenerate`. Groups run in parallel; the `k`-th group (in sorted order) uses its own
    seed derived from `seed` and `k`. `by` columns must not contain nulls; `value` must be
    numeric or boolean without nulls.
    """
    t = table if isinstance(table, pa.Table) else pa.table(table)
    by = list(by)
    missing = [c for c in [value, *by, *([cluster] if cluster else [])] if c not in t.column_names]
    if missing:
        raise InputError(f"column(s) {missing} not in the table (columns: {t.column_names})")
    t = _unview(t, by)
    cols = [value, *by] + ([cluster] if cluster else [])
    missing = [c for c in cols if c not in t.column_names]
    if missing:
        raise InputError(f"column(s) {missing} not in the table (columns: {t.column_names})")
    if t.num_rows == 0:
        from cpx.errors import EmptyInputError

        raise EmptyInputError("grouped_bootstrap needs at least one row")
    for c in by:
        if t.column(c).null_count:
            raise GroupsError(f"group column {c!r} contains nulls")
    if by:
        keys = t.select(by).group_by(by, use_threads=False).aggregate([])
        keys = keys.sort_by([(c, "ascending") for c in by])
        keys = keys.append_column("_gid", pa.array(np.arange(keys.num_rows, dtype=np.int64)))
        rows = t.select(cols).append_column("_row", pa.array(np.arange(t.num_rows, dtype=np.int64)))
        joined = rows.join(keys, keys=by, join_type="inner", use_threads=False).sort_by("_row")
        gid = joined.column("_gid").to_numpy()
        vals = joined.column(value)
        cl = joined.column(cluster) if cluster else None
    else:
        keys = pa.table({})
        gid = np.zeros(t.num_rows, dtype=np.int64)
        vals = t.column(value)
        cl = t.column(cluster) if cluster else None
    rows_out = _core.grouped_bootstrap(
        vals,
        np.ascontiguousarray(gid, dtype=np.int64),
        None if cl is None else _codes(cl, "cluster"),
        statistic,
        method,
        _real(confidence_level, "confidence_level"),
        _whole(n_resamples, "n_resamples", 1),
        _whole(seed, "seed", 0),
    )
    out: dict[str, Any] = {c: keys.column(c) for c in by}
    names = ["_g", "estimate", "low", "high", "standard_error", "n", "n_clusters", "degenerate"]
    cols_out: list[Sequence[Any]] = [list(c) for c in zip(*rows_out)] if rows_out else [[] for _ in names]
    res = dict(zip(names, cols_out))
    out["n"] = pa.array(res["n"], pa.int64())
    out["n_clusters"] = pa.array(res["n_clusters"], pa.int64())
    for c in ("estimate", "low", "high", "standard_error"):
        out[c] = pa.array(res[c], pa.float64())
    out["degenerate"] = pa.array(res["degenerate"], pa.bool_())
    return pa.table(out)


def _icc(values: Any, groups: Any, average: bool, confidence_level: float) -> ICCResult:
    v = _numbers(values, "values")
    g = _codes(groups, "groups")
    return ICCResult(*_core.icc1(v, g, average, _real(confidence_level, "confidence_level")))


def icc1(values: Any, groups: Any, *, confidence_level: float = 0.95) -> ICCResult:
    """ICC(1): one-way random effects, single measure — the correlation between two
    observations of the same group, `(MSB - MSW) / (MSB + (k - 1) MSW)`."""
    return _icc(values, groups, False, confidence_level)


def icc1k(values: Any, groups: Any, *, confidence_level: float = 0.95) -> ICCResult:
    """ICC(1,k): one-way random effects, reliability of a group's mean, `(MSB - MSW) / MSB`."""
    return _icc(values, groups, True, confidence_level)


def design_effect(cluster_size: float, icc: float) -> float:
    """Kish's design effect `1 + (m - 1) * icc` for clusters of (mean) size `m`."""
    return _core.design_effect(_real(cluster_size, "cluster_size"), _real(icc, "icc"))


def effective_n(n: float, cluster_size: float, icc: float) -> float:
    """Kish's effective sample size `n / design_effect(cluster_size, icc)`."""
    return _core.effective_n(_real(n, "n"), _real(cluster_size, "cluster_size"), _real(icc, "icc"))


def p_adjust(pvalues: Any, method: Literal["holm", "bh", "bonferroni"] = "holm") -> np.ndarray:
    """Adjusted p-values in input order (as R's `p.adjust`): Holm's step-down, Benjamini–
    Hochberg's false discovery rate ("bh"), or Bonferroni."""
    return np.frombuffer(_core.p_adjust(_numbers(pvalues, "pvalues"), method), dtype=np.float64).copy()
