//! Logs.
//!
//! The engine logs through [`tracing`](https://docs.rs/tracing); nothing
//! is printed until a program installs a subscriber. [`init`] installs one
//! that writes to standard error, filtered by `RUST_LOG` (default
//! `info`), as text or as one JSON object per line:
//!
//! ```
//! gress_app::log::init(gress_app::log::LogFormat::Text);
//! ```
//!
//! An application with its own subscriber needs none of this; the levels
//! the engine uses are listed in the README ("Logs").

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event, for log collectors.
    Json,
}

/// The filter used when `RUST_LOG` is unset or empty.
pub const DEFAULT_FILTER: &str = "info";

/// Installs the global subscriber: events at or above `RUST_LOG`'s levels
/// (default [`DEFAULT_FILTER`]) go to standard error in `format`.
///
/// Returns `false`, and changes nothing, when a subscriber is already
/// installed. A `RUST_LOG` that does not parse is reported on standard
/// error and the default is used.
pub fn init(format: LogFormat) -> bool {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::try_new(&spec) {
            Ok(filter) => filter,
            Err(e) => {
                eprintln!("RUST_LOG={spec:?} is not a filter ({e}); logging at {DEFAULT_FILTER}");
                EnvFilter::new(DEFAULT_FILTER)
            }
        },
        _ => EnvFilter::new(DEFAULT_FILTER),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
            .is_ok(),
        LogFormat::Json => builder.json().flatten_event(true).try_init().is_ok(),
    }
}
