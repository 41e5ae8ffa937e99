//! `vmvault`: deduplicating, encrypted backup of virtual-machine disk images.
//!
//! This binary only parses arguments, opens the repository, shows progress and prints
//! results; the work is done by the `vmvault-repo` and `vmvault-ingest` crates.

mod browse;
mod cmd_backup;
mod cmd_check;
mod cmd_diff;
mod cmd_dump;
mod cmd_find;
mod cmd_key;
mod cmd_ls;
mod cmd_mount;
mod cmd_prune;
mod cmd_repair;
mod cmd_restore;
mod cmd_snapshots;
mod cmd_sync;
mod context;
mod demo;
mod demo_disk;
mod exit;
mod human;
mod image_out;
mod progress;
mod restore_files;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Deduplicating, encrypted backups of virtual-machine disk images.
#[derive(Parser, Debug)]
#[command(name = "vmvault", version, about, long_about = None)]
pub struct Cli {
    /// Repository location: a directory, file://PATH, s3://bucket/prefix, gs://… or az://….
    #[arg(short = 'r', long = "repo", env = "VMVAULT_REPOSITORY", global = true)]
    pub repo: Option<String>,

    /// Read the password from this file (first line).
    #[arg(long, env = "VMVAULT_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,

    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,

    /// Print nothing but errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Directory of the local cache (default: $XDG_CACHE_HOME/vmvault or ~/.cache/vmvault).
    #[arg(long, env = "VMVAULT_CACHE_DIR", global = true)]
    pub cache_dir: Option<PathBuf>,

    /// Use a temporary cache, rebuilt from the repository and discarded at exit.
    #[arg(long, global = true)]
    pub no_cache: bool,

    /// Wait this long (e.g. 10m) for a conflicting lock to go away instead of failing.
    #[arg(long, env = "VMVAULT_RETRY_LOCK", global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub retry_lock: Option<std::time::Duration>,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new, empty repository (or a mirror of another, for sync).
    Init(context::InitArgs),
    /// Back up the disks of one VM into a new snapshot.
    Backup(cmd_backup::BackupArgs),
    /// List snapshots.
    Snapshots(cmd_snapshots::SnapshotsArgs),
    /// Restore a snapshot's disks to files or block devices.
    Restore(cmd_restore::RestoreArgs),
    /// Verify the repository's structure, and with --read-data every byte.
    Check(cmd_check::CheckArgs),
    /// Show repository sizes, deduplication ratio, chunks and packs; per VM: logical,
    /// unique and shared stored bytes.
    Stats(cmd_snapshots::StatsArgs),
    /// Changed extents and bytes per disk between two snapshots.
    Diff(cmd_diff::DiffArgs),
    /// List the disks, partitions and guest files of a snapshot.
    Ls(cmd_ls::LsArgs),
    /// Write one guest file of a snapshot to standard output.
    Dump(cmd_dump::DumpArgs),
    /// Search the file catalogs of every snapshot.
    Find(cmd_find::FindArgs),
    /// Mount the snapshots read-only with FUSE: whole disks and guest files.
    Mount(cmd_mount::MountArgs),
    /// Copy snapshots to a mirror repository (off-site), packs verbatim.
    Sync(cmd_sync::SyncArgs),
    /// Remove snapshots by a retention policy (per VM and host), optionally pruning.
    Forget(cmd_prune::ForgetArgs),
    /// Delete data no snapshot uses; repack packs that are mostly unused.
    Prune(cmd_prune::PruneArgs),
    /// Rebuild the index from pack headers, or save what survives of damaged snapshots.
    Repair(cmd_repair::RepairArgs),
    /// Remove stale locks (of processes that are gone) only.
    Unlock,
    /// Manage the passwords that open the repository.
    Key(cmd_key::KeyArgs),
    /// Run a self-contained demonstration in a temporary directory.
    Demo(demo::DemoArgs),
}

/// Makes every allocation of 1 MiB or more a private mapping returned to the system on
/// free. Without it glibc raises its mmap threshold after the first 16 MiB pack buffer is
/// freed and keeps later pack buffers in its heaps, which doubled peak RSS in the
/// measurement recorded in ARCHITECTURE.md ("Memory").
fn fix_malloc_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is called before any other thread
    // exists, with a valid parameter and value, and its failure (return 0) is harmless.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// The error and its causes joined by ": ", leaving out a cause whose text an earlier
/// message already contains (library errors often include their source's text).
fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Lets a closed output pipe end the process quietly, as it does for other Unix tools
/// (`vmvault snapshots | head -1`), instead of a panic message from `println!`: exits
/// with 141 (128 + SIGPIPE), what a shell reports for a process SIGPIPE killed.
/// SIGPIPE itself stays ignored (Rust's default): a write to a socket whose peer went
/// away (an object store restarting) must be an error that is retried, not a silent
/// death of the process.
fn quiet_broken_stdout() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let text = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if text.contains("failed printing to stdout") && text.contains("Broken pipe") {
            std::process::exit(141);
        }
        previous(info)
    }));
}

/// Set by the first SIGINT/SIGTERM; long operations poll it and stop cleanly (their
/// locks are released, nothing half-done is committed). A second signal exits at once.
pub fn cancel_flag() -> &'static std::sync::Arc<std::sync::atomic::AtomicBool> {
    static FLAG: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
        std::sync::OnceLock::new();
    FLAG.get_or_init(Default::default)
}

fn install_signal_handler() {
    use std::sync::atomic::Ordering;
    let flag = cancel_flag().clone();
    let result = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(exit::INTERRUPTED);
        }
        eprintln!("\nvmvault: interrupted, stopping (press Ctrl-C again to quit at once)");
    });
    if let Err(e) = result {
        eprintln!("vmvault: warning: cannot install the interrupt handler: {e}");
    }
}

fn main() {
    fix_malloc_mmap_threshold();
    install_signal_handler();
    // Damaged guest file systems can make a parser crate panic; those panics become
    // errors naming the path, without a panic message.
    vmvault_ingest::guest::install_guarded_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    quiet_broken_stdout();
    let result = match &cli.command {
        Command::Init(a) => context::init(&cli, a),
        Command::Backup(a) => cmd_backup::run(&cli, a),
        Command::Snapshots(a) => cmd_snapshots::run(&cli, a),
        Command::Restore(a) => cmd_restore::run(&cli, a),
        Command::Check(a) => cmd_check::run(&cli, a),
        Command::Stats(a) => cmd_snapshots::stats(&cli, a),
        Command::Diff(a) => cmd_diff::run(&cli, a),
        Command::Ls(a) => cmd_ls::run(&cli, a),
        Command::Dump(a) => cmd_dump::run(&cli, a),
        Command::Find(a) => cmd_find::run(&cli, a),
        Command::Mount(a) => cmd_mount::run(&cli, a),
        Command::Sync(a) => cmd_sync::run(&cli, a),
        Command::Forget(a) => cmd_prune::forget(&cli, a),
        Command::Prune(a) => cmd_prune::run(&cli, a),
        Command::Unlock => cmd_prune::unlock(&cli),
        Command::Repair(a) => cmd_repair::run(&cli, a),
        Command::Key(a) => cmd_key::run(&cli, a),
        Command::Demo(a) => demo::run(&cli, a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("vmvault: error: {}", error_text(&e));
            std::process::exit(exit::code_for(&e));
        }
    }
}
