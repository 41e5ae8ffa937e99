//! `vmvault ls`: the disks, volumes and guest directories of a snapshot, from its
//! catalogs where it has them and by reading the guest file systems otherwise.

use crate::browse::{kind_name, mode_text, time_text, Browser, GuestPath};
use crate::{human, Cli};
use anyhow::{anyhow, bail, Result};
use clap::Args;
use vmvault_ingest::guest::{NodeKind, NodeMeta};
use vmvault_repo::catalog::read_catalog;

/// Arguments of `vmvault ls`.
#[derive(Args, Debug)]
pub struct LsArgs {
    /// Snapshot id (a unique prefix) or 'latest'.
    pub snapshot: String,
    /// What to list: nothing (the disks), DISK (its partitions and volumes), or
    /// DISK/PART/path (a directory or file inside a guest file system). PART is p1, p2, …
    /// (MBR logical partitions from p5), fs for a file system on the whole disk, or
    /// lvm/VG/LV for guest LVM.
    pub path: Option<String>,
    /// Long listing: type and permissions, owner, size, modification time.
    #[arg(short = 'l', long)]
    pub long: bool,
    /// With 'latest': the newest snapshot of this VM.
    #[arg(long)]
    pub vm: Option<String>,
    /// Read the guest file system even where the snapshot has a catalog.
    #[arg(long)]
    pub no_catalog: bool,
}

/// One line of a listing.
struct Item {
    name: String,
    meta: NodeMeta,
    /// Extra text after the name (volume content, symlink target).
    extra: Option<String>,
}

/// Runs `vmvault ls`.
pub fn run(cli: &Cli, a: &LsArgs) -> Result<i32> {
    let b = Browser::open(cli, &a.snapshot, a.vm.as_deref())?;
    let path = GuestPath::parse(a.path.as_deref().unwrap_or(""))?;
    let items = match (&path.disk, &path.volume) {
        (None, _) => list_disks(&b),
        (Some(d), None) => list_volumes(&b, d)?,
        (Some(d), Some(v)) => match b.catalog(d, v).filter(|_| !a.no_catalog) {
            Some(_) => list_from_catalog(&b, d, v, &path.inner)?,
            None => list_live(&b, &path, a.long)?,
        },
    };
    print(cli, a, &path, &items);
    Ok(crate::exit::OK)
}

fn plain(kind: NodeKind, size: u64) -> NodeMeta {
    NodeMeta {
        kind,
        size,
        mode: if kind == NodeKind::Dir { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        atime: 0,
    }
}

fn list_disks(b: &Browser) -> Vec<Item> {
    b.snap
        .disks
        .iter()
        .map(|d| Item {
            name: d.name.clone(),
            meta: plain(NodeKind::Dir, d.size),
            extra: Some(format!(
                "{} disk, {}",
                human::bytes(d.size),
                d.source_format
            )),
        })
        .collect()
}

fn list_volumes(b: &Browser, disk: &str) -> Result<Vec<Item>> {
    let recorded: Vec<_> = b.snap.catalogs.iter().filter(|c| c.disk == disk).collect();
    if !recorded.is_empty() {
        return Ok(recorded
            .into_iter()
            .map(|c| Item {
                name: c.volume.clone(),
                meta: plain(NodeKind::Dir, c.size),
                extra: Some(format!(
                    "{}, {}, {}{}",
                    c.content,
                    human::bytes(c.size),
                    c.description,
                    c.note
                        .as_deref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                )),
            })
            .collect());
    }
    let layout = b.layout(disk)?;
    for p in &layout.problems {
        eprintln!("vmvault: warning: {p}");
    }
    if layout.volumes.is_empty() {
        bail!("{disk}: no partitions or file systems found");
    }
    Ok(layout
        .volumes
        .iter()
        .map(|v| Item {
            name: v.name.clone(),
            meta: plain(NodeKind::Dir, v.size),
            extra: Some(format!(
                "{}, {}, {}",
                v.content.name(),
                human::bytes(v.size),
                v.description
            )),
        })
        .collect())
}

fn list_from_catalog(b: &Browser, disk: &str, volume: &str, inner: &str) -> Result<Vec<Item>> {
    let record = b
        .catalog(disk, volume)
        .ok_or_else(|| anyhow!("{disk}/{volume}: no catalog"))?;
    let Some(dec) = read_catalog(b.repo, b.cache, record).map_err(|e| anyhow!(e))? else {
        bail!("{disk}/{volume}: no catalog");
    };
    let prefix = if inner.is_empty() {
        String::new()
    } else {
        format!("{inner}/")
    };
    let mut items = Vec::new();
    let mut found_self = inner.is_empty();
    let mut in_subtree = false;
    for e in dec {
        let e = e.map_err(|e| anyhow!("catalog of {disk}/{volume}: {e}"))?;
        if e.path == inner {
            found_self = true;
            if e.meta.kind != NodeKind::Dir {
                let name = inner.rsplit('/').next().unwrap_or(inner).to_string();
                return Ok(vec![Item {
                    name,
                    meta: e.meta,
                    extra: None,
                }]);
            }
            continue;
        }
        match e.path.strip_prefix(&prefix) {
            Some(rest) => {
                in_subtree = true;
                if !rest.contains('/') {
                    items.push(Item {
                        name: rest.to_string(),
                        meta: e.meta,
                        extra: None,
                    });
                }
            }
            // Catalogs are in depth-first order: the subtree has ended.
            None if in_subtree => break,
            None => {}
        }
    }
    if !found_self {
        bail!("{disk}/{volume}/{inner}: no such file or directory");
    }
    Ok(items)
}

fn list_live(b: &Browser, path: &GuestPath, long: bool) -> Result<Vec<Item>> {
    let (fs, inner) = b.resolve(path)?;
    let meta = fs.stat(&inner)?;
    let target = |p: &str, m: &NodeMeta| -> Option<String> {
        (long && m.kind == NodeKind::Symlink)
            .then(|| fs.read_link(p).ok())
            .flatten()
            .map(|t| format!("-> {}", String::from_utf8_lossy(&t)))
    };
    if meta.kind != NodeKind::Dir {
        let name = inner.rsplit('/').next().unwrap_or(&inner).to_string();
        return Ok(vec![Item {
            extra: target(&inner, &meta),
            name,
            meta,
        }]);
    }
    let mut entries = fs.read_dir(&inner)?;
    entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    Ok(entries
        .into_iter()
        .map(|e| {
            let p = if inner.is_empty() {
                e.name.clone()
            } else {
                format!("{inner}/{}", e.name)
            };
            Item {
                extra: target(&p, &e.meta),
                name: e.name,
                meta: e.meta,
            }
        })
        .collect())
}

fn print(cli: &Cli, a: &LsArgs, path: &GuestPath, items: &[Item]) {
    let base = path.display();
    let full = |name: &str| {
        if base.is_empty() {
            name.to_string()
        } else if path.volume.is_some()
            && items.len() == 1
            && !path.inner.is_empty()
            && base.ends_with(&format!("/{name}"))
        {
            base.clone()
        } else {
            format!("{base}/{name}")
        }
    };
    if cli.json {
        let out: Vec<_> = items
            .iter()
            .map(|i| {
                serde_json::json!({
                    "name": i.name,
                    "path": full(&i.name),
                    "type": kind_name(i.meta.kind),
                    "size": i.meta.size,
                    "mode": format!("{:04o}", i.meta.mode),
                    "uid": i.meta.uid,
                    "gid": i.meta.gid,
                    "mtime": time_text(i.meta.mtime),
                    "info": i.extra,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(out));
        return;
    }
    for i in items {
        let name = if i.meta.kind == NodeKind::Dir && path.volume.is_some() {
            format!("{}/", i.name)
        } else {
            i.name.clone()
        };
        if a.long {
            let info = i
                .extra
                .as_deref()
                .map(|x| format!(" {x}"))
                .unwrap_or_default();
            if path.volume.is_some() {
                println!(
                    "{} {:>6} {:>6} {:>12} {} {name}{info}",
                    mode_text(i.meta.kind, i.meta.mode),
                    i.meta.uid,
                    i.meta.gid,
                    i.meta.size,
                    time_text(i.meta.mtime),
                );
            } else {
                println!("{name}{info}");
            }
        } else if path.volume.is_none() {
            let info = i
                .extra
                .as_deref()
                .map(|x| format!("  ({x})"))
                .unwrap_or_default();
            println!("{name}{info}");
        } else {
            println!("{name}");
        }
    }
}
