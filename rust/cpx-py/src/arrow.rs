//! Arrow in and out through the PyCapsule interface (`__arrow_c_array__`,
//! `__arrow_c_stream__`), using arrow-array's C data interface directly.

use std::ffi::CStr;

use arrow_array::ffi::{from_ffi, to_ffi, FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::ffi_stream::FFI_ArrowArrayStream;
use arrow_array::{make_array, Array, ArrayRef};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyTuple};

use crate::errors::{InputError, InputTypeError};

fn arrow_err(e: arrow_schema::ArrowError) -> PyErr {
    InputError::new_err(format!("could not import Arrow data: {e}"))
}

fn capsule_ptr<T>(cap: &Bound<'_, PyCapsule>, name: &CStr) -> PyResult<*mut T> {
    Ok(cap.pointer_checked(Some(name))?.as_ptr().cast::<T>())
}

/// Imports an object with `__arrow_c_array__` as one array, or one with
/// `__arrow_c_stream__` as its chunks; `name` is used in error messages.
pub fn import_chunks(ob: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<ArrayRef>> {
    if ob.hasattr("__arrow_c_array__")? {
        let pair = ob.call_method0("__arrow_c_array__")?;
        let pair = pair.cast::<PyTuple>()?;
        let schema = pair.get_item(0)?;
        let array = pair.get_item(1)?;
        let schema = schema.cast::<PyCapsule>()?;
        let array = array.cast::<PyCapsule>()?;
        let sp = capsule_ptr::<FFI_ArrowSchema>(schema, c"arrow_schema")?;
        let ap = capsule_ptr::<FFI_ArrowArray>(array, c"arrow_array")?;
        // SAFETY: the capsules hold valid C data structs; the array is moved out (its release
        // callback now belongs to us) and the schema is only borrowed.
        let data = unsafe {
            let moved = std::ptr::replace(ap, FFI_ArrowArray::empty());
            from_ffi(moved, &*sp)
        }
        .map_err(arrow_err)?;
        return Ok(vec![make_array(data)]);
    }
    if ob.hasattr("__arrow_c_stream__")? {
        let cap = ob.call_method0("__arrow_c_stream__")?;
        let cap = cap.cast::<PyCapsule>()?;
        let p = capsule_ptr::<FFI_ArrowArrayStream>(cap, c"arrow_array_stream")?;
        // SAFETY: a valid stream; from_raw moves it out and marks the capsule's copy released.
        let mut stream = unsafe { FFI_ArrowArrayStream::from_raw(p) };
        let mut schema = FFI_ArrowSchema::empty();
        let get_schema = stream
            .get_schema
            .ok_or_else(|| InputError::new_err("Arrow stream is released"))?;
        let get_next = stream
            .get_next
            .ok_or_else(|| InputError::new_err("Arrow stream is released"))?;
        let last_error = |stream: &mut FFI_ArrowArrayStream| -> String {
            stream
                .get_last_error
                .map(|f| unsafe { f(stream) })
                .filter(|p| !p.is_null())
                .map(|p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
                .unwrap_or_else(|| "unknown error".into())
        };
        if unsafe { get_schema(&mut stream, &mut schema) } != 0 {
            let msg = last_error(&mut stream);
            return Err(InputError::new_err(format!(
                "reading the Arrow stream of {name} failed: {msg}"
            )));
        }
        let mut chunks = Vec::new();
        loop {
            let mut array = FFI_ArrowArray::empty();
            if unsafe { get_next(&mut stream, &mut array) } != 0 {
                let msg = last_error(&mut stream);
                return Err(InputError::new_err(format!(
                    "reading the Arrow stream of {name} failed: {msg}"
                )));
            }
            if array.is_released() {
                break;
            }
            let data = unsafe { from_ffi(array, &schema) }.map_err(arrow_err)?;
            chunks.push(make_array(data));
        }
        return Ok(chunks);
    }
    Err(InputTypeError::new_err(format!(
        "{name} must support the Arrow PyCapsule interface (__arrow_c_array__ or __arrow_c_stream__), got {}",
        ob.get_type().name()?
    )))
}

/// An Arrow array exported to Python through `__arrow_c_array__` (pass it to
/// `pyarrow.array`, `polars.Series` or `arro3`).
#[pyclass(frozen, module = "cpx._core", name = "ArrowArray")]
pub struct PyArrowArray {
    array: ArrayRef,
}

impl PyArrowArray {
    pub fn new(array: ArrayRef) -> Self {
        PyArrowArray { array }
    }
}

#[pymethods]
impl PyArrowArray {
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_array__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyCapsule>, Bound<'py, PyCapsule>)> {
        let _ = requested_schema;
        let (array, schema) = to_ffi(&self.array.to_data()).map_err(arrow_err)?;
        let schema = PyCapsule::new_with_value(py, schema, c"arrow_schema")?;
        let array = PyCapsule::new_with_value(py, array, c"arrow_array")?;
        Ok((schema, array))
    }

    fn __len__(&self) -> usize {
        self.array.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "cpx._core.ArrowArray<{}>[{}]",
            self.array.data_type(),
            self.array.len()
        )
    }
}
