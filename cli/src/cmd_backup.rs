//! `vmvault backup`.

use crate::{context, human, progress, Cli};
use anyhow::{anyhow, Context, Result};
use clap::Args;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use vmvault_ingest::{RawFile, Sequential, StreamDisk};
use vmvault_repo::backup::{backup, BackupRequest, DiskInput, Progress};

/// Arguments of `vmvault backup`.
#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Name of the VM the disks belong to.
    #[arg(long)]
    pub vm: String,
    /// Tag the snapshot (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Name of the disk read from each PATH, in order (default: the file's stem, or
    /// 'stdin' for '-').
    #[arg(long = "disk-name")]
    pub disk_names: Vec<String>,
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Expected size in bytes of the disk read from standard input: a stream that ends
    /// early (or runs longer) fails the backup instead of storing a wrong-sized disk.
    #[arg(long)]
    pub size: Option<u64>,
    /// Raw disk images, block devices (e.g. LVM volumes), or '-' for standard input.
    #[arg(required = true)]
    pub paths: Vec<String>,
}

/// The default disk name of a path: its file stem (`web01-disk0.img` → `web01-disk0`).
fn default_disk_name(path: &str) -> String {
    if path == "-" {
        return "stdin".into();
    }
    Path::new(path)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.replace('/', "_"))
}

/// Checks the arguments that need no repository, so a typo fails at once (exit 2).
fn validate(a: &BackupArgs) -> Result<()> {
    let usage = |m: String| Err(crate::exit::UsageError(m).into());
    if a.disk_names.len() > a.paths.len() {
        return usage(format!(
            "{} --disk-name given for {} path(s)",
            a.disk_names.len(),
            a.paths.len()
        ));
    }
    let stdin_count = a.paths.iter().filter(|p| *p == "-").count();
    if stdin_count > 1 {
        return usage("standard input ('-') can be given only once".into());
    }
    if a.size.is_some() && stdin_count == 0 {
        return usage("--size applies only to a disk read from standard input ('-')".into());
    }
    Ok(())
}

fn open_inputs(a: &BackupArgs) -> Result<Vec<DiskInput>> {
    let mut inputs = Vec::new();
    for (i, path) in a.paths.iter().enumerate() {
        let name = a
            .disk_names
            .get(i)
            .cloned()
            .unwrap_or_else(|| default_disk_name(path));
        let (source, source_path): (Box<dyn vmvault_ingest::SequentialDisk>, String) =
            if path == "-" {
                let stream = StreamDisk::new(std::io::stdin(), "stdin");
                let stream = match a.size {
                    Some(n) => stream.with_expected_size(n),
                    None => stream,
                };
                (Box::new(stream), "stdin".into())
            } else {
                let raw = RawFile::open(Path::new(path))?;
                let shown = std::fs::canonicalize(path)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| path.clone());
                (Box::new(Sequential::new(raw)), shown)
            };
        inputs.push(DiskInput {
            name,
            source_path,
            source,
        });
    }
    Ok(inputs)
}

/// Runs `vmvault backup`.
pub fn run(cli: &Cli, a: &BackupArgs) -> Result<i32> {
    validate(a)?;
    let inputs = open_inputs(a)?;
    let repo = context::open(cli)?;
    let _lock = vmvault_repo::lock::lock(&repo, "backup", false).map_err(|e| anyhow!(e))?;
    let cache = context::cache(cli, &repo)?;
    let progress = Arc::new(Progress::default());
    let p = progress.clone();
    let ticker = progress::Ticker::start(progress::wanted(cli), move || {
        let chunks = p.chunks.load(Ordering::Relaxed);
        let new = p.new_chunks.load(Ordering::Relaxed);
        let dedup = if chunks == 0 {
            0.0
        } else {
            100.0 * (chunks - new) as f64 / chunks as f64
        };
        (
            p.done.load(Ordering::Relaxed),
            p.total.load(Ordering::Relaxed),
            format!(
                "read {} new {} dedup {dedup:.0}%",
                human::bytes(p.read.load(Ordering::Relaxed)),
                human::bytes(p.new_raw.load(Ordering::Relaxed))
            ),
        )
    });
    let req = BackupRequest {
        vm: a.vm.clone(),
        tags: a.tags.clone(),
        disks: inputs,
        threads: a.threads,
        cancel: Some(crate::cancel_flag().clone()),
    };
    let result = backup(&repo, &cache, req, &progress);
    drop(ticker);
    let s = result
        .map_err(|e| anyhow!(e))
        .context("backup failed; no snapshot was written")?;
    if cli.json {
        let mut v = serde_json::to_value(&s)?;
        v["id"] = s.snapshot.clone().into();
        v["vm"] = s.snapshot_record.vm.clone().into();
        v["time"] = s.snapshot_record.time.clone().into();
        v["disks"] = serde_json::to_value(&s.snapshot_record.disks)?;
        println!("{v}");
    } else if !cli.quiet {
        let d = &s.snapshot_record.disks;
        println!(
            "snapshot {} saved (VM {}, {} disk{})",
            &s.snapshot[..12],
            s.snapshot_record.vm,
            d.len(),
            if d.len() == 1 { "" } else { "s" }
        );
        println!("  logical size  {:>12}", human::bytes(s.logical_bytes));
        println!("  data read     {:>12}", human::bytes(s.read_bytes));
        println!("  zero runs     {:>12}", human::bytes(s.zero_bytes));
        println!(
            "  new data      {:>12}  ({} of {} chunks new)",
            human::bytes(s.new_bytes),
            s.new_chunks,
            s.chunks
        );
        println!(
            "  stored        {:>12}  (after compression and encryption, {} pack{})",
            human::bytes(s.stored_bytes),
            s.packs,
            if s.packs == 1 { "" } else { "s" }
        );
        println!(
            "  duration      {:>10.2} s  ({} logical, {} read)",
            s.duration_secs,
            human::rate(s.logical_bytes, s.duration_secs),
            human::rate(s.read_bytes, s.duration_secs)
        );
    }
    Ok(crate::exit::OK)
}
