//! Hosted sparse extents ("KDMV"): monolithicSparse, twoGbMaxExtentSparse pieces and
//! streamOptimized files, with their grain directory and grain tables.

use super::FORMAT;
use crate::image_file::{read_checked, read_into, ReadAt};
use crate::IngestError;
use std::collections::HashMap;

/// Bytes per sector.
pub const SECTOR: u64 = 512;
/// `gdOffset` of a streamOptimized file whose grain directory is found via the footer.
pub const GD_AT_END: u64 = u64::MAX;
/// Header flags.
pub const FLAG_NL_DETECT: u32 = 1;
/// Grain table entry 1 means a zero grain.
pub const FLAG_ZERO_GRAIN: u32 = 1 << 2;
/// Grains are deflate-compressed.
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// Grains and tables are preceded by markers (streamOptimized).
pub const FLAG_MARKERS: u32 = 1 << 17;
/// Largest grain accepted, in sectors (2 MiB).
const MAX_GRAIN_SECTORS: u64 = 4096;
/// Largest grain table accepted, in entries.
const MAX_GTES: u32 = 4096;
/// Largest capacity accepted, in sectors (2^50 bytes).
const MAX_CAPACITY_SECTORS: u64 = 1 << 41;
/// Grain tables cached at once.
const GT_CACHE: usize = 64;

/// The fields of a sparse extent header that reading needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparseHeader {
    /// Header version (1, 2 or 3).
    pub version: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Capacity in sectors.
    pub capacity: u64,
    /// Grain size in sectors.
    pub grain: u64,
    /// Embedded descriptor: start and length in sectors (0 when absent).
    pub descriptor: (u64, u64),
    /// Entries per grain table.
    pub gtes: u32,
    /// Grain directory offset in sectors, or [`GD_AT_END`].
    pub gd_offset: u64,
    /// 1 for deflate, 0 for none.
    pub compress: u16,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl SparseHeader {
    /// Parses and checks the 512-byte header at the start (or in the footer) of a sparse
    /// extent file.
    pub fn parse(b: &[u8; 512]) -> Result<Self, String> {
        if &b[0..4] != b"KDMV" {
            return Err("no sparse extent magic \"KDMV\"".into());
        }
        let h = SparseHeader {
            version: le32(b, 4),
            flags: le32(b, 8),
            capacity: le64(b, 12),
            grain: le64(b, 20),
            descriptor: (le64(b, 28), le64(b, 36)),
            gtes: le32(b, 44),
            gd_offset: le64(b, 56),
            compress: u16::from_le_bytes([b[77], b[78]]),
        };
        if !(1..=3).contains(&h.version) {
            return Err(format!("unsupported sparse extent version {}", h.version));
        }
        if h.capacity > MAX_CAPACITY_SECTORS {
            return Err(format!("capacity of {} sectors is absurd", h.capacity));
        }
        if !h.grain.is_power_of_two() || h.grain > MAX_GRAIN_SECTORS {
            return Err(format!(
                "grain size of {} sectors is not a power of two up to {MAX_GRAIN_SECTORS}",
                h.grain
            ));
        }
        if h.gtes == 0 || h.gtes > MAX_GTES {
            return Err(format!(
                "{} entries per grain table is out of range",
                h.gtes
            ));
        }
        if h.flags & FLAG_COMPRESSED != 0 && h.compress != 1 {
            return Err(format!("unknown compression algorithm {}", h.compress));
        }
        Ok(h)
    }

    /// Bytes of guest data one grain table covers.
    fn gt_span(&self) -> u64 {
        self.grain * SECTOR * u64::from(self.gtes)
    }
}

/// Where a run of a sparse extent's guest bytes is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrainKind {
    /// Stored uncompressed at this file offset (of the run's first byte).
    Data(u64),
    /// In a compressed grain at this file offset.
    Compressed(u64),
    /// A zero grain.
    Zero,
    /// Not allocated here (the parent's, or zeros).
    Unallocated,
}

/// A hosted sparse extent file, read through its grain tables.
pub struct SparseExtent {
    file: Box<dyn ReadAt>,
    header: SparseHeader,
    gd: Vec<u32>,
    gts: HashMap<u32, Vec<u32>>,
    /// The last decompressed grain: (grain index, bytes).
    grain_cache: Option<(u64, Vec<u8>)>,
    compressed_buf: Vec<u8>,
    /// Reused for every compressed grain.
    inflater: Option<Box<flate2::Decompress>>,
}

impl SparseExtent {
    /// Opens a sparse extent file: header (or streamOptimized footer) and grain directory.
    /// Returns the extent and its embedded descriptor, if any.
    pub fn open(file: Box<dyn ReadAt>) -> Result<(Self, Option<Vec<u8>>), IngestError> {
        let f = file.as_ref();
        let corrupt = |offset, reason: String| IngestError::Corrupt {
            what: f.name().to_string(),
            format: FORMAT,
            offset,
            reason,
        };
        let mut head = [0u8; 512];
        read_into(f, FORMAT, 0, &mut head)?;
        let mut header = SparseHeader::parse(&head).map_err(|r| corrupt(0, r))?;
        if header.gd_offset == GD_AT_END {
            // streamOptimized: the footer (a header copy with the real gdOffset) sits
            // 1024 bytes before the end, between the footer marker and end-of-stream.
            let at = f.len().checked_sub(1024).ok_or_else(|| {
                corrupt(0, "streamOptimized file too short for its footer".into())
            })?;
            let mut foot = [0u8; 512];
            read_into(f, FORMAT, at, &mut foot)?;
            let footer =
                SparseHeader::parse(&foot).map_err(|r| corrupt(at, format!("footer: {r}")))?;
            if footer.gd_offset == GD_AT_END {
                return Err(corrupt(at, "footer has no grain directory offset".into()));
            }
            header.gd_offset = footer.gd_offset;
        }
        let descriptor = match header.descriptor {
            (_, 0) | (0, _) => None,
            (start, len) => {
                let bytes = len.saturating_mul(SECTOR);
                if bytes > super::descriptor::MAX_DESCRIPTOR {
                    return Err(corrupt(28, format!("embedded descriptor of {bytes} bytes")));
                }
                let at = start
                    .checked_mul(SECTOR)
                    .ok_or_else(|| corrupt(28, "descriptor offset overflows".into()))?;
                Some(read_checked(f, FORMAT, "embedded descriptor", at, bytes)?)
            }
        };
        let span = header.gt_span();
        let n_gd = (header.capacity * SECTOR).div_ceil(span);
        let gd_at = header
            .gd_offset
            .checked_mul(SECTOR)
            .ok_or_else(|| corrupt(56, "grain directory offset overflows".into()))?;
        let raw = read_checked(f, FORMAT, "grain directory", gd_at, n_gd * 4)?;
        let gd = raw.chunks_exact(4).map(|c| le32(c, 0)).collect();
        Ok((
            SparseExtent {
                file,
                header,
                gd,
                gts: HashMap::new(),
                grain_cache: None,
                compressed_buf: Vec::new(),
                inflater: None,
            },
            descriptor,
        ))
    }

    /// Guest size of the extent in bytes.
    pub fn size(&self) -> u64 {
        self.header.capacity * SECTOR
    }

    fn grain_bytes(&self) -> u64 {
        self.header.grain * SECTOR
    }

    fn corrupt(&self, offset: u64, reason: String) -> IngestError {
        IngestError::Corrupt {
            what: self.file.name().to_string(),
            format: FORMAT,
            offset,
            reason,
        }
    }

    /// The grain table entry of grain `g` (0: unallocated).
    fn entry(&mut self, g: u64) -> Result<u32, IngestError> {
        let gtes = u64::from(self.header.gtes);
        let gt_index = g / gtes;
        let Some(&gt_sector) = self.gd.get(gt_index as usize) else {
            return Ok(0);
        };
        if gt_sector == 0 {
            return Ok(0);
        }
        let key = gt_index as u32;
        if !self.gts.contains_key(&key) {
            if self.gts.len() >= GT_CACHE {
                self.gts.clear();
            }
            let at = u64::from(gt_sector) * SECTOR;
            let raw = read_checked(self.file.as_ref(), FORMAT, "grain table", at, gtes * 4)?;
            self.gts
                .insert(key, raw.chunks_exact(4).map(|c| le32(c, 0)).collect());
        }
        Ok(self
            .gts
            .get(&key)
            .and_then(|t| t.get((g % gtes) as usize))
            .copied()
            .unwrap_or(0))
    }

    /// Classifies `[offset, offset + len)` (inside the extent) into runs, appended to
    /// `out` as (offset, len, kind) with neighbouring runs merged.
    pub fn map(
        &mut self,
        offset: u64,
        len: u64,
        out: &mut Vec<(u64, u64, GrainKind)>,
    ) -> Result<(), IngestError> {
        let gb = self.grain_bytes();
        let end = offset.saturating_add(len).min(self.size());
        let mut pos = offset;
        while pos < end {
            let g = pos / gb;
            let in_grain = pos % gb;
            let gtes = u64::from(self.header.gtes);
            // A whole unallocated grain table is skipped in one step.
            let gt_sector = self.gd.get((g / gtes) as usize).copied().unwrap_or(0);
            if gt_sector == 0 {
                let next = ((g / gtes) + 1).saturating_mul(gtes * gb).min(end);
                push(out, pos, next - pos, GrainKind::Unallocated);
                pos = next;
                continue;
            }
            let take = (gb - in_grain).min(end - pos);
            let e = self.entry(g)?;
            let kind = match e {
                0 => GrainKind::Unallocated,
                1 if self.header.flags & FLAG_ZERO_GRAIN != 0 => GrainKind::Zero,
                sector => {
                    let at = u64::from(sector) * SECTOR;
                    if self.header.flags & FLAG_COMPRESSED != 0 {
                        GrainKind::Compressed(at)
                    } else {
                        if at >= self.file.len() {
                            return Err(self
                                .corrupt(at, format!("grain {g} lies past the end of the file")));
                        }
                        GrainKind::Data(at + in_grain)
                    }
                }
            };
            push(out, pos, take, kind);
            pos += take;
        }
        Ok(())
    }

    /// Reads `buf.len()` guest bytes at `offset` of a run `map` reported as `kind`.
    pub fn read_run(
        &mut self,
        kind: GrainKind,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), IngestError> {
        match kind {
            GrainKind::Zero | GrainKind::Unallocated => {
                buf.fill(0);
                Ok(())
            }
            GrainKind::Data(at) => {
                // The file may end inside the last grain (qemu writes it so): zeros.
                let avail = self.file.len().saturating_sub(at).min(buf.len() as u64) as usize;
                read_into(self.file.as_ref(), FORMAT, at, &mut buf[..avail])?;
                buf[avail..].fill(0);
                Ok(())
            }
            GrainKind::Compressed(_) => {
                let gb = self.grain_bytes();
                let mut pos = 0usize;
                while pos < buf.len() {
                    let o = offset + pos as u64;
                    let g = o / gb;
                    let in_grain = (o % gb) as usize;
                    let take = (gb as usize - in_grain).min(buf.len() - pos);
                    self.load_grain(g)?;
                    let Some((_, grain)) = &self.grain_cache else {
                        return Err(self.corrupt(0, "grain cache empty".into()));
                    };
                    buf[pos..pos + take].copy_from_slice(&grain[in_grain..in_grain + take]);
                    pos += take;
                }
                Ok(())
            }
        }
    }

    /// Decompresses grain `g` into the grain cache.
    fn load_grain(&mut self, g: u64) -> Result<(), IngestError> {
        if self.grain_cache.as_ref().is_some_and(|(i, _)| *i == g) {
            return Ok(());
        }
        let gb = self.grain_bytes();
        let sector = self.entry(g)?;
        let at = u64::from(sector) * SECTOR;
        let f = self.file.as_ref();
        let (data_at, data_len) = if self.header.flags & FLAG_MARKERS != 0 {
            let mut m = [0u8; 12];
            read_into(f, FORMAT, at, &mut m)?;
            let lba = le64(&m, 0);
            let size = u64::from(le32(&m, 8));
            if lba != g * self.header.grain {
                return Err(self.corrupt(
                    at,
                    format!("grain marker says sector {lba}, the grain table says grain {g}"),
                ));
            }
            if size == 0 || size > 2 * gb + 1024 {
                return Err(self.corrupt(at, format!("compressed grain of {size} bytes")));
            }
            (at + 12, size)
        } else {
            (at, (2 * gb).min(f.len().saturating_sub(at)))
        };
        let mut compressed = std::mem::take(&mut self.compressed_buf);
        compressed.clear();
        compressed.resize(data_len as usize, 0);
        let read = read_into(f, FORMAT, data_at, &mut compressed);
        let mut out = self.grain_cache.take().map(|(_, v)| v).unwrap_or_default();
        out.clear();
        // One inflater per reader, reset per grain: a fresh one costs an allocation and
        // table set-up per 64 KiB. `out` holds at most one grain plus one byte, so an
        // over-long stream is caught below instead of growing memory.
        let mut inflater = self
            .inflater
            .take()
            .unwrap_or_else(|| Box::new(flate2::Decompress::new(true)));
        inflater.reset(true);
        out.reserve(gb as usize + 1);
        let result = read.and_then(|()| {
            inflater
                .decompress_vec(&compressed, &mut out, flate2::FlushDecompress::Finish)
                .map_err(|e| {
                    self.corrupt(at, format!("compressed grain {g} does not inflate: {e}"))
                })
                .and_then(|status| match status {
                    flate2::Status::StreamEnd => Ok(()),
                    _ => Err(self.corrupt(
                        at,
                        format!("compressed grain {g} is cut short or longer than a grain"),
                    )),
                })
        });
        self.compressed_buf = compressed;
        self.inflater = Some(inflater);
        result?;
        // The grain must cover the part of the disk it maps.
        let needed = gb.min(self.size().saturating_sub(g * gb));
        if (out.len() as u64) < needed || out.len() as u64 > gb {
            return Err(self.corrupt(
                at,
                format!(
                    "compressed grain {g} inflates to {} bytes, expected {needed}",
                    out.len()
                ),
            ));
        }
        out.resize(gb as usize, 0);
        self.grain_cache = Some((g, out));
        Ok(())
    }
}

fn push(out: &mut Vec<(u64, u64, GrainKind)>, offset: u64, len: u64, kind: GrainKind) {
    if len == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        let joins = match (last.2, kind) {
            (GrainKind::Data(a), GrainKind::Data(b)) => a + last.1 == b,
            (GrainKind::Compressed(_), GrainKind::Compressed(_)) => true,
            (a, b) => a == b,
        };
        if joins && last.0 + last.1 == offset {
            last.1 += len;
            return;
        }
    }
    out.push((offset, len, kind));
}
