//! Fuzz entry points for the guest file system readers and the volume finder.
//!
//! Each opens untrusted bytes as a volume in memory, walks the whole tree within fixed
//! limits, reads every symlink and a bounded amount of every file. Errors are normal
//! outcomes; a panic that escapes [`super::guarded`], a hang, or an allocation out of
//! proportion to the input is a bug.

use super::view::{MemView, VolumeRead};
use super::volumes::{discover, open_fs, Content};
use super::walk::{walk, WalkLimits};
use super::{GuestFs, NodeKind};
use std::sync::Arc;

/// Entries walked per input, at most.
const ENTRIES: u64 = 20_000;
/// File bytes read per input, at most.
const READ_BUDGET: u64 = 4 << 20;

fn view(data: &[u8], name: &str) -> Arc<dyn VolumeRead> {
    Arc::new(MemView::new(data.to_vec(), name))
}

/// Walks `fs` and reads from its files and links within the budgets.
pub fn exercise(fs: &dyn GuestFs) {
    let limits = WalkLimits {
        max_entries: ENTRIES,
        max_depth: 64,
        max_path: 4096,
    };
    let mut budget = READ_BUDGET;
    let mut buf = vec![0u8; 64 << 10];
    let _ = fs.stat("");
    let _ = walk(fs, "", limits, &mut |path, meta| {
        match meta.kind {
            NodeKind::Symlink => {
                let _ = fs.read_link(path);
            }
            NodeKind::File if budget > 0 => {
                if let Ok(mut f) = fs.open(path) {
                    let len = f.len();
                    let mut pos = 0;
                    while pos < len && budget > 0 {
                        match f.read_at(pos, &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                pos += n as u64;
                                budget = budget.saturating_sub(n as u64);
                            }
                        }
                    }
                    // A read far past the start, as a random-access reader would.
                    let _ = f.read_at(len / 2, &mut buf[..4096]);
                }
            }
            _ => {}
        }
        let _ = fs.stat(path);
        Ok(())
    });
}

fn one(data: &[u8], content: Content) {
    // A panic a crate raises inside `guarded` becomes an error, as in the product; only
    // one escaping it is a finding.
    super::install_guarded_panic_hook();
    if let Ok(fs) = open_fs(content, view(data, "fuzz")) {
        exercise(&*fs);
    }
}

/// `data` as an ext2/3/4 volume.
pub fn ext4(data: &[u8]) {
    one(data, Content::Ext4);
}

/// `data` as an NTFS volume.
pub fn ntfs(data: &[u8]) {
    one(data, Content::Ntfs);
}

/// `data` as a FAT volume.
pub fn fat(data: &[u8]) {
    one(data, Content::Fat);
}

/// `data` as a whole disk: partitions, LVM and every browsable file system found.
pub fn disk(data: &[u8]) {
    super::install_guarded_panic_hook();
    let Ok(layout) = discover(view(data, "fuzz")) else {
        return;
    };
    for v in layout.volumes.iter().take(16) {
        if v.content.browsable() {
            if let Ok(fs) = open_fs(v.content, v.view.clone()) {
                exercise(&*fs);
            }
        }
    }
}
