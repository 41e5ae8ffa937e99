//! Library-level restore throughput: a ~64 MiB sparse disk of realistic data (real
//! installed files, with a few holes and zero runs) is backed up once into a temporary
//! repository; each iteration restores it with `restore::restore_disk` to a file,
//! including the final fsync the restore does. Throughput is the logical disk size.
//! `VMVAULT_BENCH_CLOCK=cpu` measures the process's CPU time (all restore threads)
//! instead of wall time.

mod common;

use common::Clock;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::os::unix::fs::FileExt;
use std::time::Duration;
use vmvault_benches::{backup_image, init_repo, realistic_data, temp_cache};
use vmvault_chunker::ChunkerParams;
use vmvault_repo::restore::{restore_disk, RestoreOptions, RestoreProgress};

const DISK: u64 = 64 << 20;

fn bench_restore(c: &mut Criterion<Clock>) {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("disk.img");
    // 56 MiB of file data in 7 MiB runs separated by 1 MiB holes, and a 1 MiB zero run.
    let data = realistic_data(56 << 20);
    let f = std::fs::File::create(&image).unwrap();
    f.set_len(DISK).unwrap();
    for (i, run) in data.chunks(7 << 20).enumerate() {
        f.write_all_at(run, i as u64 * (8 << 20)).unwrap();
    }
    f.write_all_at(&vec![0u8; 1 << 20], DISK - (1 << 20))
        .unwrap();
    f.sync_all().unwrap();
    drop(f);

    let repo = init_repo(&tmp.path().join("repo"), ChunkerParams::default_v1());
    let cache = temp_cache(&repo);
    let summary = backup_image(&repo, &cache, &image, "bench", 0);
    let disk = summary.snapshot_record.disks[0].clone();
    let target = tmp.path().join("restored.img");
    let opts = RestoreOptions {
        overwrite: true,
        threads: 0,
        cancel: None,
    };

    let mut g = c.benchmark_group("restore");
    g.throughput(Throughput::Bytes(DISK));
    g.bench_function("restore_disk_64MiB", |b| {
        b.iter(|| {
            let p = RestoreProgress::default();
            restore_disk(&repo, &cache, &disk, &target, &opts, &p).unwrap()
        })
    });
    g.finish();
    let restored = std::fs::read(&target).unwrap();
    let original = std::fs::read(&image).unwrap();
    assert!(
        restored == original,
        "restored disk differs from the original"
    );
}

criterion_group! {
    name = restore;
    config = Criterion::default()
        .with_measurement(Clock::from_env(true))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = bench_restore
}
criterion_main!(restore);
