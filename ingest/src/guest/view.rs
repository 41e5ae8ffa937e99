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
pub struct DiskSourceView {
    inner: std::sync::Mutex<Box<dyn crate::DiskSource>>,
    size: u64,
    name: String,
}

impl DiskSourceView {
    /// Wraps `source`, called `name` in messages.
    pub fn new(source: Box<dyn crate::DiskSource>, name: String) -> Self {
        DiskSourceView {
            size: source.size(),
            inner: std::sync::Mutex::new(source),
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
        let mut src = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        src.read_at(offset, buf).map_err(|e| GuestError::Io {
            what: self.name.clone(),
            offset,
            source: std::io::Error::other(e),
        })
    }
    fn name(&self) -> &str {
        &self.name
    }
}
