//! Guest paths inside a snapshot (`DISK/PART/path`) and the objects that resolve them:
//! the disk as a random-access volume, its partition/LVM layout, and its file systems.

use crate::{context, Cli};
use anyhow::{anyhow, bail, Context, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use vmvault_ingest::guest::volumes::{discover, open_fs, Layout, Volume};
use vmvault_ingest::guest::{GuestError, GuestFs, NodeKind, NodeMeta, VolumeRead};
use vmvault_repo::cache::IndexCache;
use vmvault_repo::disk_reader::SnapshotVolume;
use vmvault_repo::format::snapshot::{Snapshot, SnapshotCatalog};
use vmvault_repo::Repository;

/// A path inside a snapshot, split into its disk, volume and file system parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestPath {
    /// The disk's name; `None` for the snapshot itself.
    pub disk: Option<String>,
    /// `p1`, `fs`, `lvm/VG/LV`; `None` for the disk itself.
    pub volume: Option<String>,
    /// The path inside the volume's file system, without leading `/` (`""`: its root).
    pub inner: String,
}

impl GuestPath {
    /// Splits `DISK/PART/path` (`PART` is `pN`, `fs` or `lvm/VG/LV`). Empty components
    /// are ignored; `..` is refused.
    pub fn parse(path: &str) -> Result<GuestPath> {
        let parts: Vec<&str> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        if parts.contains(&"..") {
            bail!("{path:?}: '..' is not allowed in snapshot paths");
        }
        let mut it = parts.into_iter();
        let Some(disk) = it.next() else {
            return Ok(GuestPath {
                disk: None,
                volume: None,
                inner: String::new(),
            });
        };
        let volume = match it.next() {
            None => None,
            Some("lvm") => {
                let (Some(vg), Some(lv)) = (it.next(), it.next()) else {
                    bail!("{path:?}: an LVM volume is named lvm/VG/LV");
                };
                Some(format!("lvm/{vg}/{lv}"))
            }
            Some(v) => Some(v.to_string()),
        };
        Ok(GuestPath {
            disk: Some(disk.to_string()),
            volume,
            inner: it.collect::<Vec<_>>().join("/"),
        })
    }

    /// The path as written in listings: `DISK/PART/inner`.
    pub fn display(&self) -> String {
        let mut s = String::new();
        for p in [self.disk.as_deref(), self.volume.as_deref()]
            .into_iter()
            .flatten()
        {
            if !s.is_empty() {
                s.push('/');
            }
            s.push_str(p);
        }
        if !self.inner.is_empty() {
            s.push('/');
            s.push_str(&self.inner);
        }
        s
    }
}

/// The repository, cache and one snapshot, with the guest layouts and file systems opened
/// so far (each is opened once per command).
pub struct Browser {
    /// The repository (kept for the whole process).
    pub repo: &'static Repository,
    /// Its index cache.
    pub cache: &'static IndexCache,
    /// The snapshot's id.
    pub id: String,
    /// The snapshot.
    pub snap: Snapshot,
    views: RefCell<HashMap<String, Arc<SnapshotVolume>>>,
    layouts: RefCell<HashMap<String, Rc<Layout>>>,
    fss: RefCell<HashMap<(String, String), &'static dyn GuestFs>>,
    /// The shared lock of a browser opened on its own (a mount holds one for all).
    lock: Option<vmvault_repo::lock::LockGuard>,
}

/// What a browsing command holds open: the repository and cache, which live until the
/// process exits (as the volumes read through them must), and a shared lock, released
/// when this is dropped, so that no prune deletes packs under the reads.
pub type OpenRepo = (
    &'static Repository,
    &'static IndexCache,
    vmvault_repo::lock::LockGuard,
);

/// Opens the repository and cache for a browsing command `operation`, under a shared
/// lock.
pub fn open_repo(cli: &Cli, operation: &str) -> Result<OpenRepo> {
    let repo: &'static Repository = Box::leak(Box::new(context::open(cli)?));
    let lock = context::lock(cli, repo, operation, false)?;
    let cache: &'static IndexCache = Box::leak(Box::new(context::cache(cli, repo)?));
    Ok((repo, cache, lock))
}

impl Browser {
    /// Opens snapshot `spec` (an id prefix, or `latest` with an optional VM).
    pub fn open(cli: &Cli, spec: &str, vm: Option<&str>) -> Result<Browser> {
        let (repo, cache, lock) = open_repo(cli, "browse")?;
        let (id, snap) = repo.resolve_snapshot(spec, vm).map_err(|e| anyhow!(e))?;
        let mut b = Browser::new(repo, cache, id, snap);
        b.lock = Some(lock);
        Ok(b)
    }

    /// A browser of snapshot `snap` (named `id`).
    pub fn new(
        repo: &'static Repository,
        cache: &'static IndexCache,
        id: String,
        snap: Snapshot,
    ) -> Browser {
        Browser {
            repo,
            cache,
            id,
            snap,
            views: RefCell::default(),
            layouts: RefCell::default(),
            fss: RefCell::default(),
            lock: None,
        }
    }

    /// The short id shown in messages.
    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }

    /// The random-access view of disk `name`.
    pub fn disk_view(&self, name: &str) -> Result<Arc<SnapshotVolume>> {
        if let Some(v) = self.views.borrow().get(name) {
            return Ok(v.clone());
        }
        let disk = self
            .snap
            .disks
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self.snap.disks.iter().map(|d| d.name.as_str()).collect();
                anyhow!(
                    "snapshot {} has no disk {name:?} (disks: {})",
                    self.short_id(),
                    names.join(", ")
                )
            })?;
        let view = Arc::new(
            SnapshotVolume::open(self.repo, self.cache, disk)
                .map_err(|e| anyhow!(e))
                .with_context(|| format!("cannot open disk {name}"))?,
        );
        self.views
            .borrow_mut()
            .insert(name.to_string(), view.clone());
        Ok(view)
    }

    /// The partitions and logical volumes of disk `name`, found by reading it.
    pub fn layout(&self, name: &str) -> Result<Rc<Layout>> {
        if let Some(l) = self.layouts.borrow().get(name) {
            return Ok(l.clone());
        }
        let view: Arc<dyn VolumeRead> = self.disk_view(name)?;
        let layout = Rc::new(
            discover(view).with_context(|| format!("cannot read the partitions of {name}"))?,
        );
        self.layouts
            .borrow_mut()
            .insert(name.to_string(), layout.clone());
        Ok(layout)
    }

    /// Volume `volume` of disk `disk`.
    pub fn volume(&self, disk: &str, volume: &str) -> Result<Volume> {
        let layout = self.layout(disk)?;
        layout.volume(volume).cloned().ok_or_else(|| {
            let names: Vec<&str> = layout.volumes.iter().map(|v| v.name.as_str()).collect();
            if names.is_empty() {
                anyhow!("{disk}: no partitions or file systems found")
            } else {
                anyhow!(
                    "{disk} has no volume {volume:?} (volumes: {})",
                    names.join(", ")
                )
            }
        })
    }

    /// The file system on `volume` of `disk`, opened once and kept until the process
    /// exits (open guest files borrow from it).
    pub fn fs(&self, disk: &str, volume: &str) -> Result<&'static dyn GuestFs> {
        let key = (disk.to_string(), volume.to_string());
        if let Some(f) = self.fss.borrow().get(&key) {
            return Ok(*f);
        }
        let v = self.volume(disk, volume)?;
        let fs: &'static dyn GuestFs = Box::leak(
            open_fs(v.content, v.view.clone())
                .with_context(|| format!("cannot open the file system of {disk}/{volume}"))?,
        );
        self.fss.borrow_mut().insert(key, fs);
        Ok(fs)
    }

    /// The catalog record of a volume, if the snapshot has one with a catalog.
    pub fn catalog(&self, disk: &str, volume: &str) -> Option<&SnapshotCatalog> {
        self.snap
            .catalogs
            .iter()
            .find(|c| c.disk == disk && c.volume == volume && c.manifest.is_some())
    }

    /// Resolves `path` (`DISK/PART/path`) to its file system and inner path.
    pub fn resolve(&self, path: &GuestPath) -> Result<(&'static dyn GuestFs, String)> {
        let (Some(disk), Some(volume)) = (&path.disk, &path.volume) else {
            bail!(
                "{:?} is not a path inside a file system (use DISK/PART/path, e.g. disk0/p1/etc/hosts)",
                path.display()
            );
        };
        Ok((self.fs(disk, volume)?, path.inner.clone()))
    }
}

/// Follows symlinks at the end of `path` inside `fs` (absolute targets are taken from the
/// file system's root), at most 40 times; returns the final path and its metadata.
pub fn follow(fs: &dyn GuestFs, path: &str) -> std::result::Result<(String, NodeMeta), GuestError> {
    let mut path = path.to_string();
    for _ in 0..40 {
        let meta = fs.stat(&path)?;
        if meta.kind != NodeKind::Symlink {
            return Ok((path, meta));
        }
        let target = String::from_utf8_lossy(&fs.read_link(&path)?).into_owned();
        path = if target.starts_with('/') {
            target
        } else {
            let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
            format!("{parent}/{target}")
        };
        path = normalize(&path)?;
    }
    Err(GuestError::corrupt(
        path,
        "too many levels of symbolic links",
    ))
}

/// Resolves `.` and `..` lexically, never above the root.
fn normalize(path: &str) -> std::result::Result<String, GuestError> {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    Ok(out.join("/"))
}

/// `ls -l`-style permission text for a kind and mode.
pub fn mode_text(kind: NodeKind, mode: u32) -> String {
    let t = match kind {
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::Special => 'c',
        NodeKind::File => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(t);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// The JSON and text name of a kind.
pub fn kind_name(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::File => "file",
        NodeKind::Dir => "dir",
        NodeKind::Symlink => "symlink",
        NodeKind::Special => "special",
    }
}

/// An mtime as RFC 3339 (UTC, seconds), or the raw number when out of range.
pub fn time_text(secs: i64) -> String {
    if secs >= 0 {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
        humantime::format_rfc3339_seconds(t).to_string()
    } else {
        format!("@{secs}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_disk_volume_and_inner() {
        let p = GuestPath::parse("web01-disk0/p2/etc/nginx/nginx.conf").unwrap();
        assert_eq!(p.disk.as_deref(), Some("web01-disk0"));
        assert_eq!(p.volume.as_deref(), Some("p2"));
        assert_eq!(p.inner, "etc/nginx/nginx.conf");
        let p = GuestPath::parse("/d//lvm/vg0/root/var/").unwrap();
        assert_eq!(p.volume.as_deref(), Some("lvm/vg0/root"));
        assert_eq!(p.inner, "var");
        assert_eq!(p.display(), "d/lvm/vg0/root/var");
        assert!(GuestPath::parse("d/lvm/vg0").is_err());
        assert!(GuestPath::parse("d/p1/../x").is_err());
        assert_eq!(GuestPath::parse("").unwrap().disk, None);
        assert_eq!(GuestPath::parse("d").unwrap().volume, None);
    }

    #[test]
    fn modes_read_like_ls() {
        assert_eq!(mode_text(NodeKind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(mode_text(NodeKind::File, 0o640), "-rw-r-----");
    }
}
