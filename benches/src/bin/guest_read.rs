//! Single-file restore cost (issue 5): the time to the first byte and to the whole of one
//! file inside a snapshot of a large disk, and the bytes fetched from the repository to
//! get it, compared with the file's own size.
//!
//! ```text
//! guest_read REPO PASSWORD SNAPSHOT DISK/PART/path [--cache-dir DIR]
//! ```
//! The repository is opened through the local backend, which counts every byte read, then
//! the snapshot's disk is opened, its partitions found, its file system opened and the
//! file read, as `vmvault dump` does. Each step's time and the cumulative bytes fetched
//! are printed. Drop the page cache first (`echo 3 > /proc/sys/vm/drop_caches`) for a cold
//! figure.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use vmvault_ingest::guest::volumes::{discover, open_fs};
use vmvault_ingest::guest::VolumeRead;
use vmvault_repo::backend::{Backend, LocalBackend};
use vmvault_repo::cache::IndexCache;
use vmvault_repo::disk_reader::SnapshotVolume;
use vmvault_repo::Repository;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: guest_read REPO PASSWORD SNAPSHOT DISK/PART/path [--cache-dir DIR]");
        std::process::exit(2);
    }
    let cache_dir = args
        .iter()
        .position(|a| a == "--cache-dir")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let backend = Arc::new(LocalBackend::new(&args[1]));
    let t0 = Instant::now();
    let repo: &'static Repository = Box::leak(Box::new(
        Repository::open(backend.clone(), args[2].as_bytes()).expect("repository opens"),
    ));
    let (cache, _) = IndexCache::open(cache_dir.as_deref(), repo).expect("cache opens");
    let cache: &'static IndexCache = Box::leak(Box::new(cache));
    let (_, snap) = repo.resolve_snapshot(&args[3], None).expect("snapshot");
    let mut parts = args[4].splitn(3, '/');
    let (disk, volume, inner) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let report = |step: &str, t: Instant| {
        println!(
            "{step:<28} {:>8.1} ms  fetched {:>10} bytes in {:>5} reads",
            t.elapsed().as_secs_f64() * 1e3,
            backend.counters().snapshot().bytes_down,
            backend.counters().snapshot().get
        );
    };
    report("open repository + cache", t0);
    let base = (
        backend.counters().snapshot().bytes_down,
        backend.counters().snapshot().get,
    );
    let t = Instant::now();
    let d = snap.disks.iter().find(|d| d.name == disk).expect("disk");
    let view: Arc<dyn VolumeRead> =
        Arc::new(SnapshotVolume::open(repo, cache, d).expect("disk opens"));
    let layout = discover(view).expect("layout");
    let vol = layout.volume(volume).expect("volume");
    let fs = open_fs(vol.content, vol.view.clone()).expect("file system");
    report("open disk, partitions, fs", t);
    let mut f = fs.open(inner).expect("file opens");
    let mut buf = vec![0u8; 1 << 20];
    let n = f.read_at(0, &mut buf[..4096]).expect("first read");
    report(&format!("first {n} bytes"), t);
    let len = f.len();
    let mut pos = 0;
    while pos < len {
        let n = f.read_at(pos, &mut buf).expect("read");
        if n == 0 {
            break;
        }
        pos += n as u64;
    }
    report(&format!("whole file ({len} bytes)"), t);
    let fetched = backend.counters().snapshot().bytes_down - base.0;
    println!(
        "fetched for the file: {fetched} bytes in {} reads = {:.2}x its size",
        backend.counters().snapshot().get - base.1,
        fetched as f64 / len.max(1) as f64
    );
}
