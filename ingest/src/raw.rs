//! Raw image files and block devices (LVM logical volumes are block devices).

use crate::extent::push_merged;
use crate::{DiskSource, Extent, ExtentKind, IngestError};
use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

/// A raw disk image or block device. Holes in regular files are found with
/// `SEEK_DATA`/`SEEK_HOLE` and reported as unallocated; block devices are all data.
pub struct RawFile {
    file: File,
    path: PathBuf,
    size: u64,
    is_block_device: bool,
}

impl RawFile {
    /// Opens a raw image file or block device read-only and finds its size
    /// (the `BLKGETSIZE64` ioctl for block devices).
    pub fn open(path: &Path) -> Result<Self, IngestError> {
        let open_err = |source| IngestError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let ft = meta.file_type();
        let (size, is_block_device) = if ft.is_block_device() {
            (block_device_size(&file).map_err(open_err)?, true)
        } else if ft.is_file() {
            (meta.len(), false)
        } else {
            return Err(IngestError::Unsupported {
                path: path.to_path_buf(),
                reason: "not a regular file or block device (use '-' for a stream)".into(),
            });
        };
        // Reads go front to back: ask for aggressive readahead. Advisory only, so a
        // failure (e.g. on a filesystem that does not support it) is ignored.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential);
        Ok(RawFile {
            file,
            path: path.to_path_buf(),
            size,
            is_block_device,
        })
    }

    /// True when the source is a block device.
    pub fn is_block_device(&self) -> bool {
        self.is_block_device
    }

    fn read_err(&self, offset: u64, source: std::io::Error) -> IngestError {
        IngestError::Read {
            what: self.path.display().to_string(),
            offset,
            source,
        }
    }
}

/// The size of a block device in bytes, from the `BLKGETSIZE64` ioctl.
pub fn block_device_size(file: &File) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    // _IOR(0x12, 114, size_t) on Linux.
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: the fd is open for the lifetime of `file`, and BLKGETSIZE64 writes exactly
    // one u64 through the pointer, which points at a live, aligned u64 on our stack.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size)
}

impl DiskSource for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn extents(&mut self, offset: u64, len: u64) -> Result<Vec<Extent>, IngestError> {
        let end = offset.saturating_add(len).min(self.size);
        let mut out = Vec::new();
        if offset >= end {
            return Ok(out);
        }
        if self.is_block_device {
            out.push(Extent {
                offset,
                len: end - offset,
                kind: ExtentKind::Data,
            });
            return Ok(out);
        }
        let mut pos = offset;
        while pos < end {
            let data = match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Data(pos)) {
                Ok(d) => d.min(end),
                // ENXIO: no data at or after pos.
                Err(rustix::io::Errno::NXIO) => end,
                // Filesystems without SEEK_DATA support: treat everything as data.
                Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::OPNOTSUPP) => pos,
                Err(e) => return Err(self.read_err(pos, e.into())),
            };
            push_merged(
                &mut out,
                Extent {
                    offset: pos,
                    len: data - pos,
                    kind: ExtentKind::Unallocated,
                },
            );
            if data >= end {
                break;
            }
            let hole = match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Hole(data)) {
                Ok(h) => h.min(end),
                Err(_) => end,
            };
            // A hole offset not beyond data would loop forever: treat the rest as data.
            let hole = if hole <= data { end } else { hole };
            push_merged(
                &mut out,
                Extent {
                    offset: data,
                    len: hole - data,
                    kind: ExtentKind::Data,
                },
            );
            pos = hole;
        }
        Ok(out)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IngestError> {
        match self.file.read_exact_at(buf, offset) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                let now = self.file.metadata().map(|m| m.len()).unwrap_or(0);
                Err(IngestError::Truncated {
                    what: self.path.display().to_string(),
                    expected: self.size,
                    got: now.min(self.size),
                })
            }
            Err(e) => Err(self.read_err(offset, e)),
        }
    }

    fn format_name(&self) -> &'static str {
        if self.is_block_device {
            "block device"
        } else {
            "raw"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn holes_are_reported_unallocated() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.as_file_mut().set_len(8 << 20).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[0xab; 64 << 10]).unwrap();
        f.seek(SeekFrom::Start(5 << 20)).unwrap();
        f.write_all(&[0xcd; 4096]).unwrap();
        f.flush().unwrap();
        let mut raw = RawFile::open(f.path()).unwrap();
        assert_eq!(raw.size(), 8 << 20);
        let ext = raw.extents(0, 8 << 20).unwrap();
        let data: u64 = ext
            .iter()
            .filter(|e| e.kind == ExtentKind::Data)
            .map(|e| e.len)
            .sum();
        assert!((68 << 10..1 << 20).contains(&data), "data {data}: {ext:?}");
        let covered: u64 = ext.iter().map(|e| e.len).sum();
        assert_eq!(covered, 8 << 20);
        // A sub-range is clamped and still covered exactly.
        let part = raw.extents(1 << 20, 16 << 20).unwrap();
        assert_eq!(part.first().unwrap().offset, 1 << 20);
        assert_eq!(part.last().unwrap().end(), 8 << 20);
        let mut buf = vec![0u8; 4096];
        raw.read_at(5 << 20, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0xcd));
    }

    #[test]
    fn shrinking_file_is_reported_truncated() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let mut raw = RawFile::open(f.path()).unwrap();
        f.as_file().set_len(4096).unwrap();
        let mut buf = vec![0u8; 8192];
        let err = raw.read_at(0, &mut buf).unwrap_err();
        assert!(matches!(err, IngestError::Truncated { .. }), "{err}");
    }

    #[test]
    fn directories_are_refused() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            RawFile::open(d.path()),
            Err(IngestError::Unsupported { .. })
        ));
    }
}
