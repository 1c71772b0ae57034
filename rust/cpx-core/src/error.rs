//! The core's error type; the binding maps each variant to its own Python exception class.

use thiserror::Error;

/// Every way a core call can fail on bad input.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CoreError {
    /// An argument has a value outside its domain (bad option, empty marker, ...).
    #[error("{0}")]
    Input(String),
    /// Two inputs that must have one element per observation differ in length.
    #[error("length mismatch: {left_name} has {left} elements but {right_name} has {right}")]
    LengthMismatch {
        left_name: String,
        left: usize,
        right_name: String,
        right: usize,
    },
    /// An input has no elements (or too few for the requested computation).
    #[error("{0}")]
    Empty(String),
    /// A NaN (or null) was found while `nan_policy` is `raise`.
    #[error("{name} contains NaN or null at index {index} (pass nan_policy=\"omit\" to drop such observations)")]
    NaN { name: String, index: usize },
    /// Group or cluster labels are inconsistent with the data or with the design.
    #[error("{0}")]
    Groups(String),
    /// An input has a type the computation does not accept (e.g. a string column as numbers).
    #[error("{0}")]
    Type(String),
}

pub type Result<T> = std::result::Result<T, CoreError>;

impl CoreError {
    pub fn input(msg: impl Into<String>) -> Self {
        CoreError::Input(msg.into())
    }
    pub fn empty(msg: impl Into<String>) -> Self {
        CoreError::Empty(msg.into())
    }
    pub fn groups(msg: impl Into<String>) -> Self {
        CoreError::Groups(msg.into())
    }
    pub fn length(left_name: &str, left: usize, right_name: &str, right: usize) -> Self {
        CoreError::LengthMismatch {
            left_name: left_name.into(),
            left,
            right_name: right_name.into(),
            right,
        }
    }
}
