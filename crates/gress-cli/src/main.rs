//! `gress`: the operator's tool for gress-state.
//!
//! Checkpoints (local directories and `s3://bucket/prefix`), snapshot
//! files, RocksDB state directories and the benchmarks, from a shell.
//! Every command takes `--json` for machine-readable output; exit codes are
//! listed in `gress --help`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[macro_use]
mod out;
mod bench;
mod checkpoint;
mod db;
mod job;
mod job_savepoint;
mod job_state;
mod location;
mod snapshot;

/// Exit codes scripts can rely on.
pub(crate) mod exit {
    /// The command did what was asked, and found nothing wrong.
    pub const OK: u8 = 0;
    /// The command failed: bad input, unreachable storage, a locked
    /// database, a missing checkpoint.
    pub const FAILED: u8 = 1;
    /// The command line is wrong (clap exits with it).
    #[allow(dead_code, reason = "clap's own exit code, listed with the others")]
    pub const USAGE: u8 = 2;
    /// Verification found damage (the report says where).
    pub const DAMAGED: u8 = 3;
    /// A key or checkpoint asked for is not there.
    pub const NOT_FOUND: u8 = 4;
}

const AFTER_HELP: &str = "\
Exit codes:
  0  done, nothing wrong found
  1  failed (bad input, unreachable storage, locked database, ...)
  2  wrong command line
  3  verification found damage
  4  the key or checkpoint asked for is not there

Locations are local directories or s3://bucket/prefix (credentials, region
and endpoint from the environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP).

Examples:
  gress checkpoint list /var/lib/job/checkpoints
  gress checkpoint verify s3://my-bucket/jobs/orders --all
  gress checkpoint restore ./checkpoints --worker 0 --to-rocksdb ./restored
  gress checkpoint gc ./checkpoints --retain 3 --dry-run
  gress snapshot dump state.snap --limit 10
  gress snapshot convert state.snap ./rocksdb-dir
  gress db stats ./rocksdb-dir --json
  gress job status http://127.0.0.1:9464
  gress job state ./checkpoints --operator count --state count --key user-42
  gress job savepoint ./checkpoints ./savepoints/before-upgrade
  gress bench memory --sizes 10000 --threads 1 --plot memory.svg";

#[derive(Parser, Debug)]
#[command(
    name = "gress",
    version,
    about = "Inspect, verify and repair gress-state checkpoints, snapshots and RocksDB state; run the benchmarks",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Machine-readable output: one JSON document (or JSON lines for
    /// dumps) on standard output.
    #[arg(long, global = true)]
    json: bool,
    /// How log lines (standard error, filtered by RUST_LOG, default info)
    /// are written.
    #[arg(long, global = true, value_enum, default_value_t = gress_app::log::LogFormat::Text)]
    log_format: gress_app::log::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Checkpoints of a backend or of a stream job: list, inspect, verify,
    /// restore, gc.
    #[command(subcommand)]
    Checkpoint(checkpoint::Cmd),
    /// Snapshot files: inspect, dump, convert.
    #[command(subcommand)]
    Snapshot(snapshot::Cmd),
    /// RocksDB state directories: stats, get, scan, compact.
    #[command(subcommand)]
    Db(db::Cmd),
    /// A stream job: status (from its metrics endpoint), keyed state (from
    /// its checkpoints), savepoints (write, list, start from).
    #[command(subcommand)]
    Job(job::Cmd),
    /// The benchmarks: a table, `--json`, `--plot out.svg`.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    gress_app::log::init(cli.log_format);
    let out = out::Out { json: cli.json };
    let result = match &cli.command {
        Command::Checkpoint(cmd) => checkpoint::run(cmd, &out),
        Command::Snapshot(cmd) => snapshot::run(cmd, &out),
        Command::Db(cmd) => db::run(cmd, &out),
        Command::Job(cmd) => job::run(cmd, &out),
        Command::Bench(args) => bench::run(args, &out),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if out.json {
                let doc = serde_json::json!({ "error": format!("{e:#}") });
                say!("{doc}");
            }
            eprintln!("error: {e:#}");
            ExitCode::from(exit::FAILED)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
