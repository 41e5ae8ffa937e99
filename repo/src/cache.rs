//! The local index cache (sled): chunk id → location, rebuilt from the repository.
//!
//! It is only a cache. It records which index files it has absorbed; on open it absorbs
//! new ones, and if any absorbed file has disappeared (prune, repair) it starts over.
//! Deleting it loses nothing. When another process holds it, a private temporary cache
//! is built instead, so concurrent backups still run.

use crate::backend::FileKind;
use crate::error::{RepoError, Result};
use crate::format::index::{decode_index, IndexPack};
use crate::format::pack::PackEntry;
use crate::format::sealed::KIND_INDEX;
use crate::repository::Repository;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use vmvault_chunker::ChunkId;

/// Location of a chunk: its pack and entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLocation {
    /// Pack name (binary).
    pub pack: [u8; 32],
    /// The blob's entry in that pack.
    pub entry: PackEntry,
}

/// The sled-backed index cache.
pub struct IndexCache {
    _db: sled::Db,
    chunks: sled::Tree,
    packs: sled::Tree,
    files: sled::Tree,
    path: PathBuf,
}

fn cache_err(path: &Path, e: impl std::fmt::Display) -> RepoError {
    RepoError::Cache {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn encode_location(loc: &ChunkLocation) -> [u8; 50] {
    let mut v = [0u8; 50];
    v[..32].copy_from_slice(&loc.pack);
    v[32..40].copy_from_slice(&loc.entry.offset.to_le_bytes());
    v[40..44].copy_from_slice(&loc.entry.stored_len.to_le_bytes());
    v[44..48].copy_from_slice(&loc.entry.raw_len.to_le_bytes());
    v[48] = loc.entry.kind;
    v[49] = loc.entry.compression;
    v
}

fn decode_location(id: ChunkId, v: &[u8]) -> Option<ChunkLocation> {
    if v.len() != 50 {
        return None;
    }
    let mut pack = [0u8; 32];
    pack.copy_from_slice(&v[..32]);
    let u64_at = |i: usize| {
        v.get(i..i + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let u32_at = |i: usize| {
        v.get(i..i + 4)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_le_bytes)
    };
    Some(ChunkLocation {
        pack,
        entry: PackEntry {
            id,
            offset: u64_at(32)?,
            stored_len: u32_at(40)?,
            raw_len: u32_at(44)?,
            kind: v[48],
            compression: v[49],
        },
    })
}

/// True when another process holds the sled database at `path` (sled takes an exclusive
/// `flock` on `path/db`). Probed with our own non-blocking `flock` rather than by
/// matching sled's error text.
fn held_by_another_process(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path.join("db")) else {
        return false;
    };
    let probe = rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive);
    // Dropping `f` releases our probe lock if we got it.
    matches!(probe, Err(e) if e == rustix::io::Errno::WOULDBLOCK)
}

impl IndexCache {
    /// Opens the cache for `repo` under `root/<repo id>/` (or a temporary one when `root`
    /// is `None` or the cache is in use), then brings it up to date with the
    /// repository's index files. Returns warnings about index files it had to skip.
    pub fn open(root: Option<&Path>, repo: &Repository) -> Result<(Self, Vec<String>)> {
        let mut cache = match root {
            Some(root) => {
                let path = root.join(&repo.config().id).join("index.sled");
                Self::open_at(&path)?
            }
            None => Self::temporary()?,
        };
        let warnings = cache.sync(repo)?;
        cache.flush()?;
        Ok((cache, warnings))
    }

    fn config(path: &Path) -> sled::Config {
        sled::Config::new()
            .path(path)
            .cache_capacity(16 << 20)
            .mode(sled::Mode::HighThroughput)
    }

    fn open_at(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| cache_err(path, e))?;
        }
        match Self::config(path).open() {
            Ok(db) => Self::from_db(db, path),
            // Another vmvault process uses it: work with a private one for this run.
            Err(_) if held_by_another_process(path) => Self::temporary(),
            Err(_) => {
                // A damaged cache is rebuilt from the repository.
                std::fs::remove_dir_all(path).map_err(|e| cache_err(path, e))?;
                let db = Self::config(path).open().map_err(|e| cache_err(path, e))?;
                Self::from_db(db, path)
            }
        }
    }

    fn temporary() -> Result<Self> {
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(16 << 20)
            .open()
            .map_err(|e| cache_err(Path::new("(temporary)"), e))?;
        Self::from_db(db, Path::new("(temporary)"))
    }

    fn from_db(db: sled::Db, path: &Path) -> Result<Self> {
        let open = |n: &str| db.open_tree(n).map_err(|e| cache_err(path, e));
        Ok(IndexCache {
            chunks: open("chunks")?,
            packs: open("packs")?,
            files: open("index_files")?,
            _db: db,
            path: path.to_path_buf(),
        })
    }

    fn clear(&self) -> Result<()> {
        for t in [&self.chunks, &self.packs, &self.files] {
            t.clear().map_err(|e| cache_err(&self.path, e))?;
        }
        Ok(())
    }

    /// Absorbs new index files; starts over if any absorbed one disappeared.
    fn sync(&mut self, repo: &Repository) -> Result<Vec<String>> {
        let listed = repo
            .backend()
            .list(FileKind::Index)
            .map_err(|e| crate::repository::io_err(FileKind::Index, "", e))?;
        let listed: HashSet<String> = listed.into_iter().map(|(n, _)| n).collect();
        let mut known = HashSet::new();
        for k in self.files.iter().keys() {
            let k = k.map_err(|e| cache_err(&self.path, e))?;
            known.insert(String::from_utf8_lossy(&k).into_owned());
        }
        if known.iter().any(|k| !listed.contains(k)) {
            self.clear()?;
            known.clear();
        }
        let mut warnings = Vec::new();
        let mut todo: Vec<&String> = listed.iter().filter(|n| !known.contains(*n)).collect();
        todo.sort();
        for name in todo {
            let packs = repo
                .get_sealed(FileKind::Index, KIND_INDEX, name)
                .and_then(|plain| {
                    decode_index(&plain)
                        .map_err(|e| RepoError::corrupt(FileKind::Index, name, e.to_string()))
                });
            match packs {
                Ok(packs) => self.add_index(name, &packs)?,
                Err(e) => warnings.push(format!("skipping {e}")),
            }
        }
        Ok(warnings)
    }

    /// Records an index file's packs and chunks, then the file itself.
    pub fn add_index(&self, name: &str, packs: &[IndexPack]) -> Result<()> {
        let mut chunks = sled::Batch::default();
        let mut pack_batch = sled::Batch::default();
        for p in packs {
            let mut v = [0u8; 40];
            v[..32].copy_from_slice(&p.salt);
            v[32..].copy_from_slice(&p.size.to_le_bytes());
            pack_batch.insert(&p.name[..], &v[..]);
            for e in &p.entries {
                let loc = ChunkLocation {
                    pack: p.name,
                    entry: *e,
                };
                chunks.insert(&e.id.0[..], &encode_location(&loc)[..]);
            }
        }
        self.packs
            .apply_batch(pack_batch)
            .map_err(|e| cache_err(&self.path, e))?;
        self.chunks
            .apply_batch(chunks)
            .map_err(|e| cache_err(&self.path, e))?;
        // The file is recorded as absorbed only once its entries are durable, so a crash
        // can never leave the cache claiming an index file whose chunks it lacks.
        self.chunks.flush().map_err(|e| cache_err(&self.path, e))?;
        self.packs.flush().map_err(|e| cache_err(&self.path, e))?;
        self.files
            .insert(name.as_bytes(), &[][..])
            .map_err(|e| cache_err(&self.path, e))?;
        Ok(())
    }

    /// True when an index file lists the chunk.
    pub fn contains(&self, id: &ChunkId) -> Result<bool> {
        self.chunks
            .contains_key(id.0)
            .map_err(|e| cache_err(&self.path, e))
    }

    /// Where a chunk is stored, if any index file lists it.
    pub fn lookup(&self, id: &ChunkId) -> Result<Option<ChunkLocation>> {
        let v = self
            .chunks
            .get(id.0)
            .map_err(|e| cache_err(&self.path, e))?;
        match v {
            None => Ok(None),
            Some(v) => decode_location(*id, &v)
                .map(Some)
                .ok_or_else(|| cache_err(&self.path, "malformed entry (delete the cache)")),
        }
    }

    /// A pack's salt and size.
    pub fn pack_info(&self, pack: &[u8; 32]) -> Result<Option<([u8; 32], u64)>> {
        let v = self.packs.get(pack).map_err(|e| cache_err(&self.path, e))?;
        Ok(v.and_then(|v| {
            if v.len() != 40 {
                return None;
            }
            let mut salt = [0u8; 32];
            salt.copy_from_slice(&v[..32]);
            let mut size = [0u8; 8];
            size.copy_from_slice(&v[32..]);
            Some((salt, u64::from_le_bytes(size)))
        }))
    }

    /// Number of distinct chunks known.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Number of packs known.
    pub fn pack_count(&self) -> usize {
        self.packs.len()
    }

    /// Flushes to disk so the next process starts from here.
    pub fn flush(&self) -> Result<()> {
        self.files.flush().map_err(|e| cache_err(&self.path, e))?;
        Ok(())
    }
}
