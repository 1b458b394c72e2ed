//! Running one job as several processes.
//!
//! Every process of a job runs the same program with the same host list
//! (timely's hostfile: one `host:port` per process) and its own index in it.
//! A program finds its place with [`from_env`] (variables
//! [`PROCESS_ENV`] and [`HOSTFILE_ENV`]) and passes it to
//! [`JobConfig::with_cluster`](crate::JobConfig::with_cluster).
//! On several machines, start the program on each with those two variables
//! set. On one machine, [`launch_local`] starts every process itself.

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use crate::error::{Error, Result};

/// This process's index in the hostfile.
pub const PROCESS_ENV: &str = "GRESS_PROCESS";
/// The hostfile: one `host:port` per process, in process order.
pub const HOSTFILE_ENV: &str = "GRESS_HOSTFILE";

/// Connects this process to every other process of the job, as timely
/// expects (a stream to each, in process order, none to itself), giving up
/// after `timeout` with an error that names the processes it could not
/// reach. Timely itself would retry forever.
pub(crate) fn connect(
    hosts: &[String],
    process: usize,
    timeout: Duration,
) -> Result<Vec<Option<std::net::TcpStream>>> {
    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    use std::time::Instant;

    let deadline = Instant::now() + timeout;
    let fail = |why: String| Error::Worker(format!("process {process} of {}: {why}", hosts.len()));
    let listeners = hosts[process]
        .split_whitespace()
        .map(|a| {
            let l = TcpListener::bind(a).map_err(|e| {
                fail(format!(
                    "cannot listen at {a}, its own address in the hostfile: {e}"
                ))
            })?;
            l.set_nonblocking(true)
                .map_err(|e| fail(format!("listening at {a}: {e}")))?;
            Ok(l)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut streams: Vec<Option<TcpStream>> = (0..hosts.len()).map(|_| None).collect();
    let mut last_error: Vec<String> = vec![String::new(); hosts.len()];
    let mut next_report = Instant::now() + Duration::from_secs(5);
    let handshake = |s: &mut TcpStream, index: u64| -> std::io::Result<()> {
        s.set_nodelay(true)?;
        s.write_all(&index.to_be_bytes())
    };
    loop {
        // Lower-numbered processes: we connect to them.
        for (p, address) in hosts.iter().enumerate().take(process) {
            if streams[p].is_some() {
                continue;
            }
            let attempt = address
                .split_whitespace()
                .next()
                .unwrap_or(address)
                .to_socket_addrs()
                .and_then(|mut addrs| {
                    addrs.next().ok_or_else(|| {
                        std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
                    })
                })
                .and_then(|addr| {
                    let left = deadline.saturating_duration_since(Instant::now());
                    TcpStream::connect_timeout(
                        &addr,
                        left.clamp(Duration::from_millis(1), Duration::from_secs(1)),
                    )
                })
                .and_then(|mut s| handshake(&mut s, process as u64).map(|()| s));
            match attempt {
                Ok(s) => streams[p] = Some(s),
                Err(e) => last_error[p] = format!("{address}: {e}"),
            }
        }
        // Higher-numbered ones connect to us and say who they are.
        for listener in &listeners {
            while let Ok((mut s, _)) = listener.accept() {
                let mut id = [0u8; 8];
                let said = s
                    .set_nonblocking(false)
                    .and_then(|()| s.set_read_timeout(Some(Duration::from_secs(5))))
                    .and_then(|()| s.read_exact(&mut id))
                    .and_then(|()| s.set_read_timeout(None))
                    .and_then(|()| s.set_nodelay(true));
                match (said, usize::try_from(u64::from_be_bytes(id))) {
                    (Ok(()), Ok(p)) if p > process && p < hosts.len() => streams[p] = Some(s),
                    _ => tracing::warn!(
                        process,
                        "a connection that is not from a process of this job"
                    ),
                }
            }
        }
        let missing: Vec<usize> = (0..hosts.len())
            .filter(|&p| p != process && streams[p].is_none())
            .collect();
        if missing.is_empty() {
            return Ok(streams);
        }
        let now = Instant::now();
        if now >= deadline {
            let detail: Vec<String> = missing
                .iter()
                .map(|&p| {
                    if p < process {
                        format!("process {p} ({})", last_error[p])
                    } else {
                        format!("process {p} ({}) never connected", hosts[p])
                    }
                })
                .collect();
            return Err(fail(format!(
                "could not connect to every process within {timeout:?}: {}; check the hostfile and that every process has started",
                detail.join(", ")
            )));
        }
        if now >= next_report {
            tracing::info!(process, waiting_for = ?missing, "waiting for the job's other processes");
            next_report = now + Duration::from_secs(5);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads a hostfile: one `host:port` per line; blank lines and lines
/// starting with `#` are skipped.
pub fn read_hostfile(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::invalid("hostfile", format!("cannot read {}: {e}", path.display())))?;
    let mut hosts = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                hosts.push(line.to_string());
            }
            _ => {
                return Err(Error::invalid(
                    "hostfile",
                    format!(
                        "{} line {}: `{line}` is not host:port",
                        path.display(),
                        n + 1
                    ),
                ));
            }
        }
    }
    if hosts.is_empty() {
        return Err(Error::invalid(
            "hostfile",
            format!("{} names no process", path.display()),
        ));
    }
    Ok(hosts)
}

/// This process's index and the job's hosts, from [`PROCESS_ENV`] and
/// [`HOSTFILE_ENV`]; `None` when neither is set (one process). One without
/// the other, an index out of range, or a bad hostfile is an error.
pub fn from_env() -> Result<Option<(usize, Vec<String>)>> {
    let process = std::env::var_os(PROCESS_ENV);
    let hostfile = std::env::var_os(HOSTFILE_ENV);
    let (process, hostfile) = match (process, hostfile) {
        (None, None) => return Ok(None),
        (Some(p), Some(h)) => (p, h),
        _ => {
            return Err(Error::invalid(
                "cluster",
                format!("set both {PROCESS_ENV} and {HOSTFILE_ENV}, or neither"),
            ));
        }
    };
    let process: usize = process
        .to_str()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| {
            Error::invalid(
                "cluster",
                format!("{PROCESS_ENV}={process:?} is not a process index"),
            )
        })?;
    let hosts = read_hostfile(Path::new(&hostfile))?;
    if process >= hosts.len() {
        return Err(Error::invalid(
            "cluster",
            format!(
                "{PROCESS_ENV}={process}, but the hostfile names {} processes",
                hosts.len()
            ),
        ));
    }
    Ok(Some((process, hosts)))
}

/// Starts `processes` copies of this program on this machine, as one job,
/// and waits for them: each gets this program's arguments, a hostfile of
/// free loopback ports and its index (through [`HOSTFILE_ENV`] and
/// [`PROCESS_ENV`]), and inherits stdout and stderr. When one fails, the
/// others are stopped (a job cannot go on without one of its processes);
/// the error names the first that failed. Starting them all again recovers
/// the job from its newest committed epoch.
///
/// Call it instead of [`run`](crate::run) when [`from_env`] returns
/// `None`, with the arguments each process should get (for example this
/// program's, without one that clears state: every process would clear
/// it, in no particular order).
pub fn launch_local<A: Into<OsString>>(
    processes: usize,
    args: impl IntoIterator<Item = A>,
) -> Result<()> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::invalid("cluster", format!("cannot find this program: {e}")))?;
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let dir = tempfile::tempdir()
        .map_err(|e| Error::invalid("cluster", format!("cannot make a hostfile: {e}")))?;
    let hostfile = dir.path().join("hosts");
    write_hostfile(&hostfile, processes)?;
    let mut children: Vec<Option<Child>> = Vec::with_capacity(processes);
    for p in 0..processes {
        let child = Command::new(&exe)
            .args(&args)
            .env(PROCESS_ENV, p.to_string())
            .env(HOSTFILE_ENV, &hostfile)
            .spawn();
        match child {
            Ok(c) => children.push(Some(c)),
            Err(e) => {
                stop_all(&mut children);
                return Err(Error::Worker(format!("cannot start process {p}: {e}")));
            }
        }
    }
    let mut failed: Option<String> = None;
    while children.iter().any(Option::is_some) {
        for (p, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    *slot = None;
                    if !status.success() && failed.is_none() {
                        failed = Some(format!("process {p} of {processes} exited with {status}"));
                    }
                }
                Err(e) => {
                    *slot = None;
                    failed.get_or_insert(format!("cannot wait for process {p}: {e}"));
                }
            }
        }
        if failed.is_some() {
            stop_all(&mut children);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match failed {
        Some(reason) => Err(Error::Worker(reason)),
        None => Ok(()),
    }
}

/// Writes a hostfile of `processes` free loopback ports.
fn write_hostfile(path: &Path, processes: usize) -> Result<()> {
    if processes == 0 {
        return Err(Error::invalid(
            "cluster",
            "a job needs at least one process",
        ));
    }
    // Held until all are chosen, so no port is picked twice; a port taken
    // by another program in the moment between release and use makes the
    // job fail to start, and a second attempt picks others.
    let listeners = (0..processes)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| Error::invalid("cluster", format!("no free loopback port: {e}")))?;
    let mut text = String::new();
    for l in &listeners {
        let port = l
            .local_addr()
            .map_err(|e| Error::invalid("cluster", format!("no free loopback port: {e}")))?
            .port();
        text.push_str(&format!("127.0.0.1:{port}\n"));
    }
    drop(listeners);
    std::fs::write(path, text)
        .map_err(|e| Error::invalid("cluster", format!("cannot write {}: {e}", path.display())))
}

/// Kills and reaps every process still running.
fn stop_all(children: &mut [Option<Child>]) {
    for slot in children.iter_mut() {
        if let Some(mut child) = slot.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type R = std::result::Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn a_hostfile_names_host_port_lines_and_bad_lines_are_errors() -> R {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("hosts");
        std::fs::write(&path, "# two\n127.0.0.1:2101\n\nhost-b:2102\n")?;
        assert_eq!(read_hostfile(&path)?, ["127.0.0.1:2101", "host-b:2102"]);
        for bad in ["127.0.0.1\n", "a:b\n", ":80\n", "# none\n", ""] {
            std::fs::write(&path, bad)?;
            assert!(
                matches!(read_hostfile(&path), Err(Error::InvalidJob { .. })),
                "{bad:?}"
            );
        }
        assert!(read_hostfile(&dir.path().join("missing")).is_err());
        Ok(())
    }

    #[test]
    fn a_local_hostfile_has_distinct_ports() -> R {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("hosts");
        write_hostfile(&path, 4)?;
        let hosts = read_hostfile(&path)?;
        assert_eq!(hosts.len(), 4);
        let distinct: std::collections::BTreeSet<_> = hosts.iter().collect();
        assert_eq!(distinct.len(), 4);
        assert!(write_hostfile(&path, 0).is_err());
        Ok(())
    }
}
