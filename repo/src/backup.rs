//! The backup pipeline (ARCHITECTURE.md, "Backup pipeline").
//!
//! ```text
//! reader (this thread) --segments--> rayon workers --results--> collector thread
//!   fixed pool of buffers            chunk, id, dedup,          reorders, builds
//!   (bounds memory)                  compress, encrypt          manifest pages
//!                                      into shared packs --full packs--> uploader thread
//!                                                                          put pack, write
//!                                                                          index files
//! ```
//! Chunk boundaries depend only on segment contents, never on scheduling. Memory is
//! bounded by the number of segment buffers, packers and packs in flight. The snapshot
//! is written only after every pack and index file it needs is durable.

use crate::backend::FileKind;
use crate::cache::IndexCache;
use crate::error::{RepoError, Result};
use crate::format::index::{encode_index, IndexPack};
use crate::format::manifest::{EntryKind, ManifestEntry, ManifestRoot, MAX_RUN};
use crate::format::pack::{COMPRESSION_NONE, COMPRESSION_ZSTD, KIND_DATA, KIND_TREE};
use crate::format::sealed::KIND_INDEX;
use crate::format::snapshot::{valid_config_name, Snapshot, SnapshotConfig, SnapshotDisk};
use crate::pack_writer::{FinishedPack, PackWriter};
use crate::pending::PendingSet;
use crate::repository::{hostname, now_rfc3339, Repository};
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vmvault_chunker::{ChunkId, Chunker, Cut, CutKind};
use vmvault_ingest::{ConcurrentSegments, ExtentKind, Segment, SequentialDisk, StreamDisk};

/// Threads reading segments of random-access sources at once (two reads in flight keep a
/// device busy under direct I/O, where the kernel does no readahead for us).
const READERS: usize = 2;

/// Chunks listed per index file before a new one is started.
const INDEX_FLUSH_ENTRIES: usize = 100_000;

/// Live counters of a running backup, for progress display. All in bytes except chunks.
#[derive(Default, Debug)]
pub struct Progress {
    /// Logical size of all disks, where known in advance.
    pub total: AtomicU64,
    /// Logical bytes processed so far.
    pub done: AtomicU64,
    /// Bytes actually read from sources (allocated data).
    pub read: AtomicU64,
    /// Raw bytes of chunks that were new to the repository.
    pub new_raw: AtomicU64,
    /// Bytes those new chunks take in packs (compressed, with tags).
    pub stored: AtomicU64,
    /// Data chunks seen.
    pub chunks: AtomicU64,
    /// Data chunks that were new.
    pub new_chunks: AtomicU64,
}

/// One disk to back up.
pub struct DiskInput {
    /// Name within the snapshot (unique, no '/').
    pub name: String,
    /// Where it comes from, for the snapshot record.
    pub source_path: String,
    /// The reader.
    pub source: Box<dyn SequentialDisk>,
}

/// A VM configuration file to store with the snapshot.
pub struct ConfigInput {
    /// File name in the snapshot (FORMAT.md section 9 rules).
    pub name: String,
    /// Its contents.
    pub bytes: Vec<u8>,
}

/// What to back up and how.
pub struct BackupRequest {
    /// VM name.
    pub vm: String,
    /// The snapshot the new one follows (FORMAT.md, `parent`): the VM's newest snapshot
    /// when the backup starts (`Repository::latest_snapshot`), `None` for its first.
    pub parent: Option<String>,
    /// Tags to attach.
    pub tags: Vec<String>,
    /// The VM's disks, in order.
    pub disks: Vec<DiskInput>,
    /// Configuration files to store with the disks.
    pub configs: Vec<ConfigInput>,
    /// Disks whose guest file systems to catalogue (FORMAT.md section 15), walked while
    /// the disks are backed up; empty for `--no-catalog` or stream sources.
    pub catalogs: Vec<crate::catalog::CatalogSource>,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// Set from outside (a signal handler) to stop the backup; nothing is committed.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Checked just before the snapshot is written: the backup's lock must still hold
    /// (a lock not refreshed for long may have been judged stale, and a prune may have
    /// deleted data this backup relies on).
    pub commit_check: Option<crate::lock::LockHealth>,
}

/// The result of a successful backup.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupSummary {
    /// Name (id) of the new snapshot.
    pub snapshot: String,
    /// The snapshot as stored.
    #[serde(skip)]
    pub snapshot_record: Snapshot,
    /// Sum of the disks' logical sizes.
    pub logical_bytes: u64,
    /// Bytes read from the sources.
    pub read_bytes: u64,
    /// Bytes found zero (not stored).
    pub zero_bytes: u64,
    /// Raw bytes of chunks new to the repository.
    pub new_bytes: u64,
    /// Bytes added to packs after compression and encryption.
    pub stored_bytes: u64,
    /// Data chunks the disks' manifests reference (config files and catalogs not counted).
    pub chunks: u64,
    /// Chunks that were new to the repository (disks, config files and catalogs).
    pub new_chunks: u64,
    /// Packs written.
    pub packs: u64,
    /// Index files written.
    pub index_files: u64,
    /// Wall time in seconds.
    pub duration_secs: f64,
    /// Volumes catalogued and file system entries listed in their catalogs.
    pub catalogued_volumes: u64,
    /// Entries in the catalogs.
    pub catalog_entries: u64,
    /// What cataloguing could not read (the backup itself is complete).
    pub catalog_warnings: Vec<String>,
}

/// State shared by every stage of one backup.
struct Shared<'r> {
    repo: &'r Repository,
    cache: &'r IndexCache,
    chunker: Chunker,
    pending: PendingSet,
    packers: Vec<Mutex<Option<PackWriter>>>,
    /// Taken (closed) when the last pack is sent, so the uploader can finish.
    pack_tx: Mutex<Option<Sender<FinishedPack>>>,
    progress: &'r Progress,
    abort: AtomicBool,
    cancel: Option<Arc<AtomicBool>>,
    error: Mutex<Option<RepoError>>,
    level: i32,
    /// The most chunk plaintext one data blob holds (0: one chunk per blob).
    blob_size: usize,
    pack_target: usize,
    /// Packers `0..data_packers` take data chunks; the one after them takes manifests.
    data_packers: usize,
    /// Buffers of packs already stored, returned by the uploader for reuse.
    spare_buffers: Receiver<Vec<u8>>,
}

impl Shared<'_> {
    fn fail(&self, e: RepoError) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
        self.abort.store(true, Ordering::SeqCst);
    }

    fn aborted(&self) -> bool {
        if self
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            self.fail(RepoError::Interrupted);
        }
        self.abort.load(Ordering::Relaxed)
    }

    /// True when chunk `id` is new to the repository and to this run; from then on this
    /// run owes it to a pack ([`Shared::store_blob`]).
    fn claim(&self, id: &ChunkId) -> Result<bool> {
        Ok(!self.cache.contains(id)? && self.pending.insert(*id))
    }

    /// Deduplicates and, if new, compresses, encrypts and packs one chunk as a blob of its
    /// own.
    fn store_chunk(&self, id: ChunkId, bytes: &[u8], kind: u8, slot: usize) -> Result<bool> {
        if !self.claim(&id)? {
            return Ok(false);
        }
        self.store_blob(bytes, &[(id, bytes.len() as u32)], kind, slot)?;
        Ok(true)
    }

    /// Compresses, encrypts and packs one blob: `plain` is the bytes of `chunks` (claimed,
    /// in order) one after the other.
    fn store_blob(
        &self,
        plain: &[u8],
        chunks: &[(ChunkId, u32)],
        kind: u8,
        slot: usize,
    ) -> Result<()> {
        thread_local! {
            static SCRATCH: RefCell<CompressScratch> = const {
                RefCell::new(CompressScratch { compressor: None, out: Vec::new() })
            };
        }
        let stored = SCRATCH.with(|cell| -> Result<usize> {
            let mut guard = cell.borrow_mut();
            let CompressScratch {
                compressor: comp,
                out: scratch,
            } = &mut *guard;
            if comp.as_ref().map(|c| c.0) != Some(self.level) {
                let c = zstd::bulk::Compressor::new(self.level)
                    .map_err(|e| RepoError::Invalid(format!("zstd: {e}")))?;
                *comp = Some((self.level, c));
            }
            let Some((_, comp)) = comp.as_mut() else {
                return Err(RepoError::Invalid("zstd compressor missing".into()));
            };
            scratch.clear();
            scratch.reserve(zstd::zstd_safe::compress_bound(plain.len()));
            let compressed =
                comp.compress_to_buffer(plain, scratch).is_ok() && scratch.len() < plain.len();
            let (payload, compression) = if compressed {
                (&scratch[..], COMPRESSION_ZSTD)
            } else {
                (plain, COMPRESSION_NONE)
            };
            self.add_to_pack(slot, kind, compression, payload, chunks)?;
            Ok(payload.len() + 16)
        })?;
        self.progress
            .new_raw
            .fetch_add(plain.len() as u64, Ordering::Relaxed);
        self.progress
            .stored
            .fetch_add(stored as u64, Ordering::Relaxed);
        Ok(())
    }

    fn add_to_pack(
        &self,
        slot: usize,
        kind: u8,
        compression: u8,
        payload: &[u8],
        chunks: &[(ChunkId, u32)],
    ) -> Result<()> {
        // A pack is sealed before a blob that would take it past the target, so packs stay
        // within their buffer's capacity (a grown buffer would briefly hold two copies).
        let (sealed, full) = {
            let mut p = self.packers[slot.min(self.packers.len() - 1)]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let sealed = match p.as_ref() {
                Some(w) if !w.is_empty() && w.len() + payload.len() + 16 > self.pack_target => {
                    p.take()
                }
                _ => None,
            };
            if p.is_none() {
                let buf = self
                    .spare_buffers
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(self.pack_target + (1 << 20)));
                *p = Some(PackWriter::with_buffer(
                    self.repo.keys(),
                    self.repo.config().pack_version(),
                    buf,
                )?);
            }
            let Some(w) = p.as_mut() else {
                return Err(RepoError::Invalid("pack writer missing".into()));
            };
            w.add_blob(kind, compression, payload, chunks);
            let full = if w.len() >= self.pack_target {
                p.take()
            } else {
                None
            };
            (sealed, full)
        };
        for w in sealed.into_iter().chain(full) {
            self.send_pack(w)?;
        }
        Ok(())
    }

    fn send_pack(&self, w: PackWriter) -> Result<()> {
        let tx = self
            .pack_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let stopped = || RepoError::Invalid("pack uploader stopped".into());
        tx.ok_or_else(stopped)?
            .send(w.finish())
            .map_err(|_| stopped())
    }

    /// Closes the pack channel so the uploader writes the last index file and stops.
    fn close_packs(&self) {
        self.pack_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Finishes every partly filled pack.
    fn flush_packers(&self) -> Result<()> {
        for p in &self.packers {
            let w = p.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(w) = w.filter(|w| !w.is_empty()) {
                self.send_pack(w)?;
            }
        }
        Ok(())
    }
}

/// Per-thread compression state, reused across chunks.
struct CompressScratch {
    /// The level it was made for, and the zstd context.
    compressor: Option<(i32, zstd::bulk::Compressor<'static>)>,
    /// Output buffer.
    out: Vec<u8>,
}

/// What a worker made of one segment.
struct SegmentResult {
    offset: u64,
    len: u64,
    entries: Vec<ManifestEntry>,
    read: u64,
    zero: u64,
    chunks: u64,
}

fn push_entry(out: &mut Vec<ManifestEntry>, kind: EntryKind, mut len: u64) {
    while len > 0 {
        if let Some(last) = out.last_mut() {
            if last.kind == kind && !matches!(kind, EntryKind::Data(_)) && last.len < MAX_RUN {
                let add = len.min(u64::from(MAX_RUN - last.len));
                last.len += add as u32;
                len -= add;
                continue;
            }
        }
        let take = len.min(u64::from(MAX_RUN));
        out.push(ManifestEntry {
            len: take as u32,
            kind,
        });
        len -= take;
    }
}

/// Chunks one segment. The whole segment is cut as its logical content, with unallocated
/// and zero extents standing for zeros (`Chunker::split_with_gaps`), so the chunks of a
/// disk do not depend on which container (raw, qcow2, VMDK, ...) it was read from.
fn process_segment(sh: &Shared<'_>, seg: &Segment, buf: &mut [u8]) -> Result<SegmentResult> {
    let slot = rayon::current_thread_index().unwrap_or(0) % sh.data_packers;
    let mut r = SegmentResult {
        offset: seg.offset,
        len: seg.len,
        entries: Vec::new(),
        read: 0,
        zero: 0,
        chunks: 0,
    };
    let mut gaps = Vec::new();
    for e in &seg.extents {
        let range = (e.offset - seg.offset) as usize..(e.end() - seg.offset) as usize;
        match e.kind {
            ExtentKind::Data => r.read += e.len,
            ExtentKind::Zero | ExtentKind::Unallocated => gaps.push(range),
        }
    }
    let buf = buf
        .get_mut(seg.data_start..seg.data_start + seg.len as usize)
        .ok_or_else(|| {
            RepoError::Invalid("internal error: segment longer than its buffer".into())
        })?;
    // Extents, in buffer coordinates, for naming the parts of zero cuts.
    let mut ext = 0usize;
    // New chunks that follow each other in the buffer, gathered into blobs of up to
    // `blob_size` bytes (one chunk each when it is 0) and stored once the segment is cut.
    let mut blobs: Vec<PendingBlob> = Vec::new();
    sh.chunker
        .split_with_gaps_each(buf, seg.offset, &gaps, |c: Cut, bytes: &[u8]| {
            match c.kind {
                CutKind::Zero => {
                    let (mut pos, end) = (c.start, c.start + c.len);
                    while pos < end {
                        let Some(e) = seg.extents.get(ext) else {
                            return Err(RepoError::Invalid(
                                "internal error: extents do not cover the segment".into(),
                            ));
                        };
                        let e_end = (e.end() - seg.offset) as usize;
                        if e_end <= pos {
                            ext += 1;
                            continue;
                        }
                        let take = (e_end.min(end) - pos) as u64;
                        if e.kind == ExtentKind::Unallocated {
                            push_entry(&mut r.entries, EntryKind::Unallocated, take);
                        } else {
                            r.zero += take;
                            push_entry(&mut r.entries, EntryKind::Zero, take);
                        }
                        pos += take as usize;
                    }
                }
                CutKind::Data(id) => {
                    r.chunks += 1;
                    sh.progress.chunks.fetch_add(1, Ordering::Relaxed);
                    if sh.claim(&id)? {
                        sh.progress.new_chunks.fetch_add(1, Ordering::Relaxed);
                        let len = bytes.len();
                        match blobs.last_mut() {
                            Some(b)
                                if b.end == c.start && b.end - b.start + len <= sh.blob_size =>
                            {
                                b.end += len;
                                b.chunks.push((id, len as u32));
                            }
                            _ => blobs.push(PendingBlob {
                                start: c.start,
                                end: c.start + len,
                                chunks: vec![(id, len as u32)],
                            }),
                        }
                    }
                    push_entry(&mut r.entries, EntryKind::Data(id), c.len as u64);
                }
            }
            Ok(())
        })?;
    for b in &blobs {
        let plain = buf
            .get(b.start..b.end)
            .ok_or_else(|| RepoError::Invalid("internal error: blob outside its segment".into()))?;
        sh.store_blob(plain, &b.chunks, KIND_DATA, slot)?;
    }
    Ok(r)
}

/// New chunks of a segment that will be stored as one blob: they lie one after the other
/// at `start..end` of the segment's buffer.
struct PendingBlob {
    start: usize,
    end: usize,
    chunks: Vec<(ChunkId, u32)>,
}

/// Builds one disk's manifest pages in disk order.
struct ManifestBuilder {
    page_size: u64,
    page_start: u64,
    pos: u64,
    entries: Vec<ManifestEntry>,
    pages: Vec<ChunkId>,
}

impl ManifestBuilder {
    fn add(&mut self, sh: &Shared<'_>, r: SegmentResult, slot: usize) -> Result<()> {
        if r.offset != self.pos {
            return Err(RepoError::Invalid(format!(
                "internal error: segment at {} where {} was expected",
                r.offset, self.pos
            )));
        }
        for e in r.entries {
            push_entry(&mut self.entries, e.kind, u64::from(e.len));
        }
        self.pos += r.len;
        if self.pos - self.page_start >= self.page_size {
            self.finish_page(sh, slot)?;
        }
        Ok(())
    }

    fn finish_page(&mut self, sh: &Shared<'_>, slot: usize) -> Result<()> {
        let bytes = crate::format::manifest::encode_page(&self.entries);
        let id = sh.repo.keys().chunk_id(&bytes);
        sh.store_chunk(id, &bytes, KIND_TREE, slot)?;
        self.pages.push(id);
        self.entries.clear();
        self.page_start = self.pos;
        Ok(())
    }

    fn finish(mut self, sh: &Shared<'_>, slot: usize) -> Result<(ChunkId, u64)> {
        if self.pos > self.page_start {
            self.finish_page(sh, slot)?;
        }
        let root = ManifestRoot {
            disk_size: self.pos,
            page_size: self.page_size,
            pages: self.pages,
        };
        let bytes = root.encode();
        let id = sh.repo.keys().chunk_id(&bytes);
        sh.store_chunk(id, &bytes, KIND_TREE, slot)?;
        Ok((id, self.pos))
    }
}

/// Totals for one disk.
#[derive(Default)]
struct DiskTotals {
    read: u64,
    zero: u64,
    chunks: u64,
}

fn collect(
    sh: &Shared<'_>,
    results: Receiver<Result<SegmentResult>>,
    segment_size: u64,
    slot: usize,
) -> Result<(ChunkId, u64, DiskTotals)> {
    let mut builder = ManifestBuilder {
        page_size: sh.repo.config().manifest_page_size,
        page_start: 0,
        pos: 0,
        entries: Vec::new(),
        pages: Vec::new(),
    };
    let mut waiting: BTreeMap<u64, SegmentResult> = BTreeMap::new();
    let mut totals = DiskTotals::default();
    let mut failed = false;
    for r in results {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                sh.fail(e);
                failed = true;
                continue;
            }
        };
        if failed {
            continue;
        }
        waiting.insert(r.offset / segment_size, r);
        while let Some(r) = waiting.remove(&(builder.pos / segment_size)) {
            totals.read += r.read;
            totals.zero += r.zero;
            totals.chunks += r.chunks;
            sh.progress.done.fetch_add(r.len, Ordering::Relaxed);
            if let Err(e) = builder.add(sh, r, slot) {
                sh.fail(e);
                failed = true;
                break;
            }
        }
    }
    if failed || sh.aborted() {
        return Err(RepoError::Invalid("backup aborted".into()));
    }
    if !waiting.is_empty() {
        return Err(RepoError::Invalid(
            "internal error: segments missing from the manifest".into(),
        ));
    }
    let (root, size) = builder.finish(sh, slot)?;
    Ok((root, size, totals))
}

/// Hands out the segments of a disk that several threads may read at once, front to back.
struct SegmentQueue<'d> {
    disk: &'d dyn ConcurrentSegments,
    size: u64,
    segment_size: u64,
    next: AtomicU64,
}

impl SegmentQueue<'_> {
    /// The next segment's offset and length, or `None` past the end.
    fn take(&self) -> Option<(u64, u64)> {
        let offset = self.next.fetch_add(self.segment_size, Ordering::Relaxed);
        (offset < self.size).then(|| (offset, (self.size - offset).min(self.segment_size)))
    }
}

/// One reader thread of a [`SegmentQueue`]: takes a free buffer and the next segment, reads
/// it and hands it to the pool, until the disk ends or the backup stops. A read error goes
/// to the collector, as a chunking error does.
fn read_segments<'s>(
    scope: &rayon::Scope<'s>,
    sh: &'s Shared<'s>,
    queue: &SegmentQueue<'s>,
    buf_rx: &Receiver<Vec<u8>>,
    buf_tx: &Sender<Vec<u8>>,
    res_tx: &Sender<Result<SegmentResult>>,
) {
    while !sh.aborted() {
        let Ok(mut buf) = buf_rx.recv() else {
            return;
        };
        let Some((offset, len)) = queue.take() else {
            let _ = buf_tx.send(buf);
            return;
        };
        match queue.disk.read_segment(offset, len, &mut buf) {
            Ok(seg) => spawn_segment(scope, sh, seg, buf, buf_tx, res_tx),
            Err(e) => {
                let _ = buf_tx.send(buf);
                let _ = res_tx.send(Err(RepoError::from(e)));
                return;
            }
        }
    }
}

/// Chunks `seg` (read into `buf`) on the worker pool, then returns the buffer to the pool
/// of free buffers and the result to the collector.
fn spawn_segment<'s>(
    scope: &rayon::Scope<'s>,
    sh: &'s Shared<'s>,
    seg: Segment,
    buf: Vec<u8>,
    buf_tx: &Sender<Vec<u8>>,
    res_tx: &Sender<Result<SegmentResult>>,
) {
    let (buf_tx, res_tx) = (buf_tx.clone(), res_tx.clone());
    scope.spawn(move |_| {
        let mut buf = buf;
        let r = if sh.aborted() {
            Err(RepoError::Invalid("backup aborted".into()))
        } else {
            process_segment(sh, &seg, &mut buf)
        };
        let _ = buf_tx.send(buf);
        let _ = res_tx.send(r);
    });
}

fn backup_disk(
    sh: &Shared<'_>,
    pool: &rayon::ThreadPool,
    input: DiskInput,
    slot: usize,
) -> Result<SnapshotDisk> {
    let DiskInput {
        name,
        source_path,
        mut source,
    } = input;
    let segment_size = sh.repo.config().chunker.params.segment_size;
    let buffers = pool.current_num_threads() + READERS + 1;
    let (buf_tx, buf_rx) = bounded::<Vec<u8>>(buffers);
    for _ in 0..buffers {
        let _ = buf_tx.send(Vec::new());
    }
    let (res_tx, res_rx) = unbounded::<Result<SegmentResult>>();
    let format = source.format_name().to_string();
    let (root, size, totals) = std::thread::scope(|s| {
        let collector = s.spawn(|| collect(sh, res_rx, segment_size, slot));
        // Random-access sources are read by READERS threads of their own, each taking the
        // next segment: with direct I/O a single reader would leave the device idle while
        // it waits, and reading in the workers would leave a core idle instead.
        let read_result: Result<()> = if let Some(disk) = source.concurrent() {
            let queue = SegmentQueue {
                disk,
                size: disk.size(),
                segment_size,
                next: AtomicU64::new(0),
            };
            pool.in_place_scope(|scope| {
                std::thread::scope(|readers| {
                    for _ in 0..READERS {
                        let (queue, buf_rx, buf_tx, res_tx) = (&queue, &buf_rx, &buf_tx, &res_tx);
                        readers
                            .spawn(move || read_segments(scope, sh, queue, buf_rx, buf_tx, res_tx));
                    }
                });
                Ok(())
            })
        } else {
            pool.in_place_scope(|scope| loop {
                if sh.aborted() {
                    return Ok(());
                }
                let Ok(mut buf) = buf_rx.recv() else {
                    return Ok(());
                };
                let seg = match source.next_segment(segment_size as usize, &mut buf) {
                    Ok(Some(seg)) => seg,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(RepoError::from(e)),
                };
                spawn_segment(scope, sh, seg, buf, &buf_tx, &res_tx);
            })
        };
        if let Err(e) = read_result {
            sh.fail(e);
        }
        drop(res_tx);
        collector
            .join()
            .unwrap_or_else(|_| Err(RepoError::Invalid("manifest collector panicked".into())))
    })?;
    Ok(SnapshotDisk {
        name,
        size,
        source: source_path,
        source_format: format,
        manifest: root.to_hex(),
        allocated_bytes: totals.read,
        zero_bytes: totals.zero,
        data_chunks: totals.chunks,
    })
}

/// Index entries gathered from stored packs, not yet written as an index file.
#[derive(Default)]
struct IndexBatch {
    packs: Vec<IndexPack>,
    entries: usize,
    packs_stored: u64,
    index_files: u64,
}

/// Writes packs as they fill (up to the backend's upload concurrency at once) and an
/// index file every [`INDEX_FLUSH_ENTRIES`] chunks, handing each stored pack's buffer back
/// through `spare` (dropped when that is full). An index file lists only packs already
/// stored. On the first failure `abort` is set and every uploader stops.
/// Returns (packs written, index files written).
fn upload_loop(
    repo: &Repository,
    cache: &IndexCache,
    pending: &PendingSet,
    packs: Receiver<FinishedPack>,
    spare: Sender<Vec<u8>>,
    abort: &AtomicBool,
) -> Result<(u64, u64)> {
    let batch = Mutex::new(IndexBatch::default());
    let flush = |b: &mut IndexBatch| -> Result<()> {
        let name = repo.put_sealed(
            FileKind::Index,
            KIND_INDEX,
            &encode_index(&b.packs, repo.config().pack_version()),
        )?;
        cache.add_index(&name, &b.packs)?;
        pending.remove_all(b.packs.iter().flat_map(|p| p.entries.iter().map(|e| &e.id)));
        b.packs.clear();
        b.entries = 0;
        b.index_files += 1;
        Ok(())
    };
    let upload_one = |p: FinishedPack| -> Result<()> {
        let name = hex::encode(p.name);
        let buffer = repo
            .backend()
            .put_owned(FileKind::Pack, &name, p.bytes)
            .map_err(|e| crate::repository::io_err(FileKind::Pack, &name, e))?;
        if buffer.capacity() > 0 {
            let _ = spare.try_send(buffer);
        }
        let mut b = batch.lock().unwrap_or_else(|e| e.into_inner());
        b.packs_stored += 1;
        b.entries += p.index.entries.len();
        b.packs.push(p.index);
        if b.entries >= INDEX_FLUSH_ENTRIES {
            flush(&mut b)?;
        }
        Ok(())
    };
    let workers = repo.backend().upload_concurrency().max(1);
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let rx = packs.clone();
                let upload_one = &upload_one;
                s.spawn(move || -> Result<()> {
                    for p in rx.iter() {
                        if abort.load(Ordering::SeqCst) {
                            break;
                        }
                        if let Err(e) = upload_one(p) {
                            abort.store(true, Ordering::SeqCst);
                            return Err(e);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        // The workers hold the only receivers now: when they all stop, packers see a
        // closed channel instead of waiting forever.
        drop(packs);
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(RepoError::Invalid("pack uploader panicked".into())))
            })
            .collect()
    });
    let mut b = batch.into_inner().unwrap_or_else(|e| e.into_inner());
    // Packs already stored are indexed even when another upload failed, so the next
    // backup reuses them instead of sending them again.
    let flushed = if b.packs.is_empty() {
        Ok(())
    } else {
        flush(&mut b)
    };
    for r in results {
        r?;
    }
    flushed?;
    Ok((b.packs_stored, b.index_files))
}

/// Runs one backup: every disk of `req` into one new snapshot. On any error nothing is
/// committed (packs already written stay, unreferenced, for prune to reclaim).
pub fn backup(
    repo: &Repository,
    cache: &IndexCache,
    req: BackupRequest,
    progress: &Progress,
) -> Result<BackupSummary> {
    let started = Instant::now();
    let time = now_rfc3339();
    let mut names = std::collections::HashSet::new();
    for d in &req.disks {
        if d.name.is_empty() || d.name.contains('/') || !names.insert(d.name.clone()) {
            return Err(RepoError::Invalid(format!(
                "disk name {:?} is empty, contains '/', or is used twice (use --disk-name)",
                d.name
            )));
        }
    }
    let mut config_names = std::collections::HashSet::new();
    for c in &req.configs {
        if !valid_config_name(&c.name) || !config_names.insert(c.name.clone()) {
            return Err(RepoError::Invalid(format!(
                "config file name {:?} is empty, starts with '.', contains '/', or is used twice",
                c.name
            )));
        }
    }
    if req.vm.is_empty() || req.vm.contains('/') {
        return Err(RepoError::Invalid(
            "VM name must be non-empty and without '/'".into(),
        ));
    }
    let threads = if req.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        req.threads
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("vmvault-chunk-{i}"))
        .build()
        .map_err(|e| RepoError::Invalid(format!("cannot start worker threads: {e}")))?;
    let config = repo.config();
    let (pack_tx, pack_rx) = bounded::<FinishedPack>(0);
    let data_packers = threads.div_ceil(4);
    // One spare per data packer: each can start its next pack in reused memory, while the
    // memory held stays within one pack per packer plus the one being stored.
    let (spare_tx, spare_rx) = bounded::<Vec<u8>>(data_packers);
    let sh = Shared {
        repo,
        cache,
        chunker: repo.keys().chunker(config.chunker_params()),
        pending: PendingSet::default(),
        // One data packer per 4 workers (a packer is locked only to encrypt and append,
        // a small part of a chunk's work), plus one for manifests. Each holds up to one
        // pack in memory, so this bounds pack memory independently of the disk.
        packers: (0..data_packers + 1).map(|_| Mutex::new(None)).collect(),
        pack_tx: Mutex::new(Some(pack_tx)),
        progress,
        abort: AtomicBool::new(false),
        cancel: req.cancel.clone(),
        error: Mutex::new(None),
        level: config.compression.level,
        blob_size: config.blob_size(),
        pack_target: config.pack_size_target as usize,
        data_packers,
        spare_buffers: spare_rx,
    };
    let tree_slot = data_packers;
    for d in &req.disks {
        if let Some(s) = d.source.size_hint() {
            progress.total.fetch_add(s, Ordering::Relaxed);
        }
    }
    let catalog_sources = req.catalogs;
    let (disks, uploaded) = std::thread::scope(|s| {
        let cataloguer = s.spawn(|| {
            catalog_sources
                .iter()
                .map(|c| (c.disk.clone(), crate::catalog::build_catalogs(c)))
                .collect::<Vec<_>>()
        });
        let uploader = s.spawn(|| {
            let r = upload_loop(repo, cache, &sh.pending, pack_rx, spare_tx, &sh.abort);
            if r.is_err() {
                sh.abort.store(true, Ordering::SeqCst);
            }
            r
        });
        let mut disks = Vec::new();
        let mut result = Ok(());
        for input in req.disks {
            match backup_disk(&sh, &pool, input, tree_slot) {
                Ok(d) => disks.push(d),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let mut configs = Vec::new();
        if result.is_ok() {
            for c in req.configs {
                let size = c.bytes.len() as u64;
                let input = DiskInput {
                    name: c.name.clone(),
                    source_path: c.name,
                    source: Box::new(
                        StreamDisk::new(std::io::Cursor::new(c.bytes), "config file")
                            .with_expected_size(size),
                    ),
                };
                match backup_disk(&sh, &pool, input, tree_slot) {
                    Ok(d) => configs.push(SnapshotConfig {
                        name: d.name,
                        size: d.size,
                        manifest: d.manifest,
                    }),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        let mut catalogs = Vec::new();
        let mut catalog_warnings = Vec::new();
        let built = cataloguer.join().unwrap_or_else(|_| {
            catalog_warnings.push("cataloguing failed (internal error)".to_string());
            Vec::new()
        });
        for (disk, (volumes, problem)) in built {
            if let Some(p) = problem {
                catalog_warnings.push(format!("{disk}: {p}"));
            }
            for v in volumes {
                let mut record = v.record;
                if let Some(note) = &record.note {
                    if record.content != "lvm2-pv" && record.content != "unknown" {
                        catalog_warnings.push(format!("{}/{}: {note}", record.disk, record.volume));
                    }
                }
                if let (Some(bytes), true) = (v.bytes, result.is_ok()) {
                    let size = bytes.len() as u64;
                    let input = DiskInput {
                        name: format!("{}/{}", record.disk, record.volume),
                        source_path: String::new(),
                        source: Box::new(
                            StreamDisk::new(std::io::Cursor::new(bytes), "catalog")
                                .with_expected_size(size),
                        ),
                    };
                    match backup_disk(&sh, &pool, input, tree_slot) {
                        Ok(d) => record.manifest = Some(d.manifest),
                        Err(e) => result = Err(e),
                    }
                }
                catalogs.push(record);
            }
        }
        if result.is_ok() {
            result = sh.flush_packers();
        }
        sh.close_packs();
        let uploaded = uploader
            .join()
            .unwrap_or_else(|_| Err(RepoError::Invalid("pack uploader panicked".into())));
        (
            result.map(|()| (disks, configs, catalogs, catalog_warnings)),
            uploaded,
        )
    });
    // The first error wins: a worker's or reader's error explains an abort better than
    // the "aborted" it causes elsewhere.
    let first = sh.error.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(e) = first {
        return Err(e);
    }
    let (disks, configs, catalogs, catalog_warnings) = disks?;
    let (packs, index_files) = uploaded?;
    let snapshot = Snapshot {
        version: Snapshot::version_for(&configs, &catalogs),
        vm: req.vm,
        host: hostname(),
        time,
        tags: req.tags,
        parent: req.parent,
        program: format!("vmvault {}", env!("CARGO_PKG_VERSION")),
        disks,
        configs,
        catalogs,
    };
    if let Some(h) = &req.commit_check {
        h.check()?;
    }
    let name = repo.put_snapshot(&snapshot)?;
    let p = progress;
    Ok(BackupSummary {
        snapshot: name,
        logical_bytes: snapshot.disks.iter().map(|d| d.size).sum(),
        read_bytes: snapshot.disks.iter().map(|d| d.allocated_bytes).sum(),
        zero_bytes: snapshot.disks.iter().map(|d| d.zero_bytes).sum(),
        new_bytes: p.new_raw.load(Ordering::Relaxed),
        stored_bytes: p.stored.load(Ordering::Relaxed),
        chunks: snapshot.disks.iter().map(|d| d.data_chunks).sum(),
        new_chunks: p.new_chunks.load(Ordering::Relaxed),
        packs,
        index_files,
        duration_secs: started.elapsed().as_secs_f64(),
        catalogued_volumes: snapshot
            .catalogs
            .iter()
            .filter(|c| c.manifest.is_some())
            .count() as u64,
        catalog_entries: snapshot.catalogs.iter().map(|c| c.entries).sum(),
        catalog_warnings,
        snapshot_record: snapshot,
    })
}
