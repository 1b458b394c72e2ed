//! The queries, one function each, from the event stream to the query's
//! output stream.

pub mod joins;
pub mod stateless;
pub mod updating;
pub mod windows;
