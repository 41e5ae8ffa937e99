//! `vmvault forget`, `vmvault prune` and `vmvault unlock`: retention and reclaiming space.

use crate::{context, human, Cli};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use std::time::Duration;
use vmvault_repo::backend::FileKind;
use vmvault_repo::forget::{judge, GroupVerdict, KeepPolicy, Selection};
use vmvault_repo::prune::{prune, PruneOptions, PruneProgress, PruneReport};

/// Arguments of `vmvault forget`.
#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Only snapshots of this VM.
    #[arg(long)]
    pub vm: Option<String>,
    /// Only snapshots with this tag (repeat: all of them).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Keep the newest N snapshots (of each VM and host).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_hourly: u32,
    /// ... days.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_daily: u32,
    /// ... weeks (Monday to Sunday, UTC).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_weekly: u32,
    /// ... months.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_monthly: u32,
    /// ... years.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_yearly: u32,
    /// Keep every snapshot taken within this long of the newest (e.g. 7d, 36h).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub keep_within: Option<Duration>,
    /// Allow removing every snapshot of a VM (otherwise its newest always stays).
    #[arg(long)]
    pub allow_remove_all: bool,
    /// Run prune afterwards.
    #[arg(long)]
    pub prune: bool,
    /// Show what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With --prune: repack packs whose unused share exceeds this (percent).
    #[arg(long, default_value_t = 5.0, value_name = "PERCENT")]
    pub max_unused: f64,
}

/// Arguments of `vmvault prune`.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Repack packs whose unused share exceeds this (percent); packs with nothing in use
    /// are always deleted.
    #[arg(long, default_value_t = 5.0, value_name = "PERCENT")]
    pub max_unused: f64,
    /// Show what would be deleted and repacked, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn print_verdicts(groups: &[GroupVerdict], dry_run: bool) {
    for g in groups {
        let keep = g.snapshots.iter().filter(|v| v.keep).count();
        println!(
            "VM {} on {}: keep {keep}, {} {}",
            g.vm,
            g.host,
            if dry_run { "would remove" } else { "remove" },
            g.snapshots.len() - keep
        );
        for v in &g.snapshots {
            println!(
                "  {}  {:<20}  {:<6}  {}",
                &v.id[..12],
                v.time.get(..19).unwrap_or(&v.time).replace('T', " "),
                if v.keep { "keep" } else { "remove" },
                v.reasons.join(", ")
            );
        }
    }
}

fn validate_percent(p: f64) -> Result<()> {
    if !(0.0..=100.0).contains(&p) {
        bail!("--max-unused must be between 0 and 100, not {p}");
    }
    Ok(())
}

/// Runs `vmvault forget`.
pub fn forget(cli: &Cli, a: &ForgetArgs) -> Result<i32> {
    validate_percent(a.max_unused)?;
    let policy = KeepPolicy {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
        within: a.keep_within,
    };
    if policy.is_empty() {
        return Err(crate::exit::UsageError(
            "no keep rule given (--keep-last, --keep-daily, --keep-within, ...): forget would remove every snapshot".into(),
        )
        .into());
    }
    let repo = context::open(cli)?;
    let lock = if a.dry_run {
        None
    } else {
        Some(context::lock(cli, &repo, "forget", true)?)
    };
    let (snaps, bad) = repo.list_snapshots().map_err(|e| anyhow!(e))?;
    for e in &bad {
        eprintln!("vmvault: warning: skipping an unreadable snapshot: {e}");
    }
    let sel = Selection {
        vm: a.vm.clone(),
        tags: a.tags.clone(),
        allow_remove_all: a.allow_remove_all,
    };
    let groups = judge(&snaps, &policy, &sel);
    let mut removed = Vec::new();
    if let Some(l) = &lock {
        l.health().check().map_err(|e| anyhow!(e))?;
    }
    if !a.dry_run {
        for v in groups.iter().flat_map(|g| &g.snapshots).filter(|v| !v.keep) {
            repo.backend()
                .remove(FileKind::Snapshot, &v.id)
                .with_context(|| format!("cannot remove snapshot {}", &v.id[..12]))?;
            removed.push(v.id.clone());
        }
    }
    let mut pruned = None;
    if a.prune && !a.dry_run {
        let cache = context::cache(cli, &repo)?;
        let health = lock.as_ref().map(|l| l.health());
        pruned = Some(run_prune(cli, &repo, &cache, a.max_unused, false, health)?);
    }
    drop(lock);
    if cli.json {
        let mut v = serde_json::json!({
            "dry_run": a.dry_run,
            "groups": groups,
            "removed": removed,
        });
        if let Some(p) = &pruned {
            v["prune"] = serde_json::to_value(p)?;
        }
        println!("{v}");
    } else if !cli.quiet {
        print_verdicts(&groups, a.dry_run);
        if !a.dry_run {
            println!("removed {} snapshot(s)", removed.len());
        }
        if let Some(p) = &pruned {
            print_prune(p);
        }
    }
    Ok(crate::exit::OK)
}

fn run_prune(
    cli: &Cli,
    repo: &vmvault_repo::Repository,
    cache: &vmvault_repo::cache::IndexCache,
    max_unused: f64,
    dry_run: bool,
    lock: Option<vmvault_repo::lock::LockHealth>,
) -> Result<PruneReport> {
    let opts = PruneOptions {
        max_unused_percent: max_unused,
        dry_run,
        cancel: Some(crate::cancel_flag().clone()),
        lock,
    };
    let progress = std::sync::Arc::new(PruneProgress::default());
    let p = progress.clone();
    let ticker = crate::progress::Ticker::start(crate::progress::wanted(cli), move || {
        use std::sync::atomic::Ordering;
        (
            p.snapshots_done.load(Ordering::Relaxed),
            p.snapshots_total.load(Ordering::Relaxed),
            format!(
                "snapshots marked, {} packs repacked",
                p.repacked.load(Ordering::Relaxed)
            ),
        )
    });
    let r = prune(repo, cache, &opts, &progress);
    drop(ticker);
    r.map_err(|e| anyhow!(e)).context("prune failed")
}

fn print_prune(r: &PruneReport) {
    let verb = if r.dry_run { "would" } else { "did" };
    println!(
        "prune ({verb}): {} packs ({}), {} in use by {} snapshot(s)",
        r.packs,
        human::bytes(r.bytes),
        human::bytes(r.used_bytes),
        r.snapshots
    );
    println!(
        "  delete {} unused and {} unindexed pack(s), repack {} into {} new ({}), keep {}",
        r.packs_deleted,
        r.packs_unindexed,
        r.packs_repacked,
        r.packs_written,
        human::bytes(r.bytes_written),
        r.packs_kept
    );
    println!(
        "  frees {} ; {} unused left in kept packs; index files: {} written, {} deleted",
        human::bytes(r.bytes_deleted.saturating_sub(r.bytes_written)),
        human::bytes(r.unused_bytes_left),
        r.index_files_written,
        r.index_files_deleted
    );
}

/// Runs `vmvault prune`.
pub fn run(cli: &Cli, a: &PruneArgs) -> Result<i32> {
    validate_percent(a.max_unused)?;
    let repo = context::open(cli)?;
    let lock = context::lock(cli, &repo, "prune", !a.dry_run)?;
    let cache = context::cache(cli, &repo)?;
    let r = run_prune(
        cli,
        &repo,
        &cache,
        a.max_unused,
        a.dry_run,
        Some(lock.health()),
    )?;
    if cli.json {
        let mut v = serde_json::to_value(&r)?;
        v["requests"] = serde_json::to_value(repo.backend().counters().snapshot())?;
        println!("{v}");
    } else if !cli.quiet {
        print_prune(&r);
    }
    Ok(crate::exit::OK)
}

/// Runs `vmvault unlock`: removes stale locks only.
pub fn unlock(cli: &Cli) -> Result<i32> {
    let repo = context::open(cli)?;
    let removed = vmvault_repo::lock::remove_stale(&repo).map_err(|e| anyhow!(e))?;
    let live = vmvault_repo::lock::list_locks(&repo).map_err(|e| anyhow!(e))?;
    if cli.json {
        let show = |l: &vmvault_repo::lock::FoundLock| {
            serde_json::json!({
                "name": l.name, "operation": l.info.operation, "exclusive": l.info.exclusive,
                "host": l.info.host, "pid": l.info.pid, "time": l.info.time, "stale": l.stale,
            })
        };
        println!(
            "{}",
            serde_json::json!({
                "removed": removed.iter().map(show).collect::<Vec<_>>(),
                "live": live.iter().map(show).collect::<Vec<_>>(),
            })
        );
    } else if !cli.quiet {
        for l in &removed {
            println!(
                "removed stale lock of {} (pid {} on {}): {}",
                l.info.operation,
                l.info.pid,
                l.info.host,
                l.stale.as_deref().unwrap_or("")
            );
        }
        for l in &live {
            println!(
                "kept live {} lock of {} (pid {} on {}, since {})",
                if l.info.exclusive {
                    "exclusive"
                } else {
                    "shared"
                },
                l.info.operation,
                l.info.pid,
                l.info.host,
                l.info.time
            );
        }
        if removed.is_empty() && live.is_empty() {
            println!("no locks");
        }
    }
    Ok(crate::exit::OK)
}
