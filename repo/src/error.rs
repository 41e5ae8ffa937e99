//! Errors of the repository layer.
//!
//! Rules: every variant that concerns a stored object names it (kind and name), so the
//! message alone tells an admin which file is missing or damaged; a missing object and a
//! damaged one are different variants; nothing here panics on bad input.

use crate::backend::FileKind;

/// Everything that can go wrong in the repository layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// The backend failed to store or fetch something.
    #[error("storage error on {kind} {name}: {source}")]
    Io {
        /// What kind of object was being accessed.
        kind: FileKind,
        /// Its name ("" for listings).
        name: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An object that should exist does not.
    #[error("{kind} {name} is missing from the repository")]
    NotFound {
        /// What kind of object.
        kind: FileKind,
        /// Its name.
        name: String,
    },
    /// An object exists but its bytes are not what vmvault wrote.
    #[error("{kind} {name} is damaged: {reason}")]
    Corrupt {
        /// What kind of object.
        kind: FileKind,
        /// Its name.
        name: String,
        /// What check failed.
        reason: String,
    },
    /// No key file opens with the given password.
    #[error("wrong password, or every key file is damaged (tried {tried} key file(s))")]
    WrongPassword {
        /// How many key files were tried.
        tried: usize,
    },
    /// The path holds no repository.
    #[error("no vmvault repository at {0} (run `vmvault init` first)")]
    NoRepository(String),
    /// `init` was pointed at an existing repository or a non-empty directory.
    #[error("refusing to initialise {0}: it already holds a repository or other files")]
    AlreadyExists(String),
    /// The repository is locked by another process.
    #[error("repository is locked: {0}")]
    Locked(String),
    /// A snapshot reference matched nothing, or more than one snapshot.
    #[error("{0}")]
    SnapshotSelection(String),
    /// Reading a disk source failed.
    #[error(transparent)]
    Ingest(#[from] vmvault_ingest::IngestError),
    /// Writing the restore target failed.
    #[error("cannot write {path}: {source}")]
    Target {
        /// The target path.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The operation was cancelled (Ctrl-C, SIGTERM).
    #[error("interrupted")]
    Interrupted,
    /// The caller asked for something that cannot be done.
    #[error("{0}")]
    Invalid(String),
    /// The local cache failed (it is rebuilt on the next run).
    #[error("local cache error in {path}: {reason}")]
    Cache {
        /// The cache directory.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// Result alias for the repository layer.
pub type Result<T, E = RepoError> = std::result::Result<T, E>;

impl RepoError {
    /// Builds a [`RepoError::Corrupt`].
    pub fn corrupt(kind: FileKind, name: &str, reason: impl Into<String>) -> Self {
        RepoError::Corrupt {
            kind,
            name: name.to_string(),
            reason: reason.into(),
        }
    }
}
