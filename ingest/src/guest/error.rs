//! Errors from browsing guest partitions and file systems.

/// Why a guest partition table, volume or file system path could not be read. Each
/// variant names what it is about so that the message alone locates the problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuestError {
    /// Reading the underlying disk failed (a damaged repository, an I/O error).
    #[error("read error in {what} at offset {offset}: {source}")]
    Io {
        /// The disk or volume read.
        what: String,
        /// Byte offset of the failed read in that disk or volume.
        offset: u64,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A structure is damaged, inconsistent or out of range.
    #[error("{what}: {reason}")]
    Corrupt {
        /// The table, volume or path at fault.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A well-formed structure uses a feature this reader does not handle.
    #[error("{what}: {reason}")]
    Unsupported {
        /// The table, volume or path concerned.
        what: String,
        /// The feature.
        reason: String,
    },
    /// No such file, directory, partition or volume.
    #[error("{0}: no such file or directory")]
    NotFound(String),
    /// A path component that must be a directory is not one.
    #[error("{0}: not a directory")]
    NotADirectory(String),
    /// The path names a directory where a file was expected.
    #[error("{0}: is a directory")]
    IsADirectory(String),
    /// The operation needs another kind of entry (reading a device node, `read_link` on
    /// a file).
    #[error("{path}: {reason}")]
    WrongKind {
        /// The path.
        path: String,
        /// What was expected.
        reason: String,
    },
    /// A path that cannot name anything inside a file system (`..`, NUL).
    #[error("{0}: invalid path")]
    BadPath(String),
}

impl GuestError {
    /// A [`GuestError::Corrupt`] about `what`.
    pub fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> Self {
        GuestError::Corrupt {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// True when the error means "does not exist" rather than "could not be read".
    pub fn is_not_found(&self) -> bool {
        matches!(self, GuestError::NotFound(_))
    }
}
