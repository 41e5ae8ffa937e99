//! Walking what a snapshot needs: every chunk id its manifests reference.

use crate::cache::IndexCache;
use crate::error::Result;
use crate::format::manifest::EntryKind;
use crate::format::snapshot::Snapshot;
use crate::repository::Repository;
use crate::restore::{load_page, load_root, parse_id};
use std::collections::HashSet;
use vmvault_chunker::ChunkId;

/// Calls `f` with every chunk id `snap` needs: each manifest's root and pages and the
/// data chunks they list, for disks, config files and catalogs. A page whose id is
/// already in `seen` is skipped with everything it lists (an unchanged page of an
/// earlier snapshot was walked already); every page walked is added to `seen`.
pub fn for_each_chunk(
    repo: &Repository,
    cache: &IndexCache,
    snap: &Snapshot,
    seen: &mut HashSet<ChunkId>,
    f: &mut dyn FnMut(ChunkId) -> Result<()>,
) -> Result<()> {
    let disks = snap
        .disks
        .iter()
        .cloned()
        .chain(snap.configs.iter().map(|c| c.as_disk()))
        .chain(snap.catalogs.iter().filter_map(|c| c.as_disk()));
    for disk in disks {
        f(parse_id(&disk.manifest)?)?;
        let root = load_root(repo, cache, &disk)?;
        for i in 0..root.pages.len() {
            if !seen.insert(root.pages[i]) {
                continue;
            }
            f(root.pages[i])?;
            for (_, e) in load_page(repo, cache, &root, i)? {
                if let EntryKind::Data(id) = e.kind {
                    f(id)?;
                }
            }
        }
    }
    Ok(())
}
