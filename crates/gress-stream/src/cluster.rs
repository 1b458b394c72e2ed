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
