//! Throughput of each stage of the backup pipeline, one at a time, on realistic data
//! (real installed files from /usr/lib and /usr/share, not random bytes):
//!
//! - `fastcdc/split`: `Chunker::split` on 64 MiB (zero detection + keyed FastCDC cuts +
//!   keyed BLAKE3 chunk ids, exactly what a backup worker does per extent);
//! - `fastcdc/cut_only`: the `fastcdc` crate's own v2020 iterator on the same buffer
//!   (cuts alone, no ids), to separate cutting from hashing;
//! - `blake3_keyed`: `MasterKeys::chunk_id` on 128 KiB chunks;
//! - `zstd3`: zstd level 3 on 128 KiB chunks (a reused bulk compressor, as the backup);
//! - `aes256gcm`: `PackCipher::encrypt_blob` on 128 KiB chunks;
//! - `pack_write`: `PackWriter::add` of 16 MiB of compressed chunks, then `finish`.
//!
//! `VMVAULT_BENCH_CLOCK=cpu` measures the calling thread's CPU time instead of wall time
//! (see `common/mod.rs`); every bench here is single-threaded.

mod common;

use common::Clock;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use vmvault_benches::realistic_data;
use vmvault_chunker::{ChunkerParams, CutKind};
use vmvault_repo::crypto::MasterKeys;
use vmvault_repo::pack_writer::PackWriter;

const CHUNK: usize = 128 << 10;
const SPLIT_BYTES: usize = 64 << 20;
/// Bytes per iteration of the per-chunk benches: 128 chunks of 128 KiB.
const BATCH_BYTES: usize = 16 << 20;

fn config() -> Criterion<Clock> {
    Criterion::default()
        .with_measurement(Clock::from_env(false))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
}

fn bench_chunker(c: &mut Criterion<Clock>) {
    let data = realistic_data(SPLIT_BYTES);
    let keys = MasterKeys::generate().unwrap();
    let params = ChunkerParams::default_v1();
    let chunker = keys.chunker(params.clone());
    let mut g = c.benchmark_group("fastcdc");
    g.throughput(Throughput::Bytes(data.len() as u64));
    let mut cuts = Vec::new();
    g.bench_function("split_64MiB_avg128K", |b| {
        b.iter(|| {
            cuts.clear();
            chunker.split(black_box(&data), 0, &mut cuts);
            black_box(cuts.len())
        })
    });
    let chunks = cuts
        .iter()
        .filter(|c| matches!(c.kind, CutKind::Data(_)))
        .count();
    eprintln!(
        "fastcdc: {} data chunks in {} MiB, average {} KiB",
        chunks,
        data.len() >> 20,
        data.len() / chunks.max(1) / 1024
    );
    g.bench_function("cut_only_64MiB_avg128K", |b| {
        b.iter(|| {
            let it = fastcdc::v2020::FastCDC::with_level(
                black_box(&data),
                params.min_size as usize,
                params.avg_size as usize,
                params.max_size as usize,
                fastcdc::v2020::Normalization::Level1,
            );
            black_box(it.count())
        })
    });
    g.finish();
}

fn chunks_of(data: &[u8]) -> Vec<&[u8]> {
    data.chunks_exact(CHUNK).collect()
}

fn bench_hash(c: &mut Criterion<Clock>) {
    let data = realistic_data(BATCH_BYTES);
    let keys = MasterKeys::generate().unwrap();
    let mut g = c.benchmark_group("blake3_keyed");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("chunk_id_128KiB", |b| {
        b.iter(|| {
            for ch in chunks_of(&data) {
                black_box(keys.chunk_id(black_box(ch)));
            }
        })
    });
    g.finish();
}

fn bench_zstd(c: &mut Criterion<Clock>) {
    let data = realistic_data(BATCH_BYTES);
    let mut comp = zstd::bulk::Compressor::new(3).unwrap();
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(CHUNK));
    let mut stored = 0usize;
    for ch in chunks_of(&data) {
        out.clear();
        comp.compress_to_buffer(ch, &mut out).unwrap();
        stored += out.len().min(ch.len());
    }
    eprintln!(
        "zstd3: 128 KiB chunks of realistic data compress to {:.1}% ",
        100.0 * stored as f64 / data.len() as f64
    );
    let mut g = c.benchmark_group("zstd3");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("compress_128KiB", |b| {
        b.iter(|| {
            for ch in chunks_of(&data) {
                out.clear();
                comp.compress_to_buffer(black_box(ch), &mut out).unwrap();
                black_box(out.len());
            }
        })
    });
    g.finish();
}

fn bench_aes(c: &mut Criterion<Clock>) {
    let mut data = realistic_data(BATCH_BYTES);
    let keys = MasterKeys::generate().unwrap();
    let cipher = keys.pack_cipher(&[7u8; 32]);
    let id = keys.chunk_id(b"bench");
    let mut g = c.benchmark_group("aes256gcm");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("encrypt_blob_128KiB", |b| {
        b.iter(|| {
            for (i, ch) in data.chunks_exact_mut(CHUNK).enumerate() {
                black_box(cipher.encrypt_blob(40 + (i * CHUNK) as u64, &id.0, black_box(ch)));
            }
        })
    });
    g.finish();
}

fn bench_pack(c: &mut Criterion<Clock>) {
    // Compressed 128 KiB chunks of realistic data until they fill one 16 MiB pack, as
    // the backup pipeline hands them to the pack writer.
    let data = realistic_data(64 << 20);
    let keys = MasterKeys::generate().unwrap();
    let mut comp = zstd::bulk::Compressor::new(3).unwrap();
    let mut payloads = Vec::new();
    let mut total = 0usize;
    for ch in chunks_of(&data) {
        let z = comp.compress(ch).unwrap();
        let p = if z.len() < ch.len() { z } else { ch.to_vec() };
        total += p.len();
        payloads.push((keys.chunk_id(ch), p));
        if total >= 16 << 20 {
            break;
        }
    }
    let mut g = c.benchmark_group("pack_write");
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("add_16MiB_finish", |b| {
        b.iter_batched(
            || PackWriter::new(&keys, 2, (17 << 20) + 4096).unwrap(),
            |mut w| {
                for (id, p) in &payloads {
                    w.add(*id, 0, 1, CHUNK as u32, p);
                }
                black_box(w.finish().name)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group! {
    name = stages;
    config = config();
    targets = bench_chunker, bench_hash, bench_zstd, bench_aes, bench_pack
}
criterion_main!(stages);
