//! Buffers at block-aligned addresses, for direct (`O_DIRECT`) reads and writes.

use std::fs::{File, OpenOptions};
use std::io;

/// The alignment direct I/O gets here: offsets, lengths and memory addresses are
/// multiples of it (it satisfies every common device's logical block size). The same as
/// the source reader's, so one direct-I/O rule holds across the project.
pub(crate) const BLOCK: usize = vmvault_ingest::BUFFER_ALIGN;

/// Whether vmvault may write with direct I/O (the project's one rule, shared with the
/// source reads: not with `VMVAULT_DIRECT_IO=0`).
pub(crate) use vmvault_ingest::direct_io_allowed;

/// Options that open a file for writing, with `O_DIRECT` when `direct`; the caller adds
/// how the file is created.
pub(crate) fn write_options(direct: bool) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.write(true);
    if direct {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_DIRECT);
    }
    o
}

/// Whether `f` is open with `O_DIRECT` now.
#[cfg(test)]
pub(crate) fn is_direct(f: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl(F_GETFL) on a descriptor `f` owns and keeps open for the call; it
    // touches no memory of ours.
    let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
    flags >= 0 && flags & libc::O_DIRECT != 0
}

/// Clears `O_DIRECT` on an open file: later reads and writes go through the page cache.
pub(crate) fn clear_direct(f: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor `f` owns and keeps open for the call; neither command
    // touches memory of ours.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A reusable buffer whose usable part starts at a [`BLOCK`]-aligned address (a plain
/// `Vec` with room to slide the start forward; no unsafe allocation).
#[derive(Default)]
pub(crate) struct AlignedBuf {
    bytes: Vec<u8>,
}

impl AlignedBuf {
    /// `len` bytes starting at a [`BLOCK`]-aligned address; their content is whatever the
    /// last use left.
    pub(crate) fn get(&mut self, len: usize) -> &mut [u8] {
        let block = BLOCK;
        if self.bytes.len() < len + block {
            self.bytes.resize(len + block, 0);
        }
        let base = self.bytes.as_ptr().align_offset(block).min(block);
        &mut self.bytes[base..base + len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_flag_can_be_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let Ok(f) = write_options(true).create(true).truncate(true).open(&path) else {
            return; // no direct I/O on this file system
        };
        assert!(is_direct(&f));
        clear_direct(&f).unwrap();
        assert!(!is_direct(&f));
        let plain = write_options(false).open(&path).unwrap();
        assert!(!is_direct(&plain));
    }

    #[test]
    fn aligned_buffer_is_aligned_and_sized() {
        let mut b = AlignedBuf::default();
        for len in [1, 4096, 10_000, 1 << 20, 3] {
            let s = b.get(len);
            assert_eq!(s.len(), len);
            assert_eq!(s.as_ptr() as usize % BLOCK, 0);
        }
    }
}
