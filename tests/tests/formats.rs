//! Disk image containers end to end through the CLI: a real partitioned disk converted
//! with `qemu-img` to qcow2, VMDK and VHD (and wrapped in an XVA archive), backed up,
//! restored to raw and to each format, and compared with `qemu-img compare`. Also: the
//! same guest disk in different containers dedups, VM configuration files travel with
//! the snapshot, and damaged containers fail with a clear error.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use vmvault_tests::*;

/// `qemu-img convert -O FMT [-o OPTS] [-c] src dst`.
fn convert(src: &Path, dst: &Path, fmt: &str, opts: &[&str]) {
    let mut args: Vec<String> = vec!["convert".into(), "-f".into(), "raw".into()];
    args.extend(["-O".into(), fmt.into()]);
    args.extend(opts.iter().map(|s| s.to_string()));
    args.push(src.display().to_string());
    args.push(dst.display().to_string());
    sh("qemu-img", &args);
}

/// Asserts that `qemu-img compare` finds `img` (in `fmt`) and the raw `reference` equal.
fn assert_compare(img: &Path, fmt: &str, reference: &Path) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", fmt, "-F", "raw"])
        .arg(img)
        .arg(reference)
        .output()
        .expect("qemu-img runs");
    assert!(
        out.status.success(),
        "qemu-img compare {} ({fmt}) vs {}: {}{}",
        img.display(),
        reference.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts that `qemu-img check` accepts `img`.
fn assert_check(img: &Path, fmt: &str) {
    let out = Command::new("qemu-img")
        .args(["check", "-f", fmt])
        .arg(img)
        .output()
        .expect("qemu-img runs");
    assert!(
        out.status.success(),
        "qemu-img check {} ({fmt}): {}{}",
        img.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Case {
    file: &'static str,
    qemu_fmt: &'static str,
    opts: &'static [&'static str],
    source_format: &'static str,
}

const CASES: &[Case] = &[
    Case {
        file: "d-qcow2.qcow2",
        qemu_fmt: "qcow2",
        opts: &[],
        source_format: "qcow2",
    },
    Case {
        file: "d-qcow2z.qcow2",
        qemu_fmt: "qcow2",
        opts: &["-c", "-o", "compression_type=zlib"],
        source_format: "qcow2",
    },
    Case {
        file: "d-qcow2zstd.qcow2",
        qemu_fmt: "qcow2",
        opts: &["-c", "-o", "compression_type=zstd"],
        source_format: "qcow2",
    },
    Case {
        file: "d-sparse.vmdk",
        qemu_fmt: "vmdk",
        opts: &["-o", "subformat=monolithicSparse"],
        source_format: "vmdk",
    },
    Case {
        file: "d-stream.vmdk",
        qemu_fmt: "vmdk",
        opts: &["-o", "subformat=streamOptimized"],
        source_format: "vmdk",
    },
    Case {
        file: "d-flat.vmdk",
        qemu_fmt: "vmdk",
        opts: &["-o", "subformat=monolithicFlat"],
        source_format: "vmdk",
    },
    Case {
        file: "d-2gb.vmdk",
        qemu_fmt: "vmdk",
        opts: &["-o", "subformat=twoGbMaxExtentSparse"],
        source_format: "vmdk",
    },
    Case {
        file: "d-dyn.vhd",
        qemu_fmt: "vpc",
        opts: &["-o", "subformat=dynamic"],
        source_format: "vhd",
    },
    Case {
        file: "d-fixed.vhd",
        qemu_fmt: "vpc",
        opts: &["-o", "subformat=fixed"],
        source_format: "vhd",
    },
];

/// A small real disk: GPT, EFI FAT and ext4 with real files, sparse.
fn reference_disk(v: &Vault) -> PathBuf {
    let img = v.path("ref.raw");
    build_gpt_image(&img, &GptSpec::small(11));
    img
}

#[test]
fn every_container_backs_up_the_guest_disk_and_restores_to_raw() {
    let v = Vault::init();
    let reference = reference_disk(&v);
    let first = v.backup("ref", &[&reference]);
    let repo_after_first = dir_bytes(&v.path("repo"));
    let alloc = allocated(&reference);
    for c in CASES {
        let img = v.path(c.file);
        convert(&reference, &img, c.qemu_fmt, c.opts);
        let b = v.backup(c.file, &[&img]);
        let d = &b["disks"][0];
        assert!(
            d["source_format"]
                .as_str()
                .is_some_and(|f| f.starts_with(c.source_format)),
            "{}: {d}",
            c.file
        );
        // Only what the container allocates is read, never the whole logical disk
        // (a fixed VHD has no allocation map of its own; holes in flat VMDK extent files
        // are found with SEEK_DATA).
        let read = b["read_bytes"].as_u64().unwrap();
        // qemu maps a flat extent as all data; the file's own holes are what count there.
        let container = if c.file == "d-flat.vmdk" {
            allocated(&v.path("d-flat-flat.vmdk"))
        } else {
            qemu_allocated(&img, c.qemu_fmt)
        };
        if c.file != "d-fixed.vhd" {
            assert!(
                read <= container + MIB && container <= alloc.max(read) + 32 * MIB,
                "{}: read {read} bytes, the container allocates {container}, the raw {alloc}",
                c.file
            );
        }
        // The guest data is already in the repository: nothing new but metadata.
        assert!(
            b["new_bytes"].as_u64().unwrap() < 2 * MIB,
            "{}: same guest disk stored {} new bytes: {b}",
            c.file,
            b["new_bytes"]
        );
        let out = v.path(&format!("{}.raw", c.file));
        v.restore(b["id"].as_str().unwrap(), &out, &[]);
        assert_compare(&out, "raw", &reference);
    }
    let growth = dir_bytes(&v.path("repo")) - repo_after_first;
    assert!(
        growth < first["stored_bytes"].as_u64().unwrap() / 10,
        "{} containers of the same disk grew the repository by {growth} bytes",
        CASES.len()
    );
}

#[test]
fn restore_writes_every_output_format_that_qemu_accepts() {
    let v = Vault::init();
    let reference = reference_disk(&v);
    let img = v.path("web01-disk0.qcow2");
    convert(&reference, &img, "qcow2", &[]);
    let b = v.backup("web01", &[&img]);
    let id = b["id"].as_str().unwrap();
    let outputs: &[(&str, &[&str], &str)] = &[
        ("out.qcow2", &["--format", "qcow2"], "qcow2"),
        (
            "out-sparse.vmdk",
            &["--format", "vmdk", "--vmdk-subformat", "monolithicSparse"],
            "vmdk",
        ),
        (
            "out-stream.vmdk",
            &["--format", "vmdk", "--vmdk-subformat", "streamOptimized"],
            "vmdk",
        ),
        ("out-dyn.vhd", &["--format", "vhd"], "vpc"),
        (
            "out-fixed.vhd",
            &["--format", "vhd", "--vhd-subformat", "fixed"],
            "vpc",
        ),
    ];
    for (file, args, qfmt) in outputs {
        let out = v.path(file);
        v.restore(id, &out, args);
        if *qfmt != "vpc" {
            assert_check(&out, qfmt);
        }
        assert_compare(&out, qfmt, &reference);
        // What vmvault wrote, vmvault reads back as the same disk.
        let again = v.backup("again", &[&out]);
        assert_eq!(again["new_chunks"], 0, "{file}: {again}");
    }
    // Sparse outputs stay small: the 128 MiB disk has a few MiB of data.
    let q = v.path("out.qcow2");
    assert!(file_size(&q) < 64 * MIB, "qcow2 output is not sparse");
}

#[test]
fn qcow2_backing_chain_is_followed_and_override_works() {
    let v = Vault::init();
    let reference = reference_disk(&v);
    let base = v.path("base.qcow2");
    convert(&reference, &base, "qcow2", &[]);
    let top = v.path("top.qcow2");
    sh(
        "qemu-img",
        [
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            top.to_str().unwrap(),
        ],
    );
    let b = v.backup("chain", &[&top]);
    let out = v.path("chain.raw");
    v.restore(b["id"].as_str().unwrap(), &out, &[]);
    assert_compare(&out, "raw", &reference);

    // The backing file moved: --backing points at it.
    let moved = v.path("moved-base.qcow2");
    std::fs::rename(&base, &moved).unwrap();
    let mut a = v.cmd();
    a.args(["backup", "--vm", "chain"]).arg(&top);
    let o = run_command(a, Stdio::null());
    o.assert_fails(exit::FAILURE, &["base.qcow2"]);
    let b2 = v.backup_with("chain", &[&top], &["--backing", moved.to_str().unwrap()]);
    assert_eq!(b2["new_chunks"], 0, "{b2}");
}

#[test]
fn config_files_travel_with_the_snapshot() {
    let v = Vault::init();
    let reference = reference_disk(&v);
    let xml = v.path("web01.xml");
    std::fs::write(&xml, "<domain type='kvm'><name>web01</name></domain>\n").unwrap();
    let nvram = v.path("web01_VARS.fd");
    let mut vars = vec![0u8; 540_672];
    vars[..8].copy_from_slice(b"_FVH\x01\x02\x03\x04");
    vars[300_000..300_010].copy_from_slice(b"BootOrder\0");
    std::fs::write(&nvram, &vars).unwrap();
    let b = v.backup_with(
        "web01",
        &[&reference],
        &[
            "--config",
            xml.to_str().unwrap(),
            "--config",
            nvram.to_str().unwrap(),
        ],
    );
    let snaps = v.snapshots();
    let configs: Vec<&str> = snaps[0]["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(configs, ["web01.xml", "web01_VARS.fd"]);
    let dir = v.path("restored/");
    v.restore(b["id"].as_str().unwrap(), &dir, &[]);
    assert_same(&xml, &dir.join("web01.xml"));
    assert_same(&nvram, &dir.join("web01_VARS.fd"));
    assert_same(&reference, &dir.join("ref.raw"));
    // --no-config leaves them out.
    let dir2 = v.path("restored2/");
    v.restore(b["id"].as_str().unwrap(), &dir2, &["--no-config"]);
    assert!(!dir2.join("web01.xml").exists());
}

#[test]
fn damaged_containers_fail_with_a_clear_error_and_no_snapshot() {
    let v = Vault::init();
    let reference = reference_disk(&v);
    let img = v.path("bad.qcow2");
    convert(&reference, &img, "qcow2", &[]);
    // Truncate the image to half its length: tables and clusters point past the end.
    let len = file_size(&img);
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(len / 2).unwrap();
    let mut c = v.cmd();
    c.args(["backup", "--vm", "bad"]).arg(&img);
    let o = run_command(c, Stdio::null());
    o.assert_fails(exit::FAILURE, &["bad.qcow2", "qcow2"]);
    assert!(v.snapshots().is_empty());

    let vmdk = v.path("bad.vmdk");
    convert(
        &reference,
        &vmdk,
        "vmdk",
        &["-o", "subformat=monolithicSparse"],
    );
    // Point the grain directory far past the end of the file.
    let mut bytes = std::fs::read(&vmdk).unwrap();
    bytes[56..64].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&vmdk, &bytes).unwrap();
    let mut c = v.cmd();
    c.args(["backup", "--vm", "bad"]).arg(&vmdk);
    let o = run_command(c, Stdio::null());
    o.assert_fails(exit::FAILURE, &["bad.vmdk"]);
    assert!(v.snapshots().is_empty());
}

/// Bytes `qemu-img map` reports as data in `img`.
fn qemu_allocated(img: &Path, fmt: &str) -> u64 {
    let out = sh(
        "qemu-img",
        ["map", "--output=json", "-f", fmt, img.to_str().unwrap()],
    );
    let map: serde_json::Value = serde_json::from_str(&out).expect("qemu-img map JSON");
    map.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum()
}

/// Total bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    total
}

#[test]
fn xva_round_trips_through_stdin_and_stdout() {
    let v = Vault::init();
    let reference = reference_disk(&v);
    let second = v.path("data.raw");
    {
        let f = std::fs::File::create(&second).unwrap();
        f.set_len(40 * MIB + 4096).unwrap();
    }
    let mut rng = Rng::new(5);
    write_random(&second, 3 * MIB + 17, 2 * MIB, &mut rng);
    let b = v.backup("xen01", &[&reference, &second]);

    // Restore the VM as one XVA archive on stdout.
    let xva = v.path("xen01.xva");
    let mut c = v.cmd();
    c.args([
        "restore",
        b["id"].as_str().unwrap(),
        "--format",
        "xva",
        "--target",
        "-",
    ]);
    c.stdout(std::fs::File::create(&xva).unwrap());
    let status = c.status().unwrap();
    assert!(status.success());
    let listing = sh("tar", ["-tvf", xva.to_str().unwrap()]);
    assert!(
        listing.lines().next().unwrap().ends_with("ova.xml"),
        "{listing}"
    );
    assert!(listing.contains(".checksum"), "{listing}");

    // Back it up from standard input, as `xe vm-export ... | vmvault backup -` does.
    let mut c = v.cmd();
    c.args(["--json", "backup", "--vm", "xen01", "-"]);
    let o = run_command(c, Stdio::from(std::fs::File::open(&xva).unwrap()));
    o.assert_ok();
    let b2 = o.json();
    let disks = b2["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2, "{b2}");
    assert_eq!(disks[0]["source_format"], "xva");
    // Same guest data: nothing new but the archive's ova.xml (one small chunk).
    assert!(b2["new_chunks"].as_u64().unwrap() <= 1, "{b2}");
    assert!(b2["new_bytes"].as_u64().unwrap() < 256 * KIB, "{b2}");
    let snaps = v.snapshots();
    let last = snaps.iter().find(|s| s["id"] == b2["id"]).unwrap();
    assert_eq!(last["configs"][0]["name"], "ova.xml");

    // Its disks restore to the original bytes.
    let dir = v.path("from-xva/");
    v.restore(b2["id"].as_str().unwrap(), &dir, &[]);
    let names: Vec<String> = disks
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect();
    assert_compare(&dir.join(format!("{}.raw", names[0])), "raw", &reference);
    assert_compare(&dir.join(format!("{}.raw", names[1])), "raw", &second);
    assert!(dir.join("ova.xml").exists());

    // A damaged archive (one flipped byte in a block) fails and stores no snapshot.
    let mut bytes = std::fs::read(&xva).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    let bad = v.path("bad.xva");
    std::fs::write(&bad, &bytes).unwrap();
    let before = v.snapshots().len();
    let mut c = v.cmd();
    c.args(["backup", "--vm", "xen01"]).arg(&bad);
    run_command(c, Stdio::null()).assert_fails(exit::FAILURE, &["bad.xva"]);
    assert_eq!(v.snapshots().len(), before);
}

#[test]
fn stream_optimized_vmdk_streams_to_stdout() {
    let v = Vault::init();
    let reference = reference_disk(&v);
    let b = v.backup("esx01", &[&reference]);
    let out = v.path("esx01.vmdk");
    let mut c = v.cmd();
    c.args([
        "restore",
        b["id"].as_str().unwrap(),
        "--format",
        "vmdk",
        "--vmdk-subformat",
        "streamOptimized",
        "--target",
        "-",
    ]);
    c.stdout(std::fs::File::create(&out).unwrap());
    assert!(c.status().unwrap().success());
    assert_check(&out, "vmdk");
    assert_compare(&out, "vmdk", &reference);
    // Other formats cannot stream.
    let mut c = v.cmd();
    c.args([
        "restore",
        b["id"].as_str().unwrap(),
        "--format",
        "qcow2",
        "--target",
        "-",
    ]);
    run_command(c, Stdio::null()).assert_fails(exit::USAGE, &["standard output"]);
}

#[test]
fn unsupported_containers_empty_streams_and_misuse_are_refused() {
    let v = Vault::init();
    // A VirtualBox VDI is not read as if its file bytes were the disk.
    let vdi = v.path("v.vdi");
    sh(
        "qemu-img",
        ["create", "-q", "-f", "vdi", vdi.to_str().unwrap(), "64M"],
    );
    let mut c = v.cmd();
    c.args(["backup", "--vm", "bad"]).arg(&vdi);
    run_command(c, Stdio::null()).assert_fails(exit::FAILURE, &["v.vdi", "VirtualBox VDI"]);
    assert!(v.snapshots().is_empty());
    // ... unless the user asks for the bytes as they are.
    v.backup_with("bytes", &[&vdi], &["--format", "raw"]);

    // An empty pipe (an exporter that failed) is not a disk.
    let mut c = v.cmd();
    c.args(["backup", "--vm", "empty", "-"]);
    run_command(c, Stdio::null()).assert_fails(exit::FAILURE, &["empty"]);
    assert_eq!(v.snapshots().len(), 1);

    // Options that do not apply are usage errors.
    let raw = v.path("r.raw");
    std::fs::write(&raw, vec![1u8; 65536]).unwrap();
    let mut c = v.cmd();
    c.args(["backup", "--vm", "x", "--backing", "/nonexistent"])
        .arg(&raw);
    run_command(c, Stdio::null()).assert_fails(exit::USAGE, &["--backing"]);
    let mut c = v.cmd();
    c.args([
        "restore",
        "latest",
        "--vm",
        "bytes",
        "--format",
        "qcow2",
        "--vhd-subformat",
        "fixed",
        "--target",
    ])
    .arg(v.path("o.qcow2"));
    run_command(c, Stdio::null()).assert_fails(exit::USAGE, &["--vhd-subformat"]);
    let mut c = v.cmd();
    c.args([
        "restore", "latest", "--vm", "bytes", "--format", "qcow2", "--target", "-",
    ]);
    run_command(c, Stdio::null()).assert_fails(exit::USAGE, &["standard output"]);
}

#[test]
fn a_conflicting_target_stops_the_restore_before_anything_is_written() {
    let v = Vault::init();
    let a = v.path("a.raw");
    let b = v.path("b.raw");
    for p in [&a, &b] {
        std::fs::write(p, vec![7u8; 1 << 20]).unwrap();
    }
    let snap = v.backup("two", &[&a, &b]);
    let dir = v.path("out/");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("b.raw"), b"keep me").unwrap();
    let mut c = v.cmd();
    c.args(["restore", snap["id"].as_str().unwrap(), "--target"])
        .arg(&dir);
    run_command(c, Stdio::null()).assert_fails(exit::FAILURE, &["b.raw", "nothing was written"]);
    assert!(
        !dir.join("a.raw").exists(),
        "a.raw was written before the conflict"
    );
    assert_eq!(std::fs::read(dir.join("b.raw")).unwrap(), b"keep me");
}

#[test]
fn listing_into_a_closed_pipe_does_not_panic() {
    let v = Vault::init();
    let raw = v.path("r.raw");
    std::fs::write(&raw, vec![1u8; 65536]).unwrap();
    v.backup("p", &[&raw]);
    let mut c = v.cmd();
    c.args(["snapshots"]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    // Close the read end before vmvault writes anything.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
