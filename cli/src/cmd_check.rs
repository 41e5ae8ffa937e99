//! `vmvault check`.

use crate::{context, human, progress, Cli};
use anyhow::{anyhow, Result};
use clap::Args;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use vmvault_repo::check::{check, CheckProgress, ReadData};

/// Arguments of `vmvault check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Also read every pack and verify every chunk.
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Read and verify part N of M of the packs (1/7 on Mondays, 2/7 on Tuesdays, ...:
    /// the parts together cover every pack).
    #[arg(long, value_name = "N/M", value_parser = parse_subset)]
    pub read_data_subset: Option<(u32, u32)>,
}

fn parse_subset(s: &str) -> std::result::Result<(u32, u32), String> {
    let (n, m) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not N/M (e.g. 2/7)"))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("{n:?} is not a number"))?;
    let m: u32 = m
        .trim()
        .parse()
        .map_err(|_| format!("{m:?} is not a number"))?;
    if m == 0 || n == 0 || n > m {
        return Err(format!("{s}: need 1 <= N <= M"));
    }
    Ok((n, m))
}

/// Runs `vmvault check`; exits 3 when damage is found.
pub fn run(cli: &Cli, a: &CheckArgs) -> Result<i32> {
    let read_data = match (a.read_data, a.read_data_subset) {
        (true, _) => ReadData::All,
        (false, Some((n, m))) => ReadData::Subset { n, m },
        (false, None) => ReadData::None,
    };
    let repo = context::open(cli)?;
    let _lock = crate::context::lock(cli, &repo, "check", false)?;
    let cache = context::cache(cli, &repo)?;
    let prog = Arc::new(CheckProgress::default());
    let p = prog.clone();
    let ticker = progress::Ticker::start(
        progress::wanted(cli) && read_data != ReadData::None,
        move || {
            (
                p.packs_done.load(Ordering::Relaxed),
                p.packs_total.load(Ordering::Relaxed),
                "packs".into(),
            )
        },
    );
    let report = check(&repo, &cache, read_data, &prog).map_err(|e| anyhow!(e))?;
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
                if read_data != ReadData::None {
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
