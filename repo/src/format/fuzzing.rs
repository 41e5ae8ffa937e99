//! Fuzz entry points for every decoder in [`crate::format`].
//!
//! One function per fuzz target. Each runs the decoder(s) on untrusted bytes and, when a
//! decode succeeds, checks the invariants the decoder promises and a round-trip property
//! (decode → encode → decode yields the same value; where the encoding is canonical, the
//! re-encoding is byte-identical). A violated property panics, which the fuzzer reports
//! as a crash; a decode error is a normal outcome.
//!
//! `fuzz/fuzz_targets/*.rs` call these under libFuzzer, and `repo/tests/fuzz_corpus.rs`
//! replays the committed corpora through the same functions on stable Rust.
//!
//! Both install [`CountingAlloc`] as their global allocator; every target then also checks
//! that decoding `n` bytes never has more than [`ALLOC_FACTOR`]` × n + `[`ALLOC_SLACK`]
//! bytes allocated at once, which libFuzzer's absolute `-malloc_limit_mb` cannot see on
//! small inputs. Without that allocator the check is skipped ([`counting_active`]).

use super::config::Config;
use super::index::{decode_index, encode_index, INDEX_MAGIC_V2};
use super::keyfile::KeyFile;
use super::lock::LockInfo;
use super::manifest::{decode_page, encode_page, EntryKind, ManifestRoot};
use super::pack::{
    decode_header, decode_prefix, encode_header, entry_len, locate_header, PackEntry,
    MAX_BLOB_PLAIN, MAX_HEADER_LEN, PACK_MAGIC, PACK_PREFIX_LEN, PACK_TRAILER_LEN,
};
use super::sealed::{SealedHeader, SEALED_HEADER_LEN};
use super::snapshot::Snapshot;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use vmvault_chunker::MAX_CHUNK;

/// Length of an AES-GCM tag, which ends every blob and the pack header.
const TAG_LEN: usize = 16;

/// Names of all targets, in the order of the functions below; the corpus replay test
/// iterates over this list so that a new target cannot be left out of CI.
pub const TARGETS: &[&str] = &[
    "pack_header",
    "index",
    "manifest_page",
    "manifest_root",
    "snapshot",
    "keyfile",
    "config",
    "sealed_header",
    "lock",
    "qcow2",
    "vmdk",
    "vhd",
    "xva",
    "catalog",
    "partitions",
    "lvm",
    "ext4",
    "ntfs",
    "fat",
    "guest_disk",
];

/// Runs the target called `name` on `data`; `false` if there is no such target.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "pack_header" => pack_header(data),
        "index" => index(data),
        "manifest_page" => manifest_page(data),
        "manifest_root" => manifest_root(data),
        "snapshot" => snapshot(data),
        "keyfile" => keyfile(data),
        "config" => config(data),
        "sealed_header" => sealed_header(data),
        "lock" => lock(data),
        "qcow2" => image(data, vmvault_ingest::fuzzing::qcow2),
        "vmdk" => image(data, vmvault_ingest::fuzzing::vmdk),
        "vhd" => image(data, vmvault_ingest::fuzzing::vhd),
        "xva" => image(data, vmvault_ingest::xva::xva),
        "catalog" => catalog(data),
        "partitions" => image(data, vmvault_ingest::guest::fuzz_walk::partitions),
        "lvm" => image(data, vmvault_ingest::guest::fuzz_walk::lvm),
        "ext4" => image(data, vmvault_ingest::guest::fuzz_fs::ext4),
        "ntfs" => image(data, vmvault_ingest::guest::fuzz_fs::ntfs),
        "fat" => image(data, vmvault_ingest::guest::fuzz_fs::fat),
        "guest_disk" => image(data, vmvault_ingest::guest::fuzz_fs::disk),
        _ => return false,
    }
    true
}

/// Allowed peak of live heap bytes per input byte while a target runs.
pub const ALLOC_FACTOR: usize = 32;
/// Allowed peak of live heap bytes independent of the input's length (error messages,
/// serde_json's scratch space, the harness's own re-encodings of tiny inputs).
pub const ALLOC_SLACK: usize = 64 << 10;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc(n: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(n);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn note_free(n: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(n)));
}

/// The system allocator, counting the bytes each thread has live and their peak.
/// Install it with `#[global_allocator]` in a fuzz target or test binary.
pub struct CountingAlloc;

// SAFETY: every call is forwarded unchanged to `System`; the bookkeeping only touches
// const-initialised thread-locals without destructors, which never allocate.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note_alloc(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note_alloc(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) };
        note_free(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as a copy: old and new block are both live for a moment.
            note_alloc(new_size);
            note_free(layout.size());
        }
        p
    }
}

/// Whether [`CountingAlloc`] is this binary's global allocator.
pub fn counting_active() -> bool {
    PEAK.set(0);
    LIVE.set(0);
    drop(std::hint::black_box(vec![0u8; 64]));
    PEAK.get() >= 64
}

/// Runs an image reader's fuzz function (`vmvault_ingest::fuzzing`) on `data`, checking
/// its peak of live heap bytes against the image readers' larger fixed allowance.
pub fn image(data: &[u8], f: fn(&[u8])) {
    bounded_with(data, vmvault_ingest::fuzzing::ALLOC_SLACK, f);
}

/// Runs `f` (a decode of `data`) and checks its peak of live heap bytes.
fn bounded(data: &[u8], f: impl FnOnce(&[u8])) {
    bounded_with(data, ALLOC_SLACK, f);
}

fn bounded_with(data: &[u8], slack: usize, f: impl FnOnce(&[u8])) {
    LIVE.set(0);
    PEAK.set(0);
    f(data);
    let peak = PEAK.get();
    let limit = data
        .len()
        .saturating_mul(ALLOC_FACTOR)
        .saturating_add(slack);
    assert!(
        peak <= limit,
        "decoding {} bytes had {peak} bytes allocated at once (limit {limit})",
        data.len()
    );
}

/// Checks what `decode_header` promises about entries of a header at `header_offset`:
/// blobs tile `[40, header_offset)` and the chunks of each blob tile its plaintext.
fn check_tiling(entries: &[PackEntry], header_offset: u64) {
    let mut blob_end = PACK_PREFIX_LEN;
    let mut chunk_end = 0u64;
    let mut current: Option<PackEntry> = None;
    for e in entries {
        check_entry(e);
        match current {
            Some(c) if c.offset == e.offset => {
                assert!(c.same_blob(e), "entries of one blob disagree");
                assert_eq!(u64::from(e.chunk_offset), chunk_end, "chunks do not tile");
            }
            _ => {
                if let Some(c) = current {
                    assert_eq!(chunk_end, u64::from(c.blob_len), "blob not filled");
                }
                assert_eq!(e.offset, blob_end, "pack entries do not tile");
                assert_eq!(e.chunk_offset, 0, "a blob's first chunk must start it");
                blob_end = e.offset + u64::from(e.stored_len);
                current = Some(*e);
            }
        }
        chunk_end = u64::from(e.chunk_offset) + u64::from(e.raw_len);
    }
    if let Some(c) = current {
        assert_eq!(chunk_end, u64::from(c.blob_len), "blob not filled");
    }
    assert_eq!(
        blob_end, header_offset,
        "pack entries do not end at the header"
    );
}

/// Per-entry invariants every decoded [`PackEntry`] satisfies.
fn check_entry(e: &PackEntry) {
    assert!(e.kind <= 1 && e.compression <= 1);
    assert!(e.stored_len >= TAG_LEN as u32);
    assert!(e.raw_len <= MAX_CHUNK);
    assert!(e.blob_len <= MAX_BLOB_PLAIN);
    assert!(u64::from(e.chunk_offset) + u64::from(e.raw_len) <= u64::from(e.blob_len));
    assert!(e.offset >= PACK_PREFIX_LEN);
    assert!(e.offset.checked_add(u64::from(e.stored_len)).is_some());
}

/// A whole pack whose header has already been decrypted, laid out as on disk:
/// `prefix(40) || blobs || header plaintext || tag(16) || u32 L`.
///
/// Runs the reader's path of `check`: [`decode_prefix`] on the first 40 bytes,
/// [`locate_header`] on the last 4 with the input's length as the pack size, then
/// [`decode_header`] on the header plaintext (the located header minus its tag) with the
/// header offset the trailer gave. Decoded entries must tile `[40, header offset)` and
/// re-encode to a header that decodes to the same entries.
pub fn pack_header(data: &[u8]) {
    bounded(data, pack_header_inner);
}

fn pack_header_inner(data: &[u8]) {
    // The version the reader takes from the prefix; a header behind a bad prefix is
    // still decoded (as version 1), to reach the header parser with any bytes.
    let version = match decode_prefix(data) {
        Ok((salt, version)) => {
            assert_eq!(&data[..7], PACK_MAGIC);
            assert_eq!(data[7], version);
            assert_eq!(&data[8..40], &salt);
            version
        }
        Err(_) => 1,
    };
    let pack_size = data.len() as u64;
    let trailer = &data[data.len().saturating_sub(PACK_TRAILER_LEN as usize)..];
    let Ok((start, len)) = locate_header(pack_size, trailer) else {
        return;
    };
    assert!(start >= PACK_PREFIX_LEN);
    assert!((TAG_LEN as u32 + 4..=MAX_HEADER_LEN).contains(&len));
    assert_eq!(start + u64::from(len) + PACK_TRAILER_LEN, pack_size);
    let header = &data[start as usize..start as usize + len as usize];
    let plain = &header[..header.len() - TAG_LEN];
    let Ok(entries) = decode_header(plain, start, version) else {
        return;
    };
    check_tiling(&entries, start);
    for e in &entries {
        // Every blob lies inside the bytes before the header.
        assert!(e.offset + u64::from(e.stored_len) <= start);
    }
    let again = encode_header(&entries, version);
    assert_eq!(again.len(), plain.len());
    assert_eq!(again.len(), 4 + entries.len() * entry_len(version));
    let redecoded =
        decode_header(&again, start, version).expect("re-encoded pack header must decode");
    assert_eq!(redecoded, entries);
}

/// An index file's plaintext: [`decode_index`]; every blob must lie inside its pack and
/// the re-encoding must decode to the same packs.
pub fn index(data: &[u8]) {
    bounded(data, index_inner);
}

fn index_inner(data: &[u8]) {
    let Ok(packs) = decode_index(data) else {
        return;
    };
    for p in &packs {
        for e in &p.entries {
            check_entry(e);
            let end = e.offset.checked_add(u64::from(e.stored_len));
            assert!(end.is_some_and(|end| end <= p.size), "blob beyond its pack");
        }
    }
    let version = if data.starts_with(INDEX_MAGIC_V2) {
        2
    } else {
        1
    };
    let again = encode_index(&packs, version);
    assert_eq!(again.len(), data.len());
    let redecoded = decode_index(&again).expect("re-encoded index must decode");
    assert_eq!(redecoded, packs);
}

/// `u64le page_len || page plaintext`: [`decode_page`]. The entries must cover exactly
/// `page_len` bytes, and the page encoding is canonical, so re-encoding gives the input.
pub fn manifest_page(data: &[u8]) {
    bounded(data, manifest_page_inner);
}

fn manifest_page_inner(data: &[u8]) {
    let Some((len, plain)) = data.split_first_chunk::<8>() else {
        return;
    };
    let page_len = u64::from_le_bytes(*len);
    let Ok(entries) = decode_page(plain, page_len) else {
        return;
    };
    let mut total: u64 = 0;
    for e in &entries {
        assert!(e.len > 0);
        if let EntryKind::Data(_) = e.kind {
            assert!(e.len <= MAX_CHUNK);
        }
        total = total
            .checked_add(u64::from(e.len))
            .expect("page length overflows");
    }
    assert_eq!(total, page_len);
    let again = encode_page(&entries);
    assert_eq!(again, plain, "manifest page re-encodes differently");
    let redecoded = decode_page(&again, page_len).expect("re-encoded page must decode");
    assert_eq!(redecoded, entries);
}

/// A manifest root's plaintext: [`ManifestRoot::decode`]. The pages must cover the disk
/// exactly, and the root encoding is canonical, so re-encoding gives the input.
pub fn manifest_root(data: &[u8]) {
    bounded(data, manifest_root_inner);
}

fn manifest_root_inner(data: &[u8]) {
    let Ok(root) = ManifestRoot::decode(data) else {
        return;
    };
    assert!(root.page_size > 0);
    let mut covered: u64 = 0;
    for i in 0..root.pages.len() {
        let len = root.page_len(i);
        assert!(
            len > 0 && len <= root.page_size,
            "empty or oversized page {i}"
        );
        covered = covered.checked_add(len).expect("pages overflow the disk");
    }
    assert_eq!(covered, root.disk_size, "pages do not cover the disk");
    let again = root.encode();
    assert_eq!(again, data, "manifest root re-encodes differently");
    assert_eq!(ManifestRoot::decode(&again).as_ref(), Ok(&root));
}

/// A snapshot's JSON: [`Snapshot::decode`]; decoded disks have unique, well-formed names
/// and 32-byte manifest ids, and the re-encoding decodes to the same snapshot.
pub fn snapshot(data: &[u8]) {
    bounded(data, snapshot_inner);
}

fn snapshot_inner(data: &[u8]) {
    let Ok(snap) = Snapshot::decode(data) else {
        return;
    };
    assert!((1..=3).contains(&snap.version));
    let mut names = std::collections::HashSet::new();
    for d in &snap.disks {
        assert!(!d.name.is_empty() && !d.name.contains('/'));
        assert!(names.insert(d.name.as_str()), "duplicate disk name");
        assert!(hex::decode(&d.manifest).is_ok_and(|b| b.len() == 32));
    }
    let again = snap.encode();
    assert_eq!(Snapshot::decode(&again).as_ref(), Ok(&snap));
}

/// A key file's JSON: [`KeyFile::decode`]; decoded KDF parameters are within the limits
/// and the re-encoding decodes to the same key file.
pub fn keyfile(data: &[u8]) {
    bounded(data, keyfile_inner);
}

fn keyfile_inner(data: &[u8]) {
    let Ok(key) = KeyFile::decode(data) else {
        return;
    };
    assert_eq!(key.version, 1);
    assert_eq!(key.kdf.validate(), Ok(()));
    assert!(key.kdf.memory_kib <= 4 * 1024 * 1024);
    assert!(key.kdf.iterations <= 64 && key.kdf.parallelism <= 64);
    let again = key.encode();
    assert_eq!(KeyFile::decode(&again).as_ref(), Ok(&key));
}

/// A config's JSON: [`Config::decode`]; a decoded config passes validation (chunker
/// parameters included) and the re-encoding decodes to the same config.
pub fn config(data: &[u8]) {
    bounded(data, config_inner);
}

fn config_inner(data: &[u8]) {
    let Ok(cfg) = Config::decode(data) else {
        return;
    };
    assert_eq!(cfg.validate(), Ok(()));
    assert!(cfg.chunker_params().validate().is_ok());
    assert_eq!(cfg.manifest_page_size % cfg.chunker.params.segment_size, 0);
    let again = cfg.encode();
    assert_eq!(Config::decode(&again).as_ref(), Ok(&cfg));
}

/// The first bytes of a sealed object: [`SealedHeader::decode`]; re-encoding the header
/// reproduces the input's first 40 bytes (the reserved byte 7 is written as 0).
pub fn sealed_header(data: &[u8]) {
    bounded(data, sealed_header_inner);
}

fn sealed_header_inner(data: &[u8]) {
    let Ok(h) = SealedHeader::decode(data) else {
        return;
    };
    assert!(data.len() >= SEALED_HEADER_LEN + TAG_LEN);
    let again = h.encode();
    assert_eq!(&again[..7], &data[..7]);
    assert_eq!(again[7], 0);
    assert_eq!(&again[8..], &data[8..SEALED_HEADER_LEN]);
    let mut object = again.to_vec();
    object.extend_from_slice(&data[SEALED_HEADER_LEN..]);
    assert_eq!(SealedHeader::decode(&object), Ok(h));
}

/// A lock's JSON: [`LockInfo::decode`]; the re-encoding decodes to the same lock.
pub fn lock(data: &[u8]) {
    bounded(data, lock_inner);
}

fn lock_inner(data: &[u8]) {
    let Ok(l) = LockInfo::decode(data) else {
        return;
    };
    let again = l.encode();
    assert_eq!(LockInfo::decode(&again).as_ref(), Ok(&l));
}

/// A catalog stream: [`CatalogDecoder`] until the end or the first error; decoded paths
/// are valid catalog paths, and the decoded entries re-encode to a stream that decodes to
/// the same entries.
pub fn catalog(data: &[u8]) {
    bounded(data, catalog_inner);
}

fn catalog_inner(data: &[u8]) {
    use super::catalog::{valid_path, CatalogDecoder, CatalogEncoder};
    let Ok(dec) = CatalogDecoder::new(data) else {
        return;
    };
    let mut enc = CatalogEncoder::new();
    let mut entries = Vec::new();
    for e in dec {
        let Ok(e) = e else { break };
        assert!(valid_path(&e.path));
        assert!(e.meta.mode <= 0o7777 && e.meta.mtime_nsec < 1_000_000_000);
        assert!(enc.push(&e.path, &e.meta));
        entries.push(e);
    }
    let again = enc.finish();
    let back: Vec<_> = CatalogDecoder::new(&again[..])
        .map(|d| d.map_while(Result::ok).collect())
        .unwrap_or_default();
    assert_eq!(back, entries);
}
