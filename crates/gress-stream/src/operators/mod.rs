//! Operators with state.

pub mod join;
pub mod keyed;
pub mod window;
