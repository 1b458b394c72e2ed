//! Operators with state.

pub mod connect;
pub mod join;
pub mod keyed;
pub(crate) mod source;
pub mod updating;
pub mod window;
