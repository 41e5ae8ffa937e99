//! Prune: mark every chunk the snapshots use, then delete or repack packs that hold
//! unused ones (FORMAT.md section 17).
//!
//! Memory: per indexed chunk two `u32`s (its blob's offset in its pack and its offset in
//! the blob) and one bit, grouped by pack; plus one id per distinct manifest page visited. A manifest page already seen
//! (unchanged between snapshots, so the same tree blob) is not read again, which keeps
//! marking proportional to what changed. Only index files, manifest tree blobs and, for
//! packs that are repacked, their headers and used blobs are read; packs that are kept
//! or deleted are never downloaded.
//!
//! Order of writes: repacked packs, then index files listing every kept and new pack,
//! then deletion of the old index files, then deletion of the packs no longer listed. A
//! crash at any point leaves every snapshot restorable; the next prune finishes the job
//! (packs listed by no index file are deleted). The caller holds an exclusive lock.

use crate::backend::FileKind;
use crate::blob::{chunk_in_blob, open_blob_plain};
use crate::cache::IndexCache;
use crate::error::{RepoError, Result};
use crate::format::index::{decode_index, IndexPack};
use crate::format::pack::{PackEntry, COMPRESSION_NONE, COMPRESSION_ZSTD};
use crate::format::sealed::KIND_INDEX;
use crate::index_writer::IndexWriter;
use crate::pack_header::read_index_record;
use crate::pack_writer::PackWriter;
use crate::repository::{io_err, Repository};
use crate::walk::for_each_chunk;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use vmvault_chunker::ChunkId;

/// Gap between used blobs still read in one request when repacking.
const COALESCE_GAP: u64 = 256 << 10;

/// How prune decides.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// A pack whose unused bytes exceed this share of its size (percent) is repacked.
    pub max_unused_percent: f64,
    /// Only report what would be done.
    pub dry_run: bool,
    /// Set from another thread to stop before the first deletion.
    pub cancel: Option<Arc<AtomicBool>>,
    /// The exclusive lock, checked before the first deletion.
    pub lock: Option<crate::lock::LockHealth>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            max_unused_percent: 5.0,
            dry_run: false,
            cancel: None,
            lock: None,
        }
    }
}

/// Live counters for a progress display.
#[derive(Default, Debug)]
pub struct PruneProgress {
    /// Snapshots marked so far.
    pub snapshots_done: AtomicU64,
    /// Snapshots to mark.
    pub snapshots_total: AtomicU64,
    /// Packs repacked so far.
    pub repacked: AtomicU64,
}

/// What prune found and did (or would do, in a dry run).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// True for a dry run: nothing was changed.
    pub dry_run: bool,
    /// Snapshots whose chunks were marked.
    pub snapshots: u64,
    /// Packs in the repository.
    pub packs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes of blobs in use.
    pub used_bytes: u64,
    /// Packs kept as they are.
    pub packs_kept: u64,
    /// Packs with nothing in use, deleted.
    pub packs_deleted: u64,
    /// Packs repacked (used blobs copied into new packs, then deleted).
    pub packs_repacked: u64,
    /// Total size of the packs repacked (the most prune reads of them).
    pub repacked_pack_bytes: u64,
    /// Packs listed by no index file (left by interrupted runs), deleted.
    pub packs_unindexed: u64,
    /// New packs written by repacking.
    pub packs_written: u64,
    /// Bytes of the new packs.
    pub bytes_written: u64,
    /// Bytes of packs deleted (unused, repacked, unindexed).
    pub bytes_deleted: u64,
    /// Index files written.
    pub index_files_written: u64,
    /// Index files deleted.
    pub index_files_deleted: u64,
    /// Index entries dropped because their pack no longer exists (and no snapshot
    /// needs them).
    pub stale_index_entries: u64,
    /// Unused bytes left in kept packs (below the repack threshold).
    pub unused_bytes_left: u64,
    /// Wall time.
    pub duration_secs: f64,
}

/// What prune knows about one indexed pack.
struct PackMarks {
    /// Each chunk's place: (blob offset in the pack, chunk offset in the blob), sorted.
    places: Vec<(u32, u32)>,
    /// One bit per chunk of `places`: in use.
    used: Vec<u64>,
    /// Chunks marked in use.
    used_chunks: u64,
    /// Sum of the blobs' stored lengths.
    blob_bytes: u64,
    /// Stored bytes of used chunks: a blob's stored length shared out by chunk length.
    used_bytes: u64,
    /// Pack size (from the index).
    size: u64,
}

impl PackMarks {
    fn new(p: &IndexPack) -> Option<Self> {
        let mut places: Vec<(u32, u32)> = p
            .entries
            .iter()
            .map(|e| Some((u32::try_from(e.offset).ok()?, e.chunk_offset)))
            .collect::<Option<_>>()?;
        places.sort_unstable();
        places.dedup();
        let used = vec![0u64; places.len().div_ceil(64)];
        let mut seen = HashSet::new();
        let blob_bytes = p
            .entries
            .iter()
            .filter(|e| seen.insert(e.offset))
            .map(|e| u64::from(e.stored_len))
            .sum();
        Some(PackMarks {
            places,
            used,
            used_chunks: 0,
            blob_bytes,
            used_bytes: 0,
            size: p.size,
        })
    }

    fn find(&self, e: &PackEntry) -> Option<usize> {
        let offset = u32::try_from(e.offset).ok()?;
        self.places.binary_search(&(offset, e.chunk_offset)).ok()
    }

    fn is_used(&self, e: &PackEntry) -> bool {
        self.find(e)
            .is_some_and(|i| self.used[i / 64] & (1 << (i % 64)) != 0)
    }

    /// Marks the chunk `entry` names; false if the pack has no chunk there.
    fn mark(&mut self, entry: &PackEntry) -> bool {
        let Some(i) = self.find(entry) else {
            return false;
        };
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        if self.used[word] & bit == 0 {
            self.used[word] |= bit;
            self.used_chunks += 1;
            self.used_bytes += if entry.is_single() {
                u64::from(entry.stored_len)
            } else {
                u64::from(entry.stored_len) * u64::from(entry.raw_len)
                    / u64::from(entry.blob_len.max(1))
            };
        }
        true
    }
}

/// Used chunks that follow each other in a partly used blob's plaintext: repacked as one
/// blob.
struct UsedRun {
    /// Their bytes in the old blob's plaintext.
    plain: std::ops::Range<usize>,
    /// Their ids and lengths, in order.
    chunks: Vec<(ChunkId, u32)>,
}

/// What happens to a pack.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fate {
    Keep,
    Delete,
    Repack,
}

/// Runs prune. The caller holds an exclusive lock and `cache` is up to date.
pub fn prune(
    repo: &Repository,
    cache: &IndexCache,
    opts: &PruneOptions,
    progress: &PruneProgress,
) -> Result<PruneReport> {
    let started = Instant::now();
    let mut report = PruneReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let stored: HashMap<[u8; 32], u64> = repo
        .backend()
        .list(FileKind::Pack)
        .map_err(|e| io_err(FileKind::Pack, "", e))?
        .into_iter()
        .filter_map(|(n, size)| {
            let mut id = [0u8; 32];
            hex::decode_to_slice(&n, &mut id).ok()?;
            Some((id, size))
        })
        .collect();
    report.packs = stored.len() as u64;
    report.bytes = stored.values().sum();
    let index_files = repo
        .backend()
        .list(FileKind::Index)
        .map_err(|e| io_err(FileKind::Index, "", e))?;

    // Every indexed pack that exists, with its blob offsets.
    let mut marks: HashMap<[u8; 32], PackMarks> = HashMap::new();
    let mut missing_packs: HashSet<[u8; 32]> = HashSet::new();
    for (name, _) in &index_files {
        for p in read_index(repo, name)? {
            if !stored.contains_key(&p.name) {
                missing_packs.insert(p.name);
                continue;
            }
            if marks.contains_key(&p.name) {
                continue;
            }
            let m = PackMarks::new(&p).ok_or_else(|| {
                RepoError::corrupt(FileKind::Index, name, "a blob offset beyond 4 GiB")
            })?;
            marks.insert(p.name, m);
        }
    }

    // Mark.
    let (snaps, bad) = repo.list_snapshots()?;
    if let Some(e) = bad.into_iter().next() {
        return Err(RepoError::Invalid(format!(
            "prune needs every snapshot readable, and one is not ({e}); run `vmvault repair snapshots` or remove it first"
        )));
    }
    report.snapshots = snaps.len() as u64;
    progress
        .snapshots_total
        .store(snaps.len() as u64, Ordering::Relaxed);
    let mut visited_pages: HashSet<ChunkId> = HashSet::new();
    for (snap_name, snap) in &snaps {
        let mut mark = |id: &ChunkId| -> Result<()> {
            let lost = |why: String| {
                RepoError::Invalid(format!(
                    "snapshot {} needs chunk {id}, which {why}; prune would lose data, so it stops (run `vmvault check`, then `vmvault repair index` or `vmvault repair snapshots`)",
                    &snap_name[..12.min(snap_name.len())]
                ))
            };
            let loc = cache
                .lookup(id)?
                .ok_or_else(|| lost("no index file lists".into()))?;
            let marked = marks.get_mut(&loc.pack).is_some_and(|m| m.mark(&loc.entry));
            if marked {
                Ok(())
            } else {
                Err(lost(format!(
                    "is in pack {}, which is missing",
                    hex::encode(loc.pack)
                )))
            }
        };
        for_each_chunk(repo, cache, snap, &mut visited_pages, &mut |id| mark(&id))?;
        progress.snapshots_done.fetch_add(1, Ordering::Relaxed);
    }
    drop(visited_pages);

    // Decide.
    let mut fates: HashMap<[u8; 32], Fate> = HashMap::new();
    for (pack, m) in &marks {
        report.used_bytes += m.used_bytes;
        let unused = m.blob_bytes.saturating_sub(m.used_bytes);
        let fate = if m.used_bytes == 0 {
            Fate::Delete
        } else if unused as f64 * 100.0 > opts.max_unused_percent * m.size as f64 {
            Fate::Repack
        } else {
            report.unused_bytes_left += unused;
            Fate::Keep
        };
        fates.insert(*pack, fate);
    }
    let unindexed: Vec<[u8; 32]> = stored
        .keys()
        .filter(|p| !marks.contains_key(*p))
        .copied()
        .collect();
    for (pack, fate) in &fates {
        match fate {
            Fate::Keep => report.packs_kept += 1,
            Fate::Delete => report.packs_deleted += 1,
            Fate::Repack => {
                report.packs_repacked += 1;
                report.repacked_pack_bytes += stored.get(pack).copied().unwrap_or(0);
            }
        }
    }
    report.packs_unindexed = unindexed.len() as u64;
    report.bytes_deleted = fates
        .iter()
        .filter(|(_, f)| **f != Fate::Keep)
        .map(|(p, _)| stored.get(p).copied().unwrap_or(0))
        .sum::<u64>()
        + unindexed
            .iter()
            .map(|p| stored.get(p).copied().unwrap_or(0))
            .sum::<u64>();
    report.stale_index_entries = missing_packs.len() as u64;
    let nothing_to_do = report.packs_deleted == 0
        && report.packs_repacked == 0
        && unindexed.is_empty()
        && missing_packs.is_empty()
        && index_files.len() <= 1;
    if opts.dry_run || nothing_to_do {
        report.duration_secs = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    let cancelled = || {
        opts.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    };

    // Repack: used blobs of the chosen packs into new packs.
    let mut new_records: Vec<IndexPack> = Vec::new();
    let target = repo.config().pack_size_target as usize;
    let mut writer: Option<PackWriter> = None;
    let flush_pack = |w: PackWriter, report: &mut PruneReport| -> Result<IndexPack> {
        let p = w.finish();
        let name = hex::encode(p.name);
        repo.backend()
            .put(FileKind::Pack, &name, &p.bytes)
            .map_err(|e| io_err(FileKind::Pack, &name, e))?;
        report.packs_written += 1;
        report.bytes_written += p.bytes.len() as u64;
        Ok(p.index)
    };
    let mut decompressor = crate::blob::new_decompressor()?;
    let mut scratch = Vec::new();
    let mut compressor = zstd::bulk::Compressor::new(repo.config().compression.level)
        .map_err(|e| RepoError::Invalid(format!("zstd: {e}")))?;
    let mut compressed = Vec::new();
    let mut to_repack: Vec<[u8; 32]> = fates
        .iter()
        .filter(|(_, f)| **f == Fate::Repack)
        .map(|(p, _)| *p)
        .collect();
    to_repack.sort_unstable();
    for pack in &to_repack {
        if cancelled() {
            return Err(RepoError::Interrupted);
        }
        let name = hex::encode(pack);
        let size = stored.get(pack).copied().unwrap_or(0);
        let record = read_index_record(repo.keys(), repo.backend().as_ref(), &name, size)?;
        let m = &marks[pack];
        // The blobs with a used chunk, each with all its entries (FORMAT.md section 17).
        let blobs: Vec<&[PackEntry]> = record
            .entries
            .chunk_by(|a, b| a.offset == b.offset)
            .filter(|b| b.iter().any(|e| m.is_used(e)))
            .collect();
        let listed = blobs
            .iter()
            .flat_map(|b| b.iter())
            .filter(|e| m.is_used(e))
            .count();
        if listed as u64 != m.used_chunks {
            return Err(RepoError::corrupt(
                FileKind::Pack,
                &name,
                format!(
                    "its header lists {listed} of the {} chunks the index says are in use; nothing was deleted",
                    m.used_chunks
                ),
            ));
        }
        let cipher = repo.keys().pack_cipher(&record.salt);
        let mut i = 0;
        while i < blobs.len() {
            let start = blobs[i][0].offset;
            let mut end = blobs[i][0].end();
            let mut j = i + 1;
            while j < blobs.len() && blobs[j][0].offset <= end + COALESCE_GAP {
                end = end.max(blobs[j][0].end());
                j += 1;
            }
            let mut range = repo
                .backend()
                .get_range(FileKind::Pack, &name, start, end - start)
                .map_err(|e| io_err(FileKind::Pack, &name, e))?;
            for blob in &blobs[i..j] {
                let e = &blob[0];
                let from = (e.offset - start) as usize;
                let stored_blob = &mut range[from..from + e.stored_len as usize];
                let mut add = |kind: u8,
                               compression: u8,
                               payload: &[u8],
                               chunks: &[(ChunkId, u32)]|
                 -> Result<()> {
                    let w = match writer.as_mut() {
                        Some(w) => w,
                        None => writer.insert(PackWriter::new(
                            repo.keys(),
                            repo.config().pack_version(),
                            target + (1 << 20),
                        )?),
                    };
                    w.add_blob(kind, compression, payload, chunks);
                    if w.len() >= target {
                        if let Some(full) = writer.take() {
                            new_records.push(flush_pack(full, &mut report)?);
                        }
                    }
                    Ok(())
                };
                let opened = open_blob_plain(
                    &cipher,
                    &name,
                    e,
                    stored_blob,
                    &mut decompressor,
                    &mut scratch,
                )?;
                if blob.iter().all(|c| m.is_used(c)) {
                    // Wholly used: checked, then copied as stored (same compression).
                    for c in *blob {
                        chunk_in_blob(repo.keys(), &name, c, opened)?;
                    }
                    let n = e.stored_len as usize - 16;
                    let payload = &range[from..from + n];
                    let chunks: Vec<(ChunkId, u32)> =
                        blob.iter().map(|c| (c.id, c.raw_len)).collect();
                    add(e.kind, e.compression, payload, &chunks)?;
                    continue;
                }
                // Partly used: each run of used chunks that follow each other in the blob
                // becomes a blob of its own, compressed anew; the unused chunks are dropped.
                let mut runs: Vec<UsedRun> = Vec::new();
                for c in blob.iter().filter(|c| m.is_used(c)) {
                    let r = c.chunk_range();
                    chunk_in_blob(repo.keys(), &name, c, opened)?;
                    match runs.last_mut() {
                        Some(run) if run.plain.end == r.start => {
                            run.plain.end = r.end;
                            run.chunks.push((c.id, c.raw_len));
                        }
                        _ => runs.push(UsedRun {
                            plain: r,
                            chunks: vec![(c.id, c.raw_len)],
                        }),
                    }
                }
                for UsedRun { plain, chunks } in runs {
                    let plain = &opened[plain];
                    compressed.clear();
                    compressed.reserve(zstd::zstd_safe::compress_bound(plain.len()));
                    let smaller = compressor
                        .compress_to_buffer(plain, &mut compressed)
                        .is_ok()
                        && compressed.len() < plain.len();
                    if smaller {
                        add(e.kind, COMPRESSION_ZSTD, &compressed, &chunks)?;
                    } else {
                        add(e.kind, COMPRESSION_NONE, plain, &chunks)?;
                    }
                }
            }
            i = j;
        }
        progress.repacked.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(w) = writer.take() {
        if !w.is_empty() {
            new_records.push(flush_pack(w, &mut report)?);
        }
    }
    if cancelled() {
        return Err(RepoError::Interrupted);
    }

    // New index files: every kept pack (from the old index files, once each) and the new
    // packs.
    let mut index = IndexWriter::new(repo, None);
    let mut emitted: HashSet<[u8; 32]> = HashSet::new();
    for (name, _) in &index_files {
        for p in read_index(repo, name)? {
            if fates.get(&p.name) == Some(&Fate::Keep) && emitted.insert(p.name) {
                index.add(p)?;
            }
        }
    }
    for p in new_records {
        index.add(p)?;
    }
    index.flush()?;
    let written_index = index.written;
    report.index_files_written = written_index.len() as u64;

    // Old index files go, then the packs nothing lists any more: only while the lock
    // still holds.
    if let Some(h) = &opts.lock {
        h.check()?;
    }
    let keep_index: HashSet<&String> = written_index.iter().collect();
    for (name, _) in &index_files {
        if keep_index.contains(name) {
            continue;
        }
        repo.backend()
            .remove(FileKind::Index, name)
            .map_err(|e| io_err(FileKind::Index, name, e))?;
        report.index_files_deleted += 1;
    }
    let doomed = fates
        .iter()
        .filter(|(_, f)| **f != Fate::Keep)
        .map(|(p, _)| *p)
        .chain(unindexed);
    for pack in doomed {
        let name = hex::encode(pack);
        repo.backend()
            .remove(FileKind::Pack, &name)
            .map_err(|e| io_err(FileKind::Pack, &name, e))?;
    }
    report.duration_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

fn read_index(repo: &Repository, name: &str) -> Result<Vec<IndexPack>> {
    let plain = repo.get_sealed(FileKind::Index, KIND_INDEX, name)?;
    decode_index(&plain).map_err(|e| RepoError::corrupt(FileKind::Index, name, e.0))
}
