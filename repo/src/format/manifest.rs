//! Manifests (FORMAT.md section 8): pages of extents and the root that lists them.

use super::bytes::Reader;
use super::DecodeError;
use vmvault_chunker::{ChunkId, MAX_CHUNK};

/// What one manifest entry describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Stored chunk.
    Data(ChunkId),
    /// Read and found zero.
    Zero,
    /// Not allocated in the source.
    Unallocated,
}

/// One extent of a page; offsets are implied by the running sum of lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Length in bytes, > 0.
    pub len: u32,
    /// What it holds.
    pub kind: EntryKind,
}

/// Longest zero or unallocated run one entry may describe; longer runs are split.
pub const MAX_RUN: u32 = 1 << 31;

/// Encodes a page.
pub fn encode_page(entries: &[ManifestEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + entries.len() * 37);
    out.extend_from_slice(&[1, 1, 0, 0]);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        match e.kind {
            EntryKind::Data(id) => {
                out.push(0);
                out.extend_from_slice(&e.len.to_le_bytes());
                out.extend_from_slice(&id.0);
            }
            EntryKind::Zero => {
                out.push(1);
                out.extend_from_slice(&e.len.to_le_bytes());
            }
            EntryKind::Unallocated => {
                out.push(2);
                out.extend_from_slice(&e.len.to_le_bytes());
            }
        }
    }
    out
}

/// Decodes a page that must describe exactly `page_len` bytes.
pub fn decode_page(plain: &[u8], page_len: u64) -> Result<Vec<ManifestEntry>, DecodeError> {
    let mut r = Reader::new(plain, "manifest page");
    if r.u8()? != 1 || r.u8()? != 1 || r.u16()? != 0 {
        return Err(DecodeError::new("not a version 1 manifest page"));
    }
    let n = r.count(5)?;
    let mut entries = Vec::with_capacity(n);
    let mut total: u64 = 0;
    for _ in 0..n {
        let kind = r.u8()?;
        let len = r.u32()?;
        if len == 0 {
            return Err(DecodeError::new("manifest entry of length 0"));
        }
        let kind = match kind {
            0 => {
                if len > MAX_CHUNK {
                    return Err(DecodeError::new(format!("data entry of {len} bytes")));
                }
                EntryKind::Data(ChunkId(r.array32()?))
            }
            1 | 2 if len > MAX_RUN => {
                return Err(DecodeError::new(format!("zero run of {len} bytes")))
            }
            1 => EntryKind::Zero,
            2 => EntryKind::Unallocated,
            k => return Err(DecodeError::new(format!("unknown manifest entry kind {k}"))),
        };
        total += u64::from(len);
        entries.push(ManifestEntry { len, kind });
    }
    r.finish()?;
    if total != page_len {
        return Err(DecodeError::new(format!(
            "manifest page covers {total} bytes, expected {page_len}"
        )));
    }
    Ok(entries)
}

/// The root of a disk's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRoot {
    /// Logical size of the disk.
    pub disk_size: u64,
    /// Bytes per page (the last page may be shorter).
    pub page_size: u64,
    /// Page chunk ids in disk order.
    pub pages: Vec<ChunkId>,
}

impl ManifestRoot {
    /// Length of page `i`.
    pub fn page_len(&self, i: usize) -> u64 {
        let start = i as u64 * self.page_size;
        self.page_size.min(self.disk_size.saturating_sub(start))
    }

    /// Encodes the root.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.pages.len() * 32);
        out.extend_from_slice(&[1, 2, 0, 0]);
        out.extend_from_slice(&(self.pages.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.disk_size.to_le_bytes());
        out.extend_from_slice(&self.page_size.to_le_bytes());
        for p in &self.pages {
            out.extend_from_slice(&p.0);
        }
        out
    }

    /// Decodes and checks a root: the page count must match the disk and page sizes.
    pub fn decode(plain: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(plain, "manifest root");
        if r.u8()? != 1 || r.u8()? != 2 || r.u16()? != 0 {
            return Err(DecodeError::new("not a version 1 manifest root"));
        }
        let raw_count = r.u32()?;
        let disk_size = r.u64()?;
        let page_size = r.u64()?;
        if page_size == 0 || page_size > 64 << 30 {
            return Err(DecodeError::new(format!(
                "page size {page_size} out of range"
            )));
        }
        let expected = disk_size.div_ceil(page_size);
        if u64::from(raw_count) != expected {
            return Err(DecodeError::new(format!(
                "manifest root lists {raw_count} pages, a {disk_size}-byte disk needs {expected}"
            )));
        }
        if (raw_count as usize).saturating_mul(32) != r.remaining() {
            return Err(DecodeError::new(
                "manifest root length does not match its page count",
            ));
        }
        let mut pages = Vec::with_capacity(raw_count as usize);
        for _ in 0..raw_count {
            pages.push(ChunkId(r.array32()?));
        }
        r.finish()?;
        Ok(ManifestRoot {
            disk_size,
            page_size,
            pages,
        })
    }
}
