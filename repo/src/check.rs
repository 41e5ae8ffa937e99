//! Repository verification.
//!
//! Without `read_data`: every index file decodes, every pack it lists exists with the
//! listed size, every snapshot decodes and every chunk its manifests reference is listed
//! by the index in a pack that exists. With `read_data`, additionally every pack is read
//! whole, its name verified, its header decrypted and every blob authenticated,
//! decompressed and re-hashed; damaged chunks are named with the snapshots that use them.

use crate::backend::FileKind;
use crate::blob::{chunk_in_blob, new_decompressor, one_blob, open_blob_plain};
use crate::cache::IndexCache;
use crate::crypto::MasterKeys;
use crate::error::{RepoError, Result};
use crate::format::index::decode_index;
use crate::format::manifest::EntryKind;
use crate::format::pack::{decode_prefix, PackEntry};
use crate::format::sealed::KIND_INDEX;
use crate::repository::{io_err, object_name, Repository};
use crate::restore::{load_page, load_root};
use rayon::prelude::*;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use vmvault_chunker::ChunkId;

/// Live counters of a check.
#[derive(Default, Debug)]
pub struct CheckProgress {
    /// Packs to read (with read_data).
    pub packs_total: AtomicU64,
    /// Packs read so far.
    pub packs_done: AtomicU64,
    /// Bytes read so far.
    pub bytes_read: AtomicU64,
}

/// What a check found. `errors` empty means the repository is sound.
#[derive(Debug, Default, serde::Serialize)]
pub struct CheckReport {
    /// Problems that lose or endanger data, one sentence each naming the object.
    pub errors: Vec<String>,
    /// Harmless findings (unreferenced packs from interrupted backups, ...).
    pub warnings: Vec<String>,
    /// Chunk ids found damaged or missing.
    pub damaged_chunks: Vec<String>,
    /// Snapshots that reference damaged or missing data.
    pub affected_snapshots: Vec<String>,
    /// Packs in the repository.
    pub packs: u64,
    /// Index files read.
    pub index_files: u64,
    /// Snapshots checked.
    pub snapshots: u64,
    /// Bytes of pack data read and verified.
    pub bytes_read: u64,
}

/// Which packs `check` reads whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadData {
    /// None: structure only.
    None,
    /// Every pack.
    All,
    /// Part `n` (1-based) of `m`: a pack belongs to part `1 + (first 8 bytes of its name
    /// as a big-endian number) mod m`, so parts 1..=m together read every pack once, and
    /// the same part always reads the same packs.
    Subset {
        /// Which part, 1..=m.
        n: u32,
        /// How many parts.
        m: u32,
    },
}

impl ReadData {
    /// Whether the pack named `name` (hex) is read.
    pub fn includes(&self, name: &str) -> bool {
        match *self {
            ReadData::None => false,
            ReadData::All => true,
            ReadData::Subset { n, m } => {
                let head = name
                    .get(..16)
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
                    .unwrap_or(0);
                m > 0 && head % u64::from(m) == u64::from(n.saturating_sub(1))
            }
        }
    }
}

/// Reads one pack whole and verifies everything in it; returns the ids of bad blobs
/// (all listed ones if the pack cannot be parsed) and a message per problem.
fn verify_pack(
    keys: &MasterKeys,
    repo: &Repository,
    name: &str,
    listed: &[PackEntry],
) -> (Vec<ChunkId>, Vec<String>, u64) {
    let bytes = match repo.backend().get(FileKind::Pack, name) {
        Ok(b) => b,
        Err(e) => {
            return (
                listed.iter().map(|e| e.id).collect(),
                vec![io_err(FileKind::Pack, name, e).to_string()],
                0,
            )
        }
    };
    let n = bytes.len() as u64;
    let mut msgs = Vec::new();
    if object_name(&bytes) != name {
        msgs.push(format!(
            "pack {name} is damaged: content does not match its name"
        ));
    }
    let parsed = crate::pack_header::parse_pack(keys, &bytes);
    let (salt, entries) = match parsed {
        Ok(p) => p,
        Err(e) => {
            msgs.push(format!("pack {name} is damaged: {e}"));
            // Without a header, fall back to what the index says is inside.
            match decode_prefix(&bytes) {
                Ok((salt, _)) => (salt, listed.to_vec()),
                Err(_) => return (listed.iter().map(|e| e.id).collect(), msgs, n),
            }
        }
    };
    let mut entries = entries;
    // Index files may list a chunk twice; each blob must be decrypted (in place) only once.
    entries.sort_by_key(|e| (e.offset, e.chunk_offset, e.id.0));
    entries.dedup();
    let mut bad = Vec::new();
    let cipher = keys.pack_cipher(&salt);
    let mut decompressor = match new_decompressor() {
        Ok(d) => d,
        Err(e) => return (Vec::new(), vec![e.to_string()], n),
    };
    let mut scratch = Vec::new();
    let mut bytes = bytes;
    for blob in entries.chunk_by(|a, b| a.offset == b.offset) {
        let e = &blob[0];
        let mut fail = |ids: &mut dyn Iterator<Item = ChunkId>, msg: String| {
            bad.extend(ids);
            msgs.push(msg);
        };
        if let Err(err) = one_blob(name, blob) {
            fail(&mut blob.iter().map(|e| e.id), err.to_string());
            continue;
        }
        let Some(stored) = bytes.get_mut(e.offset as usize..e.end() as usize) else {
            fail(
                &mut blob.iter().map(|e| e.id),
                format!("chunk {} lies outside pack {name}", e.id),
            );
            continue;
        };
        match open_blob_plain(&cipher, name, e, stored, &mut decompressor, &mut scratch) {
            Ok(plain) => {
                for c in blob {
                    if let Err(err) = chunk_in_blob(keys, name, c, plain) {
                        fail(&mut std::iter::once(c.id), err.to_string());
                    }
                }
            }
            Err(err) => fail(&mut blob.iter().map(|e| e.id), err.to_string()),
        }
    }
    (bad, msgs, n)
}

/// Checks the repository; see the module doc for what each level covers.
pub fn check(
    repo: &Repository,
    cache: &IndexCache,
    read_data: ReadData,
    progress: &CheckProgress,
) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let packs: HashMap<String, u64> = repo
        .backend()
        .list(FileKind::Pack)
        .map_err(|e| io_err(FileKind::Pack, "", e))?
        .into_iter()
        .collect();
    report.packs = packs.len() as u64;

    // Index files: decode, and every listed pack must exist with its size.
    let mut listed: HashMap<String, Vec<PackEntry>> = HashMap::new();
    let index_names = repo
        .backend()
        .list(FileKind::Index)
        .map_err(|e| io_err(FileKind::Index, "", e))?;
    for (name, _) in &index_names {
        report.index_files += 1;
        let decoded = repo
            .get_sealed(FileKind::Index, KIND_INDEX, name)
            .and_then(|p| {
                decode_index(&p).map_err(|e| RepoError::corrupt(FileKind::Index, name, e.0))
            });
        let index = match decoded {
            Ok(i) => i,
            Err(e) => {
                report.errors.push(e.to_string());
                continue;
            }
        };
        for p in index {
            let pname = hex::encode(p.name);
            match packs.get(&pname) {
                None => report.errors.push(format!(
                    "pack {pname} listed by index file {name} is missing from the repository"
                )),
                Some(&size) if size != p.size => report.errors.push(format!(
                    "pack {pname} has {size} bytes, index file {name} says {}",
                    p.size
                )),
                Some(_) => {}
            }
            listed.entry(pname).or_default().extend(p.entries);
        }
    }
    for name in packs.keys() {
        if !listed.contains_key(name) {
            report.warnings.push(format!(
                "pack {name} is not listed by any index file: an interrupted backup leaves such packs, but if snapshots report chunks missing from the index, an index file was lost and this pack may hold them (rebuild the index before pruning)"
            ));
        }
    }

    // Pack contents.
    let mut damaged: HashSet<ChunkId> = HashSet::new();
    if read_data != ReadData::None {
        let names: Vec<(&String, &Vec<PackEntry>)> = listed
            .iter()
            .filter(|(n, _)| packs.contains_key(*n) && read_data.includes(n))
            .collect();
        progress
            .packs_total
            .store(names.len() as u64, Ordering::Relaxed);
        let found = Mutex::new((Vec::new(), Vec::new()));
        names.par_iter().for_each(|(name, entries)| {
            let (bad, msgs, n) = verify_pack(repo.keys(), repo, name, entries);
            progress.packs_done.fetch_add(1, Ordering::Relaxed);
            progress.bytes_read.fetch_add(n, Ordering::Relaxed);
            let mut f = found.lock().unwrap_or_else(|p| p.into_inner());
            f.0.extend(bad);
            f.1.extend(msgs);
        });
        let (bad, msgs) = found.into_inner().unwrap_or_else(|p| p.into_inner());
        damaged.extend(bad);
        report.errors.extend(msgs);
        report.bytes_read = progress.bytes_read.load(Ordering::Relaxed);
    }
    // Snapshots: every referenced chunk must be indexed, present and undamaged.
    let (snaps, bad_snaps) = repo.list_snapshots()?;
    for e in bad_snaps {
        report.errors.push(e.to_string());
    }
    let mut damaged_used: BTreeSet<String> = BTreeSet::new();
    let mut affected: BTreeSet<String> = BTreeSet::new();
    for (sname, snap) in &snaps {
        report.snapshots += 1;
        // Config files and catalogs are stored like disks: their manifests and chunks are
        // checked the same way.
        let stored: Vec<_> = snap
            .disks
            .iter()
            .cloned()
            .chain(snap.configs.iter().map(|c| c.as_disk()))
            .chain(snap.catalogs.iter().filter_map(|c| c.as_disk()))
            .collect();
        for disk in &stored {
            let mut problem = |msg: String, id: Option<ChunkId>, report: &mut CheckReport| {
                if let Some(id) = id {
                    damaged_used.insert(id.to_hex());
                }
                if affected.insert(sname.clone()) || report.errors.len() < 1000 {
                    report.errors.push(format!(
                        "snapshot {} ({} / disk {}): {msg}",
                        &sname[..12],
                        snap.vm,
                        disk.name
                    ));
                }
            };
            let root = match load_root(repo, cache, disk) {
                Ok(r) => r,
                Err(e) => {
                    problem(format!("manifest unreadable: {e}"), None, &mut report);
                    continue;
                }
            };
            for i in 0..root.pages.len() {
                let entries = match load_page(repo, cache, &root, i) {
                    Ok(e) => e,
                    Err(e) => {
                        problem(
                            format!("manifest page {i} unreadable: {e}"),
                            None,
                            &mut report,
                        );
                        continue;
                    }
                };
                for (offset, e) in entries {
                    let EntryKind::Data(id) = e.kind else {
                        continue;
                    };
                    if damaged.contains(&id) {
                        problem(
                            format!("chunk {id} at disk offset {offset} is damaged"),
                            Some(id),
                            &mut report,
                        );
                        continue;
                    }
                    match cache.lookup(&id)? {
                        None => problem(
                            format!("chunk {id} at disk offset {offset} is not in the index"),
                            Some(id),
                            &mut report,
                        ),
                        Some(loc) if !packs.contains_key(&hex::encode(loc.pack)) => problem(
                            format!(
                                "chunk {id} at disk offset {offset} is in missing pack {}",
                                hex::encode(loc.pack)
                            ),
                            Some(id),
                            &mut report,
                        ),
                        Some(_) => {}
                    }
                }
            }
        }
    }
    report.damaged_chunks = damaged
        .iter()
        .map(|id| id.to_hex())
        .chain(damaged_used)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    report.affected_snapshots = affected.into_iter().collect();
    Ok(report)
}
