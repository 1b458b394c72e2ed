//! The demo runs with fewer users than the record it reads back, and
//! refuses none at all.

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
    assert!(stdout.contains("demo finished"), "{stdout}");
    assert_cmd::cargo::cargo_bin_cmd!("gress-demo")
        .args(["--users", "0", "--no-metrics", "--data-dir"])
        .arg(dir.path().join("none"))
        .assert()
        .code(2);
    Ok(())
}
