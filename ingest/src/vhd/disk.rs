//! The VHD [`DiskSource`]: fixed disks map straight onto the file; dynamic and
//! differencing disks go through the BAT and the per-block sector bitmaps.

use super::format::{self, DynamicHeader, BAT_UNUSED, HEADER_SIZE, SECTOR};
use super::{corrupt, FORMAT};
use crate::image_file::{read_checked, read_into, ReadAt};
use crate::{push_merged, DiskSource, Extent, ExtentKind, IngestError};

/// Sector bitmaps kept in memory at most (each one sector for 2 MiB blocks).
const BITMAP_CACHE: usize = 32;

/// Where the metadata of a dynamic disk sits, so that blocks overlapping it are refused.
pub(super) struct Metadata {
    /// A footer copy occupies the first sector.
    pub has_head_copy: bool,
    /// Offset of the dynamic disk header.
    pub header_offset: u64,
}

/// The block map of a dynamic or differencing disk, validated against the file.
pub(super) struct Sparse {
    block_size: u64,
    bitmap_size: u64,
    /// One entry per block of the disk (entries past the disk's size are not kept).
    bat: Vec<u32>,
    /// The parent of a differencing disk.
    parent: Option<Box<dyn DiskSource>>,
    bitmaps: BitmapCache,
}

/// Where a run of the disk's bytes comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Src {
    /// Stored in the file from this offset.
    Host(u64),
    /// An unwritten sector of an allocated block of a dynamic disk: zeros.
    Zero,
    /// An unallocated block of a dynamic disk.
    Unalloc,
    /// Not in this differencing disk: the parent's bytes.
    Parent,
}

/// A run of the disk: `len` bytes from `off`, from `src`.
#[derive(Clone, Copy, Debug)]
struct Piece {
    off: u64,
    len: u64,
    src: Src,
}

impl Sparse {
    /// Reads the BAT entries covering a disk of `size` bytes and checks every allocated
    /// block: inside the file, clear of the headers and the BAT, not overlapping another.
    pub fn load(
        file: &dyn ReadAt,
        header: &DynamicHeader,
        size: u64,
        meta: &Metadata,
        parent: Option<Box<dyn DiskSource>>,
    ) -> Result<Self, IngestError> {
        let block_size = u64::from(header.block_size);
        let bitmap_size = format::bitmap_size(header.block_size);
        let needed = size.div_ceil(block_size);
        if needed > u64::from(header.max_table_entries) {
            return Err(corrupt(
                file,
                meta.header_offset,
                format!(
                    "the BAT's {} entries of {block_size} bytes do not cover the disk's \
                     {size} bytes",
                    header.max_table_entries
                ),
            ));
        }
        let bat_bytes = needed * 4;
        let raw = read_checked(
            file,
            FORMAT,
            "block allocation table",
            header.table_offset,
            bat_bytes,
        )?;
        let bat: Vec<u32> = raw.chunks_exact(4).map(|c| format::be32(c, 0)).collect();
        drop(raw);

        let span = bitmap_size + block_size;
        let mut reserved = vec![
            (meta.header_offset, meta.header_offset + HEADER_SIZE as u64),
            (header.table_offset, header.table_offset + bat_bytes),
        ];
        if meta.has_head_copy {
            reserved.push((0, SECTOR));
        }
        let mut starts = Vec::new();
        for (i, &entry) in bat.iter().enumerate() {
            if entry == BAT_UNUSED {
                continue;
            }
            let entry_at = header.table_offset + 4 * i as u64;
            let start = u64::from(entry) * SECTOR;
            let end = start + span;
            if end > file.len() {
                return Err(corrupt(
                    file,
                    entry_at,
                    format!(
                        "block {i} at offset {start} ({span} bytes with its bitmap) runs past \
                         the end of the file ({} bytes): truncated?",
                        file.len()
                    ),
                ));
            }
            if let Some((a, b)) = reserved.iter().find(|(a, b)| start < *b && *a < end) {
                return Err(corrupt(
                    file,
                    entry_at,
                    format!(
                        "block {i} at offset {start} overlaps the image's metadata at \
                         {a}..{b}"
                    ),
                ));
            }
            starts.push(start);
        }
        starts.sort_unstable();
        if let Some(w) = starts.windows(2).find(|w| w[1] - w[0] < span) {
            return Err(corrupt(
                file,
                header.table_offset,
                format!(
                    "the BAT places two blocks at offsets {} and {}, which overlap",
                    w[0], w[1]
                ),
            ));
        }
        Ok(Sparse {
            block_size,
            bitmap_size,
            bat,
            parent,
            bitmaps: BitmapCache::default(),
        })
    }

    /// The runs of `[offset, end)` (inside the disk), merged where they continue each
    /// other. Costs one step per block and per run of equal bitmap bits.
    fn map(&mut self, file: &dyn ReadAt, offset: u64, end: u64) -> Result<Vec<Piece>, IngestError> {
        let differencing = self.parent.is_some();
        let unallocated = if differencing {
            Src::Parent
        } else {
            Src::Unalloc
        };
        let unwritten = if differencing { Src::Parent } else { Src::Zero };
        let bs = self.block_size;
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let idx = pos / bs;
            let block_start = idx * bs;
            let block_end = (block_start + bs).min(end);
            let entry = usize::try_from(idx)
                .ok()
                .and_then(|i| self.bat.get(i))
                .copied()
                .unwrap_or(BAT_UNUSED);
            if entry == BAT_UNUSED {
                push_piece(&mut out, pos, block_end - pos, unallocated);
                pos = block_end;
                continue;
            }
            let bitmap_at = u64::from(entry) * SECTOR;
            let data_at = bitmap_at + self.bitmap_size;
            let bitmap = self.bitmaps.get(file, bitmap_at, self.bitmap_size)?;
            let mut s = (pos - block_start) / SECTOR;
            let s_end = (block_end - block_start).div_ceil(SECTOR);
            while s < s_end {
                let bit = format::bitmap_bit(bitmap, s);
                let run_end = run_end(bitmap, s, s_end, bit);
                let a = (block_start + s * SECTOR).max(pos);
                let b = (block_start + run_end * SECTOR).min(block_end);
                let src = if bit {
                    Src::Host(data_at + (a - block_start))
                } else {
                    unwritten
                };
                push_piece(&mut out, a, b - a, src);
                s = run_end;
            }
            pos = block_end;
        }
        Ok(out)
    }
}

/// The end of the run of sectors from `s` (before `s_end`) whose bitmap bits equal `bit`,
/// stepping a byte at a time where it can.
fn run_end(bitmap: &[u8], s: u64, s_end: u64, bit: bool) -> u64 {
    let full = if bit { 0xFF } else { 0 };
    let mut t = s;
    while t < s_end {
        if t & 7 == 0
            && t + 8 <= s_end
            && usize::try_from(t / 8)
                .ok()
                .and_then(|i| bitmap.get(i))
                .is_some_and(|&b| b == full)
        {
            t += 8;
            continue;
        }
        if format::bitmap_bit(bitmap, t) != bit {
            break;
        }
        t += 1;
    }
    t
}

/// Appends a run, merging it into the previous one when it continues it (same source;
/// for file data, also contiguous in the file).
fn push_piece(out: &mut Vec<Piece>, off: u64, len: u64, src: Src) {
    if len == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.off + last.len == off {
            let continues = match (last.src, src) {
                (Src::Host(a), Src::Host(b)) => a + last.len == b,
                (a, b) => a == b,
            };
            if continues {
                last.len += len;
                return;
            }
        }
    }
    out.push(Piece { off, len, src });
}

/// A small cache of sector bitmaps, keyed by their offset in the file.
#[derive(Default)]
struct BitmapCache {
    entries: Vec<(u64, Vec<u8>)>,
    next_victim: usize,
}

impl BitmapCache {
    /// The bitmap of `len` bytes at `at`, read on a miss (the oldest entry is replaced
    /// when the cache is full).
    fn get(&mut self, file: &dyn ReadAt, at: u64, len: u64) -> Result<&[u8], IngestError> {
        let slot = match self.entries.iter().position(|(o, _)| *o == at) {
            Some(i) => i,
            None => {
                let bytes = read_checked(file, FORMAT, "sector bitmap", at, len)?;
                if self.entries.len() < BITMAP_CACHE {
                    self.entries.push((at, bytes));
                    self.entries.len() - 1
                } else {
                    let i = self.next_victim % BITMAP_CACHE;
                    self.next_victim = i + 1;
                    self.entries[i] = (at, bytes);
                    i
                }
            }
        };
        Ok(&self.entries[slot].1)
    }
}

/// A VHD disk of any type.
pub(super) struct VhdDisk {
    file: Box<dyn ReadAt>,
    size: u64,
    /// `None` for a fixed disk.
    sparse: Option<Sparse>,
}

impl VhdDisk {
    /// A fixed disk: `size` bytes at the start of `file` (checked by the caller).
    pub fn fixed(file: Box<dyn ReadAt>, size: u64) -> Self {
        VhdDisk {
            file,
            size,
            sparse: None,
        }
    }

    /// A dynamic or differencing disk of `size` bytes.
    pub fn sparse(file: Box<dyn ReadAt>, size: u64, sparse: Sparse) -> Self {
        VhdDisk {
            file,
            size,
            sparse: Some(sparse),
        }
    }

    fn range_err(&self, offset: u64, len: usize) -> IngestError {
        IngestError::Read {
            what: self.file.name().to_string(),
            offset,
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "read of {len} bytes past the end of the {}-byte disk",
                    self.size
                ),
            ),
        }
    }
}

impl DiskSource for VhdDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn extents(&mut self, offset: u64, len: u64) -> Result<Vec<Extent>, IngestError> {
        let end = offset.saturating_add(len).min(self.size);
        let mut out = Vec::new();
        if offset >= end {
            return Ok(out);
        }
        let Some(sparse) = self.sparse.as_mut() else {
            out.push(Extent {
                offset,
                len: end - offset,
                kind: ExtentKind::Data,
            });
            return Ok(out);
        };
        for p in sparse.map(self.file.as_ref(), offset, end)? {
            let kind = match p.src {
                Src::Host(_) => ExtentKind::Data,
                Src::Zero => ExtentKind::Zero,
                Src::Unalloc => ExtentKind::Unallocated,
                Src::Parent => {
                    parent_extents(&mut sparse.parent, p.off, p.len, &mut out)?;
                    continue;
                }
            };
            push_merged(
                &mut out,
                Extent {
                    offset: p.off,
                    len: p.len,
                    kind,
                },
            );
        }
        Ok(out)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IngestError> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| self.range_err(offset, buf.len()))?;
        let Some(sparse) = self.sparse.as_mut() else {
            return read_into(self.file.as_ref(), FORMAT, offset, buf);
        };
        for p in sparse.map(self.file.as_ref(), offset, end)? {
            // Pieces lie inside [offset, end), so these conversions and slices hold.
            let at = (p.off - offset) as usize;
            let dst = &mut buf[at..at + p.len as usize];
            match p.src {
                Src::Host(h) => read_into(self.file.as_ref(), FORMAT, h, dst)?,
                Src::Zero | Src::Unalloc => dst.fill(0),
                Src::Parent => parent_read(&mut sparse.parent, p.off, dst)?,
            }
        }
        Ok(())
    }

    fn format_name(&self) -> &'static str {
        match &self.sparse {
            None => "vhd (fixed)",
            Some(s) if s.parent.is_some() => "vhd (differencing)",
            Some(_) => "vhd (dynamic)",
        }
    }
}

/// Appends the parent's extents for `[off, off + len)`; past the parent's end (or with
/// no parent) the range is unallocated.
fn parent_extents(
    parent: &mut Option<Box<dyn DiskSource>>,
    off: u64,
    len: u64,
    out: &mut Vec<Extent>,
) -> Result<(), IngestError> {
    let end = off + len;
    let mut pos = off;
    if let Some(parent) = parent {
        let inside = end.min(parent.size());
        if off < inside {
            for e in parent.extents(off, inside - off)? {
                push_merged(out, e);
            }
            pos = inside;
        }
    }
    push_merged(
        out,
        Extent {
            offset: pos,
            len: end - pos,
            kind: ExtentKind::Unallocated,
        },
    );
    Ok(())
}

/// Fills `dst` with the parent's bytes at `off`; zeros past the parent's end.
fn parent_read(
    parent: &mut Option<Box<dyn DiskSource>>,
    off: u64,
    dst: &mut [u8],
) -> Result<(), IngestError> {
    let mut done = 0usize;
    if let Some(parent) = parent {
        let inside = parent.size().saturating_sub(off).min(dst.len() as u64) as usize;
        if inside > 0 {
            parent.read_at(off, &mut dst[..inside])?;
            done = inside;
        }
    }
    dst[done..].fill(0);
    Ok(())
}
