//! Writing VMDK images: monolithicSparse (seekable output) and streamOptimized (any
//! output, including a pipe).
//!
//! Both put the header in sector 0 and an embedded descriptor in sectors 1–20, then
//! append grains (64 KiB; all-zero grains are left unallocated) and, after each 32 MiB
//! span that holds data, its grain table; the grain directory follows the last grain.
//! monolithicSparse then rewrites the header with the directory's offset;
//! streamOptimized compresses each grain (deflate, with grain markers), frames tables
//! with markers and ends with a footer (the header with the directory's offset) and an
//! end-of-stream marker, so it never seeks. Memory: one grain, one grain table and the
//! grain directory (4 bytes per 32 MiB of disk).

use super::descriptor::embedded;
use super::sparse::{FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NL_DETECT, GD_AT_END, SECTOR};
use crate::write::{check_order, write_err, ImageWriter};
use crate::IngestError;
use std::io::{Seek, SeekFrom, Write};
use std::str::FromStr;

/// Grain size in sectors (64 KiB).
const GRAIN_SECTORS: u64 = 128;
/// Grain table entries.
const GTES: u64 = 512;
/// Sectors reserved for the embedded descriptor.
const DESC_SECTORS: u64 = 20;
/// Marker types of streamOptimized files.
const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;

/// The VMDK layouts vmvault writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmdkSubformat {
    /// One sparse file with grain tables (VMware Workstation, qemu).
    MonolithicSparse,
    /// Compressed grains in stream order (vSphere / OVF import).
    StreamOptimized,
}

impl FromStr for VmdkSubformat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "monolithicsparse" => Ok(VmdkSubformat::MonolithicSparse),
            "streamoptimized" => Ok(VmdkSubformat::StreamOptimized),
            _ => Err(format!(
                "unknown VMDK subformat {s:?} (monolithicSparse or streamOptimized)"
            )),
        }
    }
}

/// Where the image goes; only monolithicSparse needs to seek back to the header.
trait Sink: Write + Send {
    fn rewrite_header(&mut self, header: &[u8]) -> std::io::Result<()>;
}

struct Seekable<W>(W);
struct Streaming<W>(W);

impl<W: Write + Send> Write for Seekable<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write + Seek + Send> Sink for Seekable<W> {
    fn rewrite_header(&mut self, header: &[u8]) -> std::io::Result<()> {
        self.0.seek(SeekFrom::Start(0))?;
        self.0.write_all(header)?;
        self.0.seek(SeekFrom::End(0))?;
        Ok(())
    }
}

impl<W: Write + Send> Write for Streaming<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write + Send> Sink for Streaming<W> {
    fn rewrite_header(&mut self, _header: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::other(
            "a streamed VMDK cannot rewrite its header",
        ))
    }
}

/// A writer for a VMDK of `size` bytes in `subformat` into the seekable `out`.
pub fn create_writer<W: Write + Seek + Send + 'static>(
    out: W,
    name: &str,
    size: u64,
    subformat: VmdkSubformat,
) -> Result<Box<dyn ImageWriter>, IngestError> {
    VmdkWriter::start(Box::new(Seekable(out)), name, size, subformat)
}

/// A writer for a streamOptimized VMDK of `size` bytes into `out`, which need not seek
/// (standard output).
pub fn create_stream_writer<W: Write + Send + 'static>(
    out: W,
    name: &str,
    size: u64,
) -> Result<Box<dyn ImageWriter>, IngestError> {
    VmdkWriter::start(
        Box::new(Streaming(out)),
        name,
        size,
        VmdkSubformat::StreamOptimized,
    )
}

struct VmdkWriter {
    out: Box<dyn Sink>,
    name: String,
    size: u64,
    stream: bool,
    /// Bytes written so far (always a whole number of sectors between records).
    pos: u64,
    next: u64,
    /// The grain being filled: index and bytes.
    grain: Option<(u64, Vec<u8>)>,
    /// The grain table being filled: index and entries.
    gt: Option<(u64, Vec<u32>)>,
    gd: Vec<u32>,
    compressor: flate2::Compress,
    scratch: Vec<u8>,
}

fn header_bytes(capacity: u64, stream: bool, gd_offset: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[0..4].copy_from_slice(b"KDMV");
    let (version, flags) = if stream {
        (3u32, FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS)
    } else {
        (1u32, FLAG_NL_DETECT)
    };
    h[4..8].copy_from_slice(&version.to_le_bytes());
    h[8..12].copy_from_slice(&flags.to_le_bytes());
    h[12..20].copy_from_slice(&capacity.to_le_bytes());
    h[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
    h[28..36].copy_from_slice(&1u64.to_le_bytes());
    h[36..44].copy_from_slice(&DESC_SECTORS.to_le_bytes());
    h[44..48].copy_from_slice(&(GTES as u32).to_le_bytes());
    // rgdOffset 0: no redundant directory (the flag for it is not set).
    h[56..64].copy_from_slice(&gd_offset.to_le_bytes());
    h[64..72].copy_from_slice(&(1 + DESC_SECTORS).to_le_bytes());
    h[73] = b'\n';
    h[74] = b' ';
    h[75] = b'\r';
    h[76] = b'\n';
    h[77..79].copy_from_slice(&(u16::from(stream)).to_le_bytes());
    h
}

impl VmdkWriter {
    fn start(
        out: Box<dyn Sink>,
        name: &str,
        size: u64,
        subformat: VmdkSubformat,
    ) -> Result<Box<dyn ImageWriter>, IngestError> {
        let stream = subformat == VmdkSubformat::StreamOptimized;
        let capacity = size.div_ceil(SECTOR);
        let file_name = std::path::Path::new(name).file_name().map_or_else(
            || "disk.vmdk".to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let create_type = if stream {
            "streamOptimized"
        } else {
            "monolithicSparse"
        };
        let desc = embedded(create_type, &file_name.replace('"', "_"), capacity);
        let mut w = VmdkWriter {
            out,
            name: name.to_string(),
            size,
            stream,
            pos: 0,
            next: 0,
            grain: None,
            gt: None,
            gd: vec![0; capacity.div_ceil(GRAIN_SECTORS * GTES) as usize],
            compressor: flate2::Compress::new(flate2::Compression::fast(), true),
            scratch: Vec::new(),
        };
        let gd_offset = if stream { GD_AT_END } else { 0 };
        w.put(&header_bytes(capacity, stream, gd_offset))?;
        let mut d = desc.into_bytes();
        d.resize((DESC_SECTORS * SECTOR) as usize, 0);
        w.put(&d)?;
        Ok(Box::new(w))
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), IngestError> {
        self.out.write_all(bytes).map_err(write_err(&self.name))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Pads the output to a sector boundary.
    fn pad(&mut self) -> Result<(), IngestError> {
        let rem = (self.pos % SECTOR) as usize;
        if rem != 0 {
            self.put(&vec![0u8; SECTOR as usize - rem])?;
        }
        Ok(())
    }

    fn marker(&mut self, val: u64, kind: u32) -> Result<(), IngestError> {
        let mut m = [0u8; 512];
        m[0..8].copy_from_slice(&val.to_le_bytes());
        m[12..16].copy_from_slice(&kind.to_le_bytes());
        self.put(&m)
    }

    /// Writes the pending grain (if it holds any non-zero byte) and records it.
    fn flush_grain(&mut self) -> Result<(), IngestError> {
        let Some((g, bytes)) = self.grain.take() else {
            return Ok(());
        };
        if bytes.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let gt_index = g / GTES;
        if self.gt.as_ref().is_some_and(|(i, _)| *i != gt_index) {
            self.flush_gt()?;
        }
        let sector = u32::try_from(self.pos / SECTOR).map_err(|_| IngestError::Write {
            what: self.name.clone(),
            source: std::io::Error::other("image larger than VMDK's 2 TiB of grain offsets"),
        })?;
        if self.stream {
            self.scratch.clear();
            self.scratch.reserve(bytes.len() + 1024);
            self.compressor.reset();
            // Until the stream ends: a deflater may hold output back when the space left
            // is close to the worst case, so one call is not always enough.
            loop {
                let consumed = self.compressor.total_in() as usize;
                let status = self
                    .compressor
                    .compress_vec(
                        &bytes[consumed.min(bytes.len())..],
                        &mut self.scratch,
                        flate2::FlushCompress::Finish,
                    )
                    .map_err(|e| write_err(&self.name)(std::io::Error::other(e)))?;
                if status == flate2::Status::StreamEnd {
                    break;
                }
                self.scratch.reserve(64 << 10);
            }
            let mut m = [0u8; 12];
            m[0..8].copy_from_slice(&(g * GRAIN_SECTORS).to_le_bytes());
            m[8..12].copy_from_slice(&(self.scratch.len() as u32).to_le_bytes());
            self.put(&m)?;
            let data = std::mem::take(&mut self.scratch);
            let r = self.put(&data);
            self.scratch = data;
            r?;
            self.pad()?;
        } else {
            self.put(&bytes)?;
        }
        let (_, table) = self
            .gt
            .get_or_insert_with(|| (gt_index, vec![0; GTES as usize]));
        table[(g % GTES) as usize] = sector;
        Ok(())
    }

    /// Writes the pending grain table and records it in the directory.
    fn flush_gt(&mut self) -> Result<(), IngestError> {
        let Some((index, table)) = self.gt.take() else {
            return Ok(());
        };
        if self.stream {
            self.marker(GTES * 4 / SECTOR, MARKER_GT)?;
        }
        let at = (self.pos / SECTOR) as u32;
        let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
        self.put(&bytes)?;
        if let Some(slot) = self.gd.get_mut(index as usize) {
            *slot = at;
        }
        Ok(())
    }
}

impl ImageWriter for VmdkWriter {
    fn write_data(&mut self, offset: u64, data: &[u8]) -> Result<(), IngestError> {
        check_order(&self.name, self.next, offset, data.len(), self.size)?;
        self.next = offset + data.len() as u64;
        let gb = GRAIN_SECTORS * SECTOR;
        let mut pos = 0usize;
        while pos < data.len() {
            let o = offset + pos as u64;
            let g = o / gb;
            if self.grain.as_ref().is_some_and(|(i, _)| *i != g) {
                self.flush_grain()?;
            }
            let (_, grain) = self
                .grain
                .get_or_insert_with(|| (g, vec![0u8; gb as usize]));
            let at = (o % gb) as usize;
            let take = (gb as usize - at).min(data.len() - pos);
            grain[at..at + take].copy_from_slice(&data[pos..pos + take]);
            pos += take;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<u64, IngestError> {
        self.flush_grain()?;
        self.flush_gt()?;
        let capacity = self.size.div_ceil(SECTOR);
        let gd_bytes: Vec<u8> = self.gd.iter().flat_map(|e| e.to_le_bytes()).collect();
        if self.stream {
            self.marker((gd_bytes.len() as u64).div_ceil(SECTOR), MARKER_GD)?;
        }
        let gd_offset = self.pos / SECTOR;
        self.put(&gd_bytes)?;
        self.pad()?;
        let header = header_bytes(capacity, self.stream, gd_offset);
        if self.stream {
            self.marker(1, MARKER_FOOTER)?;
            self.put(&header)?;
            self.marker(0, MARKER_EOS)?;
        } else {
            self.out
                .rewrite_header(&header)
                .map_err(write_err(&self.name))?;
        }
        self.out.flush().map_err(write_err(&self.name))?;
        Ok(self.pos)
    }
}
