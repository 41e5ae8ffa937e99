//! Writing VHD images (restore `--format vhd`): dynamic (sparse, the default) and fixed.
//!
//! Size: VHD addresses whole sectors, so a size that is not a multiple of 512 is rounded
//! up (the extra bytes read as zeros). The footer is the one `qemu-img create -o
//! force_size=on` writes: creator "qem2" and the maximum CHS geometry, which makes qemu
//! (any version since 2.6), Hyper-V/Windows and VirtualBox all take the footer's current
//! size as the disk size, so `qemu-img info` reports exactly the (rounded) size rather
//! than the CHS geometry's smaller capacity.
//!
//! Dynamic layout (as qemu's): footer copy at 0, dynamic header at 512, BAT at 1536
//! (padded to a sector with unused entries), then 2 MiB blocks, each a full sector bitmap
//! and the block's data, then the footer. Only blocks holding a non-zero byte are
//! allocated. The BAT stays in memory (4 bytes per 2 MiB block) and is written by
//! `finish`. Fixed layout: the disk's bytes (gaps written as zeros), then the footer.

use super::format::{self, FooterFields, BAT_UNUSED, FOOTER_SIZE, HEADER_SIZE, SECTOR};
use crate::write::{check_order, write_err};
use crate::{ImageWriter, IngestError};
use std::hash::{BuildHasher, Hasher};
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;

/// Block size of the dynamic disks written.
const BLOCK: u64 = 2 << 20;
/// Largest disk qemu opens (0xff000000 sectors, 2040 GiB).
const MAX_SIZE: u64 = 0xff00_0000 * SECTOR;
/// Where the BAT starts in a dynamic disk written here.
const BAT_AT: u64 = (FOOTER_SIZE + HEADER_SIZE) as u64;
/// Seconds from the Unix epoch to 2000-01-01 00:00:00 UTC, the VHD timestamp base.
const VHD_EPOCH: u64 = 946_684_800;

static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Creates a writer producing a VHD of `size` bytes (rounded up to whole sectors) on
/// `out`, called `name` in errors: dynamic, or fixed when `fixed`. `out` is written from
/// its start; disks over 2040 GiB (qemu's limit) are refused.
pub fn create_writer<W: Write + Seek + Send + 'static>(
    out: W,
    name: &str,
    size: u64,
    fixed: bool,
) -> Result<Box<dyn ImageWriter>, IngestError> {
    let image_size = size
        .checked_next_multiple_of(SECTOR)
        .filter(|&s| s <= MAX_SIZE)
        .ok_or_else(|| IngestError::Unsupported {
            path: PathBuf::from(name),
            reason: format!("a VHD holds at most {MAX_SIZE} bytes; this disk has {size}"),
        })?;
    let footer = |disk_type, data_offset| {
        format::build_footer(&FooterFields {
            data_offset,
            timestamp: timestamp(),
            size: image_size,
            disk_type,
            unique_id: new_unique_id(),
        })
    };
    let mut out = out;
    out.seek(SeekFrom::Start(0)).map_err(write_err(name))?;
    if fixed {
        return Ok(Box::new(FixedWriter {
            out,
            name: name.to_string(),
            size,
            image_size,
            pos: 0,
            footer: footer(2, u64::MAX),
        }));
    }
    let blocks = image_size.div_ceil(BLOCK);
    let bat_bytes = (blocks * 4).next_multiple_of(SECTOR);
    let first_block = BAT_AT + bat_bytes;
    out.seek(SeekFrom::Start(first_block))
        .map_err(write_err(name))?;
    Ok(Box::new(DynamicWriter {
        out,
        name: name.to_string(),
        size,
        bat: vec![BAT_UNUSED; blocks as usize],
        bat_bytes,
        next_free: first_block,
        current: None,
        next: 0,
        footer: footer(3, FOOTER_SIZE as u64),
    }))
}

/// Seconds since 2000-01-01 UTC, now.
fn timestamp() -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    u32::try_from(now.saturating_sub(VHD_EPOCH)).unwrap_or(u32::MAX)
}

/// A random (version 4) UUID from the standard library's randomly keyed hasher.
fn new_unique_id() -> [u8; 16] {
    let state = std::collections::hash_map::RandomState::new();
    let mut id = [0u8; 16];
    for (i, half) in id.chunks_exact_mut(8).enumerate() {
        let mut h = state.build_hasher();
        h.write_usize(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

/// Writes `n` zero bytes.
fn write_zeros(out: &mut impl Write, mut n: u64) -> std::io::Result<()> {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        out.write_all(&ZEROS[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// A fixed VHD: the data as it comes, zeros in the gaps, the footer at the end.
struct FixedWriter<W> {
    out: W,
    name: String,
    size: u64,
    image_size: u64,
    /// Bytes of the disk written so far.
    pos: u64,
    footer: [u8; FOOTER_SIZE],
}

impl<W: Write + Seek + Send> ImageWriter for FixedWriter<W> {
    fn write_data(&mut self, offset: u64, data: &[u8]) -> Result<(), IngestError> {
        check_order(&self.name, self.pos, offset, data.len(), self.size)?;
        let err = write_err(&self.name);
        write_zeros(&mut self.out, offset - self.pos).map_err(&err)?;
        self.out.write_all(data).map_err(&err)?;
        self.pos = offset + data.len() as u64;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<u64, IngestError> {
        let err = write_err(&self.name);
        write_zeros(&mut self.out, self.image_size - self.pos).map_err(&err)?;
        self.out.write_all(&self.footer).map_err(&err)?;
        self.out.flush().map_err(&err)?;
        Ok(self.image_size + FOOTER_SIZE as u64)
    }
}

/// A dynamic VHD written front to back: blocks are appended as the first non-zero byte
/// of each arrives; headers and BAT are written last.
struct DynamicWriter<W> {
    out: W,
    name: String,
    size: u64,
    bat: Vec<u32>,
    /// Bytes reserved for the BAT (a whole number of sectors).
    bat_bytes: u64,
    /// File offset where the next block's bitmap goes (the output's position when no
    /// block is open).
    next_free: u64,
    /// The block being filled: its index and the bytes of it written so far.
    current: Option<(u64, u64)>,
    /// End of the previous write (ordering check).
    next: u64,
    footer: [u8; FOOTER_SIZE],
}

impl<W: Write + Seek + Send> DynamicWriter<W> {
    /// Pads the open block, if any, with zeros to its end.
    fn close_block(&mut self) -> std::io::Result<()> {
        if let Some((_, filled)) = self.current.take() {
            write_zeros(&mut self.out, BLOCK - filled)?;
        }
        Ok(())
    }

    /// Writes `piece` at `in_off` of block `idx` (the piece stays inside the block).
    fn write_piece(&mut self, idx: u64, in_off: u64, piece: &[u8]) -> std::io::Result<()> {
        let filled = match self.current {
            Some((cur, filled)) if cur == idx => filled,
            _ => {
                if piece.iter().all(|&b| b == 0) {
                    return Ok(());
                }
                self.close_block()?;
                let sector = u32::try_from(self.next_free / SECTOR).map_err(|_| {
                    std::io::Error::other("VHD block offset beyond the BAT's reach")
                })?;
                if let Some(e) = self.bat.get_mut(idx as usize) {
                    *e = sector;
                }
                self.out.write_all(&[0xFF; SECTOR as usize])?;
                self.next_free += SECTOR + BLOCK;
                0
            }
        };
        write_zeros(&mut self.out, in_off - filled)?;
        self.out.write_all(piece)?;
        self.current = Some((idx, in_off + piece.len() as u64));
        Ok(())
    }
}

impl<W: Write + Seek + Send> ImageWriter for DynamicWriter<W> {
    fn write_data(&mut self, offset: u64, data: &[u8]) -> Result<(), IngestError> {
        check_order(&self.name, self.next, offset, data.len(), self.size)?;
        self.next = offset + data.len() as u64;
        let mut off = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let idx = off / BLOCK;
            let in_off = off % BLOCK;
            let n = (BLOCK - in_off).min(rest.len() as u64) as usize;
            let (piece, tail) = rest.split_at(n);
            self.write_piece(idx, in_off, piece)
                .map_err(write_err(&self.name))?;
            off += n as u64;
            rest = tail;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<u64, IngestError> {
        let name = self.name.clone();
        let err = write_err(&name);
        self.close_block().map_err(&err)?;
        self.out.write_all(&self.footer).map_err(&err)?;
        let total = self.next_free + FOOTER_SIZE as u64;
        let header = format::build_dynamic_header(BAT_AT, self.bat.len() as u32, BLOCK as u32);
        let mut bat: Vec<u8> = Vec::with_capacity(self.bat_bytes as usize);
        for e in &self.bat {
            bat.extend_from_slice(&e.to_be_bytes());
        }
        bat.resize(self.bat_bytes as usize, 0xFF);
        self.out.seek(SeekFrom::Start(0)).map_err(&err)?;
        self.out.write_all(&self.footer).map_err(&err)?;
        self.out.write_all(&header).map_err(&err)?;
        self.out.write_all(&bat).map_err(&err)?;
        self.out.flush().map_err(&err)?;
        Ok(total)
    }
}
