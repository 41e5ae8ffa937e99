//! `vmvault check`.

use crate::{context, human, progress, Cli};
use anyhow::{anyhow, Result};
use clap::Args;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use vmvault_repo::check::{check, CheckProgress};

/// Arguments of `vmvault check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Also read every pack and verify every chunk.
    #[arg(long)]
    pub read_data: bool,
}

/// Runs `vmvault check`; exits 3 when damage is found.
pub fn run(cli: &Cli, a: &CheckArgs) -> Result<i32> {
    let repo = context::open(cli)?;
    let _lock = crate::context::lock(cli, &repo, "check", false)?;
    let cache = context::cache(cli, &repo)?;
    let prog = Arc::new(CheckProgress::default());
    let p = prog.clone();
    let ticker = progress::Ticker::start(progress::wanted(cli) && a.read_data, move || {
        (
            p.packs_done.load(Ordering::Relaxed),
            p.packs_total.load(Ordering::Relaxed),
            "packs".into(),
        )
    });
    let report = check(&repo, &cache, a.read_data, &prog).map_err(|e| anyhow!(e))?;
    drop(ticker);
    let ok = report.errors.is_empty();
    if cli.json {
        let mut v = serde_json::to_value(&report)?;
        v["ok"] = ok.into();
        v["requests"] = serde_json::to_value(repo.backend().counters().snapshot())?;
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for w in &report.warnings {
            if !cli.quiet {
                eprintln!("warning: {w}");
            }
        }
        for e in &report.errors {
            eprintln!("error: {e}");
        }
        if !report.damaged_chunks.is_empty() {
            eprintln!(
                "damaged or missing chunks: {}",
                report.damaged_chunks.join(" ")
            );
        }
        if !report.affected_snapshots.is_empty() {
            eprintln!(
                "snapshots that lost data: {}",
                report.affected_snapshots.join(" ")
            );
        }
        if !cli.quiet {
            println!(
                "checked {} snapshots, {} index files, {} packs{}: {}",
                report.snapshots,
                report.index_files,
                report.packs,
                if a.read_data {
                    format!(" ({} read)", human::bytes(report.bytes_read))
                } else {
                    String::new()
                },
                if ok { "no errors" } else { "ERRORS FOUND" }
            );
        }
    }
    Ok(if ok {
        crate::exit::OK
    } else {
        crate::exit::CHECK_FAILED
    })
}
