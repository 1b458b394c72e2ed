//! Operators with state.

pub mod join;
pub mod keyed;
pub(crate) mod source;
pub mod window;
