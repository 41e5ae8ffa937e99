//! Storage backends: where the repository's files live.
//!
//! One small synchronous trait addressed by (kind, name). Contracts every implementation
//! keeps: `put` is atomic and durable when it returns, and never exposes a partial
//! object; objects are immutable (putting an existing content-addressed name again is a
//! no-op, putting an existing `config` fails); `get` of a missing object fails with
//! `ErrorKind::NotFound`, which callers report differently from damage.

mod cached;
mod counters;
mod local;
#[cfg(feature = "object-store")]
mod object;

pub use cached::CachedBackend;
pub use counters::{RequestCounters, RequestCounts};
pub use local::LocalBackend;
#[cfg(feature = "object-store")]
pub use object::{redact_url, ObjectBackend, ObjectBackendError};

use std::io;

/// The kinds of files in a repository (FORMAT.md section 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// `config`.
    Config,
    /// `keys/<name>`.
    Key,
    /// `data/<xx>/<name>`.
    Pack,
    /// `index/<name>`.
    Index,
    /// `snapshots/<name>`.
    Snapshot,
    /// `locks/<name>`.
    Lock,
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileKind::Config => "config",
            FileKind::Key => "key file",
            FileKind::Pack => "pack",
            FileKind::Index => "index file",
            FileKind::Snapshot => "snapshot",
            FileKind::Lock => "lock",
        })
    }
}

/// A place to keep repository files.
pub trait Backend: Send + Sync {
    /// Where the repository is, for messages (never includes credentials).
    fn location(&self) -> String;

    /// The requests made so far through this backend.
    fn counters(&self) -> &RequestCounters;

    /// How many objects callers should write at once (each held in memory meanwhile).
    /// A local disk gains nothing from more than one; a remote store hides its latency.
    fn upload_concurrency(&self) -> usize {
        1
    }

    /// How many reads callers should have in flight at once, or 0 for one per core.
    fn read_concurrency(&self) -> usize {
        0
    }

    /// True when every request crosses a network, so a local copy of immutable objects
    /// saves time and money.
    fn is_remote(&self) -> bool {
        false
    }

    /// Prepares an empty location for a new repository; fails if it already holds files.
    fn create(&self) -> io::Result<()>;

    /// Stores an object atomically and durably (see the module contract).
    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> io::Result<()>;

    /// Like [`Backend::put`] for a buffer the caller gives up; returns a buffer (its
    /// contents unspecified, possibly empty) that the caller may reuse. A remote backend
    /// sends the buffer itself instead of a copy, which halves the memory of uploads in
    /// flight.
    fn put_owned(&self, kind: FileKind, name: &str, data: Vec<u8>) -> io::Result<Vec<u8>> {
        self.put(kind, name, &data)?;
        Ok(data)
    }

    /// Reads a whole object.
    fn get(&self, kind: FileKind, name: &str) -> io::Result<Vec<u8>>;

    /// Fills `buf` with the bytes at `offset`; fails if the object is shorter.
    fn read_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> io::Result<()>;

    /// Reads `len` bytes at `offset`; fails if the object is shorter.
    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut buf = vec![0u8; len];
        self.read_range_into(kind, name, offset, &mut buf)?;
        Ok(buf)
    }

    /// Lists the names and sizes of all objects of a kind (not `Config`).
    fn list(&self, kind: FileKind) -> io::Result<Vec<(String, u64)>>;

    /// Deletes an object; deleting a missing object is not an error.
    fn remove(&self, kind: FileKind, name: &str) -> io::Result<()>;
}

/// True for names of the form written by vmvault (64 lowercase hex digits).
pub fn is_object_name(name: &str) -> bool {
    name.len() == 64
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
