//! Every persisted structure, as pure encoders and decoders on byte slices.
//!
//! Nothing here does I/O or holds keys. Decoders take untrusted bytes (already decrypted,
//! but possibly written by a buggy or hostile writer) and must return an error, never
//! panic or allocate more than a small multiple of their input.

pub mod catalog;
pub mod config;
pub mod fuzzing;
pub mod index;
pub mod keyfile;
pub mod lock;
pub mod manifest;
pub mod pack;
pub mod sealed;
pub mod snapshot;

mod bytes;

/// Why a structure could not be decoded; the text names the failed check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

impl DecodeError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        DecodeError(msg.into())
    }
}
