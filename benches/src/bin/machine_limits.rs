//! The machine's own single-core limits for the work a backup does, measured on real data
//! (the allocated bytes of the benchmark image), for `benches/compare/run.sh`.
//!
//! ```text
//! machine_limits FILE [LEVEL]
//! ```
//! Reads up to 4 GiB of FILE into memory and prints one line `name mb_per_s` per stage,
//! each measured on one thread over all of it: `zstd` (compression at LEVEL, default 3,
//! of 128 KiB blocks, vmvault's average chunk size; incompressible blocks count like the
//! others), `blake3_keyed` (chunk ids), `aes256gcm` (sealing), `fastcdc` (vmvault's
//! chunker cutting and naming the data), `zstd_blake3` (zstd and BLAKE3 in turn: the
//! compression/hash bound of one core), and the same two for the chunks vmvault's chunker
//! actually cuts (default parameters, 4 MiB segments, zero runs left out as a backup
//! leaves them): `zstd_chunks` and `zstd_blake3_chunks`, and for the blobs a version 2
//! repository compresses (runs of consecutive chunks of one segment, up to 4 MiB; FORMAT.md
//! section 6): `zstd_blobs` and `zstd_blake3_blobs` (zstd of the blobs, BLAKE3 of their
//! chunks: the compression/hash bound of vmvault's default settings), in bytes of FILE
//! per second, so that FILE's size divided by either is the time that work takes. Chunks vary from 32 to
//! 512 KiB (173 KiB on average on the benchmark disk); zstd picks larger match tables for
//! larger inputs, so they compress better and slower than 128 KiB blocks. MB is 10^6
//! bytes.

use std::hint::black_box;
use std::io::Read;
use std::time::Instant;
use vmvault_chunker::{ChunkerParams, CutKind};
use vmvault_repo::crypto::MasterKeys;

const BLOCK: usize = 128 << 10;
/// The most a version 2 blob holds by default (`compression.blob_size`).
const BLOB_SIZE: usize = 4 << 20;
const MAX_BYTES: u64 = 4 << 30;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: machine_limits FILE [LEVEL]");
        std::process::exit(2);
    };
    let level: i32 = args.get(1).map_or(3, |s| s.parse().unwrap_or(3));
    let mut data = Vec::new();
    std::fs::File::open(path)
        .expect("open input")
        .take(MAX_BYTES)
        .read_to_end(&mut data)
        .expect("read input");
    assert!(data.len() >= BLOCK, "input smaller than one block");
    let mb = data.len() as f64 / 1e6;
    let keys = MasterKeys::generate().expect("keys");

    let mut comp = zstd::bulk::Compressor::new(level).expect("zstd");
    let blocks: Vec<&[u8]> = data.chunks(BLOCK).collect();
    let zstd_s = zstd_secs(&mut comp, &blocks);
    let blake_s = blake3_secs(&keys, &blocks);
    let cipher = keys.pack_cipher(&[7u8; 32]);
    let id = keys.chunk_id(b"limits");
    let mut sealed = data.clone();
    let aes_s = time(|| {
        for (i, b) in sealed.chunks_mut(BLOCK).enumerate() {
            black_box(cipher.encrypt_blob(40 + (i * BLOCK) as u64, &id.0, b));
        }
    });
    let chunker = keys.chunker(ChunkerParams::default_v1());
    let mut cuts = Vec::new();
    let cdc_s = time(|| {
        for seg in data.chunks(4 << 20) {
            cuts.clear();
            chunker.split(seg, 0, &mut cuts);
            black_box(cuts.len());
        }
    });
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut blobs: Vec<&[u8]> = Vec::new();
    for seg in data.chunks(4 << 20) {
        cuts.clear();
        chunker.split(seg, 0, &mut cuts);
        // (start, end) of the blob being gathered: data cuts that follow each other.
        let mut open: Option<(usize, usize)> = None;
        for c in &cuts {
            match c.kind {
                CutKind::Data(_) => {
                    chunks.push(&seg[c.start..c.start + c.len]);
                    open = match open {
                        Some((s, e)) if e == c.start && e - s + c.len <= BLOB_SIZE => {
                            Some((s, e + c.len))
                        }
                        other => {
                            if let Some((s, e)) = other {
                                blobs.push(&seg[s..e]);
                            }
                            Some((c.start, c.start + c.len))
                        }
                    };
                }
                CutKind::Zero => {
                    if let Some((s, e)) = open.take() {
                        blobs.push(&seg[s..e]);
                    }
                }
            }
        }
        if let Some((s, e)) = open {
            blobs.push(&seg[s..e]);
        }
    }
    let zstd_chunks_s = zstd_secs(&mut comp, &chunks);
    let blake_chunks_s = blake3_secs(&keys, &chunks);
    let zstd_blobs_s = zstd_secs(&mut comp, &blobs);
    println!("bytes {}", data.len());
    println!("zstd_level {level}");
    println!("zstd {:.1}", mb / zstd_s);
    println!("blake3_keyed {:.1}", mb / blake_s);
    println!("aes256gcm {:.1}", mb / aes_s);
    println!("fastcdc {:.1}", mb / cdc_s);
    println!("zstd_blake3 {:.1}", mb / (zstd_s + blake_s));
    println!("zstd_chunks {:.1}", mb / zstd_chunks_s);
    println!(
        "zstd_blake3_chunks {:.1}",
        mb / (zstd_chunks_s + blake_chunks_s)
    );
    println!("zstd_blobs {:.1}", mb / zstd_blobs_s);
    println!(
        "zstd_blake3_blobs {:.1}",
        mb / (zstd_blobs_s + blake_chunks_s)
    );
}

/// Seconds to compress each of `pieces` on its own (best of three).
fn zstd_secs(comp: &mut zstd::bulk::Compressor<'_>, pieces: &[&[u8]]) -> f64 {
    let largest = pieces.iter().map(|p| p.len()).max().unwrap_or(0);
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(largest));
    time(|| {
        for p in pieces {
            out.clear();
            comp.compress_to_buffer(p, &mut out).expect("compress");
            black_box(out.len());
        }
    })
}

/// Seconds to name each of `pieces` with the keyed BLAKE3 chunk id (best of three).
fn blake3_secs(keys: &MasterKeys, pieces: &[&[u8]]) -> f64 {
    time(|| {
        for p in pieces {
            black_box(keys.chunk_id(p));
        }
    })
}

/// The best of three runs, in seconds (the machine is shared; the minimum is the limit).
fn time(mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}
