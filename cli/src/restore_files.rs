//! `vmvault restore --include`: files and directory trees out of guest file systems,
//! with their permissions, times, symlinks and (as root) owners.
//!
//! Each `DISK/PART/path` is written to `TARGET/DISK/PART/path`, the same path as in the
//! mount. Nothing is ever written outside the target: parent directories are created
//! one component at a time and must be real directories (never symlinks, which a guest
//! could plant), and files are created without following symlinks.

use crate::browse::{Browser, GuestPath};
use crate::{human, Cli};
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vmvault_ingest::guest::walk::{walk, WalkLimits};
use vmvault_ingest::guest::{GuestFs, NodeKind, NodeMeta};

/// Bytes copied per read.
const STEP: usize = 1 << 20;

/// What a file restore did.
#[derive(Debug, Default, serde::Serialize)]
pub struct FilesSummary {
    /// Regular files written.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Device nodes, FIFOs and sockets skipped.
    pub skipped_special: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Entries that could not be restored, with the reason.
    pub errors: Vec<String>,
}

/// Restores every `include` of snapshot `b` under `target`.
pub fn run(
    cli: &Cli,
    b: &Browser,
    includes: &[String],
    target: &Path,
    overwrite: bool,
) -> Result<i32> {
    let mut paths = Vec::new();
    for inc in includes {
        let p = GuestPath::parse(inc)?;
        if p.volume.is_none() {
            bail!("--include {inc:?}: name a path inside a file system, DISK/PART/path");
        }
        paths.push(p);
    }
    std::fs::create_dir_all(target)
        .with_context(|| format!("cannot create directory {}", target.display()))?;
    let mut r = Restorer {
        sum: FilesSummary::default(),
        overwrite,
        as_root: rustix::process::geteuid().is_root(),
        dir_meta: Vec::new(),
    };
    for p in &paths {
        let (fs, inner) = b.resolve(p)?;
        let meta = fs
            .stat(&inner)
            .with_context(|| format!("--include {}", p.display()))?;
        let rel = PathBuf::from(p.display());
        let dest = safe_dir(target, rel.parent().unwrap_or(Path::new("")))?
            .join(rel.file_name().unwrap_or_default());
        r.entry(fs, &inner, &meta, &dest, &p.display());
        if meta.kind == NodeKind::Dir {
            let report = walk(fs, &inner, WalkLimits::default(), &mut |path, m| {
                let rel = path.strip_prefix(inner.as_str()).unwrap_or(path);
                let d = dest.join(rel.trim_start_matches('/'));
                let shown = format!(
                    "{}/{}/{path}",
                    p.disk.as_deref().unwrap_or(""),
                    p.volume.as_deref().unwrap_or("")
                );
                r.entry(fs, path, m, &d, &shown);
                Ok(())
            })
            .with_context(|| format!("--include {}", p.display()))?;
            for e in report.problems {
                r.sum.errors.push(e.to_string());
            }
        }
    }
    // Directories last, deepest first, so their times survive the writes into them and a
    // read-only mode does not block them.
    let dirs = std::mem::take(&mut r.dir_meta);
    for (path, meta) in dirs.iter().rev() {
        if let Err(e) = r.finish(path, meta) {
            r.sum.errors.push(format!("{}: {e:#}", path.display()));
        }
    }
    let s = &r.sum;
    if cli.json {
        println!("{}", serde_json::to_string(s).unwrap_or_default());
    } else if !cli.quiet {
        for e in &s.errors {
            eprintln!("vmvault: error: {e}");
        }
        println!(
            "restored {} files ({}), {} directories, {} symlinks into {}{}",
            s.files,
            human::bytes(s.bytes),
            s.dirs,
            s.symlinks,
            target.display(),
            if s.skipped_special > 0 {
                format!("; skipped {} device nodes/FIFOs/sockets", s.skipped_special)
            } else {
                String::new()
            }
        );
    }
    if !s.errors.is_empty() {
        if cli.quiet || cli.json {
            for e in &s.errors {
                eprintln!("vmvault: error: {e}");
            }
        }
        bail!("{} entries could not be restored", s.errors.len());
    }
    Ok(crate::exit::OK)
}

/// Creates `target/rel` one component at a time; every component that exists must be a
/// real directory, so a symlink planted by a guest cannot lead outside the target.
fn safe_dir(target: &Path, rel: &Path) -> Result<PathBuf> {
    let mut p = target.to_path_buf();
    for c in rel.components() {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("{} exists and is not a directory", p.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(&p)
                .with_context(|| format!("cannot create directory {}", p.display()))?,
            Err(e) => return Err(e).with_context(|| format!("cannot examine {}", p.display())),
        }
    }
    Ok(p)
}

struct Restorer {
    sum: FilesSummary,
    overwrite: bool,
    as_root: bool,
    dir_meta: Vec<(PathBuf, NodeMeta)>,
}

fn system_time(secs: i64, nsec: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

impl Restorer {
    fn entry(&mut self, fs: &dyn GuestFs, path: &str, meta: &NodeMeta, dest: &Path, shown: &str) {
        if let Err(e) = self.try_entry(fs, path, meta, dest) {
            self.sum.errors.push(format!("{shown}: {e:#}"));
        }
    }

    /// Makes room for `dest`: an existing entry is an error unless --overwrite, which
    /// removes a file or symlink (never a directory).
    fn clear(&self, dest: &Path, want_dir: bool) -> Result<bool> {
        match std::fs::symlink_metadata(dest) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot examine {}", dest.display())),
            Ok(m) if m.is_dir() && want_dir => Ok(true),
            Ok(_) if !self.overwrite => {
                bail!("{} exists (use --overwrite to replace it)", dest.display())
            }
            Ok(m) if m.is_dir() => bail!("{} is a directory", dest.display()),
            Ok(_) => {
                std::fs::remove_file(dest)
                    .with_context(|| format!("cannot replace {}", dest.display()))?;
                Ok(false)
            }
        }
    }

    fn try_entry(
        &mut self,
        fs: &dyn GuestFs,
        path: &str,
        meta: &NodeMeta,
        dest: &Path,
    ) -> Result<()> {
        // The parent was created (or checked) before its children; a symlink there, left
        // by an earlier restore, must not be followed out of the target.
        if let Some(parent) = dest.parent() {
            let ok = std::fs::symlink_metadata(parent).is_ok_and(|m| m.is_dir());
            if !ok {
                bail!("{} is not a directory", parent.display());
            }
        }
        match meta.kind {
            NodeKind::Dir => {
                if !self.clear(dest, true)? {
                    std::fs::create_dir(dest)
                        .with_context(|| format!("cannot create directory {}", dest.display()))?;
                }
                // Writable by us until the end, whatever the guest's mode.
                std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o700))
                    .with_context(|| format!("cannot set permissions of {}", dest.display()))?;
                self.sum.dirs += 1;
                self.dir_meta.push((dest.to_path_buf(), meta.clone()));
            }
            NodeKind::Symlink => {
                let target = fs.read_link(path)?;
                self.clear(dest, false)?;
                let target =
                    <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(target);
                std::os::unix::fs::symlink(&target, dest)
                    .with_context(|| format!("cannot create symlink {}", dest.display()))?;
                self.owner(dest, meta)?;
                rustix::fs::utimensat(
                    rustix::fs::CWD,
                    dest,
                    &timestamps(meta),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .with_context(|| format!("cannot set the times of {}", dest.display()))?;
                self.sum.symlinks += 1;
            }
            NodeKind::File => {
                let mut src = fs.open(path)?;
                self.clear(dest, false)?;
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(dest)
                    .with_context(|| format!("cannot create {}", dest.display()))?;
                let len = src.len();
                let mut buf = vec![0u8; STEP.min(len as usize).max(1)];
                let mut pos = 0u64;
                while pos < len {
                    let n = src.read_at(pos, &mut buf)?;
                    if n == 0 {
                        bail!("the file ended at {pos} bytes, its size says {len}");
                    }
                    if buf[..n].iter().all(|&b| b == 0) {
                        // Leave holes for zero runs, as sparse as the guest file may be.
                        out.set_len(pos + n as u64)
                            .with_context(|| format!("cannot write {}", dest.display()))?;
                        std::io::Seek::seek(&mut out, std::io::SeekFrom::Start(pos + n as u64))?;
                    } else {
                        out.write_all(&buf[..n])
                            .with_context(|| format!("cannot write {}", dest.display()))?;
                    }
                    pos += n as u64;
                }
                self.sum.bytes += len;
                self.sum.files += 1;
                self.owner(dest, meta)?;
                out.set_permissions(std::fs::Permissions::from_mode(meta.mode & 0o7777))
                    .with_context(|| format!("cannot set permissions of {}", dest.display()))?;
                out.set_times(file_times(meta))
                    .with_context(|| format!("cannot set the times of {}", dest.display()))?;
            }
            NodeKind::Special => self.sum.skipped_special += 1,
        }
        Ok(())
    }

    fn owner(&self, dest: &Path, meta: &NodeMeta) -> Result<()> {
        if self.as_root {
            std::os::unix::fs::lchown(dest, Some(meta.uid), Some(meta.gid))
                .with_context(|| format!("cannot set the owner of {}", dest.display()))?;
        }
        Ok(())
    }

    fn finish(&self, dest: &Path, meta: &NodeMeta) -> Result<()> {
        self.owner(dest, meta)?;
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(meta.mode & 0o7777))
            .with_context(|| format!("cannot set permissions of {}", dest.display()))?;
        let dir = File::open(dest).with_context(|| format!("cannot open {}", dest.display()))?;
        dir.set_times(file_times(meta))
            .with_context(|| format!("cannot set the times of {}", dest.display()))?;
        Ok(())
    }
}

fn file_times(meta: &NodeMeta) -> std::fs::FileTimes {
    std::fs::FileTimes::new()
        .set_modified(system_time(meta.mtime, meta.mtime_nsec))
        .set_accessed(system_time(meta.atime, 0))
}

fn timestamps(meta: &NodeMeta) -> rustix::fs::Timestamps {
    rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: meta.atime,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: meta.mtime,
            tv_nsec: meta.mtime_nsec.into(),
        },
    }
}
