//! `vmvault restore`.

use crate::{context, human, progress, Cli};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use vmvault_repo::restore::{restore_disk, RestoreOptions, RestoreProgress};

/// Arguments of `vmvault restore`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id (a unique prefix) or 'latest'.
    pub snapshot: String,
    /// With 'latest': the newest snapshot of this VM.
    #[arg(long)]
    pub vm: Option<String>,
    /// Restore only this disk.
    #[arg(long)]
    pub disk: Option<String>,
    /// Where to write: a file or block device for one disk, a directory for several
    /// (each disk becomes DIR/<disk>.raw).
    #[arg(long)]
    pub target: PathBuf,
    /// Replace an existing non-empty target file, or write onto a block device.
    #[arg(long)]
    pub overwrite: bool,
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Runs `vmvault restore`.
pub fn run(cli: &Cli, a: &RestoreArgs) -> Result<i32> {
    let repo = context::open(cli)?;
    let (id, snap) = repo
        .resolve_snapshot(&a.snapshot, a.vm.as_deref())
        .map_err(|e| anyhow!(e))?;
    let disks: Vec<_> = match &a.disk {
        Some(name) => {
            let d = snap.disks.iter().find(|d| &d.name == name).ok_or_else(|| {
                let names: Vec<&str> = snap.disks.iter().map(|d| d.name.as_str()).collect();
                anyhow!(
                    "snapshot {} has no disk {name:?} (disks: {})",
                    &id[..12],
                    names.join(", ")
                )
            })?;
            vec![d.clone()]
        }
        None => snap.disks.clone(),
    };
    if disks.is_empty() {
        bail!("snapshot {} has no disks", &id[..12]);
    }
    // One disk goes to the target itself unless the target is a directory.
    let into_dir = disks.len() > 1
        || a.target.is_dir()
        || a.target.as_os_str().as_encoded_bytes().ends_with(b"/");
    if into_dir {
        std::fs::create_dir_all(&a.target)
            .with_context(|| format!("cannot create directory {}", a.target.display()))?;
    }
    let _lock = vmvault_repo::lock::lock(&repo, "restore", false).map_err(|e| anyhow!(e))?;
    let cache = context::cache(cli, &repo)?;
    let prog = Arc::new(RestoreProgress::default());
    prog.total
        .store(disks.iter().map(|d| d.size).sum(), Ordering::Relaxed);
    let p = prog.clone();
    let ticker = progress::Ticker::start(progress::wanted(cli), move || {
        (
            p.done.load(Ordering::Relaxed),
            p.total.load(Ordering::Relaxed),
            format!(
                "fetched {}",
                human::bytes(p.fetched.load(Ordering::Relaxed))
            ),
        )
    });
    let started = Instant::now();
    let opts = RestoreOptions {
        overwrite: a.overwrite,
        threads: a.threads,
        cancel: Some(crate::cancel_flag().clone()),
    };
    let mut results = Vec::new();
    for d in &disks {
        let path: PathBuf = if into_dir {
            a.target.join(format!("{}.raw", d.name))
        } else {
            a.target.clone()
        };
        let s = restore_disk(&repo, &cache, d, Path::new(&path), &opts, &prog)
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("restore of disk {} failed", d.name))?;
        results.push((d.name.clone(), path, s));
    }
    drop(ticker);
    let secs = started.elapsed().as_secs_f64();
    if cli.json {
        let v = serde_json::json!({
            "snapshot": id,
            "duration_secs": secs,
            "disks": results.iter().map(|(n, p, s)| serde_json::json!({
                "name": n, "path": p, "logical_bytes": s.logical_bytes,
                "data_bytes": s.data_bytes, "fetched_bytes": s.fetched_bytes,
            })).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else if !cli.quiet {
        for (n, p, s) in &results {
            println!(
                "restored disk {n} ({} logical, {} data) to {}",
                human::bytes(s.logical_bytes),
                human::bytes(s.data_bytes),
                p.display()
            );
        }
        let data: u64 = results.iter().map(|r| r.2.data_bytes).sum();
        println!("  duration {secs:.2} s ({} data)", human::rate(data, secs));
    }
    Ok(crate::exit::OK)
}
