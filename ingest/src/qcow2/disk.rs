//! The qcow2 [`DiskSource`]: guest offsets mapped through the active L1 table and a
//! bounded cache of L2 tables to host clusters, compressed clusters, zero clusters and
//! the backing disk.

use super::entry::{self, Cluster, Geometry};
use super::header::Compression;
use super::{corrupt, FORMAT};
use crate::image_file::{read_checked, read_into, ReadAt};
use crate::{push_merged, DiskSource, Extent, ExtentKind, IngestError};
use std::io::Read;

/// Most L2 tables kept in the cache.
const CACHE_TABLES: usize = 32;
/// Most bytes of L2 tables kept in the cache (at least one table is always kept).
const CACHE_BYTES: u64 = 4 << 20;
/// Guest bytes mapped at a time by `read_at`, bounding the run list it builds.
const READ_WINDOW: u64 = 8 << 20;

/// What a run of guest bytes maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// Host bytes at this offset (of the image file, or of the external data file).
    Host(u64),
    /// Inside the compressed cluster stored at `offset` (`len` bytes at most).
    Compressed { offset: u64, len: u64 },
    /// Reads as zeros.
    Zero,
    /// Not allocated in this image: comes from the backing disk, or zeros.
    Unallocated,
}

/// A run of guest bytes with one target.
#[derive(Clone, Copy, Debug)]
struct Run {
    offset: u64,
    len: u64,
    target: Target,
}

/// The mapping state: file, L1 table and L2 cache, apart from the backing disk so that
/// both can be borrowed at once.
struct Mapping {
    file: Box<dyn ReadAt>,
    geo: Geometry,
    size: u64,
    l1: Vec<u64>,
    /// Most recently used first: (offset, table bytes).
    cache: Vec<(u64, Vec<u8>)>,
    cache_cap: usize,
}

impl Mapping {
    /// Index in the cache of the L2 table at `offset`, loading it if needed.
    fn table(&mut self, offset: u64) -> Result<usize, IngestError> {
        if let Some(i) = self.cache.iter().position(|(o, _)| *o == offset) {
            if i != 0 {
                let t = self.cache.remove(i);
                self.cache.insert(0, t);
            }
            return Ok(0);
        }
        let t = read_checked(
            self.file.as_ref(),
            FORMAT,
            "L2 table",
            offset,
            self.geo.cluster_size(),
        )?;
        if self.cache.len() >= self.cache_cap {
            self.cache.pop();
        }
        self.cache.insert(0, (offset, t));
        Ok(0)
    }

    /// Calls `out` with the runs mapping `[offset, end)` (end ≤ size), in order. Runs are
    /// at most one (sub)cluster long except for unallocated L1 ranges, which come whole.
    fn walk(&mut self, offset: u64, end: u64, out: &mut dyn FnMut(Run)) -> Result<(), IngestError> {
        let cb = self.geo.cluster_bits;
        let cs = self.geo.cluster_size();
        let esize: u64 = if self.geo.extended { 16 } else { 8 };
        let per_l2 = cs / esize;
        let l2_span_bits = cb + per_l2.trailing_zeros();
        let mut pos = offset;
        while pos < end {
            let l1_idx = pos >> l2_span_bits;
            let span_end = (l1_idx + 1)
                .checked_shl(l2_span_bits)
                .filter(|e| l1_idx + 1 == e >> l2_span_bits)
                .unwrap_or(u64::MAX)
                .min(end);
            let l1e = self.l1.get(l1_idx as usize).copied().unwrap_or(0);
            let l2_off = entry::l1_target(&self.geo, l1e)
                .map_err(|r| corrupt(self.file.as_ref(), 0, format!("L1 entry {l1_idx}: {r}")))?;
            let Some(l2_off) = l2_off else {
                out(Run {
                    offset: pos,
                    len: span_end - pos,
                    target: Target::Unallocated,
                });
                pos = span_end;
                continue;
            };
            let ti = self.table(l2_off)?;
            let table = &self.cache[ti].1;
            while pos < span_end {
                let idx = (pos >> cb) & (per_l2 - 1);
                let at = (idx * esize) as usize;
                let e = super::header::be64(table, at).unwrap_or(0);
                let bitmap = if self.geo.extended {
                    super::header::be64(table, at + 8).unwrap_or(0)
                } else {
                    0
                };
                let cluster_start = pos & !(cs - 1);
                let cluster_end = cluster_start.saturating_add(cs).min(span_end);
                let c = entry::decode_l2(&self.geo, e, bitmap).map_err(|r| {
                    corrupt(
                        self.file.as_ref(),
                        l2_off + at as u64,
                        format!("L2 entry for guest offset {cluster_start}: {r}"),
                    )
                })?;
                let within = pos - cluster_start;
                match c {
                    Cluster::Unallocated => out(run(pos, cluster_end, Target::Unallocated)),
                    Cluster::Zero => out(run(pos, cluster_end, Target::Zero)),
                    Cluster::Normal(h) => out(run(pos, cluster_end, Target::Host(h + within))),
                    Cluster::Compressed { offset, len } => {
                        out(run(pos, cluster_end, Target::Compressed { offset, len }))
                    }
                    Cluster::Sub { host, alloc, zero } => {
                        let sc = cs / u64::from(entry::SUBCLUSTERS);
                        let mut p = pos;
                        while p < cluster_end {
                            let i = ((p - cluster_start) / sc) as u32;
                            let sc_end = (cluster_start + u64::from(i + 1) * sc).min(cluster_end);
                            let t = match host {
                                Some(h) if alloc & (1 << i) != 0 => {
                                    Target::Host(h + (p - cluster_start))
                                }
                                _ if zero & (1 << i) != 0 => Target::Zero,
                                _ => Target::Unallocated,
                            };
                            out(run(p, sc_end, t));
                            p = sc_end;
                        }
                    }
                }
                pos = cluster_end;
            }
        }
        Ok(())
    }
}

fn run(start: u64, end: u64, target: Target) -> Run {
    Run {
        offset: start,
        len: end - start,
        target,
    }
}

/// A qcow2 image opened for reading.
pub struct Qcow2Disk {
    map: Mapping,
    /// The external data file, when guest data lives there.
    data_file: Option<Box<dyn ReadAt>>,
    parent: Option<Box<dyn DiskSource>>,
    compression: Compression,
    /// The last decompressed cluster: (host offset of its compressed data, bytes).
    decompressed: Option<(u64, Vec<u8>)>,
    decoders: Decoders,
}

/// What [`Qcow2Disk::new`] needs beyond the file.
pub struct Parts {
    /// Cluster geometry and entry format.
    pub geo: Geometry,
    /// Virtual disk size.
    pub size: u64,
    /// The active L1 table's entries (already checked against the file).
    pub l1: Vec<u64>,
    /// The external data file, if any.
    pub data_file: Option<Box<dyn ReadAt>>,
    /// The backing disk, if any.
    pub parent: Option<Box<dyn DiskSource>>,
    /// Compression of compressed clusters.
    pub compression: Compression,
}

impl Qcow2Disk {
    /// Wraps an image whose header and L1 table were validated by [`super::open`].
    pub fn new(file: Box<dyn ReadAt>, p: Parts) -> Self {
        let cache_cap = ((CACHE_BYTES / p.geo.cluster_size()) as usize).clamp(1, CACHE_TABLES);
        Qcow2Disk {
            map: Mapping {
                file,
                geo: p.geo,
                size: p.size,
                l1: p.l1,
                cache: Vec::new(),
                cache_cap,
            },
            data_file: p.data_file,
            parent: p.parent,
            compression: p.compression,
            decompressed: None,
            decoders: Decoders::default(),
        }
    }

    /// Reads host bytes `[h, h + buf.len())` of the data file. Bytes past its end read as
    /// zeros when they fall in the cluster the file ends in (qemu leaves the last data
    /// cluster short when the disk size is not cluster aligned).
    fn read_host(&self, h: u64, buf: &mut [u8]) -> Result<(), IngestError> {
        let file: &dyn ReadAt = match &self.data_file {
            Some(f) => f.as_ref(),
            None => self.map.file.as_ref(),
        };
        let flen = file.len();
        let end = h.saturating_add(buf.len() as u64);
        if end <= flen {
            return read_into(file, FORMAT, h, buf);
        }
        let cs = self.map.geo.cluster_size();
        let tolerated = flen.checked_next_multiple_of(cs).unwrap_or(u64::MAX);
        if end > tolerated {
            return Err(corrupt(
                file,
                h,
                format!(
                    "data at host offset {h} ({} bytes) lies past the end of the file \
                     ({flen} bytes)",
                    buf.len()
                ),
            ));
        }
        let inside = flen.saturating_sub(h) as usize;
        let (head, tail) = buf.split_at_mut(inside.min(buf.len()));
        if !head.is_empty() {
            read_into(file, FORMAT, h, head)?;
        }
        tail.fill(0);
        Ok(())
    }

    /// The decompressed cluster whose compressed data is at `offset` (`len` bytes).
    fn decompress(&mut self, offset: u64, len: u64) -> Result<&[u8], IngestError> {
        if self.decompressed.as_ref().is_none_or(|(o, _)| *o != offset) {
            self.decompressed = None;
            let file = self.map.file.as_ref();
            let flen = file.len();
            if offset >= flen {
                return Err(corrupt(
                    file,
                    offset,
                    format!("compressed cluster lies past the end of the file ({flen} bytes)"),
                ));
            }
            let len = len.min(flen - offset);
            let input = read_checked(file, FORMAT, "compressed cluster", offset, len)?;
            let cs = self.map.geo.cluster_size() as usize;
            let mut out = vec![0u8; cs];
            let res = match self.compression {
                Compression::Deflate => self.decoders.inflate(&input, &mut out),
                Compression::Zstd => {
                    self.decoders
                        .unzstd(&input, &mut out, self.map.geo.cluster_bits)
                }
            };
            res.map_err(|r| {
                corrupt(
                    file,
                    offset,
                    format!("compressed cluster ({len} bytes) cannot be decompressed: {r}"),
                )
            })?;
            self.decompressed = Some((offset, out));
        }
        Ok(self
            .decompressed
            .as_ref()
            .map(|(_, d)| d.as_slice())
            .unwrap_or(&[]))
    }

    /// Fills `buf` (at most [`READ_WINDOW`]) from guest `offset`.
    fn read_window(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IngestError> {
        let end = offset + buf.len() as u64;
        let mut runs: Vec<Run> = Vec::new();
        self.map.walk(offset, end, &mut |r| {
            if let Some(last) = runs.last_mut() {
                let merged = match (last.target, r.target) {
                    (Target::Host(a), Target::Host(b)) => a.checked_add(last.len) == Some(b),
                    (Target::Zero, Target::Zero) => true,
                    (Target::Unallocated, Target::Unallocated) => true,
                    _ => false,
                };
                if merged {
                    last.len += r.len;
                    return;
                }
            }
            runs.push(r);
        })?;
        let cs = self.map.geo.cluster_size();
        for r in runs {
            let start = (r.offset - offset) as usize;
            let dst = &mut buf[start..start + r.len as usize];
            match r.target {
                Target::Host(h) => self.read_host(h, dst)?,
                Target::Zero => dst.fill(0),
                Target::Compressed { offset: co, len } => {
                    let within = (r.offset & (cs - 1)) as usize;
                    let data = self.decompress(co, len)?;
                    // A decompressed cluster is exactly one cluster long and runs never
                    // cross a cluster boundary.
                    match data.get(within..within + dst.len()) {
                        Some(src) => dst.copy_from_slice(src),
                        None => dst.fill(0),
                    }
                }
                Target::Unallocated => match &mut self.parent {
                    Some(p) => {
                        let psize = p.size();
                        let n = psize.saturating_sub(r.offset).min(r.len) as usize;
                        let (head, tail) = dst.split_at_mut(n);
                        if !head.is_empty() {
                            p.read_at(r.offset, head)?;
                        }
                        tail.fill(0);
                    }
                    None => dst.fill(0),
                },
            }
        }
        Ok(())
    }
}

/// Decompression state reused from one compressed cluster to the next.
#[derive(Default)]
struct Decoders {
    deflate: Option<flate2::Decompress>,
    zstd: Option<zstd::zstd_safe::DCtx<'static>>,
}

impl Decoders {
    /// Inflates raw deflate data into exactly `out.len()` bytes (trailing input ignored).
    fn inflate(&mut self, input: &[u8], out: &mut [u8]) -> Result<(), String> {
        let d = self
            .deflate
            .get_or_insert_with(|| flate2::Decompress::new(false));
        d.reset(false);
        d.decompress(input, out, flate2::FlushDecompress::Finish)
            .map_err(|e| e.to_string())?;
        if d.total_out() != out.len() as u64 {
            return Err(format!(
                "inflates to {} bytes instead of {}",
                d.total_out(),
                out.len()
            ));
        }
        Ok(())
    }

    /// Decompresses zstd frames into exactly `out.len()` bytes (trailing input ignored),
    /// with the decoder's window bounded so hostile frames cannot make it allocate much.
    fn unzstd(&mut self, input: &[u8], out: &mut [u8], cluster_bits: u32) -> Result<(), String> {
        if self.zstd.is_none() {
            let mut ctx = zstd::zstd_safe::DCtx::try_create()
                .ok_or_else(|| "cannot create a zstd decoder".to_string())?;
            ctx.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
                cluster_bits.max(20) + 1,
            ))
            .map_err(|c| zstd::zstd_safe::get_error_name(c).to_string())?;
            self.zstd = Some(ctx);
        }
        let Some(ctx) = self.zstd.as_mut() else {
            return Err("no zstd decoder".into());
        };
        let mut d = zstd::stream::read::Decoder::with_context(input, ctx);
        d.read_exact(out).map_err(|e| e.to_string())
    }
}

impl DiskSource for Qcow2Disk {
    fn size(&self) -> u64 {
        self.map.size
    }

    fn extents(&mut self, offset: u64, len: u64) -> Result<Vec<Extent>, IngestError> {
        let end = offset.saturating_add(len).min(self.map.size);
        let mut out = Vec::new();
        if offset >= end {
            return Ok(out);
        }
        let mut local: Vec<Extent> = Vec::new();
        self.map.walk(offset, end, &mut |r| {
            let kind = match r.target {
                Target::Host(_) | Target::Compressed { .. } => ExtentKind::Data,
                Target::Zero => ExtentKind::Zero,
                Target::Unallocated => ExtentKind::Unallocated,
            };
            push_merged(
                &mut local,
                Extent {
                    offset: r.offset,
                    len: r.len,
                    kind,
                },
            );
        })?;
        for e in local {
            match (&mut self.parent, e.kind) {
                (Some(p), ExtentKind::Unallocated) => {
                    let pend = p.size().min(e.end());
                    if e.offset < pend {
                        for pe in p.extents(e.offset, pend - e.offset)? {
                            push_merged(&mut out, pe);
                        }
                    }
                    push_merged(
                        &mut out,
                        Extent {
                            offset: pend.max(e.offset),
                            len: e.end() - pend.max(e.offset),
                            kind: ExtentKind::Unallocated,
                        },
                    );
                }
                _ => push_merged(&mut out, e),
            }
        }
        Ok(out)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IngestError> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.map.size)
        {
            return Err(IngestError::Read {
                what: self.map.file.name().to_string(),
                offset,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "read of {} bytes past the end of the disk ({} bytes)",
                        buf.len(),
                        self.map.size
                    ),
                ),
            });
        }
        let mut pos = offset;
        for chunk in buf.chunks_mut(READ_WINDOW as usize) {
            self.read_window(pos, chunk)?;
            pos += chunk.len() as u64;
        }
        Ok(())
    }

    fn format_name(&self) -> &'static str {
        "qcow2"
    }
}
