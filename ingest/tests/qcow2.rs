//! qcow2 reader and writer against images made by `qemu-img` / `qemu-io`: every byte
//! read through extents + read_at equals the reference raw disk, unallocated and zero
//! extents match what `qemu-img map` reports, hostile images fail cleanly, and written
//! images pass `qemu-img check` and `qemu-img compare`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use vmvault_ingest::{open_disk, DiskSource, ExtentKind, ImageFormat, IngestError, OpenOptions};

const MIB: u64 = 1 << 20;

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} runs: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qemu_img(args: &[&str]) {
    run("qemu-img", args);
}

fn qemu_io(img: &Path, cmds: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    let p = img.to_str().unwrap();
    args.push(p);
    run("qemu-io", &args);
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Deterministic pseudo-random bytes.
fn fill_random(buf: &mut [u8], mut seed: u64) {
    for b in buf.iter_mut() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *b = seed as u8;
    }
}

/// A reference raw disk of 6 MiB + 1536 bytes: random data regions (some not cluster
/// aligned, one in the partial last cluster), explicitly written zeros, and holes.
fn reference_raw(dir: &Path) -> PathBuf {
    let path = dir.join("ref.raw");
    let size = 6 * MIB + 1536;
    let mut f = fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    let regions: &[(u64, u64, u64)] = &[
        (0, 200 * 1024, 1),
        (MIB + 4096, 70_000, 2),
        (3 * MIB, 64 * 1024, 0), // written zeros
        (3 * MIB + 512, 512, 3),
        (4 * MIB, MIB, 4),
        (6 * MIB - 3000, 4536, 5),
    ];
    use std::io::{Seek, SeekFrom};
    for &(off, len, seed) in regions {
        let mut buf = vec![0u8; len as usize];
        if seed != 0 {
            fill_random(&mut buf, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(&buf).unwrap();
    }
    path
}

/// Ranges `(start, len, data)` from `qemu-img map --output=json`.
fn qemu_map(img: &Path, fmt: &str) -> Vec<(u64, u64, bool)> {
    let out = Command::new("qemu-img")
        .args(["map", "--output=json", "-f", fmt, s(img)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let num = |obj: &str, key: &str| -> u64 {
        let at = obj.find(key).unwrap() + key.len();
        obj[at..]
            .trim_start_matches([':', ' '])
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap()
    };
    text.split('{')
        .skip(1)
        .map(|obj| {
            (
                num(obj, "\"start\""),
                num(obj, "\"length\""),
                obj.contains("\"data\": true"),
            )
        })
        .collect()
}

/// Reads the whole disk through its extents (data via read_at, the rest must be zero)
/// and also through read_at alone; both must equal `expected`.
fn assert_reads(disk: &mut dyn DiskSource, expected: &[u8]) {
    assert_eq!(disk.size(), expected.len() as u64, "disk size");
    let extents = disk.extents(0, disk.size()).unwrap();
    let mut pos = 0;
    for e in &extents {
        assert_eq!(e.offset, pos, "extents contiguous");
        assert!(e.len > 0);
        let want = &expected[e.offset as usize..e.end() as usize];
        match e.kind {
            ExtentKind::Data => {
                let mut buf = vec![0u8; e.len as usize];
                disk.read_at(e.offset, &mut buf).unwrap();
                assert!(buf == want, "data extent {e:?} differs");
            }
            _ => assert!(
                want.iter().all(|b| *b == 0),
                "{e:?} is not data but the reference has data there"
            ),
        }
        pos = e.end();
    }
    assert_eq!(pos, disk.size());
    // Plain reads in odd-sized pieces.
    let mut pos = 0usize;
    let mut piece = 777usize;
    while pos < expected.len() {
        let n = piece.min(expected.len() - pos);
        let mut buf = vec![0u8; n];
        disk.read_at(pos as u64, &mut buf).unwrap();
        assert!(buf == expected[pos..pos + n], "read_at({pos}, {n}) differs");
        pos += n;
        piece = piece * 3 % 300_007 + 1;
    }
    // Sub-range extents agree with the whole-disk map.
    let (a, b) = (MIB + 1000, 3 * MIB + 5);
    if b <= disk.size() {
        let sub = disk.extents(a, b - a).unwrap();
        assert_eq!(sub.first().unwrap().offset, a);
        assert_eq!(sub.last().unwrap().end(), b);
    }
}

/// Opens `img`, checks every byte against `expected_raw`, and checks that our Data
/// extents are exactly where `qemu-img map` reports data.
fn check_image(img: &Path, expected_raw: &Path) -> Box<dyn DiskSource> {
    let expected = fs::read(expected_raw).unwrap();
    let mut disk = open_disk(img, &OpenOptions::default()).unwrap();
    assert_eq!(disk.format_name(), "qcow2");
    assert_reads(disk.as_mut(), &expected);
    for (start, len, data) in qemu_map(img, "qcow2") {
        let len = len.min(disk.size().saturating_sub(start));
        if len == 0 {
            continue;
        }
        for e in disk.extents(start, len).unwrap() {
            assert_eq!(
                e.kind == ExtentKind::Data,
                data,
                "{e:?} disagrees with qemu-img map ({start}, {len}, data={data})"
            );
        }
    }
    disk
}

fn convert(raw: &Path, out: &Path, opts: &[&str]) {
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    args.extend_from_slice(opts);
    args.push(s(raw));
    args.push(s(out));
    qemu_img(&args);
}

fn converted(opts: &[&str]) {
    converted_with(opts, true)
}

/// Converts the reference raw with `opts` and checks the result; `holes` also checks
/// that a cluster-aligned 1 MiB hole of the reference is not data (false for clusters
/// larger than that).
fn converted_with(opts: &[&str], holes: bool) {
    let dir = tempfile::tempdir().unwrap();
    let raw = reference_raw(dir.path());
    let img = dir.path().join("img.qcow2");
    convert(&raw, &img, opts);
    let mut disk = check_image(&img, &raw);
    if !holes {
        return;
    }
    // Holes of the reference are not data.
    let holes = disk.extents(2 * MIB, MIB).unwrap();
    assert!(
        holes.iter().all(|e| e.kind != ExtentKind::Data),
        "{holes:?}"
    );
}

#[test]
fn qcow2_plain() {
    converted(&[]);
}

#[test]
fn qcow2_compressed_zlib() {
    converted(&["-c", "-o", "compression_type=zlib"]);
}

#[test]
fn qcow2_compressed_zstd() {
    converted(&["-c", "-o", "compression_type=zstd"]);
}

#[test]
fn qcow2_extended_l2() {
    converted(&["-o", "extended_l2=on"]);
}

#[test]
fn qcow2_v2_compat() {
    converted(&["-o", "compat=0.10"]);
}

#[test]
fn qcow2_small_and_large_clusters() {
    converted(&["-o", "cluster_size=512"]);
    converted_with(&["-o", "cluster_size=2M"], false);
    converted(&["-c", "-o", "cluster_size=4k,compression_type=zstd"]);
}

/// Expected contents of a chain: qemu-img's own flattening.
fn flatten(img: &Path, dir: &Path) -> PathBuf {
    let out = dir.join("flat.raw");
    qemu_img(&["convert", "-O", "raw", s(img), s(&out)]);
    out
}

#[test]
fn qcow2_backing_chain() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = reference_raw(d);
    let base = d.join("base.qcow2");
    convert(&raw, &base, &[]);
    // The top is larger than its base: past the base's end it reads zeros.
    let top = d.join("top.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        s(&top),
        "8M",
    ]);
    qemu_io(
        &top,
        &[
            "write -P 0xab 1M 64k",
            "write -z 4M 128k",
            "write -P 0xcd 7M 4k",
            "write -z 7340032 4k",
        ],
    );
    let flat = flatten(&top, d);
    let mut disk = check_image(&top, &flat);
    // The zero-flagged cluster over the base's data reads zeros, not the base.
    let z = disk.extents(4 * MIB, 128 * 1024).unwrap();
    assert_eq!(z.len(), 1);
    assert_eq!(z[0].kind, ExtentKind::Zero);
    // The base's data shows through; past the base's end nothing is allocated.
    assert_eq!(disk.extents(0, 4096).unwrap()[0].kind, ExtentKind::Data);
    let tail = disk.extents(6 * MIB + 65536, 4096).unwrap();
    assert_eq!(tail[0].kind, ExtentKind::Unallocated, "{tail:?}");
}

#[test]
fn qcow2_extended_l2_subclusters_over_backing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = reference_raw(d);
    let base = d.join("base.qcow2");
    convert(&raw, &base, &[]);
    let top = d.join("top.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        s(&top),
    ]);
    qemu_io(
        &top,
        &[
            "write -P 0x11 4096 2048",
            "write -z 8192 2048",
            "write -P 0x22 1052672 4096",
            "write -z 4202496 2048",
        ],
    );
    let flat = flatten(&top, d);
    let mut disk = check_image(&top, &flat);
    let e = disk.extents(8192, 2048).unwrap();
    assert_eq!(e[0].kind, ExtentKind::Zero, "{e:?}");
}

#[test]
fn qcow2_zero_clusters_without_backing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = reference_raw(d);
    let img = d.join("img.qcow2");
    convert(&raw, &img, &[]);
    qemu_io(&img, &["write -z 0 128k", "write -z -u 4M 64k"]);
    let flat = flatten(&img, d);
    let mut disk = check_image(&img, &flat);
    let e = disk.extents(0, 128 * 1024).unwrap();
    assert_eq!(e.len(), 1);
    assert_ne!(e[0].kind, ExtentKind::Data);
}

#[test]
fn qcow2_external_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("ext.qcow2");
    let data = d.join("ext.data");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", s(&data)),
        s(&img),
        "4M",
    ]);
    qemu_io(
        &img,
        &[
            "write -P 0x5a 64k 128k",
            "write -P 0x33 3M 4k",
            "write -z 3M 1k",
        ],
    );
    let flat = flatten(&img, d);
    check_image(&img, &flat);
}

#[test]
fn qcow2_backing_loop_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = d.join("a.qcow2");
    let b = d.join("b.qcow2");
    qemu_img(&["create", "-f", "qcow2", s(&a), "1M"]);
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "a.qcow2",
        "-F",
        "qcow2",
        s(&b),
    ]);
    qemu_img(&[
        "rebase",
        "-u",
        "-f",
        "qcow2",
        "-b",
        "b.qcow2",
        "-F",
        "qcow2",
        s(&a),
    ]);
    let err = open_disk(&b, &OpenOptions::default())
        .err()
        .expect("a backing loop must be refused");
    assert!(err.to_string().contains("loop"), "{err}");
}

#[test]
fn qcow2_encrypted_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("enc.qcow2");
    let made = Command::new("qemu-img")
        .args([
            "create",
            "--object",
            "secret,id=sec0,data=hunter2",
            "-f",
            "qcow2",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
            s(&img),
            "1M",
        ])
        .output()
        .unwrap();
    if !made.status.success() {
        eprintln!(
            "qemu-img cannot create LUKS qcow2 here: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        return;
    }
    let err = open_disk(&img, &OpenOptions::default())
        .err()
        .expect("encrypted images must be refused");
    assert!(matches!(err, IngestError::Unimplemented { .. }), "{err}");
    assert!(err.to_string().contains("encrypted"), "{err}");
}

/// Opens and fully reads an image; Err if either fails.
fn open_and_read(img: &Path) -> Result<(), IngestError> {
    let opts = OpenOptions {
        format: Some(ImageFormat::Qcow2),
        ..OpenOptions::default()
    };
    let mut disk = open_disk(img, &opts)?;
    let size = disk.size();
    let extents = disk.extents(0, size)?;
    for e in extents.iter().filter(|e| e.kind == ExtentKind::Data) {
        let mut buf = vec![0u8; e.len as usize];
        disk.read_at(e.offset, &mut buf)?;
    }
    Ok(())
}

fn plain_image(dir: &Path, opts: &[&str]) -> (PathBuf, Vec<u8>) {
    let raw = reference_raw(dir);
    let img = dir.join("img.qcow2");
    convert(&raw, &img, opts);
    let bytes = fs::read(&img).unwrap();
    (img, bytes)
}

#[test]
fn qcow2_truncated_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for opts in [&[][..], &["-c"][..]] {
        let (img, bytes) = plain_image(dir.path(), opts);
        for cut in [
            0,
            3,
            50,
            100,
            70_000,
            200_000,
            bytes.len() / 2,
            bytes.len() - 70_000,
        ] {
            fs::write(&img, &bytes[..cut]).unwrap();
            let r = open_and_read(&img);
            assert!(r.is_err(), "cut at {cut} of {} read fine", bytes.len());
        }
    }
}

fn patch(img: &Path, bytes: &[u8], at: usize, value: &[u8]) -> Result<(), IngestError> {
    let mut b = bytes.to_vec();
    b[at..at + value.len()].copy_from_slice(value);
    fs::write(img, &b).unwrap();
    open_and_read(img)
}

#[test]
fn qcow2_corrupt_headers_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (img, bytes) = plain_image(dir.path(), &[]);
    let l1_at = u64::from_be_bytes(bytes[40..48].try_into().unwrap());
    // L1 offset: unaligned, past the end, absurd.
    for bad in [l1_at + 8, bytes.len() as u64 + 65536, !0xffffu64] {
        let err = patch(&img, &bytes, 40, &bad.to_be_bytes()).unwrap_err();
        assert!(
            matches!(err, IngestError::Corrupt { .. }),
            "L1 offset {bad}: {err}"
        );
    }
    // L1 size too small for the disk, and absurdly large.
    assert!(patch(&img, &bytes, 36, &0u32.to_be_bytes()).is_err());
    assert!(patch(&img, &bytes, 36, &u32::MAX.to_be_bytes()).is_err());
    // Size overflow.
    assert!(patch(&img, &bytes, 24, &u64::MAX.to_be_bytes()).is_err());
    // Cluster bits out of range.
    assert!(patch(&img, &bytes, 20, &8u32.to_be_bytes()).is_err());
    assert!(patch(&img, &bytes, 20, &22u32.to_be_bytes()).is_err());
    // Corrupt bit, unknown incompatible bit.
    let err = patch(&img, &bytes, 72, &2u64.to_be_bytes()).unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
    let err = patch(&img, &bytes, 72, &(1u64 << 40).to_be_bytes()).unwrap_err();
    assert!(matches!(err, IngestError::Unimplemented { .. }), "{err}");
    // The dirty bit alone is fine.
    patch(&img, &bytes, 72, &1u64.to_be_bytes()).unwrap();
    // An L1 entry pointing at an unaligned or out-of-file L2 table.
    let l1 = l1_at as usize;
    let e = u64::from_be_bytes(bytes[l1..l1 + 8].try_into().unwrap());
    assert!(patch(&img, &bytes, l1, &(e + 512).to_be_bytes()).is_err());
    assert!(patch(&img, &bytes, l1, &((1u64 << 50) | (1 << 63)).to_be_bytes()).is_err());
    // An L2 entry pointing past the end of the file.
    let l2 = (e & 0x00ff_ffff_ffff_fe00) as usize;
    assert!(patch(&img, &bytes, l2, &((1u64 << 45) | (1 << 63)).to_be_bytes()).is_err());
}

#[test]
fn qcow2_corrupt_compressed_cluster_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("text.raw");
    let text: Vec<u8> = b"compressible text, "
        .iter()
        .copied()
        .cycle()
        .take(MIB as usize)
        .collect();
    fs::write(&raw, text).unwrap();
    for ctype in ["zlib", "zstd"] {
        let img = dir.path().join("img.qcow2");
        convert(
            &raw,
            &img,
            &["-c", "-o", &format!("compression_type={ctype}")],
        );
        let bytes = fs::read(&img).unwrap();
        open_and_read(&img).unwrap();
        let l1_at = u64::from_be_bytes(bytes[40..48].try_into().unwrap()) as usize;
        let l2 = (u64::from_be_bytes(bytes[l1_at..l1_at + 8].try_into().unwrap())
            & 0x00ff_ffff_ffff_fe00) as usize;
        let e = u64::from_be_bytes(bytes[l2..l2 + 8].try_into().unwrap());
        assert!(e & (1 << 62) != 0, "first cluster is compressed");
        let data_at = (e & ((1u64 << 54) - 1)) as usize;
        // Garbage compressed data.
        assert!(
            patch(&img, &bytes, data_at, &[0xff; 64]).is_err(),
            "{ctype}"
        );
    }
}

/// Writes `raw` through the qcow2 writer in uneven pieces, skipping zero runs.
fn write_with_writer(raw: &[u8], out: &Path) -> u64 {
    let file = fs::File::create(out).unwrap();
    let mut w = vmvault_ingest::qcow2::create_writer(
        std::io::BufWriter::new(file),
        "out.qcow2",
        raw.len() as u64,
    )
    .unwrap();
    let mut pos = 0usize;
    let mut piece = 1000usize;
    while pos < raw.len() {
        let n = piece.min(raw.len() - pos);
        let chunk = &raw[pos..pos + n];
        if chunk.iter().any(|b| *b != 0) {
            w.write_data(pos as u64, chunk).unwrap();
        }
        pos += n;
        piece = piece * 7 % 250_003 + 1;
    }
    w.finish().unwrap()
}

fn assert_check_and_compare(img: &Path, raw: &Path) {
    qemu_img(&["check", "-f", "qcow2", s(img)]);
    qemu_img(&["compare", "-f", "qcow2", "-F", "raw", s(img), s(raw)]);
}

#[test]
fn qcow2_writer_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = reference_raw(d);
    let bytes = fs::read(&raw).unwrap();
    let out = d.join("out.qcow2");
    let n = write_with_writer(&bytes, &out);
    assert_eq!(n, fs::metadata(&out).unwrap().len());
    assert_check_and_compare(&out, &raw);
    let mut disk = check_image(&out, &raw);
    // Holes and written zeros stay unallocated.
    let holes = disk.extents(2 * MIB, MIB).unwrap();
    assert_eq!(holes.len(), 1);
    assert_eq!(holes[0].kind, ExtentKind::Unallocated);
}

#[test]
fn qcow2_writer_large_sparse_and_empty() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 3 GiB + 1000 bytes: several L2 tables, data at both ends and in the middle.
    let size = 3 * 1024 * MIB + 1000;
    let raw = d.join("big.raw");
    let f = fs::File::create(&raw).unwrap();
    f.set_len(size).unwrap();
    let out = d.join("big.qcow2");
    let mut w = vmvault_ingest::qcow2::create_writer(
        std::io::BufWriter::new(fs::File::create(&out).unwrap()),
        "big.qcow2",
        size,
    )
    .unwrap();
    let mut pieces = Vec::new();
    for (i, off) in [0u64, 600 * MIB - 10, 2048 * MIB + 12345, size - 1000]
        .into_iter()
        .enumerate()
    {
        let mut buf = vec![0u8; if off == size - 1000 { 1000 } else { 100_000 }];
        fill_random(&mut buf, i as u64 + 77);
        pieces.push((off, buf));
    }
    use std::os::unix::fs::FileExt;
    for (off, buf) in &pieces {
        f.write_all_at(buf, *off).unwrap();
        w.write_data(*off, buf).unwrap();
    }
    drop(f);
    w.finish().unwrap();
    assert_check_and_compare(&out, &raw);
    let mut disk = open_disk(&out, &OpenOptions::default()).unwrap();
    for (off, buf) in &pieces {
        let mut got = vec![0u8; buf.len()];
        disk.read_at(*off, &mut got).unwrap();
        assert!(got == *buf);
    }
    let e = disk.extents(0, size).unwrap();
    let data: u64 = e
        .iter()
        .filter(|e| e.kind == ExtentKind::Data)
        .map(|e| e.len)
        .sum();
    assert!(data <= 8 * 65536, "{e:?}");

    // An empty disk and a zero-sized one.
    for size in [0u64, 5 * MIB] {
        let raw = d.join("empty.raw");
        fs::File::create(&raw).unwrap().set_len(size).unwrap();
        let out = d.join("empty.qcow2");
        let w = vmvault_ingest::qcow2::create_writer(
            std::io::BufWriter::new(fs::File::create(&out).unwrap()),
            "empty.qcow2",
            size,
        )
        .unwrap();
        w.finish().unwrap();
        assert_check_and_compare(&out, &raw);
    }
}

#[test]
fn qcow2_writer_rejects_out_of_order_writes() {
    let mut w =
        vmvault_ingest::qcow2::create_writer(std::io::Cursor::new(Vec::new()), "mem", MIB).unwrap();
    w.write_data(4096, &[1; 100]).unwrap();
    assert!(w.write_data(0, &[1; 10]).is_err());
    assert!(w.write_data(MIB - 5, &[1; 10]).is_err());
}

/// Counts live heap bytes per thread, so the fuzz seeds' peak allocation can be checked
/// as the replay test does (32 × input + slack).
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub struct Counting;

    thread_local! {
        static CUR: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn add(n: isize) {
        let _ = CUR.try_with(|c| {
            let v = c.get() + n;
            c.set(v);
            let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
        });
    }

    /// Starts a measurement; returns the live bytes now.
    pub fn start() -> isize {
        let cur = CUR.with(|c| c.get());
        PEAK.with(|p| p.set(cur));
        cur
    }

    /// Peak live bytes since `start`, above its baseline.
    pub fn peak_since(base: isize) -> isize {
        PEAK.with(|p| p.get()) - base
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            let p = unsafe { System.alloc(l) };
            if !p.is_null() {
                add(l.size() as isize);
            }
            p
        }
        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            let p = unsafe { System.alloc_zeroed(l) };
            if !p.is_null() {
                add(l.size() as isize);
            }
            p
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            unsafe { System.dealloc(p, l) };
            add(-(l.size() as isize));
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
            let q = unsafe { System.realloc(p, l, new) };
            if !q.is_null() {
                add(new as isize - l.size() as isize);
            }
            q
        }
    }
}

#[global_allocator]
static ALLOC: counting::Counting = counting::Counting;

/// The committed fuzz seeds, and deterministic mutations of them (bit flips, field
/// overwrites, truncations), go through the fuzz entry point without panicking and
/// within the replay test's allocation limit.
#[test]
fn qcow2_fuzz_seeds_and_mutations() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/qcow2");
    let mut seeds: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 5, "{seeds:?}");
    let check = |data: &[u8], what: &str| {
        let base = counting::start();
        vmvault_ingest::fuzzing::qcow2(data);
        let peak = counting::peak_since(base);
        let limit = 32 * data.len() as isize + (12 << 20);
        assert!(peak <= limit, "{what}: peak {peak} > limit {limit}");
    };
    let mut rng = 0x1234_5678_9abc_def1u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for seed in &seeds {
        let bytes = fs::read(seed).unwrap();
        assert!(
            vmvault_ingest::qcow2::open(
                Box::new(vmvault_ingest::MemFile::new(bytes.clone(), "seed")),
                &mut vmvault_ingest::NoFiles
            )
            .is_ok(),
            "seed {} opens",
            seed.display()
        );
        check(&bytes, &seed.display().to_string());
        for i in 0..1500 {
            let mut m = bytes.clone();
            match i % 4 {
                0 => {
                    let at = (next() % m.len() as u64) as usize;
                    m[at] ^= 1 << (next() % 8);
                }
                1 => {
                    // Overwrite a header field or table entry with a random value.
                    let at = (next() % 128.min(m.len() as u64)) as usize & !7;
                    m[at..at + 8].copy_from_slice(&next().to_be_bytes());
                }
                2 => {
                    let at = (next() % m.len() as u64) as usize & !7;
                    let v = next() >> (next() % 64);
                    let end = (at + 8).min(m.len());
                    m[at..end].copy_from_slice(&v.to_be_bytes()[..end - at]);
                }
                _ => m.truncate((next() % m.len() as u64) as usize),
            }
            check(&m, &format!("{} mutation {i}", seed.display()));
        }
    }
}

#[test]
fn qcow2_huge_sparse_disk_maps_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("huge.qcow2");
    qemu_img(&["create", "-f", "qcow2", s(&img), "2T"]);
    qemu_io(&img, &["write -P 0x77 1T 64k"]);
    let mut disk = open_disk(&img, &OpenOptions::default()).unwrap();
    let t = std::time::Instant::now();
    let e = disk.extents(0, disk.size()).unwrap();
    assert!(t.elapsed().as_secs_f64() < 2.0, "{:?}", t.elapsed());
    let kinds: Vec<(u64, u64, ExtentKind)> = e.iter().map(|e| (e.offset, e.len, e.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (0, 1 << 40, ExtentKind::Unallocated),
            (1 << 40, 65536, ExtentKind::Data),
            (
                (1 << 40) + 65536,
                (1 << 40) - 65536,
                ExtentKind::Unallocated
            ),
        ]
    );
    let mut buf = vec![0u8; 65536 + 10];
    disk.read_at((1 << 40) - 5, &mut buf).unwrap();
    assert!(buf[..5].iter().all(|b| *b == 0));
    assert!(buf[5..65541].iter().all(|b| *b == 0x77));
    assert!(buf[65541..].iter().all(|b| *b == 0));
}

#[test]
fn qcow2_preallocated_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("pre.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "preallocation=metadata",
        s(&img),
        "3M",
    ]);
    qemu_io(&img, &["write -P 0x42 100k 10k"]);
    let flat = flatten(&img, d);
    check_image(&img, &flat);
}

#[test]
fn qcow2_raw_backing_and_detected_backing_format() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = reference_raw(d);
    // A raw backing file named with its format.
    let top = d.join("top.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "ref.raw",
        "-F",
        "raw",
        s(&top),
    ]);
    qemu_io(&top, &["write -P 0x99 2M 70k"]);
    let flat = flatten(&top, d);
    check_image(&top, &flat);

    // A qcow2 backing file whose format extension is hidden: the format is detected.
    let base = d.join("base.qcow2");
    convert(&raw, &base, &[]);
    let top2 = d.join("top2.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        s(&top2),
    ]);
    qemu_io(&top2, &["write -P 0x98 5M 4k"]);
    let flat2 = d.join("flat2.raw");
    qemu_img(&["convert", "-O", "raw", s(&top2), s(&flat2)]);
    let mut bytes = fs::read(&top2).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == [0xe2, 0x79, 0x2a, 0xca])
        .expect("backing format extension");
    bytes[at..at + 4].copy_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    fs::write(&top2, &bytes).unwrap();
    let expected = fs::read(&flat2).unwrap();
    let mut disk = open_disk(&top2, &OpenOptions::default()).unwrap();
    assert_reads(disk.as_mut(), &expected);
}
