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
    /// An image's metadata is inconsistent, out of range or otherwise damaged.
    #[error("{what}: damaged {format} image at offset {offset}: {reason}")]
    Corrupt {
        /// The image file (path or "stdin").
        what: String,
        /// The format being read ("qcow2", "VMDK", ...).
        format: &'static str,
        /// Byte offset in the file of the structure at fault.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A well-formed image uses a feature this reader does not implement (or refuses,
    /// such as encryption): it is never read as something else.
    #[error("{what}: {format} image: {reason}")]
    Unimplemented {
        /// The image file (path or "stdin").
        what: String,
        /// The format being read.
        format: &'static str,
        /// The feature and why it cannot be read.
        reason: String,
    },
    /// Writing an output image failed.
    #[error("cannot write {what}: {source}")]
    Write {
        /// The output (path or "stdout").
        what: String,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// Why an image structure could not be parsed, before the file and offset are known: a
/// message, and whether the image uses a feature rather than being damaged. Parsers of
/// byte slices return it; [`ParseError::at`] places it in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The bytes are not a valid structure.
    Corrupt(String),
    /// A well-formed structure declares something vmvault does not read.
    Unimplemented(String),
}

impl ParseError {
    /// The [`IngestError`] for this failure in `file` (a `format` image) at `offset`.
    pub fn at(self, file: &dyn crate::ReadAt, format: &'static str, offset: u64) -> IngestError {
        match self {
            ParseError::Corrupt(reason) => IngestError::Corrupt {
                what: file.name().to_string(),
                format,
                offset,
                reason,
            },
            ParseError::Unimplemented(reason) => IngestError::Unimplemented {
                what: file.name().to_string(),
                format,
                reason,
            },
        }
    }
}
