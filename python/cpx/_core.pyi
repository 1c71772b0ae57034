"""cpx._core: the Rust extension (pyo3). Use the typed wrappers in `cpx.scan` and `cpx.stats`.

Numeric arguments are float64 buffers (numpy) or Arrow objects (PyCapsule interface; nulls
become NaN); label arguments are int64 buffers of codes. Errors are `cpx.errors` classes.
"""

from typing import Any, final

__all__ = [
    "__build__",
    "__version__",
    "ArrowArray",
    "count_markers",
    "contains_any",
    "spearman",
    "pearson",
    "permutation_test",
    "bootstrap_ci",
    "grouped_bootstrap",
    "group_seed",
    "icc1",
    "design_effect",
    "effective_n",
    "p_adjust",
    "num_threads",
]
__build__: str
__version__: str

@final
class ArrowArray:
    """An Arrow array exported through `__arrow_c_array__` (pass it to `pyarrow.array`)."""

    def __arrow_c_array__(self, requested_schema: object | None = None) -> tuple[object, object]: ...
    def __len__(self) -> int: ...

def count_markers(texts: Any, markers: list[str], case_insensitive: bool) -> list[ArrowArray]:
    """One UInt32 array per marker: non-overlapping occurrences per row (null rows null)."""

def contains_any(texts: Any, markers: list[str], case_insensitive: bool) -> ArrowArray:
    """A Boolean array: whether any marker occurs in each row (null rows null)."""

def spearman(
    x: Any,
    y: Any,
    method: str = "auto",
    alternative: str = "two-sided",
    n_resamples: int = 9999,
    seed: int = 0,
    nan_policy: str = "raise",
) -> tuple[float, float, str, bool, int, int, bool]:
    """(statistic, pvalue, method used, exact, n_permutations, n, constant input)."""

def pearson(
    x: Any,
    y: Any,
    method: str = "auto",
    alternative: str = "two-sided",
    n_resamples: int = 9999,
    seed: int = 0,
    nan_policy: str = "raise",
) -> tuple[float, float, str, bool, int, int, bool]:
    """(statistic, pvalue, method used, exact, n_permutations, n, constant input)."""

def permutation_test(
    x: Any,
    y: Any | None = None,
    groups: Any | None = None,
    statistic: str = "spearman",
    scheme: str | None = None,
    alternative: str = "two-sided",
    n_resamples: int = 9999,
    seed: int = 0,
    nan_policy: str = "raise",
) -> tuple[float, float, bool, int, int, bool]:
    """(statistic, pvalue, exact, n_permutations, n, constant input)."""

def bootstrap_ci(
    data: Any,
    clusters: Any | None = None,
    statistic: str = "mean",
    method: str = "bca",
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> tuple[float, float, float, float, int, int, bool, bytes]:
    """(statistic, low, high, standard_error, n, n_clusters, degenerate, distribution as
    float64 bytes)."""

def grouped_bootstrap(
    values: Any,
    groups: Any,
    clusters: Any | None = None,
    statistic: str = "mean",
    method: str = "bca",
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> list[tuple[int, float, float, float, float, int, int, bool]]:
    """Per group, in order of group code: (code, statistic, low, high, standard_error, n,
    n_clusters, degenerate)."""

def group_seed(seed: int, k: int) -> int:
    """The seed `grouped_bootstrap` uses for its `k`-th group."""

def icc1(
    values: Any, groups: Any, average: bool = False, confidence_level: float = 0.95
) -> tuple[float, float, float, float, float, float, float, float, int, int, float, float]:
    """(statistic, pvalue, f, df1, df2, msb, msw, k, n, n_groups, low, high)."""

def design_effect(cluster_size: float, icc: float) -> float:
    """Kish's design effect `1 + (m - 1) * icc`."""

def effective_n(n: float, cluster_size: float, icc: float) -> float:
    """`n / design_effect(cluster_size, icc)`."""

def p_adjust(pvalues: Any, method: str = "holm") -> bytes:
    """Adjusted p-values as float64 bytes, in input order."""

def num_threads() -> int:
    """Threads the core uses (`CPX_NUM_THREADS`, else the number of CPUs)."""
