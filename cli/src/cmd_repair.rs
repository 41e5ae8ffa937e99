//! `vmvault repair index|snapshots`.

use crate::{context, human, Cli};
use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand};

/// Arguments of `vmvault repair`.
#[derive(Args, Debug)]
pub struct RepairArgs {
    #[command(subcommand)]
    pub what: RepairWhat,
}

/// What to repair.
#[derive(Subcommand, Debug)]
pub enum RepairWhat {
    /// Rebuild the index from the headers of every pack.
    Index,
    /// Rewrite snapshots that lost data: lost ranges become holes (zeros), unreadable
    /// disks are dropped, the result is tagged `repaired`; says exactly what was lost.
    Snapshots {
        /// Say what would be lost, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Runs `vmvault repair ...`.
pub fn run(cli: &Cli, a: &RepairArgs) -> Result<i32> {
    let repo = context::open(cli)?;
    match &a.what {
        RepairWhat::Index => {
            let _lock = context::lock(cli, &repo, "repair index", true)?;
            let r = vmvault_repo::repair::repair_index(&repo)
                .map_err(|e| anyhow!(e))
                .context("repair index failed")?;
            if cli.json {
                println!("{}", serde_json::to_value(&r)?);
            } else if !cli.quiet {
                println!(
                    "indexed {} chunks from {} pack(s): {} index file(s) written, {} old deleted",
                    r.chunks, r.packs_indexed, r.index_files_written, r.index_files_deleted
                );
                for d in &r.damaged_packs {
                    eprintln!("vmvault: warning: damaged pack, its chunks are lost: {d}");
                }
            }
        }
        RepairWhat::Snapshots { dry_run } => {
            let _lock = context::lock(cli, &repo, "repair snapshots", !dry_run)?;
            // The repair judges chunks by the index: it must be whole.
            let (cache, warnings) =
                vmvault_repo::cache::IndexCache::open(context::cache_root(cli).as_deref(), &repo)
                    .map_err(|e| anyhow!(e))
                    .context("cannot open the local cache")?;
            if let Some(w) = warnings.first() {
                anyhow::bail!("an index file could not be read ({w}); run `vmvault repair index` first, so that no chunk is taken for lost because its index entry was unreadable");
            }
            let r = vmvault_repo::repair::repair_snapshots(&repo, &cache, *dry_run)
                .map_err(|e| anyhow!(e))
                .context("repair snapshots failed")?;
            if cli.json {
                println!("{}", serde_json::to_value(&r)?);
            } else if !cli.quiet {
                println!(
                    "{} snapshot(s): {} intact, {} {}",
                    r.snapshots,
                    r.intact,
                    r.repaired.len(),
                    if *dry_run {
                        "damaged (dry run: nothing written)"
                    } else {
                        "repaired"
                    }
                );
                for s in &r.repaired {
                    println!(
                        "  {} (VM {}, {}) lost {}{}",
                        &s.old_id[..12],
                        s.vm,
                        s.time.get(..19).unwrap_or(&s.time).replace('T', " "),
                        human::bytes(s.lost_bytes),
                        match &s.new_id {
                            Some(n) => format!(", now {} (tagged repaired)", &n[..12]),
                            None if *dry_run => String::new(),
                            None =>
                                ", nothing readable left: kept as it was (remove it with forget)"
                                    .to_string(),
                        }
                    );
                    for d in &s.dropped {
                        println!("    dropped {d}");
                    }
                    for l in s.lost.iter().take(20) {
                        println!(
                            "    {}: {} at offset {} now reads as zeros",
                            l.disk,
                            human::bytes(l.len),
                            l.offset
                        );
                    }
                    if s.lost.len() > 20 {
                        println!(
                            "    ... and {} more ranges (--json lists all)",
                            s.lost.len() - 20
                        );
                    }
                }
                if !r.missing_packs.is_empty() {
                    eprintln!(
                        "vmvault: warning: the index still lists {} missing pack(s); run `vmvault repair index` so that new backups store their chunks again",
                        r.missing_packs.len()
                    );
                }
            }
        }
    }
    Ok(crate::exit::OK)
}
