//! Reading each image format against reading the same disk raw (issue 4's target: at most
//! 1.2× the raw time), and how many bytes each reader takes from its files compared with
//! the disk's allocated size.
//!
//! ```text
//! format_read IMAGE.raw [--workdir DIR] [--rounds 3] [--out benches/results/format_read.md]
//! ```
//! The raw image (e.g. one built by `mkimage.sh`) is converted with `qemu-img` to qcow2
//! (plain and compressed), VMDK (monolithicSparse, streamOptimized) and VHD (dynamic);
//! each is then read the way a backup reads it (aligned 4 MiB segments, data extents only,
//! through `vmvault_ingest`), warm in the page cache so that the figure is the reader's
//! CPU cost, not the disk's. Bytes read from files are this process's `rchar` delta
//! (`/proc/self/io`). Each figure is the best of `--rounds` runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use vmvault_ingest::{open_disk, OpenOptions, Sequential, SequentialDisk};

const SEGMENT: usize = 4 << 20;

struct Row {
    name: String,
    file_bytes: u64,
    secs: f64,
    data: u64,
    rchar: u64,
}

fn rchar() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("rchar: ").map(|v| v.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(0)
}

/// Reads the whole disk as the backup pipeline does; returns (seconds, data bytes, rchar).
fn read_all(path: &Path) -> (f64, u64, u64) {
    let before = rchar();
    let started = Instant::now();
    let disk = open_disk(path, &OpenOptions::default()).expect("open image");
    let mut seq = Sequential::new(disk);
    let mut buf = Vec::new();
    let mut data = 0u64;
    while let Some(seg) = seq.next_segment(SEGMENT, &mut buf).expect("read segment") {
        data += seg
            .extents
            .iter()
            .filter(|e| e.kind == vmvault_ingest::ExtentKind::Data)
            .map(|e| e.len)
            .sum::<u64>();
        std::hint::black_box(&buf);
    }
    (started.elapsed().as_secs_f64(), data, rchar() - before)
}

fn qemu_convert(src: &Path, dst: &Path, fmt: &str, opts: &[&str]) {
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", fmt])
        .args(opts)
        .arg(src)
        .arg(dst)
        .status()
        .expect("qemu-img runs");
    assert!(status.success(), "qemu-img convert to {fmt} failed");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut image = None;
    let mut workdir = std::env::temp_dir();
    let mut rounds = 3;
    let mut out = PathBuf::from("benches/results/format_read.md");
    while let Some(a) = args.next() {
        match a.as_str() {
            "--workdir" => workdir = args.next().expect("--workdir DIR").into(),
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--rounds N")
            }
            "--out" => out = args.next().expect("--out FILE").into(),
            other => image = Some(PathBuf::from(other)),
        }
    }
    let image = image.expect("usage: format_read IMAGE.raw [--workdir DIR] [--rounds N]");
    let dir = tempfile::tempdir_in(&workdir).expect("work directory");
    let variants: &[(&str, &str, &[&str])] = &[
        ("raw", "", &[]),
        ("qcow2", "qcow2", &[]),
        ("qcow2 (zlib-compressed)", "qcow2", &["-c"]),
        (
            "vmdk monolithicSparse",
            "vmdk",
            &["-o", "subformat=monolithicSparse"],
        ),
        (
            "vmdk streamOptimized",
            "vmdk",
            &["-o", "subformat=streamOptimized"],
        ),
        ("vhd dynamic", "vpc", &["-o", "subformat=dynamic"]),
    ];
    let mut rows = Vec::new();
    for (i, (name, fmt, opts)) in variants.iter().enumerate() {
        let path = if fmt.is_empty() {
            image.clone()
        } else {
            let p = dir.path().join(format!("img{i}.{fmt}"));
            qemu_convert(&image, &p, fmt, opts);
            p
        };
        // Warm the page cache, then keep the best round.
        let _ = read_all(&path);
        let mut best = (f64::MAX, 0, 0);
        for _ in 0..rounds {
            let r = read_all(&path);
            if r.0 < best.0 {
                best = r;
            }
        }
        let file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        eprintln!("format_read: {name}: {:.3} s", best.0);
        rows.push(Row {
            name: name.to_string(),
            file_bytes,
            secs: best.0,
            data: best.1,
            rchar: best.2,
        });
    }
    let raw_secs = rows[0].secs;
    let mut md = String::from(
        "| format | file size MiB | read s | × raw time | data extents MiB | bytes read from files MiB |\n|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.1} | {:.3} | {:.2} | {:.1} | {:.1} |\n",
            r.name,
            r.file_bytes as f64 / 1048576.0,
            r.secs,
            r.secs / raw_secs,
            r.data as f64 / 1048576.0,
            r.rchar as f64 / 1048576.0
        ));
    }
    print!("{md}");
    if let Some(parent) = out.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&out, md).expect("write results");
}
