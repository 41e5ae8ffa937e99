//! A local copy of a remote repository's snapshot objects.
//!
//! Snapshots are small, immutable and named by the hash of their bytes, and every
//! command lists and reads all of them; on object storage that is one GET per snapshot
//! per command. This wrapper keeps a copy of each in a local directory and serves reads
//! from it after checking the copy's hash against its name, so a damaged or stale copy is
//! never used (it is fetched again). Listings always come from the store, and copies of
//! snapshots no longer listed are deleted, so forgetting a snapshot forgets its copy too.
//! Deleting the directory loses nothing.

use super::{Backend, FileKind, RequestCounters};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// A backend whose snapshot objects are also kept in a local directory.
pub struct CachedBackend {
    inner: Arc<dyn Backend>,
    dir: PathBuf,
}

impl CachedBackend {
    /// Wraps `inner`, keeping copies under `root` in a directory named after the
    /// location (so several repositories can share one cache root).
    pub fn new(inner: Arc<dyn Backend>, root: &std::path::Path) -> Self {
        let tag = blake3::hash(inner.location().as_bytes()).to_hex();
        let dir = root.join("objects").join(&tag.as_str()[..16]);
        CachedBackend { inner, dir }
    }

    fn path(&self, kind: FileKind, name: &str) -> Option<PathBuf> {
        (kind == FileKind::Snapshot && super::is_object_name(name))
            .then(|| self.dir.join("snapshots").join(name))
    }

    fn read_copy(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
        let bytes = std::fs::read(path).ok()?;
        (blake3::hash(&bytes).to_hex().as_str() == name).then_some(bytes)
    }

    /// Best effort: a copy that cannot be written is simply fetched again next time.
    fn write_copy(path: &std::path::Path, bytes: &[u8]) {
        let Some(dir) = path.parent() else { return };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) {
            if io::Write::write_all(&mut tmp, bytes).is_ok() {
                let _ = tmp.persist(path);
            }
        }
    }
}

impl Backend for CachedBackend {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn counters(&self) -> &RequestCounters {
        self.inner.counters()
    }

    fn upload_concurrency(&self) -> usize {
        self.inner.upload_concurrency()
    }

    fn read_concurrency(&self) -> usize {
        self.inner.read_concurrency()
    }

    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }

    fn create(&self) -> io::Result<()> {
        self.inner.create()
    }

    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> io::Result<()> {
        self.inner.put(kind, name, data)?;
        if let Some(p) = self.path(kind, name) {
            Self::write_copy(&p, data);
        }
        Ok(())
    }

    fn put_owned(&self, kind: FileKind, name: &str, data: Vec<u8>) -> io::Result<Vec<u8>> {
        if self.path(kind, name).is_some() {
            self.put(kind, name, &data)?;
            return Ok(data);
        }
        self.inner.put_owned(kind, name, data)
    }

    fn get(&self, kind: FileKind, name: &str) -> io::Result<Vec<u8>> {
        let Some(p) = self.path(kind, name) else {
            return self.inner.get(kind, name);
        };
        if let Some(bytes) = Self::read_copy(&p, name) {
            return Ok(bytes);
        }
        let bytes = self.inner.get(kind, name)?;
        // Only a copy whose bytes match its name is kept; a damaged object stays remote,
        // where the caller's own check reports it.
        if blake3::hash(&bytes).to_hex().as_str() == name {
            Self::write_copy(&p, &bytes);
        }
        Ok(bytes)
    }

    fn read_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> io::Result<()> {
        self.inner.read_range_into(kind, name, offset, buf)
    }

    fn list(&self, kind: FileKind) -> io::Result<Vec<(String, u64)>> {
        let listing = self.inner.list(kind)?;
        if kind == FileKind::Snapshot {
            let live: std::collections::HashSet<&str> =
                listing.iter().map(|(n, _)| n.as_str()).collect();
            if let Ok(entries) = std::fs::read_dir(self.dir.join("snapshots")) {
                for e in entries.flatten() {
                    let name = e.file_name();
                    if !live.contains(name.to_string_lossy().as_ref()) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
        Ok(listing)
    }

    fn remove(&self, kind: FileKind, name: &str) -> io::Result<()> {
        self.inner.remove(kind, name)?;
        if let Some(p) = self.path(kind, name) {
            let _ = std::fs::remove_file(p);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;

    #[test]
    fn snapshots_are_served_locally_and_checked() {
        let d = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Backend> = Arc::new(LocalBackend::new(d.path().join("repo")));
        inner.create().unwrap();
        let data = b"a snapshot".to_vec();
        let name = blake3::hash(&data).to_hex().to_string();
        inner.put(FileKind::Snapshot, &name, &data).unwrap();
        let cached = CachedBackend::new(inner.clone(), &d.path().join("cache"));
        assert_eq!(cached.get(FileKind::Snapshot, &name).unwrap(), data);
        let gets = inner.counters().snapshot().get;
        assert_eq!(cached.get(FileKind::Snapshot, &name).unwrap(), data);
        assert_eq!(
            inner.counters().snapshot().get,
            gets,
            "second read is local"
        );
        // A damaged copy is not used.
        let copy = cached.path(FileKind::Snapshot, &name).unwrap();
        std::fs::write(&copy, b"garbage").unwrap();
        assert_eq!(cached.get(FileKind::Snapshot, &name).unwrap(), data);
        assert_eq!(inner.counters().snapshot().get, gets + 1);
        // A snapshot removed behind the cache's back loses its copy at the next listing.
        inner.remove(FileKind::Snapshot, &name).unwrap();
        assert!(cached.list(FileKind::Snapshot).unwrap().is_empty());
        assert!(!copy.exists());
    }
}
