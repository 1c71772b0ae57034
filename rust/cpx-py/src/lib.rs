//! `cpx._core`: the Python binding of cpx-core. It converts arguments (Arrow through the
//! PyCapsule interface, numpy buffers), runs the core with the GIL released, and maps core
//! errors and panics to the exception classes of `cpx.errors`. The typed, documented
//! surface is `cpx.scan` and `cpx.stats`; `cpx/_core.pyi` describes this module.

mod arrow;
mod errors;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, BooleanArray, UInt32Array};
use arrow_buffer::ScalarBuffer;
use arrow_schema::DataType;
use cpx_core::scan::Matcher;
use cpx_core::stats::adjust;
use cpx_core::stats::boot::{BootMethod, BootOptions, BootStatistic};
use cpx_core::stats::corr::{CorrMethod, CorrOptions, CorrResult};
use cpx_core::stats::perm::{PermOptions, Scheme, Statistic};
use cpx_core::CoreError;
use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::arrow::{import_chunks, PyArrowArray};
use crate::errors::{core_to_py, InputTypeError, InternalError};

/// Runs core work with the GIL released; core errors and panics become Python exceptions.
fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> Result<T, CoreError> + Send) -> PyResult<T> {
    match py.detach(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(core_to_py(e)),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(InternalError::new_err(format!(
                "internal error in cpx._core (please report it): {msg}"
            )))
        }
    }
}

fn parse<T: FromStr<Err = CoreError>>(s: &str) -> PyResult<T> {
    s.parse().map_err(core_to_py)
}

fn append_f64(a: &dyn Array, name: &str, out: &mut Vec<f64>) -> Result<(), CoreError> {
    macro_rules! prim {
        ($t:ty) => {{
            let p = a.as_primitive::<$t>();
            out.extend((0..p.len()).map(|i| {
                if p.is_valid(i) {
                    p.value(i) as f64
                } else {
                    f64::NAN
                }
            }));
        }};
    }
    match a.data_type() {
        DataType::Float64 => prim!(Float64Type),
        DataType::Float32 => prim!(Float32Type),
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type),
        DataType::Float16 => {
            let p = a.as_primitive::<Float16Type>();
            out.extend((0..p.len()).map(|i| {
                if p.is_valid(i) {
                    p.value(i).to_f64()
                } else {
                    f64::NAN
                }
            }));
        }
        DataType::Boolean => {
            let b = a.as_boolean();
            out.extend((0..b.len()).map(|i| {
                if b.is_valid(i) {
                    b.value(i) as u8 as f64
                } else {
                    f64::NAN
                }
            }));
        }
        DataType::Null => out.extend(std::iter::repeat_n(f64::NAN, a.len())),
        other => {
            return Err(CoreError::Type(format!(
                "{name} must be numeric or boolean, got Arrow type {other}"
            )))
        }
    }
    Ok(())
}

/// Numbers from an Arrow array/stream (nulls become NaN) or a float64 buffer (numpy).
fn f64_vec(ob: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<f64>> {
    if ob.hasattr("__arrow_c_array__")? || ob.hasattr("__arrow_c_stream__")? {
        let chunks = import_chunks(ob, name)?;
        let mut out = Vec::new();
        for c in &chunks {
            append_f64(c.as_ref(), name, &mut out).map_err(core_to_py)?;
        }
        return Ok(out);
    }
    let buf = PyBuffer::<f64>::get(ob).map_err(|e| {
        InputTypeError::new_err(format!(
            "{name} must be a float64 buffer or an Arrow array: {e}"
        ))
    })?;
    buf.to_vec(ob.py())
}

fn i64_vec(ob: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<i64>> {
    let buf = PyBuffer::<i64>::get(ob)
        .map_err(|e| InputTypeError::new_err(format!("{name} must be an int64 buffer: {e}")))?;
    buf.to_vec(ob.py())
}

fn opt_f64(ob: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<Vec<f64>>> {
    ob.map(|o| f64_vec(o, name)).transpose()
}

fn opt_i64(ob: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<Vec<i64>>> {
    ob.map(|o| i64_vec(o, name)).transpose()
}

fn f64_bytes<'py>(py: Python<'py>, v: &[f64]) -> Bound<'py, PyBytes> {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_ne_bytes()).collect();
    PyBytes::new(py, &bytes)
}

// ---------------------------------------------------------------------------------- scan

/// Counts of each marker per row: one UInt32 Arrow array per marker.
#[pyfunction]
#[pyo3(signature = (texts, markers, case_insensitive))]
fn count_markers(
    py: Python<'_>,
    texts: &Bound<'_, PyAny>,
    markers: Vec<String>,
    case_insensitive: bool,
) -> PyResult<Vec<PyArrowArray>> {
    let matcher = Matcher::new(&markers, case_insensitive).map_err(core_to_py)?;
    let chunks = import_chunks(texts, "texts")?;
    let (cols, nulls) = run(py, || cpx_core::scan::count_markers(&chunks, &matcher))?;
    Ok(cols
        .into_iter()
        .map(|c| {
            let arr: ArrayRef = Arc::new(UInt32Array::new(ScalarBuffer::from(c), nulls.clone()));
            PyArrowArray::new(arr)
        })
        .collect())
}

/// Whether any marker occurs in each row: a Boolean Arrow array.
#[pyfunction]
#[pyo3(signature = (texts, markers, case_insensitive))]
fn contains_any(
    py: Python<'_>,
    texts: &Bound<'_, PyAny>,
    markers: Vec<String>,
    case_insensitive: bool,
) -> PyResult<PyArrowArray> {
    let matcher = Matcher::new(&markers, case_insensitive).map_err(core_to_py)?;
    let chunks = import_chunks(texts, "texts")?;
    let (any, nulls) = run(py, || cpx_core::scan::contains_any(&chunks, &matcher))?;
    let arr = BooleanArray::new(any.into(), nulls);
    Ok(PyArrowArray::new(Arc::new(arr)))
}

// --------------------------------------------------------------------------------- stats

type CorrTuple = (f64, f64, String, bool, u64, usize, bool);
/// statistic, low, high, standard_error, n, n_clusters, degenerate, the distribution's bytes.
type BootTuple<'py> = (f64, f64, f64, f64, usize, usize, bool, Bound<'py, PyBytes>);
/// group code, then a BootTuple without the distribution.
type GroupBootRow = (i64, f64, f64, f64, f64, usize, usize, bool);
/// statistic, pvalue, f, df1, df2, msb, msw, k, n, n_groups, low, high.
type IccTuple = (
    f64,
    f64,
    f64,
    f64,
    f64,
    f64,
    f64,
    f64,
    usize,
    usize,
    f64,
    f64,
);

fn corr_tuple(r: CorrResult) -> CorrTuple {
    let method = match r.method {
        CorrMethod::Auto => "auto",
        CorrMethod::Exact => "exact",
        CorrMethod::Asymptotic => "asymptotic",
        CorrMethod::Permutation => "permutation",
    };
    (
        r.statistic,
        r.pvalue,
        method.into(),
        r.exact,
        r.n_permutations,
        r.n,
        r.constant,
    )
}

#[allow(clippy::too_many_arguments)] // one parameter per keyword argument of the Python signature
fn correlation(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    y: &Bound<'_, PyAny>,
    method: &str,
    alternative: &str,
    n_resamples: u64,
    seed: u64,
    nan_policy: &str,
    spearman: bool,
) -> PyResult<CorrTuple> {
    let opts = CorrOptions {
        method: parse(method)?,
        alternative: parse(alternative)?,
        n_resamples,
        seed,
        nan_policy: parse(nan_policy)?,
    };
    let (x, y) = (f64_vec(x, "x")?, f64_vec(y, "y")?);
    let r = run(py, || {
        if spearman {
            cpx_core::stats::corr::spearman(&x, &y, &opts)
        } else {
            cpx_core::stats::corr::pearson(&x, &y, &opts)
        }
    })?;
    Ok(corr_tuple(r))
}

/// Spearman's rho: (statistic, pvalue, method, exact, n_permutations, n, constant).
#[pyfunction]
#[pyo3(signature = (x, y, method="auto", alternative="two-sided", n_resamples=9999, seed=0, nan_policy="raise"))]
#[allow(clippy::too_many_arguments)] // one parameter per keyword argument of the Python signature
fn spearman(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    y: &Bound<'_, PyAny>,
    method: &str,
    alternative: &str,
    n_resamples: u64,
    seed: u64,
    nan_policy: &str,
) -> PyResult<CorrTuple> {
    correlation(
        py,
        x,
        y,
        method,
        alternative,
        n_resamples,
        seed,
        nan_policy,
        true,
    )
}

/// Pearson's r: (statistic, pvalue, method, exact, n_permutations, n, constant).
#[pyfunction]
#[pyo3(signature = (x, y, method="auto", alternative="two-sided", n_resamples=9999, seed=0, nan_policy="raise"))]
#[allow(clippy::too_many_arguments)] // one parameter per keyword argument of the Python signature
fn pearson(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    y: &Bound<'_, PyAny>,
    method: &str,
    alternative: &str,
    n_resamples: u64,
    seed: u64,
    nan_policy: &str,
) -> PyResult<CorrTuple> {
    correlation(
        py,
        x,
        y,
        method,
        alternative,
        n_resamples,
        seed,
        nan_policy,
        false,
    )
}

/// Permutation test: (statistic, pvalue, exact, n_permutations, n, constant).
#[pyfunction]
#[pyo3(signature = (x, y=None, groups=None, statistic="spearman", scheme=None, alternative="two-sided", n_resamples=9999, seed=0, nan_policy="raise"))]
#[allow(clippy::too_many_arguments)] // one parameter per keyword argument of the Python signature
fn permutation_test(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    y: Option<&Bound<'_, PyAny>>,
    groups: Option<&Bound<'_, PyAny>>,
    statistic: &str,
    scheme: Option<&str>,
    alternative: &str,
    n_resamples: u64,
    seed: u64,
    nan_policy: &str,
) -> PyResult<(f64, f64, bool, u64, usize, bool)> {
    let stat: Statistic = parse(statistic)?;
    let scheme = match scheme {
        None => Scheme::Free,
        Some(s) => Scheme::parse(s, stat).map_err(core_to_py)?,
    };
    let opts = PermOptions {
        statistic: stat,
        scheme,
        alternative: parse(alternative)?,
        n_resamples,
        seed,
        nan_policy: parse(nan_policy)?,
        force_exact: false,
    };
    let x = f64_vec(x, "x")?;
    let y = opt_f64(y, "y")?;
    let groups = opt_i64(groups, "groups")?;
    let r = run(py, || {
        cpx_core::stats::perm::permutation_test(&x, y.as_deref(), groups.as_deref(), &opts)
    })?;
    Ok((
        r.statistic,
        r.pvalue,
        r.exact,
        r.n_permutations,
        r.n,
        r.constant,
    ))
}

fn boot_opts(
    statistic: &str,
    method: &str,
    confidence_level: f64,
    n_resamples: u64,
    seed: u64,
) -> PyResult<BootOptions> {
    Ok(BootOptions {
        statistic: parse::<BootStatistic>(statistic)?,
        method: parse::<BootMethod>(method)?,
        confidence_level,
        n_resamples,
        seed,
    })
}

/// Bootstrap interval: (statistic, low, high, standard_error, n, n_clusters, degenerate,
/// distribution as float64 bytes).
#[pyfunction]
#[pyo3(signature = (data, clusters=None, statistic="mean", method="bca", confidence_level=0.95, n_resamples=9999, seed=0))]
#[allow(clippy::too_many_arguments)] // one parameter per keyword argument of the Python signature
fn bootstrap_ci<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    clusters: Option<&Bound<'py, PyAny>>,
    statistic: &str,
    method: &str,
    confidence_level: f64,
    n_resamples: u64,
    seed: u64,
) -> PyResult<BootTuple<'py>> {
    let opts = boot_opts(statistic, method, confidence_level, n_resamples, seed)?;
    let data = f64_vec(data, "data")?;
    let clusters = opt_i64(clusters, "clusters")?;
    let r = run(py, || {
        cpx_core::stats::boot::bootstrap_ci(&data, clusters.as_deref(), &opts)
    })?;
    let dist = f64_bytes(py, &r.distribution);
    Ok((
        r.statistic,
        r.low,
        r.high,
        r.standard_error,
        r.n,
        r.n_clusters,
        r.degenerate,
        dist,
    ))
}

/// Per-group bootstrap intervals: a list of (group code, statistic, low, high,
/// standard_error, n, n_clusters, degenerate), in order of group code.
#[pyfunction]
#[pyo3(signature = (values, groups, clusters=None, statistic="mean", method="bca", confidence_level=0.95, n_resamples=9999, seed=0))]
#[allow(clippy::too_many_arguments)] // one parameter per keyword argument of the Python signature
fn grouped_bootstrap(
    py: Python<'_>,
    values: &Bound<'_, PyAny>,
    groups: &Bound<'_, PyAny>,
    clusters: Option<&Bound<'_, PyAny>>,
    statistic: &str,
    method: &str,
    confidence_level: f64,
    n_resamples: u64,
    seed: u64,
) -> PyResult<Vec<GroupBootRow>> {
    let opts = boot_opts(statistic, method, confidence_level, n_resamples, seed)?;
    let values = f64_vec(values, "values")?;
    let groups = i64_vec(groups, "groups")?;
    let clusters = opt_i64(clusters, "clusters")?;
    let rows = run(py, || {
        cpx_core::stats::boot::grouped_bootstrap(&values, &groups, clusters.as_deref(), &opts)
    })?;
    Ok(rows
        .into_iter()
        .map(|(g, r)| {
            (
                g,
                r.statistic,
                r.low,
                r.high,
                r.standard_error,
                r.n,
                r.n_clusters,
                r.degenerate,
            )
        })
        .collect())
}

/// The seed `grouped_bootstrap` uses for its `k`-th group.
#[pyfunction]
fn group_seed(seed: u64, k: u64) -> u64 {
    cpx_core::stats::boot::group_seed(seed, k)
}

/// One-way ICC: (statistic, pvalue, f, df1, df2, msb, msw, k, n, n_groups, low, high).
#[pyfunction]
#[pyo3(signature = (values, groups, average=false, confidence_level=0.95))]
fn icc1(
    py: Python<'_>,
    values: &Bound<'_, PyAny>,
    groups: &Bound<'_, PyAny>,
    average: bool,
    confidence_level: f64,
) -> PyResult<IccTuple> {
    let values = f64_vec(values, "values")?;
    let groups = i64_vec(groups, "groups")?;
    let r = run(py, || {
        cpx_core::stats::icc::icc1(&values, &groups, average, confidence_level)
    })?;
    Ok((
        r.statistic,
        r.pvalue,
        r.f,
        r.df1,
        r.df2,
        r.msb,
        r.msw,
        r.k,
        r.n,
        r.n_groups,
        r.low,
        r.high,
    ))
}

/// Kish's design effect `1 + (m - 1) * icc`.
#[pyfunction]
fn design_effect(cluster_size: f64, icc: f64) -> PyResult<f64> {
    cpx_core::stats::icc::design_effect(cluster_size, icc).map_err(core_to_py)
}

/// Effective sample size `n / design_effect(m, icc)`.
#[pyfunction]
fn effective_n(n: f64, cluster_size: f64, icc: f64) -> PyResult<f64> {
    cpx_core::stats::icc::effective_n(n, cluster_size, icc).map_err(core_to_py)
}

/// Adjusted p-values as float64 bytes, in input order.
#[pyfunction]
#[pyo3(signature = (pvalues, method="holm"))]
fn p_adjust<'py>(
    py: Python<'py>,
    pvalues: &Bound<'py, PyAny>,
    method: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let m: adjust::AdjustMethod = parse(method)?;
    let p = f64_vec(pvalues, "pvalues")?;
    let out = run(py, || adjust::p_adjust(&p, m))?;
    Ok(f64_bytes(py, &out))
}

/// Threads the core uses (`CPX_NUM_THREADS`, else the number of CPUs).
#[pyfunction]
fn num_threads() -> usize {
    cpx_core::parallel::num_threads()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add(
        "__build__",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<PyArrowArray>()?;
    m.add_function(wrap_pyfunction!(count_markers, m)?)?;
    m.add_function(wrap_pyfunction!(contains_any, m)?)?;
    m.add_function(wrap_pyfunction!(spearman, m)?)?;
    m.add_function(wrap_pyfunction!(pearson, m)?)?;
    m.add_function(wrap_pyfunction!(permutation_test, m)?)?;
    m.add_function(wrap_pyfunction!(bootstrap_ci, m)?)?;
    m.add_function(wrap_pyfunction!(grouped_bootstrap, m)?)?;
    m.add_function(wrap_pyfunction!(group_seed, m)?)?;
    m.add_function(wrap_pyfunction!(icc1, m)?)?;
    m.add_function(wrap_pyfunction!(design_effect, m)?)?;
    m.add_function(wrap_pyfunction!(effective_n, m)?)?;
    m.add_function(wrap_pyfunction!(p_adjust, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    Ok(())
}
