//! Fuzz entry points for the image readers.
//!
//! Each function opens untrusted bytes as one image format, in memory, with no other files
//! reachable ([`NoFiles`]), and walks the disk it yields: the allocation map of a bounded
//! set of windows spread over the whole logical size, and reads of the data extents in
//! them. Errors are normal outcomes; a panic, a hang or an allocation out of proportion
//! to the input is a bug. The invariants every [`DiskSource`] promises (extents sorted,
//! contiguous, covering the window exactly) are checked with assertions.
//!
//! `fuzz/fuzz_targets/<format>.rs` call these under libFuzzer; `repo/tests/fuzz_corpus.rs`
//! replays the committed corpora through them (via `vmvault_repo::format::fuzzing`).

use crate::detect::ImageFormat;
use crate::image_file::MemFile;
use crate::open::{open_file_as, NoFiles};
use crate::{DiskSource, ExtentKind};

/// Windows of the logical disk examined per input.
const WINDOWS: u64 = 48;
/// Size of each window.
const WINDOW: u64 = 1 << 20;
/// Bytes of data read per input at most.
const READ_BUDGET: u64 = 8 << 20;

/// Allowed peak of live heap bytes independent of the input's length for image targets:
/// a reader may hold a cluster, grain or block (up to 2 MiB) and a window's data.
pub const ALLOC_SLACK: usize = 12 << 20;

/// Opens `data` as a qcow2 image and walks it.
pub fn qcow2(data: &[u8]) {
    open_and_walk(data, ImageFormat::Qcow2);
}

/// Opens `data` as a VMDK (descriptor, hosted sparse or COWD file) and walks it.
pub fn vmdk(data: &[u8]) {
    open_and_walk(data, ImageFormat::Vmdk);
}

/// Opens `data` as a VHD and walks it.
pub fn vhd(data: &[u8]) {
    open_and_walk(data, ImageFormat::Vhd);
}

fn open_and_walk(data: &[u8], format: ImageFormat) {
    let file = Box::new(MemFile::new(data.to_vec(), "fuzz-input"));
    if let Ok(mut disk) = open_file_as(file, format, &mut NoFiles) {
        walk(disk.as_mut());
    }
}

/// Checks a disk's extents over a spread of windows and reads their data.
pub fn walk(disk: &mut dyn DiskSource) {
    let size = disk.size();
    let stride = (size / WINDOWS).max(WINDOW) / WINDOW * WINDOW;
    let mut budget = READ_BUDGET;
    let mut buf = Vec::new();
    for k in 0..WINDOWS {
        let Some(start) = k.checked_mul(stride).filter(|s| *s < size) else {
            break;
        };
        let Ok(extents) = disk.extents(start, WINDOW) else {
            continue;
        };
        let end = (start + WINDOW).min(size);
        let mut pos = start;
        for e in &extents {
            assert_eq!(e.offset, pos, "extents are not contiguous");
            assert!(e.len > 0, "empty extent");
            pos = e.end();
        }
        assert_eq!(pos, end, "extents do not cover the window");
        for e in extents.iter().filter(|e| e.kind == ExtentKind::Data) {
            let n = e.len.min(budget);
            if n == 0 {
                return;
            }
            budget -= n;
            buf.resize(n as usize, 0);
            if disk.read_at(e.offset, &mut buf).is_err() {
                break;
            }
        }
    }
}
