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

/// One VM's share of the repository.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VmStats {
    /// The VM.
    pub vm: String,
    /// Its snapshots.
    pub snapshots: u64,
    /// Sum of the logical sizes of its snapshots' disks.
    pub logical_bytes: u64,
    /// Stored bytes of chunks only this VM's snapshots use (what forgetting all of them
    /// and pruning would free).
    pub unique_stored_bytes: u64,
    /// Stored bytes of chunks its snapshots share with other VMs' snapshots.
    pub shared_stored_bytes: u64,
}

/// Per-VM figures (all VMs, or only `only`), by walking every snapshot's manifests.
/// Memory: for each indexed chunk 8 bytes plus one bit per VM.
pub fn vm_stats(repo: &Repository, cache: &IndexCache, only: Option<&str>) -> Result<Vec<VmStats>> {
    use std::collections::{BTreeMap, HashMap, HashSet};

    let (snaps, _) = repo.list_snapshots()?;
    let vms: Vec<String> = snaps
        .iter()
        .map(|(_, s)| s.vm.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let vm_index: HashMap<&str, usize> = vms
        .iter()
        .enumerate()
        .map(|(i, v)| (v.as_str(), i))
        .collect();
    // Blob ordinals: each pack's blobs, by offset, after the previous packs'.
    let mut packs: HashMap<[u8; 32], (usize, Vec<u32>)> = HashMap::new();
    let mut lens: Vec<u32> = Vec::new();
    for (name, _) in repo
        .backend()
        .list(FileKind::Index)
        .map_err(|e| io_err(FileKind::Index, "", e))?
    {
        let plain = repo.get_sealed(FileKind::Index, crate::format::sealed::KIND_INDEX, &name)?;
        let index = crate::format::index::decode_index(&plain)
            .map_err(|e| crate::error::RepoError::corrupt(FileKind::Index, &name, e.0))?;
        for p in index {
            if packs.contains_key(&p.name) {
                continue;
            }
            let mut entries: Vec<(u32, u32)> = p
                .entries
                .iter()
                .filter_map(|e| Some((u32::try_from(e.offset).ok()?, e.stored_len)))
                .collect();
            entries.sort_unstable();
            entries.dedup_by_key(|e| e.0);
            let base = lens.len();
            lens.extend(entries.iter().map(|e| e.1));
            packs.insert(p.name, (base, entries.iter().map(|e| e.0).collect()));
        }
    }
    let words = lens.len().div_ceil(64);
    let mut bits: Vec<Vec<u64>> = vec![vec![0u64; words]; vms.len()];
    let mut logical: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    // Manifest pages already walked for a VM (unchanged pages repeat across snapshots).
    let mut visited: HashMap<usize, HashSet<vmvault_chunker::ChunkId>> = HashMap::new();
    for (_, snap) in &snaps {
        let vi = vm_index[snap.vm.as_str()];
        let e = logical.entry(snap.vm.as_str()).or_default();
        e.0 += 1;
        e.1 += snap.disks.iter().map(|d| d.size).sum::<u64>();
        let mut mark = |id: vmvault_chunker::ChunkId| -> Result<()> {
            if let Some(loc) = cache.lookup(&id)? {
                if let Some((base, offs)) = packs.get(&loc.pack) {
                    if let Ok(o) = u32::try_from(loc.entry.offset) {
                        if let Ok(k) = offs.binary_search(&o) {
                            let n = base + k;
                            bits[vi][n / 64] |= 1 << (n % 64);
                        }
                    }
                }
            }
            Ok(())
        };
        let seen = visited.entry(vi).or_default();
        crate::walk::for_each_chunk(repo, cache, snap, seen, &mut mark)?;
    }
    let mut out = Vec::new();
    for (vi, vm) in vms.iter().enumerate() {
        if only.is_some_and(|o| o != vm) {
            continue;
        }
        let (mut unique, mut shared) = (0u64, 0u64);
        for w in 0..words {
            let mine = bits[vi][w];
            if mine == 0 {
                continue;
            }
            let others = bits
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != vi)
                .fold(0u64, |acc, (_, b)| acc | b[w]);
            for bit in 0..64 {
                if mine & (1 << bit) == 0 {
                    continue;
                }
                let len = u64::from(lens[w * 64 + bit]);
                if others & (1 << bit) == 0 {
                    unique += len;
                } else {
                    shared += len;
                }
            }
        }
        let (n, l) = logical.get(vm.as_str()).copied().unwrap_or_default();
        out.push(VmStats {
            vm: vm.clone(),
            snapshots: n,
            logical_bytes: l,
            unique_stored_bytes: unique,
            shared_stored_bytes: shared,
        });
    }
    Ok(out)
}
