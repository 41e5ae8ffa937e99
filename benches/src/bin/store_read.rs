//! The storage's own read bound: reads every pack of a repository whole, `THREADS` at a
//! time, through the same backend vmvault uses, and prints MiB/s. A restore cannot be
//! faster than this (it reads the same bytes), so `benches/s3.sh` reports restore
//! throughput next to it.
//!
//! ```text
//! store_read LOCATION [THREADS]      LOCATION: a directory or s3://bucket/prefix
//! ```

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use vmvault_repo::backend::{Backend, FileKind, LocalBackend, ObjectBackend};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(location) = args.get(1) else {
        eprintln!("usage: store_read LOCATION [THREADS]");
        std::process::exit(2);
    };
    let threads: usize = args.get(2).and_then(|t| t.parse().ok()).unwrap_or(8);
    let backend: Arc<dyn Backend> = if location.contains("://") {
        match ObjectBackend::from_url(location) {
            Ok(b) => Arc::new(b),
            Err(e) => {
                eprintln!("store_read: {e}");
                std::process::exit(1);
            }
        }
    } else {
        Arc::new(LocalBackend::new(location))
    };
    let packs = match backend.list(FileKind::Pack) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("store_read: cannot list packs: {e}");
            std::process::exit(1);
        }
    };
    let next = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((name, _)) = packs.get(i) else {
                    return;
                };
                match backend.get(FileKind::Pack, name) {
                    Ok(b) => {
                        bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("store_read: {name}: {e}");
                        std::process::exit(1);
                    }
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let total = bytes.load(Ordering::Relaxed);
    println!(
        "{{\"packs\":{},\"bytes\":{total},\"secs\":{secs:.3},\"mib_per_s\":{:.1}}}",
        packs.len(),
        total as f64 / 1048576.0 / secs
    );
}
