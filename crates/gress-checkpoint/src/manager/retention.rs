//! What may be deleted, and deleting it.
//!
//! A stored file is deleted only when no kept checkpoint, no checkpoint in
//! flight and no publication of uncertain outcome references it, and no
//! manifest set aside as damaged could: a damaged manifest of id `d` may
//! name any file owned by a checkpoint up to `d` (the owner is in every
//! data file's path), so those are kept while it is there. Every batch of
//! deletions is preceded by a fencing check.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::{Retention, Shared, State};
use crate::manifest::{FileEntry, Manifest, key_of_shared, manifest_path, owner_of};
use crate::storage::Storage;

/// Reference counts of stored files, and the shared ones by sharing key.
#[derive(Default)]
pub(super) struct Refs {
    by_path: HashMap<String, (FileEntry, usize)>,
    by_key: HashMap<String, String>,
}

impl Refs {
    /// Adds one reference to each file.
    pub(super) fn add<'a>(&mut self, files: impl IntoIterator<Item = &'a FileEntry>) {
        for f in files {
            let slot = self
                .by_path
                .entry(f.path.clone())
                .or_insert_with(|| (f.clone(), 0));
            slot.1 += 1;
            if let Some(key) = key_of_shared(&f.path) {
                self.by_key
                    .entry(key.to_string())
                    .or_insert_with(|| f.path.clone());
            }
        }
    }

    /// Drops one reference from each file; returns the paths now
    /// unreferenced.
    pub(super) fn release<'a>(
        &mut self,
        files: impl IntoIterator<Item = &'a FileEntry>,
    ) -> Vec<String> {
        let mut unreferenced = Vec::new();
        for f in files {
            let Some((_, n)) = self.by_path.get_mut(&f.path) else {
                continue;
            };
            *n -= 1;
            if *n == 0 {
                self.by_path.remove(&f.path);
                if let Some(key) = key_of_shared(&f.path)
                    && self.by_key.get(key) == Some(&f.path)
                {
                    self.by_key.remove(key);
                }
                unreferenced.push(f.path.clone());
            }
        }
        unreferenced
    }

    /// The stored shared file with this sharing key, if one is referenced.
    pub(super) fn shared(&self, key: &str) -> Option<&FileEntry> {
        let path = self.by_key.get(key)?;
        self.by_path.get(path).map(|(f, _)| f)
    }

    pub(super) fn contains(&self, path: &str) -> bool {
        self.by_path.contains_key(path)
    }
}

impl State {
    /// The oldest committed checkpoint that retention does not keep.
    fn next_to_retire(&self, retention: Retention, retain: usize) -> Option<u64> {
        match retention {
            Retention::Newest => (self.retained.len() > retain)
                .then(|| self.retained.keys().next().copied())
                .flatten(),
            Retention::Required => {
                let required = self.required.as_ref()?;
                let newest_required = required.last().copied();
                self.retained.keys().copied().find(|&id| {
                    let needed = required.contains(&id);
                    let may_commit_next =
                        id >= self.first_own_id && newest_required.is_none_or(|newest| id > newest);
                    !needed && !may_commit_next
                })
            }
        }
    }

    /// Whether `path` (a data file) may be deleted now.
    pub(super) fn may_delete(&self, path: &str) -> bool {
        if self.refs.contains(path) {
            return false;
        }
        match (owner_of(path), self.max_damaged) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(owner), Some(damaged)) => owner > damaged,
        }
    }
}

impl Shared {
    /// Deletes `paths` (in parallel), after a fencing check; returns how
    /// many went and how many could not be deleted.
    pub(super) fn delete_files(&self, paths: &[String]) -> (usize, usize) {
        if paths.is_empty() {
            return (0, 0);
        }
        if let Err(e) = self.fence.check() {
            tracing::warn!(error = %e, n = paths.len(), "not deleting: this manager no longer holds the location");
            return (0, paths.len());
        }
        let parallelism = self.config.read().parallelism;
        delete_parallel(&*self.storage, paths, parallelism)
    }

    /// Deletes the committed checkpoints retention does not keep, oldest
    /// first: manifest first (so it stops being a checkpoint), then every
    /// file nothing needs now.
    pub(super) fn apply_retention(&self) {
        let (retention, retain) = {
            let config = self.config.read();
            (config.retention, config.retain)
        };
        loop {
            let (old_id, old) = {
                let state = self.state.lock();
                let Some(id) = state.next_to_retire(retention, retain) else {
                    return;
                };
                let Some(m) = state.retained.get(&id) else {
                    return;
                };
                (id, m.clone())
            };
            if let Err(e) = self.fence.check() {
                tracing::warn!(error = %e, "retention stopped");
                return;
            }
            if let Err(e) = self.storage.delete(&manifest_path(old_id)) {
                tracing::warn!(id = old_id, error = %e, "could not delete an old checkpoint; keeping it");
                return;
            }
            let doomed = {
                let mut state = self.state.lock();
                state.retained.remove(&old_id);
                let unreferenced = state.refs.release(old.paths());
                unreferenced
                    .into_iter()
                    .filter(|p| state.may_delete(p))
                    .collect::<Vec<_>>()
            };
            self.delete_files(&doomed);
        }
    }

    /// Drops references taken for work that ended (pins of a checkpoint in
    /// flight), deleting what nothing needs any more.
    pub(super) fn release_refs(&self, files: &[FileEntry]) {
        let doomed = {
            let mut state = self.state.lock();
            let unreferenced = state.refs.release(files);
            unreferenced
                .into_iter()
                .filter(|p| state.may_delete(p))
                .collect::<Vec<_>>()
        };
        self.delete_files(&doomed);
    }

    /// Keeps forever (in this process) the files of a manifest whose
    /// publication could not be confirmed: it may exist.
    pub(super) fn keep_uncertain(&self, manifest: &Manifest) {
        self.state.lock().refs.add(manifest.paths());
    }
}

/// Deletes `paths` with up to `parallelism` threads; returns (deleted,
/// failed).
pub(super) fn delete_parallel(
    storage: &dyn Storage,
    paths: &[String],
    parallelism: usize,
) -> (usize, usize) {
    let next = AtomicUsize::new(0);
    let failed = Mutex::new(0usize);
    let workers = parallelism.clamp(1, paths.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while let Some(path) = paths.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if let Err(e) = storage.delete(path) {
                        tracing::warn!(path, error = %e, "could not delete; left for the sweep at the next open");
                        *failed.lock() += 1;
                    }
                }
            });
        }
    });
    let failed = failed.into_inner();
    (paths.len() - failed, failed)
}
