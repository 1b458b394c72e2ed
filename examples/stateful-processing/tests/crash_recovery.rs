//! The example recovers exactly: runs aborted with `--crash-after` at
//! several points, each followed by a recovery, end with the same committed
//! output as a run that never crashed, on both backends.

use std::path::Path;
use std::process::{Command, Output};

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

const EXE: &str = env!("CARGO_BIN_EXE_example-stateful-processing");

/// The example, working in `dir`.
fn example(dir: &Path) -> Command {
    let mut cmd = Command::new(EXE);
    cmd.arg("--checkpoints")
        .arg(dir.join("checkpoints"))
        .arg("--output")
        .arg(dir.join("output"))
        .arg("--state")
        .arg(dir.join("state"));
    cmd
}

fn run(dir: &Path, backend: &str, crash_after: Option<u64>) -> R<Output> {
    let mut cmd = example(dir);
    cmd.args(["--backend", backend, "--workers", "2", "--events", "120000"]);
    if let Some(n) = crash_after {
        cmd.args(["--crash-after", &n.to_string()]);
    }
    Ok(cmd.output()?)
}

/// Every committed output line of both sinks, sorted.
fn committed(dir: &Path) -> R<Vec<String>> {
    let mut lines = Vec::new();
    for sink in ["sessions", "pages"] {
        let committed = dir.join("output").join(sink).join("committed");
        for entry in std::fs::read_dir(committed)? {
            let text = std::fs::read_to_string(entry?.path())?;
            lines.extend(text.lines().map(str::to_string));
        }
    }
    lines.sort();
    Ok(lines)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn crashed_runs_recover_to_the_output_of_a_clean_run() -> R {
    let clean_dir = tempfile::tempdir()?;
    let clean = run(clean_dir.path(), "memory", None)?;
    assert!(clean.status.success(), "{}", text(&clean.stderr));
    let expected = committed(clean_dir.path())?;
    assert!(expected.len() > 1_000, "{} output lines", expected.len());

    for backend in ["memory", "rocksdb"] {
        let dir = tempfile::tempdir()?;
        // The second crash comes after a recovery, the third before the
        // recovered run commits anything new.
        for crash_after in [30_000, 50_000, 5] {
            let out = run(dir.path(), backend, Some(crash_after))?;
            assert!(
                !out.status.success(),
                "{backend}: did not crash after {crash_after} events"
            );
            assert!(
                text(&out.stderr).contains(&format!("aborting after {crash_after} events")),
                "{backend}: {}",
                text(&out.stderr)
            );
        }
        let out = run(dir.path(), backend, None)?;
        assert!(out.status.success(), "{backend}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("recovering from committed epoch"),
            "{backend}: the last run did not recover: {}",
            text(&out.stdout)
        );
        let got = committed(dir.path())?;
        assert!(
            got == expected,
            "{backend}: {} output lines after the crashes, {} in a clean run",
            got.len(),
            expected.len()
        );
    }
    Ok(())
}

/// One command starts the job as two processes on loopback; a process
/// that aborts takes the job down (the command fails, naming it), and
/// starting the processes again, or one process with more workers,
/// recovers to the output of a clean run.
#[test]
fn a_job_of_two_processes_recovers_from_a_crash_of_one() -> R {
    let clean_dir = tempfile::tempdir()?;
    let clean = run(clean_dir.path(), "memory", None)?;
    assert!(clean.status.success(), "{}", text(&clean.stderr));
    let expected = committed(clean_dir.path())?;

    let dir = tempfile::tempdir()?;
    let cluster = |extra: &[&str]| -> R<Output> {
        Ok(example(dir.path())
            .args(["--backend", "rocksdb", "--events", "120000"])
            .args(extra)
            .output()?)
    };
    // Each process counts its own events: the first to pass 20,000 aborts.
    let out = cluster(&[
        "--processes",
        "2",
        "--workers",
        "2",
        "--crash-after",
        "20000",
    ])?;
    assert!(!out.status.success(), "the job did not fail");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("aborting after 20000 events"), "{stderr}");
    assert!(stderr.contains("process"), "{stderr}");
    let out = cluster(&[
        "--processes",
        "2",
        "--workers",
        "1",
        "--crash-after",
        "25000",
    ])?;
    assert!(!out.status.success(), "the job did not fail");
    let out = cluster(&["--processes", "1", "--workers", "3"])?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("recovering from committed epoch"));
    let got = committed(dir.path())?;
    assert!(
        got == expected,
        "{} output lines after the crashes, {} in a clean run",
        got.len(),
        expected.len()
    );

    // A process of a job does not clear the job's storage.
    let hostfile = dir.path().join("hosts");
    std::fs::write(&hostfile, "127.0.0.1:1\n127.0.0.1:2\n")?;
    let out = example(dir.path())
        .arg("--fresh")
        .env("GRESS_PROCESS", "1")
        .env("GRESS_HOSTFILE", &hostfile)
        .output()?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--fresh"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        committed(dir.path())?,
        expected,
        "a process cleared the output"
    );
    Ok(())
}
