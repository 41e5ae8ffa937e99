//! The local index cache: chunk id → location, rebuilt from the repository.
//!
//! It is only a cache. It records which index files it has absorbed; on open it absorbs
//! new ones, and if any absorbed one has disappeared (prune, repair) it starts over.
//! Deleting it loses nothing. When another process holds it, a private temporary cache
//! is built instead, so concurrent backups still run.
//!
//! Storage: immutable sorted run files (`run.rs`) merged size-tiered, so a lookup reads
//! one 4 KiB block from each of O(log n) runs and memory holds only one 32-byte fence
//! per block (about 0.65 bytes per chunk). ARCHITECTURE.md ("Local cache") records why
//! this replaced sled: sled's memory grew with the number of entries.

mod run;

use crate::backend::FileKind;
use crate::error::{RepoError, Result};
use crate::format::index::{decode_index, IndexPack};
use crate::format::pack::PackEntry;
use crate::format::sealed::KIND_INDEX;
use crate::repository::Repository;
use run::{Run, RunWriter, KEY};
use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use vmvault_chunker::ChunkId;

/// Location of a chunk: its pack and entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLocation {
    /// Pack name (binary).
    pub pack: [u8; 32],
    /// The blob's entry in that pack.
    pub entry: PackEntry,
}

const CHUNK_REC: usize = 90;
/// Version of the `state` file and run records; a cache of another version is rebuilt.
const CACHE_VERSION: u32 = 2;
const PACK_REC: usize = 72;
/// Entries gathered from index files before a run is written while catching up.
const ABSORB_BATCH: usize = 256 * 1024;

fn encode_location(loc: &ChunkLocation) -> [u8; CHUNK_REC] {
    let mut v = [0u8; CHUNK_REC];
    v[..32].copy_from_slice(&loc.entry.id.0);
    v[32..64].copy_from_slice(&loc.pack);
    v[64..72].copy_from_slice(&loc.entry.offset.to_le_bytes());
    v[72..76].copy_from_slice(&loc.entry.stored_len.to_le_bytes());
    v[76..80].copy_from_slice(&loc.entry.raw_len.to_le_bytes());
    v[80] = loc.entry.kind;
    v[81] = loc.entry.compression;
    v[82..86].copy_from_slice(&loc.entry.chunk_offset.to_le_bytes());
    v[86..90].copy_from_slice(&loc.entry.blob_len.to_le_bytes());
    v
}

fn decode_location(v: &[u8]) -> Option<ChunkLocation> {
    let arr = |r: std::ops::Range<usize>| v.get(r);
    let mut id = [0u8; 32];
    id.copy_from_slice(arr(0..32)?);
    let mut pack = [0u8; 32];
    pack.copy_from_slice(arr(32..64)?);
    Some(ChunkLocation {
        pack,
        entry: PackEntry {
            id: ChunkId(id),
            offset: u64::from_le_bytes(arr(64..72)?.try_into().ok()?),
            stored_len: u32::from_le_bytes(arr(72..76)?.try_into().ok()?),
            raw_len: u32::from_le_bytes(arr(76..80)?.try_into().ok()?),
            kind: *v.get(80)?,
            compression: *v.get(81)?,
            chunk_offset: u32::from_le_bytes(arr(82..86)?.try_into().ok()?),
            blob_len: u32::from_le_bytes(arr(86..90)?.try_into().ok()?),
        },
    })
}

/// What the `state` file records: the live runs (oldest first) and the index files
/// absorbed.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct StateFile {
    version: u32,
    chunk_runs: Vec<String>,
    pack_runs: Vec<String>,
    index_files: BTreeSet<String>,
}

struct Live {
    chunk_runs: Vec<(String, Arc<Run>)>,
    pack_runs: Vec<(String, Arc<Run>)>,
    index_files: BTreeSet<String>,
}

/// The on-disk index cache.
pub struct IndexCache {
    dir: PathBuf,
    live: RwLock<Live>,
    seq: AtomicU64,
    _lock: File,
    _temp: Option<tempfile::TempDir>,
}

fn cache_err(path: &Path, e: impl std::fmt::Display) -> RepoError {
    RepoError::Cache {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

impl IndexCache {
    /// Opens the cache for `repo` under `root/<repo id>/` (or a temporary one when `root`
    /// is `None` or the cache is in use by another process), then brings it up to date
    /// with the repository's index files. Returns warnings about index files it skipped.
    pub fn open(root: Option<&Path>, repo: &Repository) -> Result<(Self, Vec<String>)> {
        let cache = match root {
            Some(root) => Self::open_at(&root.join(&repo.config().id))?,
            None => Self::temporary(None)?,
        };
        let warnings = cache.sync(repo)?;
        Ok((cache, warnings))
    }

    fn open_at(base: &Path) -> Result<Self> {
        std::fs::create_dir_all(base).map_err(|e| cache_err(base, e))?;
        // The sled cache of earlier versions is no longer used.
        let _ = std::fs::remove_dir_all(base.join("index.sled"));
        let dir = base.join("index-v1");
        std::fs::create_dir_all(&dir).map_err(|e| cache_err(&dir, e))?;
        let lock = File::create(dir.join("lock")).map_err(|e| cache_err(&dir, e))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                Self::remove_abandoned(base);
                Self::load(dir, lock, None)
            }
            // Another vmvault process uses it: work with a private one for this run.
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => Self::temporary(Some(base)),
            Err(e) => Err(cache_err(&dir, e)),
        }
    }

    fn temporary(near: Option<&Path>) -> Result<Self> {
        let tmp = match near {
            Some(base) => tempfile::Builder::new().prefix("tmp-").tempdir_in(base),
            None => tempfile::Builder::new().prefix("vmvault-cache-").tempdir(),
        }
        .map_err(|e| cache_err(near.unwrap_or(Path::new("(temporary)")), e))?;
        let dir = tmp.path().to_path_buf();
        let lock = File::create(dir.join("lock")).map_err(|e| cache_err(&dir, e))?;
        // Held for our lifetime, so that a later process can tell a private cache in use
        // from one left behind by a killed process (see `remove_abandoned`).
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| cache_err(&dir, e))?;
        Self::load(dir, lock, Some(tmp))
    }

    /// Deletes private caches (`tmp-*`) whose process is gone: their lock is free.
    fn remove_abandoned(base: &Path) {
        let Ok(entries) = std::fs::read_dir(base) else {
            return;
        };
        for e in entries.flatten() {
            if !e.file_name().to_string_lossy().starts_with("tmp-") {
                continue;
            }
            let Ok(lock) = File::open(e.path().join("lock")) else {
                continue;
            };
            let free =
                rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive);
            if free.is_ok() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Loads the state and its runs; anything inconsistent means starting empty.
    fn load(dir: PathBuf, lock: File, temp: Option<tempfile::TempDir>) -> Result<Self> {
        let live = Self::read_state(&dir).unwrap_or_else(|| Live {
            chunk_runs: Vec::new(),
            pack_runs: Vec::new(),
            index_files: BTreeSet::new(),
        });
        // Remove runs the state does not list (a crash between writing and recording).
        let keep: BTreeSet<&String> = live
            .chunk_runs
            .iter()
            .chain(&live.pack_runs)
            .map(|(n, _)| n)
            .collect();
        let mut seq = 0u64;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(n) = name.strip_suffix(".run") {
                    seq = seq.max(n.parse().unwrap_or(0));
                    if !keep.contains(&name) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
        Ok(IndexCache {
            dir,
            live: RwLock::new(live),
            seq: AtomicU64::new(seq + 1),
            _lock: lock,
            _temp: temp,
        })
    }

    fn read_state(dir: &Path) -> Option<Live> {
        let bytes = std::fs::read(dir.join("state")).ok()?;
        let st: StateFile = serde_json::from_slice(&bytes).ok()?;
        if st.version != CACHE_VERSION {
            return None;
        }
        let open_all = |names: &[String], rec: usize| -> Option<Vec<(String, Arc<Run>)>> {
            names
                .iter()
                .map(|n| {
                    let safe = n.ends_with(".run") && !n.contains('/');
                    let run = Run::open(&dir.join(n), rec).ok().filter(|_| safe)?;
                    Some((n.clone(), Arc::new(run)))
                })
                .collect()
        };
        Some(Live {
            chunk_runs: open_all(&st.chunk_runs, CHUNK_REC)?,
            pack_runs: open_all(&st.pack_runs, PACK_REC)?,
            index_files: st.index_files,
        })
    }

    fn write_state(&self, live: &Live) -> Result<()> {
        let st = StateFile {
            version: CACHE_VERSION,
            chunk_runs: live.chunk_runs.iter().map(|(n, _)| n.clone()).collect(),
            pack_runs: live.pack_runs.iter().map(|(n, _)| n.clone()).collect(),
            index_files: live.index_files.clone(),
        };
        let bytes = serde_json::to_vec(&st).map_err(|e| cache_err(&self.dir, e))?;
        let tmp = self.dir.join("state.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.dir.join("state"))?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| cache_err(&self.dir, e))
    }

    fn new_run_name(&self) -> String {
        format!("{:08}.run", self.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// Writes sorted records as a new run.
    fn write_run(&self, mut recs: Vec<u8>, rec_len: usize) -> Result<(String, Arc<Run>)> {
        let name = self.new_run_name();
        let path = self.dir.join(&name);
        let mut order: Vec<usize> = (0..recs.len() / rec_len).collect();
        order.sort_by(|&a, &b| {
            recs[a * rec_len..a * rec_len + KEY].cmp(&recs[b * rec_len..b * rec_len + KEY])
        });
        let io = |e| cache_err(&path, e);
        let mut w = RunWriter::create(&path, rec_len).map_err(io)?;
        for i in order {
            w.push(&recs[i * rec_len..(i + 1) * rec_len]).map_err(io)?;
        }
        recs.clear();
        w.finish().map_err(io)?;
        let run = Run::open(&path, rec_len).map_err(io)?;
        Ok((name, Arc::new(run)))
    }

    /// Merges the newest runs while the newest is at least half the size of the one
    /// before it, keeping O(log n) runs. Returns the files merged away.
    fn compact(&self, runs: &mut Vec<(String, Arc<Run>)>, rec_len: usize) -> Result<Vec<String>> {
        let mut gone = Vec::new();
        while runs.len() >= 2 {
            let n = runs.len();
            if runs[n - 1].1.count() * 2 < runs[n - 2].1.count() {
                break;
            }
            let name = self.new_run_name();
            let path = self.dir.join(&name);
            let io = |e| cache_err(&path, e);
            run::merge(&runs[n - 1].1, &runs[n - 2].1, &path).map_err(io)?;
            let merged = Arc::new(Run::open(&path, rec_len).map_err(io)?);
            gone.push(runs[n - 1].0.clone());
            gone.push(runs[n - 2].0.clone());
            runs.truncate(n - 2);
            runs.push((name, merged));
        }
        Ok(gone)
    }

    /// Records the chunks and packs of some index files, then the files themselves.
    fn absorb(&self, names: &[String], packs: &[IndexPack]) -> Result<()> {
        let mut chunk_recs = Vec::new();
        let mut pack_recs = Vec::new();
        for p in packs {
            pack_recs.extend_from_slice(&p.name);
            pack_recs.extend_from_slice(&p.salt);
            pack_recs.extend_from_slice(&p.size.to_le_bytes());
            for e in &p.entries {
                let loc = ChunkLocation {
                    pack: p.name,
                    entry: *e,
                };
                chunk_recs.extend_from_slice(&encode_location(&loc));
            }
        }
        let new_chunks = (!chunk_recs.is_empty())
            .then(|| self.write_run(chunk_recs, CHUNK_REC))
            .transpose()?;
        let new_packs = (!pack_recs.is_empty())
            .then(|| self.write_run(pack_recs, PACK_REC))
            .transpose()?;
        let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
        live.chunk_runs.extend(new_chunks);
        live.pack_runs.extend(new_packs);
        let mut gone = self.compact(&mut live.chunk_runs, CHUNK_REC)?;
        gone.extend(self.compact(&mut live.pack_runs, PACK_REC)?);
        live.index_files.extend(names.iter().cloned());
        self.write_state(&live)?;
        drop(live);
        for g in gone {
            let _ = std::fs::remove_file(self.dir.join(g));
        }
        Ok(())
    }

    /// Absorbs new index files; starts over if any absorbed one disappeared.
    fn sync(&self, repo: &Repository) -> Result<Vec<String>> {
        let listed = repo
            .backend()
            .list(FileKind::Index)
            .map_err(|e| crate::repository::io_err(FileKind::Index, "", e))?;
        let listed: BTreeSet<String> = listed.into_iter().map(|(n, _)| n).collect();
        {
            let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
            if live.index_files.iter().any(|k| !listed.contains(k)) {
                let live = &mut *live;
                let old: Vec<String> = live
                    .chunk_runs
                    .drain(..)
                    .chain(live.pack_runs.drain(..))
                    .map(|(n, _)| n)
                    .collect();
                live.index_files.clear();
                self.write_state(live)?;
                for n in old {
                    let _ = std::fs::remove_file(self.dir.join(n));
                }
            }
        }
        let todo: Vec<String> = {
            let live = self.live.read().unwrap_or_else(|p| p.into_inner());
            listed
                .iter()
                .filter(|n| !live.index_files.contains(*n))
                .cloned()
                .collect()
        };
        let mut warnings = Vec::new();
        let (mut names, mut packs, mut entries) = (Vec::new(), Vec::new(), 0usize);
        for name in todo {
            let decoded = repo
                .get_sealed(FileKind::Index, KIND_INDEX, &name)
                .and_then(|plain| {
                    decode_index(&plain)
                        .map_err(|e| RepoError::corrupt(FileKind::Index, &name, e.to_string()))
                });
            match decoded {
                Ok(p) => {
                    entries += p.iter().map(|p| p.entries.len()).sum::<usize>();
                    packs.extend(p);
                    names.push(name);
                }
                Err(e) => warnings.push(format!("skipping {e}")),
            }
            if entries >= ABSORB_BATCH {
                self.absorb(&names, &packs)?;
                (names, packs, entries) = (Vec::new(), Vec::new(), 0);
            }
        }
        if !names.is_empty() {
            self.absorb(&names, &packs)?;
        }
        Ok(warnings)
    }

    /// Records an index file's packs and chunks (the file is durable in the repository).
    pub fn add_index(&self, name: &str, packs: &[IndexPack]) -> Result<()> {
        self.absorb(&[name.to_string()], packs)
    }

    fn get(&self, chunks: bool, key: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        let runs = if chunks {
            &live.chunk_runs
        } else {
            &live.pack_runs
        };
        for (name, run) in runs.iter().rev() {
            if let Some(rec) = run.get(key).map_err(|e| {
                cache_err(
                    &self.dir.join(name),
                    format!("{e} (delete the cache directory to rebuild it)"),
                )
            })? {
                return Ok(Some(rec));
            }
        }
        Ok(None)
    }

    /// True when an index file lists the chunk.
    pub fn contains(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.get(true, &id.0)?.is_some())
    }

    /// Where a chunk is stored, if any index file lists it.
    pub fn lookup(&self, id: &ChunkId) -> Result<Option<ChunkLocation>> {
        match self.get(true, &id.0)? {
            None => Ok(None),
            Some(rec) => decode_location(&rec)
                .filter(|l| l.entry.id == *id)
                .map(Some)
                .ok_or_else(|| cache_err(&self.dir, "malformed entry (delete the cache)")),
        }
    }

    /// A pack's salt and size.
    pub fn pack_info(&self, pack: &[u8; 32]) -> Result<Option<([u8; 32], u64)>> {
        Ok(self.get(false, pack)?.and_then(|v| {
            let mut salt = [0u8; 32];
            salt.copy_from_slice(v.get(32..64)?);
            let size = u64::from_le_bytes(v.get(64..72)?.try_into().ok()?);
            Some((salt, size))
        }))
    }

    /// Number of chunk entries known (a chunk listed by several index files may be
    /// counted more than once until its runs are merged).
    pub fn chunk_count(&self) -> usize {
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        live.chunk_runs
            .iter()
            .map(|(_, r)| r.count() as usize)
            .sum()
    }

    /// Number of packs known (same caveat as [`IndexCache::chunk_count`]).
    pub fn pack_count(&self) -> usize {
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        live.pack_runs.iter().map(|(_, r)| r.count() as usize).sum()
    }
}
