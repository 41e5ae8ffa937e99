//! `vmvault backup`.

use crate::exit::UsageError;
use crate::{context, human, progress, Cli};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use vmvault_ingest::detect::DETECT_HEAD;
use vmvault_ingest::guest::view::DiskSourceView;
use vmvault_ingest::open::detect_supported;
use vmvault_ingest::DiskSource;
use vmvault_ingest::{
    open_disk, probe_path, xva, ImageFormat, OpenOptions, RawFile, Sequential, SequentialDisk,
    StreamDisk,
};
use vmvault_repo::backup::{backup, BackupRequest, ConfigInput, DiskInput, Progress};
use vmvault_repo::catalog::CatalogSource;

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
    /// The format of every PATH (raw, qcow2, vmdk, vhd, xva); default: detected from
    /// each file's magic bytes.
    #[arg(long)]
    pub format: Option<ImageFormat>,
    /// The backing file of the (single) image, replacing the one its header names.
    #[arg(long)]
    pub backing: Option<PathBuf>,
    /// A VM configuration file to store with the snapshot (.vmx, .nvram, libvirt XML,
    /// OVMF vars, ova.xml, ...); repeatable.
    #[arg(long = "config", value_name = "FILE")]
    pub configs: Vec<PathBuf>,
    /// Do not catalogue the guest file systems (their catalogs make `ls` and `find`
    /// answer without reading the guest; single-file restore works either way).
    #[arg(long)]
    pub no_catalog: bool,
    /// Disk images (raw, qcow2, VMDK, VHD, XVA), block devices (e.g. LVM volumes), or '-'
    /// for standard input (a raw disk or an XVA stream).
    #[arg(required = true)]
    pub paths: Vec<String>,
}

/// Largest configuration file accepted: these are small text or NVRAM files.
const MAX_CONFIG_BYTES: u64 = 64 << 20;

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
    if a.backing.is_some() && a.paths.len() != 1 {
        return usage("--backing applies to a single image; give one PATH".into());
    }
    Ok(())
}

/// Reads the configuration files named with `--config`.
fn read_configs(a: &BackupArgs) -> Result<Vec<ConfigInput>> {
    let mut out = Vec::new();
    for path in &a.configs {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| anyhow!("--config {}: not a file name", path.display()))?;
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        if !meta.is_file() || meta.len() > MAX_CONFIG_BYTES {
            bail!(
                "config file {} is not a regular file of at most {} MiB",
                path.display(),
                MAX_CONFIG_BYTES >> 20
            );
        }
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        out.push(ConfigInput { name, bytes });
    }
    Ok(out)
}

/// The disks (and, for an XVA archive, the `ova.xml`) read from one PATH.
struct Opened {
    disks: Vec<DiskInput>,
    configs: Vec<ConfigInput>,
    /// Second, random-access readers of the disks, for cataloguing (none for streams).
    catalogs: Vec<CatalogSource>,
}

/// Opens an XVA stream: one disk per VDI, and its ova.xml as a config file.
fn open_xva<R: Read + Send + 'static>(reader: R, shown: &str) -> Result<Opened> {
    let archive = xva::open_stream(reader, shown)?;
    let ova = archive.ova_xml.clone();
    let names: Vec<String> = archive.disks.iter().map(|d| d.name.clone()).collect();
    let disks = names
        .into_iter()
        .zip(archive.into_disks())
        .map(|(name, source)| DiskInput {
            name,
            source_path: shown.to_string(),
            source,
        })
        .collect();
    Ok(Opened {
        disks,
        configs: vec![ConfigInput {
            name: "ova.xml".into(),
            bytes: ova,
        }],
        catalogs: Vec::new(),
    })
}

fn open_path(a: &BackupArgs, path: &str, name: Option<String>) -> Result<Opened> {
    let one = |name: Option<String>, source_path: String, source: Box<dyn SequentialDisk>| Opened {
        disks: vec![DiskInput {
            name: name.unwrap_or_else(|| default_disk_name(path)),
            source_path,
            source,
        }],
        configs: Vec::new(),
        catalogs: Vec::new(),
    };
    // A second reader of the same disk for the cataloguer, which reads at random offsets
    // while the backup streams through the first.
    let with_catalog = |mut o: Opened, second: Box<dyn DiskSource>| {
        if !a.no_catalog {
            let disk = o.disks[0].name.clone();
            o.catalogs.push(CatalogSource {
                view: Arc::new(DiskSourceView::new(second, disk.clone())),
                disk,
            });
        }
        o
    };
    if path == "-" {
        let mut stdin = std::io::stdin();
        let mut head = Vec::with_capacity(DETECT_HEAD);
        (&mut stdin)
            .take(DETECT_HEAD as u64)
            .read_to_end(&mut head)
            .context("cannot read standard input")?;
        let format = match a.format {
            Some(f) => f,
            None => detect_supported(&head, &[], "stdin")?,
        };
        let stream = std::io::Cursor::new(head).chain(stdin);
        return match format {
            ImageFormat::Xva => {
                if name.is_some() || a.size.is_some() {
                    return Err(UsageError(
                        "--disk-name and --size do not apply to an XVA archive (its disks and \
                         their sizes come from its ova.xml)"
                            .into(),
                    )
                    .into());
                }
                open_xva(stream, "stdin")
            }
            ImageFormat::Raw => {
                let s = StreamDisk::new(stream, "stdin");
                let s = match a.size {
                    Some(n) => s.with_expected_size(n),
                    None => s,
                };
                Ok(one(name, "stdin".into(), Box::new(s)))
            }
            other => bail!(
                "standard input holds a {other} image, which needs random access: \
                 give the file's path, or stream a raw disk or an XVA archive"
            ),
        };
    }
    let p = Path::new(path);
    let shown = std::fs::canonicalize(p)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| path.to_string());
    let format = match a.format {
        Some(f) => f,
        None => probe_path(p)?,
    };
    match format {
        ImageFormat::Xva => {
            if name.is_some() {
                return Err(UsageError(
                    "--disk-name does not apply to an XVA archive (its disks are named from \
                     its ova.xml)"
                        .into(),
                )
                .into());
            }
            let file = std::fs::File::open(p).with_context(|| format!("cannot open {path}"))?;
            open_xva(std::io::BufReader::with_capacity(1 << 20, file), &shown)
        }
        ImageFormat::Raw => {
            if a.backing.is_some() {
                return Err(UsageError(format!(
                    "--backing given, but {path} is a raw disk, which has no backing file"
                ))
                .into());
            }
            let raw = RawFile::open(p)?;
            let second = RawFile::open(p)?;
            Ok(with_catalog(
                one(name, shown, Box::new(Sequential::new(raw))),
                Box::new(second),
            ))
        }
        other => {
            let opts = OpenOptions {
                format: Some(other),
                backing: a.backing.clone(),
            };
            let disk = open_disk(p, &opts)?;
            let second = open_disk(p, &opts)?;
            Ok(with_catalog(
                one(name, shown, Box::new(Sequential::new(disk))),
                second,
            ))
        }
    }
}

fn open_inputs(a: &BackupArgs) -> Result<(Vec<DiskInput>, Vec<ConfigInput>, Vec<CatalogSource>)> {
    let mut disks = Vec::new();
    let mut catalogs = Vec::new();
    let mut configs = read_configs(a)?;
    for (i, path) in a.paths.iter().enumerate() {
        let opened = open_path(a, path, a.disk_names.get(i).cloned())
            .with_context(|| format!("cannot read {path}"))?;
        disks.extend(opened.disks);
        configs.extend(opened.configs);
        catalogs.extend(opened.catalogs);
    }
    Ok((disks, configs, catalogs))
}

/// Runs `vmvault backup`.
pub fn run(cli: &Cli, a: &BackupArgs) -> Result<i32> {
    validate(a)?;
    let (inputs, configs, catalogs) = open_inputs(a)?;
    let repo = context::open(cli)?;
    let lock = crate::context::lock(cli, &repo, "backup", false)?;
    let parent = repo
        .latest_snapshot(Some(&a.vm))
        .context("cannot list the repository's snapshots")?
        .map(|(name, _)| name);
    // Direct source reads for a VM's first backup (compression-bound), the page cache and
    // its readahead for later ones (read-bound); VMVAULT_DIRECT_IO overrides.
    vmvault_ingest::set_direct_reads(vmvault_ingest::direct_reads_wanted(
        std::env::var_os(vmvault_ingest::DIRECT_IO_ENV).as_deref(),
        parent.is_none(),
    ));
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
        parent,
        tags: a.tags.clone(),
        disks: inputs,
        configs,
        catalogs,
        threads: a.threads,
        cancel: Some(crate::cancel_flag().clone()),
        commit_check: Some(lock.health()),
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
        v["requests"] = serde_json::to_value(repo.backend().counters().snapshot())?;
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
        if repo.backend().is_remote() {
            println!(
                "  requests      {}",
                crate::cmd_sync::requests_text(&repo.backend().counters().snapshot())
            );
        }
        if s.catalogued_volumes > 0 {
            println!(
                "  catalogued    {:>12}  ({} file system{})",
                format!("{} entries", s.catalog_entries),
                s.catalogued_volumes,
                if s.catalogued_volumes == 1 { "" } else { "s" }
            );
        }
    }
    for w in &s.catalog_warnings {
        eprintln!("vmvault: warning: catalog: {w}");
    }
    Ok(crate::exit::OK)
}
