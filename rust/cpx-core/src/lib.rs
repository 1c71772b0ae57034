//! cpx-core: the numeric heart of cpx's evaluation, with no Python in it.
//!
//! - [`scan`]: counting marker strings in Arrow string arrays, case-insensitively.
//! - [`stats`]: correlations, permutation tests, bootstrap intervals, ICC, p-value adjustment.
//!
//! Randomized functions draw from per-resample RNG streams ([`rng`]) so that a seed gives the
//! same answer whatever the number of threads ([`parallel`]).

pub mod error;
pub mod parallel;
pub mod rng;
pub mod scan;
pub mod special;
pub mod stats;

pub use error::{CoreError, Result};
