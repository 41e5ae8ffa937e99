//! Repairs after damage (FORMAT.md section 17): rebuilding the index from pack headers,
//! and rewriting snapshots that lost data so that what survives stays usable.
//! The caller holds an exclusive lock.

use crate::backend::FileKind;
use crate::cache::IndexCache;
use crate::error::{RepoError, Result};
use crate::format::index::{encode_index, IndexPack};
use crate::format::manifest::{encode_page, EntryKind, ManifestEntry, ManifestRoot};
use crate::format::pack::{COMPRESSION_NONE, COMPRESSION_ZSTD, KIND_TREE};
use crate::format::sealed::KIND_INDEX;
use crate::format::snapshot::{Snapshot, SnapshotDisk};
use crate::index_writer::IndexWriter;
use crate::pack_header::read_index_record;
use crate::pack_writer::PackWriter;
use crate::repository::{io_err, Repository};
use crate::restore::{load_page, load_root, parse_id};
use serde::Serialize;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use vmvault_chunker::ChunkId;

/// Pack headers read at once.
const HEADER_READS: usize = 8;

/// What `repair index` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IndexRepair {
    /// Packs whose headers were read and indexed.
    pub packs_indexed: u64,
    /// Chunks (blobs) now indexed.
    pub chunks: u64,
    /// Packs that could not be indexed, with why (their chunks are lost).
    pub damaged_packs: Vec<String>,
    /// Index files written.
    pub index_files_written: u64,
    /// Old index files deleted.
    pub index_files_deleted: u64,
}

/// Rebuilds the index from the headers of every pack: new index files first, then the
/// old ones are deleted, so the repository is never without an index.
pub fn repair_index(repo: &Repository) -> Result<IndexRepair> {
    let packs = repo
        .backend()
        .list(FileKind::Pack)
        .map_err(|e| io_err(FileKind::Pack, "", e))?;
    let old_index = repo
        .backend()
        .list(FileKind::Index)
        .map_err(|e| io_err(FileKind::Index, "", e))?;
    let next = AtomicUsize::new(0);
    let records: Mutex<Vec<IndexPack>> = Mutex::new(Vec::new());
    let damaged: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let damaged_ids: Mutex<HashSet<[u8; 32]>> = Mutex::new(HashSet::new());
    let failure: Mutex<Option<RepoError>> = Mutex::new(None);
    let workers = repo.backend().read_concurrency().clamp(2, HEADER_READS);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((name, size)) = packs.get(i) else {
                    return;
                };
                match read_index_record(repo.keys(), repo.backend().as_ref(), name, *size) {
                    Ok(r) => records.lock().unwrap_or_else(|e| e.into_inner()).push(r),
                    // A header that does not decode or authenticate is damage; anything
                    // else (a network error) stops the repair before it deletes anything.
                    Err(e @ RepoError::Corrupt { .. }) => {
                        let mut id = [0u8; 32];
                        if hex::decode_to_slice(name, &mut id).is_ok() {
                            damaged_ids
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(id);
                        }
                        damaged
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!("{name}: {e}"));
                    }
                    Err(e) => {
                        failure
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let mut records = records.into_inner().unwrap_or_else(|e| e.into_inner());
    // Packs whose header is damaged keep what the old index said about them: it may be
    // the only way left to find their blobs.
    let damaged_ids = damaged_ids.into_inner().unwrap_or_else(|e| e.into_inner());
    if !damaged_ids.is_empty() {
        let mut carried = HashSet::new();
        for (name, _) in &old_index {
            let plain = repo.get_sealed(FileKind::Index, KIND_INDEX, name)?;
            let packs = crate::format::index::decode_index(&plain)
                .map_err(|e| RepoError::corrupt(FileKind::Index, name, e.0))?;
            for p in packs {
                if damaged_ids.contains(&p.name) && carried.insert(p.name) {
                    records.push(p);
                }
            }
        }
    }
    records.sort_by_key(|r| r.name);
    let mut report = IndexRepair {
        packs_indexed: records.len() as u64,
        chunks: records.iter().map(|r| r.entries.len() as u64).sum(),
        damaged_packs: damaged.into_inner().unwrap_or_else(|e| e.into_inner()),
        ..Default::default()
    };
    report.damaged_packs.sort();
    let mut index = IndexWriter::new(repo, None);
    for r in records {
        index.add(r)?;
    }
    index.flush()?;
    let written: HashSet<String> = index.written.into_iter().collect();
    report.index_files_written = written.len() as u64;
    for (name, _) in &old_index {
        if written.contains(name) {
            continue;
        }
        repo.backend()
            .remove(FileKind::Index, name)
            .map_err(|e| io_err(FileKind::Index, name, e))?;
        report.index_files_deleted += 1;
    }
    Ok(report)
}

/// A range of a disk that a repaired snapshot no longer has.
#[derive(Debug, Clone, Serialize)]
pub struct LostRange {
    /// Disk (or config file, or catalog) name.
    pub disk: String,
    /// Byte offset.
    pub offset: u64,
    /// Length.
    pub len: u64,
}

/// What happened to one damaged snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotRepair {
    /// The damaged snapshot's id (now removed).
    pub old_id: String,
    /// The repaired snapshot's id (tagged `repaired`); `None` in a dry run, or when
    /// nothing readable is left, in which case the damaged snapshot is kept as it was.
    pub new_id: Option<String>,
    /// VM.
    pub vm: String,
    /// Time of the backup.
    pub time: String,
    /// Ranges now read back as zeros.
    pub lost: Vec<LostRange>,
    /// Disks, config files or catalogs dropped whole (their manifest root is gone).
    pub dropped: Vec<String>,
    /// Bytes lost in all.
    pub lost_bytes: u64,
}

/// What `repair snapshots` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SnapshotsRepair {
    /// Snapshots examined.
    pub snapshots: u64,
    /// Snapshots that lost nothing.
    pub intact: u64,
    /// Damaged snapshots and what became of them.
    pub repaired: Vec<SnapshotRepair>,
    /// True when nothing was written (dry run).
    pub dry_run: bool,
    /// Packs the index lists but the repository lacks: until `repair index` drops
    /// them, new backups would count their chunks as stored.
    pub missing_packs: Vec<String>,
}

/// Which chunks are readable: indexed, in a pack that exists.
struct Availability<'a> {
    cache: &'a IndexCache,
    packs: HashSet<[u8; 32]>,
    /// Packs the index points to that are not stored.
    missing: std::cell::RefCell<HashSet<[u8; 32]>>,
}

impl Availability<'_> {
    fn has(&self, id: &ChunkId) -> Result<bool> {
        Ok(match self.cache.lookup(id)? {
            None => false,
            Some(loc) if self.packs.contains(&loc.pack) => true,
            Some(loc) => {
                self.missing.borrow_mut().insert(loc.pack);
                false
            }
        })
    }
}

/// Writes the tree blobs of repaired manifests into new packs.
struct TreeWriter<'a> {
    repo: &'a Repository,
    writer: Option<PackWriter>,
    index: Vec<IndexPack>,
    written: HashSet<ChunkId>,
    compressor: zstd::bulk::Compressor<'static>,
}

impl TreeWriter<'_> {
    fn add(&mut self, avail: &Availability<'_>, plain: &[u8]) -> Result<ChunkId> {
        let id = self.repo.keys().chunk_id(plain);
        if self.written.contains(&id) || avail.has(&id)? {
            return Ok(id);
        }
        let compressed = self
            .compressor
            .compress(plain)
            .map_err(|e| RepoError::Invalid(format!("zstd: {e}")))?;
        let (payload, compression) = if compressed.len() < plain.len() {
            (&compressed[..], COMPRESSION_ZSTD)
        } else {
            (plain, COMPRESSION_NONE)
        };
        let target = self.repo.config().pack_size_target as usize;
        let w = match self.writer.as_mut() {
            Some(w) => w,
            None => self.writer.insert(PackWriter::new(
                self.repo.keys(),
                self.repo.config().pack_version(),
                target,
            )?),
        };
        w.add(id, KIND_TREE, compression, plain.len() as u32, payload);
        self.written.insert(id);
        if w.len() >= target {
            self.flush_pack()?;
        }
        Ok(id)
    }

    fn flush_pack(&mut self) -> Result<()> {
        if let Some(w) = self.writer.take() {
            if w.is_empty() {
                return Ok(());
            }
            let p = w.finish();
            let name = hex::encode(p.name);
            self.repo
                .backend()
                .put(FileKind::Pack, &name, &p.bytes)
                .map_err(|e| io_err(FileKind::Pack, &name, e))?;
            self.index.push(p.index);
        }
        Ok(())
    }

    /// Stores the packs and the index file listing them; afterwards the tree blobs are
    /// durable and indexed, so snapshots may reference them.
    fn commit(&mut self, cache: &IndexCache) -> Result<()> {
        self.flush_pack()?;
        if self.index.is_empty() {
            return Ok(());
        }
        let name = self.repo.put_sealed(
            FileKind::Index,
            KIND_INDEX,
            &encode_index(&self.index, self.repo.config().pack_version()),
        )?;
        cache.add_index(&name, &self.index)?;
        self.index.clear();
        Ok(())
    }
}

/// Whether an error means the data is gone (missing or damaged), as opposed to a failure
/// to reach it (network, local cache), which must stop a repair rather than be taken for
/// loss.
fn is_definite_loss(e: &RepoError) -> bool {
    matches!(e, RepoError::NotFound { .. } | RepoError::Corrupt { .. })
}

/// A disk's manifest with unreadable ranges replaced by holes, or `None` when its root
/// is gone. Returns the new manifest id (equal to the old one when nothing was lost).
fn repair_disk(
    repo: &Repository,
    cache: &IndexCache,
    avail: &Availability<'_>,
    trees: &mut TreeWriter<'_>,
    disk: &SnapshotDisk,
    lost: &mut Vec<LostRange>,
    write: bool,
) -> Result<Option<String>> {
    let root_id = parse_id(&disk.manifest)?;
    if !avail.has(&root_id)? {
        return Ok(None);
    }
    let root = match load_root(repo, cache, disk) {
        Ok(r) => r,
        Err(e) if is_definite_loss(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut new_pages = Vec::with_capacity(root.pages.len());
    let mut changed = false;
    for i in 0..root.pages.len() {
        let page_start = i as u64 * root.page_size;
        let page_len = root.page_len(i);
        let entries = if avail.has(&root.pages[i])? {
            match load_page(repo, cache, &root, i) {
                Ok(e) => Some(e),
                Err(e) if is_definite_loss(&e) => None,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let Some(entries) = entries else {
            // The page itself is gone: its whole range is lost.
            lost.push(LostRange {
                disk: disk.name.clone(),
                offset: page_start,
                len: page_len,
            });
            changed = true;
            let mut hole = Vec::new();
            let mut left = page_len;
            while left > 0 {
                let n = left.min(u64::from(crate::format::manifest::MAX_RUN));
                hole.push(ManifestEntry {
                    len: n as u32,
                    kind: EntryKind::Unallocated,
                });
                left -= n;
            }
            new_pages.push(if write {
                trees.add(avail, &encode_page(&hole))?
            } else {
                root.pages[i]
            });
            continue;
        };
        let mut page_changed = false;
        let mut out: Vec<ManifestEntry> = Vec::with_capacity(entries.len());
        for (offset, e) in entries {
            if let EntryKind::Data(id) = e.kind {
                if !avail.has(&id)? {
                    lost.push(LostRange {
                        disk: disk.name.clone(),
                        offset,
                        len: u64::from(e.len),
                    });
                    page_changed = true;
                    out.push(ManifestEntry {
                        len: e.len,
                        kind: EntryKind::Unallocated,
                    });
                    continue;
                }
            }
            out.push(e);
        }
        if page_changed {
            changed = true;
            new_pages.push(if write {
                trees.add(avail, &encode_page(&out))?
            } else {
                root.pages[i]
            });
        } else {
            new_pages.push(root.pages[i]);
        }
    }
    if !changed {
        return Ok(Some(disk.manifest.clone()));
    }
    if !write {
        return Ok(Some(String::new()));
    }
    let new_root = ManifestRoot {
        disk_size: root.disk_size,
        page_size: root.page_size,
        pages: new_pages,
    };
    Ok(Some(trees.add(avail, &new_root.encode())?.to_hex()))
}

/// Finds snapshots that reference unreadable data (not indexed, or in a missing pack)
/// and replaces each with a copy, tagged `repaired`, whose lost ranges read as zeros
/// (holes) and whose unreadable disks are dropped. Intact snapshots are untouched.
pub fn repair_snapshots(
    repo: &Repository,
    cache: &IndexCache,
    dry_run: bool,
) -> Result<SnapshotsRepair> {
    let packs: HashSet<[u8; 32]> = repo
        .backend()
        .list(FileKind::Pack)
        .map_err(|e| io_err(FileKind::Pack, "", e))?
        .into_iter()
        .filter_map(|(n, _)| {
            let mut id = [0u8; 32];
            hex::decode_to_slice(&n, &mut id).ok().map(|()| id)
        })
        .collect();
    let avail = Availability {
        cache,
        packs,
        missing: Default::default(),
    };
    let mut trees = TreeWriter {
        repo,
        writer: None,
        index: Vec::new(),
        written: HashSet::new(),
        compressor: zstd::bulk::Compressor::new(repo.config().compression.level)
            .map_err(|e| RepoError::Invalid(format!("zstd: {e}")))?,
    };
    let (snaps, bad) = repo.list_snapshots()?;
    if let Some(e) = bad.into_iter().next() {
        return Err(RepoError::Invalid(format!(
            "a snapshot object itself is unreadable ({e}); delete it from snapshots/ by hand, repair cannot save it"
        )));
    }
    let mut report = SnapshotsRepair {
        snapshots: snaps.len() as u64,
        dry_run,
        ..Default::default()
    };
    let mut pending: Vec<(String, Snapshot, SnapshotRepair)> = Vec::new();
    for (name, snap) in snaps {
        let mut lost = Vec::new();
        let mut dropped = Vec::new();
        let mut new = snap.clone();
        let write = !dry_run;
        new.disks.clear();
        for d in &snap.disks {
            match repair_disk(repo, cache, &avail, &mut trees, d, &mut lost, write)? {
                Some(m) => {
                    let mut d2 = d.clone();
                    d2.manifest = m;
                    new.disks.push(d2);
                }
                None => {
                    lost.push(LostRange {
                        disk: d.name.clone(),
                        offset: 0,
                        len: d.size,
                    });
                    dropped.push(format!("disk {}", d.name));
                }
            }
        }
        new.configs.clear();
        for c in &snap.configs {
            match repair_disk(
                repo,
                cache,
                &avail,
                &mut trees,
                &c.as_disk(),
                &mut lost,
                write,
            )? {
                Some(m) if m == c.manifest => new.configs.push(c.clone()),
                _ => dropped.push(format!("config file {}", c.name)),
            }
        }
        for c in &mut new.catalogs {
            if let Some(disk) = c.as_disk() {
                let mut scratch = Vec::new();
                let ok = repair_disk(repo, cache, &avail, &mut trees, &disk, &mut scratch, false)?
                    .is_some_and(|m| m == disk.manifest);
                if !ok {
                    dropped.push(format!("catalog of {}/{}", c.disk, c.volume));
                    c.manifest = None;
                    c.note = Some("catalog lost; removed by repair snapshots".into());
                }
            }
        }
        if lost.is_empty() && dropped.is_empty() {
            report.intact += 1;
            continue;
        }
        if !new.tags.iter().any(|t| t == "repaired") {
            new.tags.push("repaired".into());
        }
        let lost_bytes = lost.iter().map(|l| l.len).sum();
        let entry = SnapshotRepair {
            old_id: name.clone(),
            new_id: None,
            vm: snap.vm.clone(),
            time: snap.time.clone(),
            lost,
            dropped,
            lost_bytes,
        };
        pending.push((name, new, entry));
    }
    let mut missing: Vec<String> = avail.missing.borrow().iter().map(hex::encode).collect();
    missing.sort();
    report.missing_packs = missing;
    if !dry_run {
        // Tree blobs first (packs, then index), then the new snapshots, then the old ones
        // go: a crash leaves at worst both versions.
        trees.commit(cache)?;
        for (old, new, mut entry) in pending {
            // A snapshot with nothing readable left is kept as it was: removing it is
            // the user's decision (`forget`), not a repair's.
            if !new.disks.is_empty() || !new.configs.is_empty() {
                entry.new_id = Some(repo.put_snapshot(&new)?);
                repo.backend()
                    .remove(FileKind::Snapshot, &old)
                    .map_err(|e| io_err(FileKind::Snapshot, &old, e))?;
            }
            report.repaired.push(entry);
        }
    } else {
        report.repaired = pending.into_iter().map(|(_, _, e)| e).collect();
    }
    Ok(report)
}
