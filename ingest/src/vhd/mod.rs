//! Microsoft Virtual Hard Disk (VHD, qemu's "vpc"): fixed, dynamic and differencing
//! disks, read as [`DiskSource`]s, and fixed and dynamic disks written by
//! [`create_writer`].
//!
//! Layout: a 512-byte footer ends the file (some old writers leave 511 bytes); dynamic
//! and differencing disks also keep a copy at offset 0, used when the end copy is
//! damaged. Those point to a dynamic disk header, which points to the block allocation
//! table (BAT): one big-endian sector number per block, locating a sector bitmap followed
//! by the block's data. A sector whose bitmap bit is clear reads as zero on a dynamic
//! disk and comes from the parent on a differencing disk.

mod disk;
mod format;
mod parent;
mod writer;

pub use writer::create_writer;

use crate::image_file::{read_checked, read_into, ReadAt};
use crate::open::FileResolver;
use crate::{DiskSource, IngestError};
use disk::{Sparse, VhdDisk};
use format::{DiskType, Footer, ParseError, FOOTER_SIZE, HEADER_SIZE};

/// Format name used in error messages.
const FORMAT: &str = "VHD";

/// Opens a VHD image from `file`, reaching a differencing disk's parent through
/// `resolver`. Every structure is checked against the file's length before use; damaged
/// metadata gives [`IngestError::Corrupt`], never a misread disk.
pub fn open(
    file: Box<dyn ReadAt>,
    resolver: &mut dyn FileResolver,
) -> Result<Box<dyn DiskSource>, IngestError> {
    let (footer, has_head_copy, footer_at) = read_footer(file.as_ref())?;
    let size = footer.disk_size();
    match footer.disk_type {
        DiskType::Fixed => {
            if size > footer_at {
                return Err(corrupt(
                    file.as_ref(),
                    0,
                    format!(
                        "fixed disk of {size} bytes does not fit in a file of {} bytes: \
                         truncated?",
                        file.len()
                    ),
                ));
            }
            Ok(Box::new(VhdDisk::fixed(file, size)))
        }
        DiskType::Dynamic | DiskType::Differencing => {
            let header_bytes = read_checked(
                file.as_ref(),
                FORMAT,
                "dynamic disk header",
                footer.data_offset,
                HEADER_SIZE as u64,
            )?;
            let header = format::parse_dynamic_header(&header_bytes)
                .map_err(|e| parse_err(file.as_ref(), footer.data_offset, e))?;
            let parent = if footer.disk_type == DiskType::Differencing {
                Some(parent::open_parent(file.as_ref(), &header, resolver)?)
            } else {
                None
            };
            let meta = disk::Metadata {
                has_head_copy,
                header_offset: footer.data_offset,
            };
            let sparse = Sparse::load(file.as_ref(), &header, size, &meta, parent)?;
            Ok(Box::new(VhdDisk::sparse(file, size, sparse)))
        }
    }
}

/// Finds the footer: the end copy (512 bytes, else the 511-byte variant) when its cookie
/// and checksum are good, else the copy at offset 0 of a dynamic or differencing disk.
/// Returns the footer, whether a valid copy sits at offset 0, and where the end copy
/// starts (the file's length when only the copy at offset 0 is usable).
fn read_footer(file: &dyn ReadAt) -> Result<(Footer, bool, u64), IngestError> {
    let len = file.len();
    if len < FOOTER_SIZE as u64 - 1 {
        return Err(corrupt(
            file,
            0,
            format!("a file of {len} bytes is too small to hold a VHD footer"),
        ));
    }
    let mut tail = [0u8; FOOTER_SIZE];
    let tail_at = len.saturating_sub(FOOTER_SIZE as u64);
    let tail_len = (len - tail_at) as usize;
    read_into(file, FORMAT, tail_at, &mut tail[..tail_len])?;
    let end = if format::has_footer_cookie(&tail[..tail_len]) {
        Some((tail_at, format::parse_footer(&tail[..tail_len])))
    } else if tail_len == FOOTER_SIZE && format::has_footer_cookie(&tail[1..]) {
        Some((tail_at + 1, format::parse_footer(&tail[1..])))
    } else {
        None
    };

    let head = if len >= 2 * FOOTER_SIZE as u64 {
        let mut b = [0u8; FOOTER_SIZE];
        read_into(file, FORMAT, 0, &mut b)?;
        format::has_footer_cookie(&b).then(|| format::parse_footer(&b))
    } else {
        None
    };
    let head_ok = match &head {
        Some(Ok(f)) => f.disk_type != DiskType::Fixed,
        _ => false,
    };

    match (end, head) {
        (Some((at, Ok(f))), _) => Ok((f, head_ok, at)),
        (_, Some(Ok(f))) if head_ok => Ok((f, true, len)),
        (Some((at, Err(e))), _) => Err(parse_err(file, at, e)),
        (None, Some(Err(e))) => Err(parse_err(file, 0, e)),
        (None, Some(Ok(_))) => Err(corrupt(
            file,
            tail_at,
            "fixed disk without a footer at the end of the file: truncated?".into(),
        )),
        (None, None) => Err(corrupt(
            file,
            tail_at,
            "no \"conectix\" footer at the end of the file or at its start".into(),
        )),
    }
}

/// A [`IngestError::Corrupt`] for `file` at `offset`.
fn corrupt(file: &dyn ReadAt, offset: u64, reason: String) -> IngestError {
    ParseError::Corrupt(reason).at(file, FORMAT, offset)
}

/// Turns a structure's [`ParseError`] into the matching [`IngestError`].
fn parse_err(file: &dyn ReadAt, offset: u64, e: ParseError) -> IngestError {
    e.at(file, FORMAT, offset)
}
