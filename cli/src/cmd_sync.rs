//! `vmvault sync`: copy snapshots to another repository (an off-site mirror).

use crate::{context, human, progress, Cli};
use anyhow::{anyhow, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use vmvault_repo::backend::RequestCounts;
use vmvault_repo::sync::{self, SyncOptions, SyncProgress};

/// Arguments of `vmvault sync`.
#[derive(Args, Debug)]
pub struct SyncArgs {
    /// The destination repository (a path or URL), made with `init --mirror-of` of this one.
    #[arg(long = "to", value_name = "DEST")]
    pub to: String,
    /// Only snapshots of this VM.
    #[arg(long)]
    pub vm: Option<String>,
    /// Snapshots to copy (id prefixes, or 'latest'); default: all (of --vm).
    pub snapshots: Vec<String>,
    /// Say what would be copied, and what it would cost, without copying.
    #[arg(long)]
    pub dry_run: bool,
    /// The destination's password file (default: the source's password).
    #[arg(long, env = "VMVAULT_TO_PASSWORD_FILE")]
    pub to_password_file: Option<PathBuf>,
}

/// One line summarising requests, e.g. "12 PUT, 3 GET, 2 LIST, 0 DELETE".
pub fn requests_text(r: &RequestCounts) -> String {
    format!(
        "{} PUT, {} GET, {} LIST, {} DELETE ({} up, {} down)",
        r.put,
        r.get,
        r.list,
        r.delete,
        human::bytes(r.bytes_up),
        human::bytes(r.bytes_down)
    )
}

/// Runs `vmvault sync`.
pub fn run(cli: &Cli, a: &SyncArgs) -> Result<i32> {
    let (src, src_pw) = context::open_with_password(cli)?;
    let dst_pw =
        context::other_password(a.to_password_file.as_deref(), "VMVAULT_TO_PASSWORD", src_pw)?;
    let dst_backend = context::open_backend(&a.to, context::cache_root(cli).as_deref())?;
    let dst_location = dst_backend.location();
    let dst = vmvault_repo::Repository::open(dst_backend, &dst_pw)
        .with_context(|| format!("cannot open destination repository {dst_location}"))?;
    let src_lock = crate::context::lock(cli, &src, "sync (source)", false)?;
    let dst_lock = crate::context::lock(cli, &dst, "sync (destination)", false)
        .with_context(|| format!("destination {dst_location}"))?;
    let src_cache = context::cache(cli, &src)?;
    let dst_cache = context::cache(cli, &dst)?;
    let opts = SyncOptions {
        vm: a.vm.clone(),
        snapshots: a.snapshots.clone(),
        cancel: Some(crate::cancel_flag().clone()),
        locks: vec![src_lock.health(), dst_lock.health()],
    };
    let plan = sync::plan(&src, &src_cache, &dst, &dst_cache, &opts)
        .map_err(|e| anyhow!(e))
        .context("cannot plan the sync")?;
    if a.dry_run {
        if cli.json {
            let mut v = serde_json::to_value(&plan)?;
            v["dry_run"] = true.into();
            v["source"] = src.backend().location().into();
            v["destination"] = dst_location.into();
            println!("{v}");
        } else if !cli.quiet {
            let e = plan.estimated_requests;
            println!(
                "would copy {} snapshot(s) ({} already there), {} pack(s) ({}), index {} pack(s) left by an interrupted sync",
                plan.snapshots.len(),
                plan.snapshots_present,
                plan.packs,
                human::bytes(plan.bytes),
                plan.packs_to_index
            );
            println!(
                "estimated requests: {} GET from the source, {} PUT and {} GET to the destination",
                e.source_get, e.destination_put, e.destination_get
            );
            for s in &plan.snapshots {
                println!("  {}", &s[..12]);
            }
        }
        return Ok(crate::exit::OK);
    }
    let progress = Arc::new(SyncProgress::default());
    let p = progress.clone();
    let ticker = progress::Ticker::start(progress::wanted(cli), move || {
        (
            p.done.load(Ordering::Relaxed),
            p.total.load(Ordering::Relaxed),
            format!("{} packs", p.packs.load(Ordering::Relaxed)),
        )
    });
    let result = sync::run(&src, &dst, &dst_cache, &plan, &opts, &progress);
    drop(ticker);
    let s = result
        .map_err(|e| anyhow!(e))
        .context("sync failed (rerun it: what arrived is kept and not sent again)")?;
    if cli.json {
        let mut v = serde_json::to_value(&s)?;
        v["source"] = src.backend().location().into();
        v["destination"] = dst_location.into();
        println!("{v}");
    } else if !cli.quiet {
        println!(
            "copied {} snapshot(s) ({} already there), {} pack(s) ({}), {} index file(s) in {:.2} s ({})",
            s.snapshots_copied.len(),
            s.snapshots_present,
            s.packs_copied,
            human::bytes(s.bytes_copied),
            s.index_files,
            s.duration_secs,
            human::rate(s.bytes_copied, s.duration_secs)
        );
        println!(
            "  source requests       {}",
            requests_text(&s.source_requests)
        );
        println!(
            "  destination requests  {}",
            requests_text(&s.destination_requests)
        );
    }
    Ok(crate::exit::OK)
}
