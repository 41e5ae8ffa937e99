//! `vmvault diff SNAP1 SNAP2`: changed extents and bytes per disk.

use crate::{context, human, Cli};
use anyhow::{anyhow, Result};
use clap::Args;

/// Arguments of `vmvault diff`.
#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The earlier snapshot (id prefix, or 'latest' with --vm).
    pub first: String,
    /// The later snapshot.
    pub second: String,
    /// The VM, for 'latest'.
    #[arg(long)]
    pub vm: Option<String>,
    /// List every changed range (offset and length), not only the totals.
    #[arg(long)]
    pub extents: bool,
}

/// Runs `vmvault diff`.
pub fn run(cli: &Cli, a: &DiffArgs) -> Result<i32> {
    let repo = context::open(cli)?;
    let _lock = context::lock(cli, &repo, "diff", false)?;
    let cache = context::cache(cli, &repo)?;
    let (n1, s1) = repo
        .resolve_snapshot(&a.first, a.vm.as_deref())
        .map_err(|e| anyhow!(e))?;
    let (n2, s2) = repo
        .resolve_snapshot(&a.second, a.vm.as_deref())
        .map_err(|e| anyhow!(e))?;
    let disks = vmvault_repo::diff::diff(&repo, &cache, &s1, &s2).map_err(|e| anyhow!(e))?;
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"first": n1, "second": n2, "disks": disks})
        );
    } else if !cli.quiet {
        println!("{} -> {}", &n1[..12], &n2[..12]);
        for d in &disks {
            println!(
                "  {:<24} {:<8} {:>12} changed in {} extent(s)",
                d.name,
                d.status,
                human::bytes(d.changed_bytes),
                d.changed_extents
            );
            if a.extents {
                for (o, l) in &d.extents {
                    println!("    offset {o:>14}  {:>12}", human::bytes(*l));
                }
            }
        }
    }
    Ok(crate::exit::OK)
}
