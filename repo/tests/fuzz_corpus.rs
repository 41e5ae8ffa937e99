//! Replays the committed fuzz corpora on stable Rust.
//!
//! For every target in [`vmvault_repo::format::fuzzing::TARGETS`], every file in
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes through the same function
//! the libFuzzer target in `fuzz/fuzz_targets/<target>.rs` calls, so an input that once
//! crashed a decoder stays fixed. A target without a non-empty corpus fails the test.
//!
//! The seeds are real encodings written by this crate's own encoders; regenerate them with
//! `cargo test --release -p vmvault-repo --test fuzz_corpus -- --ignored write_seed_corpus`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use vmvault_repo::format::fuzzing;

// Lets every target check its peak allocation against the input's length, as under
// libFuzzer.
#[global_allocator]
static ALLOC: fuzzing::CountingAlloc = fuzzing::CountingAlloc;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The regular files of `dir`, sorted; `None` if the directory does not exist.
fn files_in(dir: &Path) -> Option<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).ok()?;
    let mut files: Vec<PathBuf> = rd
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Some(files)
}

/// Feeds every corpus and regression input of `target` through its fuzz function.
fn replay(target: &str) {
    let corpus = fuzz_dir().join("corpus").join(target);
    let mut inputs = files_in(&corpus)
        .unwrap_or_else(|| panic!("corpus directory {} is missing", corpus.display()));
    assert!(
        !inputs.is_empty(),
        "corpus directory {} is empty",
        corpus.display()
    );
    inputs.extend(files_in(&fuzz_dir().join("regressions").join(target)).unwrap_or_default());
    assert!(fuzzing::counting_active(), "allocation counting is off");
    let mut failed = Vec::new();
    for path in &inputs {
        let data = std::fs::read(path).expect("readable corpus file");
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            assert!(fuzzing::run(target, &data), "unknown target {target}");
        }));
        if outcome.is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs fail:\n{}",
        failed.len(),
        inputs.len(),
        failed.join("\n")
    );
}

macro_rules! replay_tests {
    ($($target:ident),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                replay(stringify!($target));
            }
        )*

        /// The per-target tests above, the fuzzing module's list and the libFuzzer targets
        /// name the same set, so a new target cannot go unreplayed.
        #[test]
        fn every_target_is_replayed() {
            let mut here = vec![$(stringify!($target)),*];
            here.sort_unstable();
            let mut listed = fuzzing::TARGETS.to_vec();
            listed.sort_unstable();
            assert_eq!(here, listed, "replay_tests! and fuzzing::TARGETS differ");
            let mut bins: Vec<String> = files_in(&fuzz_dir().join("fuzz_targets"))
                .expect("fuzz/fuzz_targets exists")
                .iter()
                .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
                .collect();
            bins.sort_unstable();
            assert_eq!(bins, listed, "fuzz/fuzz_targets and fuzzing::TARGETS differ");
            for dir in ["corpus", "regressions"] {
                for p in files_in(&fuzz_dir().join(dir)).unwrap_or_default() {
                    panic!("stray file {} outside a target directory", p.display());
                }
                let Ok(rd) = std::fs::read_dir(fuzz_dir().join(dir)) else { continue };
                for e in rd {
                    let name = e.expect("readable entry").file_name();
                    let name = name.to_string_lossy();
                    assert!(listed.contains(&name.as_ref()), "fuzz/{dir}/{name} is no target");
                }
            }
        }
    };
}

replay_tests!(
    pack_header,
    index,
    manifest_page,
    manifest_root,
    snapshot,
    keyfile,
    config,
    sealed_header,
    lock,
    qcow2,
    vmdk,
    vhd,
    xva,
    catalog,
    partitions,
    lvm,
    ext4,
    ntfs,
    fat,
    guest_disk,
);

/// Writes the seed corpus from real encodings. Run by hand; `cargo fuzz cmin` may later
/// replace the seeds by a minimised corpus that still covers them.
#[test]
#[ignore = "writes fuzz/corpus; run by hand to regenerate the seeds"]
fn write_seed_corpus() {
    seeds::write_all(&fuzz_dir().join("corpus"));
}

mod seeds {
    use std::path::Path;
    use vmvault_chunker::{ChunkId, ChunkerParams};
    use vmvault_repo::crypto::MasterKeys;
    use vmvault_repo::format::config::Config;
    use vmvault_repo::format::index::{encode_index, IndexPack};
    use vmvault_repo::format::keyfile::KdfParams;
    use vmvault_repo::format::lock::LockInfo;
    use vmvault_repo::format::manifest::{encode_page, EntryKind, ManifestEntry, ManifestRoot};
    use vmvault_repo::format::pack::{
        locate_header, COMPRESSION_NONE, COMPRESSION_ZSTD, KIND_DATA, KIND_TREE,
    };
    use vmvault_repo::format::sealed::{KIND_CONFIG, KIND_INDEX, KIND_LOCK, KIND_SNAPSHOT};
    use vmvault_repo::format::snapshot::{Snapshot, SnapshotDisk};
    use vmvault_repo::pack_writer::{FinishedPack, PackWriter};

    const TIME: &str = "2026-11-23T18:40:02.123456Z";

    fn put(root: &Path, target: &str, name: &str, bytes: &[u8]) {
        assert!(bytes.len() < 64 << 10, "seed {target}/{name} is too large");
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    /// A pack of `blobs` (kind, compress, plaintext), as the writer stores it.
    fn pack(keys: &MasterKeys, blobs: &[(u8, bool, Vec<u8>)]) -> FinishedPack {
        let mut w = PackWriter::new(keys, 2, 4096).unwrap();
        for (kind, compress, plain) in blobs {
            let id = keys.chunk_id(plain);
            let z = zstd::bulk::compress(plain, 3).unwrap();
            if *compress && z.len() < plain.len() {
                w.add(id, *kind, COMPRESSION_ZSTD, plain.len() as u32, &z);
            } else {
                w.add(id, *kind, COMPRESSION_NONE, plain.len() as u32, plain);
            }
        }
        w.finish()
    }

    /// A pack with one blob holding `chunks` (compressed together) and one tree blob, as a
    /// version 2 writer stores a segment's new chunks.
    fn grouped_pack(keys: &MasterKeys, chunks: &[Vec<u8>]) -> FinishedPack {
        let mut w = PackWriter::new(keys, 2, 4096).unwrap();
        let plain: Vec<u8> = chunks.concat();
        let list: Vec<(ChunkId, u32)> = chunks
            .iter()
            .map(|c| (keys.chunk_id(c), c.len() as u32))
            .collect();
        let z = zstd::bulk::compress(&plain, 3).unwrap();
        w.add_blob(KIND_DATA, COMPRESSION_ZSTD, &z, &list);
        let tree = vec![2u8; 40];
        w.add(keys.chunk_id(&tree), KIND_TREE, COMPRESSION_NONE, 40, &tree);
        w.finish()
    }

    /// The pack as `check` sees it after decrypting the header in place.
    fn decrypted_header(keys: &MasterKeys, p: &FinishedPack) -> Vec<u8> {
        let mut bytes = p.bytes.clone();
        let n = bytes.len();
        let (start, len) = locate_header(n as u64, &bytes[n - 4..]).unwrap();
        let (start, len) = (start as usize, len as usize);
        let plain_len = keys
            .pack_cipher(&p.index.salt)
            .decrypt_header(&p.bytes[..40], &mut bytes[start..start + len])
            .unwrap();
        assert_eq!(plain_len, len - 16);
        bytes
    }

    fn text(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| b"vmvault seed "[i % 13] ^ seed).collect()
    }

    fn id(b: u8) -> ChunkId {
        ChunkId([b; 32])
    }

    /// Every seed must be accepted by its decoder, or it would only exercise error paths.
    fn check_accepted(root: &Path) {
        use vmvault_repo::format::{
            config::Config, index::decode_index, keyfile::KeyFile, manifest::decode_page,
            pack::decode_header, sealed::SealedHeader,
        };
        for target in vmvault_repo::format::fuzzing::TARGETS {
            for p in super::files_in(&root.join(target)).unwrap() {
                // Inputs cargo-fuzz added (named by their SHA-1) need not decode.
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.len() == 40 && name.bytes().all(|c| c.is_ascii_hexdigit()) {
                    continue;
                }
                let b = std::fs::read(&p).unwrap();
                let ok = match *target {
                    "pack_header" => {
                        let n = b.len();
                        let (start, len) = locate_header(n as u64, &b[n - 4..]).unwrap();
                        let (s, l) = (start as usize, len as usize);
                        let version = if b[7] == 2 { 2 } else { 1 };
                        decode_header(&b[s..s + l - 16], start, version).is_ok()
                    }
                    "index" => decode_index(&b).is_ok(),
                    "manifest_page" => {
                        let len = u64::from_le_bytes(b[..8].try_into().unwrap());
                        decode_page(&b[8..], len).is_ok()
                    }
                    "manifest_root" => ManifestRoot::decode(&b).is_ok(),
                    "snapshot" => Snapshot::decode(&b).is_ok(),
                    "keyfile" => KeyFile::decode(&b).is_ok(),
                    "config" => Config::decode(&b).is_ok(),
                    "sealed_header" => SealedHeader::decode(&b).is_ok(),
                    "lock" => LockInfo::decode(&b).is_ok(),
                    // Targets of other parsers (disk formats, guest file systems) have
                    // hand-made or fuzzer-found inputs this writer does not produce.
                    _ => true,
                };
                assert!(ok, "seed {} does not decode", p.display());
            }
        }
    }

    pub fn write_all(root: &Path) {
        write_seeds(root);
        check_accepted(root);
    }

    fn write_seeds(root: &Path) {
        let keys = MasterKeys::generate().unwrap();

        // Packs, with their headers decrypted.
        let packs = [
            ("empty", pack(&keys, &[])),
            (
                "grouped",
                grouped_pack(&keys, &[text(300, 3), vec![9u8; 500], text(77, 4)]),
            ),
            (
                "one-data-raw",
                pack(&keys, &[(KIND_DATA, false, text(64, 0))]),
            ),
            (
                "one-data-zstd",
                pack(&keys, &[(KIND_DATA, true, vec![7u8; 2000])]),
            ),
            (
                "mixed",
                pack(
                    &keys,
                    &[
                        (KIND_DATA, false, text(100, 1)),
                        (KIND_DATA, true, text(600, 2)),
                        (KIND_TREE, true, vec![0u8; 300]),
                        (KIND_TREE, false, vec![1, 1, 0, 0, 0, 0, 0, 0]),
                        (KIND_DATA, false, Vec::new()),
                    ],
                ),
            ),
            (
                "many-small",
                pack(
                    &keys,
                    &(0..12u8)
                        .map(|i| (i % 2, i % 3 == 0, text(usize::from(i) * 7 + 1, i)))
                        .collect::<Vec<_>>(),
                ),
            ),
        ];
        for (name, p) in &packs {
            put(root, "pack_header", name, &decrypted_header(&keys, p));
        }

        // Index files listing those packs.
        let listed: Vec<IndexPack> = packs.iter().map(|(_, p)| p.index.clone()).collect();
        put(root, "index", "empty", &encode_index(&[], 2));
        put(root, "index", "one-pack", &encode_index(&listed[1..2], 2));
        put(root, "index", "empty-pack", &encode_index(&listed[..1], 2));
        put(root, "index", "all-packs", &encode_index(&listed, 2));

        // Manifest pages: u64le page length || page.
        let data = |len, b| ManifestEntry {
            len,
            kind: EntryKind::Data(id(b)),
        };
        let zero = |len| ManifestEntry {
            len,
            kind: EntryKind::Zero,
        };
        let unalloc = |len| ManifestEntry {
            len,
            kind: EntryKind::Unallocated,
        };
        let pages: [(&str, Vec<ManifestEntry>); 6] = [
            ("empty", vec![]),
            ("one-data", vec![data(131072, 1)]),
            ("all-zero-1g", vec![zero(1 << 30)]),
            ("unallocated-1g", vec![unalloc(1 << 30)]),
            (
                "mixed",
                vec![
                    data(40000, 2),
                    zero(65536),
                    data(524288, 3),
                    unalloc(1 << 20),
                    data(32768, 4),
                    zero(4 << 20),
                    data(16 << 20, 5),
                ],
            ),
            (
                "last-page-short",
                vec![data(100000, 6), unalloc(2 << 20), data(4096, 7)],
            ),
        ];
        for (name, entries) in &pages {
            let len: u64 = entries.iter().map(|e| u64::from(e.len)).sum();
            let mut b = len.to_le_bytes().to_vec();
            b.extend_from_slice(&encode_page(entries));
            put(root, "manifest_page", name, &b);
        }

        // Manifest roots.
        let roots = [
            ("empty-disk", 0, 1 << 30, 0),
            ("one-page", 1 << 30, 1 << 30, 1),
            ("short-last-page", (3 << 30) + 4096, 1 << 30, 4),
            ("small-pages", 20 << 20, 4 << 20, 5),
            ("tiny-disk", 512, 1 << 30, 1),
        ];
        for (name, disk_size, page_size, n) in roots {
            let root_ = ManifestRoot {
                disk_size,
                page_size,
                pages: (0..n).map(|i| id(i as u8 + 10)).collect(),
            };
            put(root, "manifest_root", name, &root_.encode());
        }

        // Snapshots.
        let disk = |name: &str, size, b| SnapshotDisk {
            name: name.into(),
            size,
            source: format!("/var/lib/libvirt/images/{name}.img"),
            source_format: "raw".into(),
            manifest: id(b).to_hex(),
            allocated_bytes: size / 4,
            zero_bytes: size / 16,
            data_chunks: size / (128 << 10),
        };
        let snap = |disks, tags: &[&str], parent: Option<&str>| Snapshot {
            version: 1,
            vm: "web01".into(),
            host: "kvm3".into(),
            time: TIME.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            parent: parent.map(str::to_string),
            program: "vmvault 0.1.0".into(),
            disks,
            configs: Vec::new(),
            catalogs: Vec::new(),
        };
        let parent = hex::encode([0xabu8; 32]);
        put(
            root,
            "snapshot",
            "no-disks",
            &snap(vec![], &[], None).encode(),
        );
        put(
            root,
            "snapshot",
            "one-disk",
            &snap(vec![disk("web01-disk0", 20 << 30, 1)], &["nightly"], None).encode(),
        );
        put(
            root,
            "snapshot",
            "two-disks-parent",
            &snap(
                vec![
                    disk("web01-disk0", 20 << 30, 1),
                    disk("web01-disk1", 4096, 2),
                ],
                &["nightly", "pre-upgrade"],
                Some(&parent),
            )
            .encode(),
        );

        // Key files.
        let cheap = KdfParams {
            memory_kib: 8,
            iterations: 1,
            parallelism: 1,
            ..KdfParams::default_v1()
        };
        let k = keys
            .wrap(b"seed", cheap, TIME.into(), "backup01".into())
            .unwrap();
        put(root, "keyfile", "cheap-kdf", &k.encode());
        let mut default_kdf = k.clone();
        default_kdf.kdf = KdfParams {
            salt: k.kdf.salt.clone(),
            ..KdfParams::default_v1()
        };
        put(root, "keyfile", "default-kdf", &default_kdf.encode());
        let mut max_kdf = k.clone();
        max_kdf.kdf.memory_kib = 4 << 20;
        max_kdf.kdf.iterations = 64;
        max_kdf.kdf.parallelism = 64;
        put(root, "keyfile", "limits-kdf", &max_kdf.encode());

        // Configs.
        let id_hex = hex::encode([0x5au8; 16]);
        let cfg =
            |avg| Config::new_current(id_hex.clone(), TIME.into(), &ChunkerParams::with_avg(avg));
        put(
            root,
            "config",
            "default",
            &Config::new_current(id_hex.clone(), TIME.into(), &ChunkerParams::default_v1())
                .encode(),
        );
        put(root, "config", "avg-16k", &cfg(16 << 10).encode());
        put(root, "config", "avg-1m", &cfg(1 << 20).encode());
        let mut small = cfg(4096);
        small.pack_size_target = 1 << 20;
        small.manifest_page_size = 4 << 20;
        small.compression.level = -7;
        small.chunker.params.normalization = 3;
        put(root, "config", "small-pages", &small.encode());

        // Sealed objects of every kind, plain and compressed.
        let lock = LockInfo {
            version: 1,
            exclusive: false,
            operation: "backup".into(),
            host: "kvm3".into(),
            pid: 4242,
            time: TIME.into(),
        };
        let snap_bytes = snap(vec![disk("web01-disk0", 20 << 30, 1)], &["nightly"], None).encode();
        let index_bytes = encode_index(&listed[1..2], 2);
        let sealed: [(&str, u8, &[u8]); 4] = [
            ("config", KIND_CONFIG, &cfg(128 << 10).encode()),
            ("index", KIND_INDEX, &index_bytes),
            ("snapshot", KIND_SNAPSHOT, &snap_bytes),
            ("lock", KIND_LOCK, &lock.encode()),
        ];
        for (name, kind, plain) in sealed {
            put(
                root,
                "sealed_header",
                &format!("{name}-plain"),
                &keys.seal(kind, plain, false).unwrap(),
            );
            put(
                root,
                "sealed_header",
                &format!("{name}-zstd"),
                &keys.seal(kind, plain, true).unwrap(),
            );
        }
        put(
            root,
            "sealed_header",
            "empty-plaintext",
            &keys.seal(KIND_LOCK, b"", false).unwrap(),
        );

        // Locks.
        put(root, "lock", "shared-backup", &lock.encode());
        let exclusive = LockInfo {
            exclusive: true,
            operation: "prune".into(),
            pid: u32::MAX,
            ..lock.clone()
        };
        put(root, "lock", "exclusive-prune", &exclusive.encode());
        let check = LockInfo {
            operation: "check".into(),
            host: "backup01.example.org".into(),
            pid: 1,
            ..lock
        };
        put(root, "lock", "shared-check", &check.encode());
    }
}
