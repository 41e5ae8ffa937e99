//! The vmvault repository: keys, encryption, packs, index, manifests, snapshots, and the
//! backup, restore and check engines. FORMAT.md describes every byte this crate writes.

mod aligned;
pub mod backend;
pub mod backup;
pub mod blob;
pub mod cache;
pub mod catalog;
pub mod check;
pub mod crypto;
pub mod diff;
pub mod disk_reader;
pub mod error;
pub mod forget;
pub mod format;
pub mod index_writer;
pub mod lock;
pub mod pack_header;
pub mod pack_writer;
mod pending;
pub mod prune;
pub mod repair;
pub mod repository;
pub mod restore;
mod restore_target;
pub mod stats;
pub mod sync;
pub mod walk;

pub use error::{RepoError, Result};
pub use repository::Repository;
