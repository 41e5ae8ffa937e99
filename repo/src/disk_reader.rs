//! Random access to a disk of a snapshot without restoring it: what browsing guest file
//! systems, `dump` and the FUSE mount read through.
//!
//! A read finds its manifest page (at most two decoded pages are kept), binary-searches
//! the page's entries, answers zero and unallocated ranges without I/O, and fetches the
//! chunks it needs that are not in a byte-bounded LRU of decoded chunks, in parallel.
//! When reads follow each other, the next chunks are fetched with the current ones.

use crate::blob::read_chunks;
use crate::cache::IndexCache;
use crate::error::{RepoError, Result};
use crate::format::manifest::{EntryKind, ManifestEntry, ManifestRoot};
use crate::format::snapshot::SnapshotDisk;
use crate::repository::Repository;
use crate::restore::{load_page, load_root};
use std::collections::HashMap;
use std::sync::Arc;
use vmvault_chunker::ChunkId;
use vmvault_ingest::guest::{GuestError, Result as GuestResult, VolumeRead};
use vmvault_ingest::{Extent, ExtentKind, IngestError};

/// Decoded chunk bytes kept, at most.
const CHUNK_CACHE_BYTES: usize = 64 << 20;
/// Chunks fetched ahead of a sequential read.
const READAHEAD_CHUNKS: usize = 8;
/// Decoded manifest pages kept.
const PAGES_KEPT: usize = 2;

/// One page's entries with their absolute offsets, sorted.
type Page = Vec<(u64, ManifestEntry)>;

/// A read-only, random-access view of one disk (or config file) of a snapshot.
pub struct SnapshotDiskReader<'r> {
    repo: &'r Repository,
    cache: &'r IndexCache,
    name: String,
    root: ManifestRoot,
    pages: Vec<(usize, Arc<Page>)>,
    chunks: HashMap<ChunkId, (Arc<Vec<u8>>, u64)>,
    chunk_bytes: usize,
    tick: u64,
    /// Where the previous read ended, to detect sequential reading.
    last_end: u64,
}

impl<'r> SnapshotDiskReader<'r> {
    /// Opens `disk` of a snapshot; its manifest root is read and checked now.
    pub fn open(repo: &'r Repository, cache: &'r IndexCache, disk: &SnapshotDisk) -> Result<Self> {
        let root = load_root(repo, cache, disk)?;
        Ok(SnapshotDiskReader {
            repo,
            cache,
            name: disk.name.clone(),
            root,
            pages: Vec::new(),
            chunks: HashMap::new(),
            chunk_bytes: 0,
            tick: 0,
            last_end: u64::MAX,
        })
    }

    /// The disk's logical size in bytes.
    pub fn size(&self) -> u64 {
        self.root.disk_size
    }

    fn page(&mut self, i: usize) -> Result<Arc<Page>> {
        if let Some((_, p)) = self.pages.iter().find(|(n, _)| *n == i) {
            return Ok(p.clone());
        }
        let page = Arc::new(load_page(self.repo, self.cache, &self.root, i)?);
        if self.pages.len() >= PAGES_KEPT {
            self.pages.remove(0);
        }
        self.pages.push((i, page.clone()));
        Ok(page)
    }

    /// The entries overlapping `[offset, end)`, with their offsets, in disk order.
    fn entries(&mut self, offset: u64, end: u64) -> Result<Vec<(u64, ManifestEntry)>> {
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let i = (pos / self.root.page_size) as usize;
            let page = self.page(i)?;
            let first = page.partition_point(|(at, e)| at + u64::from(e.len) <= pos);
            let mut reached = pos;
            for &(at, e) in &page[first..] {
                if at >= end {
                    break;
                }
                out.push((at, e));
                reached = at + u64::from(e.len);
            }
            if reached <= pos {
                return Err(RepoError::corrupt(
                    crate::backend::FileKind::Pack,
                    &format!("(manifest page {i} of disk {})", self.name),
                    format!("no entry covers offset {pos}"),
                ));
            }
            pos = reached;
        }
        Ok(out)
    }

    /// Makes sure every chunk in `ids` is in the chunk cache, fetching the missing ones in
    /// parallel.
    fn fetch(&mut self, ids: &[ChunkId]) -> Result<()> {
        let mut missing: Vec<ChunkId> = ids
            .iter()
            .filter(|id| !self.chunks.contains_key(id))
            .copied()
            .collect();
        missing.sort_unstable_by_key(|id| id.0);
        missing.dedup();
        let (repo, cache) = (self.repo, self.cache);
        for (id, bytes) in read_chunks(repo, cache, &missing)? {
            self.tick += 1;
            self.chunk_bytes += bytes.len();
            self.chunks.insert(id, (Arc::new(bytes), self.tick));
        }
        self.evict(ids);
        Ok(())
    }

    /// Drops least recently used chunks beyond the byte budget, never those in `keep`.
    fn evict(&mut self, keep: &[ChunkId]) {
        while self.chunk_bytes > CHUNK_CACHE_BYTES {
            let victim = self
                .chunks
                .iter()
                .filter(|(id, _)| !keep.contains(id))
                .min_by_key(|(_, (_, t))| *t)
                .map(|(id, _)| *id);
            let Some(id) = victim else { break };
            if let Some((b, _)) = self.chunks.remove(&id) {
                self.chunk_bytes -= b.len();
            }
        }
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns how many (fewer only at the end
    /// of the disk). Every chunk is authenticated and its id checked as it is fetched.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let end = offset.saturating_add(buf.len() as u64).min(self.size());
        if offset >= end {
            return Ok(0);
        }
        let sequential = offset == self.last_end;
        let entries = self.entries(offset, end)?;
        let mut ids: Vec<ChunkId> = entries
            .iter()
            .filter_map(|(_, e)| match e.kind {
                EntryKind::Data(id) => Some(id),
                _ => None,
            })
            .collect();
        let wanted = ids.len();
        if sequential {
            let ahead_end = entries.last().map_or(end, |(at, e)| at + u64::from(e.len));
            let mut pos = ahead_end;
            while ids.len() < wanted + READAHEAD_CHUNKS && pos < self.size() {
                let more = self.entries(pos, (pos + (4 << 20)).min(self.size()))?;
                for (_, e) in &more {
                    if let EntryKind::Data(id) = e.kind {
                        ids.push(id);
                    }
                }
                pos = more
                    .last()
                    .map_or(self.size(), |(at, e)| at + u64::from(e.len));
            }
            ids.truncate(wanted + READAHEAD_CHUNKS);
        }
        self.fetch(&ids)?;
        for (at, e) in &entries {
            let (from, to) = ((*at).max(offset), (at + u64::from(e.len)).min(end));
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            match e.kind {
                EntryKind::Zero | EntryKind::Unallocated => dst.fill(0),
                EntryKind::Data(id) => {
                    self.tick += 1;
                    let tick = self.tick;
                    let Some((bytes, t)) = self.chunks.get_mut(&id) else {
                        return Err(RepoError::Invalid(format!("chunk {id} vanished")));
                    };
                    *t = tick;
                    let src_from = (from - at) as usize;
                    let src = bytes.get(src_from..src_from + dst.len()).ok_or_else(|| {
                        RepoError::Invalid(format!("chunk {id} is shorter than its manifest entry"))
                    })?;
                    dst.copy_from_slice(src);
                }
            }
        }
        self.last_end = end;
        Ok((end - offset) as usize)
    }

    /// The allocation map of `[offset, offset + len)` (clamped to the disk): data, zero
    /// and unallocated runs as the backup recorded them.
    pub fn extents(&mut self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let end = offset.saturating_add(len).min(self.size());
        let mut out = Vec::new();
        for (at, e) in self.entries(offset, end)? {
            let (from, to) = (at.max(offset), (at + u64::from(e.len)).min(end));
            let kind = match e.kind {
                EntryKind::Data(_) => ExtentKind::Data,
                EntryKind::Zero => ExtentKind::Zero,
                EntryKind::Unallocated => ExtentKind::Unallocated,
            };
            vmvault_ingest::push_merged(
                &mut out,
                Extent {
                    offset: from,
                    len: to - from,
                    kind,
                },
            );
        }
        Ok(out)
    }
}

impl vmvault_ingest::DiskSource for SnapshotDiskReader<'_> {
    fn size(&self) -> u64 {
        self.root.disk_size
    }

    fn extents(&mut self, offset: u64, len: u64) -> std::result::Result<Vec<Extent>, IngestError> {
        SnapshotDiskReader::extents(self, offset, len).map_err(|e| to_ingest(&self.name, offset, e))
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), IngestError> {
        let n = SnapshotDiskReader::read_at(self, offset, buf)
            .map_err(|e| to_ingest(&self.name, offset, e))?;
        if n < buf.len() {
            return Err(IngestError::Truncated {
                what: self.name.clone(),
                expected: offset + buf.len() as u64,
                got: offset + n as u64,
            });
        }
        Ok(())
    }

    fn format_name(&self) -> &'static str {
        "snapshot"
    }
}

fn to_ingest(name: &str, offset: u64, e: RepoError) -> IngestError {
    IngestError::Read {
        what: format!("snapshot disk {name}"),
        offset,
        source: std::io::Error::other(e.to_string()),
    }
}

/// A snapshot's disk as a guest volume: what partition, LVM and file system browsing read
/// through. Reads are serialised by a mutex (each one still fetches its chunks in
/// parallel); a read error reaches the caller as [`GuestError::Io`] with the cause.
pub struct SnapshotVolume {
    reader: std::sync::Mutex<SnapshotDiskReader<'static>>,
    size: u64,
    name: String,
}

impl SnapshotVolume {
    /// Opens `disk` of a snapshot. The repository and cache must outlive every view,
    /// hence `'static` (commands that browse keep them for the whole process).
    pub fn open(
        repo: &'static Repository,
        cache: &'static IndexCache,
        disk: &SnapshotDisk,
    ) -> Result<Self> {
        let reader = SnapshotDiskReader::open(repo, cache, disk)?;
        Ok(SnapshotVolume {
            size: reader.size(),
            reader: std::sync::Mutex::new(reader),
            name: disk.name.clone(),
        })
    }

    /// The allocation map of `[offset, offset + len)`, as the backup recorded it.
    pub fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extents(offset, len)
    }
}

impl VolumeRead for SnapshotVolume {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> GuestResult<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.size)
        {
            return Err(vmvault_ingest::guest::view::out_of_range(
                &self.name,
                offset,
                buf.len(),
            ));
        }
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let n = r.read_at(offset, buf).map_err(|e| GuestError::Io {
            what: self.name.clone(),
            offset,
            source: std::io::Error::other(e.to_string()),
        })?;
        if n < buf.len() {
            return Err(vmvault_ingest::guest::view::out_of_range(
                &self.name,
                offset,
                buf.len(),
            ));
        }
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// A snapshot's disk (or a config file or catalog stored like one) as a sequential
/// `Read`, for streams such as catalogs.
pub struct SnapshotStream<'r> {
    reader: SnapshotDiskReader<'r>,
    pos: u64,
}

impl<'r> SnapshotStream<'r> {
    /// Opens `disk` for reading from its start.
    pub fn open(repo: &'r Repository, cache: &'r IndexCache, disk: &SnapshotDisk) -> Result<Self> {
        Ok(SnapshotStream {
            reader: SnapshotDiskReader::open(repo, cache, disk)?,
            pos: 0,
        })
    }
}

impl std::io::Read for SnapshotStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self
            .reader
            .read_at(self.pos, buf)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.pos += n as u64;
        Ok(n)
    }
}
