//! What changed between two snapshots, per disk, by comparing manifests (no data read).
//!
//! Ranges whose chunk differs are changed; zero and unallocated ranges both read as
//! zeros and compare equal. Manifest pages with the same id are skipped unread, so the
//! cost follows the amount of change, not the disk size.

use crate::cache::IndexCache;
use crate::error::Result;
use crate::format::manifest::{EntryKind, ManifestEntry};
use crate::format::snapshot::{Snapshot, SnapshotDisk};
use crate::repository::Repository;
use crate::restore::{load_page, load_root};
use serde::Serialize;

/// Changed ranges reported per disk at most (the totals count them all).
pub const MAX_LISTED_EXTENTS: usize = 10_000;

/// How one disk differs.
#[derive(Debug, Clone, Serialize)]
pub struct DiskDiff {
    /// Disk name.
    pub name: String,
    /// `same`, `changed`, `added` (only in the second snapshot) or `removed`.
    pub status: &'static str,
    /// Logical size in the first snapshot (0 if added).
    pub size_before: u64,
    /// Logical size in the second (0 if removed).
    pub size_after: u64,
    /// Bytes that differ (an added or removed disk counts its whole size).
    pub changed_bytes: u64,
    /// Number of changed ranges.
    pub changed_extents: u64,
    /// The changed ranges as (offset, length), at most [`MAX_LISTED_EXTENTS`].
    pub extents: Vec<(u64, u64)>,
}

/// Content of a range: a chunk id, or zeros.
#[derive(PartialEq, Eq, Clone, Copy)]
enum Content {
    Data(vmvault_chunker::ChunkId),
    Zeros,
}

fn content(e: &ManifestEntry) -> Content {
    match e.kind {
        EntryKind::Data(id) => Content::Data(id),
        EntryKind::Zero | EntryKind::Unallocated => Content::Zeros,
    }
}

struct Acc {
    bytes: u64,
    count: u64,
    extents: Vec<(u64, u64)>,
    open: Option<(u64, u64)>,
}

impl Acc {
    fn add(&mut self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        self.bytes += len;
        match &mut self.open {
            Some((o, l)) if *o + *l == off => *l += len,
            _ => {
                self.close();
                self.open = Some((off, len));
            }
        }
    }

    fn close(&mut self) {
        if let Some(r) = self.open.take() {
            self.count += 1;
            if self.extents.len() < MAX_LISTED_EXTENTS {
                self.extents.push(r);
            }
        }
    }
}

/// Entries of page `i` as (offset, len, content), or one zero range if there is no page.
fn page_ranges(
    repo: &Repository,
    cache: &IndexCache,
    root: &crate::format::manifest::ManifestRoot,
    i: usize,
) -> Result<Vec<(u64, u64, Content)>> {
    Ok(load_page(repo, cache, root, i)?
        .into_iter()
        .map(|(o, e)| (o, u64::from(e.len), content(&e)))
        .collect())
}

fn diff_disk(
    repo: &Repository,
    cache: &IndexCache,
    a: &SnapshotDisk,
    b: &SnapshotDisk,
) -> Result<DiskDiff> {
    let mut acc = Acc {
        bytes: 0,
        count: 0,
        extents: Vec::new(),
        open: None,
    };
    if a.manifest != b.manifest {
        let ra = load_root(repo, cache, a)?;
        let rb = load_root(repo, cache, b)?;
        let common = ra.disk_size.min(rb.disk_size);
        if ra.page_size == rb.page_size {
            let pages = ra.pages.len().min(rb.pages.len());
            for i in 0..pages {
                let start = i as u64 * ra.page_size;
                let end = (start + ra.page_size).min(common);
                if ra.pages[i] == rb.pages[i] && ra.page_len(i) == rb.page_len(i) {
                    continue;
                }
                let pa = page_ranges(repo, cache, &ra, i)?;
                let pb = page_ranges(repo, cache, &rb, i)?;
                let (mut x, mut y) = (0, 0);
                let mut pos = start;
                while pos < end && x < pa.len() && y < pb.len() {
                    let (ao, al, ac) = pa[x];
                    let (bo, bl, bc) = pb[y];
                    let next = (ao + al).min(bo + bl).min(end);
                    if ac != bc {
                        acc.add(pos, next - pos);
                    }
                    pos = next;
                    if ao + al <= pos {
                        x += 1;
                    }
                    if bo + bl <= pos {
                        y += 1;
                    }
                }
            }
        } else {
            acc.add(0, common);
        }
        // A grown or shrunk disk: the difference in size is changed too.
        let (lo, hi) = (common, ra.disk_size.max(rb.disk_size));
        acc.add(lo, hi - lo);
    }
    acc.close();
    Ok(DiskDiff {
        name: a.name.clone(),
        status: if acc.bytes == 0 { "same" } else { "changed" },
        size_before: a.size,
        size_after: b.size,
        changed_bytes: acc.bytes,
        changed_extents: acc.count,
        extents: acc.extents,
    })
}

/// Compares every disk of `a` with the disk of the same name in `b`.
pub fn diff(
    repo: &Repository,
    cache: &IndexCache,
    a: &Snapshot,
    b: &Snapshot,
) -> Result<Vec<DiskDiff>> {
    let mut out = Vec::new();
    for da in &a.disks {
        match b.disks.iter().find(|d| d.name == da.name) {
            Some(db) => out.push(diff_disk(repo, cache, da, db)?),
            None => out.push(DiskDiff {
                name: da.name.clone(),
                status: "removed",
                size_before: da.size,
                size_after: 0,
                changed_bytes: da.size,
                changed_extents: 1,
                extents: vec![(0, da.size)],
            }),
        }
    }
    for db in &b.disks {
        if !a.disks.iter().any(|d| d.name == db.name) {
            out.push(DiskDiff {
                name: db.name.clone(),
                status: "added",
                size_before: 0,
                size_after: db.size,
                changed_bytes: db.size,
                changed_extents: 1,
                extents: vec![(0, db.size)],
            });
        }
    }
    Ok(out)
}
