//! Core errors as Python exceptions: each variant has its own class, defined in `cpx.errors`.

use cpx_core::CoreError;
use pyo3::import_exception;
use pyo3::PyErr;

import_exception!(cpx.errors, InputError);
import_exception!(cpx.errors, LengthMismatchError);
import_exception!(cpx.errors, EmptyInputError);
import_exception!(cpx.errors, NaNError);
import_exception!(cpx.errors, GroupsError);
import_exception!(cpx.errors, InputTypeError);
import_exception!(cpx.errors, InternalError);

/// The Python exception for a core error (orphan rules forbid `From<CoreError> for PyErr`
/// here, so conversion is this function).
pub fn core_to_py(e: CoreError) -> PyErr {
    let msg = e.to_string();
    match e {
        CoreError::Input(_) => InputError::new_err(msg),
        CoreError::LengthMismatch { .. } => LengthMismatchError::new_err(msg),
        CoreError::Empty(_) => EmptyInputError::new_err(msg),
        CoreError::NaN { .. } => NaNError::new_err(msg),
        CoreError::Groups(_) => GroupsError::new_err(msg),
        CoreError::Type(_) => InputTypeError::new_err(msg),
    }
}
