//! Copying snapshots between repositories that share keys (FORMAT.md section 16).
//!
//! Packs travel verbatim, still encrypted: the destination must be a mirror made with
//! `init --mirror-of` (same master keys, so chunk ids, pack subkeys and sealed objects
//! mean the same there). Repositories with different keys are refused rather than
//! re-encrypted: their chunk ids differ, so every manifest would have to be rewritten,
//! which is a backup, not a copy.
//!
//! Order, as in a backup: packs, then index files listing them, then snapshot objects.
//! A snapshot appears in the destination only after every chunk it needs is there and
//! indexed. A rerun after an interruption copies only what is missing; packs that
//! arrived but were not yet indexed are indexed from their own headers instead of being
//! sent again.

use crate::backend::{FileKind, RequestCounts};
use crate::cache::IndexCache;
use crate::error::{RepoError, Result};
use crate::format::index::IndexPack;
use crate::format::snapshot::Snapshot;
use crate::index_writer::{IndexWriter, INDEX_FLUSH_ENTRIES};
use crate::pack_header::{index_record, read_index_record};
use crate::repository::{io_err, object_name, NamedSnapshot, Repository};
use crate::walk::for_each_chunk;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What to copy.
#[derive(Default, Clone)]
pub struct SyncOptions {
    /// Only snapshots of this VM.
    pub vm: Option<String>,
    /// Only these snapshots (id prefixes or `latest`); all when empty.
    pub snapshots: Vec<String>,
    /// Set from another thread to stop between packs.
    pub cancel: Option<Arc<AtomicBool>>,
    /// The locks on both repositories, checked before snapshots are copied.
    pub locks: Vec<crate::lock::LockHealth>,
}

/// What a sync will do, worked out before anything is copied.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SyncPlan {
    /// Snapshots to copy (full ids), oldest first.
    pub snapshots: Vec<String>,
    /// Selected snapshots the destination already has.
    pub snapshots_present: u64,
    /// Packs to copy.
    pub packs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Packs already in the destination (from an interrupted sync) that only need to be
    /// indexed there.
    pub packs_to_index: u64,
    /// Requests the copy is expected to cost (a floor: retries come on top).
    pub estimated_requests: RequestEstimate,
    #[serde(skip)]
    copy: Vec<([u8; 32], u64)>,
    #[serde(skip)]
    index_only: Vec<([u8; 32], u64)>,
}

/// Requests a plan expects to make.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct RequestEstimate {
    /// GETs from the source (packs and snapshots).
    pub source_get: u64,
    /// GETs from the destination (headers of packs that only need indexing).
    pub destination_get: u64,
    /// PUTs to the destination (packs, index files, snapshots).
    pub destination_put: u64,
}

/// Live counters of a running sync.
#[derive(Default, Debug)]
pub struct SyncProgress {
    /// Bytes of packs to copy.
    pub total: AtomicU64,
    /// Bytes of packs copied so far.
    pub done: AtomicU64,
    /// Packs copied so far.
    pub packs: AtomicU64,
}

/// What a sync did.
#[derive(Debug, Clone, Serialize)]
pub struct SyncSummary {
    /// Snapshot ids copied, oldest first.
    pub snapshots_copied: Vec<String>,
    /// Selected snapshots the destination already had.
    pub snapshots_present: u64,
    /// Packs copied.
    pub packs_copied: u64,
    /// Bytes of packs copied.
    pub bytes_copied: u64,
    /// Packs indexed from their headers (left by an interrupted sync).
    pub packs_indexed: u64,
    /// Index files written in the destination.
    pub index_files: u64,
    /// Wall time.
    pub duration_secs: f64,
    /// Requests made to the source.
    pub source_requests: RequestCounts,
    /// Requests made to the destination.
    pub destination_requests: RequestCounts,
}

/// Fails unless `dst` can receive `src`'s packs verbatim.
pub fn check_compatible(src: &Repository, dst: &Repository) -> Result<()> {
    if src.keys().fingerprint() != dst.keys().fingerprint() {
        return Err(RepoError::Invalid(format!(
            "{} does not share the keys of {}: packs cannot be copied verbatim, and vmvault \
             does not re-encrypt; create the destination with `vmvault -r DEST init --mirror-of SRC`",
            dst.backend().location(),
            src.backend().location()
        )));
    }
    let (a, b) = (src.config(), dst.config());
    if a.chunker != b.chunker || a.manifest_page_size != b.manifest_page_size {
        return Err(RepoError::Invalid(format!(
            "{} uses other chunker or manifest parameters than {}",
            dst.backend().location(),
            src.backend().location()
        )));
    }
    Ok(())
}

/// The source snapshots `opts` selects, oldest first.
fn select(src: &Repository, opts: &SyncOptions) -> Result<Vec<NamedSnapshot>> {
    if opts.snapshots.is_empty() {
        let (snaps, bad) = src.list_snapshots()?;
        if let Some(e) = bad.into_iter().next() {
            return Err(e);
        }
        return Ok(snaps
            .into_iter()
            .filter(|(_, s)| opts.vm.as_deref().is_none_or(|v| s.vm == v))
            .collect());
    }
    let mut picked: BTreeMap<String, Snapshot> = BTreeMap::new();
    for spec in &opts.snapshots {
        let (name, snap) = src.resolve_snapshot(spec, opts.vm.as_deref())?;
        picked.insert(name, snap);
    }
    let mut out: Vec<NamedSnapshot> = picked.into_iter().collect();
    out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}

/// Works out what copying `opts`' snapshots from `src` to `dst` needs, reading only
/// manifests (from `src`) and listings; copies nothing.
pub fn plan(
    src: &Repository,
    src_cache: &IndexCache,
    dst: &Repository,
    dst_cache: &IndexCache,
    opts: &SyncOptions,
) -> Result<SyncPlan> {
    check_compatible(src, dst)?;
    let selected = select(src, opts)?;
    let present: HashSet<String> = dst
        .backend()
        .list(FileKind::Snapshot)
        .map_err(|e| io_err(FileKind::Snapshot, "", e))?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut plan = SyncPlan::default();
    let mut needed: HashSet<[u8; 32]> = HashSet::new();
    let mut seen_pages = HashSet::new();
    for (name, snap) in &selected {
        if present.contains(name) {
            plan.snapshots_present += 1;
            continue;
        }
        plan.snapshots.push(name.clone());
        for_each_chunk(src, src_cache, snap, &mut seen_pages, &mut |id| {
            let loc = src_cache.lookup(&id)?.ok_or_else(|| {
                RepoError::corrupt(
                    FileKind::Snapshot,
                    name,
                    format!("needs chunk {id}, which the source's index does not list (run check on the source)"),
                )
            })?;
            if needed.contains(&loc.pack) || dst_cache.contains(&id)? {
                return Ok(());
            }
            needed.insert(loc.pack);
            Ok(())
        })?;
    }
    let in_dst: HashMap<String, u64> = dst
        .backend()
        .list(FileKind::Pack)
        .map_err(|e| io_err(FileKind::Pack, "", e))?
        .into_iter()
        .collect();
    let mut needed: Vec<[u8; 32]> = needed.into_iter().collect();
    needed.sort_unstable();
    for pack in needed {
        let hex_name = hex::encode(pack);
        if let Some(&size) = in_dst.get(&hex_name) {
            plan.index_only.push((pack, size));
            continue;
        }
        let (_, size) = src_cache
            .pack_info(&pack)?
            .ok_or_else(|| RepoError::NotFound {
                kind: FileKind::Index,
                name: format!("entry for pack {hex_name}"),
            })?;
        plan.copy.push((pack, size));
        plan.bytes += size;
    }
    plan.packs = plan.copy.len() as u64;
    plan.packs_to_index = plan.index_only.len() as u64;
    let snaps = plan.snapshots.len() as u64;
    // Index files: one per INDEX_FLUSH_ENTRIES entries; assume ~128 blobs per pack.
    let index_files = (plan.packs + plan.packs_to_index)
        .saturating_mul(128)
        .div_ceil(INDEX_FLUSH_ENTRIES as u64)
        .max(u64::from(plan.packs + plan.packs_to_index > 0));
    plan.estimated_requests = RequestEstimate {
        source_get: plan.packs + snaps,
        destination_get: plan.packs_to_index * 2,
        destination_put: plan.packs + index_files + snaps,
    };
    Ok(plan)
}

/// Carries out `plan`: packs (in parallel, each verified against its name and header
/// before it is sent), index files, then snapshot objects.
pub fn run(
    src: &Repository,
    dst: &Repository,
    dst_cache: &IndexCache,
    plan: &SyncPlan,
    opts: &SyncOptions,
    progress: &SyncProgress,
) -> Result<SyncSummary> {
    let started = Instant::now();
    let src_before = src.backend().counters().snapshot();
    let dst_before = dst.backend().counters().snapshot();
    progress.total.store(plan.bytes, Ordering::Relaxed);
    let cancelled = || {
        opts.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    };
    let index = Mutex::new(IndexWriter::new(dst, Some(dst_cache)));
    let add_record =
        |r: IndexPack| -> Result<()> { index.lock().unwrap_or_else(|e| e.into_inner()).add(r) };
    let indexed_only = (|| -> Result<()> {
        for &(pack, size) in &plan.index_only {
            if cancelled() {
                return Err(RepoError::Interrupted);
            }
            let name = hex::encode(pack);
            add_record(read_index_record(
                dst.keys(),
                dst.backend().as_ref(),
                &name,
                size,
            )?)?;
        }
        Ok(())
    })();
    if let Err(e) = indexed_only {
        // What was indexed so far is written, as after any failure.
        let _ = index.lock().unwrap_or_else(|p| p.into_inner()).flush();
        return Err(e);
    }
    // Each worker holds one pack in memory at a time.
    let workers = dst
        .backend()
        .upload_concurrency()
        .max(src.backend().upload_concurrency())
        .max(2);
    let next = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<RepoError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                if failed.load(Ordering::SeqCst) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                let Some(&(pack, _)) = plan.copy.get(i) else {
                    return;
                };
                let r = if cancelled() {
                    Err(RepoError::Interrupted)
                } else {
                    copy_pack(src, dst, &pack, progress).and_then(add_record)
                };
                if let Err(e) = r {
                    failed.store(true, Ordering::SeqCst);
                    first_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                    return;
                }
            });
        }
    });
    let mut index = index.into_inner().unwrap_or_else(|e| e.into_inner());
    // What arrived is indexed even when the copy failed, so the rerun need not read it
    // back.
    let flushed = index.flush();
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    flushed?;
    for h in &opts.locks {
        h.check()?;
    }
    let mut copied = Vec::new();
    for name in &plan.snapshots {
        if cancelled() {
            return Err(RepoError::Interrupted);
        }
        let bytes = src
            .backend()
            .get(FileKind::Snapshot, name)
            .map_err(|e| io_err(FileKind::Snapshot, name, e))?;
        if object_name(&bytes) != *name {
            return Err(RepoError::corrupt(
                FileKind::Snapshot,
                name,
                "content does not match its name",
            ));
        }
        dst.backend()
            .put(FileKind::Snapshot, name, &bytes)
            .map_err(|e| io_err(FileKind::Snapshot, name, e))?;
        copied.push(name.clone());
    }
    Ok(SyncSummary {
        snapshots_copied: copied,
        snapshots_present: plan.snapshots_present,
        packs_copied: progress.packs.load(Ordering::Relaxed),
        bytes_copied: progress.done.load(Ordering::Relaxed),
        packs_indexed: plan.packs_to_index,
        index_files: index.written.len() as u64,
        duration_secs: started.elapsed().as_secs_f64(),
        source_requests: src.backend().counters().snapshot().since(&src_before),
        destination_requests: dst.backend().counters().snapshot().since(&dst_before),
    })
}

/// Copies one pack verbatim after checking it, and returns its index record.
fn copy_pack(
    src: &Repository,
    dst: &Repository,
    pack: &[u8; 32],
    progress: &SyncProgress,
) -> Result<IndexPack> {
    let name = hex::encode(pack);
    let bytes = src
        .backend()
        .get(FileKind::Pack, &name)
        .map_err(|e| io_err(FileKind::Pack, &name, e))?;
    let record = index_record(src.keys(), &name, &bytes)
        .map_err(|e| RepoError::Invalid(format!("in the source repository: {e}")))?;
    let len = bytes.len() as u64;
    dst.backend()
        .put_owned(FileKind::Pack, &name, bytes)
        .map_err(|e| io_err(FileKind::Pack, &name, e))?;
    progress.done.fetch_add(len, Ordering::Relaxed);
    progress.packs.fetch_add(1, Ordering::Relaxed);
    Ok(record)
}
