//! The output of a restore to a raw file or block device, written one block-aligned range
//! at a time.
//!
//! A regular file is written with `O_DIRECT` where the file system allows it: the restore
//! hands over whole, block-aligned ranges from block-aligned buffers, so nothing passes
//! through the page cache. On the machines measured (PERFORMANCE.md) the page-cache copy and
//! the writers' contention on the inode lock were over a third of a restore's CPU time.
//! Where direct writes are refused (tmpfs, some network file systems) the same ranges are
//! written through the page cache instead.

#[cfg(test)]
use crate::aligned::AlignedBuf;
use crate::aligned::{direct_io_allowed, write_options};
use crate::error::{RepoError, Result};
use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use vmvault_chunker::is_zero;

/// The block size restore ranges are aligned to: holes are left at this granularity and
/// direct writes use it for offset, length and memory alignment (it satisfies every
/// common device's logical block size).
pub(crate) const BLOCK: u64 = crate::aligned::BLOCK as u64;

/// The output of a restore: a sparse file or a block device.
pub(crate) struct Target {
    file: File,
    /// A fresh regular file: zero blocks stay holes.
    sparse: bool,
    /// The file was opened with `O_DIRECT` (cleared for good at the first refusal): an
    /// `EINVAL` from a write may be that refusal.
    opened_direct: bool,
    /// The disk's size; a direct write may round the file's end up to [`BLOCK`], which
    /// [`Target::finish`] cuts back.
    size: u64,
    path: String,
}

impl Target {
    /// Opens `path` for a disk of `size` bytes: an existing block device at least that
    /// large (with `overwrite`), or a regular file, created or (with `overwrite`)
    /// truncated, then set to `size` bytes of holes.
    pub(crate) fn open(path: &Path, size: u64, overwrite: bool) -> Result<Self> {
        let shown = path.display().to_string();
        let err = |e| RepoError::Target {
            path: shown.clone(),
            source: e,
        };
        let meta = std::fs::metadata(path);
        let is_block = meta.as_ref().is_ok_and(|m| m.file_type().is_block_device());
        if is_block {
            if !overwrite {
                return Err(RepoError::Invalid(format!(
                    "{shown} is a block device; writing onto it replaces its contents (use --overwrite)"
                )));
            }
            let file = write_options(false).open(path).map_err(err)?;
            let dev_size = vmvault_ingest::block_device_size(&file).map_err(err)?;
            if dev_size < size {
                return Err(RepoError::Invalid(format!(
                    "block device {shown} has {dev_size} bytes, the disk needs {size}"
                )));
            }
            return Ok(Target {
                file,
                sparse: false,
                opened_direct: false,
                size,
                path: shown,
            });
        }
        if let Ok(m) = &meta {
            if !m.is_file() {
                return Err(RepoError::Invalid(format!(
                    "{shown} exists and is not a regular file or block device"
                )));
            }
            if m.len() > 0 && !overwrite {
                return Err(RepoError::Invalid(format!(
                    "{shown} exists; refusing to overwrite it (use --overwrite)"
                )));
            }
        }
        let mut direct = false;
        let create = |direct| write_options(direct).create(true).truncate(true).open(path);
        let file = match direct_io_allowed().then(|| create(true)) {
            Some(Ok(f)) => {
                direct = true;
                f
            }
            Some(Err(e)) if e.raw_os_error() != Some(libc::EINVAL) => return Err(err(e)),
            _ => create(false).map_err(err)?,
        };
        file.set_len(size).map_err(err)?;
        Ok(Target {
            file,
            sparse: true,
            opened_direct: direct,
            size,
            path: shown,
        })
    }

    /// The open file (for writeback hints).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Whether writes currently bypass the page cache.
    #[cfg(test)]
    fn is_direct(&self) -> bool {
        crate::aligned::is_direct(&self.file)
    }

    /// Writes the disk range `[start, end)` from `buf`, whose first byte is disk offset
    /// `start`. `start` must be a multiple of [`BLOCK`]; `buf` must start at a
    /// [`BLOCK`]-aligned address and hold `end - start` rounded up to [`BLOCK`] bytes, zero
    /// past the disk's data. Ranges given to concurrent calls must not share a block. On a
    /// file, all-zero blocks are skipped (they stay holes).
    pub(crate) fn write_range(&self, start: u64, end: u64, buf: &[u8]) -> Result<()> {
        debug_assert_eq!(start % BLOCK, 0);
        let span = (end - start) as usize;
        if !self.sparse {
            return self.write_at(&buf[..span], start);
        }
        let padded = span.next_multiple_of(BLOCK as usize).min(buf.len());
        let block = BLOCK as usize;
        let mut run: Option<usize> = None;
        let mut pos = 0;
        while pos < padded {
            let next = (pos + block).min(padded);
            let zero = is_zero(&buf[pos..next]);
            match (zero, run) {
                (false, None) => run = Some(pos),
                (true, Some(s)) => {
                    self.write_at(&buf[s..pos], start + s as u64)?;
                    run = None;
                }
                _ => {}
            }
            pos = next;
        }
        if let Some(s) = run {
            self.write_at(&buf[s..padded], start + s as u64)?;
        }
        Ok(())
    }

    /// Writes `len` zero bytes at `offset` on a block device; nothing on a file (its
    /// ranges are holes already).
    pub(crate) fn write_zeros(&self, offset: u64, len: u64) -> Result<()> {
        if self.sparse {
            return Ok(());
        }
        let zeros = vec![0u8; (1 << 20).min(len as usize)];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.write_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Cuts a file back to the disk's size (a last direct write may have gone past it)
    /// and makes everything written durable.
    pub(crate) fn finish(&self) -> Result<()> {
        let err = |e| RepoError::Target {
            path: self.path.clone(),
            source: e,
        };
        if self.sparse {
            let len = self.file.metadata().map_err(err)?.len();
            if len != self.size {
                self.file.set_len(self.size).map_err(err)?;
            }
        }
        self.file.sync_all().map_err(err)
    }

    fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        let err = |e| RepoError::Target {
            path: self.path.clone(),
            source: e,
        };
        match self.file.write_all_at(data, offset) {
            // When the file system refuses direct writes, several workers get EINVAL at
            // once, around the moment one of them switches the file over: each retries.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.opened_direct => {
                // The file system refused this direct write (an alignment it needs that is
                // larger than BLOCK): go on through the page cache.
                crate::aligned::clear_direct(&self.file).map_err(err)?;
                self.file.write_all_at(data, offset).map_err(err)
            }
            r => r.map_err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Ranges written out of order, with zero blocks and a short last block, read back
    /// as the disk; zero blocks stay holes; the file ends at the disk's size.
    #[test]
    fn ranges_make_the_disk_sparse_and_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.img");
        let size = 5 * BLOCK * 64 + 1234;
        let mut disk = vec![0u8; size as usize];
        for (i, b) in disk.iter_mut().enumerate() {
            // Data everywhere but in blocks 64..128 (a hole) and 200..201.
            let blk = i as u64 / BLOCK;
            if !(64..128).contains(&blk) && blk != 200 {
                *b = (i % 251) as u8 | 1;
            }
        }
        let t = Target::open(&path, size, false).unwrap();
        let cut = [0, 64 * BLOCK, 192 * BLOCK, size];
        let mut buf = AlignedBuf::default();
        for w in cut.windows(2).rev() {
            let (s, e) = (w[0], w[1]);
            let padded = (e - s).next_multiple_of(BLOCK) as usize;
            let out = buf.get(padded);
            out.fill(0);
            out[..(e - s) as usize].copy_from_slice(&disk[s as usize..e as usize]);
            t.write_range(s, e, out).unwrap();
        }
        t.finish().unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len() as u64, size);
        assert!(back == disk, "restored bytes differ");
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(
            allocated <= size.next_multiple_of(BLOCK) - 65 * BLOCK,
            "zero blocks were written: {allocated} bytes allocated"
        );
    }

    #[test]
    fn existing_file_is_refused_without_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"keep").unwrap();
        assert!(Target::open(&path, 10, false).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
        Target::open(&path, 10, true).unwrap();
    }

    /// Writes the file system refuses as direct (here: unaligned ones) succeed through
    /// the page cache, also when several threads are refused at once and only one of
    /// them switches the file over.
    #[test]
    fn refused_direct_writes_fall_back_in_every_thread() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..20 {
            let path = dir.path().join(format!("out-{round}.img"));
            let t = Target::open(&path, 1 << 20, false).unwrap();
            if !t.is_direct() {
                return; // this file system has no direct I/O to refuse
            }
            let start = std::sync::Barrier::new(8);
            std::thread::scope(|s| {
                for i in 0..8u8 {
                    let (t, start) = (&t, &start);
                    s.spawn(move || {
                        let data = vec![i + 1; 1000];
                        start.wait();
                        t.write_at(&data, 1 + u64::from(i) * 10_000).unwrap();
                    });
                }
            });
            assert!(!t.is_direct());
            t.finish().unwrap();
            let back = std::fs::read(&path).unwrap();
            for i in 0..8u8 {
                let at = 1 + usize::from(i) * 10_000;
                assert!(back[at..at + 1000].iter().all(|&b| b == i + 1), "write {i}");
            }
        }
    }

    #[test]
    fn direct_can_be_switched_off_midway() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.img");
        let t = Target::open(&path, 3 * BLOCK, false).unwrap();
        let mut buf = AlignedBuf::default();
        let out = buf.get(BLOCK as usize);
        out.fill(7);
        t.write_range(0, BLOCK, out).unwrap();
        crate::aligned::clear_direct(&t.file).unwrap();
        assert!(!t.is_direct());
        out.fill(9);
        t.write_range(2 * BLOCK, 3 * BLOCK, out).unwrap();
        t.finish().unwrap();
        let back = std::fs::read(&path).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 7));
        assert!(back[4096..8192].iter().all(|&b| b == 0));
        assert!(back[8192..].iter().all(|&b| b == 9));
    }
}
