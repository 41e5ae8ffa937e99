//! The chunk-size curve: how the average FastCDC chunk size trades index size against
//! deduplication of small scattered changes, measured on a real file-system image.
//!
//! For each average size (64 KiB .. 1 MiB, `ChunkerParams::with_avg`), in a fresh
//! repository: back up the image; overwrite N random 4 KiB pages (N = 100 and 1000, at
//! 4 KiB-aligned offsets inside allocated data) of a working copy, back it up again and
//! measure the repository's growth; then put the pages back. The same pages are used for
//! every average size.
//!
//! ```text
//! chunk_curve [--image IMG] [--data-mib 768] [--logical 4G] [--threads 0]
//!             [--avg-kib 64,128,256,512,1024] [--changes 100,1000] [--seed 1]
//!             [--out benches/results/chunk_curve.csv] [--workdir /tmp]
//! ```
//! Without `--image`, an image is built with `mkimage.sh` (GPT, EFI FAT partition and an
//! ext4 partition made with `mkfs.ext4 -d` from real installed files).

use std::fmt::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use vmvault_benches::{
    backup_image, cpu_seconds, data_extents, dir_bytes, dir_files, human_bytes, init_repo,
    random_pages, scribble_pages, temp_cache, Rng,
};
use vmvault_chunker::ChunkerParams;

struct Args {
    image: Option<PathBuf>,
    data_mib: u64,
    logical: String,
    threads: usize,
    avgs_kib: Vec<u32>,
    changes: Vec<usize>,
    seed: u64,
    out: PathBuf,
    workdir: PathBuf,
}

fn usage() -> ! {
    eprintln!(
        "usage: chunk_curve [--image IMG] [--data-mib N] [--logical SIZE] [--threads N] \
         [--avg-kib LIST] [--changes LIST] [--seed N] [--out CSV] [--workdir DIR]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        image: None,
        data_mib: 768,
        logical: "4G".into(),
        threads: 0,
        avgs_kib: vec![64, 128, 256, 512, 1024],
        changes: vec![100, 1000],
        seed: 1,
        out: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/results/chunk_curve.csv"
        )),
        workdir: std::env::temp_dir(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        let list = |s: String| -> Vec<u64> {
            s.split(',')
                .map(|v| v.trim().parse().unwrap_or_else(|_| usage()))
                .collect()
        };
        match flag.as_str() {
            "--image" => a.image = Some(val().into()),
            "--data-mib" => a.data_mib = val().parse().unwrap_or_else(|_| usage()),
            "--logical" => a.logical = val(),
            "--threads" => a.threads = val().parse().unwrap_or_else(|_| usage()),
            "--avg-kib" => a.avgs_kib = list(val()).into_iter().map(|v| v as u32).collect(),
            "--changes" => a.changes = list(val()).into_iter().map(|v| v as usize).collect(),
            "--seed" => a.seed = val().parse().unwrap_or_else(|_| usage()),
            "--out" => a.out = val().into(),
            "--workdir" => a.workdir = val().into(),
            _ => usage(),
        }
    }
    a
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One row of the curve.
struct Row {
    avg_kib: u32,
    chunks: u64,
    mean_chunk: u64,
    index_files: u64,
    index_bytes: u64,
    index_entries: u64,
    entries_per_gib: f64,
    repo_bytes: u64,
    backup_secs: f64,
    backup_cpu: f64,
    backup_mbps: f64,
    /// (N, repo growth, new chunks, seconds, CPU seconds) per change count.
    changes: Vec<(usize, u64, u64, f64, f64)>,
}

fn main() {
    let args = parse_args();
    let tmp = tempfile::Builder::new()
        .prefix("vmvault-chunk-curve.")
        .tempdir_in(&args.workdir)
        .expect("temp dir");
    let work = tmp.path().join("work.img");
    match &args.image {
        Some(img) => {
            run(Command::new("cp")
                .arg("--sparse=always")
                .arg(img)
                .arg(&work));
        }
        None => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("mkimage.sh");
            run(Command::new("bash")
                .arg(script)
                .arg(&work)
                .arg(&args.logical)
                .arg(args.data_mib.to_string())
                .arg(tmp.path()));
        }
    }
    let extents = data_extents(&work);
    let allocated: u64 = extents.iter().map(|e| e.1).sum();
    let logical = std::fs::metadata(&work).expect("stat image").len();
    eprintln!(
        "chunk_curve: image {} logical, {} allocated in {} extents",
        human_bytes(logical),
        human_bytes(allocated),
        extents.len()
    );

    // The same random pages for every average size; their original bytes to put back.
    let change_sets: Vec<(usize, Vec<u64>, Vec<u8>, u64)> = args
        .changes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let mut rng = Rng::new(args.seed.wrapping_add(i as u64 * 7919));
            let pages = random_pages(&extents, 4096, n, &mut rng);
            let f = std::fs::File::open(&work).expect("open image");
            let mut orig = vec![0u8; n * 4096];
            for (k, &off) in pages.iter().enumerate() {
                f.read_exact_at(&mut orig[k * 4096..(k + 1) * 4096], off)
                    .expect("read page");
            }
            (n, pages, orig, rng.next_u64())
        })
        .collect();

    let mut rows = Vec::new();
    for &avg_kib in &args.avgs_kib {
        let repo_dir = tmp.path().join(format!("repo-{avg_kib}k"));
        let repo = init_repo(&repo_dir, ChunkerParams::with_avg(avg_kib << 10));
        let cache = temp_cache(&repo);
        let (t, cpu) = (Instant::now(), cpu_seconds());
        let s = backup_image(&repo, &cache, &work, "curve", args.threads);
        let secs = t.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu;
        let index_dir = repo_dir.join("index");
        let data_bytes = s.read_bytes - s.zero_bytes;
        let mut row = Row {
            avg_kib,
            chunks: s.chunks,
            mean_chunk: data_bytes / s.chunks.max(1),
            index_files: dir_files(&index_dir),
            index_bytes: dir_bytes(&index_dir),
            index_entries: cache.chunk_count() as u64,
            entries_per_gib: cache.chunk_count() as f64
                / (s.read_bytes as f64 / f64::from(1 << 30)),
            repo_bytes: dir_bytes(&repo_dir),
            backup_secs: secs,
            backup_cpu: cpu,
            backup_mbps: s.read_bytes as f64 / secs / 1e6,
            changes: Vec::new(),
        };
        eprintln!(
            "avg {avg_kib} KiB: {} chunks (mean {}), repo {}, {secs:.1} s ({cpu:.1} s CPU)",
            row.chunks,
            human_bytes(row.mean_chunk),
            human_bytes(row.repo_bytes),
        );
        for (n, pages, orig, seed) in &change_sets {
            let mut rng = Rng::new(*seed);
            scribble_pages(&work, pages, 4096, &mut rng);
            let before = dir_bytes(&repo_dir);
            let (t, cpu) = (Instant::now(), cpu_seconds());
            let s2 = backup_image(&repo, &cache, &work, "curve", args.threads);
            let secs = t.elapsed().as_secs_f64();
            let cpu = cpu_seconds() - cpu;
            let growth = dir_bytes(&repo_dir) - before;
            eprintln!(
                "  {n} pages changed: +{} ({} new chunks), {secs:.1} s ({cpu:.1} s CPU)",
                human_bytes(growth),
                s2.new_chunks
            );
            row.changes.push((*n, growth, s2.new_chunks, secs, cpu));
            // Put the original pages back.
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&work)
                .expect("open image");
            for (k, &off) in pages.iter().enumerate() {
                f.write_all_at(&orig[k * 4096..(k + 1) * 4096], off)
                    .expect("restore page");
            }
            f.sync_all().expect("sync image");
        }
        drop(cache);
        drop(repo);
        std::fs::remove_dir_all(&repo_dir).expect("remove repository");
        rows.push(row);
    }

    // Markdown on stdout.
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Image: {} logical, {} allocated; threads: {}; load average at the end: {}.\n",
        human_bytes(logical),
        human_bytes(allocated),
        if args.threads == 0 {
            format!(
                "{} (all cores)",
                std::thread::available_parallelism().map_or(1, |n| n.get())
            )
        } else {
            args.threads.to_string()
        },
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut head = String::from(
        "| avg | chunks | mean chunk | index files | index bytes | index entries/GiB | repo after 1st backup | 1st backup MB/s | 1st backup CPU s |",
    );
    let mut rule = String::from("|---|---|---|---|---|---|---|---|---|");
    for n in &args.changes {
        let _ = write!(
            head,
            " growth {n}×4K | ×changed | 2nd backup s ({n}) | CPU s ({n}) |"
        );
        rule.push_str("---|---|---|---|");
    }
    let _ = writeln!(md, "{head}\n{rule}");
    for r in &rows {
        let _ = write!(
            md,
            "| {} KiB | {} | {} | {} | {} | {:.0} | {} | {:.0} | {:.1} |",
            r.avg_kib,
            r.chunks,
            human_bytes(r.mean_chunk),
            r.index_files,
            human_bytes(r.index_bytes),
            r.entries_per_gib,
            human_bytes(r.repo_bytes),
            r.backup_mbps,
            r.backup_cpu
        );
        for (n, growth, _, secs, cpu) in &r.changes {
            let _ = write!(
                md,
                " {} | {:.1} | {:.2} | {:.1} |",
                human_bytes(*growth),
                *growth as f64 / (*n as f64 * 4096.0),
                secs,
                cpu
            );
        }
        md.push('\n');
    }
    print!("{md}");

    // CSV.
    let mut csv = String::from(
        "avg_kib,chunks,mean_chunk_bytes,index_files,index_bytes,index_entries,index_entries_per_gib,\
         repo_bytes_after_first,first_backup_secs,first_backup_cpu_secs,first_backup_mb_per_s,allocated_bytes,logical_bytes",
    );
    for n in &args.changes {
        let _ = write!(
            csv,
            ",growth_bytes_{n},new_chunks_{n},second_backup_secs_{n}"
        );
    }
    csv.push('\n');
    for r in &rows {
        let _ = write!(
            csv,
            "{},{},{},{},{},{},{:.1},{},{:.3},{:.2},{:.1},{},{}",
            r.avg_kib,
            r.chunks,
            r.mean_chunk,
            r.index_files,
            r.index_bytes,
            r.index_entries,
            r.entries_per_gib,
            r.repo_bytes,
            r.backup_secs,
            r.backup_cpu,
            r.backup_mbps,
            allocated,
            logical
        );
        for (_, growth, new_chunks, secs, cpu) in &r.changes {
            let _ = write!(csv, ",{growth},{new_chunks},{secs:.3},{cpu:.2}");
        }
        csv.push('\n');
    }
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).expect("create output directory");
    }
    std::fs::write(&args.out, csv).expect("write CSV");
    let md_path = args.out.with_extension("md");
    std::fs::write(&md_path, md).expect("write markdown");
    eprintln!(
        "chunk_curve: wrote {} and {}",
        args.out.display(),
        md_path.display()
    );
}
