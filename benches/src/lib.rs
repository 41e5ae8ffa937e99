//! Shared helpers for vmvault's benchmarks: realistic test data, throw-away
//! repositories with a fast KDF, and small measurement utilities.
//!
//! The criterion benches live in `benches/*.rs`, the chunk-size curve in
//! `src/bin/chunk_curve.rs`, and the end-to-end script in `e2e.sh`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vmvault_chunker::ChunkerParams;
use vmvault_ingest::{RawFile, Sequential};
use vmvault_repo::backend::LocalBackend;
use vmvault_repo::backup::{backup, BackupRequest, BackupSummary, DiskInput, Progress};
use vmvault_repo::cache::IndexCache;
use vmvault_repo::format::keyfile::KdfParams;
use vmvault_repo::Repository;

/// Directories whose installed files make up the "realistic" data.
pub const DEFAULT_SOURCES: &[&str] = &["/usr/lib", "/usr/share"];

/// The password of every benchmark repository.
pub const PASSWORD: &[u8] = b"vmvault-bench";

/// Argon2id parameters that cost next to nothing: benchmarks measure data paths, not
/// the key derivation.
pub fn fast_kdf() -> KdfParams {
    KdfParams {
        memory_kib: 64,
        iterations: 1,
        ..KdfParams::default_v1()
    }
}

/// Regular files under `roots`, depth-first in sorted order (deterministic across runs on
/// the same machine). Symlinks are skipped; unreadable directories are ignored.
pub fn real_files(roots: &[&str]) -> impl Iterator<Item = PathBuf> {
    let mut stack: Vec<PathBuf> = roots.iter().rev().map(PathBuf::from).collect();
    std::iter::from_fn(move || {
        while let Some(p) = stack.pop() {
            let Ok(meta) = fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                let Ok(rd) = fs::read_dir(&p) else { continue };
                let mut children: Vec<PathBuf> =
                    rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
                children.sort();
                stack.extend(children.into_iter().rev());
            } else if meta.is_file() && meta.len() > 0 {
                return Some(p);
            }
        }
        None
    })
}

/// `len` bytes made of real installed files (shared libraries, executables, text,
/// locale and icon data, ...) concatenated in a fixed order: data that compresses and
/// chunks like the contents of a real root filesystem, unlike random bytes.
pub fn realistic_data(len: usize) -> Vec<u8> {
    realistic_data_from(DEFAULT_SOURCES, len)
}

/// Like [`realistic_data`] from other directories. Panics if they hold less than `len`.
pub fn realistic_data_from(roots: &[&str], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    for path in real_files(roots) {
        let Ok(bytes) = fs::read(&path) else { continue };
        let take = bytes.len().min(len - out.len());
        out.extend_from_slice(&bytes[..take]);
        if out.len() == len {
            return out;
        }
    }
    panic!(
        "only {} bytes of files under {roots:?}, {len} wanted",
        out.len()
    );
}

/// Creates a repository in the empty or missing directory `dir` with the given chunker
/// parameters and the fast KDF.
pub fn init_repo(dir: &Path, chunker: ChunkerParams) -> Repository {
    let backend = Arc::new(LocalBackend::new(dir));
    Repository::init(backend, PASSWORD, fast_kdf(), chunker).expect("repository init")
}

/// A temporary index cache for `repo`, brought up to date with its index files.
pub fn temp_cache(repo: &Repository) -> IndexCache {
    IndexCache::open(None, repo).expect("index cache").0
}

/// Backs up the raw image at `image` as disk `disk` of VM `vm`.
pub fn backup_image(
    repo: &Repository,
    cache: &IndexCache,
    image: &Path,
    vm: &str,
    threads: usize,
) -> BackupSummary {
    let raw = RawFile::open(image).expect("open image");
    let req = BackupRequest {
        vm: vm.into(),
        parent: repo
            .latest_snapshot(Some(vm))
            .expect("list snapshots")
            .map(|(name, _)| name),
        tags: Vec::new(),
        disks: vec![DiskInput {
            name: "disk0".into(),
            source_path: image.display().to_string(),
            source: Box::new(Sequential::new(raw)),
        }],
        configs: Vec::new(),
        catalogs: Vec::new(),
        threads,
        cancel: None,
        commit_check: None,
    };
    backup(repo, cache, req, &Progress::default()).expect("backup")
}

/// Total size in bytes of the regular files under `dir` (like `du -sb`, minus
/// directory entries).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

/// Number of regular files under `dir`.
pub fn dir_files(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_files(&e.path()),
            Ok(m) if m.is_file() => 1,
            _ => 0,
        })
        .sum()
}

/// The data (allocated) extents of a sparse file, from `SEEK_DATA`/`SEEK_HOLE`.
pub fn data_extents(path: &Path) -> Vec<(u64, u64)> {
    use vmvault_ingest::{DiskSource, ExtentKind};
    let mut raw = RawFile::open(path).expect("open image");
    let size = raw.size();
    raw.extents(0, size)
        .expect("extents")
        .into_iter()
        .filter(|e| e.kind == ExtentKind::Data)
        .map(|e| (e.offset, e.len))
        .collect()
}

/// A small, fast, seedable PRNG (xorshift64*): benchmarks must not depend on the
/// quality of their randomness, only on its repeatability.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is replaced by a fixed non-zero constant).
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Picks `n` distinct `page`-aligned offsets of whole pages lying inside `extents`,
/// uniformly over the allocated bytes.
pub fn random_pages(extents: &[(u64, u64)], page: u64, n: usize, rng: &mut Rng) -> Vec<u64> {
    // Whole aligned pages inside each extent.
    let spans: Vec<(u64, u64)> = extents
        .iter()
        .filter_map(|&(off, len)| {
            let first = off.div_ceil(page);
            let end = (off + len) / page;
            (end > first).then_some((first, end - first))
        })
        .collect();
    let total: u64 = spans.iter().map(|s| s.1).sum();
    assert!(
        total >= n as u64,
        "only {total} allocated pages, {n} wanted"
    );
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < n {
        let mut k = rng.below(total);
        for &(first, count) in &spans {
            if k < count {
                picked.insert((first + k) * page);
                break;
            }
            k -= count;
        }
    }
    picked.into_iter().collect()
}

/// Overwrites each `page`-sized page at `offsets` in the file at `path` with random bytes.
pub fn scribble_pages(path: &Path, offsets: &[u64], page: usize, rng: &mut Rng) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open image for writing");
    let mut buf = vec![0u8; page];
    for &off in offsets {
        rng.fill(&mut buf);
        f.write_all_at(&buf, off).expect("write page");
    }
    f.sync_all().expect("sync image");
}

/// CPU time (user + system) this process has used so far, in seconds, from
/// `/proc/self/stat` (clock ticks of 1/100 s, as on every common Linux build). Wall time
/// on a shared machine depends on the neighbours; CPU time much less.
pub fn cpu_seconds() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// Formats a byte count with binary units.
pub fn human_bytes(n: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_pages_are_aligned_distinct_and_inside() {
        let extents = [(4096 * 3 + 100, 4096 * 10), (1 << 20, 4096 * 5)];
        let mut rng = Rng::new(7);
        let pages = random_pages(&extents, 4096, 12, &mut rng);
        assert_eq!(pages.len(), 12);
        for p in &pages {
            assert_eq!(p % 4096, 0);
            assert!(extents.iter().any(|&(o, l)| *p >= o && p + 4096 <= o + l));
        }
    }

    #[test]
    fn rng_is_repeatable() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(1);
                move |_| r.next_u64()
            })
            .collect();
        let mut r = Rng::new(1);
        assert!(a.iter().all(|v| *v == r.next_u64()));
        assert!(r.below(10) < 10);
    }
}
