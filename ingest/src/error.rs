//! Errors from reading disk sources.

use std::path::PathBuf;

/// Why a disk source could not be opened or read. Each variant names the source and,
/// where it applies, the offset, so that the message alone locates the problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The source could not be opened or examined.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The path given by the user.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A read failed.
    #[error("read error in {what} at offset {offset}: {source}")]
    Read {
        /// The source (path or "stdin").
        what: String,
        /// Byte offset of the failed read.
        offset: u64,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The source ended before its announced size: it shrank or was truncated.
    #[error("{what} ended early: expected {expected} bytes, got only {got}")]
    Truncated {
        /// The source (path or "stdin").
        what: String,
        /// Bytes the source announced.
        expected: u64,
        /// Bytes actually available.
        got: u64,
    },
    /// The source is of a kind this reader does not handle.
    #[error("{path}: {reason}")]
    Unsupported {
        /// The path given by the user.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}
