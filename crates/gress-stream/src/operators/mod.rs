//! Operators with state.

pub mod keyed;
