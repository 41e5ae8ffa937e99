//! Repository-wide figures.

use crate::backend::FileKind;
use crate::cache::IndexCache;
use crate::error::Result;
use crate::repository::{io_err, Repository};

/// Sizes and counts of a repository.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RepoStats {
    /// Snapshots.
    pub snapshots: u64,
    /// Distinct VMs.
    pub vms: u64,
    /// Sum of the logical sizes of every disk of every snapshot.
    pub logical_bytes: u64,
    /// Sum of the allocated (read) bytes of every disk of every snapshot.
    pub allocated_bytes: u64,
    /// Bytes of all packs.
    pub stored_bytes: u64,
    /// Bytes of index files, snapshots, keys and config.
    pub metadata_bytes: u64,
    /// allocated_bytes / stored_bytes.
    pub dedup_ratio: f64,
    /// Distinct chunks indexed.
    pub chunks: u64,
    /// Packs.
    pub packs: u64,
    /// Index files.
    pub index_files: u64,
}

/// Computes [`RepoStats`] from the snapshot list, the backend listing and the cache.
pub fn stats(repo: &Repository, cache: &IndexCache) -> Result<RepoStats> {
    let (snaps, _) = repo.list_snapshots()?;
    let list = |k| repo.backend().list(k).map_err(|e| io_err(k, "", e));
    let packs = list(FileKind::Pack)?;
    let index = list(FileKind::Index)?;
    let meta: u64 = [FileKind::Snapshot, FileKind::Key]
        .into_iter()
        .map(|k| list(k).map(|v| v.iter().map(|(_, s)| s).sum::<u64>()))
        .sum::<Result<u64>>()?
        + index.iter().map(|(_, s)| s).sum::<u64>();
    let logical = snaps
        .iter()
        .flat_map(|(_, s)| &s.disks)
        .map(|d| d.size)
        .sum();
    let allocated: u64 = snaps
        .iter()
        .flat_map(|(_, s)| &s.disks)
        .map(|d| d.allocated_bytes)
        .sum();
    let stored: u64 = packs.iter().map(|(_, s)| s).sum();
    let vms: std::collections::HashSet<&str> = snaps.iter().map(|(_, s)| s.vm.as_str()).collect();
    Ok(RepoStats {
        snapshots: snaps.len() as u64,
        vms: vms.len() as u64,
        logical_bytes: logical,
        allocated_bytes: allocated,
        stored_bytes: stored,
        metadata_bytes: meta,
        dedup_ratio: if stored == 0 {
            0.0
        } else {
            allocated as f64 / stored as f64
        },
        chunks: cache.chunk_count() as u64,
        packs: packs.len() as u64,
        index_files: index.len() as u64,
    })
}
