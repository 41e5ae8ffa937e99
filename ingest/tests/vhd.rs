//! VHD ("vpc") reader and writer against images made by qemu-img, hand-built
//! differencing disks, and damaged images.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use vmvault_ingest::vhd::create_writer;
use vmvault_ingest::{open_disk, DiskSource, ExtentKind, OpenOptions};

const MIB: usize = 1 << 20;

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

/// A reference disk of `size` bytes: random data regions (one straddling a 2 MiB block
/// boundary, one a single sector), regions of explicit zeros, and holes.
fn reference(size: usize) -> Vec<u8> {
    let mut d = vec![0u8; size];
    let mut put = |at: usize, len: usize, seed: u64| {
        if at < size {
            let len = len.min(size - at);
            d[at..at + len].copy_from_slice(&noise(seed, len));
        }
    };
    put(4096, 200_000, 1);
    put(2 * MIB - 70_000, 140_000, 2);
    put(5 * MIB + 512, 512, 3);
    put(7 * MIB + 123, 10_000, 4);
    put(size.saturating_sub(3000), 3000, 5);
    d
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is installed");
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The virtual size `qemu-img info -f vpc` reports.
fn qemu_size(img: &Path) -> u64 {
    let out = qemu_img(&["info", "-f", "vpc", p(img)]);
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("virtual size:"))
        .unwrap();
    let inner = line.rsplit('(').next().unwrap();
    inner.split(' ').next().unwrap().parse().unwrap()
}

/// Per 64 KiB granule, whether `qemu-img map` says it holds data.
fn qemu_data_map(img: &Path, size: u64) -> Vec<bool> {
    let out = qemu_img(&["map", "-f", "vpc", "--output=json", p(img)]);
    let text = String::from_utf8(out.stdout).unwrap();
    let mut map = vec![false; size.div_ceil(65536) as usize];
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
            for g in start / 65536..(start + len).div_ceil(65536) {
                map[g as usize] = true;
            }
        }
    }
    map
}

/// Reads the whole disk through its extents, checking their contract, and returns the
/// bytes and, per 64 KiB granule, whether any Data extent touches it.
fn read_all(disk: &mut dyn DiskSource) -> (Vec<u8>, Vec<bool>) {
    let size = disk.size();
    let mut out = vec![0u8; size as usize];
    let mut data = vec![false; size.div_ceil(65536) as usize];
    let mut pos = 0;
    let step = 3 * MIB as u64 + 4096;
    while pos < size {
        let extents = disk.extents(pos, step).unwrap();
        let end = (pos + step).min(size);
        let mut at = pos;
        for e in &extents {
            assert_eq!(e.offset, at, "extents are contiguous");
            assert!(e.len > 0);
            at = e.end();
            if e.kind == ExtentKind::Data {
                disk.read_at(e.offset, &mut out[e.offset as usize..e.end() as usize])
                    .unwrap();
                for g in e.offset / 65536..e.end().div_ceil(65536) {
                    data[g as usize] = true;
                }
            }
        }
        assert_eq!(at, end, "extents cover the range");
        pos = end;
    }
    // Random-access reads agree with the extent walk, including unaligned ones.
    for (off, len) in [(0u64, 4096usize), (4000, 70_000), (2 * MIB as u64 - 7, 20)] {
        if off + len as u64 <= size {
            let mut buf = vec![0xAAu8; len];
            disk.read_at(off, &mut buf).unwrap();
            assert_eq!(buf, out[off as usize..off as usize + len]);
        }
    }
    (out, data)
}

/// `raw` padded (or cut) to `size`.
fn expected(raw: &[u8], size: u64) -> Vec<u8> {
    let mut v = raw.to_vec();
    v.resize(size as usize, 0);
    v
}

fn open(path: &Path) -> Box<dyn DiskSource> {
    open_disk(path, &OpenOptions::default()).unwrap()
}

/// Converts `raw` with qemu-img to vpc with `opts`, reads it back and compares every
/// byte and the allocation map with qemu's view.
fn check_qemu_image(size: usize, opts: &str, format_name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let raw_path = dir.path().join("ref.raw");
    let img = dir.path().join("disk.vhd");
    let raw = reference(size);
    fs::write(&raw_path, &raw).unwrap();
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vpc",
        "-o",
        opts,
        p(&raw_path),
        p(&img),
    ]);
    let qsize = qemu_size(&img);
    let mut disk = open(&img);
    assert_eq!(disk.format_name(), format_name);
    assert_eq!(disk.size(), qsize, "size as qemu-img info reports it");
    let (bytes, data) = read_all(disk.as_mut());
    assert!(
        bytes == expected(&raw, qsize),
        "contents differ from the raw disk"
    );
    if format_name == "vhd (dynamic)" {
        assert_eq!(data, qemu_data_map(&img, qsize), "allocation map as qemu's");
        if size >= 12 * MIB {
            assert!(data.iter().any(|d| !d), "some blocks unallocated");
        }
    }
}

#[test]
fn qemu_dynamic_reads_like_raw() {
    check_qemu_image(12 * MIB, "subformat=dynamic", "vhd (dynamic)");
}

#[test]
fn qemu_dynamic_force_size_reads_like_raw() {
    check_qemu_image(12 * MIB, "subformat=dynamic,force_size=on", "vhd (dynamic)");
}

#[test]
fn qemu_fixed_reads_like_raw() {
    check_qemu_image(12 * MIB, "subformat=fixed", "vhd (fixed)");
    check_qemu_image(12 * MIB, "subformat=fixed,force_size=on", "vhd (fixed)");
}

#[test]
fn qemu_odd_size_reads_like_raw() {
    // Not a multiple of a sector nor of the CHS geometry: qemu rounds the disk up.
    check_qemu_image(5_000_000, "subformat=dynamic", "vhd (dynamic)");
    check_qemu_image(5_000_000, "subformat=fixed", "vhd (fixed)");
    check_qemu_image(5_000_000, "subformat=fixed,force_size=on", "vhd (fixed)");
}

/// Writes `raw` with our writer as a pipeline would: data chunks in order, holes
/// skipped, some all-zero chunks passed through.
fn write_vhd(raw: &[u8], path: &Path, fixed: bool) -> u64 {
    let file = fs::File::create(path).unwrap();
    let mut w = create_writer(file, p(path), raw.len() as u64, fixed).unwrap();
    let chunk = 40_000;
    for (i, c) in raw.chunks(chunk).enumerate() {
        let zero = c.iter().all(|&b| b == 0);
        if !zero || i % 3 == 0 {
            w.write_data((i * chunk) as u64, c).unwrap();
        }
    }
    w.finish().unwrap()
}

fn check_writer(size: usize, fixed: bool) {
    let dir = tempfile::tempdir().unwrap();
    let raw_path = dir.path().join("ref.raw");
    let img = dir.path().join("out.vhd");
    let raw = reference(size);
    fs::write(&raw_path, &raw).unwrap();
    let written = write_vhd(&raw, &img, fixed);
    assert_eq!(written, fs::metadata(&img).unwrap().len());
    let rounded = (size as u64).div_ceil(512) * 512;
    assert_eq!(qemu_size(&img), rounded, "qemu takes the footer's size");
    qemu_img(&["compare", "-f", "vpc", "-F", "raw", p(&img), p(&raw_path)]);
    let mut disk = open(&img);
    assert_eq!(disk.size(), rounded);
    let (bytes, data) = read_all(disk.as_mut());
    assert!(bytes == expected(&raw, rounded));
    if !fixed {
        assert_eq!(data, qemu_data_map(&img, rounded));
        if size >= 12 * MIB {
            // Only blocks with data are allocated: block 4 of 6 holds none.
            assert!(written < size as u64, "dynamic output is sparse");
        }
    }
}

#[test]
fn writer_dynamic_round_trips() {
    check_writer(12 * MIB, false);
}

#[test]
fn writer_fixed_round_trips() {
    check_writer(12 * MIB, true);
}

#[test]
fn writer_odd_size_round_trips() {
    check_writer(5_000_000, false);
    check_writer(5_000_000, true);
    check_writer(3 * MIB + 4096, false);
}

#[test]
fn writer_empty_disk() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("empty.vhd");
    let w = create_writer(
        fs::File::create(&img).unwrap(),
        "empty",
        4 * MIB as u64,
        false,
    )
    .unwrap();
    w.finish().unwrap();
    assert_eq!(qemu_size(&img), 4 * MIB as u64);
    let mut disk = open(&img);
    let e = disk.extents(0, u64::MAX).unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].kind, ExtentKind::Unallocated);
}

// ---- hand-built differencing disks -------------------------------------------------

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn vhd_checksum(b: &[u8], at: usize) -> u32 {
    let mut sum = 0u32;
    for (i, &x) in b.iter().enumerate() {
        if !(at..at + 4).contains(&i) {
            sum = sum.wrapping_add(u32::from(x));
        }
    }
    !sum
}

fn fix_checksum(b: &mut [u8], at: usize) {
    let c = vhd_checksum(b, at);
    b[at..at + 4].copy_from_slice(&c.to_be_bytes());
}

/// Layout facts of an image from our dynamic writer.
struct Dyn {
    bytes: Vec<u8>,
}

impl Dyn {
    fn entries(&self) -> usize {
        be32(&self.bytes, 512 + 28) as usize
    }
    fn bat(&self, i: usize) -> u32 {
        be32(&self.bytes, 1536 + 4 * i)
    }
    fn footer_at(&self) -> usize {
        self.bytes.len() - 512
    }
    /// Applies `f` to both footer copies and fixes their checksums.
    fn edit_footers(&mut self, f: impl Fn(&mut [u8])) {
        for at in [0, self.footer_at()] {
            let footer = &mut self.bytes[at..at + 512];
            f(footer);
            fix_checksum(footer, 64);
        }
    }
    fn edit_header(&mut self, f: impl Fn(&mut [u8])) {
        let h = &mut self.bytes[512..1536];
        f(h);
        fix_checksum(h, 36);
    }
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

/// Turns our dynamic image `child` into a differencing disk of `parent_id` whose
/// parent locators name `relative` (W2ru) and `absolute` (W2ku), and clears the
/// bitmap bits of the second half of every 64 KiB of each allocated block.
fn make_differencing(child: &mut Dyn, parent_id: [u8; 16], relative: &str, absolute: &str) {
    let footer_at = child.footer_at();
    let footer = child.bytes[footer_at..].to_vec();
    child.bytes.truncate(footer_at);
    let mut locators = Vec::new();
    for (code, path) in [(b"W2ru", relative), (b"W2ku", absolute)] {
        let at = child.bytes.len() as u64;
        let mut data = utf16le(path);
        let len = data.len() as u32;
        data.resize(512, 0);
        child.bytes.extend_from_slice(&data);
        locators.push((*code, len, at));
    }
    child.bytes.extend_from_slice(&footer);
    child.edit_footers(|f| f[60..64].copy_from_slice(&4u32.to_be_bytes()));
    child.edit_header(|h| {
        h[40..56].copy_from_slice(&parent_id);
        let name: Vec<u8> = "base.vhd"
            .encode_utf16()
            .flat_map(|u| u.to_be_bytes())
            .collect();
        h[64..64 + name.len()].copy_from_slice(&name);
        for (k, (code, len, at)) in locators.iter().enumerate() {
            let e = &mut h[576 + 24 * k..600 + 24 * k];
            e[0..4].copy_from_slice(code);
            e[4..8].copy_from_slice(&512u32.to_be_bytes());
            e[8..12].copy_from_slice(&len.to_be_bytes());
            e[16..24].copy_from_slice(&at.to_be_bytes());
        }
    });
    for i in 0..child.entries() {
        let e = child.bat(i);
        if e != u32::MAX {
            let bitmap = e as usize * 512;
            // 128 sectors per 64 KiB: bits 64..128 of each group clear.
            for g in 0..32 {
                let at = bitmap + g * 16;
                child.bytes[at..at + 8].fill(0xFF);
                child.bytes[at + 8..at + 16].fill(0);
            }
        }
    }
}

/// What the differencing disk made by [`make_differencing`] reads as.
fn differencing_expected(child: &[u8], child_alloc: &[bool], base: &[u8]) -> Vec<u8> {
    let mut out = expected(base, child.len() as u64);
    for (s, sector) in child.chunks(512).enumerate() {
        let block = s * 512 / (2 * MIB);
        if child_alloc[block] && (s % 128) < 64 {
            out[s * 512..s * 512 + sector.len()].copy_from_slice(sector);
        }
    }
    out
}

struct DiffSetup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    base_raw: Vec<u8>,
    child_raw: Vec<u8>,
    child: Dyn,
    base_id: [u8; 16],
}

fn diff_setup(child_size: usize) -> DiffSetup {
    let dir = tempfile::tempdir().unwrap();
    let base_raw = reference(6 * MIB);
    let mut child_raw = vec![0u8; child_size];
    child_raw[MIB..MIB + 300_000].copy_from_slice(&noise(9, 300_000));
    child_raw[child_size - 5000..].copy_from_slice(&noise(10, 5000));
    let base_path = dir.path().join("base.vhd");
    write_vhd(&base_raw, &base_path, false);
    let base_bytes = fs::read(&base_path).unwrap();
    let base_id: [u8; 16] = base_bytes[68..84].try_into().unwrap();
    let child_path = dir.path().join("child-src.vhd");
    write_vhd(&child_raw, &child_path, false);
    let child = Dyn {
        bytes: fs::read(&child_path).unwrap(),
    };
    DiffSetup {
        dir: dir.path().to_path_buf(),
        _dir: dir,
        base_raw,
        child_raw,
        child,
        base_id,
    }
}

#[test]
fn differencing_reads_through_parent() {
    // The child is larger than its parent: past the parent's end it reads zeros.
    let mut s = diff_setup(10 * MIB);
    let alloc: Vec<bool> = (0..s.child.entries())
        .map(|i| s.child.bat(i) != u32::MAX)
        .collect();
    make_differencing(
        &mut s.child,
        s.base_id,
        ".\\base.vhd",
        "C:\\nowhere\\base.vhd",
    );
    let child_path = s.dir.join("child.vhd");
    fs::write(&child_path, &s.child.bytes).unwrap();
    let mut disk = open(&child_path);
    assert_eq!(disk.format_name(), "vhd (differencing)");
    assert_eq!(disk.size(), 10 * MIB as u64);
    let (bytes, _) = read_all(disk.as_mut());
    let want = differencing_expected(&s.child_raw, &alloc, &s.base_raw);
    assert!(bytes == want, "differencing contents");
    // Past the parent's 6 MiB, where the child has nothing: unallocated.
    let tail = disk.extents(6 * MIB as u64, 2 * MIB as u64).unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].kind, ExtentKind::Unallocated);

    // Neither locator is usable: found through the header's parent name.
    let mut s2 = diff_setup(8 * MIB);
    make_differencing(
        &mut s2.child,
        s2.base_id,
        "missing\\x.vhd",
        "D:\\vms\\base.vhd",
    );
    let p2 = s2.dir.join("child.vhd");
    fs::write(&p2, &s2.child.bytes).unwrap();
    assert_eq!(open(&p2).format_name(), "vhd (differencing)");
}

#[test]
fn differencing_refuses_wrong_or_missing_parent() {
    let mut s = diff_setup(4 * MIB);
    make_differencing(&mut s.child, [0x55; 16], ".\\base.vhd", "C:\\base.vhd");
    let child_path = s.dir.join("child.vhd");
    fs::write(&child_path, &s.child.bytes).unwrap();
    let err = open_disk(&child_path, &OpenOptions::default())
        .err()
        .expect("a parent with another unique id is refused");
    assert!(err.to_string().contains("unique id"), "{err}");

    fs::remove_file(s.dir.join("base.vhd")).unwrap();
    let err = open_disk(&child_path, &OpenOptions::default())
        .err()
        .expect("a missing parent is an error");
    assert!(err.to_string().contains("parent"), "{err}");
}

// ---- damaged images -------------------------------------------------------------

fn small_dynamic() -> (tempfile::TempDir, Vec<u8>, Dyn) {
    let dir = tempfile::tempdir().unwrap();
    let raw = reference(6 * MIB);
    let path = dir.path().join("d.vhd");
    write_vhd(&raw, &path, false);
    let d = Dyn {
        bytes: fs::read(&path).unwrap(),
    };
    (dir, raw, d)
}

fn open_bytes(dir: &Path, bytes: &[u8]) -> Result<Box<dyn DiskSource>, String> {
    let path = dir.join("hostile.vhd");
    fs::write(&path, bytes).unwrap();
    open_disk(
        &path,
        &OpenOptions {
            format: Some(vmvault_ingest::ImageFormat::Vhd),
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())
}

#[test]
fn damaged_end_footer_falls_back_to_the_copy() {
    let (dir, raw, mut d) = small_dynamic();
    let at = d.footer_at();
    d.bytes[at + 100] ^= 0x40;
    let mut disk = open_bytes(dir.path(), &d.bytes).unwrap();
    let (bytes, _) = read_all(disk.as_mut());
    assert!(bytes == expected(&raw, disk.size()));
    // Both copies damaged: refused.
    d.bytes[100] ^= 0x40;
    let err = open_bytes(dir.path(), &d.bytes).err().unwrap();
    assert!(err.contains("checksum"), "{err}");
}

#[test]
fn bad_fixed_footer_checksum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.vhd");
    write_vhd(&reference(2 * MIB), &path, true);
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 512 + 48] ^= 1; // current size
    let err = open_bytes(dir.path(), &bytes).err().unwrap();
    assert!(err.contains("checksum"), "{err}");
    // A fixed disk larger than its file (checksum fixed up).
    let f = &mut bytes[n - 512..];
    f[48..56].copy_from_slice(&(64u64 << 20).to_be_bytes());
    fix_checksum(f, 64);
    assert!(open_bytes(dir.path(), &bytes).is_err());
}

/// A named way of damaging an image.
type Edit = Box<dyn Fn(&mut Dyn)>;

#[test]
fn hostile_tables_are_refused() {
    let (dir, _raw, d) = small_dynamic();
    let first = (0..d.entries()).find(|&i| d.bat(i) != u32::MAX).unwrap();
    let cases: Vec<(&str, Edit)> = vec![
        (
            "BAT past EOF",
            Box::new(|d: &mut Dyn| {
                d.edit_header(|h| h[16..24].copy_from_slice(&(1u64 << 40).to_be_bytes()))
            }),
        ),
        (
            "BAT too small for the disk",
            Box::new(|d: &mut Dyn| {
                d.edit_header(|h| h[28..32].copy_from_slice(&1u32.to_be_bytes()))
            }),
        ),
        (
            "huge BAT",
            Box::new(|d: &mut Dyn| {
                d.edit_footers(|f| f[48..56].copy_from_slice(&(1u64 << 50).to_be_bytes()));
                d.edit_header(|h| h[28..32].copy_from_slice(&u32::MAX.to_be_bytes()));
            }),
        ),
        (
            "block past EOF",
            Box::new(move |d: &mut Dyn| {
                let at = 1536 + 4 * first;
                d.bytes[at..at + 4].copy_from_slice(&0x00ff_0000u32.to_be_bytes());
            }),
        ),
        (
            "overlapping blocks",
            Box::new(move |d: &mut Dyn| {
                let e = d.bat(first) + 8;
                let at = 1536 + 4 * (first + 1);
                d.bytes[at..at + 4].copy_from_slice(&e.to_be_bytes());
            }),
        ),
        (
            "block over the BAT",
            Box::new(move |d: &mut Dyn| {
                let at = 1536 + 4 * first;
                d.bytes[at..at + 4].copy_from_slice(&3u32.to_be_bytes());
            }),
        ),
        (
            "block size not a power of two",
            Box::new(|d: &mut Dyn| {
                d.edit_header(|h| h[32..36].copy_from_slice(&3_000_000u32.to_be_bytes()))
            }),
        ),
        ("header checksum", Box::new(|d: &mut Dyn| d.bytes[600] ^= 1)),
        (
            "header past EOF",
            Box::new(|d: &mut Dyn| {
                d.edit_footers(|f| f[16..24].copy_from_slice(&(1u64 << 33).to_be_bytes()))
            }),
        ),
        (
            "unknown disk type",
            Box::new(|d: &mut Dyn| {
                d.edit_footers(|f| f[60..64].copy_from_slice(&9u32.to_be_bytes()))
            }),
        ),
        (
            "differencing without parent",
            Box::new(|d: &mut Dyn| {
                d.edit_footers(|f| f[60..64].copy_from_slice(&4u32.to_be_bytes()))
            }),
        ),
    ];
    for (what, edit) in cases {
        let mut bad = Dyn {
            bytes: d.bytes.clone(),
        };
        edit(&mut bad);
        let r = open_bytes(dir.path(), &bad.bytes);
        assert!(r.is_err(), "{what}: opened");
        eprintln!("{what}: {}", r.err().unwrap());
    }
}

#[test]
fn truncated_images_never_misread() {
    let (dir, raw, d) = small_dynamic();
    let len = d.bytes.len();
    for cut in [
        0,
        100,
        511,
        512,
        1000,
        1536,
        2048,
        4096,
        len / 2,
        len - 513,
        len - 512,
        len - 1,
    ] {
        match open_bytes(dir.path(), &d.bytes[..cut]) {
            Err(_) => {}
            Ok(mut disk) => {
                // Only the end footer was lost: the copy at the start still describes
                // everything, so the disk must read exactly as the original.
                let (bytes, _) = read_all(disk.as_mut());
                assert!(bytes == expected(&raw, disk.size()), "cut at {cut}");
            }
        }
    }
    assert!(open_bytes(dir.path(), &d.bytes[..len / 2]).is_err());
}

#[test]
fn footer_of_511_bytes_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.vhd");
    let raw = reference(2 * MIB);
    write_vhd(&raw, &path, true);
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    assert_eq!(bytes[n - 1], 0, "last reserved byte");
    bytes.truncate(n - 1);
    let mut disk = open_bytes(dir.path(), &bytes).unwrap();
    assert_eq!(disk.format_name(), "vhd (fixed)");
    let (got, _) = read_all(disk.as_mut());
    assert!(got == raw);
}

#[test]
fn random_corruption_never_panics() {
    let (dir, _raw, d) = small_dynamic();
    let meta_end = 2048;
    let noise = noise(77, 4000);
    for k in 0..400 {
        let mut bad = d.bytes.clone();
        let at = (noise[k * 2] as usize * 256 + noise[k * 2 + 1] as usize) % meta_end;
        bad[at] ^= noise[k * 3 + 2] | 1;
        // Keep checksums valid half the time so the damage reaches deeper checks.
        if k % 2 == 0 {
            fix_checksum(&mut bad[0..512], 64);
            fix_checksum(&mut bad[512..1536], 36);
        }
        if let Ok(mut disk) = open_bytes(dir.path(), &bad) {
            let size = disk.size();
            if let Ok(ext) = disk.extents(0, size.min(64 * MIB as u64)) {
                for e in ext.iter().filter(|e| e.kind == ExtentKind::Data).take(4) {
                    let mut buf = vec![0u8; e.len.min(MIB as u64) as usize];
                    let _ = disk.read_at(e.offset, &mut buf);
                }
            }
        }
    }
}

#[test]
fn fuzz_seeds_open() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/vhd");
    let mut n = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let bytes = fs::read(&path).unwrap();
        vmvault_ingest::fuzzing::vhd(&bytes);
        let file = Box::new(vmvault_ingest::MemFile::new(bytes, &name));
        let r = vmvault_ingest::open::open_file_as(
            file,
            vmvault_ingest::ImageFormat::Vhd,
            &mut vmvault_ingest::NoFiles,
        );
        // The differencing seed's parent is not reachable in memory.
        assert_eq!(r.is_ok(), !name.starts_with("diff"), "{name}");
        if let Ok(mut disk) = r {
            read_all(disk.as_mut());
        }
        n += 1;
    }
    assert!(n >= 3);
}
