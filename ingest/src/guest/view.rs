//! Random-access, read-only views of disks and volumes, shareable between threads, and
//! the `Read + Seek` adapter file system crates want.

use super::{GuestError, Result};
use crate::image_file::{ImageFile, MemFile, ReadAt};
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;

/// A disk or volume that can be read at any offset, from any thread.
pub trait VolumeRead: Send + Sync {
    /// Size in bytes, fixed.
    fn size(&self) -> u64;

    /// Fills `buf` from `offset`; a read that does not fit inside [`VolumeRead::size`]
    /// fails ([`GuestError::Io`] with [`std::io::ErrorKind::UnexpectedEof`]) rather than
    /// returning short data.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// What to call the view in messages ("web01-disk0", "web01-disk0/p2").
    fn name(&self) -> &str;
}

/// The error for a read at `offset` of `len` bytes that does not fit in `view`.
pub fn out_of_range(view: &str, offset: u64, len: usize) -> GuestError {
    GuestError::Io {
        what: view.to_string(),
        offset,
        source: std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("a read of {len} bytes goes past the end"),
        ),
    }
}

fn fits(size: u64, offset: u64, len: usize) -> bool {
    offset
        .checked_add(len as u64)
        .is_some_and(|end| end <= size)
}

fn read_at_file(f: &dyn ReadAt, offset: u64, buf: &mut [u8]) -> Result<()> {
    if !fits(f.len(), offset, buf.len()) {
        return Err(out_of_range(f.name(), offset, buf.len()));
    }
    f.read_exact_at(offset, buf)
        .map_err(|source| GuestError::Io {
            what: f.name().to_string(),
            offset,
            source,
        })
}

impl VolumeRead for ImageFile {
    fn size(&self) -> u64 {
        ReadAt::len(self)
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        read_at_file(self, offset, buf)
    }
    fn name(&self) -> &str {
        ReadAt::name(self)
    }
}

/// Bytes in memory as a volume (tests, fuzzing).
pub type MemView = MemFile;

impl VolumeRead for MemFile {
    fn size(&self) -> u64 {
        ReadAt::len(self)
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        read_at_file(self, offset, buf)
    }
    fn name(&self) -> &str {
        ReadAt::name(self)
    }
}

/// A byte range of another view: a partition of a disk, a file system inside a volume.
pub struct SliceView {
    inner: Arc<dyn VolumeRead>,
    start: u64,
    len: u64,
    name: String,
}

impl SliceView {
    /// The range `[start, start + len)` of `inner`, called `name`; fails when the range
    /// does not lie inside `inner`.
    pub fn new(inner: Arc<dyn VolumeRead>, start: u64, len: u64, name: String) -> Result<Self> {
        if start.checked_add(len).is_none_or(|end| end > inner.size()) {
            return Err(GuestError::corrupt(
                name,
                format!(
                    "the range {start}+{len} lies outside {} ({} bytes)",
                    inner.name(),
                    inner.size()
                ),
            ));
        }
        Ok(SliceView {
            inner,
            start,
            len,
            name,
        })
    }

    /// Where the slice starts in the view it was cut from.
    pub fn start(&self) -> u64 {
        self.start
    }
}

impl VolumeRead for SliceView {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if !fits(self.len, offset, buf.len()) {
            return Err(out_of_range(&self.name, offset, buf.len()));
        }
        self.inner.read_exact_at(self.start + offset, buf)
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// `Read + Seek` over a view, for crates that want a stream. Reads stop short at the end
/// of the view; writes always fail (everything here is read-only).
pub struct VolumeCursor {
    view: Arc<dyn VolumeRead>,
    pos: u64,
}

impl VolumeCursor {
    /// A cursor at offset 0 of `view`.
    pub fn new(view: Arc<dyn VolumeRead>) -> Self {
        VolumeCursor { view, pos: 0 }
    }
}

fn to_io(e: GuestError) -> std::io::Error {
    match e {
        GuestError::Io { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    }
}

impl Read for VolumeCursor {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.view.size().saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.view
            .read_exact_at(self.pos, &mut buf[..n])
            .map_err(to_io)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for VolumeCursor {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.view.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let new = new.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek out of range")
        })?;
        self.pos = new;
        Ok(new)
    }
}

impl Write for VolumeCursor {
    fn write(&mut self, _buf: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "guest volumes are read-only",
        ))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A [`crate::DiskSource`] (an image being backed up) as a volume: reads are serialised
/// through a mutex. Unallocated ranges read as zeros, as the guest sees them.
///
/// Small reads go through a read-around cache of [`VIEW_BLOCK`]-sized, page-aligned
/// blocks ([`VIEW_CACHE_BLOCKS`] of them, least recently used evicted): a file-system
/// walk (`ext4-view` keeps only a few blocks) reads the same metadata again and again in
/// small pieces. One aligned block read replaces dozens of small reads and copies, and a
/// source reading with direct I/O can serve it without the page cache.
pub struct DiskSourceView {
    inner: std::sync::Mutex<ViewState>,
    size: u64,
    name: String,
}

/// Size of one cached block of a [`DiskSourceView`].
pub const VIEW_BLOCK: usize = 128 << 10;
/// Blocks a [`DiskSourceView`] keeps (16 MiB).
pub const VIEW_CACHE_BLOCKS: usize = 128;
/// Memory alignment of cached blocks (direct I/O needs page alignment).
const VIEW_ALIGN: usize = 4096;

struct ViewState {
    source: Box<dyn crate::DiskSource>,
    /// Block index → slot in `blocks`.
    index: std::collections::HashMap<u64, usize>,
    blocks: Vec<CachedBlock>,
    tick: u64,
}

struct CachedBlock {
    block: u64,
    last_used: u64,
    /// `VIEW_BLOCK + VIEW_ALIGN` bytes; the block's data starts at `start`.
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl CachedBlock {
    fn data(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }
}

impl ViewState {
    /// The cached block `block` of a disk of `size` bytes, read on a miss.
    fn block(
        &mut self,
        block: u64,
        size: u64,
    ) -> std::result::Result<&CachedBlock, crate::IngestError> {
        self.tick += 1;
        let tick = self.tick;
        let slot = match self.index.get(&block) {
            Some(&slot) => slot,
            None => {
                let slot = if self.blocks.len() < VIEW_CACHE_BLOCKS {
                    let mem = vec![0u8; VIEW_BLOCK + VIEW_ALIGN];
                    let start = mem.as_ptr().align_offset(VIEW_ALIGN).min(VIEW_ALIGN);
                    self.blocks.push(CachedBlock {
                        block,
                        last_used: 0,
                        mem,
                        start,
                        len: 0,
                    });
                    self.blocks.len() - 1
                } else {
                    let (slot, old) = self
                        .blocks
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, b)| b.last_used)
                        .map(|(i, b)| (i, b.block))
                        .unwrap_or((0, u64::MAX));
                    self.index.remove(&old);
                    slot
                };
                let at = block * VIEW_BLOCK as u64;
                let b = &mut self.blocks[slot];
                // Mark the slot empty until the read succeeds.
                b.len = 0;
                let len = (size - at).min(VIEW_BLOCK as u64) as usize;
                self.source
                    .read_at(at, &mut b.mem[b.start..b.start + len])?;
                b.block = block;
                b.len = len;
                self.index.insert(block, slot);
                slot
            }
        };
        let b = &mut self.blocks[slot];
        b.last_used = tick;
        Ok(b)
    }
}

impl DiskSourceView {
    /// Wraps `source`, called `name` in messages.
    pub fn new(source: Box<dyn crate::DiskSource>, name: String) -> Self {
        DiskSourceView {
            size: source.size(),
            inner: std::sync::Mutex::new(ViewState {
                source,
                index: std::collections::HashMap::new(),
                blocks: Vec::new(),
                tick: 0,
            }),
            name,
        }
    }
}

impl VolumeRead for DiskSourceView {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if !fits(self.size, offset, buf.len()) {
            return Err(out_of_range(&self.name, offset, buf.len()));
        }
        let io_err = |at: u64, e: crate::IngestError| GuestError::Io {
            what: self.name.clone(),
            offset: at,
            source: std::io::Error::other(e),
        };
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if buf.len() >= VIEW_BLOCK {
            return state
                .source
                .read_at(offset, buf)
                .map_err(|e| io_err(offset, e));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let block = at / VIEW_BLOCK as u64;
            let b = state.block(block, self.size).map_err(|e| io_err(at, e))?;
            let from = (at - block * VIEW_BLOCK as u64) as usize;
            let take = (b.len - from).min(buf.len() - done);
            buf[done..done + take].copy_from_slice(&b.data()[from..from + take]);
            done += take;
        }
        Ok(())
    }
    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk in memory, counting the reads that reach it.
    struct CountingDisk {
        bytes: Vec<u8>,
        reads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl crate::DiskSource for CountingDisk {
        fn size(&self) -> u64 {
            self.bytes.len() as u64
        }
        fn extents(
            &mut self,
            offset: u64,
            len: u64,
        ) -> std::result::Result<Vec<crate::Extent>, crate::IngestError> {
            Ok(vec![crate::Extent {
                offset,
                len,
                kind: crate::ExtentKind::Data,
            }])
        }
        fn read_at(
            &mut self,
            offset: u64,
            buf: &mut [u8],
        ) -> std::result::Result<(), crate::IngestError> {
            self.reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let at = offset as usize;
            buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
            Ok(())
        }
        fn format_name(&self) -> &'static str {
            "memory"
        }
    }

    #[test]
    fn cached_reads_return_the_source_bytes_and_spare_the_source() {
        let size = VIEW_BLOCK * (VIEW_CACHE_BLOCKS + 20) + 777;
        let bytes: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4099) as u8).collect();
        let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let view = DiskSourceView::new(
            Box::new(CountingDisk {
                bytes: bytes.clone(),
                reads: reads.clone(),
            }),
            "mem".into(),
        );
        let mut state = 12345u64;
        let mut rnd = |n: usize| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize % n
        };
        // Small reads anywhere (across block boundaries, up to the last byte), large
        // ones that bypass the cache, and repeats that must not reach the source.
        for i in 0..5000 {
            let len = if i % 97 == 0 {
                VIEW_BLOCK + rnd(3 * VIEW_BLOCK)
            } else {
                1 + rnd(40_000)
            };
            let at = rnd(size - len + 1);
            let mut buf = vec![0u8; len];
            view.read_exact_at(at as u64, &mut buf).unwrap();
            assert_eq!(buf, &bytes[at..at + len], "read of {len} at {at}");
        }
        let mut tail = [0u8; 10];
        view.read_exact_at(size as u64 - 10, &mut tail).unwrap();
        assert_eq!(tail, bytes[size - 10..]);
        assert!(view.read_exact_at(size as u64 - 9, &mut tail).is_err());
        // Re-reading one block's worth in small pieces costs the source nothing.
        let mut small = [0u8; 512];
        view.read_exact_at(3 * VIEW_BLOCK as u64, &mut small)
            .unwrap();
        let before = reads.load(std::sync::atomic::Ordering::Relaxed);
        for k in 0..(VIEW_BLOCK / 512) {
            view.read_exact_at((3 * VIEW_BLOCK + 512 * k) as u64, &mut small)
                .unwrap();
            assert_eq!(small, bytes[3 * VIEW_BLOCK + 512 * k..][..512]);
        }
        assert_eq!(reads.load(std::sync::atomic::Ordering::Relaxed), before);
    }
}
