//! Builds a synthetic repository with millions of chunks for measuring prune (issue 7):
//! index files listing `CHUNKS` chunks in packs of 128 blobs, sparse pack files of the
//! right size (prune never reads packs it keeps or deletes), and `SNAPSHOTS` snapshots
//! whose real, encrypted manifests reference overlapping windows of the chunks, so some
//! packs are fully used, some partly and some not at all.
//!
//! ```text
//! prune_scale DIR CHUNKS [SNAPSHOTS]      (password: "bench")
//! ```
//! Then `VMVAULT_PASSWORD=bench /usr/bin/time -v vmvault -r DIR prune --max-unused 100`
//! measures marking and sweeping (benches/prune.sh does this for several sizes).

use std::sync::Arc;
use vmvault_chunker::{ChunkId, ChunkerParams};
use vmvault_repo::backend::{Backend, FileKind, LocalBackend};
use vmvault_repo::format::index::{encode_index, IndexPack};
use vmvault_repo::format::keyfile::KdfParams;
use vmvault_repo::format::manifest::{encode_page, EntryKind, ManifestEntry, ManifestRoot};
use vmvault_repo::format::pack::{PackEntry, COMPRESSION_NONE, KIND_DATA, KIND_TREE};
use vmvault_repo::format::sealed::{KIND_INDEX, KIND_SNAPSHOT};
use vmvault_repo::format::snapshot::{Snapshot, SnapshotDisk};
use vmvault_repo::pack_writer::PackWriter;
use vmvault_repo::repository::object_name;
use vmvault_repo::Repository;

const CHUNK_LEN: u32 = 128 << 10;
const PER_PACK: u64 = 128;
const PER_INDEX: u64 = 100_000;

fn die(msg: String) -> ! {
    eprintln!("prune_scale: {msg}");
    std::process::exit(1)
}

/// A deterministic fake chunk id for chunk number `n`.
fn id(n: u64) -> ChunkId {
    ChunkId(*blake3::hash(&n.to_le_bytes()).as_bytes())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        die("usage: prune_scale DIR CHUNKS [SNAPSHOTS]".into());
    }
    let dir = std::path::PathBuf::from(&args[1]);
    let chunks: u64 = args[2].parse().unwrap_or_else(|_| die("bad CHUNKS".into()));
    let snapshots: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(4);
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(&dir));
    let repo = Repository::init(
        backend.clone(),
        b"bench",
        KdfParams::default_v1(),
        ChunkerParams::default_v1(),
    )
    .unwrap_or_else(|e| die(format!("init: {e}")));
    let keys = repo.keys();
    let put_sealed = |kind: FileKind, kind_byte: u8, plain: &[u8]| -> String {
        let sealed = keys
            .seal(kind_byte, plain, true)
            .unwrap_or_else(|e| die(format!("seal: {e}")));
        let name = object_name(&sealed);
        backend
            .put(kind, &name, &sealed)
            .unwrap_or_else(|e| die(format!("put: {e}")));
        name
    };

    // Data packs: fake ids and offsets, sparse files of the right size.
    let mut batch: Vec<IndexPack> = Vec::new();
    let mut in_batch = 0u64;
    let mut n = 0u64;
    while n < chunks {
        let count = PER_PACK.min(chunks - n);
        let stored = u64::from(CHUNK_LEN) / 2 + 16;
        let entries: Vec<PackEntry> = (0..count)
            .map(|i| {
                PackEntry::single(
                    id(n + i),
                    40 + i * stored,
                    stored as u32,
                    CHUNK_LEN,
                    KIND_DATA,
                    1,
                )
            })
            .collect();
        let size = 40 + count * stored + 4096;
        let name = *blake3::hash(format!("pack {n}").as_bytes()).as_bytes();
        let hex_name = hex_encode(&name);
        let path = dir.join("data").join(&hex_name[..2]).join(&hex_name);
        let f = std::fs::File::create(&path).unwrap_or_else(|e| die(format!("pack: {e}")));
        f.set_len(size)
            .unwrap_or_else(|e| die(format!("pack: {e}")));
        batch.push(IndexPack {
            name,
            salt: [0; 32],
            size,
            entries,
        });
        in_batch += count;
        n += count;
        if in_batch >= PER_INDEX {
            put_sealed(FileKind::Index, KIND_INDEX, &encode_index(&batch, 2));
            batch.clear();
            in_batch = 0;
        }
    }
    if !batch.is_empty() {
        put_sealed(FileKind::Index, KIND_INDEX, &encode_index(&batch, 2));
    }

    // Snapshots: snapshot k uses chunks [k*chunks/8, k*chunks/8 + chunks/2).
    let page_chunks = repo.config().manifest_page_size / u64::from(CHUNK_LEN);
    let mut tree = PackWriter::new(keys, 2, 64 << 20).unwrap_or_else(|e| die(e.to_string()));
    let add_tree = |tree: &mut PackWriter, plain: &[u8]| -> ChunkId {
        let cid = keys.chunk_id(plain);
        tree.add(cid, KIND_TREE, COMPRESSION_NONE, plain.len() as u32, plain);
        cid
    };
    let mut snaps = Vec::new();
    for k in 0..snapshots {
        let first = k * chunks / 8;
        let count = (chunks / 2).min(chunks - first);
        let mut pages = Vec::new();
        let mut c = 0;
        while c < count {
            let m = page_chunks.min(count - c);
            let entries: Vec<ManifestEntry> = (0..m)
                .map(|i| ManifestEntry {
                    len: CHUNK_LEN,
                    kind: EntryKind::Data(id(first + c + i)),
                })
                .collect();
            pages.push(add_tree(&mut tree, &encode_page(&entries)));
            c += m;
        }
        let disk_size = count * u64::from(CHUNK_LEN);
        let root = ManifestRoot {
            disk_size,
            page_size: repo.config().manifest_page_size,
            pages,
        };
        let root_id = add_tree(&mut tree, &root.encode());
        snaps.push(Snapshot {
            version: 1,
            vm: format!("vm{}", k % 2),
            host: "bench".into(),
            time: format!("2026-11-{:02}T00:00:00.000000Z", 1 + k % 28),
            tags: Vec::new(),
            parent: None,
            program: "prune_scale".into(),
            disks: vec![SnapshotDisk {
                name: "disk".into(),
                size: disk_size,
                source: String::new(),
                source_format: "raw".into(),
                manifest: root_id.to_hex(),
                allocated_bytes: disk_size,
                zero_bytes: 0,
                data_chunks: count,
            }],
            configs: Vec::new(),
            catalogs: Vec::new(),
        });
    }
    let p = tree.finish();
    let pack_name = hex_encode(&p.name);
    backend
        .put(FileKind::Pack, &pack_name, &p.bytes)
        .unwrap_or_else(|e| die(format!("tree pack: {e}")));
    put_sealed(FileKind::Index, KIND_INDEX, &encode_index(&[p.index], 2));
    for s in &snaps {
        put_sealed(FileKind::Snapshot, KIND_SNAPSHOT, &s.encode());
    }
    println!(
        "{{\"chunks\":{chunks},\"packs\":{},\"snapshots\":{snapshots}}}",
        chunks.div_ceil(PER_PACK)
    );
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
