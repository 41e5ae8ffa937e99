//! Backup and restore through the library, with in-memory sources: multi-page manifests,
//! determinism across thread counts, and sources that fail mid-way.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use vmvault_chunker::ChunkerParams;
use vmvault_ingest::{DiskSource, Extent, ExtentKind, IngestError, Sequential};
use vmvault_repo::backend::LocalBackend;
use vmvault_repo::backup::{backup, BackupRequest, DiskInput, Progress};
use vmvault_repo::cache::IndexCache;
use vmvault_repo::check::{check, CheckProgress};
use vmvault_repo::format::keyfile::KdfParams;
use vmvault_repo::restore::{restore_disk, RestoreOptions, RestoreProgress};
use vmvault_repo::{RepoError, Repository};

/// A sparse in-memory disk: data regions at offsets, everything else unallocated.
#[derive(Clone)]
struct MemDisk {
    size: u64,
    regions: Vec<(u64, Vec<u8>)>,
    /// Fail reads at or after this offset.
    fail_at: Option<u64>,
}

impl DiskSource for MemDisk {
    fn size(&self) -> u64 {
        self.size
    }
    fn extents(&mut self, offset: u64, len: u64) -> Result<Vec<Extent>, IngestError> {
        let end = (offset + len).min(self.size);
        let mut out = Vec::new();
        let mut pos = offset;
        for (at, data) in &self.regions {
            let (s, e) = ((*at).max(offset), (at + data.len() as u64).min(end));
            if s >= e {
                continue;
            }
            if s > pos {
                out.push(Extent {
                    offset: pos,
                    len: s - pos,
                    kind: ExtentKind::Unallocated,
                });
            }
            out.push(Extent {
                offset: s,
                len: e - s,
                kind: ExtentKind::Data,
            });
            pos = e;
        }
        if pos < end {
            out.push(Extent {
                offset: pos,
                len: end - pos,
                kind: ExtentKind::Unallocated,
            });
        }
        Ok(out)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IngestError> {
        if self.fail_at.is_some_and(|f| offset + buf.len() as u64 > f) {
            return Err(IngestError::Read {
                what: "memdisk".into(),
                offset,
                source: std::io::Error::other("injected I/O error"),
            });
        }
        buf.fill(0);
        for (at, data) in &self.regions {
            let (s, e) = (
                (*at).max(offset),
                (at + data.len() as u64).min(offset + buf.len() as u64),
            );
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&data[(s - at) as usize..(e - at) as usize]);
            }
        }
        Ok(())
    }
    fn format_name(&self) -> &'static str {
        "memory"
    }
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Half compressible: every other KiB is text-like.
            if (i / 1024) % 2 == 0 {
                b"abcdefgh"[(x % 8) as usize]
            } else {
                (x >> 24) as u8
            }
        })
        .collect()
}

fn fast_kdf() -> KdfParams {
    KdfParams {
        memory_kib: 64,
        iterations: 1,
        ..KdfParams::default_v1()
    }
}

fn new_repo(dir: &std::path::Path) -> Repository {
    Repository::init(
        Arc::new(LocalBackend::new(dir.join("repo"))),
        b"pw",
        fast_kdf(),
        ChunkerParams::default_v1(),
    )
    .unwrap()
}

fn run_backup(
    repo: &Repository,
    cache: &IndexCache,
    disk: MemDisk,
    threads: usize,
) -> Result<String, RepoError> {
    let req = BackupRequest {
        vm: "vm1".into(),
        parent: repo.latest_snapshot(Some("vm1"))?.map(|(name, _)| name),
        tags: vec![],
        disks: vec![DiskInput {
            name: "disk0".into(),
            source_path: "memory".into(),
            source: Box::new(Sequential::new(disk)),
        }],
        configs: Vec::new(),
        catalogs: Vec::new(),
        threads,
        cancel: None,
        commit_check: None,
    };
    backup(repo, cache, req, &Progress::default()).map(|s| s.snapshot)
}

/// A 5 GiB disk (several 1 GiB manifest pages), data near page boundaries, a zero run,
/// and chunks repeated within the disk, near each other and far apart.
fn sample_disk() -> MemDisk {
    let gib = 1u64 << 30;
    let mut zeroed = noise(3 << 20, 9);
    zeroed[1 << 20..2 << 20].fill(0);
    MemDisk {
        size: 5 * gib + 12345,
        regions: vec![
            (0, noise(2 << 20, 1)),
            // The same bytes again 4 MiB later: the same chunks twice in one restore batch.
            (4 << 20, noise(2 << 20, 1)),
            (gib - (1 << 20), noise(2 << 20, 2)),
            (2 * gib + 4096, zeroed),
            (3 * gib, noise(2 << 20, 1)),
            (5 * gib, noise(12345, 3)),
        ],
        fail_at: None,
    }
}

fn assert_restored_equals(path: &std::path::Path, disk: &MemDisk) {
    let f = std::fs::File::open(path).unwrap();
    assert_eq!(f.metadata().unwrap().len(), disk.size);
    let mut d = disk.clone();
    for (at, data) in &disk.regions {
        let mut got = vec![0u8; data.len()];
        f.read_exact_at(&mut got, *at).unwrap();
        let mut want = vec![0u8; data.len()];
        d.read_at(*at, &mut want).unwrap();
        assert!(got == want, "region at {at} differs");
    }
    // Something between regions reads as zeros.
    let mut gap = vec![1u8; 4096];
    f.read_exact_at(&mut gap, 4 << 30).unwrap();
    assert!(gap.iter().all(|&b| b == 0));
    use std::os::unix::fs::MetadataExt;
    assert!(
        f.metadata().unwrap().blocks() * 512 < 64 << 20,
        "restore must be sparse"
    );
}

#[test]
fn multi_page_round_trip_and_thread_independence() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path());
    let (cache, _) = IndexCache::open(Some(&dir.path().join("cache")), &repo).unwrap();
    let disk = sample_disk();
    let one = run_backup(&repo, &cache, disk.clone(), 1).unwrap();
    let four = run_backup(&repo, &cache, disk.clone(), 4).unwrap();
    let s1 = repo.load_snapshot(&one).unwrap();
    let s4 = repo.load_snapshot(&four).unwrap();
    assert_eq!(
        s1.disks[0].manifest, s4.disks[0].manifest,
        "manifest must not depend on threads"
    );
    assert_eq!(s4.parent.as_deref(), Some(one.as_str()));
    assert!(s1.disks[0].zero_bytes >= 1 << 20);
    let out = dir.path().join("out.img");
    restore_disk(
        &repo,
        &cache,
        &s4.disks[0],
        &out,
        &RestoreOptions::default(),
        &RestoreProgress::default(),
    )
    .unwrap();
    assert_restored_equals(&out, &disk);
    let report = check(
        &repo,
        &cache,
        vmvault_repo::check::ReadData::All,
        &CheckProgress::default(),
    )
    .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

#[test]
fn failing_source_writes_no_snapshot_and_keeps_the_repository_sound() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path());
    let (cache, _) = IndexCache::open(Some(&dir.path().join("cache")), &repo).unwrap();
    let good = run_backup(&repo, &cache, sample_disk(), 2).unwrap();
    let mut bad = sample_disk();
    bad.regions[0].1 = noise(2 << 20, 77); // new data, so packs get written before the failure
    bad.fail_at = Some(3 << 30);
    let err = run_backup(&repo, &cache, bad, 2).unwrap_err();
    assert!(err.to_string().contains("injected I/O error"), "{err}");
    let (snaps, damaged) = repo.list_snapshots().unwrap();
    assert!(damaged.is_empty());
    assert_eq!(snaps.len(), 1, "a failed backup must not write a snapshot");
    assert_eq!(snaps[0].0, good);
    let report = check(
        &repo,
        &cache,
        vmvault_repo::check::ReadData::All,
        &CheckProgress::default(),
    )
    .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // And the next backup works, deduplicating against what the failed one stored.
    run_backup(&repo, &cache, sample_disk(), 2).unwrap();
}

#[test]
fn wrong_password_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    new_repo(dir.path());
    let backend = Arc::new(LocalBackend::new(dir.path().join("repo")));
    assert!(matches!(
        Repository::open(backend.clone(), b"nope"),
        Err(RepoError::WrongPassword { tried: 1 })
    ));
    Repository::open(backend, b"pw").unwrap();
    let empty = Arc::new(LocalBackend::new(dir.path().join("nothing")));
    assert!(matches!(
        Repository::open(empty, b"pw"),
        Err(RepoError::NoRepository(_))
    ));
}

#[test]
fn cache_rebuilds_after_deletion_and_after_index_removal() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path());
    let cache_dir = dir.path().join("cache");
    let snap = {
        let (cache, _) = IndexCache::open(Some(&cache_dir), &repo).unwrap();
        run_backup(&repo, &cache, sample_disk(), 2).unwrap()
    };
    std::fs::remove_dir_all(&cache_dir).unwrap();
    let (cache, _) = IndexCache::open(Some(&cache_dir), &repo).unwrap();
    assert!(
        cache.chunk_count() > 0,
        "cache must be rebuilt from the index files"
    );
    let s = repo.load_snapshot(&snap).unwrap();
    let out = dir.path().join("out.img");
    restore_disk(
        &repo,
        &cache,
        &s.disks[0],
        &out,
        &RestoreOptions::default(),
        &RestoreProgress::default(),
    )
    .unwrap();
    assert_restored_equals(&out, &sample_disk());
}

#[test]
fn snapshot_disk_reads_at_random_offsets_match_the_source() {
    use vmvault_repo::disk_reader::SnapshotDiskReader;
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path());
    let (cache, _) = IndexCache::open(Some(&dir.path().join("cache")), &repo).unwrap();
    let mut disk = sample_disk();
    let id = run_backup(&repo, &cache, disk.clone(), 2).unwrap();
    let snap = repo.load_snapshot(&id).unwrap();
    let mut reader = SnapshotDiskReader::open(&repo, &cache, &snap.disks[0]).unwrap();
    assert_eq!(reader.size(), disk.size);
    let gib = 1u64 << 30;
    // Across chunk, segment and page boundaries, inside holes and zero runs, at the end.
    let mut probes: Vec<(u64, usize)> = vec![
        (0, 4096),
        (12_345, 300_000),
        ((2 << 20) - 100, 5 << 20),
        (gib - (1 << 20) - 7, 3 << 20),
        (gib - 1, 2),
        (2 * gib + 4096 + (1 << 20) - 5, (1 << 20) + 10),
        (3 * gib + 1, 1 << 20),
        (5 * gib, 12345),
        (5 * gib + 12000, 4096),
        (4 * gib, 65536),
    ];
    let mut x = 77u64;
    for _ in 0..40 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let region = &disk.regions[(x % disk.regions.len() as u64) as usize];
        let at = region.0 + x % (region.1.len() as u64);
        probes.push((at.saturating_sub(1000), (x % 400_000) as usize + 1));
    }
    for (offset, len) in probes {
        let mut got = vec![0xAAu8; len];
        let n = reader.read_at(offset, &mut got).unwrap();
        let want_len = len.min((disk.size - offset) as usize);
        assert_eq!(n, want_len, "read at {offset}");
        let mut want = vec![0u8; want_len];
        disk.read_at(offset, &mut want).unwrap();
        assert!(got[..n] == want[..], "bytes differ at {offset}+{len}");
    }
    // Sequential reads (with readahead) give the same bytes as one big read.
    let mut big = vec![0u8; 8 << 20];
    reader.read_at(gib - (4 << 20), &mut big).unwrap();
    let mut seq = Vec::new();
    let mut pos = gib - (4 << 20);
    while seq.len() < big.len() {
        let mut piece = vec![0u8; 65536 + 123];
        let n = reader.read_at(pos, &mut piece).unwrap();
        seq.extend_from_slice(&piece[..n]);
        pos += n as u64;
    }
    seq.truncate(big.len());
    assert!(seq == big);
    // Past the end: nothing; the allocation map covers the disk exactly.
    assert_eq!(reader.read_at(disk.size, &mut [0u8; 10]).unwrap(), 0);
    let ext = reader.extents(gib - 10, 20).unwrap();
    assert_eq!(ext.first().unwrap().offset, gib - 10);
    assert_eq!(ext.last().unwrap().end(), gib + 10);
    assert!(reader.extents(4 * gib, 4096).unwrap()[0].kind == ExtentKind::Unallocated);
}
