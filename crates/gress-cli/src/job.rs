//! `gress job`: a running stream job, through its status endpoint.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::exit;
use crate::out::{self, Out};

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
    /// A job's keyed state at a committed epoch, decoded.
    ///
    /// Read from its checkpoints (the job may be running): without filters, each
    /// operator's states and timers with their entry counts; with
    /// `--operator`, `--state` or `--key`, the entries, with key group,
    /// operator, state, key and namespace decoded (bytes as text where
    /// they are printable, else hex).
    #[command(
        after_help = "Examples:\n  gress job state ./checkpoints\n  gress job state ./checkpoints --operator count --state count --limit 10\n  gress job state s3://bucket/jobs/orders --key user-42 --json"
    )]
    State {
        /// The job's checkpoint location: a directory or s3://bucket/prefix.
        location: String,
        /// The committed epoch (default: the newest).
        #[arg(long)]
        epoch: Option<u64>,
        /// Only this keyed operator's states and timers.
        #[arg(long)]
        operator: Option<String>,
        /// Only this state (`--operator` too, or any operator's state of
        /// this name).
        #[arg(long)]
        state: Option<String>,
        /// Only this key: its bytes as text (`\xNN` escapes allowed).
        #[arg(long)]
        key: Option<String>,
        /// Print at most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Writes a savepoint of a job from its checkpoints.
    ///
    /// Every worker's keyed state at a committed epoch (the newest by default)
    /// as portable snapshots, with the sources' offsets, watermarks and the
    /// names of its operators and states. The job may be running. A job
    /// started from the savepoint may use another number of workers and
    /// another backend. DEST must be missing or empty.
    #[command(
        after_help = "Examples:\n  gress job savepoint ./checkpoints ./savepoints/before-upgrade\n  gress job savepoint s3://bucket/jobs/orders s3://bucket/savepoints/orders-1 --epoch 41"
    )]
    Savepoint {
        /// The job's checkpoint location: a directory or s3://bucket/prefix.
        location: String,
        /// Where to write the savepoint: a directory or s3://bucket/prefix.
        dest: String,
        /// The committed epoch (default: the newest).
        #[arg(long)]
        epoch: Option<u64>,
    },
    /// Lists the savepoints in a directory.
    ///
    /// The directory itself, if it is one, and those directly under it: job, epoch, workers, key groups, when written. Exit code
    /// 4 if there are none.
    List {
        /// A directory of savepoints.
        dir: String,
    },
    /// Verifies a savepoint, then runs a program from it.
    ///
    /// Every file of the savepoint is read and checked; then PROGRAM runs with its
    /// arguments and `--from-savepoint SAVEPOINT` added (the examples take
    /// it; an application passes it to `JobConfig::from_savepoint`), and
    /// exits with its exit code. Exit code 3 if the savepoint is damaged.
    #[command(
        after_help = "Example:\n  gress job start-from ./savepoints/before-upgrade -- example-stateful-processing --backend rocksdb --workers 4 --checkpoints ./checkpoints-v2 --output ./output-v2"
    )]
    StartFrom {
        /// The savepoint: a directory or s3://bucket/prefix.
        savepoint: String,
        /// The program and its arguments, after `--`.
        #[arg(last = true, required = true)]
        program: Vec<String>,
    },
    /// Stops a running job, optionally with a savepoint, through its
    /// metrics endpoint.
    ///
    /// The job must allow it (`JobConfig::with_remote_control`). Its
    /// sources close the epoch they read as the last one and that epoch is
    /// committed (with --drain: bounded sources first read to their end);
    /// with --savepoint, every worker's state at that epoch is written to
    /// DEST, which must be missing or empty. Waits until the job has
    /// stopped (or its process ended) and says so; exit code 1 if the
    /// request was refused, the job failed or the savepoint was not
    /// written.
    #[command(
        after_help = "Examples:\n  gress job stop http://127.0.0.1:9464 --savepoint ./savepoints/before-upgrade\n  gress job stop http://10.0.0.5:9464 --savepoint s3://bucket/savepoints/orders-7\n  gress job stop 127.0.0.1:9464 --drain"
    )]
    Stop {
        /// The job's metrics endpoint: `http://host:port`, or `host:port`.
        url: String,
        /// Write a savepoint of the last committed epoch here: a directory
        /// (as the job's process sees it) or s3://bucket/prefix.
        #[arg(long, conflicts_with = "drain")]
        savepoint: Option<String>,
        /// Drain instead: read bounded sources to their end first, so every
        /// window fires.
        #[arg(long)]
        drain: bool,
        /// Give up waiting after this many seconds (the job goes on
        /// stopping).
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// A running job's status, from its metrics endpoint.
    ///
    /// Read from `/status`:
    /// state, committed epoch, each worker's progress, source offsets and
    /// watermarks, last checkpoint, restarts. Exit code 1 if the job
    /// failed or the endpoint cannot be reached.
    Status {
        /// The job's metrics endpoint: `http://host:port` (a path is
        /// replaced by `/status`), or `host:port`.
        url: String,
    },
}

pub(crate) fn run(cmd: &Cmd, out: &Out) -> Result<u8> {
    match cmd {
        Cmd::Status { url } => status(url, out),
        Cmd::Stop {
            url,
            savepoint,
            drain,
            timeout,
        } => stop(url, savepoint.as_deref(), *drain, *timeout, out),
        Cmd::Savepoint {
            location,
            dest,
            epoch,
        } => crate::checkpoint::or_not_found(out, || {
            crate::job_savepoint::take(location, dest, *epoch, out)
        }),
        Cmd::List { dir } => {
            crate::checkpoint::or_not_found(out, || crate::job_savepoint::list(dir, out))
        }
        Cmd::StartFrom { savepoint, program } => crate::checkpoint::or_not_found(out, || {
            crate::job_savepoint::start_from(savepoint, program, out)
        }),
        Cmd::State {
            location,
            epoch,
            operator,
            state,
            key,
            limit,
        } => {
            let filter = crate::job_state::Filter {
                operator: operator.clone(),
                state: state.clone(),
                key: key.as_deref().map(crate::out::unescape).transpose()?,
            };
            crate::checkpoint::or_not_found(out, || {
                crate::job_state::read(location, *epoch, &filter, *limit, out)
            })
        }
    }
}

/// `host:port` of an endpoint URL.
fn authority(url: &str) -> Result<&str> {
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some(_) => bail!("{url}: only http:// endpoints are served"),
        None => url,
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        bail!("{url}: no host:port");
    }
    Ok(host)
}

/// The body of `GET /status` at `host`.
fn fetch(host: &str) -> Result<String> {
    let (status, body) = request(host, "GET", "/status", "")?;
    if !status.contains(" 200 ") {
        bail!("{host}/status answered `{status}`: {}", body.trim());
    }
    Ok(body)
}

/// One HTTP/1.1 request to `host`: the status line and the body.
fn request(host: &str, method: &str, path: &str, body: &str) -> Result<(String, String)> {
    let addr = host
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .with_context(|| format!("connecting to {host}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .with_context(|| format!("reading the answer of {host}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("{host} did not answer HTTP"))?;
    let status = head.lines().next().unwrap_or_default();
    Ok((status.to_string(), body.to_string()))
}

/// `gress job stop`: asks, then follows `/status` until the job stopped.
fn stop(url: &str, savepoint: Option<&str>, drain: bool, timeout: u64, out: &Out) -> Result<u8> {
    let host = authority(url)?;
    let (path, body) = match (drain, savepoint) {
        (true, _) => ("/job/drain", String::new()),
        (false, Some(dest)) => ("/job/stop", json!({ "savepoint": dest }).to_string()),
        (false, None) => ("/job/stop", String::new()),
    };
    let (status, answer) = request(host, "POST", path, &body)?;
    if !status.contains(" 202 ") {
        let why = serde_json::from_str::<Value>(&answer)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| answer.trim().to_string());
        bail!("{host}{path} refused (`{status}`): {why}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(timeout);
    let bar = out.spinner(if drain { "draining" } else { "stopping" });
    // The newest status seen; the process may end once the job has.
    let mut last: Option<Value> = None;
    let ended = loop {
        match fetch(host).and_then(|b| Ok(serde_json::from_str::<Value>(&b)?)) {
            Ok(doc) => {
                let state = doc["state"].as_str().unwrap_or_default().to_string();
                let savepoint_pending = doc["savepoint"]["state"] == "pending";
                last = Some(doc);
                if matches!(state.as_str(), "stopped" | "finished" | "failed") && !savepoint_pending
                {
                    break true;
                }
            }
            // Its process ended.
            Err(_) if last.is_some() => break false,
            Err(e) => return Err(e),
        }
        if std::time::Instant::now() > deadline {
            bar.finish_and_clear();
            bail!("the job was asked to stop but had not after {timeout} s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    bar.finish_and_clear();
    let doc = last.unwrap_or(Value::Null);
    let failed = ended && doc["state"] == "failed";
    // What the savepoint's location holds settles it, whatever the process
    // could still say.
    let written = match savepoint {
        Some(dest) => {
            let location = gress_stream::CheckpointStorage::from_url(dest)?;
            Some(gress_stream::savepoint::read(&location))
        }
        None => None,
    };
    let report = json!({
        "job_id": doc["job_id"],
        "state": if ended { doc["state"].clone() } else { json!("ended") },
        "committed_epoch": doc["committed_epoch"],
        "savepoint": match &written {
            Some(Ok(info)) => json!({ "location": savepoint, "epoch": info.epoch, "workers": info.workers }),
            Some(Err(e)) => json!({ "location": savepoint, "error": e.to_string() }),
            None => Value::Null,
        },
    });
    out.emit(&report, || {
        let state = if ended {
            doc["state"].as_str().unwrap_or("?").to_string()
        } else {
            "ended (its process exited)".to_string()
        };
        say!(
            "job {}: {state} at committed epoch {}",
            doc["job_id"].as_str().unwrap_or("?"),
            doc["committed_epoch"]
        );
        if failed {
            say!("error: {}", doc["error"].as_str().unwrap_or("?"));
        }
        match &written {
            Some(Ok(info)) => say!(
                "savepoint of epoch {} by {} workers written to {}",
                info.epoch,
                info.workers,
                savepoint.unwrap_or_default()
            ),
            Some(Err(e)) => say!("no savepoint: {e}"),
            None => {}
        }
    });
    Ok(if failed || matches!(written, Some(Err(_))) {
        exit::FAILED
    } else {
        exit::OK
    })
}

fn status(url: &str, out: &Out) -> Result<u8> {
    let host = authority(url)?;
    let body = fetch(host)?;
    let doc: Value =
        serde_json::from_str(&body).with_context(|| format!("{host}/status is not JSON"))?;
    let failed = doc["state"] == "failed";
    out.emit(&doc, || show(&doc));
    Ok(if failed { exit::FAILED } else { exit::OK })
}

fn show(doc: &Value) {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".into(),
        other => other.to_string(),
    };
    say!(
        "job {}: {}{} (restarts {})",
        text(&doc["job_id"]),
        text(&doc["state"]),
        doc["error"]
            .as_str()
            .map_or(String::new(), |e| format!(": {e}")),
        text(&doc["restarts"])
    );
    say!(
        "  process {} of {}, {} workers",
        text(&doc["process"]),
        text(&doc["processes"]),
        text(&doc["workers"])
    );
    match doc["committed_at_ms"].as_u64() {
        Some(ms) => say!(
            "  committed epoch {} (learned {})",
            text(&doc["committed_epoch"]),
            out::time(ms)
        ),
        None => say!("  no epoch committed yet"),
    }
    for w in doc["worker_status"].as_array().into_iter().flatten() {
        say!(
            "  worker {}: committed {}, {} epochs in flight, {} read, {} in, {} out",
            text(&w["worker"]),
            text(&w["committed_epoch"]),
            text(&w["epochs_in_flight"]),
            text(&w["records_read"]),
            text(&w["records_in"]),
            text(&w["records_out"])
        );
        if let Some(c) = w["last_checkpoint"].as_object() {
            say!(
                "    last checkpoint: epoch {}, {} ms, {} written",
                text(&c["epoch"]),
                text(&c["duration_ms"]),
                out::size(c["bytes_written"].as_u64().unwrap_or(0))
            );
        }
        if let Some(positions) = w["positions"].as_object() {
            if !positions.is_empty() {
                say!("    as of cut epoch {}:", text(&w["cut_epoch"]));
            }
            for (k, v) in positions {
                say!("      {k} = {}", text(v));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_read_from_urls() -> Result<()> {
        assert_eq!(
            authority("http://127.0.0.1:9464/metrics")?,
            "127.0.0.1:9464"
        );
        assert_eq!(authority("http://localhost:9464")?, "localhost:9464");
        assert_eq!(authority("127.0.0.1:1")?, "127.0.0.1:1");
        assert!(authority("https://x:1").is_err());
        assert!(authority("http:///status").is_err());
        Ok(())
    }
}
