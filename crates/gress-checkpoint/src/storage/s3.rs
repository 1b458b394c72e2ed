//! Checkpoints in S3-compatible object storage, through `object_store`.
//!
//! Objects are immutable once written: `put` is a single PUT below the
//! multipart threshold and a multipart upload above it (memory bounded by
//! one part), both visible whole or not at all; `put_new` is a create-only
//! PUT (`If-None-Match: *`), so a manifest can never replace another.
//!
//! The methods block, and may be called from any thread, inside an async
//! runtime included: every request runs as a task on a private runtime and
//! the caller waits for its answer on a channel, so no call enters, blocks
//! on or drops a runtime on the caller's thread. Every request is bounded by
//! [`S3Config::request_timeout`] and retried at most
//! [`S3Config::max_retries`] times, so an endpoint that stops answering
//! gives an [`Error::Storage`] of kind [`io::ErrorKind::TimedOut`], never a
//! hang.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io::{self, Read, Write};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{BoxStream, ReadyChunks};
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, ClientConfigKey, MultipartUpload, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, PutPayload, RetryConfig,
};

use super::{ObjectMeta, PutFn, Storage, check_path};
use crate::error::{Error, Result};

/// S3's smallest part (all but the last part of an upload).
const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest part, and largest single PUT.
const MAX_PART_SIZE: u64 = 5 << 30;
/// S3's limit on the number of parts of one upload.
const MAX_PARTS: usize = 10_000;
/// The part size doubles after every this many parts.
const PARTS_PER_DOUBLING: usize = 1_000;

/// Where and how to reach the bucket.
///
/// What is left unset here comes from the standard AWS environment
/// variables, read by [`S3Storage::new`] as `object_store`'s
/// `AmazonS3Builder::from_env` reads them: `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` (or
/// `AWS_DEFAULT_REGION`), `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT`,
/// `AWS_ENDPOINT_URL_S3`), `AWS_ALLOW_HTTP`, and the web-identity and
/// container-credential variables. A field set here overrides its
/// variables; explicit keys also set aside an `AWS_SESSION_TOKEN`, which
/// belongs to other keys. With neither, the region is `us-east-1` and
/// credentials come from the instance metadata service.
#[derive(Clone)]
#[non_exhaustive]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// Key prefix inside the bucket under which checkpoints go ("" for the
    /// bucket's root).
    pub prefix: String,
    /// Endpoint URL for S3-compatible services (e.g. `http://127.0.0.1:9000`);
    /// `None` for `AWS_ENDPOINT_URL`, or AWS itself.
    pub endpoint: Option<String>,
    /// Region; `None` for `AWS_REGION`, or `us-east-1`.
    pub region: Option<String>,
    /// Access key; `None` (with `secret_access_key`) for the environment's
    /// credentials.
    pub access_key_id: Option<String>,
    /// Secret key; set together with `access_key_id`.
    pub secret_access_key: Option<String>,
    /// Allow plain HTTP (for local test servers); `None` for
    /// `AWS_ALLOW_HTTP`, or false.
    pub allow_http: Option<bool>,
    /// Objects larger than this are uploaded in parts; at most 5 GiB, S3's
    /// largest single PUT. Default 8 MiB.
    pub multipart_threshold: usize,
    /// Size of the first 1,000 parts of an upload, from 5 MiB to 5 GiB.
    /// Default 8 MiB. The size doubles every 1,000 parts (capped at 5 GiB),
    /// so that S3's 10,000 parts hold at least 5 TiB whatever this is, more
    /// than a checkpoint file may be ([`crate::manifest::MAX_FILE_SIZE`]).
    /// An upload holds one part in memory: `part_size` bytes while it is
    /// under 1,000 parts long, twice that under 2,000, and so on (with the
    /// default, 1 GiB parts by the end of a 1 TiB object).
    pub part_size: usize,
    /// Time allowed for one HTTP request, from connecting to the end of the
    /// response body. It must allow one part to be sent, and parts grow with
    /// the object (see `part_size`). A download that times out midway
    /// resumes where it stopped (retries permitting). Default 30 s.
    pub request_timeout: Duration,
    /// Time allowed to establish a connection. Default 5 s.
    pub connect_timeout: Duration,
    /// Retries of a failed request before the operation fails. Default 3.
    pub max_retries: usize,
    /// Time from a request's first attempt after which it is no longer
    /// retried. An operation thus takes at most about `retry_timeout` plus
    /// one `request_timeout` per request it makes. Default 30 s.
    pub retry_timeout: Duration,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "******"),
            )
            .field("allow_http", &self.allow_http)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_timeout", &self.retry_timeout)
            .finish()
    }
}

impl S3Config {
    /// A bucket; endpoint, region and credentials from the environment.
    pub fn new(bucket: impl Into<String>) -> Self {
        S3Config {
            bucket: bucket.into(),
            prefix: String::new(),
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: None,
            multipart_threshold: 8 << 20,
            part_size: 8 << 20,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
        }
    }

    /// Uses an S3-compatible endpoint with static credentials (plain HTTP
    /// allowed if the URL says `http://`).
    pub fn with_endpoint(
        mut self,
        endpoint: impl Into<String>,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        let endpoint = endpoint.into();
        self.allow_http = Some(endpoint.starts_with("http://"));
        self.endpoint = Some(endpoint);
        self.access_key_id = Some(access_key_id.into());
        self.secret_access_key = Some(secret_access_key.into());
        self
    }

    /// Puts everything under `prefix/` in the bucket.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the region.
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }
}

/// The size of part `part_idx` (from 0) of an upload whose first parts are
/// `part_size` bytes: doubled every 1,000 parts, at most 5 GiB.
fn nth_part_size(part_size: usize, part_idx: usize) -> u64 {
    let doublings = (part_idx / PARTS_PER_DOUBLING).min(32) as u32;
    (part_size as u64)
        .saturating_mul(1 << doublings)
        .min(MAX_PART_SIZE)
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// A duration as `object_store` parses it from configuration.
fn duration_value(d: Duration) -> String {
    format!("{}ns", d.as_nanos())
}

/// The `AWS_*` environment variables `object_store` knows, as
/// `AmazonS3Builder::from_env` reads them, less those `skip` rejects.
fn builder_from_env(skip: impl Fn(&AmazonS3ConfigKey) -> bool) -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::new();
    for (key, value) in std::env::vars_os() {
        let (Some(key), Some(value)) = (key.to_str(), value.to_str()) else {
            continue;
        };
        if !key.starts_with("AWS_") {
            continue;
        }
        match key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
            Ok(key) if !skip(&key) => builder = builder.with_config(key, value),
            _ => {}
        }
    }
    builder
}

/// The private runtime requests run on. Callers wait on a channel, never on
/// the runtime, so they may themselves be inside any runtime.
#[derive(Debug)]
struct Io {
    /// Taken only by `drop`, which shuts it down without blocking.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl Io {
    fn start() -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("gress-s3")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(Io {
            runtime: Some(runtime),
            handle,
        })
    }

    /// Runs `fut` on the runtime and waits for its output, at most until
    /// the calling thread's deadline ([`super::with_deadline`]): then the
    /// task goes on alone and this fails with `TimedOut`. Fails with
    /// `Other` if the task ended without an output (it panicked).
    fn wait<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.handle.spawn(async move {
            // The receiver only goes away with a caller that stopped waiting.
            let _ = tx.send(fut.await);
        });
        match super::deadline() {
            None => rx.recv().map_err(|_| io::Error::other(lost_task())),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                rx.recv_timeout(left).map_err(|e| match e {
                    mpsc::RecvTimeoutError::Timeout => io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the operation's time limit passed before S3 answered",
                    ),
                    mpsc::RecvTimeoutError::Disconnected => io::Error::other(lost_task()),
                })
            }
        }
    }

    /// Runs a request on the runtime and waits for its result.
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> object_store::Result<T> {
        self.wait(fut).unwrap_or_else(|e| {
            Err(object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })
        })
    }

    /// Runs `fut` on the runtime without waiting for it.
    fn detach(&self, fut: impl Future<Output = ()> + Send + 'static) {
        drop(self.handle.spawn(fut));
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn lost_task() -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source: "the request's task ended without an answer".into(),
    }
}

/// The `io::ErrorKind` that says what went wrong: not found, already there,
/// refused, timed out, or the kind of the underlying I/O error.
fn error_kind(e: &object_store::Error) -> io::ErrorKind {
    match e {
        object_store::Error::NotFound { .. } => return io::ErrorKind::NotFound,
        object_store::Error::AlreadyExists { .. } => return io::ErrorKind::AlreadyExists,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => {
            return io::ErrorKind::PermissionDenied;
        }
        _ => {}
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(e) = source {
        if let Some(HttpErrorKind::Timeout) = e.downcast_ref::<HttpError>().map(HttpError::kind) {
            return io::ErrorKind::TimedOut;
        }
        let io_kind = e.downcast_ref::<io::Error>().map(io::Error::kind);
        if let Some(kind) = io_kind.filter(|k| *k != io::ErrorKind::Other) {
            return kind;
        }
        source = e.source();
    }
    io::ErrorKind::Other
}

fn store_err(op: &'static str, path: &str, e: object_store::Error) -> Error {
    Error::storage(op, path, io::Error::new(error_kind(&e), e))
}

/// A bucket (or a prefix in one) of S3-compatible object storage.
pub struct S3Storage {
    store: Arc<AmazonS3>,
    bucket: String,
    prefix: String,
    multipart_threshold: usize,
    part_size: usize,
    io: Io,
}

impl fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Storage")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .finish_non_exhaustive()
    }
}

impl S3Storage {
    /// Connects to the bucket (no request is made until first use). Fails
    /// with [`Error::Invalid`] on a bad configuration.
    pub fn new(config: S3Config) -> Result<Self> {
        let part_size = config.part_size as u64;
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&part_size) {
            return Err(Error::invalid(
                "part_size",
                "S3 parts are from 5 MiB to 5 GiB",
            ));
        }
        if config.multipart_threshold as u64 > MAX_PART_SIZE {
            return Err(Error::invalid(
                "multipart_threshold",
                "S3 takes at most 5 GiB in one PUT",
            ));
        }
        if config.request_timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(Error::invalid(
                "request_timeout",
                "timeouts must be longer than zero",
            ));
        }
        if !config.prefix.is_empty() {
            check_path(config.prefix.trim_end_matches('/'))?;
        }
        let keys = match (&config.access_key_id, &config.secret_access_key) {
            (Some(id), Some(secret)) => Some((id, secret)),
            (None, None) => None,
            _ => {
                return Err(Error::invalid(
                    "access_key_id",
                    "set together with secret_access_key, or neither",
                ));
            }
        };
        let mut builder = builder_from_env(|key| match key {
            AmazonS3ConfigKey::AccessKeyId
            | AmazonS3ConfigKey::SecretAccessKey
            | AmazonS3ConfigKey::Token => keys.is_some(),
            AmazonS3ConfigKey::Endpoint | AmazonS3ConfigKey::S3Endpoint => {
                config.endpoint.is_some()
            }
            _ => false,
        })
        .with_bucket_name(&config.bucket)
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
            duration_value(config.request_timeout),
        )
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
            duration_value(config.connect_timeout),
        )
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: config.max_retries,
            retry_timeout: config.retry_timeout,
        });
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(allow_http) = config.allow_http {
            builder = builder.with_allow_http(allow_http);
        }
        if let Some((id, secret)) = keys {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
        }
        let store = builder
            .build()
            .map_err(|e| Error::invalid("s3 config", e.to_string()))?;
        let io =
            Io::start().map_err(|e| Error::storage("starting the I/O runtime for", "s3", e))?;
        Ok(S3Storage {
            store: Arc::new(store),
            bucket: config.bucket,
            prefix: config.prefix.trim_end_matches('/').to_string(),
            multipart_threshold: config.multipart_threshold.max(1),
            part_size: config.part_size,
            io,
        })
    }

    fn location(&self, path: &str) -> Result<StorePath> {
        check_path(path)?;
        Ok(if self.prefix.is_empty() {
            StorePath::from(path)
        } else {
            StorePath::from(format!("{}/{path}", self.prefix))
        })
    }

    fn relative(&self, location: &StorePath) -> String {
        let full = location.as_ref();
        match self.prefix.is_empty() {
            true => full.to_string(),
            false => full
                .strip_prefix(&self.prefix)
                .map_or(full, |r| r.trim_start_matches('/'))
                .to_string(),
        }
    }
}

/// Buffers written bytes into parts and uploads them; a small object is
/// sent with one PUT when the writer is finished. An upload not completed is
/// aborted, so no part is left stored (and billed).
struct UploadWriter<'a> {
    storage: &'a S3Storage,
    location: StorePath,
    path: &'a str,
    buf: Vec<u8>,
    upload: Option<Box<dyn MultipartUpload>>,
    n_parts: usize,
    failed: Option<Error>,
}

impl UploadWriter<'_> {
    /// How many bytes the buffer takes before they are sent: while the
    /// object may still go in one PUT, the threshold; then the next part.
    fn buf_limit(&self) -> usize {
        match self.upload {
            None => self.storage.multipart_threshold.max(self.storage.part_size),
            Some(_) => to_usize(nth_part_size(self.storage.part_size, self.n_parts)),
        }
    }

    fn send_part(&mut self) -> io::Result<()> {
        if self.n_parts >= MAX_PARTS {
            let e = io::Error::new(
                io::ErrorKind::FileTooLarge,
                "the object needs more than S3's 10,000 parts",
            );
            return Err(self.fail(Error::storage("uploading part of", self.path, e)));
        }
        if self.upload.is_none() {
            let store = self.storage.store.clone();
            let location = self.location.clone();
            let started = self
                .storage
                .io
                .run(async move { store.put_multipart(&location).await });
            match started {
                Ok(u) => self.upload = Some(u),
                Err(e) => return Err(self.fail(store_err("starting upload of", self.path, e))),
            }
        }
        let part = PutPayload::from(Bytes::from(std::mem::take(&mut self.buf)));
        let upload = self.upload.as_mut().expect("started above");
        let sending = upload.put_part(part);
        let sent = self.storage.io.run(sending);
        self.n_parts += 1;
        self.buf = Vec::with_capacity(self.buf_limit());
        sent.map_err(|e| self.fail(store_err("uploading part of", self.path, e)))
    }

    fn fail(&mut self, e: Error) -> io::Error {
        let failed = io::Error::new(kind_of(&e), e.to_string());
        self.failed = Some(e);
        failed
    }

    /// Sends what is buffered and makes the object visible.
    fn finish(&mut self) -> Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.upload.is_none() {
            let store = self.storage.store.clone();
            let location = self.location.clone();
            let payload = PutPayload::from(Bytes::from(std::mem::take(&mut self.buf)));
            return self
                .storage
                .io
                .run(async move { store.put(&location, payload).await })
                .map(drop)
                .map_err(|e| store_err("writing", self.path, e));
        }
        if !self.buf.is_empty() && self.send_part().is_err() {
            return Err(self.failed.take().expect("send_part records its error"));
        }
        let mut upload = self.upload.take().expect("checked above");
        let path = self.path.to_string();
        self.storage
            .io
            .run(async move {
                match upload.complete().await {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        abort_upload(upload, &path).await;
                        Err(e)
                    }
                }
            })
            .map_err(|e| store_err("completing upload of", self.path, e))
    }

    /// Aborts the multipart upload, if one was started, and waits for it.
    fn abort(&mut self) {
        if let Some(upload) = self.upload.take() {
            let path = self.path.to_string();
            // Best effort: an upload left open is cleaned up by the
            // bucket's lifecycle rules.
            let _ = self
                .storage
                .io
                .wait(async move { abort_upload(upload, &path).await });
        }
    }
}

async fn abort_upload(mut upload: Box<dyn MultipartUpload>, path: &str) {
    if let Err(e) = upload.abort().await {
        tracing::warn!(
            path,
            error = %e,
            "could not abort an unfinished upload; its parts stay stored until \
             the bucket's lifecycle rules remove them"
        );
    }
}

/// The `io::ErrorKind` an error carries, if it is a storage error.
fn kind_of(e: &Error) -> io::ErrorKind {
    match e {
        Error::Storage { source, .. } => source.kind(),
        _ => io::ErrorKind::Other,
    }
}

impl Write for UploadWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(io::Error::new(kind_of(e), e.to_string()));
        }
        let limit = self.buf_limit();
        let room = limit.saturating_sub(self.buf.len()).max(1);
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= limit {
            self.send_part()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for UploadWriter<'_> {
    fn drop(&mut self) {
        // Reached with an upload only when the writer's callback panicked:
        // abort without waiting.
        if let Some(upload) = self.upload.take() {
            let path = self.path.to_string();
            self.storage
                .io
                .detach(async move { abort_upload(upload, &path).await });
        }
    }
}

type ChunkStream = ReadyChunks<BoxStream<'static, object_store::Result<Bytes>>>;

/// A blocking reader over an object's byte stream: each refill fetches, on
/// the runtime, every chunk that has arrived (waiting for one if none has).
struct StreamReader<'a> {
    io: &'a Io,
    /// `None` once the stream has ended or failed.
    stream: Option<ChunkStream>,
    pending: VecDeque<object_store::Result<Bytes>>,
    chunk: Bytes,
    /// Repeated to every read after a failure, so a reader that goes on
    /// never mistakes a failed stream for its end.
    failed: Option<(io::ErrorKind, String)>,
    path: String,
}

impl StreamReader<'_> {
    fn failure(&mut self, kind: io::ErrorKind, message: String) -> io::Error {
        self.stream = None;
        self.pending.clear();
        self.failed = Some((kind, message.clone()));
        io::Error::new(kind, message)
    }
}

impl Read for StreamReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            if let Some((kind, message)) = &self.failed {
                return Err(io::Error::new(*kind, message.clone()));
            }
            match self.pending.pop_front() {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => {
                    let message = format!("reading {}: {e}", self.path);
                    return Err(self.failure(error_kind(&e), message));
                }
                None => {
                    let Some(mut stream) = self.stream.take() else {
                        return Ok(0);
                    };
                    let fetched = self.io.wait(async move {
                        let batch = stream.next().await;
                        (stream, batch)
                    });
                    match fetched {
                        Ok((stream, Some(batch))) => {
                            self.stream = Some(stream);
                            self.pending.extend(batch);
                        }
                        Ok((_, None)) => return Ok(0),
                        Err(e) => {
                            let message = format!("reading {}: {e}", self.path);
                            return Err(self.failure(e.kind(), message));
                        }
                    }
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

impl Storage for S3Storage {
    fn put(&self, path: &str, write: &mut PutFn<'_>) -> Result<()> {
        let mut w = UploadWriter {
            storage: self,
            location: self.location(path)?,
            path,
            buf: Vec::new(),
            upload: None,
            n_parts: 0,
            failed: None,
        };
        let result = match write(&mut w) {
            Ok(()) => w.finish(),
            Err(e) => Err(w.failed.take().unwrap_or(e)),
        };
        if result.is_err() {
            w.abort();
        }
        result
    }

    fn put_new(&self, path: &str, bytes: &[u8]) -> Result<()> {
        let store = self.store.clone();
        let location = self.location(path)?;
        let payload = PutPayload::from(bytes.to_vec());
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        self.io
            .run(async move { store.put_opts(&location, payload, opts).await })
            .map(drop)
            .map_err(|e| store_err("publishing", path, e))
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + Send + '_>> {
        let store = self.store.clone();
        let location = self.location(path)?;
        let got = self
            .io
            .run(async move { store.get(&location).await })
            .map_err(|e| store_err("opening", path, e))?;
        Ok(Box::new(StreamReader {
            io: &self.io,
            stream: Some(got.into_stream().ready_chunks(64)),
            pending: VecDeque::new(),
            chunk: Bytes::new(),
            failed: None,
            path: path.to_string(),
        }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        // object_store lists whole path segments: list the deepest
        // directory the prefix names, then filter by the string prefix.
        let dir = prefix.rsplit_once('/').map_or("", |(d, _)| d);
        let location = if dir.is_empty() {
            (!self.prefix.is_empty()).then(|| StorePath::from(self.prefix.as_str()))
        } else {
            Some(self.location(dir)?)
        };
        let store = self.store.clone();
        let metas: Vec<object_store::ObjectMeta> = self
            .io
            .run(async move { store.list(location.as_ref()).try_collect().await })
            .map_err(|e| store_err("listing", prefix, e))?;
        let mut out: Vec<ObjectMeta> = metas
            .into_iter()
            .map(|m| ObjectMeta {
                path: self.relative(&m.location),
                size: m.size,
            })
            .filter(|m| m.path.starts_with(prefix))
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn size(&self, path: &str) -> Result<Option<u64>> {
        let store = self.store.clone();
        let location = self.location(path)?;
        match self.io.run(async move { store.head(&location).await }) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err("reading size of", path, e)),
        }
    }

    fn delete(&self, path: &str) -> Result<()> {
        let store = self.store.clone();
        let location = self.location(path)?;
        match self.io.run(async move { store.delete(&location).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err("deleting", path, e)),
        }
    }
}

/// A real S3 API on loopback for tests: `moto_server` from PyPI
/// (`pip install 'moto[server]'`), started on a free port and stopped on
/// drop. Behind the `testing` feature.
#[cfg(feature = "testing")]
pub mod testing {
    use std::io::{self, Read as _, Write as _};
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::S3Config;

    /// A running `moto_server`, in a process group of its own.
    #[derive(Debug)]
    pub struct MotoServer {
        child: Child,
        port: u16,
    }

    impl MotoServer {
        /// Starts `moto_server` on 127.0.0.1 and waits until it answers.
        pub fn start() -> io::Result<Self> {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let mut command = Command::new("moto_server");
            command
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            #[cfg(unix)]
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
            let child = command.spawn().map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot start moto_server (pip install 'moto[server]'): {e}"),
                )
            })?;
            let mut server = MotoServer { child, port };
            let deadline = Instant::now() + Duration::from_secs(60);
            while server.request("GET", "/", b"").is_err() {
                if Instant::now() > deadline {
                    return Err(io::Error::other("moto_server did not answer in 60 s"));
                }
                if let Some(status) = server.child.try_wait()? {
                    return Err(io::Error::other(format!("moto_server exited: {status}")));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(server)
        }

        /// The endpoint URL.
        pub fn endpoint(&self) -> String {
            format!("http://127.0.0.1:{}", self.port)
        }

        /// Sends an unsigned request (moto does not check signatures) and
        /// returns the whole response, head and body; a status other than
        /// 2xx is an error carrying the status line.
        pub fn request(&self, method: &str, path: &str, body: &[u8]) -> io::Result<String> {
            let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(
                s,
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                self.port,
                body.len()
            )?;
            s.write_all(body)?;
            let mut response = Vec::new();
            s.read_to_end(&mut response)?;
            let response = String::from_utf8_lossy(&response).into_owned();
            if !response.starts_with("HTTP/1.1 2") && !response.starts_with("HTTP/1.0 2") {
                return Err(io::Error::other(
                    response.lines().next().unwrap_or("").to_string(),
                ));
            }
            Ok(response)
        }

        /// Creates a bucket and returns a config for it, with explicit
        /// endpoint, keys and region, so the environment plays no part.
        pub fn bucket(&self, name: &str) -> io::Result<S3Config> {
            self.request("PUT", &format!("/{name}"), b"")?;
            Ok(S3Config::new(name)
                .with_endpoint(self.endpoint(), "test", "test")
                .with_region("us-east-1"))
        }

        /// Stops the server (SIGSTOP to its process group): connections are
        /// still accepted by the kernel, but nothing answers, as with a hung
        /// endpoint.
        #[cfg(unix)]
        pub fn freeze(&self) -> io::Result<()> {
            self.signal("-STOP")
        }

        /// Lets a frozen server go on (SIGCONT).
        #[cfg(unix)]
        pub fn resume(&self) -> io::Result<()> {
            self.signal("-CONT")
        }

        #[cfg(unix)]
        fn signal(&self, signal: &str) -> io::Result<()> {
            let group = format!("-{}", self.child.id());
            let status = Command::new("kill")
                .args([signal, "--", &group])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            match status.success() {
                true => Ok(()),
                false => Err(io::Error::other(format!(
                    "kill {signal} -- {group}: {status}"
                ))),
            }
        }
    }

    impl Drop for MotoServer {
        fn drop(&mut self) {
            #[cfg(unix)]
            let _ = self.signal("-KILL");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The part-size schedule keeps every part within S3's 5 MiB..5 GiB and
    /// lets S3's 10,000 parts hold a checkpoint file of the largest size a
    /// manifest accepts, whatever part size is configured.
    #[test]
    fn part_sizes_reach_the_largest_file_within_s3_limits() {
        for base in [5 << 20, 8 << 20, 64 << 20, 1 << 30, 5 << 30] {
            let mut total = 0u64;
            for idx in 0..MAX_PARTS {
                let size = nth_part_size(base, idx);
                assert!(
                    (MIN_PART_SIZE..=MAX_PART_SIZE).contains(&size),
                    "part {idx} of {size} bytes with base {base}"
                );
                assert!(size >= nth_part_size(base, idx.saturating_sub(1)));
                total += size;
            }
            assert!(
                total >= crate::manifest::MAX_FILE_SIZE,
                "base {base}: 10,000 parts hold only {total} bytes"
            );
        }
        assert_eq!(nth_part_size(8 << 20, 999), 8 << 20);
        assert_eq!(nth_part_size(8 << 20, 1_000), 16 << 20);
    }
}
