//! Reading stored files back with their size and checksum verified, and
//! writing them with both computed on the way.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use gress_state::checkpoint::CheckpointFiles;

use crate::error::{Error, Result};
use crate::manifest::FileEntry;
use crate::storage::Storage;

/// Counts and checksums what passes through to `inner`, and remembers
/// whether the storage itself failed a write.
struct CrcWriter<'a> {
    inner: &'a mut dyn Write,
    crc: u32,
    len: u64,
    failed: Option<(io::ErrorKind, String)>,
    cancel: Option<&'a dyn Fn() -> bool>,
}

impl Write for CrcWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.cancel.is_some_and(|cancelled| cancelled()) {
            // Not `Interrupted`: `write_all` would retry it forever.
            let e = io::Error::other("upload cancelled");
            self.failed = Some((e.kind(), e.to_string()));
            return Err(e);
        }
        let n = match self.inner.write(buf) {
            Ok(n) => n,
            Err(e) => {
                self.failed = Some((e.kind(), e.to_string()));
                return Err(e);
            }
        };
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|e| {
            self.failed = Some((e.kind(), e.to_string()));
        })
    }
}

/// Stores the bytes `produce` writes at `path`; returns their size and
/// CRC32C. A failure of the storage's own writer (disk full, a lost
/// connection) is reported as [`Error::Storage`] whatever layer it passed
/// through, so one cause has one kind; `cancel` stops the upload between
/// two writes.
pub(crate) fn upload(
    storage: &dyn Storage,
    path: &str,
    cancel: Option<&dyn Fn() -> bool>,
    produce: &mut dyn FnMut(&mut dyn Write) -> Result<()>,
) -> Result<(u64, u32)> {
    let mut stat = (0, 0);
    let mut storage_failure = None;
    let result = storage.put(path, &mut |w| {
        let mut cw = CrcWriter {
            inner: w,
            crc: 0,
            len: 0,
            failed: None,
            cancel,
        };
        let produced = produce(&mut cw);
        storage_failure = cw.failed.take();
        produced?;
        stat = (cw.len, cw.crc);
        Ok(())
    });
    match (result, storage_failure) {
        (Ok(()), _) => Ok(stat),
        (Err(_), Some((kind, message))) => Err(Error::storage(
            "writing",
            path,
            io::Error::new(kind, message),
        )),
        (Err(e), None) => Err(e),
    }
}

/// Passes a stored file through, failing at its end (or as soon as it is
/// too long) if it is not exactly what the manifest says.
pub(crate) struct VerifyingReader<'a> {
    inner: Box<dyn Read + Send + 'a>,
    entry: FileEntry,
    crc: u32,
    len: u64,
}

impl<'a> VerifyingReader<'a> {
    pub(crate) fn new(inner: Box<dyn Read + Send + 'a>, entry: &FileEntry) -> Self {
        VerifyingReader {
            inner,
            entry: entry.clone(),
            crc: 0,
            len: 0,
        }
    }

    fn damaged(&self, reason: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("stored file {} is damaged: {reason}", self.entry.path),
        )
    }
}

impl Read for VerifyingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.len += n as u64;
        if self.len > self.entry.size {
            return Err(self.damaged(format!("longer than its {} bytes", self.entry.size)));
        }
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        if n == 0 && !buf.is_empty() {
            if self.len != self.entry.size {
                return Err(
                    self.damaged(format!("{} bytes, expected {}", self.len, self.entry.size))
                );
            }
            if self.crc != self.entry.crc32c {
                return Err(self.damaged(format!(
                    "checksum {:08x}, expected {:08x}",
                    self.crc, self.entry.crc32c
                )));
            }
        }
        Ok(n)
    }
}

/// Reads `entry` fully and checks it, without keeping the bytes.
pub(crate) fn verify_stored(storage: &dyn Storage, entry: &FileEntry) -> Result<()> {
    let mut r = VerifyingReader::new(storage.open(&entry.path)?, entry);
    io::copy(&mut r, &mut io::sink()).map_err(|e| damaged_or_storage(e, &entry.path))?;
    Ok(())
}

pub(crate) fn damaged_or_storage(e: io::Error, path: &str) -> Error {
    if e.kind() == io::ErrorKind::InvalidData {
        // A `VerifyingReader` names the file already: say it once.
        let message = e.to_string();
        let prefix = format!("stored file {path} is damaged: ");
        let reason = message
            .strip_prefix(&prefix)
            .unwrap_or(&message)
            .to_string();
        Error::DamagedFile {
            path: path.to_string(),
            reason: reason.into(),
        }
    } else {
        Error::storage("reading", path, e)
    }
}

/// One backend's files of a checkpoint, read from the storage.
pub(crate) struct StoredFiles<'a> {
    pub(crate) storage: &'a dyn Storage,
    pub(crate) files: &'a [FileEntry],
    pub(crate) parallelism: usize,
}

impl StoredFiles<'_> {
    fn entry(&self, name: &str) -> gress_state::Result<&FileEntry> {
        self.files.iter().find(|f| f.name == name).ok_or_else(|| {
            gress_state::Error::invalid_argument(
                "name",
                format!("no file {name} in the checkpoint"),
            )
        })
    }

    fn fetch_one(&self, entry: &FileEntry, dir: &Path) -> Result<()> {
        let part = dir.join(format!("{}.part", entry.name));
        let target = dir.join(&entry.name);
        let local = |op, e| Error::storage(op, part.display().to_string(), e);
        let mut input = VerifyingReader::new(self.storage.open(&entry.path)?, entry);
        let mut file = File::create(&part).map_err(|e| local("creating", e))?;
        let copied = io::copy(&mut input, &mut file);
        let result = copied
            .map_err(|e| damaged_or_storage(e, &entry.path))
            .and_then(|_| file.sync_all().map_err(|e| local("syncing", e)))
            .and_then(|()| fs::rename(&part, &target).map_err(|e| local("renaming", e)));
        if result.is_err() {
            let _ = fs::remove_file(&part);
        }
        result
    }
}

impl CheckpointFiles for StoredFiles<'_> {
    fn names(&self) -> Vec<String> {
        self.files.iter().map(|f| f.name.clone()).collect()
    }

    fn open(&self, name: &str) -> gress_state::Result<Box<dyn Read + '_>> {
        let entry = self.entry(name)?;
        let inner = self.storage.open(&entry.path)?;
        Ok(Box::new(VerifyingReader::new(inner, entry)))
    }

    fn fetch_all(&self, dir: &Path) -> gress_state::Result<()> {
        let next = AtomicUsize::new(0);
        let workers = self.parallelism.clamp(1, self.files.len().max(1));
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| -> Result<()> {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(entry) = self.files.get(i) else {
                                return Ok(());
                            };
                            self.fetch_one(entry, dir)?;
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::invalid("fetch", "worker panicked")))
                })
                .collect()
        });
        for r in results {
            r?;
        }
        gress_state::fsutil::sync_dir(dir)
            .map_err(|e| gress_state::Error::io(format!("syncing {}", dir.display()), e))
    }
}
