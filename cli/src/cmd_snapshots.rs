//! `vmvault snapshots` and `vmvault stats`.

use crate::{context, human, Cli};
use anyhow::{anyhow, Result};
use clap::Args;

/// Arguments of `vmvault snapshots`.
#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    /// Only snapshots of this VM.
    #[arg(long)]
    pub vm: Option<String>,
}

/// Runs `vmvault snapshots`.
pub fn run(cli: &Cli, a: &SnapshotsArgs) -> Result<i32> {
    let repo = context::open(cli)?;
    let (snaps, bad) = repo.list_snapshots().map_err(|e| anyhow!(e))?;
    for e in &bad {
        eprintln!("vmvault: warning: {e}");
    }
    let snaps: Vec<_> = snaps
        .into_iter()
        .filter(|(_, s)| a.vm.as_ref().is_none_or(|v| &s.vm == v))
        .collect();
    if cli.json {
        let v: Vec<serde_json::Value> = snaps
            .iter()
            .map(|(id, s)| {
                serde_json::json!({
                    "id": id,
                    "short_id": &id[..12],
                    "time": s.time,
                    "vm": s.vm,
                    "host": s.host,
                    "tags": s.tags,
                    "parent": s.parent,
                    "program": s.program,
                    "disks": s.disks.iter().map(|d| serde_json::json!({
                        "name": d.name,
                        "size": d.size,
                        "allocated_bytes": d.allocated_bytes,
                        "zero_bytes": d.zero_bytes,
                        "source": d.source,
                        "source_format": d.source_format,
                    })).collect::<Vec<_>>(),
                    "configs": s.configs.iter().map(|c| serde_json::json!({
                        "name": c.name,
                        "size": c.size,
                    })).collect::<Vec<_>>(),
                    "catalogs": s.catalogs.iter().map(|c| serde_json::json!({
                        "disk": c.disk,
                        "volume": c.volume,
                        "content": c.content,
                        "start": c.start,
                        "size": c.size,
                        "description": c.description,
                        "entries": c.entries,
                        "catalogued": c.manifest.is_some(),
                        "note": c.note,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(crate::exit::OK);
    }
    if cli.quiet {
        return Ok(crate::exit::OK);
    }
    println!(
        "{:<12}  {:<20}  {:<16}  {:<12}  {:>10}  DISKS",
        "ID", "TIME", "VM", "HOST", "SIZE"
    );
    for (id, s) in &snaps {
        let size: u64 = s.disks.iter().map(|d| d.size).sum();
        let time = s.time.get(..19).unwrap_or(&s.time).replace('T', " ");
        let disks: Vec<&str> = s.disks.iter().map(|d| d.name.as_str()).collect();
        let tags = if s.tags.is_empty() {
            String::new()
        } else {
            format!("  [{}]", s.tags.join(","))
        };
        let configs: Vec<&str> = s.configs.iter().map(|c| c.name.as_str()).collect();
        let configs = if configs.is_empty() {
            String::new()
        } else {
            format!("  config: {}", configs.join(","))
        };
        println!(
            "{:<12}  {:<20}  {:<16}  {:<12}  {:>10}  {}{tags}{configs}",
            &id[..12],
            time,
            s.vm,
            s.host,
            human::bytes(size),
            disks.join(",")
        );
    }
    println!("{} snapshot(s)", snaps.len());
    Ok(crate::exit::OK)
}

/// Arguments of `vmvault stats`.
#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// Only this VM's figures (logical size, stored bytes it alone uses, shared bytes).
    #[arg(long)]
    pub vm: Option<String>,
}

/// Runs `vmvault stats`.
pub fn stats(cli: &Cli, a: &StatsArgs) -> Result<i32> {
    let repo = context::open(cli)?;
    let cache = context::cache(cli, &repo)?;
    let st = vmvault_repo::stats::stats(&repo, &cache).map_err(|e| anyhow!(e))?;
    let per_vm =
        vmvault_repo::stats::vm_stats(&repo, &cache, a.vm.as_deref()).map_err(|e| anyhow!(e))?;
    if let (Some(vm), true) = (&a.vm, per_vm.is_empty()) {
        anyhow::bail!("no snapshot of VM {vm:?}");
    }
    if cli.json {
        let mut v = serde_json::to_value(&st)?;
        v["vms_detail"] = serde_json::to_value(&per_vm)?;
        v["compression_level"] = repo.config().compression.level.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if !cli.quiet {
        if !per_vm.is_empty() {
            println!(
                "{:<24} {:>9} {:>12} {:>14} {:>14}",
                "VM", "SNAPSHOTS", "LOGICAL", "UNIQUE STORED", "SHARED STORED"
            );
            for v in &per_vm {
                println!(
                    "{:<24} {:>9} {:>12} {:>14} {:>14}",
                    v.vm,
                    v.snapshots,
                    human::bytes(v.logical_bytes),
                    human::bytes(v.unique_stored_bytes),
                    human::bytes(v.shared_stored_bytes)
                );
            }
            println!();
        }
        if a.vm.is_some() {
            return Ok(crate::exit::OK);
        }
        println!("snapshots        {:>12}  ({} VMs)", st.snapshots, st.vms);
        println!("logical size     {:>12}", human::bytes(st.logical_bytes));
        println!("allocated data   {:>12}", human::bytes(st.allocated_bytes));
        println!("stored (packs)   {:>12}", human::bytes(st.stored_bytes));
        println!("metadata         {:>12}", human::bytes(st.metadata_bytes));
        println!(
            "dedup ratio      {:>12.2}x  (allocated / stored)",
            st.dedup_ratio
        );
        println!("chunks           {:>12}", st.chunks);
        println!("packs            {:>12}", st.packs);
        println!("index files      {:>12}", st.index_files);
        println!(
            "compression      {:>12}",
            format!("zstd {}", repo.config().compression.level)
        );
    }
    Ok(crate::exit::OK)
}
