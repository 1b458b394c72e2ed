//! Checkpoint storage in memory, for simulation tests: every write is
//! atomic and durable the moment it returns, as the trait promises, and a
//! "crash" loses nothing that was acknowledged.

use std::collections::BTreeMap;
use std::io::{self, Cursor, Read};

use parking_lot::Mutex;

use super::{ObjectMeta, PutFn, Storage, check_path};
use crate::error::{Error, Result};

/// Objects in a map.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryStorage {
    /// An empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every path stored, in order.
    pub fn paths(&self) -> Vec<String> {
        self.objects.lock().keys().cloned().collect()
    }

    /// Replaces an object's bytes outright (to damage it in a test).
    pub fn overwrite(&self, path: &str, bytes: Vec<u8>) {
        self.objects.lock().insert(path.to_string(), bytes);
    }
}

impl Storage for MemoryStorage {
    fn put(&self, path: &str, write: &mut PutFn<'_>) -> Result<()> {
        check_path(path)?;
        let mut bytes = Vec::new();
        write(&mut bytes)?;
        self.objects.lock().insert(path.to_string(), bytes);
        Ok(())
    }

    fn put_new(&self, path: &str, bytes: &[u8]) -> Result<()> {
        check_path(path)?;
        let mut objects = self.objects.lock();
        if objects.contains_key(path) {
            return Err(Error::storage(
                "publishing",
                path,
                io::Error::new(io::ErrorKind::AlreadyExists, "object exists"),
            ));
        }
        objects.insert(path.to_string(), bytes.to_vec());
        Ok(())
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + Send + '_>> {
        check_path(path)?;
        match self.objects.lock().get(path) {
            Some(bytes) => Ok(Box::new(Cursor::new(bytes.clone()))),
            None => Err(Error::storage(
                "opening",
                path,
                io::Error::new(io::ErrorKind::NotFound, "no such object"),
            )),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        Ok(self
            .objects
            .lock()
            .range(prefix.to_string()..)
            .take_while(|(p, _)| p.starts_with(prefix))
            .map(|(p, b)| ObjectMeta {
                path: p.clone(),
                size: b.len() as u64,
            })
            .collect())
    }

    fn delete(&self, path: &str) -> Result<()> {
        check_path(path)?;
        self.objects.lock().remove(path);
        Ok(())
    }

    fn size(&self, path: &str) -> Result<Option<u64>> {
        check_path(path)?;
        Ok(self.objects.lock().get(path).map(|b| b.len() as u64))
    }
}
