//! S3 storage under faults, on `moto_server` (`pip install 'moto[server]'`):
//! an endpoint that stops answering, and a multipart upload whose completion
//! is refused.

use std::io::{ErrorKind, Read};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use gress_checkpoint::storage::s3::testing::MotoServer;
use gress_checkpoint::{Error, S3Config, S3Storage, Storage};

type R = Result<(), Box<dyn std::error::Error>>;

/// With a 1 s request timeout and one retry a call on a hung endpoint gives
/// up after about 2 s. This bound only detects a hang; it stays below the
/// 30 s a default request timeout would wait.
const HANG: Duration = Duration::from_secs(20);

fn io_err(e: std::io::Error) -> Error {
    Error::Invalid {
        what: "test write",
        reason: e.to_string().into(),
    }
}

fn config(server: &MotoServer, name: &str) -> Result<S3Config, Box<dyn std::error::Error>> {
    let mut config = server.bucket(name)?;
    config.part_size = 5 << 20;
    config.multipart_threshold = 5 << 20;
    config.request_timeout = Duration::from_secs(1);
    config.connect_timeout = Duration::from_secs(1);
    config.max_retries = 1;
    config.retry_timeout = Duration::from_secs(2);
    Ok(config)
}

fn bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// A storage call running on a thread of its own, so that a hang fails the
/// test instead of stalling it.
struct Call {
    name: &'static str,
    done: mpsc::Receiver<Result<(), Error>>,
}

fn call(
    name: &'static str,
    s3: &Arc<S3Storage>,
    op: impl FnOnce(&S3Storage) -> Result<(), Error> + Send + 'static,
) -> Call {
    let (tx, done) = mpsc::channel();
    let s3 = s3.clone();
    std::thread::spawn(move || {
        let _ = tx.send(op(&s3));
    });
    Call { name, done }
}

impl Call {
    /// The call's result, or a test failure if it has not returned in `HANG`.
    fn result(self) -> Result<(), Error> {
        match self.done.recv_timeout(HANG) {
            Ok(result) => result,
            Err(_) => panic!("{} did not return within {HANG:?}", self.name),
        }
    }
}

fn timed_out(e: &Error) -> bool {
    matches!(e, Error::Storage { source, .. } if source.kind() == ErrorKind::TimedOut)
}

/// While the endpoint hangs (moto_server stopped by SIGSTOP), every storage
/// call, and a read from an object opened before, fails promptly with a
/// timed-out storage error instead of waiting; once the endpoint answers
/// again (SIGCONT) every call works.
#[test]
fn a_hung_endpoint_gives_timed_out_errors_then_recovers() -> R {
    let server = MotoServer::start()?;
    let s3 = Arc::new(S3Storage::new(config(&server, "hung")?)?);
    // Larger than the socket buffers can hold, so reading it needs the
    // server.
    let large = bytes(32 << 20);
    s3.put("before/large", &mut |w| w.write_all(&large).map_err(io_err))?;
    s3.put_new("before/manifest", b"m")?;

    // A reader opened before the freeze, read from after it.
    let (opened_tx, opened) = mpsc::channel();
    let (frozen_tx, frozen) = mpsc::channel::<()>();
    let reading = call("read", &s3, move |s3| {
        let mut reader = s3.open("before/large")?;
        reader.read_exact(&mut [0; 1024]).map_err(io_err)?;
        let _ = opened_tx.send(());
        let _ = frozen.recv();
        match reader.read_to_end(&mut Vec::new()) {
            Ok(n) => panic!("read {n} bytes from a frozen server"),
            Err(e) => Err(Error::Storage {
                op: "reading",
                path: "before/large".into(),
                source: e,
            }),
        }
    });
    opened.recv_timeout(HANG)?;
    server.freeze()?;
    let _ = frozen_tx.send(());

    let calls = [
        reading,
        call("put", &s3, |s3| {
            s3.put("frozen/small", &mut |w| {
                w.write_all(b"small").map_err(io_err)
            })
        }),
        call("multipart put", &s3, |s3| {
            let data = bytes(6 << 20);
            s3.put("frozen/multipart", &mut |w| {
                w.write_all(&data).map_err(io_err)
            })
        }),
        call("put_new", &s3, |s3| s3.put_new("frozen/manifest", b"m")),
        call("list", &s3, |s3| s3.list("before/").map(drop)),
        call("size", &s3, |s3| s3.size("before/manifest").map(drop)),
        call("open", &s3, |s3| s3.open("before/manifest").map(drop)),
        call("delete", &s3, |s3| s3.delete("before/manifest")),
    ];
    let results: Vec<_> = calls.into_iter().map(|c| (c.name, c.result())).collect();
    server.resume()?;
    for (name, result) in results {
        match result {
            Err(e) if timed_out(&e) => {}
            other => panic!(
                "{name} on a frozen server: expected a timed-out storage error, got {other:?}"
            ),
        }
    }

    // Requests sent while frozen may still be carried out now, so the
    // checks below use paths of their own.
    let multipart = bytes(6 << 20);
    s3.put("after/small", &mut |w| {
        w.write_all(b"small").map_err(io_err)
    })?;
    s3.put("after/multipart", &mut |w| {
        w.write_all(&multipart).map_err(io_err)
    })?;
    s3.put_new("after/manifest", b"m")?;
    let listed: Vec<(String, u64)> = s3
        .list("after/")?
        .into_iter()
        .map(|o| (o.path, o.size))
        .collect();
    assert_eq!(
        listed,
        [
            ("after/manifest".to_string(), 1),
            ("after/multipart".to_string(), 6 << 20),
            ("after/small".to_string(), 5),
        ]
    );
    assert_eq!(s3.size("after/small")?, Some(5));
    let mut back = Vec::new();
    s3.open("before/large")?.read_to_end(&mut back)?;
    assert!(
        back == large,
        "object read after the resume came back different"
    );
    s3.delete("after/small")?;
    assert_eq!(s3.size("after/small")?, None);
    Ok(())
}

/// A multipart put whose completion fails is an error, leaves nothing at
/// its path, and aborts the upload, so no part stays stored. (The upload
/// used to be left open when completion failed.) The completion is made to
/// fail by replacing an uploaded part behind the writer's back.
#[test]
fn an_upload_whose_completion_fails_is_aborted() -> R {
    let server = MotoServer::start()?;
    let s3 = S3Storage::new(config(&server, "completion")?)?;
    let data = bytes(10 << 20);
    let result = s3.put("object", &mut |w| {
        // Two parts of 5 MiB, both uploaded once written.
        w.write_all(&data).map_err(io_err)?;
        let uploads = server
            .request("GET", "/completion?uploads", b"")
            .map_err(io_err)?;
        let id = uploads
            .split_once("<UploadId>")
            .and_then(|(_, rest)| rest.split_once("</UploadId>"))
            .map(|(id, _)| id.to_string())
            .expect("an upload in progress");
        server
            .request(
                "PUT",
                &format!("/completion/object?partNumber=1&uploadId={id}"),
                b"tiny",
            )
            .map_err(io_err)?;
        Ok(())
    });
    let err = result.expect_err("completed an upload whose part was replaced");
    assert!(
        matches!(err, Error::Storage { op, .. } if op == "completing upload of"),
        "{err:?}"
    );
    assert_eq!(s3.size("object")?, None);
    let uploads = server.request("GET", "/completion?uploads", b"")?;
    assert!(
        !uploads.contains("<UploadId>"),
        "upload left open: {uploads}"
    );
    Ok(())
}

/// A checkpoint manager on a hung endpoint used to block a checkpoint for
/// minutes and `stop_periodic` with it. Now, with short request timeouts,
/// a checkpoint fails with a storage error, stopping periodic checkpoints
/// and dropping the manager return promptly, and once the endpoint answers
/// again checkpoints commit and restore.
#[test]
fn a_manager_on_a_hung_endpoint_fails_fast_and_recovers() -> R {
    use gress_checkpoint::{CheckpointConfig, CheckpointManager, Metadata};
    use gress_state::{MemoryStateBackend, StateBackend};

    let server = MotoServer::start()?;
    let s3: Arc<dyn Storage> = Arc::new(S3Storage::new(config(&server, "manager-hang")?)?);
    let state = Arc::new(MemoryStateBackend::default());
    let settings = CheckpointConfig::default()
        .with_interval(Duration::from_millis(20))
        .with_checkpoint_timeout(Duration::from_secs(5))
        .with_lease(None);
    let m = Arc::new(CheckpointManager::open(s3.clone(), settings.clone())?);
    m.register("s", state.clone())?;
    state.put(b"k", b"1")?;
    m.trigger_checkpoint(Metadata::new())?;
    m.start_periodic(Metadata::new)?;

    server.freeze()?;
    let (tx, rx) = mpsc::channel();
    let manager = m.clone();
    std::thread::spawn(move || {
        manager.stop_periodic();
        let result = manager.trigger_checkpoint(Metadata::new()).map(drop);
        let _ = tx.send(result);
    });
    let stuck = rx
        .recv_timeout(HANG)
        .map_err(|_| "stop_periodic or a checkpoint hung on a frozen endpoint")?;
    let err = stuck.expect_err("a checkpoint committed to a frozen endpoint");
    assert!(
        matches!(err, Error::Storage { .. } | Error::Busy { .. }),
        "{err:?}"
    );
    server.resume()?;

    state.put(b"k", b"2")?;
    let committed = m.trigger_checkpoint(Metadata::new())?;
    drop(m);
    let fresh = Arc::new(MemoryStateBackend::default());
    let m = CheckpointManager::open(s3, settings)?;
    m.register("s", fresh.clone())?;
    assert_eq!(m.restore_latest()?.id, committed.info.id);
    assert_eq!(fresh.get(b"k")?.as_deref(), Some(&b"2"[..]));
    Ok(())
}

/// Story: a checkpoint against a frozen endpoint ran past its
/// `checkpoint_timeout` (15 s gave up at 30 s: one request timeout plus
/// retries), and dropping the manager waited for the lease release as long.
/// Every storage call of a checkpoint now ends at the checkpoint's
/// deadline, and the lease release on drop waits at most 2 s: with requests
/// allowed 20 s, a checkpoint limited to 1 s fails with a timed-out error
/// naming the time limit, and the manager drops promptly.
#[test]
fn a_checkpoint_on_a_frozen_endpoint_ends_at_its_time_limit() -> R {
    use gress_checkpoint::{CheckpointConfig, CheckpointManager, Metadata};
    use gress_state::{MemoryStateBackend, StateBackend};

    let server = MotoServer::start()?;
    let mut slow = config(&server, "deadline")?;
    slow.request_timeout = Duration::from_secs(20);
    slow.retry_timeout = Duration::from_secs(20);
    let s3: Arc<dyn Storage> = Arc::new(S3Storage::new(slow)?);
    let state = Arc::new(MemoryStateBackend::default());
    let m = CheckpointManager::open(
        s3,
        CheckpointConfig::default()
            .with_checkpoint_timeout(Duration::from_secs(1))
            .with_lease(Some(Duration::from_secs(30))),
    )?;
    m.register("s", state.clone())?;
    state.put(b"k", b"1")?;
    m.trigger_checkpoint(Metadata::new())?;

    server.freeze()?;
    state.put(b"k", b"2")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = m.trigger_checkpoint(Metadata::new()).map(drop);
        // Dropping the manager releases its lease on the frozen endpoint.
        drop(m);
        let _ = tx.send(result);
    });
    // Well below the 20 s one request may take.
    let result = rx
        .recv_timeout(Duration::from_secs(12))
        .map_err(|_| "the checkpoint or the drop outlived the checkpoint's time limit")?;
    let err = result.expect_err("a checkpoint committed to a frozen endpoint");
    assert!(
        timed_out(&err) || err.to_string().contains("time limit"),
        "{err:?}"
    );
    server.resume()?;
    Ok(())
}
