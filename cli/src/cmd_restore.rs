//! `vmvault restore`.

use crate::exit::UsageError;
use crate::image_out::{create_file, disk_writer, OutputFormat, VhdSubformat, VmdkLayout};
use crate::{context, human, progress, Cli};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use vmvault_ingest::{xva, ImageFormat};
use vmvault_repo::cache::IndexCache;
use vmvault_repo::format::snapshot::{Snapshot, SnapshotDisk};
use vmvault_repo::restore::{
    restore_disk, restore_disk_ordered, RestoreOptions, RestoreProgress, RestoreSummary,
};
use vmvault_repo::Repository;

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
    /// Worker threads (default: two per core, or more for object stores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Image format to write: raw (sparse), qcow2, vmdk, vhd, or xva (the whole VM in
    /// one archive; `--target -` streams it to standard output).
    #[arg(long, default_value = "raw")]
    pub format: ImageFormat,
    /// VMDK layout: monolithicSparse or streamOptimized (what vSphere/OVF import takes).
    /// [default: monolithicSparse]
    #[arg(long, value_enum)]
    pub vmdk_subformat: Option<VmdkLayout>,
    /// VHD layout [default: dynamic].
    #[arg(long, value_enum)]
    pub vhd_subformat: Option<VhdSubformat>,
    /// Do not write the snapshot's configuration files into the target directory.
    #[arg(long)]
    pub no_config: bool,
    /// Restore this file or directory tree from inside a guest file system instead of
    /// whole disks: DISK/PART/path, written to TARGET/DISK/PART/path with its
    /// permissions, times and symlinks (owners too when run as root); repeatable.
    #[arg(long = "include", value_name = "PATH")]
    pub includes: Vec<String>,
}

/// Runs `vmvault restore`.
pub fn run(cli: &Cli, a: &RestoreArgs) -> Result<i32> {
    if !a.includes.is_empty() {
        if a.disk.is_some() || a.format != ImageFormat::Raw || a.no_config {
            return Err(UsageError(
                "--include restores files; --disk, --format and --no-config apply to disk restores"
                    .into(),
            )
            .into());
        }
        let b = crate::browse::Browser::open(cli, &a.snapshot, a.vm.as_deref())?;
        return crate::restore_files::run(cli, &b, &a.includes, &a.target, a.overwrite);
    }
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
    let usage = |m: &str| -> anyhow::Error { UsageError(m.to_string()).into() };
    if a.format == ImageFormat::Vhdx {
        return Err(usage("restore cannot write VHDX; use --format vhd"));
    }
    if a.vmdk_subformat.is_some() && a.format != ImageFormat::Vmdk {
        return Err(usage("--vmdk-subformat applies only to --format vmdk"));
    }
    if a.vhd_subformat.is_some() && a.format != ImageFormat::Vhd {
        return Err(usage("--vhd-subformat applies only to --format vhd"));
    }
    let fmt = OutputFormat {
        format: a.format,
        vmdk: a.vmdk_subformat.unwrap_or(VmdkLayout::MonolithicSparse),
        vhd: a.vhd_subformat.unwrap_or(VhdSubformat::Dynamic),
    };
    if a.format == ImageFormat::Xva {
        return restore_xva(cli, a, &repo, &id, &snap, &disks);
    }
    if a.target.as_os_str() == "-" {
        if a.format != ImageFormat::Vmdk || fmt.vmdk != VmdkLayout::StreamOptimized {
            return Err(usage(
                "only --format xva and --format vmdk --vmdk-subformat streamOptimized can be \
                 written to standard output ('-')",
            ));
        }
        let [d] = disks.as_slice() else {
            bail!(
                "the snapshot has {} disks; choose one with --disk to stream it",
                disks.len()
            );
        };
        return restore_vmdk_stream(cli, a, &repo, &id, d);
    }
    // One disk goes to the target itself unless the target is a directory.
    let into_dir = disks.len() > 1
        || a.target.is_dir()
        || a.target.as_os_str().as_encoded_bytes().ends_with(b"/");
    if into_dir {
        std::fs::create_dir_all(&a.target)
            .with_context(|| format!("cannot create directory {}", a.target.display()))?;
    }
    let _lock = crate::context::lock(cli, &repo, "restore", false)?;
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
    let path_of = |d: &SnapshotDisk| -> PathBuf {
        if into_dir {
            a.target.join(format!("{}.{}", d.name, fmt.extension()))
        } else {
            a.target.clone()
        }
    };
    let with_configs = into_dir && a.disk.is_none() && !a.no_config;
    // Refuse before writing anything, so a conflict never leaves a partial restore.
    if !a.overwrite {
        let config_paths = snap
            .configs
            .iter()
            .filter(|_| with_configs)
            .map(|c| a.target.join(&c.name));
        for p in disks.iter().map(&path_of).chain(config_paths) {
            let m = std::fs::metadata(&p);
            if m.as_ref().is_ok_and(|m| m.is_file() && m.len() > 0) {
                bail!(
                    "{} exists; refusing to overwrite it (use --overwrite); nothing was written",
                    p.display()
                );
            }
        }
    }
    let mut results = Vec::new();
    for d in &disks {
        let path = path_of(d);
        let s = if a.format == ImageFormat::Raw {
            restore_disk(&repo, &cache, d, Path::new(&path), &opts, &prog).map_err(|e| anyhow!(e))
        } else {
            restore_to_image(&repo, &cache, d, &path, &fmt, &opts, &prog)
        }
        .with_context(|| format!("restore of disk {} failed", d.name))?;
        results.push((d.name.clone(), path, s));
    }
    let mut configs = Vec::new();
    if with_configs {
        for c in &snap.configs {
            let path = a.target.join(&c.name);
            restore_disk(&repo, &cache, &c.as_disk(), &path, &opts, &prog)
                .map_err(|e| anyhow!(e))
                .with_context(|| format!("restore of config file {} failed", c.name))?;
            configs.push((c.name.clone(), path));
        }
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
                "format": a.format.name(),
            })).collect::<Vec<_>>(),
            "configs": configs.iter().map(|(n, p)| serde_json::json!({
                "name": n, "path": p,
            })).collect::<Vec<_>>(),
            "requests": repo.backend().counters().snapshot(),
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
        for (n, p) in &configs {
            println!("restored config file {n} to {}", p.display());
        }
        let data: u64 = results.iter().map(|r| r.2.data_bytes).sum();
        println!("  duration {secs:.2} s ({} data)", human::rate(data, secs));
        if repo.backend().is_remote() {
            println!(
                "  requests {}",
                crate::cmd_sync::requests_text(&repo.backend().counters().snapshot())
            );
        }
    }
    Ok(crate::exit::OK)
}

/// Restores one disk into a new image file in a format other than raw.
fn restore_to_image(
    repo: &Repository,
    cache: &IndexCache,
    d: &SnapshotDisk,
    path: &Path,
    fmt: &OutputFormat,
    opts: &RestoreOptions,
    prog: &RestoreProgress,
) -> Result<RestoreSummary> {
    let out = create_file(path, opts.overwrite)?;
    let shown = path.display().to_string();
    let mut writer = disk_writer(fmt, out, &shown, d.size)?;
    let summary = restore_disk_ordered(
        repo,
        cache,
        d,
        &mut |offset, data| Ok(writer.write_data(offset, data)?),
        opts,
        prog,
    )
    .map_err(|e| anyhow!(e))?;
    writer.finish()?;
    Ok(summary)
}

/// `restore --format xva`: every chosen disk in one archive, with the stored ova.xml when
/// the VM came from XVA (and its disks still match it), a generated one otherwise.
fn restore_xva(
    cli: &Cli,
    a: &RestoreArgs,
    repo: &Repository,
    id: &str,
    snap: &Snapshot,
    disks: &[SnapshotDisk],
) -> Result<i32> {
    let _lock = crate::context::lock(cli, repo, "restore", false)?;
    let cache = context::cache(cli, repo)?;
    let opts = RestoreOptions {
        overwrite: a.overwrite,
        threads: a.threads,
        cancel: Some(crate::cancel_flag().clone()),
    };
    let prog = RestoreProgress::default();
    let sizes: Vec<(String, u64)> = disks.iter().map(|d| (d.name.clone(), d.size)).collect();
    let stored = match snap.configs.iter().find(|c| c.name == "ova.xml") {
        Some(c) if c.size <= 64 << 20 => {
            let mut bytes = vec![0u8; c.size as usize];
            restore_disk_ordered(
                repo,
                &cache,
                &c.as_disk(),
                &mut |off, data| {
                    let end = off as usize + data.len();
                    let slot = bytes.get_mut(off as usize..end).ok_or_else(|| {
                        vmvault_repo::RepoError::Invalid("ova.xml longer than recorded".into())
                    })?;
                    slot.copy_from_slice(data);
                    Ok(())
                },
                &opts,
                &prog,
            )
            .map_err(|e| anyhow!(e))
            .context("cannot restore the stored ova.xml")?;
            Some(bytes)
        }
        _ => None,
    };
    // The stored ova.xml fits when it lists the same disks with the same sizes.
    let (ova, refs) = match stored.and_then(|x| {
        let listed = xva::ova_disks(&x).ok()?;
        let same =
            listed.len() == sizes.len() && listed.iter().zip(&sizes).all(|(l, s)| l.1 == s.1);
        same.then(|| (x, listed.into_iter().map(|l| l.0).collect::<Vec<_>>()))
    }) {
        Some(found) => found,
        None => xva::generate_ova_xml(&snap.vm, &sizes),
    };
    let ref_sizes: Vec<(String, u64)> = refs.into_iter().zip(sizes.iter().map(|s| s.1)).collect();
    let to_stdout = a.target.as_os_str() == "-";
    let path = if a.target.is_dir() || a.target.as_os_str().as_encoded_bytes().ends_with(b"/") {
        std::fs::create_dir_all(&a.target)
            .with_context(|| format!("cannot create directory {}", a.target.display()))?;
        a.target.join(format!("{}.xva", snap.vm))
    } else {
        a.target.clone()
    };
    let out: Box<dyn std::io::Write + Send> = if to_stdout {
        Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::io::stdout(),
        ))
    } else {
        Box::new(create_file(&path, a.overwrite)?)
    };
    let shown = if to_stdout {
        "stdout".to_string()
    } else {
        path.display().to_string()
    };
    let started = Instant::now();
    let mut w = xva::XvaWriter::new(out, &shown, &ova, &ref_sizes)?;
    let mut data = 0u64;
    for (i, d) in disks.iter().enumerate() {
        let s = restore_disk_ordered(
            repo,
            &cache,
            d,
            &mut |off, bytes| Ok(w.write_data(i, off, bytes)?),
            &opts,
            &prog,
        )
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("restore of disk {} failed", d.name))?;
        w.finish_disk(i)?;
        data += s.data_bytes;
    }
    let written = w.finish()?;
    let secs = started.elapsed().as_secs_f64();
    if cli.json && !to_stdout {
        println!(
            "{}",
            serde_json::json!({
                "snapshot": id, "format": "xva", "path": path, "bytes": written,
                "data_bytes": data, "duration_secs": secs,
                "disks": disks.iter().map(|d| &d.name).collect::<Vec<_>>(),
            })
        );
    } else if !cli.quiet {
        eprintln!(
            "restored {} disk(s) of snapshot {} as XVA ({} data, {} written) to {shown} in {secs:.2} s",
            disks.len(),
            &id[..12],
            human::bytes(data),
            human::bytes(written)
        );
    }
    Ok(crate::exit::OK)
}

/// `restore --format vmdk --vmdk-subformat streamOptimized --target -`: one disk as a
/// streamOptimized VMDK on standard output.
fn restore_vmdk_stream(
    cli: &Cli,
    a: &RestoreArgs,
    repo: &Repository,
    id: &str,
    d: &SnapshotDisk,
) -> Result<i32> {
    let _lock = crate::context::lock(cli, repo, "restore", false)?;
    let cache = context::cache(cli, repo)?;
    let opts = RestoreOptions {
        overwrite: a.overwrite,
        threads: a.threads,
        cancel: Some(crate::cancel_flag().clone()),
    };
    let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
    let mut w =
        vmvault_ingest::vmdk::create_stream_writer(out, &format!("{}.vmdk", d.name), d.size)?;
    let started = Instant::now();
    let s = restore_disk_ordered(
        repo,
        &cache,
        d,
        &mut |off, bytes| Ok(w.write_data(off, bytes)?),
        &opts,
        &RestoreProgress::default(),
    )
    .map_err(|e| anyhow!(e))
    .with_context(|| format!("restore of disk {} failed", d.name))?;
    let written = w.finish()?;
    if !cli.quiet {
        eprintln!(
            "restored disk {} of snapshot {} as streamOptimized VMDK ({} data, {} written) to stdout in {:.2} s",
            d.name,
            &id[..12],
            human::bytes(s.data_bytes),
            human::bytes(written),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(crate::exit::OK)
}
