//! Writing a logical disk out as an image file (restore `--format`).
//!
//! A writer receives the disk's data in increasing offset order; every byte it is not
//! given reads as zero in the image it produces (left unallocated where the format
//! allows, so outputs are sparse).

use crate::IngestError;

/// Builds one image from a disk's data, delivered front to back.
pub trait ImageWriter: Send {
    /// Writes `data` at disk offset `offset`. Calls come in strictly increasing offset
    /// order and never overlap; `offset + data.len()` never exceeds the disk size the
    /// writer was created with. Offsets and lengths need not be aligned to anything.
    fn write_data(&mut self, offset: u64, data: &[u8]) -> Result<(), IngestError>;

    /// Writes whatever the format needs after the data (tables, footers), flushes, and
    /// returns the output's size in bytes. Without this call the output is incomplete.
    fn finish(self: Box<Self>) -> Result<u64, IngestError>;
}

/// Checks the ordering contract of [`ImageWriter::write_data`]: `offset` not before
/// `next` (the end of the previous write) and the write inside `size`.
pub fn check_order(
    what: &str,
    next: u64,
    offset: u64,
    len: usize,
    size: u64,
) -> Result<(), IngestError> {
    let end = offset.checked_add(len as u64);
    if offset < next || end.is_none_or(|e| e > size) {
        return Err(IngestError::Write {
            what: what.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "internal error: write of {len} bytes at {offset} is out of order \
                     (next allowed offset {next}) or past the disk size {size}"
                ),
            ),
        });
    }
    Ok(())
}

/// Maps an I/O error of output `what` to [`IngestError::Write`].
pub fn write_err(what: &str) -> impl Fn(std::io::Error) -> IngestError + '_ {
    move |source| IngestError::Write {
        what: what.to_string(),
        source,
    }
}
