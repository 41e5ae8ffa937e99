//! `vmvault demo`: a complete backup / change / backup / restore / verify cycle on a
//! generated disk, in a temporary directory, with no root and no external tools.

use crate::{demo_disk, human, Cli};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use vmvault_ingest::{RawFile, Sequential};
use vmvault_repo::backend::LocalBackend;
use vmvault_repo::backup::{backup, BackupRequest, BackupSummary, DiskInput, Progress};
use vmvault_repo::cache::IndexCache;
use vmvault_repo::check::{check, CheckProgress};
use vmvault_repo::format::keyfile::KdfParams;
use vmvault_repo::restore::{restore_disk, RestoreOptions, RestoreProgress};
use vmvault_repo::Repository;

/// Arguments of `vmvault demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Work in this directory and keep it (default: a temporary directory, removed).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Logical size of the sample disk in MiB.
    #[arg(long, default_value_t = 2048)]
    pub disk_mib: u64,
    /// Data written into the sample disk, in MiB.
    #[arg(long, default_value_t = 256)]
    pub data_mib: u64,
}

fn backup_once(repo: &Repository, cache: &IndexCache, disk: &Path) -> Result<BackupSummary> {
    let source = Sequential::new(RawFile::open(disk)?);
    let req = BackupRequest {
        vm: "demo-vm".into(),
        parent: repo.latest_snapshot(Some("demo-vm"))?.map(|(name, _)| name),
        tags: vec!["demo".into()],
        disks: vec![DiskInput {
            name: "demo-disk0".into(),
            source_path: disk.display().to_string(),
            source: Box::new(source),
        }],
        configs: Vec::new(),
        catalogs: Vec::new(),
        threads: 0,
        cancel: Some(crate::cancel_flag().clone()),
        commit_check: None,
    };
    Ok(backup(repo, cache, req, &Progress::default())?)
}

fn same_content(a: &Path, b: &Path) -> Result<bool> {
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

fn print_backup(title: &str, s: &BackupSummary) {
    println!(
        "{title}: snapshot {}  read {}  new {}  stored {}  in {:.2} s ({} read)",
        &s.snapshot[..12],
        human::bytes(s.read_bytes),
        human::bytes(s.new_bytes),
        human::bytes(s.stored_bytes),
        s.duration_secs,
        human::rate(s.read_bytes, s.duration_secs)
    );
}

/// Runs the demo.
pub fn run(cli: &Cli, a: &DemoArgs) -> Result<i32> {
    if a.data_mib == 0 || a.disk_mib < a.data_mib * 2 + 128 {
        bail!("--disk-mib must be at least 2 × --data-mib + 128");
    }
    let tmp;
    let dir = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("vmvault-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let disk = dir.join("demo-disk0.img");
    let restored = dir.join("restored.img");
    let repo_dir = dir.join("repo");
    println!("vmvault demo in {}", dir.display());

    let written = demo_disk::create(&disk, a.disk_mib << 20, a.data_mib << 20)
        .context("cannot create the sample disk")?;
    let alloc = std::fs::metadata(&disk)?.blocks() * 512;
    println!(
        "1. sample disk: {} logical, GPT with EFI and root partitions, {} of data ({} allocated)",
        human::bytes(a.disk_mib << 20),
        human::bytes(written),
        human::bytes(alloc)
    );

    let backend = Arc::new(LocalBackend::new(&repo_dir));
    let repo = Repository::init(
        backend,
        b"demo password",
        KdfParams::default_v1(),
        vmvault_chunker::ChunkerParams::default_v1(),
    )?;
    let cache = IndexCache::open(Some(&dir.join("cache")), &repo)?.0;
    println!("2. repository created at {}", repo_dir.display());

    let first = backup_once(&repo, &cache, &disk)?;
    print_backup("3. first backup ", &first);

    // About a quarter of a page write per MiB of data: a day of light guest activity.
    let pages = (a.data_mib / 4).max(16);
    let changed = demo_disk::change(&disk, pages, a.data_mib << 20)?;
    println!(
        "4. guest activity: {pages} scattered 4 KiB page writes and a new 4 MiB log ({} changed)",
        human::bytes(changed)
    );
    let second = backup_once(&repo, &cache, &disk)?;
    print_backup("5. second backup", &second);

    let started = Instant::now();
    let (_, snap) = repo.resolve_snapshot(&second.snapshot, None)?;
    let r = restore_disk(
        &repo,
        &cache,
        &snap.disks[0],
        &restored,
        &RestoreOptions::default(),
        &RestoreProgress::default(),
    )?;
    let secs = started.elapsed().as_secs_f64();
    let identical = same_content(&disk, &restored)?;
    let restored_alloc = std::fs::metadata(&restored)?.blocks() * 512;
    println!(
        "6. restore: {} in {secs:.2} s ({}), {} allocated (sparse), byte-for-byte identical: {}",
        human::bytes(r.logical_bytes),
        human::rate(r.data_bytes, secs),
        human::bytes(restored_alloc),
        if identical { "yes" } else { "NO" }
    );
    let report = check(
        &repo,
        &cache,
        vmvault_repo::check::ReadData::All,
        &CheckProgress::default(),
    )?;
    let stats = vmvault_repo::stats::stats(&repo, &cache)?;
    println!(
        "7. check --read-data: {}",
        if report.errors.is_empty() {
            "no errors".to_string()
        } else {
            report.errors.join("; ")
        }
    );
    println!(
        "\nrepository: {} in packs for {} of data in 2 snapshots: dedup ratio {:.1}x; second backup added {:.2}% of the first",
        human::bytes(stats.stored_bytes),
        human::bytes(stats.allocated_bytes),
        stats.dedup_ratio,
        100.0 * second.stored_bytes as f64 / first.stored_bytes.max(1) as f64
    );
    if cli.json {
        println!(
            "{}",
            serde_json::json!({
                "first": first, "second": second, "restore": r,
                "identical": identical, "check_errors": report.errors, "stats": stats,
            })
        );
    }
    if !identical || !report.errors.is_empty() {
        bail!("demo verification failed");
    }
    Ok(crate::exit::OK)
}
