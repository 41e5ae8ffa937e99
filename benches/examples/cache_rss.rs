//! Reproducer for the index cache's memory use: feeds N random chunk ids through
//! `IndexCache` the way a backup's uploader does (a `contains` miss per chunk, then
//! `add_index` every PER entries) into a persistent index cache, and prints RSS.
//!
//! ```text
//! cargo run --release -p vmvault-benches --example cache_rss -- [N=113000] [PER=100000]
//! ```
//! With the sled cache of the first version, PER = 100 000 (the backup's
//! `INDEX_FLUSH_ENTRIES`) raised RSS by ~300-450 MiB and 400 000 entries in small batches
//! still reached 132 MiB; the run-file cache that replaced it peaks at ~20 MiB for both.

use vmvault_benches::{init_repo, Rng};
use vmvault_chunker::{ChunkId, ChunkerParams};
use vmvault_repo::cache::IndexCache;
use vmvault_repo::format::index::IndexPack;
use vmvault_repo::format::pack::PackEntry;

fn rss() -> String {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(113_000, |v| v.parse().unwrap());
    let per: usize = std::env::args()
        .nth(2)
        .map_or(100_000, |v| v.parse().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let repo = init_repo(&tmp.path().join("repo"), ChunkerParams::default_v1());
    let (cache, _) = IndexCache::open(Some(&tmp.path().join("cache")), &repo).unwrap();
    println!("opened: {}", rss());
    let mut rng = Rng::new(3);
    let mut batch: Vec<IndexPack> = Vec::new();
    let mut in_batch = 0;
    let t = std::time::Instant::now();
    for i in 0..n {
        let mut id = [0u8; 32];
        rng.fill(&mut id);
        let id = ChunkId(id);
        assert!(!cache.contains(&id).unwrap());
        if i % 280 == 0 || batch.is_empty() {
            let mut name = [0u8; 32];
            rng.fill(&mut name);
            batch.push(IndexPack {
                name,
                salt: [1; 32],
                size: 16 << 20,
                entries: Vec::new(),
            });
        }
        batch
            .last_mut()
            .unwrap()
            .entries
            .push(PackEntry::single(id, 40, 60000, 170000, 0, 1));
        in_batch += 1;
        if in_batch >= per {
            cache.add_index(&format!("idx{i}"), &batch).unwrap();
            if (i + 1) % 100_000 < per {
                println!(
                    "add_index {in_batch} at {i}: {} ({:.1} s)",
                    rss(),
                    t.elapsed().as_secs_f64()
                );
            }
            batch.clear();
            in_batch = 0;
        }
    }
    println!("lookups done: {}", rss());
    if !batch.is_empty() {
        cache.add_index("last", &batch).unwrap();
        println!(
            "add_index {in_batch}: {} ({:.1} s)",
            rss(),
            t.elapsed().as_secs_f64()
        );
    }
    println!(
        "after add_index: {} ({:.1} s)",
        rss(),
        t.elapsed().as_secs_f64()
    );
    drop(cache);
    println!("dropped: {} ({:.1} s)", rss(), t.elapsed().as_secs_f64());
}
