//! What a gress program sets up before it does anything: [`log`] installs
//! a `tracing` subscriber, and [`data_dir`] prepares a directory the
//! program writes to without ever deleting one it did not create.
//!
//! The CLI, the demo and the examples use it; an application embedding
//! the engine may too, or set up both its own way.

pub mod data_dir;
pub mod log;

use std::path::{Path, PathBuf};

/// The options every gress program shares: where its data goes, whether
/// to replace an earlier run's, and how it logs. Flatten it into a clap
/// parser with `#[command(flatten)]`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ProgramArgs {
    /// Directory for the program's data; it must be missing or empty. The
    /// default directory is replaced when this program made it; another
    /// one only with --fresh, and never one the program did not make.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Replace what an earlier run of this program wrote to --data-dir.
    #[arg(long)]
    pub fresh: bool,
    /// How log lines (on standard error, filtered by RUST_LOG, default
    /// info) are written.
    #[arg(long, value_enum, default_value_t)]
    pub log_format: log::LogFormat,
}

impl ProgramArgs {
    /// Installs the log subscriber and prepares the data directory for
    /// `program`: `--data-dir` if given, else `default`. Returns the
    /// directory, created, marked as `program`'s and empty.
    pub fn start(&self, program: &str, default: &Path) -> Result<PathBuf, data_dir::DataDirError> {
        log::init(self.log_format);
        let (dir, replace) = match &self.data_dir {
            Some(dir) => (dir.clone(), self.fresh),
            None => (default.to_path_buf(), true),
        };
        data_dir::empty(&dir, program, replace)?;
        Ok(dir)
    }
}
