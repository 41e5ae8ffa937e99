//! Restoring a disk to a raw file or block device.
//!
//! The manifest is walked one page at a time; each page's data entries are cut into
//! batches that rayon workers fetch in parallel. Within a batch, chunks are grouped by
//! pack and neighbouring blobs are read with one ranged read. Every chunk is
//! authenticated and its id recomputed before it is written at its offset. Zero and
//! unallocated ranges stay holes in files (and all-zero blocks inside chunks are not
//! written either), or are written as zeros on block devices.

use crate::aligned::AlignedBuf;
use crate::backend::FileKind;
use crate::blob::{chunk_in_blob, new_decompressor, one_blob, open_blob_plain, read_chunk};
use crate::cache::{ChunkLocation, IndexCache};
use crate::error::{RepoError, Result};
use crate::format::manifest::{decode_page, EntryKind, ManifestRoot};
use crate::format::snapshot::SnapshotDisk;
use crate::repository::{io_err, Repository};
use crate::restore_target::{Target, BLOCK};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use vmvault_chunker::ChunkId;

/// Largest disk range of one parallel batch (each worker holds one range's buffer).
const BATCH_BYTES: u64 = 8 << 20;
/// Largest gap between two blobs of one pack that is read through rather than split.
const COALESCE_GAP: u64 = 256 << 10;
/// Largest single ranged read.
const MAX_READ: u64 = 32 << 20;

/// Live counters of a restore.
#[derive(Default, Debug)]
pub struct RestoreProgress {
    /// Logical bytes of the disks being restored.
    pub total: AtomicU64,
    /// Logical bytes done.
    pub done: AtomicU64,
    /// Bytes fetched from the repository.
    pub fetched: AtomicU64,
}

/// How to treat an existing target.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Allow replacing an existing non-empty file or writing onto a block device.
    pub overwrite: bool,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// Set from outside (a signal handler) to stop the restore.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// Figures of a finished restore.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreSummary {
    /// Logical size written.
    pub logical_bytes: u64,
    /// Bytes of data chunks written.
    pub data_bytes: u64,
    /// Bytes read from the repository.
    pub fetched_bytes: u64,
}

/// Reads and decodes a manifest's root.
pub fn load_root(
    repo: &Repository,
    cache: &IndexCache,
    disk: &SnapshotDisk,
) -> Result<ManifestRoot> {
    let id = parse_id(&disk.manifest)?;
    let plain = read_chunk(repo, cache, &id)?;
    let root = ManifestRoot::decode(&plain)
        .map_err(|e| RepoError::corrupt(FileKind::Pack, &format!("(manifest root {id})"), e.0))?;
    if root.disk_size != disk.size {
        return Err(RepoError::corrupt(
            FileKind::Snapshot,
            &disk.name,
            format!(
                "manifest describes {} bytes, the snapshot says {}",
                root.disk_size, disk.size
            ),
        ));
    }
    Ok(root)
}

/// Parses a hex chunk id from a snapshot.
pub fn parse_id(hex_id: &str) -> Result<ChunkId> {
    let mut id = [0u8; 32];
    hex::decode_to_slice(hex_id, &mut id)
        .map_err(|_| RepoError::Invalid(format!("malformed chunk id {hex_id:?}")))?;
    Ok(ChunkId(id))
}

/// One data entry placed on the disk.
#[derive(Clone, Copy)]
struct Placed {
    offset: u64,
    len: u32,
    id: ChunkId,
    /// Where the chunk goes in its batch's buffer (ordered restores only).
    pos: usize,
}

/// Reads one page's entries with absolute offsets; returns data entries and holes.
pub fn load_page(
    repo: &Repository,
    cache: &IndexCache,
    root: &ManifestRoot,
    i: usize,
) -> Result<Vec<(u64, crate::format::manifest::ManifestEntry)>> {
    let id = root.pages[i];
    let plain = read_chunk(repo, cache, &id)?;
    let entries = decode_page(&plain, root.page_len(i))
        .map_err(|e| RepoError::corrupt(FileKind::Pack, &format!("(manifest page {id})"), e.0))?;
    let mut off = i as u64 * root.page_size;
    Ok(entries
        .into_iter()
        .map(|e| {
            let at = off;
            off += u64::from(e.len);
            (at, e)
        })
        .collect())
}

/// Buffers one restore worker reuses for every read, so restoring does not page-fault
/// fresh memory for each range.
struct Scratch {
    range: Vec<u8>,
    plain: Vec<u8>,
    decompressor: zstd::bulk::Decompressor<'static>,
}

/// Fetches one batch's chunks and hands each, verified, to `put`, which places it and
/// returns how many of its bytes it placed (counted as done and written). Chunks are
/// grouped by pack, and neighbouring blobs are read with one ranged read.
fn restore_batch(
    repo: &Repository,
    cache: &IndexCache,
    batch: &[Placed],
    progress: &RestoreProgress,
    put: &mut dyn FnMut(&Placed, &[u8]) -> Result<u64>,
) -> Result<u64> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Option<Scratch>> = const { std::cell::RefCell::new(None) };
    }
    SCRATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let decompressor = new_decompressor()?;
            *slot = Some(Scratch {
                range: Vec::new(),
                plain: Vec::new(),
                decompressor,
            });
        }
        match slot.as_mut() {
            Some(scratch) => restore_batch_with(repo, cache, batch, progress, scratch, put),
            None => Err(RepoError::Invalid("restore scratch missing".into())),
        }
    })
}

fn restore_batch_with(
    repo: &Repository,
    cache: &IndexCache,
    batch: &[Placed],
    progress: &RestoreProgress,
    scratch: &mut Scratch,
    put: &mut dyn FnMut(&Placed, &[u8]) -> Result<u64>,
) -> Result<u64> {
    let mut by_pack: BTreeMap<[u8; 32], Vec<(ChunkLocation, Placed)>> = BTreeMap::new();
    for p in batch {
        let loc = cache.lookup(&p.id)?.ok_or_else(|| RepoError::NotFound {
            kind: FileKind::Index,
            name: format!(
                "entry for chunk {} (needed at disk offset {})",
                p.id, p.offset
            ),
        })?;
        by_pack.entry(loc.pack).or_default().push((loc, *p));
    }
    let mut written = 0u64;
    for (pack, mut items) in by_pack {
        let pack_name = hex::encode(pack);
        let (salt, _) = cache.pack_info(&pack)?.ok_or_else(|| RepoError::NotFound {
            kind: FileKind::Index,
            name: format!("entry for pack {pack_name}"),
        })?;
        items.sort_by_key(|(l, _)| l.entry.offset);
        let cipher = repo.keys().pack_cipher(&salt);
        let mut i = 0;
        while i < items.len() {
            // Extend the read while the next blob is close and the read stays bounded.
            let start = items[i].0.entry.offset;
            let mut end = items[i].0.entry.end();
            let mut j = i + 1;
            while j < items.len() {
                let e = &items[j].0.entry;
                if e.offset > end + COALESCE_GAP || e.end().max(end) - start > MAX_READ {
                    break;
                }
                end = end.max(e.end());
                j += 1;
            }
            let len = (end - start) as usize;
            scratch.range.resize(len, 0);
            repo.backend()
                .read_range_into(FileKind::Pack, &pack_name, start, &mut scratch.range[..len])
                .map_err(|e| io_err(FileKind::Pack, &pack_name, e))?;
            progress.fetched.fetch_add(end - start, Ordering::Relaxed);
            // Items are sorted by blob offset, then by the chunk's place in the blob: each
            // blob is decoded once, and a chunk used at several disk offsets (a run of
            // equal entries) is checked once.
            items[i..j].sort_by_key(|(l, _)| (l.entry.offset, l.entry.chunk_offset, l.entry.id.0));
            for blob in items[i..j].chunk_by(|a, b| a.0.entry.offset == b.0.entry.offset) {
                let first = &blob[0].0.entry;
                one_blob(&pack_name, blob.iter().map(|(l, _)| &l.entry))?;
                let from = (first.offset - start) as usize;
                let stored = &mut scratch.range[from..from + first.stored_len as usize];
                let plain = open_blob_plain(
                    &cipher,
                    &pack_name,
                    first,
                    stored,
                    &mut scratch.decompressor,
                    &mut scratch.plain,
                )?;
                for uses in blob.chunk_by(|a, b| a.0.entry == b.0.entry) {
                    let chunk = chunk_in_blob(repo.keys(), &pack_name, &uses[0].0.entry, plain)?;
                    for (_, placed) in uses {
                        if chunk.len() != placed.len as usize {
                            return Err(RepoError::corrupt(
                                FileKind::Pack,
                                &pack_name,
                                format!("chunk {} has the wrong length for its place", placed.id),
                            ));
                        }
                        let placed_bytes = put(placed, chunk)?;
                        written += placed_bytes;
                        progress.done.fetch_add(placed_bytes, Ordering::Relaxed);
                    }
                }
            }
            i = j;
        }
    }
    Ok(written)
}

/// A pool of [`worker_count`] threads.
fn worker_pool(repo: &Repository, opts: &RestoreOptions) -> Result<(usize, rayon::ThreadPool)> {
    let threads = worker_count(repo, opts);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| RepoError::Invalid(format!("cannot start worker threads: {e}")))?;
    Ok((threads, pool))
}

/// The restore's worker threads: `opts.threads`, or two per core (while one waits on a
/// pack read or a page-cache write, the other decompresses: 1.95 s -> 1.65 s for a cold
/// 1.4 GiB restore on 2 cores), or as many as the backend wants reads in flight when that
/// is more (each thread waits on one read).
fn worker_count(repo: &Repository, opts: &RestoreOptions) -> usize {
    if opts.threads == 0 {
        (2 * std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(repo.backend().read_concurrency())
    } else {
        opts.threads
    }
}

/// Restored bytes between two early-writeback hints (see [`start_writeback`]).
const WRITEBACK_BYTES: u64 = 256 << 20;

/// Restores one disk of a snapshot to `path` (a new or empty file, an existing file with
/// `overwrite`, or a block device at least as large as the disk).
pub fn restore_disk(
    repo: &Repository,
    cache: &IndexCache,
    disk: &SnapshotDisk,
    path: &Path,
    opts: &RestoreOptions,
    progress: &RestoreProgress,
) -> Result<RestoreSummary> {
    let root = load_root(repo, cache, disk)?;
    let target = Target::open(path, root.disk_size, opts.overwrite)?;
    let threads = worker_count(repo, opts);
    let mut summary = RestoreSummary {
        logical_bytes: root.disk_size,
        ..Default::default()
    };
    let cancelled = || {
        opts.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    };
    // A stream, not windows: this thread walks the manifest pages and hands batches to
    // `threads` workers through a short queue, so no worker waits for the slowest batch
    // of a window (pack reads that wait on a disk or a network vary a lot).
    let (tx, rx) = crossbeam_channel::bounded::<Batch>(threads * 2);
    let written = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<RepoError>> = Mutex::new(None);
    let fail = |e: RepoError| {
        let mut slot = failure.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
        stop.store(true, Ordering::SeqCst);
    };
    // Writeback hints run on a thread of their own: `sync_file_range` submits the I/O
    // itself and took up to 0.12 s per call, time the manifest walk must not lose. (With
    // direct writes there is nothing to write back and the hints return at once.)
    let (wb_tx, wb_rx) = crossbeam_channel::bounded::<u64>(1);
    std::thread::scope(|s| {
        let file = target.file();
        s.spawn(move || {
            for upto in wb_rx {
                start_writeback(file, upto);
            }
        });
        for _ in 0..threads {
            let rx = rx.clone();
            let (target, written, stop, fail) = (&target, &written, &stop, &fail);
            s.spawn(move || {
                let mut buf = AlignedBuf::default();
                for batch in rx {
                    if stop.load(Ordering::Relaxed) {
                        continue;
                    }
                    if cancelled() {
                        fail(RepoError::Interrupted);
                        continue;
                    }
                    match restore_range(repo, cache, &batch, progress, target, &mut buf) {
                        Ok(n) => {
                            written.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => fail(e),
                    }
                }
            });
        }
        drop(rx);
        let result = send_batches(repo, cache, &root, &target, progress, &tx, &wb_tx, &stop);
        if let Err(e) = result {
            fail(e);
        }
        drop(tx);
        drop(wb_tx);
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    summary.data_bytes = written.into_inner();
    target.finish()?;
    summary.fetched_bytes = progress.fetched.load(Ordering::Relaxed);
    Ok(summary)
}

/// One unit of a restore's parallel work: the disk range `[start, end)` that this batch
/// alone writes, and every data entry that overlaps it. `start` is a multiple of
/// [`BLOCK`], and so is `end` unless it is the disk's end, so no two batches share a block
/// (which direct writes need). An entry across the boundary of two neighbouring batches
/// is in both; each decodes it and writes its own part.
struct Batch {
    start: u64,
    end: u64,
    placed: Vec<Placed>,
}

/// Decodes one batch into `buf` and writes its range; returns the data bytes written.
fn restore_range(
    repo: &Repository,
    cache: &IndexCache,
    batch: &Batch,
    progress: &RestoreProgress,
    target: &Target,
    buf: &mut AlignedBuf,
) -> Result<u64> {
    let span = (batch.end - batch.start) as usize;
    let out = buf.get(span.next_multiple_of(BLOCK as usize));
    // Zero what no entry covers: small zero ranges inside the batch, and the padding
    // past the disk's end.
    let mut covered = 0usize;
    for p in &batch.placed {
        let (from, to) = clip(p, batch);
        if from > covered {
            out[covered..from].fill(0);
        }
        covered = covered.max(to);
    }
    out[covered..].fill(0);
    let written = restore_batch(repo, cache, &batch.placed, progress, &mut |p, data| {
        let (from, to) = clip(p, batch);
        let skip = (batch.start + from as u64).saturating_sub(p.offset) as usize;
        out[from..to].copy_from_slice(&data[skip..skip + (to - from)]);
        Ok((to - from) as u64)
    })?;
    target.write_range(batch.start, batch.end, out)?;
    Ok(written)
}

/// The part of `p` inside `batch`, as positions in the batch's buffer.
fn clip(p: &Placed, batch: &Batch) -> (usize, usize) {
    let from = p.offset.clamp(batch.start, batch.end) - batch.start;
    let to = (p.offset + u64::from(p.len)).clamp(batch.start, batch.end) - batch.start;
    (from as usize, to as usize)
}

/// Walks the manifest pages in order: writes zero and unallocated ranges itself, and
/// sends the data entries to the workers as [`Batch`]es of at most [`BATCH_BYTES`] (plus
/// one chunk), cut at block boundaries and around every zero range that holds a whole
/// block; every [`WRITEBACK_BYTES`] it offers `writeback` the disk offset reached (dropped
/// when the writeback thread is still busy: the next offer covers it). Stops early,
/// without error, once `stop` is set or the workers are gone (their failure is recorded
/// by them).
#[allow(clippy::too_many_arguments)]
fn send_batches(
    repo: &Repository,
    cache: &IndexCache,
    root: &ManifestRoot,
    target: &Target,
    progress: &RestoreProgress,
    tx: &crossbeam_channel::Sender<Batch>,
    writeback: &crossbeam_channel::Sender<u64>,
    stop: &AtomicBool,
) -> Result<()> {
    let mut batcher = Batcher::new(root.disk_size, BATCH_BYTES);
    let mut since_writeback = 0u64;
    // False once the workers are gone.
    let mut send = |batch: Batch| -> bool {
        since_writeback += batch.end - batch.start;
        let start = batch.start;
        let sent = tx.send(batch).is_ok();
        if since_writeback >= WRITEBACK_BYTES {
            let _ = writeback.try_send(start);
            since_writeback = 0;
        }
        sent
    };
    for i in 0..root.pages.len() {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        for (offset, e) in load_page(repo, cache, root, i)? {
            let len = u64::from(e.len);
            let full = match e.kind {
                EntryKind::Data(id) => batcher.data(Placed {
                    offset,
                    len: e.len,
                    id,
                    pos: 0,
                }),
                EntryKind::Zero | EntryKind::Unallocated => {
                    // A device gets the whole range written with zeros here; the batches
                    // write the same zeros at its edges, through the same page cache.
                    target.write_zeros(offset, len)?;
                    progress.done.fetch_add(len, Ordering::Relaxed);
                    batcher.zero(offset, len)
                }
            };
            if let Some(batch) = full {
                if !send(batch) {
                    return Ok(());
                }
            }
        }
    }
    if let Some(batch) = batcher.finish() {
        send(batch);
    }
    Ok(())
}

/// Cuts a disk's extents, in disk order, into [`Batch`]es: at most `max_range` bytes of
/// disk each (plus one entry), cut at block boundaries and around every zero range that
/// holds a whole block (those blocks belong to no batch: they stay holes).
struct Batcher {
    disk_size: u64,
    max_range: u64,
    /// The batch being filled; its `end` is set when it is cut.
    open: Batch,
}

impl Batcher {
    fn new(disk_size: u64, max_range: u64) -> Self {
        Batcher {
            disk_size,
            max_range,
            open: Batch {
                start: 0,
                end: 0,
                placed: Vec::new(),
            },
        }
    }

    /// Adds the next data entry; returns a batch that is complete.
    fn data(&mut self, p: Placed) -> Option<Batch> {
        let mut full = None;
        if p.offset + u64::from(p.len) - self.open.start > self.max_range {
            let cut = p.offset / BLOCK * BLOCK;
            if cut > self.open.start {
                full = self.cut(cut, cut);
            }
        }
        self.open.placed.push(p);
        full
    }

    /// Adds the next zero or unallocated range; returns a batch that is complete.
    fn zero(&mut self, offset: u64, len: u64) -> Option<Batch> {
        let end = offset + len;
        let inner_start = offset.next_multiple_of(BLOCK);
        let inner_end = if end == self.disk_size {
            end
        } else {
            end / BLOCK * BLOCK
        };
        // Partial blocks at the range's edges belong to the neighbouring batches, whose
        // buffers hold zeros there.
        if inner_start < inner_end {
            self.cut(inner_start, inner_end)
        } else {
            None
        }
    }

    /// The last batch, if it holds data.
    fn finish(&mut self) -> Option<Batch> {
        self.cut(self.disk_size, self.disk_size)
    }

    /// Ends the open batch at `end` and opens the next at `next_start`, carrying over the
    /// entries that reach past `next_start`. Returns the ended batch unless it is empty.
    fn cut(&mut self, end: u64, next_start: u64) -> Option<Batch> {
        // Entries are sorted and disjoint: those after the last one that ends by
        // `next_start` all reach past it.
        let keep = self
            .open
            .placed
            .iter()
            .rposition(|p| p.offset + u64::from(p.len) <= next_start)
            .map_or(0, |i| i + 1);
        let carry = self.open.placed[keep..].to_vec();
        let mut full = std::mem::replace(
            &mut self.open,
            Batch {
                start: next_start,
                end: 0,
                placed: carry,
            },
        );
        full.end = end;
        // An entry that starts at or past `end` (after a data cut inside the block
        // before it) belongs to the next batch only.
        let inside = full.placed.partition_point(|p| p.offset < end);
        full.placed.truncate(inside);
        (!full.placed.is_empty()).then_some(full)
    }
}

/// Asks the kernel to start writing the file's dirty pages before `upto` (0: all of them)
/// back now, so that the final `fsync` finds little left to do: the disk writes while the
/// workers decompress. Best effort: where the call is not supported nothing changes.
fn start_writeback(file: &File, upto: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let upto = libc::off64_t::try_from(upto).unwrap_or(0);
        // SAFETY: `sync_file_range` reads no memory of ours; the descriptor is valid for
        // the duration of the call because `file` is borrowed. The result is ignored on
        // purpose (a hint; the final fsync decides durability).
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, upto, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, upto);
}

/// Logical bytes per batch of an ordered restore: a window of `threads` batches is held
/// in memory at once.
const ORDERED_BATCH_BYTES: u64 = 4 << 20;

/// Restores one disk (or config file) of a snapshot into `writer`, which receives the data
/// front to back (zero and unallocated ranges are not sent: the writer leaves them
/// unallocated). Chunks are fetched in parallel, a bounded window of batches at a time.
/// The writer is not finished; the caller does that.
pub fn restore_disk_ordered(
    repo: &Repository,
    cache: &IndexCache,
    disk: &SnapshotDisk,
    writer: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    opts: &RestoreOptions,
    progress: &RestoreProgress,
) -> Result<RestoreSummary> {
    let root = load_root(repo, cache, disk)?;
    let (threads, pool) = worker_pool(repo, opts)?;
    let mut summary = RestoreSummary {
        logical_bytes: root.disk_size,
        ..Default::default()
    };
    let cancelled = || {
        opts.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    };
    for i in 0..root.pages.len() {
        let entries = load_page(repo, cache, &root, i)?;
        // Batches of placements in disk order, each with the size of its buffer.
        let mut batches: Vec<(Vec<Placed>, usize)> = Vec::new();
        for (offset, e) in entries {
            match e.kind {
                EntryKind::Data(id) => {
                    let fresh = batches
                        .last()
                        .is_none_or(|(_, bytes)| *bytes as u64 >= ORDERED_BATCH_BYTES);
                    if fresh {
                        batches.push((Vec::new(), 0));
                    }
                    if let Some((b, bytes)) = batches.last_mut() {
                        b.push(Placed {
                            offset,
                            len: e.len,
                            id,
                            pos: *bytes,
                        });
                        *bytes += e.len as usize;
                    }
                }
                EntryKind::Zero | EntryKind::Unallocated => {
                    progress.done.fetch_add(u64::from(e.len), Ordering::Relaxed);
                }
            }
        }
        for window in batches.chunks(threads.max(1)) {
            if cancelled() {
                return Err(RepoError::Interrupted);
            }
            let filled: Result<Vec<Vec<u8>>> = pool.install(|| {
                window
                    .par_iter()
                    .map(|(b, bytes)| {
                        let mut buf = vec![0u8; *bytes];
                        restore_batch(repo, cache, b, progress, &mut |p, data| {
                            buf[p.pos..p.pos + data.len()].copy_from_slice(data);
                            Ok(data.len() as u64)
                        })?;
                        Ok(buf)
                    })
                    .collect()
            });
            for ((placed, _), buf) in window.iter().zip(filled?) {
                // Hand over runs of placements that are adjacent on the disk at once.
                let mut k = 0;
                while k < placed.len() {
                    let start = placed[k].offset;
                    let from = placed[k].pos;
                    let mut end = start + u64::from(placed[k].len);
                    let mut j = k + 1;
                    while j < placed.len() && placed[j].offset == end {
                        end += u64::from(placed[j].len);
                        j += 1;
                    }
                    let len = (end - start) as usize;
                    writer(start, &buf[from..from + len])?;
                    summary.data_bytes += len as u64;
                    k = j;
                }
            }
        }
    }
    summary.fetched_bytes = progress.fetched.load(Ordering::Relaxed);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::{start_writeback, Batch, Batcher, Placed, BLOCK};
    use vmvault_chunker::ChunkId;

    /// A random disk layout: data entries of all sizes (tiny ones too), zero ranges with
    /// and without whole blocks, zero ranges next to each other, as `(offset, len, data)`.
    fn layout(seed: u64) -> (Vec<(u64, u64, bool)>, u64) {
        let mut x = seed | 1;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut out = Vec::new();
        let mut at = 0u64;
        for _ in 0..400 {
            let len = match next(6) {
                0 => 1 + next(5000),
                1 => 1 + next(3 * BLOCK),
                2 => 1 + next(2 << 20),
                _ => 16_384 + next(300_000),
            };
            let data = next(3) != 0;
            out.push((at, len, data));
            at += len;
        }
        (out, at)
    }

    fn batches_of(entries: &[(u64, u64, bool)], size: u64, max_range: u64) -> Vec<Batch> {
        let mut b = Batcher::new(size, max_range);
        let mut out = Vec::new();
        for &(offset, len, data) in entries {
            let full = if data {
                b.data(Placed {
                    offset,
                    len: len as u32,
                    id: ChunkId([0; 32]),
                    pos: 0,
                })
            } else {
                b.zero(offset, len)
            };
            out.extend(full);
        }
        out.extend(b.finish());
        out
    }

    /// Batches never share a block, start on block boundaries, hold every data entry that
    /// overlaps their range, and together cover every data byte exactly once.
    #[test]
    fn batches_cover_every_data_byte_once_without_sharing_a_block() {
        for seed in 1..40u64 {
            let (entries, size) = layout(seed * 0x9e37_79b9);
            let max_range = [BLOCK, 100_000, 1 << 20, 8 << 20][seed as usize % 4];
            let batches = batches_of(&entries, size, max_range);
            let mut last_end = 0;
            for b in &batches {
                assert_eq!(b.start % BLOCK, 0, "seed {seed}");
                assert!(b.end % BLOCK == 0 || b.end == size, "seed {seed}");
                assert!(b.start < b.end && b.start >= last_end, "seed {seed}");
                assert!(b.end - b.start <= max_range + 2 * (2 << 20) + BLOCK);
                last_end = b.end;
                for &(offset, len, data) in &entries {
                    let overlaps = offset < b.end && offset + len > b.start;
                    let held = b.placed.iter().any(|p| p.offset == offset);
                    if data {
                        assert_eq!(
                            overlaps,
                            held,
                            "seed {seed}: entry at {offset}+{len} batch {}..{} {:?}",
                            b.start,
                            b.end,
                            b.placed
                                .iter()
                                .map(|p| (p.offset, p.len))
                                .collect::<Vec<_>>()
                        );
                    } else {
                        assert!(!held);
                    }
                }
            }
            for &(offset, len, data) in entries.iter().filter(|e| e.2) {
                let covered: u64 = batches
                    .iter()
                    .map(|b| {
                        (offset + len)
                            .min(b.end)
                            .saturating_sub(offset.max(b.start))
                    })
                    .sum();
                assert_eq!(covered, len, "seed {seed}: entry at {offset} ({data})");
            }
        }
    }
    use std::io::{Read, Seek, SeekFrom, Write};

    #[test]
    fn start_writeback_leaves_the_file_intact() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        start_writeback(&f, 1 << 19);
        start_writeback(&f, 0);
        f.sync_all().unwrap();
        let mut back = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }
}
