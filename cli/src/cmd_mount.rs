//! `vmvault mount`: the repository's snapshots as a read-only FUSE file system.
//!
//! ```text
//! MOUNTPOINT/<vm>/<snapshot time>/disks/<disk>.raw      whole logical disks
//! MOUNTPOINT/<vm>/<snapshot time>/files/<disk>/<part>/…  guest file trees
//! MOUNTPOINT/<vm>/latest -> <snapshot time>
//! ```
//!
//! The guest file system parsers are not thread-safe, so every request is served by one
//! worker thread that owns them; FUSE threads only hand requests over. Directory
//! listings come from the snapshot's catalog where it has one (no guest parsing). Nodes get inode
//! numbers when first listed or looked up and keep them until unmount. A read error is
//! logged with its cause and reaches the reader as EIO; the mount stays up.

use crate::browse::{open_repo, Browser};
use crate::Cli;
use anyhow::{bail, Context, Result};
use clap::Args;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, INodeNo, LockOwner, MountOption, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, Request,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vmvault_ingest::guest::{DirEntry, GuestError, GuestFile, NodeKind, NodeMeta, VolumeRead};
use vmvault_repo::format::snapshot::Snapshot;

/// Arguments of `vmvault mount`.
#[derive(Args, Debug)]
pub struct MountArgs {
    /// An empty directory to mount on.
    pub mountpoint: PathBuf,
    /// Only the snapshots of this VM.
    #[arg(long)]
    pub vm: Option<String>,
}

/// How long the kernel may cache attributes and entries: the tree never changes.
const TTL: Duration = Duration::from_secs(60);
/// Open guest files kept, at most.
const OPEN_FILES: usize = 64;

/// What a node is.
#[derive(Clone)]
enum What {
    Root,
    Vm(String),
    Latest(String),
    Snap(usize),
    DisksDir(usize),
    RawDisk(usize, String),
    FilesDir(usize),
    /// A directory of volume names under `prefix` ("" or "lvm" or "lvm/VG") of a disk.
    VolDir(usize, String, String),
    /// An entry of a guest file system.
    Guest {
        snap: usize,
        disk: String,
        volume: String,
        path: String,
        meta: NodeMeta,
    },
}

struct Node {
    what: What,
    children: Option<Vec<(String, u64)>>,
}

struct State {
    repo: &'static vmvault_repo::Repository,
    cache: &'static vmvault_repo::cache::IndexCache,
    nodes: Vec<Node>,
    snaps: Vec<(String, Snapshot, String)>,
    browsers: HashMap<usize, Browser>,
    /// Directory listings from catalogs, per (snapshot, disk, volume); `None` where the
    /// volume has no usable catalog (the guest is read instead).
    listings: HashMap<(usize, String, String), Option<std::rc::Rc<Listing>>>,
    open: Vec<(u64, Box<dyn GuestFile>)>,
    mounted_at: SystemTime,
}

type Job = Box<dyn FnOnce(&mut State) + Send>;

/// A volume's catalog as directory listings: directory path ("" for the root) → entries.
type Listing = HashMap<String, Vec<DirEntry>>;

/// Catalogs larger than this are not loaded into memory; the guest is read instead.
const MAX_LISTED_ENTRIES: u64 = 4_000_000;

/// The `Filesystem` the kernel talks to: it only forwards requests to the worker.
struct MountFs {
    tx: Mutex<Sender<Job>>,
}

impl MountFs {
    fn run(&self, job: Job) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        // The worker lives as long as the session; if it is gone the reply is dropped,
        // which answers the kernel with an error.
        let _ = tx.send(job);
    }
}

fn errno(e: &GuestError, what: &str) -> Errno {
    match e {
        GuestError::NotFound(_) => Errno::ENOENT,
        GuestError::NotADirectory(_) => Errno::ENOTDIR,
        GuestError::IsADirectory(_) => Errno::EISDIR,
        _ => {
            eprintln!("vmvault: mount: {what}: {e}");
            Errno::EIO
        }
    }
}

fn anyhow_errno(e: &anyhow::Error, what: &str) -> Errno {
    match e.downcast_ref::<GuestError>() {
        Some(g) => errno(g, what),
        None => {
            eprintln!("vmvault: mount: {what}: {e:#}");
            Errno::EIO
        }
    }
}

fn time_of(secs: i64, nsec: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec.min(999_999_999))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    }
}

impl State {
    fn add(&mut self, what: What) -> u64 {
        self.nodes.push(Node {
            what,
            children: None,
        });
        self.nodes.len() as u64
    }

    fn node(&self, ino: INodeNo) -> Option<&Node> {
        let i = u64::from(ino).checked_sub(1)?;
        self.nodes.get(i as usize)
    }

    fn browser(&mut self, snap: usize) -> &Browser {
        let (repo, cache) = (self.repo, self.cache);
        let (id, s, _) = &self.snaps[snap];
        self.browsers
            .entry(snap)
            .or_insert_with(|| Browser::new(repo, cache, id.clone(), s.clone()))
    }

    /// The catalog of a volume as listings, loaded on first use.
    fn listing(&mut self, snap: usize, disk: &str, volume: &str) -> Option<std::rc::Rc<Listing>> {
        let key = (snap, disk.to_string(), volume.to_string());
        if let Some(l) = self.listings.get(&key) {
            return l.clone();
        }
        let record = self.snaps[snap]
            .1
            .catalogs
            .iter()
            .find(|c| c.disk == disk && c.volume == volume && c.manifest.is_some())
            .filter(|c| c.entries <= MAX_LISTED_ENTRIES)
            .cloned();
        let loaded = record.and_then(|r| {
            let dec = vmvault_repo::catalog::read_catalog(self.repo, self.cache, &r).ok()??;
            let mut map: Listing = HashMap::new();
            map.insert(String::new(), Vec::new());
            for e in dec {
                let e = match e {
                    Ok(e) => e,
                    Err(err) => {
                        eprintln!("vmvault: mount: catalog of {disk}/{volume}: {err}; reading the guest instead");
                        return None;
                    }
                };
                let (parent, name) = e.path.rsplit_once('/').unwrap_or(("", &e.path));
                if e.meta.kind == NodeKind::Dir {
                    map.entry(e.path.clone()).or_default();
                }
                map.entry(parent.to_string()).or_default().push(DirEntry {
                    name: name.to_string(),
                    meta: e.meta,
                });
            }
            Some(std::rc::Rc::new(map))
        });
        self.listings.insert(key, loaded.clone());
        loaded
    }

    fn attr(&mut self, ino: u64) -> Result<FileAttr, Errno> {
        let node = self.node(INodeNo(ino)).ok_or(Errno::ENOENT)?;
        let dir = |t: SystemTime| (FileType::Directory, 0u64, 0o555u16, 0u32, 0u32, t);
        let (kind, size, perm, uid, gid, mtime) = match &node.what {
            What::Root | What::Vm(_) => dir(self.mounted_at),
            What::Snap(i) | What::DisksDir(i) | What::FilesDir(i) | What::VolDir(i, _, _) => {
                dir(snap_time(&self.snaps[*i].1))
            }
            What::Latest(vm) => {
                let target = self.latest(vm).unwrap_or_default();
                (
                    FileType::Symlink,
                    target.len() as u64,
                    0o777,
                    0,
                    0,
                    self.mounted_at,
                )
            }
            What::RawDisk(i, d) => {
                let snap = &self.snaps[*i].1;
                let size = snap
                    .disks
                    .iter()
                    .find(|x| &x.name == d)
                    .map_or(0, |x| x.size);
                (FileType::RegularFile, size, 0o444, 0, 0, snap_time(snap))
            }
            What::Guest { meta, .. } => {
                let kind = match meta.kind {
                    NodeKind::Dir => FileType::Directory,
                    NodeKind::File => FileType::RegularFile,
                    NodeKind::Symlink => FileType::Symlink,
                    NodeKind::Special => FileType::RegularFile,
                };
                let perm = if meta.kind == NodeKind::Special {
                    0
                } else {
                    (meta.mode & 0o7777) as u16
                };
                let size = if meta.kind == NodeKind::Special {
                    0
                } else {
                    meta.size
                };
                (
                    kind,
                    size,
                    perm,
                    meta.uid,
                    meta.gid,
                    time_of(meta.mtime, meta.mtime_nsec),
                )
            }
        };
        let atime = match &node.what {
            What::Guest { meta, .. } => time_of(meta.atime, 0),
            _ => mtime,
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid,
            gid,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        })
    }

    fn latest(&self, vm: &str) -> Option<String> {
        self.snaps
            .iter()
            .rfind(|(_, s, _)| s.vm == vm)
            .map(|(_, _, d)| d.clone())
    }

    /// The children of `ino`, computed (and given inode numbers) on first use.
    fn children(&mut self, ino: u64) -> Result<Vec<(String, u64)>, Errno> {
        let node = self.node(INodeNo(ino)).ok_or(Errno::ENOENT)?;
        if let Some(c) = &node.children {
            return Ok(c.clone());
        }
        let what = node.what.clone();
        let list: Vec<(String, What)> = match what {
            What::Root => {
                let mut vms: Vec<String> =
                    self.snaps.iter().map(|(_, s, _)| s.vm.clone()).collect();
                vms.sort();
                vms.dedup();
                vms.into_iter().map(|v| (v.clone(), What::Vm(v))).collect()
            }
            What::Vm(vm) => {
                let mut l: Vec<(String, What)> = self
                    .snaps
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, s, _))| s.vm == vm)
                    .map(|(i, (_, _, d))| (d.clone(), What::Snap(i)))
                    .collect();
                l.push(("latest".into(), What::Latest(vm)));
                l
            }
            What::Snap(i) => vec![
                ("disks".into(), What::DisksDir(i)),
                ("files".into(), What::FilesDir(i)),
            ],
            What::DisksDir(i) => self.snaps[i]
                .1
                .disks
                .iter()
                .map(|d| (format!("{}.raw", d.name), What::RawDisk(i, d.name.clone())))
                .collect(),
            What::FilesDir(i) => self.snaps[i]
                .1
                .disks
                .iter()
                .map(|d| {
                    (
                        d.name.clone(),
                        What::VolDir(i, d.name.clone(), String::new()),
                    )
                })
                .collect(),
            What::VolDir(i, disk, prefix) => {
                let layout = self
                    .browser(i)
                    .layout(&disk)
                    .map_err(|e| anyhow_errno(&e, &disk))?;
                let mut out: Vec<(String, What)> = Vec::new();
                for v in layout.volumes.iter().filter(|v| v.content.browsable()) {
                    let rest = if prefix.is_empty() {
                        Some(v.name.as_str())
                    } else {
                        v.name
                            .strip_prefix(prefix.as_str())
                            .and_then(|r| r.strip_prefix('/'))
                    };
                    let Some(rest) = rest else { continue };
                    let (first, deeper) = match rest.split_once('/') {
                        Some((f, _)) => (f, true),
                        None => (rest, false),
                    };
                    if out.iter().any(|(n, _)| n == first) {
                        continue;
                    }
                    let full = if prefix.is_empty() {
                        first.to_string()
                    } else {
                        format!("{prefix}/{first}")
                    };
                    let what = if deeper {
                        What::VolDir(i, disk.clone(), full)
                    } else {
                        let meta = NodeMeta {
                            kind: NodeKind::Dir,
                            size: 0,
                            mode: 0o555,
                            uid: 0,
                            gid: 0,
                            mtime: 0,
                            mtime_nsec: 0,
                            atime: 0,
                        };
                        let meta = self
                            .browser(i)
                            .fs(&disk, &full)
                            .and_then(|fs| Ok(fs.stat("")?))
                            .unwrap_or(meta);
                        What::Guest {
                            snap: i,
                            disk: disk.clone(),
                            volume: full,
                            path: String::new(),
                            meta,
                        }
                    };
                    out.push((first.to_string(), what));
                }
                out
            }
            What::Guest {
                snap,
                disk,
                volume,
                path,
                meta,
            } => {
                if meta.kind != NodeKind::Dir {
                    return Err(Errno::ENOTDIR);
                }
                let shown = format!("{disk}/{volume}/{path}");
                let mut entries = match self.listing(snap, &disk, &volume) {
                    Some(l) => l.get(&path).cloned().unwrap_or_default(),
                    None => {
                        let fs = self
                            .browser(snap)
                            .fs(&disk, &volume)
                            .map_err(|e| anyhow_errno(&e, &shown))?;
                        fs.read_dir(&path).map_err(|e| errno(&e, &shown))?
                    }
                };
                entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
                entries
                    .into_iter()
                    .map(|e| {
                        let p = if path.is_empty() {
                            e.name.clone()
                        } else {
                            format!("{path}/{}", e.name)
                        };
                        (
                            e.name,
                            What::Guest {
                                snap,
                                disk: disk.clone(),
                                volume: volume.clone(),
                                path: p,
                                meta: e.meta,
                            },
                        )
                    })
                    .collect()
            }
            What::Latest(_) | What::RawDisk(..) => return Err(Errno::ENOTDIR),
        };
        let mut out = Vec::with_capacity(list.len());
        for (name, what) in list {
            let child = self.add(what);
            out.push((name, child));
        }
        if let Some(n) = self.nodes.get_mut(ino as usize - 1) {
            n.children = Some(out.clone());
        }
        Ok(out)
    }

    fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        let children = self.children(parent)?;
        let ino = children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, i)| *i)
            .ok_or(Errno::ENOENT)?;
        self.attr(ino)
    }

    fn readlink(&mut self, ino: u64) -> Result<Vec<u8>, Errno> {
        match &self.node(INodeNo(ino)).ok_or(Errno::ENOENT)?.what {
            What::Latest(vm) => Ok(self.latest(vm).unwrap_or_default().into_bytes()),
            What::Guest {
                snap,
                disk,
                volume,
                path,
                ..
            } => {
                let (snap, disk, volume, path) =
                    (*snap, disk.clone(), volume.clone(), path.clone());
                let shown = format!("{disk}/{volume}/{path}");
                let fs = self
                    .browser(snap)
                    .fs(&disk, &volume)
                    .map_err(|e| anyhow_errno(&e, &shown))?;
                fs.read_link(&path).map_err(|e| errno(&e, &shown))
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn read(&mut self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let what = self.node(INodeNo(ino)).ok_or(Errno::ENOENT)?.what.clone();
        match what {
            What::RawDisk(i, disk) => {
                let view = self
                    .browser(i)
                    .disk_view(&disk)
                    .map_err(|e| anyhow_errno(&e, &disk))?;
                let end = offset.saturating_add(u64::from(size)).min(view.size());
                if offset >= end {
                    return Ok(Vec::new());
                }
                let mut buf = vec![0u8; (end - offset) as usize];
                view.read_exact_at(offset, &mut buf)
                    .map_err(|e| errno(&e, &format!("{disk}.raw")))?;
                Ok(buf)
            }
            What::Guest {
                snap,
                disk,
                volume,
                path,
                meta,
            } => {
                if meta.kind != NodeKind::File {
                    return Err(Errno::EINVAL);
                }
                let shown = format!("{disk}/{volume}/{path}");
                let pos = match self.open.iter().position(|(i, _)| *i == ino) {
                    Some(p) => p,
                    None => {
                        let fs = self
                            .browser(snap)
                            .fs(&disk, &volume)
                            .map_err(|e| anyhow_errno(&e, &shown))?;
                        let f = fs.open(&path).map_err(|e| errno(&e, &shown))?;
                        if self.open.len() >= OPEN_FILES {
                            self.open.remove(0);
                        }
                        self.open.push((ino, f));
                        self.open.len() - 1
                    }
                };
                let f = &mut self.open[pos].1;
                let mut buf = vec![0u8; size as usize];
                let mut done = 0;
                while done < buf.len() {
                    let n = f
                        .read_at(offset + done as u64, &mut buf[done..])
                        .map_err(|e| errno(&e, &shown))?;
                    if n == 0 {
                        break;
                    }
                    done += n;
                }
                buf.truncate(done);
                Ok(buf)
            }
            _ => Err(Errno::EISDIR),
        }
    }
}

fn snap_time(s: &Snapshot) -> SystemTime {
    humantime::parse_rfc3339(&s.time).unwrap_or(UNIX_EPOCH)
}

/// The directory name of a snapshot: its time to the second, UTC.
fn snap_dir_name(s: &Snapshot) -> String {
    let t = snap_time(s);
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Filesystem for MountFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_os_string();
        self.run(Box::new(move |st| {
            match st.lookup(u64::from(parent), &name) {
                Ok(attr) => reply.entry(&TTL, &attr, fuser::Generation(0)),
                Err(e) => reply.error(e),
            }
        }));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.run(Box::new(move |st| match st.attr(u64::from(ino)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.run(Box::new(move |st| match st.readlink(u64::from(ino)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }));
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.run(Box::new(move |st| {
            match st.read(u64::from(ino), offset, size) {
                Ok(b) => reply.data(&b),
                Err(e) => reply.error(e),
            }
        }));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.run(Box::new(move |st| {
            let ino = u64::from(ino);
            let children = match st.children(ino) {
                Ok(c) => c,
                Err(e) => return reply.error(e),
            };
            let mut all = vec![(".".to_string(), ino, FileType::Directory)];
            all.push(("..".to_string(), ino, FileType::Directory));
            for (name, child) in children {
                let kind = st.attr(child).map_or(FileType::RegularFile, |a| a.kind);
                all.push((name, child, kind));
            }
            for (i, (name, child, kind)) in all.into_iter().enumerate().skip(offset as usize) {
                if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                    break;
                }
            }
            reply.ok();
        }));
    }
}

/// Runs `vmvault mount` until Ctrl-C, SIGTERM or an external unmount.
pub fn run(cli: &Cli, a: &MountArgs) -> Result<i32> {
    let meta = std::fs::metadata(&a.mountpoint)
        .with_context(|| format!("mount point {}", a.mountpoint.display()))?;
    if !meta.is_dir() {
        bail!("mount point {} is not a directory", a.mountpoint.display());
    }
    let (repo, cache, _lock) = open_repo(cli, "mount")?;
    let (all, problems) = repo.list_snapshots().map_err(|e| anyhow::anyhow!(e))?;
    for p in problems {
        eprintln!("vmvault: warning: {p}");
    }
    let mut snaps: Vec<(String, Snapshot, String)> = Vec::new();
    for (id, s) in all {
        if a.vm.as_ref().is_some_and(|vm| &s.vm != vm) {
            continue;
        }
        let mut name = snap_dir_name(&s);
        if snaps.iter().any(|(_, o, n)| o.vm == s.vm && *n == name) {
            name = format!("{name}_{}", &id[..8]);
        }
        snaps.push((id, s, name));
    }
    if snaps.is_empty() {
        bail!("no snapshots to mount");
    }
    let vms = {
        let mut v: Vec<&str> = snaps.iter().map(|(_, s, _)| s.vm.as_str()).collect();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    let count = snaps.len();
    let (tx, rx) = channel::<Job>();
    let worker = std::thread::Builder::new()
        .name("vmvault-mount".into())
        .spawn(move || {
            let mut st = State {
                repo,
                cache,
                nodes: Vec::new(),
                snaps,
                browsers: HashMap::new(),
                listings: HashMap::new(),
                open: Vec::new(),
                mounted_at: SystemTime::now(),
            };
            st.add(What::Root);
            while let Ok(job) = rx.recv() {
                job(&mut st);
            }
        })
        .context("cannot start the mount worker")?;
    let mut config = fuser::Config::default();
    config.mount_options.extend([
        MountOption::RO,
        MountOption::FSName("vmvault".into()),
        MountOption::Subtype("vmvault".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
    ]);
    let fs = MountFs { tx: Mutex::new(tx) };
    let session = fuser::spawn_mount(fs, &a.mountpoint, &config).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (a normal user needs /dev/fuse readable and writable by all, as Debian sets it, \
             and fusermount3 from the fuse3 package)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot mount on {}: {e}{hint}", a.mountpoint.display())
    })?;
    if !cli.quiet {
        eprintln!(
            "mounted {count} snapshot(s) of {vms} VM(s) at {}; Ctrl-C or `fusermount3 -u {}` unmounts",
            a.mountpoint.display(),
            a.mountpoint.display()
        );
    }
    let cancel = crate::cancel_flag();
    loop {
        if session.guard.is_finished() {
            // Unmounted from outside.
            let r = session.join();
            drop(worker);
            r.context("the FUSE session failed")?;
            break;
        }
        if cancel.load(Ordering::SeqCst) {
            session
                .umount_and_join()
                .with_context(|| format!("cannot unmount {}", a.mountpoint.display()))?;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !cli.quiet {
        eprintln!("unmounted {}", a.mountpoint.display());
    }
    Ok(crate::exit::OK)
}
