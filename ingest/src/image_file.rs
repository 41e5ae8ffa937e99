//! Positioned reads from the files an image consists of, kept apart from format parsing
//! so that every parser also runs on in-memory bytes (tests, fuzzing).

use crate::IngestError;
use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;

/// Read-only, positioned access to one file of an image (or an in-memory copy of one).
pub trait ReadAt: Send {
    /// The file's length in bytes, fixed when it was opened.
    fn len(&self) -> u64;

    /// True for an empty file.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from `offset`; a read past [`ReadAt::len`] fails with
    /// [`std::io::ErrorKind::UnexpectedEof`] rather than returning short data.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;

    /// The file's name as the user gave it, for error messages.
    fn name(&self) -> &str;

    /// The ranges of `[offset, offset + len)` (clamped to the file) that hold data, sorted;
    /// the rest are holes that read as zeros. `None` when unknown (all may be data).
    fn data_ranges(&self, _offset: u64, _len: u64) -> Option<Vec<(u64, u64)>> {
        None
    }
}

/// An image file (or block device) on disk.
pub struct ImageFile {
    file: File,
    len: u64,
    name: String,
}

impl ImageFile {
    /// Opens `path` read-only; its length is taken now (the `BLKGETSIZE64` ioctl for a
    /// block device).
    pub fn open(path: &Path) -> Result<Self, IngestError> {
        let open_err = |source| IngestError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let len = if meta.file_type().is_block_device() {
            crate::block_device_size(&file).map_err(open_err)?
        } else if meta.is_file() {
            meta.len()
        } else {
            return Err(IngestError::Unsupported {
                path: path.to_path_buf(),
                reason: "not a regular file or block device".into(),
            });
        };
        Ok(ImageFile {
            file,
            len,
            name: path.display().to_string(),
        })
    }
}

impl ReadAt for ImageFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.file.read_exact_at(buf, offset)
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn data_ranges(&self, offset: u64, len: u64) -> Option<Vec<(u64, u64)>> {
        use rustix::fs::{seek, SeekFrom};
        let end = offset.saturating_add(len).min(self.len);
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let data = match seek(&self.file, SeekFrom::Data(pos)) {
                Ok(d) => d.min(end),
                Err(rustix::io::Errno::NXIO) => end,
                // No SEEK_DATA here (or a block device): unknown.
                Err(_) => return None,
            };
            if data >= end {
                break;
            }
            let hole = match seek(&self.file, SeekFrom::Hole(data)) {
                Ok(h) if h > data => h.min(end),
                _ => end,
            };
            out.push((data, hole - data));
            pos = hole;
        }
        Some(out)
    }
}

/// An image held in memory: tests and fuzz targets parse these.
pub struct MemFile {
    bytes: Vec<u8>,
    name: String,
}

impl MemFile {
    /// Wraps `bytes`, called `name` in error messages.
    pub fn new(bytes: Vec<u8>, name: &str) -> Self {
        MemFile {
            bytes,
            name: name.to_string(),
        }
    }
}

impl ReadAt for MemFile {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| std::io::ErrorKind::UnexpectedEof)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.bytes.get(start..end))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// Reads `len` bytes at `offset` of `file` into a new buffer, first checking that they lie
/// inside the file, so a length taken from a damaged header never allocates more than
/// the file holds. `format` and `what` describe the structure for the error message.
pub fn read_checked(
    file: &dyn ReadAt,
    format: &'static str,
    what: &str,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, IngestError> {
    if offset.checked_add(len).is_none_or(|end| end > file.len()) {
        return Err(IngestError::Corrupt {
            what: file.name().to_string(),
            format,
            offset,
            reason: format!(
                "{what} of {len} bytes runs past the end of the file ({} bytes)",
                file.len()
            ),
        });
    }
    let mut buf = vec![0u8; len as usize];
    read_into(file, format, offset, &mut buf)?;
    Ok(buf)
}

/// Fills `buf` from `offset` of `file`, turning a short file into a
/// [`IngestError::Corrupt`] that names `format` and the offset.
pub fn read_into(
    file: &dyn ReadAt,
    format: &'static str,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), IngestError> {
    file.read_exact_at(offset, buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            IngestError::Corrupt {
                what: file.name().to_string(),
                format,
                offset,
                reason: format!(
                    "{} bytes at this offset run past the end of the file ({} bytes): truncated?",
                    buf.len(),
                    file.len()
                ),
            }
        } else {
            IngestError::Read {
                what: file.name().to_string(),
                offset,
                source: e,
            }
        }
    })
}
