//! Checkpoints on a real S3 API: `moto_server` on loopback, started by the
//! tests (`pip install 'moto[server]'`).

mod common;

use std::io::Read;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use gress_checkpoint::storage::ObjectMeta;
use gress_checkpoint::storage::fault::{FaultKind, FaultyStorage};
use gress_checkpoint::storage::s3::testing::MotoServer;
use gress_checkpoint::{CheckpointConfig, Error, S3Config, S3Storage, Storage};
use gress_state::MemoryStateBackend;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type R = Result<(), BoxError>;

fn io_err(e: std::io::Error) -> Error {
    Error::Invalid {
        what: "test write",
        reason: e.to_string().into(),
    }
}

fn bucket(server: &MotoServer, name: &str) -> Result<S3Config, BoxError> {
    let mut config = server.bucket(name)?;
    config.part_size = 5 << 20;
    config.multipart_threshold = 5 << 20;
    Ok(config)
}

/// The storage contract on S3: whole-object puts (multipart above the
/// threshold), create-only publishing, listing by prefix, sizes, deletes.
#[test]
fn s3_storage_keeps_the_storage_contract() -> R {
    let server = MotoServer::start()?;
    let s3 = S3Storage::new(bucket(&server, "contract")?.with_prefix("job-1"))?;
    let big: Vec<u8> = (0..12u32 << 20).map(|i| (i % 253) as u8).collect();
    s3.put("shared/big", &mut |w| {
        // Written in odd-sized pieces, uploaded as 5 MiB parts.
        for chunk in big.chunks(777_777) {
            w.write_all(chunk).map_err(io_err)?;
        }
        Ok(())
    })?;
    let mut back = Vec::new();
    s3.open("shared/big")?.read_to_end(&mut back)?;
    assert!(back == big, "multipart object came back different");
    assert_eq!(s3.size("shared/big")?, Some(big.len() as u64));
    assert_eq!(s3.size("shared/absent")?, None);

    s3.put_new("manifests/1", b"first")?;
    let err = s3
        .put_new("manifests/1", b"second")
        .expect_err("create-only put overwrote");
    assert!(
        matches!(&err, Error::Storage { source, .. }
            if source.kind() == std::io::ErrorKind::AlreadyExists),
        "{err:?}"
    );
    assert_eq!(s3.read_all("manifests/1", 100)?, b"first");

    let listed: Vec<String> = s3.list("manifests/")?.into_iter().map(|o| o.path).collect();
    assert_eq!(listed, vec!["manifests/1".to_string()]);
    assert_eq!(s3.list("")?.len(), 2);
    s3.delete("shared/big")?;
    s3.delete("shared/big")?;
    assert_eq!(s3.size("shared/big")?, None);

    // A failing writer leaves nothing behind, multipart or not.
    let failed = s3.put("shared/half", &mut |w| {
        w.write_all(&big).map_err(io_err)?;
        Err(Error::Invalid {
            what: "test",
            reason: "stop".into(),
        })
    });
    assert!(failed.is_err());
    assert_eq!(s3.size("shared/half")?, None);
    let uploads = server.request("GET", "/contract?uploads", b"")?;
    assert!(
        !uploads.contains("<UploadId>"),
        "upload left open: {uploads}"
    );
    Ok(())
}

/// Every call of the storage, dropping it included, works from inside async
/// code: within a current-thread runtime's `block_on`, and on a worker of a
/// multi-thread runtime.
#[test]
fn s3_storage_works_inside_async_runtimes() -> R {
    let server = MotoServer::start()?;
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let config = bucket(&server, "async-current")?;
    current.block_on(async move { use_and_drop(config) })?;

    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let config = bucket(&server, "async-multi")?;
    let on_worker = multi.spawn(async move { use_and_drop(config) });
    multi.block_on(on_worker)??;
    Ok(())
}

/// Each storage call once, a failed multipart put and an unfinished reader
/// included, then drops the storage.
fn use_and_drop(config: S3Config) -> R {
    let s3 = S3Storage::new(config)?;
    let big: Vec<u8> = (0..6u32 << 20).map(|i| (i % 251) as u8).collect();
    s3.put("big", &mut |w| w.write_all(&big).map_err(io_err))?;
    s3.put("small", &mut |w| w.write_all(b"small").map_err(io_err))?;
    let failed = s3.put("failed", &mut |w| {
        w.write_all(&big).map_err(io_err)?;
        Err(Error::Invalid {
            what: "test",
            reason: "stop".into(),
        })
    });
    assert!(failed.is_err());
    s3.put_new("manifest", b"m")?;
    let mut back = Vec::new();
    s3.open("big")?.read_to_end(&mut back)?;
    assert!(back == big, "object came back different");
    let mut unfinished = s3.open("big")?;
    unfinished.read_exact(&mut [0; 10])?;
    drop(unfinished);
    let listed: Vec<String> = s3.list("")?.into_iter().map(|o| o.path).collect();
    assert_eq!(listed, ["big", "manifest", "small"]);
    assert_eq!(s3.size("small")?, Some(5));
    s3.delete("small")?;
    assert_eq!(s3.size("small")?, None);
    drop(s3);
    Ok(())
}

/// With only the bucket named, `S3Config` takes endpoint, keys and the
/// plain-HTTP permission from the standard `AWS_*` variables, and explicit
/// fields override them. Each case runs in a child process of this test
/// binary, since the environment is global to a process.
#[test]
fn s3_config_reads_the_aws_environment() -> R {
    let server = MotoServer::start()?;
    server.bucket("from-env")?;
    server.bucket("explicit")?;
    let nowhere = format!(
        "http://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    );
    let endpoint = server.endpoint();
    run_env_child(&[
        ("AWS_ENDPOINT_URL", &endpoint),
        ("AWS_ACCESS_KEY_ID", "env-key"),
        ("AWS_SECRET_ACCESS_KEY", "env-secret"),
        ("AWS_ALLOW_HTTP", "true"),
        ("GRESS_TEST_BUCKET", "from-env"),
    ])?;
    run_env_child(&[
        ("AWS_ENDPOINT", &nowhere),
        ("AWS_ACCESS_KEY_ID", "env-key"),
        ("AWS_SECRET_ACCESS_KEY", "env-secret"),
        ("AWS_SESSION_TOKEN", "env-token"),
        ("AWS_ALLOW_HTTP", "false"),
        ("GRESS_TEST_BUCKET", "explicit"),
        ("GRESS_TEST_ENDPOINT", &endpoint),
    ])?;
    Ok(())
}

/// Runs `s3_storage_from_the_environment` in a child process with exactly
/// these `AWS_*` variables (and the others of this process but `AWS_*`).
fn run_env_child(vars: &[(&str, &str)]) -> R {
    let mut child = Command::new(std::env::current_exe()?);
    child.args([
        "--exact",
        "s3_storage_from_the_environment",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            child.env_remove(key);
        }
    }
    child.envs(vars.iter().copied());
    let out = child.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child with {vars:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Run by `s3_config_reads_the_aws_environment` in a child process: a
/// storage for `GRESS_TEST_BUCKET` made from `S3Config::new` (with
/// `GRESS_TEST_ENDPOINT` as explicit endpoint, if set) reaches the server.
#[test]
#[ignore = "run by s3_config_reads_the_aws_environment in a prepared environment"]
fn s3_storage_from_the_environment() -> R {
    let mut config = S3Config::new(std::env::var("GRESS_TEST_BUCKET")?);
    if let Ok(endpoint) = std::env::var("GRESS_TEST_ENDPOINT") {
        config = config.with_endpoint(endpoint, "test", "test");
    }
    config.max_retries = 1;
    config.retry_timeout = Duration::from_secs(5);
    let s3 = S3Storage::new(config)?;
    s3.put("data/a", &mut |w| w.write_all(b"hello").map_err(io_err))?;
    assert_eq!(
        s3.list("data/")?,
        [ObjectMeta {
            path: "data/a".into(),
            size: 5
        }]
    );
    assert_eq!(s3.read_all("data/a", 100)?, b"hello");
    Ok(())
}

/// The manager on S3: full and delta checkpoints, restore, retention, and
/// fallback past a damaged newest checkpoint.
#[test]
fn checkpoints_on_s3() -> R {
    let server = MotoServer::start()?;
    let storage: Arc<dyn Storage> = Arc::new(S3Storage::new(bucket(&server, "checkpoints")?)?);
    let state = Arc::new(MemoryStateBackend::default());
    let m = manager(storage.clone(), CheckpointConfig::default().with_retain(2));
    m.register("s", state.clone())?;
    for round in 1..=4 {
        apply_round(&*state, round);
        m.trigger_checkpoint(metadata(round))?;
    }
    assert_eq!(m.list().len(), 2);
    let newest = m.latest().expect("latest").id;
    // Damage the newest manifest: S3 objects are replaced, not edited.
    let path = gress_checkpoint::manifest::manifest_path(newest);
    let mut bytes = storage.read_all(&path, 1 << 20)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    storage.delete(&path)?;
    storage.put_new(&path, &bytes)?;

    drop(m);
    let fresh = Arc::new(MemoryStateBackend::default());
    let m2 = manager(storage.clone(), CheckpointConfig::default().with_retain(2));
    m2.register("s", fresh.clone())?;
    let info = m2.restore_latest()?;
    assert_eq!(round_of(&info.metadata), 3);
    assert_eq!(dump(&*fresh), expected_after(3));
    Ok(())
}

/// A write that fails or tears at any step of a checkpoint on S3 leaves the
/// previous checkpoint as the one recovery restores.
#[test]
fn failed_writes_on_s3_keep_the_last_committed_checkpoint() -> R {
    let server = MotoServer::start()?;
    for (i, kind) in [FaultKind::Fail, FaultKind::Tear].into_iter().enumerate() {
        for step in 1..=3 {
            let config = bucket(&server, &format!("faults-{i}-{step}"))?;
            let faulty = Arc::new(FaultyStorage::new(S3Storage::new(config.clone())?));
            let state = Arc::new(MemoryStateBackend::default());
            let m = manager(faulty.clone(), CheckpointConfig::default());
            m.register("s", state.clone())?;
            apply_round(&*state, 1);
            m.trigger_checkpoint(metadata(1))?;
            apply_round(&*state, 2);
            faulty.arm(step, kind);
            let result = m.trigger_checkpoint(metadata(2));
            drop(m);
            let fresh = Arc::new(MemoryStateBackend::default());
            let m2 = manager(
                Arc::new(S3Storage::new(config)?),
                CheckpointConfig::default(),
            );
            m2.register("s", fresh.clone())?;
            let round = round_of(&m2.restore_latest()?.metadata);
            assert_eq!(
                round,
                if result.is_ok() { 2 } else { 1 },
                "{kind:?} at step {step}"
            );
            assert_eq!(dump(&*fresh), expected_after(round));
        }
    }
    Ok(())
}

/// An unreachable endpoint is a typed storage error, quickly.
#[test]
fn unreachable_s3_is_a_storage_error() -> R {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut config =
        S3Config::new("nowhere").with_endpoint(format!("http://127.0.0.1:{port}"), "k", "s");
    config.max_retries = 1;
    config.retry_timeout = Duration::from_secs(2);
    let storage: Arc<dyn Storage> = Arc::new(S3Storage::new(config)?);
    match gress_checkpoint::CheckpointManager::open(storage, CheckpointConfig::default()) {
        Err(Error::Storage { op, .. }) => assert_eq!(op, "listing"),
        other => panic!("expected a storage error, got {other:?}"),
    }
    Ok(())
}
