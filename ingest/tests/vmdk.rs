//! VMDK reader and writer against images made by qemu-img (every subformat qemu
//! writes, split extents, a delta chain), our own writer's output checked by qemu-img,
//! and damaged images.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use vmvault_ingest::vmdk::{create_stream_writer, create_writer, VmdkSubformat};
use vmvault_ingest::{open_disk, DiskSource, ExtentKind, IngestError, OpenOptions};

const MIB: u64 = 1 << 20;
const GRAIN: u64 = 65536;

/// A deterministic pseudo-random byte stream (xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes a sparse reference raw disk of `size` bytes at `path`: random data regions
/// (one crossing a 32 MiB grain-table span, one a single sector, one at the very end),
/// a region of explicit zeros (allocated zeros in the raw file), and holes. Returns the
/// (offset, bytes) written.
fn write_reference(path: &Path, size: u64, extra: &[(u64, usize)]) -> Vec<(u64, Vec<u8>)> {
    let mut regions: Vec<(u64, usize)> = vec![
        (4096, 200_000),
        (32 * MIB - 70_000, 140_000),
        (5 * MIB + 512, 512),
        (7 * MIB + 123, 10_000),
        (size - 3000, 3000),
    ];
    regions.extend_from_slice(extra);
    let f = fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut out = Vec::new();
    let mut f = f;
    // Explicit zeros: allocated in the raw file, all zero.
    if 9 * MIB + 300_000 <= size {
        f.seek(SeekFrom::Start(9 * MIB)).unwrap();
        f.write_all(&vec![0u8; 300_000]).unwrap();
    }
    for (i, &(at, len)) in regions.iter().enumerate() {
        if at + len as u64 <= size {
            let bytes = noise(i as u64 + 1, len);
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&bytes).unwrap();
            out.push((at, bytes));
        }
    }
    out
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is installed");
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Per 64 KiB granule of `[0, size)`, whether `qemu-img map` says it holds data.
fn qemu_data_map(img: &Path, size: u64) -> Vec<bool> {
    let out = qemu_img(&["map", "-f", "vmdk", "--output=json", p(img)]);
    let text = String::from_utf8(out.stdout).unwrap();
    let mut map = vec![false; size.div_ceil(GRAIN) as usize];
    let num = |entry: &str, key: &str| -> u64 {
        let at = entry.find(&format!("\"{key}\": ")).unwrap() + key.len() + 4;
        entry[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    for entry in text.split('{').skip(1) {
        if entry.contains("\"data\": true") {
            let (start, len) = (num(entry, "start"), num(entry, "length"));
            for g in start / GRAIN..(start + len).div_ceil(GRAIN) {
                map[g as usize] = true;
            }
        }
    }
    map
}

/// Walks the whole disk through its extents (checking their contract), reads every
/// Data extent and compares it with `raw_path`, and checks that every byte outside
/// Data extents is zero in the raw file. Returns, per 64 KiB granule, whether a Data
/// extent touches it. Works in windows, so multi-GiB disks need little memory.
fn compare_with_raw(disk: &mut dyn DiskSource, raw_path: &Path) -> Vec<bool> {
    let size = disk.size();
    let mut raw = fs::File::open(raw_path).unwrap();
    assert_eq!(size, raw.metadata().unwrap().len(), "disk size");
    let mut data = vec![false; size.div_ceil(GRAIN) as usize];
    let step = 4 * MIB + 4096;
    let mut pos = 0;
    let mut got = Vec::new();
    let mut want = Vec::new();
    while pos < size {
        let end = (pos + step).min(size);
        let extents = disk.extents(pos, step).unwrap();
        let mut at = pos;
        for e in &extents {
            assert_eq!(e.offset, at, "extents are contiguous");
            assert!(e.len > 0, "no empty extent");
            at = e.end();
            want.resize(e.len as usize, 0);
            raw.seek(SeekFrom::Start(e.offset)).unwrap();
            raw.read_exact(&mut want).unwrap();
            if e.kind == ExtentKind::Data {
                got.resize(e.len as usize, 0xAA);
                disk.read_at(e.offset, &mut got).unwrap();
                assert!(got == want, "data at {}+{} differs", e.offset, e.len);
                for g in e.offset / GRAIN..e.end().div_ceil(GRAIN) {
                    data[g as usize] = true;
                }
            } else {
                assert!(
                    want.iter().all(|&b| b == 0),
                    "{:?} extent at {}+{} hides data",
                    e.kind,
                    e.offset,
                    e.len
                );
            }
        }
        assert_eq!(at, end, "extents cover the range");
        pos = end;
    }
    // Random-access reads, unaligned and crossing grains, agree with the raw file.
    for (off, len) in [(0u64, 4096usize), (4000, 70_000), (2 * MIB - 7, 20)] {
        if off + len as u64 <= size {
            let mut buf = vec![0xAAu8; len];
            disk.read_at(off, &mut buf).unwrap();
            let mut w = vec![0u8; len];
            raw.seek(SeekFrom::Start(off)).unwrap();
            raw.read_exact(&mut w).unwrap();
            assert_eq!(buf, w, "read_at({off}, {len})");
        }
    }
    data
}

fn open(path: &Path) -> Box<dyn DiskSource> {
    open_disk(path, &OpenOptions::default()).unwrap()
}

fn convert_to_vmdk(raw: &Path, img: &Path, subformat: &str) {
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        &format!("subformat={subformat}"),
        p(raw),
        p(img),
    ]);
}

/// Converts a reference disk with qemu-img to `subformat`, reads it back through the
/// descriptor / .vmdk path, and compares bytes and (for sparse formats) allocation
/// with qemu's view.
fn check_qemu_subformat(size: u64, subformat: &str, format_name: &str, sparse: bool) {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("ref.raw");
    let img = dir.path().join("disk.vmdk");
    write_reference(&raw, size, &[]);
    convert_to_vmdk(&raw, &img, subformat);
    let mut disk = open(&img);
    assert_eq!(disk.format_name(), format_name);
    let data = compare_with_raw(disk.as_mut(), &raw);
    if sparse {
        assert_eq!(data, qemu_data_map(&img, size), "allocation map as qemu's");
        assert!(data.iter().any(|d| !d), "some grains unallocated");
    }
}

#[test]
fn qemu_monolithic_sparse_reads_like_raw() {
    check_qemu_subformat(
        40 * MIB,
        "monolithicSparse",
        "vmdk (monolithicSparse)",
        true,
    );
}

#[test]
fn qemu_stream_optimized_reads_like_raw() {
    check_qemu_subformat(40 * MIB, "streamOptimized", "vmdk (streamOptimized)", true);
}

#[test]
fn qemu_monolithic_flat_reads_like_raw() {
    check_qemu_subformat(40 * MIB, "monolithicFlat", "vmdk (monolithicFlat)", false);
}

#[test]
fn qemu_two_gb_sparse_and_flat_read_like_raw() {
    // Small: a single extent file.
    check_qemu_subformat(
        40 * MIB,
        "twoGbMaxExtentSparse",
        "vmdk (twoGbMaxExtentSparse)",
        true,
    );
    check_qemu_subformat(
        40 * MIB,
        "twoGbMaxExtentFlat",
        "vmdk (twoGbMaxExtentFlat)",
        false,
    );
}

#[test]
fn qemu_two_gb_split_extents_read_like_raw() {
    // Just over 2 GiB: two extent files, with data crossing from the first into the
    // second. The raw file is sparse, so this stays cheap on disk.
    let size = 2048 * MIB + 3 * MIB;
    for (subformat, name, sparse) in [
        ("twoGbMaxExtentSparse", "vmdk (twoGbMaxExtentSparse)", true),
        ("twoGbMaxExtentFlat", "vmdk (twoGbMaxExtentFlat)", false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("ref.raw");
        let img = dir.path().join("big.vmdk");
        write_reference(&raw, size, &[(2048 * MIB - 100_000, 300_000)]);
        convert_to_vmdk(&raw, &img, subformat);
        let extents = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                let n = e.as_ref().unwrap().file_name();
                let n = n.to_string_lossy().into_owned();
                n.starts_with("big-") && n.ends_with(".vmdk")
            })
            .count();
        assert_eq!(
            extents, 2,
            "{subformat}: qemu split the disk in two extents"
        );
        let mut disk = open(&img);
        assert_eq!(disk.format_name(), name);
        let data = compare_with_raw(disk.as_mut(), &raw);
        if sparse {
            assert_eq!(data, qemu_data_map(&img, size), "allocation map as qemu's");
        }
    }
}

#[test]
fn qemu_odd_size_reads_like_raw() {
    // Not a whole number of grains.
    check_qemu_subformat(
        5 * MIB + 512 * 3,
        "monolithicSparse",
        "vmdk (monolithicSparse)",
        true,
    );
    check_qemu_subformat(
        5 * MIB + 512 * 3,
        "streamOptimized",
        "vmdk (streamOptimized)",
        true,
    );
}

fn qemu_io(img: &Path, cmd: &str) {
    let out = Command::new("qemu-io")
        .args(["-f", "vmdk", "-c", cmd, p(img)])
        .output()
        .expect("qemu-io is installed");
    assert!(
        out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("failed"),
        "qemu-io {cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn qemu_delta_chain_reads_parent_for_unallocated_grains() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("ref.raw");
    let base = dir.path().join("base.vmdk");
    let mid = dir.path().join("mid.vmdk");
    let top = dir.path().join("top.vmdk");
    let flat = dir.path().join("top.raw");
    let size = 40 * MIB;
    write_reference(&raw, size, &[]);
    convert_to_vmdk(&raw, &base, "monolithicSparse");
    qemu_img(&[
        "create",
        "-f",
        "vmdk",
        "-b",
        "base.vmdk",
        "-F",
        "vmdk",
        p(&mid),
    ]);
    // Overwrite part of the parent's data, write a new region, and zero a region the
    // parent has data in (a delta grain of zeros must hide the parent's data).
    qemu_io(&mid, "write -P 0x55 4096 70000");
    qemu_io(&mid, "write -P 0x66 20M 65536");
    qemu_io(&mid, "write -z 7M 1M");
    qemu_img(&[
        "create",
        "-f",
        "vmdk",
        "-b",
        "mid.vmdk",
        "-F",
        "vmdk",
        p(&top),
    ]);
    qemu_io(&top, "write -P 0x77 33M 4096");
    qemu_img(&["convert", "-f", "vmdk", "-O", "raw", p(&top), p(&flat)]);

    let mut disk = open(&top);
    assert_eq!(disk.format_name(), "vmdk (monolithicSparse)");
    compare_with_raw(disk.as_mut(), &flat);
    // The hole between regions is unallocated through the whole chain.
    let e = disk.extents(15 * MIB, MIB).unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].kind, ExtentKind::Unallocated);

    // A missing parent is an error naming it, not a silently zero disk.
    fs::remove_file(&base).unwrap();
    let err = open_disk(&top, &OpenOptions::default()).err().unwrap();
    assert!(err.to_string().contains("base.vmdk"), "{err}");
}

/// Feeds `raw` to a writer as the backup pipeline would: in order, in chunks that are
/// not grain aligned, holes skipped, some all-zero chunks passed through.
fn feed(w: &mut dyn vmvault_ingest::ImageWriter, raw: &[u8]) {
    let chunk = 40_000;
    for (i, c) in raw.chunks(chunk).enumerate() {
        let zero = c.iter().all(|&b| b == 0);
        if !zero || i % 3 == 0 {
            w.write_data((i * chunk) as u64, c).unwrap();
        }
    }
}

fn check_written(img: &Path, raw: &Path, format_name: &str) {
    let out = Command::new("qemu-img")
        .args(["check", "-f", "vmdk", p(img)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    qemu_img(&["compare", "-f", "vmdk", "-F", "raw", p(img), p(raw)]);
    let mut disk = open(img);
    assert_eq!(disk.format_name(), format_name);
    let data = compare_with_raw(disk.as_mut(), raw);
    assert_eq!(
        data,
        qemu_data_map(img, disk.size()),
        "allocation as qemu's"
    );
    assert!(data.iter().any(|d| !d), "zero grains left unallocated");
}

#[test]
fn writer_round_trips_both_subformats() {
    for size in [40 * MIB, 5 * MIB + 1536] {
        for (sub, name) in [
            (VmdkSubformat::MonolithicSparse, "vmdk (monolithicSparse)"),
            (VmdkSubformat::StreamOptimized, "vmdk (streamOptimized)"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let raw_path = dir.path().join("ref.raw");
            let img = dir.path().join("out.vmdk");
            write_reference(&raw_path, size, &[]);
            let raw = fs::read(&raw_path).unwrap();
            let file = fs::File::create(&img).unwrap();
            let mut w = create_writer(file, p(&img), size, sub).unwrap();
            feed(w.as_mut(), &raw);
            let len = w.finish().unwrap();
            assert_eq!(len, fs::metadata(&img).unwrap().len());
            assert!(len < size / 2, "{sub:?}: {len} bytes for a sparse disk");
            check_written(&img, &raw_path, name);
        }
    }
}

/// A `Write` that cannot seek, like standard output.
struct Pipe(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Pipe {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn stream_writer_needs_no_seek() {
    let dir = tempfile::tempdir().unwrap();
    let raw_path = dir.path().join("ref.raw");
    let img = dir.path().join("piped.vmdk");
    let size = 40 * MIB;
    write_reference(&raw_path, size, &[]);
    let raw = fs::read(&raw_path).unwrap();
    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut w = create_stream_writer(Pipe(buf.clone()), "piped.vmdk", size).unwrap();
    feed(w.as_mut(), &raw);
    let len = w.finish().unwrap();
    let bytes = buf.lock().unwrap().clone();
    assert_eq!(len, bytes.len() as u64);
    fs::write(&img, &bytes).unwrap();
    check_written(&img, &raw_path, "vmdk (streamOptimized)");
    // An empty disk and a disk never written to are valid images too.
    for size in [0u64, 3 * MIB] {
        let img = dir.path().join(format!("empty{size}.vmdk"));
        let mut w = create_writer(
            fs::File::create(&img).unwrap(),
            p(&img),
            size,
            VmdkSubformat::StreamOptimized,
        )
        .unwrap();
        if size > 0 {
            w.write_data(0, &[0u8; 4096]).unwrap();
        }
        w.finish().unwrap();
        if size > 0 {
            // qemu reads a sparse file of capacity 0 as a descriptor and refuses it.
            qemu_img(&["check", "-f", "vmdk", p(&img)]);
        }
        let mut disk = open(&img);
        assert_eq!(disk.size(), size);
        if size > 0 {
            let e = disk.extents(0, size).unwrap();
            assert_eq!(e.len(), 1);
            assert_eq!(e[0].kind, ExtentKind::Unallocated);
        }
    }
}

#[test]
fn subformat_names_parse() {
    assert_eq!(
        "monolithicSparse".parse::<VmdkSubformat>(),
        Ok(VmdkSubformat::MonolithicSparse)
    );
    assert_eq!(
        "streamOptimized".parse::<VmdkSubformat>(),
        Ok(VmdkSubformat::StreamOptimized)
    );
    assert!("monolithicFlat".parse::<VmdkSubformat>().is_err());
}

// ---- damaged images ----

/// A small sparse or stream image made by qemu-img, as bytes, in `dir`.
fn small_image(dir: &Path, subformat: &str) -> (PathBuf, Vec<u8>) {
    let raw = dir.join(format!("{subformat}.raw"));
    let img = dir.join(format!("{subformat}.vmdk"));
    write_reference(&raw, 8 * MIB, &[]);
    convert_to_vmdk(&raw, &img, subformat);
    let bytes = fs::read(&img).unwrap();
    (img, bytes)
}

/// Opens `bytes` (written to `path`) and walks the whole disk; the first error.
fn open_and_walk(path: &Path, bytes: &[u8]) -> Result<(), IngestError> {
    fs::write(path, bytes).unwrap();
    let mut disk = open_disk(path, &OpenOptions::default())?;
    let size = disk.size();
    let mut pos = 0;
    while pos < size {
        for e in disk.extents(pos, 4 * MIB)? {
            if e.kind == ExtentKind::Data {
                let mut buf = vec![0u8; e.len as usize];
                disk.read_at(e.offset, &mut buf)?;
            }
        }
        pos += 4 * MIB;
    }
    Ok(())
}

fn le64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn truncated_sparse_extent_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["monolithicSparse", "streamOptimized"] {
        let (img, bytes) = small_image(dir.path(), sub);
        for keep in [100, 600, bytes.len() / 3, bytes.len() - 70_000] {
            let err = open_and_walk(&img, &bytes[..keep]).err();
            let err = err.unwrap_or_else(|| panic!("{sub} cut to {keep} bytes opened"));
            let msg = err.to_string();
            assert!(msg.contains(p(&img)), "{sub}/{keep}: names the file: {msg}");
            assert!(
                matches!(err, IngestError::Corrupt { .. }),
                "{sub}/{keep}: {msg}"
            );
        }
    }
}

#[test]
fn grain_directory_past_eof_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (img, mut bytes) = small_image(dir.path(), "monolithicSparse");
    assert_ne!(le64_at(&bytes, 56), 0);
    bytes[56..64].copy_from_slice(&(1u64 << 30).to_le_bytes());
    let err = open_and_walk(&img, &bytes).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, IngestError::Corrupt { offset, .. } if offset == (1u64 << 30) * 512),
        "{msg}"
    );
    assert!(
        msg.contains("VMDK") && msg.contains("grain directory"),
        "{msg}"
    );
}

#[test]
fn damaged_grain_table_entries_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (img, bytes) = small_image(dir.path(), "monolithicSparse");
    let gd = le64_at(&bytes, 56) as usize * 512;
    let gt = u32::from_le_bytes(bytes[gd..gd + 4].try_into().unwrap()) as usize * 512;
    // A grain table pointing past the end of the file.
    let mut b = bytes.clone();
    b[gd..gd + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = open_and_walk(&img, &b).unwrap_err();
    assert!(matches!(err, IngestError::Corrupt { .. }), "{err}");
    // A grain pointing past the end of the file (grain 0 holds data).
    let mut b = bytes.clone();
    b[gt..gt + 4].copy_from_slice(&0x00ff_ffffu32.to_le_bytes());
    let err = open_and_walk(&img, &b).unwrap_err();
    assert!(matches!(err, IngestError::Corrupt { .. }), "{err}");
}

#[test]
fn damaged_compressed_grain_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (img, bytes) = small_image(dir.path(), "streamOptimized");
    let gd = le64_at(&bytes, 56) as usize * 512;
    let gt = u32::from_le_bytes(bytes[gd..gd + 4].try_into().unwrap()) as usize * 512;
    let grain = u32::from_le_bytes(bytes[gt..gt + 4].try_into().unwrap()) as usize * 512;
    // Garbage instead of deflate data.
    let mut b = bytes.clone();
    b[grain + 12..grain + 40].fill(0x5a);
    let err = open_and_walk(&img, &b).unwrap_err();
    assert!(matches!(err, IngestError::Corrupt { .. }), "{err}");
    // A grain marker claiming a huge size.
    let mut b = bytes.clone();
    b[grain + 8..grain + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = open_and_walk(&img, &b).unwrap_err();
    assert!(matches!(err, IngestError::Corrupt { .. }), "{err}");
    // A grain marker for another sector.
    let mut b = bytes.clone();
    b[grain..grain + 8].copy_from_slice(&999u64.to_le_bytes());
    let err = open_and_walk(&img, &b).unwrap_err();
    assert!(matches!(err, IngestError::Corrupt { .. }), "{err}");
}

#[test]
fn descriptor_naming_a_missing_extent_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("ref.raw");
    let img = dir.path().join("flat.vmdk");
    write_reference(&raw, 8 * MIB, &[]);
    convert_to_vmdk(&raw, &img, "monolithicFlat");
    fs::remove_file(dir.path().join("flat-flat.vmdk")).unwrap();
    let err = open_disk(&img, &OpenOptions::default()).err().unwrap();
    assert!(err.to_string().contains("flat-flat.vmdk"), "{err}");

    // A flat extent file shorter than the descriptor says.
    convert_to_vmdk(&raw, &img, "monolithicFlat");
    let f = fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("flat-flat.vmdk"))
        .unwrap();
    f.set_len(4 * MIB).unwrap();
    let err = open_and_walk(&img, &fs::read(&img).unwrap()).unwrap_err();
    assert!(err.to_string().contains("flat-flat.vmdk"), "{err}");
}

#[test]
fn malformed_descriptors_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.vmdk");
    fs::write(dir.path().join("x.bin"), vec![1u8; 4096]).unwrap();
    let head = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n";
    for body in [
        "createType=\"monolithicFlat\"\nRW 8 FLAT x.bin 0\n",
        "createType=\"monolithicFlat\"\nRW many FLAT \"x.bin\" 0\n",
        "createType=\"monolithicFlat\"\n",
        "RW 8 FLAT \"x.bin\" 0\n",
        "createType=\"monolithicFlat\"\nRW 18446744073709551615 FLAT \"x.bin\" 0\n",
    ] {
        let text = format!("{head}{body}");
        let r = open_and_walk(&img, text.as_bytes());
        assert!(r.is_err(), "{body:?} opened");
    }
    // A good one, with a ZERO extent after the flat one.
    let text = format!("{head}createType=\"monolithicFlat\"\nRW 8 FLAT \"x.bin\" 0\nRW 8 ZERO\n");
    fs::write(&img, &text).unwrap();
    let mut disk = open(&img);
    assert_eq!(disk.size(), 8192);
    let mut buf = vec![9u8; 8192];
    disk.read_at(0, &mut buf).unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 1) && buf[4096..].iter().all(|&b| b == 0));
}

#[test]
fn esxi_deltas_are_refused_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.vmdk");
    let mut cowd = vec![0u8; 2048];
    cowd[..4].copy_from_slice(b"COWD");
    cowd[4..8].copy_from_slice(&1u32.to_le_bytes());
    fs::write(&img, &cowd).unwrap();
    let err = open_disk(&img, &OpenOptions::default()).err().unwrap();
    assert!(
        matches!(err, IngestError::Unimplemented { .. })
            || matches!(err, IngestError::Corrupt { .. }),
        "{err}"
    );
    let text = "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\n\
                createType=\"seSparse\"\nRW 2048 SESPARSE \"d-sesparse.vmdk\"\n";
    fs::write(dir.path().join("d-sesparse.vmdk"), vec![0u8; 4096]).unwrap();
    fs::write(&img, text).unwrap();
    let err = open_disk(&img, &OpenOptions::default()).err().unwrap();
    assert!(matches!(err, IngestError::Unimplemented { .. }), "{err}");
    assert!(err.to_string().contains("seSparse"), "{err}");
}

#[test]
fn random_damage_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["monolithicSparse", "streamOptimized"] {
        let (img, bytes) = small_image(dir.path(), sub);
        let r = noise(99, 4096);
        for k in 0..200usize {
            let mut b = bytes.clone();
            // Damage the metadata-rich start and tail of the file.
            let span = if k % 2 == 0 { 16_384 } else { bytes.len() };
            let at = (usize::from(r[k]) << 8 | usize::from(r[k + 1])) * 7 % span;
            b[at] ^= r[k + 2] | 1;
            let _ = open_and_walk(&img, &b);
        }
    }
}

#[test]
fn sparse_extent_smaller_than_its_descriptor_line_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("ref.raw");
    let img = dir.path().join("s.vmdk");
    write_reference(&raw, 8 * MIB, &[]);
    convert_to_vmdk(&raw, &img, "twoGbMaxExtentSparse");
    // The descriptor claims 16 MiB; the extent file holds 8 MiB.
    let text = fs::read_to_string(&img).unwrap();
    let text = text.replace("RW 16384 SPARSE", "RW 32768 SPARSE");
    assert!(text.contains("RW 32768 SPARSE"), "{text}");
    let err = open_and_walk(&img, text.as_bytes()).unwrap_err();
    assert!(matches!(err, IngestError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("s-s001.vmdk"), "{err}");
}

/// Writes the fuzz seeds of `fuzz/corpus/vmdk/`: small images of each layout the
/// reader handles. Run by hand: `cargo test -p vmvault-ingest --test vmdk -- --ignored`.
#[test]
#[ignore = "writes fuzz/corpus/vmdk; run by hand to regenerate the seeds"]
fn write_fuzz_seeds() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/vmdk");
    let dir = tempfile::tempdir().unwrap();
    let size = 2 * MIB;
    // Compressible data in a few grains, so compressed seeds stay small.
    let mut raw = vec![0u8; size as usize];
    for (i, &(at, len)) in [(0usize, 1000usize), (70_000, 3000), (1 << 20, 512)]
        .iter()
        .enumerate()
    {
        for (j, b) in raw[at..at + len].iter_mut().enumerate() {
            *b = b"abcdefgh \n"[(j * 7 + i) % 10];
        }
    }
    let raw_path = dir.path().join("seed.raw");
    fs::write(&raw_path, &raw).unwrap();
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();

    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut w = create_stream_writer(Pipe(buf.clone()), "seed.vmdk", size).unwrap();
    feed(w.as_mut(), &raw);
    w.finish().unwrap();
    seeds.push(("stream-vmware-layout", buf.lock().unwrap().clone()));

    let img = dir.path().join("sparse.vmdk");
    let mut w = create_writer(
        fs::File::create(&img).unwrap(),
        "sparse.vmdk",
        size,
        VmdkSubformat::MonolithicSparse,
    )
    .unwrap();
    w.write_data(1 << 20, &raw[1 << 20..(1 << 20) + 512])
        .unwrap();
    w.finish().unwrap();
    seeds.push(("monolithic-sparse", fs::read(&img).unwrap()));

    let img = dir.path().join("qstream.vmdk");
    convert_to_vmdk(&raw_path, &img, "streamOptimized");
    seeds.push(("stream-qemu-layout", fs::read(&img).unwrap()));

    let head = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n";
    seeds.push((
        "descriptor-flat",
        format!(
            "{head}createType=\"monolithicFlat\"\n\n# Extent description\n\
             RW 2048 ZERO\nRW 2048 FLAT \"disk-flat.vmdk\" 0\n\nddb.adapterType = \"ide\"\n"
        )
        .into_bytes(),
    ));
    seeds.push((
        "descriptor-zero",
        format!("{head}createType=\"monolithicFlat\"\nRW 4096 ZERO\nRDONLY 8 ZERO\n").into_bytes(),
    ));
    for (name, bytes) in seeds {
        fs::write(corpus.join(format!("seed-{name}")), bytes).unwrap();
    }
}

#[test]
fn fuzz_seeds_open_in_memory() {
    use vmvault_ingest::open::open_file_as;
    use vmvault_ingest::{ImageFormat, MemFile, NoFiles};
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/vmdk");
    let mut opened = 0;
    for entry in fs::read_dir(corpus).unwrap() {
        let path = entry.unwrap().path();
        let bytes = fs::read(&path).unwrap();
        let file = Box::new(MemFile::new(bytes, "seed"));
        match open_file_as(file, ImageFormat::Vmdk, &mut NoFiles) {
            Ok(mut disk) => {
                vmvault_ingest::fuzzing::walk(disk.as_mut());
                opened += 1;
            }
            // Only the descriptor naming an extent file needs files.
            Err(e) => assert!(p(&path).ends_with("seed-descriptor-flat"), "{path:?}: {e}"),
        }
    }
    assert!(opened >= 4, "{opened} seeds open");
}
