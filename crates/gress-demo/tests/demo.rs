//! The demo runs with fewer users than the record it reads back, and
//! refuses none at all; its stream job recovers from a crash to the output
//! of a clean run; it never deletes a directory it did not make; it logs
//! as `RUST_LOG` and `--log-format` say.

#[test]
fn the_demo_runs_with_100_users_and_refuses_0() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let out = assert_cmd::cargo::cargo_bin_cmd!("gress-demo")
        .args([
            "--users",
            "100",
            "--events",
            "2000",
            "--no-metrics",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .output()?;
    let stdout = String::from_utf8(out.stdout)?;
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("read user:99 ->"), "{stdout}");
    // The stream job crashed once, recovered, and committed what a clean
    // run commits.
    assert!(stdout.contains("second run: crashed after"), "{stdout}");
    assert!(stdout.contains("recovered from epoch"), "{stdout}");
    assert!(
        stdout.contains("committed output after the crash equals the clean run's"),
        "{stdout}"
    );
    assert!(stdout.contains("demo finished"), "{stdout}");
    assert_cmd::cargo::cargo_bin_cmd!("gress-demo")
        .args(["--users", "0", "--no-metrics", "--data-dir"])
        .arg(dir.path().join("none"))
        .assert()
        .code(2);
    Ok(())
}

/// The demo's state-backend part, small, in `dir`.
fn small_demo(dir: &std::path::Path) -> assert_cmd::Command {
    let mut cmd = assert_cmd::cargo::cargo_bin_cmd!("gress-demo");
    cmd.args(["--users", "10", "--events", "10", "--clicks", "0"])
        .args(["--no-metrics", "--data-dir"])
        .arg(dir);
    cmd
}

/// A directory the demo did not make is never deleted; one it made is
/// replaced only with `--fresh`.
#[test]
fn the_demo_never_deletes_a_directory_it_did_not_make() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs)?;
    std::fs::write(theirs.join("notes.txt"), "keep me")?;
    for fresh in [false, true] {
        let mut cmd = assert_cmd::cargo::cargo_bin_cmd!("gress-demo");
        cmd.args(["--no-metrics", "--data-dir"]).arg(&theirs);
        if fresh {
            cmd.arg("--fresh");
        }
        let out = cmd.output()?;
        assert_eq!(out.status.code(), Some(1), "--fresh {fresh}");
        let stderr = String::from_utf8(out.stderr)?;
        assert!(stderr.contains("did not create"), "{stderr}");
        assert_eq!(
            std::fs::read_to_string(theirs.join("notes.txt"))?,
            "keep me"
        );
        assert_eq!(std::fs::read_dir(&theirs)?.count(), 1);
    }

    let ours = dir.path().join("ours");
    let run = |fresh: bool| -> std::io::Result<std::process::Output> {
        let mut cmd = small_demo(&ours);
        if fresh {
            cmd.arg("--fresh");
        }
        cmd.output()
    };
    assert!(run(false)?.status.success());
    let again = run(false)?;
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8(again.stderr)?.contains("--fresh"));
    assert!(
        ours.join("state-snapshot.bin").exists(),
        "kept when refused"
    );
    assert!(run(true)?.status.success());
    Ok(())
}

/// `RUST_LOG` picks the levels and `--log-format json` writes one JSON
/// object per line on standard error.
#[test]
fn logs_follow_rust_log_and_can_be_json() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let out = small_demo(&dir.path().join("data"))
        .args(["--log-format", "json"])
        .env("RUST_LOG", "gress_rocksdb=debug")
        .output()?;
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr)?;
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "DEBUG" && l["message"] == "opened RocksDB state"),
        "{stderr}"
    );
    // The default is info: the debug line is gone.
    let out = small_demo(&dir.path().join("data2"))
        .env_remove("RUST_LOG")
        .output()?;
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr)?;
    assert!(!stderr.contains("opened RocksDB state"), "{stderr}");
    Ok(())
}
