//! FAT12/16/32 guest file systems, read with the `fatfs` crate. Long file names (VFAT)
//! are the names shown; lookups are case-insensitive and also match the 8.3 alias, as
//! on Windows. FAT has no permissions or owners, and records times in local time, which
//! are reported as if they were UTC. Nothing is ever written: the volume is reached
//! through a cursor whose writes fail, and the crate is used with its defaults (no
//! access-date updates), so it never tries to write.

use super::ntfs::{Meter, MeteredCursor};
use super::view::VolumeRead;
use super::{guarded, DirEntry, GuestError, GuestFile, GuestFs, NodeKind, NodeMeta, Result};
use fatfs::{Date, DateTime, FileAttributes, FileSystem, FsOptions};
use std::io::{Read, Seek, SeekFrom};
use std::rc::Rc;
use std::sync::Arc;

/// Entries of one directory at most: FAT limits a directory to 65536 32-byte slots, so
/// more means a loop in its cluster chain.
const MAX_DIR_ENTRIES: usize = 65_536;
/// Read allowance of one directory scan (the crate reads each 32-byte slot in several
/// small reads); far above what the largest legal directory needs.
const DIR_BUDGET: u64 = 512 << 20;
/// Read allowance of opening the volume.
const OPEN_BUDGET: u64 = 1 << 20;

type Fs = FileSystem<MeteredCursor>;
type FatEntry<'a> = fatfs::DirEntry<'a, MeteredCursor>;

/// A FAT12, FAT16 or FAT32 file system, opened read-only. Not `Send` (the crate keeps
/// its reader in a `RefCell`).
///
/// Guarantees: every call into `fatfs` runs under [`guarded`], directory scans are
/// bounded (entries and bytes read), so damage (cluster chain loops included) yields
/// [`GuestError`]s naming the volume and the guest path, never a panic or a hang.
/// Listings never show `.`, `..` or the volume label.
pub struct FatFs {
    fs: Fs,
    meter: Rc<Meter>,
    name: String,
}

/// What a path names.
enum Found<'a> {
    Root,
    Entry(FatEntry<'a>),
}

impl FatFs {
    /// Opens the FAT file system on `vol`: the boot sector (and FAT32's FSInfo sector)
    /// are read and checked now. Damage is an error naming the volume.
    pub fn open(vol: Arc<dyn VolumeRead>) -> Result<FatFs> {
        let name = vol.name().to_string();
        let (cursor, meter) = MeteredCursor::new(vol);
        meter.reset(OPEN_BUDGET);
        let fs = guarded(&name, || {
            FileSystem::new(cursor, FsOptions::new()).map_err(|e| meter.io_error(&name, e, "FAT"))
        })?;
        let fs = FatFs { fs, meter, name };
        // The root directory must at least start to read.
        fs.read_dir("")?;
        Ok(fs)
    }

    fn label(&self, path: &str) -> String {
        format!("{}/{}", self.name, path.trim_start_matches('/'))
    }

    fn err(&self, label: &str, e: std::io::Error) -> GuestError {
        self.meter.io_error(label, e, "FAT")
    }

    /// The entries of `dir`, without `.` and `..`, bounded.
    fn scan<'a>(
        &'a self,
        dir: &fatfs::Dir<'a, MeteredCursor>,
        label: &str,
    ) -> Result<Vec<FatEntry<'a>>> {
        self.meter.reset(DIR_BUDGET);
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| self.err(label, e))?;
            let name = entry.file_name();
            if name == "." || name == ".." {
                continue;
            }
            if out.len() >= MAX_DIR_ENTRIES {
                return Err(GuestError::corrupt(
                    label,
                    format!("the directory has more than {MAX_DIR_ENTRIES} entries (a loop in its cluster chain?)"),
                ));
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// What `path` names.
    fn lookup(&self, path: &str) -> Result<Found<'_>> {
        let label = self.label(path);
        let comps = super::path_components(path)?;
        let mut found = Found::Root;
        for comp in comps {
            let dir = match &found {
                Found::Root => self.fs.root_dir(),
                Found::Entry(e) if e.is_dir() => e.to_dir(),
                Found::Entry(_) => return Err(GuestError::NotADirectory(label)),
            };
            let mut folded = None;
            let mut exact = None;
            for e in self.scan(&dir, &label)? {
                let name = e.file_name();
                if name == comp {
                    exact = Some(e);
                    break;
                }
                if folded.is_none() && (eq_fold(&name, comp) || eq_fold(&e.short_file_name(), comp))
                {
                    folded = Some(e);
                }
            }
            match exact.or(folded) {
                Some(e) => found = Found::Entry(e),
                None => return Err(GuestError::NotFound(label)),
            }
        }
        Ok(found)
    }
}

/// Case-insensitive equality, as FAT compares names.
fn eq_fold(a: &str, b: &str) -> bool {
    a.chars()
        .flat_map(char::to_uppercase)
        .eq(b.chars().flat_map(char::to_uppercase))
}

/// Days from 1970-01-01 to the proleptic Gregorian date `y-m-d`.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A FAT date as Unix seconds at its midnight (UTC); `None` for an unset date (month or
/// day 0).
fn fat_date(d: Date) -> Option<i64> {
    if d.month == 0 || d.day == 0 {
        return None;
    }
    let month = i64::from(d.month.min(12));
    let day = i64::from(d.day.min(31));
    Some(days_from_civil(i64::from(d.year), month, day) * 86_400)
}

/// A FAT date and time as Unix seconds and nanoseconds (UTC).
fn fat_datetime(t: DateTime) -> (i64, u32) {
    let Some(day) = fat_date(t.date) else {
        return (0, 0);
    };
    let secs = i64::from(t.time.hour.min(23)) * 3600
        + i64::from(t.time.min.min(59)) * 60
        + i64::from(t.time.sec.min(59));
    (day + secs, u32::from(t.time.millis.min(999)) * 1_000_000)
}

fn meta_of(e: &FatEntry<'_>) -> NodeMeta {
    let dir = e.is_dir();
    let read_only = e.attributes().contains(FileAttributes::READ_ONLY);
    let (mtime, mtime_nsec) = fat_datetime(e.modified());
    NodeMeta {
        kind: if dir { NodeKind::Dir } else { NodeKind::File },
        size: if dir { 0 } else { e.len() },
        mode: match (dir, read_only) {
            (true, _) => 0o755,
            (false, true) => 0o444,
            (false, false) => 0o644,
        },
        uid: 0,
        gid: 0,
        mtime,
        mtime_nsec,
        atime: fat_date(e.accessed()).unwrap_or(mtime),
    }
}

const ROOT_META: NodeMeta = NodeMeta {
    kind: NodeKind::Dir,
    size: 0,
    mode: 0o755,
    uid: 0,
    gid: 0,
    mtime: 0,
    mtime_nsec: 0,
    atime: 0,
};

impl GuestFs for FatFs {
    fn fs_type(&self) -> &'static str {
        "vfat"
    }

    fn stat(&self, path: &str) -> Result<NodeMeta> {
        let label = self.label(path);
        guarded(&label, || match self.lookup(path)? {
            Found::Root => Ok(ROOT_META),
            Found::Entry(e) => Ok(meta_of(&e)),
        })
    }

    fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let label = self.label(path);
        guarded(&label, || {
            let dir = match self.lookup(path)? {
                Found::Root => self.fs.root_dir(),
                Found::Entry(e) if e.is_dir() => e.to_dir(),
                Found::Entry(_) => return Err(GuestError::NotADirectory(label.clone())),
            };
            let mut out = Vec::new();
            for e in self.scan(&dir, &label)? {
                let name = e.file_name();
                if name.is_empty() || name.contains('/') || name.contains('\0') {
                    return Err(GuestError::corrupt(
                        label.clone(),
                        "a directory entry has an invalid name",
                    ));
                }
                out.push(DirEntry {
                    meta: meta_of(&e),
                    name,
                });
            }
            Ok(out)
        })
    }

    fn read_link(&self, path: &str) -> Result<Vec<u8>> {
        let label = self.label(path);
        guarded(&label, || {
            self.lookup(path)?;
            Err(GuestError::WrongKind {
                path: label.clone(),
                reason: "not a symbolic link (FAT has none)".into(),
            })
        })
    }

    fn open(&self, path: &str) -> Result<Box<dyn GuestFile + '_>> {
        let label = self.label(path);
        let (file, len) = guarded(&label, || match self.lookup(path)? {
            Found::Root => Err(GuestError::IsADirectory(label.clone())),
            Found::Entry(e) if e.is_dir() => Err(GuestError::IsADirectory(label.clone())),
            Found::Entry(e) => Ok((e.to_file(), e.len())),
        })?;
        Ok(Box::new(FatFile {
            file,
            len,
            pos: 0,
            meter: self.meter.clone(),
            label,
        }))
    }
}

/// An open FAT file. Reads continue from the previous position without seeking, so a
/// sequential read follows the cluster chain once; a seek elsewhere walks the chain from
/// its start (the crate keeps no map), bounded by the file's size.
struct FatFile<'a> {
    file: fatfs::File<'a, MeteredCursor>,
    len: u64,
    /// Where `file` is positioned; `u64::MAX` when unknown (after a failure).
    pos: u64,
    meter: Rc<Meter>,
    label: String,
}

impl GuestFile for FatFile<'_> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.len - offset).unwrap_or(usize::MAX));
        let (file, meter, label) = (&mut self.file, &self.meter, &self.label);
        let pos = &mut self.pos;
        guarded(label, || {
            // File reads are bounded by the file's size (at most 4 GiB) and a seek by its
            // cluster count, so no allowance is needed beyond that.
            meter.reset(u64::MAX);
            let at = *pos;
            *pos = u64::MAX;
            if at != offset {
                let got = file
                    .seek(SeekFrom::Start(offset))
                    .map_err(|e| meter.io_error(label, e, "FAT"))?;
                if got != offset {
                    return Err(GuestError::corrupt(
                        label.as_str(),
                        format!("the cluster chain ends at {got}, before the file's size"),
                    ));
                }
            }
            let mut done = 0;
            while done < want {
                let n = file
                    .read(&mut buf[done..want])
                    .map_err(|e| meter.io_error(label, e, "FAT"))?;
                if n == 0 {
                    return Err(GuestError::corrupt(
                        label.as_str(),
                        format!(
                            "the cluster chain ends at {}, before the file's size",
                            offset + done as u64
                        ),
                    ));
                }
                done += n;
            }
            *pos = offset + done as u64;
            Ok(done)
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    //! FAT volumes built by `mkfs.fat` and `mcopy` from a source tree, read back and
    //! compared; plus helpers the NTFS tests share.

    use super::*;
    use crate::guest::view::MemView;
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::OnceLock;
    use std::time::{Duration, UNIX_EPOCH};

    /// What one entry of a test tree should read as.
    #[derive(Clone, Debug)]
    pub(in crate::guest) enum Spec {
        Dir,
        File(Vec<u8>),
        /// A symlink (FAT has none; the shared tree builder supports them).
        #[allow(dead_code)]
        Link(String),
    }

    /// A test tree: paths (relative, `/`-separated, parents first) and, where set, the
    /// mtime (seconds, nanoseconds) to give and expect.
    pub(in crate::guest) type Model = Vec<(String, Spec, Option<(i64, u32)>)>;

    /// The tool `name` from PATH or the sbin directories, if installed.
    pub(in crate::guest) fn tool(name: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }

    /// Runs `cmd`, failing the test with its output when it fails.
    pub(in crate::guest) fn run(cmd: &mut Command) {
        let out = cmd.output().expect("spawn a test tool");
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `n` bytes of a pattern that repeats only every 251 * 256 bytes.
    pub(in crate::guest) fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| ((i % 251) as u8) ^ ((i / 251) as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    /// A small deterministic generator for offsets and corruption.
    pub(in crate::guest) struct Lcg(pub u64);

    impl Lcg {
        pub(in crate::guest) fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }
    }

    /// The tree both FAT and NTFS tests start from: nested directories, a long name, an
    /// empty file, a multi-cluster file; mtimes on even seconds (FAT's resolution).
    pub(in crate::guest) fn base_model() -> Model {
        let t = |k: i64| Some((1_600_000_000 + 2 * k, 0));
        vec![
            (
                "readme.txt".into(),
                Spec::File(b"hello, guest\n".to_vec()),
                t(1),
            ),
            (
                "A long file name with spaces.txt".into(),
                Spec::File(pattern(1000, 1)),
                t(2),
            ),
            ("empty.dat".into(), Spec::File(Vec::new()), t(3)),
            (
                "big.bin".into(),
                Spec::File(pattern(300 * 1024 + 123, 2)),
                t(4),
            ),
            ("MixedCase.TXT".into(), Spec::File(b"case".to_vec()), t(5)),
            ("docs".into(), Spec::Dir, None),
            ("docs/notes.md".into(), Spec::File(pattern(5000, 3)), t(6)),
            ("docs/sub".into(), Spec::Dir, None),
            ("docs/sub/deeper".into(), Spec::Dir, None),
            (
                "docs/sub/deeper/leaf.txt".into(),
                Spec::File(b"leaf\n".to_vec()),
                t(7),
            ),
            (
                "docs/sub/x.bin".into(),
                Spec::File(pattern(70_000, 4)),
                t(8),
            ),
        ]
    }

    fn set_mtime(path: &Path, secs: i64, nsec: u32) {
        let when = UNIX_EPOCH + Duration::new(secs as u64, nsec);
        let f = std::fs::File::options()
            .write(true)
            .open(path)
            .or_else(|_| std::fs::File::open(path))
            .expect("open for set_modified");
        f.set_modified(when).expect("set_modified");
    }

    /// Writes `model` under `root` (which exists), mtimes included (directories last,
    /// deepest first, so that filling them does not change them again).
    pub(in crate::guest) fn materialize(root: &Path, model: &Model) {
        for (path, spec, _) in model {
            let p = root.join(path);
            match spec {
                Spec::Dir => std::fs::create_dir(&p).expect("mkdir"),
                Spec::File(data) => std::fs::write(&p, data).expect("write"),
                Spec::Link(target) => std::os::unix::fs::symlink(target, &p).expect("symlink"),
            }
        }
        for (path, spec, mtime) in model.iter().rev() {
            if let (Some((s, n)), false) = (mtime, matches!(spec, Spec::Link(_))) {
                set_mtime(&root.join(path), *s, *n);
            }
        }
    }

    /// Reads all of `path` and checks it against `want`, also in 4097-byte pieces at
    /// pseudo-random offsets and at and past the end.
    pub(in crate::guest) fn check_content(fs: &dyn GuestFs, path: &str, want: &[u8]) {
        let mut f = fs.open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        assert_eq!(f.len(), want.len() as u64, "{path}: length");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = f.read_at(got.len() as u64, &mut buf).expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            assert!(got.len() <= want.len(), "{path}: reads past its length");
        }
        assert!(got == want, "{path}: content differs");
        let mut rng = Lcg(want.len() as u64 + 7);
        let mut piece = vec![0u8; 4097];
        for _ in 0..24 {
            let off = rng.next() % (want.len() as u64 + 1);
            let n = f.read_at(off, &mut piece).expect("read piece");
            let end = (off as usize + 4097).min(want.len());
            assert_eq!(n, end - off as usize, "{path}: piece length at {off}");
            assert!(
                piece[..n] == want[off as usize..end],
                "{path}: piece at {off}"
            );
        }
        // Backwards, in odd sizes: random access is not sequential-only.
        let mut off = want.len();
        while off > 0 {
            let start = off.saturating_sub(3001);
            let n = f
                .read_at(start as u64, &mut piece[..off - start])
                .expect("read back");
            assert_eq!(n, off - start);
            assert!(
                piece[..n] == want[start..off],
                "{path}: backwards at {start}"
            );
            off = start;
        }
        assert_eq!(f.read_at(want.len() as u64, &mut piece).expect("at end"), 0);
        assert_eq!(
            f.read_at(want.len() as u64 + 5000, &mut piece)
                .expect("past end"),
            0
        );
    }

    /// Checks `fs` against `model`: every directory lists exactly its model children
    /// (plus `extra_root` names in the root), with the right kinds, sizes, mtimes,
    /// content and link targets.
    pub(in crate::guest) fn check_tree(fs: &dyn GuestFs, model: &Model, check_dir_mtimes: bool) {
        let mut children: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        children.insert(String::new(), BTreeSet::new());
        for (path, spec, _) in model {
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
            children
                .entry(parent.to_string())
                .or_default()
                .insert(name.to_string());
            if matches!(spec, Spec::Dir) {
                children.entry(path.clone()).or_default();
            }
        }
        for (dir, want) in &children {
            let got = fs
                .read_dir(dir)
                .unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}"));
            let names: BTreeSet<String> = got.iter().map(|e| e.name.clone()).collect();
            assert_eq!(
                names.len(),
                got.len(),
                "{dir:?}: a name is listed twice: {got:?}"
            );
            assert_eq!(&names, want, "{dir:?}: names");
            for e in &got {
                let path = if dir.is_empty() {
                    e.name.clone()
                } else {
                    format!("{dir}/{}", e.name)
                };
                assert_eq!(
                    fs.stat(&path).expect("stat"),
                    e.meta,
                    "{path}: stat vs read_dir"
                );
            }
        }
        for (path, spec, mtime) in model {
            let meta = fs.stat(path).unwrap_or_else(|e| panic!("stat {path}: {e}"));
            assert_eq!(meta.uid, 0);
            match spec {
                Spec::Dir => {
                    assert_eq!(meta.kind, NodeKind::Dir, "{path}");
                    assert_eq!(meta.mode, 0o755, "{path}");
                    assert!(fs
                        .open(path)
                        .is_err_and(|e| matches!(e, GuestError::IsADirectory(_))));
                }
                Spec::File(data) => {
                    assert_eq!(meta.kind, NodeKind::File, "{path}");
                    assert_eq!(meta.size, data.len() as u64, "{path}: size");
                    check_content(fs, path, data);
                }
                Spec::Link(target) => {
                    assert_eq!(meta.kind, NodeKind::Symlink, "{path}");
                    assert_eq!(meta.size, target.len() as u64, "{path}: size");
                    assert_eq!(fs.read_link(path).expect("read_link"), target.as_bytes());
                }
            }
            if let Some((s, n)) = mtime {
                if check_dir_mtimes || !matches!(spec, Spec::Dir) {
                    assert_eq!((meta.mtime, meta.mtime_nsec), (*s, *n), "{path}: mtime");
                }
            }
        }
    }

    /// Walks everything `fs` shows within limits, reading files: damage must give
    /// errors, never a panic or a hang.
    pub(in crate::guest) fn exercise(fs: &dyn GuestFs) {
        let mut stack = vec![(String::new(), 0)];
        let mut seen = 0;
        let mut buf = vec![0u8; 65536];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(entries) = fs.read_dir(&dir) else {
                continue;
            };
            for e in entries {
                seen += 1;
                if seen > 5000 {
                    return;
                }
                let path = format!("{dir}/{}", e.name);
                let _ = fs.stat(&path);
                match e.meta.kind {
                    NodeKind::Dir if depth < 12 => stack.push((path, depth + 1)),
                    NodeKind::File => {
                        if let Ok(mut f) = fs.open(&path) {
                            let len = f.len().min(1 << 20);
                            let mut pos = 0;
                            while pos < len {
                                match f.read_at(pos, &mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => pos += n as u64,
                                }
                            }
                            let _ = f.read_at(f.len() / 2, &mut buf[..4097]);
                        }
                    }
                    NodeKind::Symlink => {
                        let _ = fs.read_link(&path);
                    }
                    _ => {}
                }
            }
        }
    }

    pub(in crate::guest) fn vol(bytes: Vec<u8>, name: &str) -> Arc<dyn VolumeRead> {
        Arc::new(MemView::new(bytes, name))
    }

    /// A FAT image made with `mkfs_args` and filled from the base model by `mcopy`
    /// (`None`, with a note, when mtools or dosfstools are missing).
    fn build(mkfs_args: &[&str], kib: u32) -> Option<(Vec<u8>, Model)> {
        let (Some(mkfs), Some(mcopy), Some(mattrib)) =
            (tool("mkfs.fat"), tool("mcopy"), tool("mattrib"))
        else {
            eprintln!("skipped: mkfs.fat, mcopy or mattrib not installed");
            return None;
        };
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).expect("mkdir");
        let model = base_model();
        materialize(&src, &model);
        let img = tmp.path().join("img.fat");
        run(Command::new(mkfs)
            .args(mkfs_args)
            .args(["-n", "GUESTVOL", "-C"])
            .arg(&img)
            .arg(kib.to_string()));
        let mut cmd = Command::new(mcopy);
        cmd.env("TZ", "UTC").env("MTOOLS_SKIP_CHECK", "1");
        cmd.args(["-s", "-m", "-i"]).arg(&img);
        for (path, _, _) in &model {
            if !path.contains('/') {
                cmd.arg(src.join(path));
            }
        }
        run(cmd.arg("::/"));
        run(Command::new(mattrib)
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i"])
            .arg(&img)
            .args(["+r", "::/MixedCase.TXT"]));
        Some((std::fs::read(&img).expect("read image"), model))
    }

    fn image(which: usize) -> Option<&'static (Vec<u8>, Model)> {
        type Built = OnceLock<Option<(Vec<u8>, Model)>>;
        static IMAGES: [Built; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        IMAGES[which]
            .get_or_init(|| match which {
                0 => build(&["-F", "12"], 4000),
                1 => build(&["-F", "16"], 33000),
                _ => build(&["-F", "32", "-s", "1"], 40000),
            })
            .as_ref()
    }

    fn check_image(which: usize) {
        let Some((bytes, model)) = image(which) else {
            return;
        };
        let fs = FatFs::open(vol(bytes.clone(), "disk0/p1")).expect("open FAT");
        assert_eq!(fs.fs_type(), "vfat");
        check_tree(&fs, model, false);
        let root = fs.stat("").expect("stat root");
        assert_eq!(root.kind, NodeKind::Dir);
        assert_eq!(fs.stat("/").expect("stat /"), root);
        // The read-only attribute set by mattrib; the others are plain.
        assert_eq!(fs.stat("MixedCase.TXT").expect("stat").mode, 0o444);
        assert_eq!(fs.stat("readme.txt").expect("stat").mode, 0o644);
        // FAT records the access date only.
        let m = fs.stat("readme.txt").expect("stat");
        assert_eq!(m.atime.rem_euclid(86_400), 0, "atime is a date");
        // Lookups are case-insensitive and accept the 8.3 alias, like Windows.
        assert_eq!(fs.stat("DOCS/NOTES.MD").expect("fold").size, 5000);
        let alias = fs.stat("ALONGF~1.TXT").expect("8.3 alias");
        assert_eq!(alias.size, 1000);
        check_errors(&fs);
    }

    /// The error kinds of path lookups, each naming the volume and the path.
    pub(in crate::guest) fn check_errors(fs: &dyn GuestFs) {
        match fs.stat("docs/nope.txt") {
            Err(GuestError::NotFound(p)) => assert_eq!(p, "disk0/p1/docs/nope.txt"),
            other => panic!("missing file: {other:?}"),
        }
        match fs.stat("nope/deeper") {
            Err(GuestError::NotFound(p)) => assert_eq!(p, "disk0/p1/nope/deeper"),
            other => panic!("missing dir: {other:?}"),
        }
        match fs.stat("readme.txt/x") {
            Err(GuestError::NotADirectory(p)) => assert_eq!(p, "disk0/p1/readme.txt/x"),
            other => panic!("file as dir: {other:?}"),
        }
        match fs.read_dir("readme.txt") {
            Err(GuestError::NotADirectory(p)) => assert_eq!(p, "disk0/p1/readme.txt"),
            other => panic!("read_dir on a file: {other:?}"),
        }
        match fs.open("docs/sub") {
            Err(GuestError::IsADirectory(p)) => assert_eq!(p, "disk0/p1/docs/sub"),
            other => panic!("open a dir: {:?}", other.map(|_| ())),
        }
        match fs.open("") {
            Err(GuestError::IsADirectory(_)) => {}
            other => panic!("open the root: {:?}", other.map(|_| ())),
        }
        assert!(matches!(fs.stat("../x"), Err(GuestError::BadPath(_))));
        assert!(matches!(
            fs.read_link("readme.txt"),
            Err(GuestError::WrongKind { .. })
        ));
    }

    #[test]
    fn fat12_reads_like_its_source() {
        check_image(0);
    }

    #[test]
    fn fat16_reads_like_its_source() {
        check_image(1);
    }

    #[test]
    fn fat32_reads_like_its_source() {
        check_image(2);
    }

    #[test]
    fn fat_times_convert_to_unix() {
        let dt = DateTime {
            date: Date {
                year: 2020,
                month: 9,
                day: 13,
            },
            time: fatfs::Time {
                hour: 12,
                min: 26,
                sec: 40,
                millis: 0,
            },
        };
        assert_eq!(fat_datetime(dt), (1_600_000_000, 0));
        assert_eq!(
            fat_date(Date {
                year: 1980,
                month: 1,
                day: 1
            }),
            Some(315_532_800)
        );
        assert_eq!(
            fat_date(Date {
                year: 1980,
                month: 0,
                day: 0
            }),
            None
        );
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn damaged_boot_sector_is_an_error() {
        let Some((bytes, _)) = image(1) else { return };
        let mut bad = bytes.clone();
        bad[11] = 0; // bytes per sector
        bad[12] = 3;
        assert!(FatFs::open(vol(bad, "disk0/p1")).is_err());
        let mut bad = bytes.clone();
        bad[510] = 0; // signature
        assert!(FatFs::open(vol(bad, "disk0/p1")).is_err());
        // Truncated volume: opens or not, but never panics and reads fail cleanly.
        let cut = bytes[..bytes.len() / 3].to_vec();
        if let Ok(fs) = FatFs::open(vol(cut, "disk0/p1")) {
            exercise(&fs);
        }
        assert!(FatFs::open(vol(vec![0; 4096], "disk0/p1")).is_err());
        assert!(FatFs::open(vol(Vec::new(), "disk0/p1")).is_err());
    }

    /// The byte offset and length of FAT16 image `b`'s first FAT, and its data area
    /// (offset, cluster size), from the boot sector.
    fn fat16_layout(b: &[u8]) -> (usize, usize, usize, usize, usize) {
        let bps = usize::from(u16::from_le_bytes([b[11], b[12]]));
        let spc = usize::from(b[13]);
        let reserved = usize::from(u16::from_le_bytes([b[14], b[15]]));
        let fats = usize::from(b[16]);
        let root_entries = usize::from(u16::from_le_bytes([b[17], b[18]]));
        let spf = usize::from(u16::from_le_bytes([b[22], b[23]]));
        let fat = reserved * bps;
        let root = fat + fats * spf * bps;
        let data = root + root_entries * 32;
        (fat, spf * bps, root, data, spc * bps)
    }

    #[test]
    fn directory_cluster_loop_is_an_error() {
        let Some((bytes, _)) = image(1) else { return };
        let mut b = bytes.clone();
        let (fat, _, root, data, cluster) = fat16_layout(&b);
        let entry = (0..512)
            .map(|i| root + i * 32)
            .find(|&at| &b[at..at + 11] == b"DOCS       ")
            .expect("DOCS in the root directory");
        let first = usize::from(u16::from_le_bytes([b[entry + 26], b[entry + 27]]));
        // Fill the directory's cluster with deleted slots after its entries (no end
        // marker), and point its chain at itself.
        let start = data + (first - 2) * cluster;
        for slot in (start..start + cluster).step_by(32) {
            if b[slot] == 0 {
                b[slot] = 0xE5;
            }
        }
        b[fat + 2 * first..fat + 2 * first + 2].copy_from_slice(&(first as u16).to_le_bytes());
        let fs = FatFs::open(vol(b, "disk0/p1")).expect("open");
        match fs.read_dir("docs") {
            Err(GuestError::Corrupt { what, .. }) => assert_eq!(what, "disk0/p1/docs"),
            other => panic!("looping directory: {other:?}"),
        }
        assert!(fs.stat("docs/nothing").is_err());
        // The rest of the volume stays readable.
        assert_eq!(fs.stat("big.bin").expect("stat").size, 300 * 1024 + 123);

        // A chain loop that repeats live entries is cut off by the entry limit.
        let mut b = bytes.clone();
        b[fat + 2 * first..fat + 2 * first + 2].copy_from_slice(&(first as u16).to_le_bytes());
        let start = data + (first - 2) * cluster;
        let used = (start..start + cluster)
            .step_by(32)
            .filter(|&s| b[s] != 0)
            .count();
        // Copy the live slots over the whole cluster so no end marker remains.
        let live: Vec<u8> = b[start..start + used * 32].to_vec();
        for (i, slot) in (start..start + cluster).step_by(32).enumerate() {
            if i >= used {
                let src = 64 + ((i - used) % (used - 2)) * 32; // skip "." and ".."
                let src = &live[src.min(live.len() - 32)..][..32];
                let src = src.to_vec();
                b[slot..slot + 32].copy_from_slice(&src);
            }
        }
        let fs = FatFs::open(vol(b, "disk0/p1")).expect("open");
        assert!(
            fs.read_dir("docs").is_err(),
            "a looping directory with live entries"
        );
    }

    #[test]
    fn file_cluster_loop_and_short_chain_are_errors() {
        let Some((bytes, _)) = image(1) else { return };
        let (fat, _, root, _, _) = fat16_layout(bytes);
        let entry = (0..512)
            .map(|i| root + i * 32)
            .find(|&at| &bytes[at..at + 11] == b"BIG     BIN")
            .expect("BIG.BIN in the root directory");
        let first = usize::from(u16::from_le_bytes([bytes[entry + 26], bytes[entry + 27]]));
        // The chain ends after its first cluster.
        let mut b = bytes.clone();
        b[fat + 2 * first..fat + 2 * first + 2].copy_from_slice(&0xFFFFu16.to_le_bytes());
        let fs = FatFs::open(vol(b, "disk0/p1")).expect("open");
        let mut f = fs.open("big.bin").expect("open file");
        let mut buf = vec![0u8; 65536];
        let mut pos = 0;
        let err = loop {
            match f.read_at(pos, &mut buf) {
                Ok(0) => panic!("short chain read as a short file"),
                Ok(n) => pos += n as u64,
                Err(e) => break e,
            }
        };
        assert!(matches!(err, GuestError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("disk0/p1/big.bin"), "{err}");
        assert!(f.read_at(200_000, &mut buf).is_err());
        // The chain loops on its first cluster: reads are bounded by the size.
        let mut b = bytes.clone();
        b[fat + 2 * first..fat + 2 * first + 2].copy_from_slice(&(first as u16).to_le_bytes());
        let fs = FatFs::open(vol(b, "disk0/p1")).expect("open");
        let mut f = fs.open("big.bin").expect("open file");
        let mut pos = 0;
        while let Ok(n @ 1..) = f.read_at(pos, &mut buf) {
            pos += n as u64;
        }
        assert!(pos <= f.len());
    }

    #[test]
    fn random_damage_never_panics() {
        for which in 0..3 {
            let Some((bytes, _)) = image(which) else {
                return;
            };
            let mut rng = Lcg(which as u64 * 1000 + 1);
            for round in 0..40 {
                let mut b = bytes.clone();
                // Damage the metadata area (boot sector, FATs, root, first clusters).
                let span = (b.len() / 8).min(256 * 1024);
                let flips = 1 + rng.next() % 64;
                for _ in 0..flips {
                    let at = if round % 4 == 0 {
                        (rng.next() % 512) as usize
                    } else {
                        (rng.next() as usize) % span
                    };
                    b[at] = rng.next() as u8;
                }
                if let Ok(fs) = FatFs::open(vol(b, "fuzz")) {
                    exercise(&fs);
                }
            }
        }
    }
}
