//! Raw image files and block devices (LVM logical volumes are block devices).

use crate::extent::push_merged;
use crate::sequential::{fill_segment, ConcurrentSegments, Segment};
use crate::{DiskSource, Extent, ExtentKind, IngestError};
use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// A raw disk image or block device. Holes in regular files are found with
/// `SEEK_DATA`/`SEEK_HOLE` and reported as unallocated; block devices are all data.
pub struct RawFile {
    file: File,
    path: PathBuf,
    size: u64,
    is_block_device: bool,
    /// The same file opened with `O_DIRECT`, for reads whose offset, length and buffer
    /// are page-aligned: the data lands in our buffer without a copy through the page
    /// cache (that copy was 6-10 % of a full backup's CPU). `None` where the file system
    /// refuses direct I/O.
    direct: Option<File>,
    /// Set at the first read the kernel refuses with `EINVAL` on `direct` (alignment rules
    /// stricter than ours): every read goes through the page cache from then on.
    direct_refused: AtomicBool,
}

/// Alignment of offset, length and memory for a direct read (the largest logical block
/// size in use; 512-byte devices accept it too).
const DIRECT_ALIGN: usize = 4096;

/// Largest hole a direct read spans to join two data extents (see `read_gap_merge`).
const DIRECT_MERGE_GAP: u64 = 1 << 20;

impl RawFile {
    /// Opens a raw image file or block device read-only and finds its size
    /// (the `BLKGETSIZE64` ioctl for block devices). A direct descriptor is opened too
    /// unless [`DIRECT_IO_ENV`] is `0` (or the file system refuses it); aligned reads use
    /// it while [`set_direct_reads`] allows (the default).
    pub fn open(path: &Path) -> Result<Self, IngestError> {
        Self::open_with(path, direct_io_allowed())
    }

    /// [`RawFile::open`], reading with `O_DIRECT` where `direct` is true and the file
    /// system allows it (page-aligned reads only; others go through the page cache).
    pub fn open_with(path: &Path, direct: bool) -> Result<Self, IngestError> {
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
        let direct = if direct { open_direct(path) } else { None };
        Ok(RawFile {
            file,
            path: path.to_path_buf(),
            size,
            is_block_device,
            direct,
            direct_refused: AtomicBool::new(false),
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

/// Environment variable for direct (`O_DIRECT`) I/O: `0` turns it off everywhere
/// (source reads here, restore and pack writes in the repository), `1` makes every
/// backup read its raw sources directly, and unset leaves the choice of source reads to
/// [`direct_reads_wanted`].
pub const DIRECT_IO_ENV: &str = "VMVAULT_DIRECT_IO";

/// Whether vmvault may use direct I/O at all: yes unless [`DIRECT_IO_ENV`] is `0`. Source
/// reads, restore writes and pack writes all ask this.
pub fn direct_io_allowed() -> bool {
    std::env::var_os(DIRECT_IO_ENV).is_none_or(|v| v != "0")
}

/// Whether raw sources opened with a direct descriptor read through it (process-wide; set
/// by the backup command once it knows what kind of backup it runs).
static DIRECT_READS: AtomicBool = AtomicBool::new(true);

/// Chooses, for this process, whether raw sources read with `O_DIRECT` (where they could
/// open it: not with `VMVAULT_DIRECT_IO=0`, not on tmpfs) or through the page cache.
/// Takes effect at the next read of every open [`RawFile`].
pub fn set_direct_reads(on: bool) {
    DIRECT_READS.store(on, Ordering::Relaxed);
}

/// The source-read policy: with `VMVAULT_DIRECT_IO` set to `value`, whether a backup
/// should read raw sources directly. `0`: never; `1`: always; unset (or anything else):
/// only for the first backup of a VM (`first_backup`), which stores most of what it reads
/// and is bound by compression, so the page cache's copy and fresh pages are pure cost
/// (PERFORMANCE.md round 5: cold full backups 18-20 % faster). Later backups store
/// little and are bound by reading, where the kernel's readahead served the disks
/// measured better than direct reads (e2e: unchanged re-backup 0.92 s buffered against
/// 1.42 s direct).
pub fn direct_reads_wanted(value: Option<&std::ffi::OsStr>, first_backup: bool) -> bool {
    match value.and_then(|v| v.to_str()) {
        Some("0") => false,
        Some("1") => true,
        _ => first_backup,
    }
}

/// Opens `path` again with `O_DIRECT`, or `None` where that is not possible (tmpfs, some
/// network file systems).
fn open_direct(path: &Path) -> Option<File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        None
    }
}

impl RawFile {
    /// The allocation map, as [`DiskSource::extents`]; callable from several threads.
    fn map_extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, IngestError> {
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

    /// Reads as [`DiskSource::read_at`]; callable from several threads (`pread`).
    fn pread(&self, offset: u64, buf: &mut [u8]) -> Result<(), IngestError> {
        let aligned = !buf.is_empty()
            && offset.is_multiple_of(DIRECT_ALIGN as u64)
            && buf.len().is_multiple_of(DIRECT_ALIGN)
            && buf.as_ptr().align_offset(DIRECT_ALIGN) == 0;
        let direct = self.direct.as_ref().filter(|_| self.reads_direct());
        if let (true, Some(direct)) = (aligned, direct) {
            match direct.read_exact_at(buf, offset) {
                Ok(()) => return Ok(()),
                // Refused (alignment rules stricter than ours, or no direct I/O after
                // all): read through the page cache from now on.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.direct_refused.store(true, Ordering::Relaxed)
                }
                // A short read (the file shrank): the buffered read below reports it.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
                Err(e) => return Err(self.read_err(offset, e)),
            }
        }
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

    /// Whether reads go through the direct descriptor (when there is one).
    fn reads_direct(&self) -> bool {
        DIRECT_READS.load(Ordering::Relaxed) && !self.direct_refused.load(Ordering::Relaxed)
    }

    /// See [`DiskSource::read_gap_merge`].
    fn merge_gap(&self) -> u64 {
        // With direct I/O each read waits for the device, and a hole read that way costs
        // only zero-filling our buffer: one read per segment beats one per extent.
        if self.direct.is_some() && self.reads_direct() {
            DIRECT_MERGE_GAP
        } else {
            0
        }
    }
}

impl DiskSource for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn extents(&mut self, offset: u64, len: u64) -> Result<Vec<Extent>, IngestError> {
        self.map_extents(offset, len)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IngestError> {
        self.pread(offset, buf)
    }

    fn read_gap_merge(&self) -> u64 {
        self.merge_gap()
    }

    fn concurrent(&self) -> Option<&dyn ConcurrentSegments> {
        Some(self)
    }

    fn format_name(&self) -> &'static str {
        if self.is_block_device {
            "block device"
        } else {
            "raw"
        }
    }
}

impl ConcurrentSegments for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_segment(
        &self,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<Segment, IngestError> {
        let len = len.min(self.size.saturating_sub(offset));
        let extents = self.map_extents(offset, len)?;
        fill_segment(offset, len, extents, self.merge_gap(), buf, |at, part| {
            self.pread(at, part)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    /// Direct reads are the default: unless `VMVAULT_DIRECT_IO=0` is set, a file on a file
    /// system that accepts `O_DIRECT` is read with it.
    #[test]
    fn direct_reads_are_the_default_where_the_file_system_allows_them() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
        let raw = RawFile::open(f.path()).unwrap();
        let setting = std::env::var_os(DIRECT_IO_ENV);
        let wanted = setting.as_ref().is_none_or(|v| v != "0") && open_direct(f.path()).is_some();
        assert_eq!(raw.direct.is_some(), wanted, "{DIRECT_IO_ENV}={setting:?}");
        assert!(RawFile::open_with(f.path(), false)
            .unwrap()
            .direct
            .is_none());
    }

    #[test]
    fn direct_reads_serve_first_backups_unless_the_environment_decides() {
        use std::ffi::OsStr;
        for first in [false, true] {
            assert!(!direct_reads_wanted(Some(OsStr::new("0")), first));
            assert!(direct_reads_wanted(Some(OsStr::new("1")), first));
            assert_eq!(direct_reads_wanted(None, first), first);
            assert_eq!(direct_reads_wanted(Some(OsStr::new("auto")), first), first);
        }
    }

    /// A buffer of `len` bytes starting at a page boundary inside `backing`.
    fn aligned(backing: &mut Vec<u8>, len: usize) -> &mut [u8] {
        backing.resize(len + DIRECT_ALIGN, 0);
        let start = backing.as_ptr().align_offset(DIRECT_ALIGN);
        &mut backing[start..start + len]
    }

    #[test]
    fn aligned_and_unaligned_reads_return_the_same_bytes() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..(1u32 << 20) + 123)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        f.write_all(&data).unwrap();
        f.flush().unwrap();
        let mut raw = RawFile::open_with(f.path(), true).unwrap();
        let mut backing = Vec::new();
        // Page-aligned offset, length and memory: the direct path where it is available.
        let buf = aligned(&mut backing, 256 << 10);
        raw.read_at(64 << 10, buf).unwrap();
        assert_eq!(buf, &data[64 << 10..320 << 10]);
        // Unaligned in each way: the page-cache path.
        let mut odd = vec![0u8; 5000];
        raw.read_at(4097, &mut odd).unwrap();
        assert_eq!(odd, &data[4097..9097]);
        let buf = aligned(&mut backing, 4096);
        raw.read_at(1 << 20, &mut buf[..123]).unwrap();
        assert_eq!(&buf[..123], &data[1 << 20..]);
    }

    #[test]
    fn sequential_reads_of_a_fragmented_file_return_every_data_byte() {
        use crate::{Sequential, SequentialDisk};
        // Data extents at odd places with holes of many sizes between them, across
        // segment boundaries, and an unaligned end.
        let size: u64 = (6 << 20) + 1536;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.as_file_mut().set_len(size).unwrap();
        let mut expected = vec![0u8; size as usize];
        let mut at = 4096u64;
        let mut n = 0u64;
        while at < size {
            let len = (4096 * (1 + n % 7)).min(size - at);
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 + n * 7 + 1) as u8).collect();
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&bytes).unwrap();
            expected[at as usize..(at + len) as usize].copy_from_slice(&bytes);
            at += len + 4096 * ((n * n) % 300);
            n += 1;
        }
        f.flush().unwrap();
        // Both read paths: one read per data extent (page cache), and merged,
        // page-aligned reads (direct I/O where the file system allows it).
        for direct in [false, true] {
            let raw = RawFile::open_with(f.path(), direct).unwrap();
            let merge = raw.read_gap_merge();
            assert!(direct || merge == 0);
            let mut seq = Sequential::new(raw);
            let mut buf = Vec::new();
            let mut segments = 0;
            while let Some(seg) = seq.next_segment(1 << 20, &mut buf).unwrap() {
                segments += 1;
                for e in seg.extents.iter().filter(|e| e.kind == ExtentKind::Data) {
                    let start = seg.data_start + (e.offset - seg.offset) as usize;
                    assert_eq!(
                        &buf[start..start + e.len as usize],
                        &expected[e.offset as usize..e.end() as usize],
                        "extent at {}",
                        e.offset
                    );
                }
                for e in seg.extents.iter().filter(|e| e.kind != ExtentKind::Data) {
                    let range = e.offset as usize..e.end() as usize;
                    assert!(
                        expected[range].iter().all(|&b| b == 0),
                        "hole at {}",
                        e.offset
                    );
                }
            }
            assert_eq!(segments, 7, "direct: {direct}");
        }
    }

    #[test]
    fn concurrent_segment_reads_match_sequential_ones() {
        use crate::{ConcurrentSegments, Sequential, SequentialDisk};
        let size: u64 = (5 << 20) + 4096 * 3 + 100;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.as_file_mut().set_len(size).unwrap();
        for (i, at) in [0u64, 300 << 10, 1 << 20, (3 << 20) + 512, size - 5000]
            .into_iter()
            .enumerate()
        {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&vec![i as u8 + 1; 70_000.min((size - at) as usize)])
                .unwrap();
        }
        f.flush().unwrap();
        for direct in [false, true] {
            let mut seq = Sequential::new(RawFile::open_with(f.path(), direct).unwrap());
            let shared = RawFile::open_with(f.path(), direct).unwrap();
            let seg_size = 1u64 << 20;
            let mut expected = Vec::new();
            let mut buf = Vec::new();
            while let Some(seg) = seq.next_segment(seg_size as usize, &mut buf).unwrap() {
                let data = buf[seg.data_start..seg.data_start + seg.len as usize].to_vec();
                expected.push((seg.offset, seg.len, seg.extents, data));
            }
            // The same segments read by four threads at once, in any order.
            let got = std::sync::Mutex::new(Vec::new());
            let next = std::sync::atomic::AtomicU64::new(0);
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        let mut buf = Vec::new();
                        loop {
                            let at = next.fetch_add(seg_size, Ordering::Relaxed);
                            if at >= ConcurrentSegments::size(&shared) {
                                return;
                            }
                            let seg = shared.read_segment(at, seg_size, &mut buf).unwrap();
                            let data =
                                buf[seg.data_start..seg.data_start + seg.len as usize].to_vec();
                            got.lock()
                                .unwrap()
                                .push((seg.offset, seg.len, seg.extents, data));
                        }
                    });
                }
            });
            let mut got = got.into_inner().unwrap();
            got.sort_by_key(|g| g.0);
            assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(&expected) {
                assert_eq!((g.0, g.1, &g.2), (e.0, e.1, &e.2), "direct: {direct}");
                // Only data extents carry bytes that count.
                for x in g.2.iter().filter(|x| x.kind == ExtentKind::Data) {
                    let r = (x.offset - g.0) as usize..(x.end() - g.0) as usize;
                    assert_eq!(&g.3[r.clone()], &e.3[r], "direct: {direct}");
                }
            }
        }
    }

    #[test]
    fn aligned_read_of_a_file_that_shrank_reports_truncation() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![7u8; 1 << 20]).unwrap();
        f.flush().unwrap();
        let mut raw = RawFile::open_with(f.path(), true).unwrap();
        f.as_file().set_len(256 << 10).unwrap();
        let mut backing = Vec::new();
        let buf = aligned(&mut backing, 512 << 10);
        let err = raw.read_at(0, buf).unwrap_err();
        assert!(
            matches!(err, IngestError::Truncated { .. }),
            "expected a truncation error, got {err}"
        );
    }

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
        assert_eq!(DiskSource::size(&raw), 8 << 20);
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
