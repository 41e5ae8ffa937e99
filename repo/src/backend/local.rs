//! A repository in a local directory.
//!
//! Writes go to `.tmp-<random>` in the destination directory, are fsynced, hard-linked
//! to the final name (which fails if it exists, giving create-only semantics), and the
//! directory is fsynced; the temporary name is then removed.
//!
//! Packs are written with `O_DIRECT` where the file system allows it (through a reused
//! block-aligned buffer): a backup does not read them back, and on the machines measured
//! (PERFORMANCE.md) copying them into fresh page-cache pages cost more CPU than the
//! compression of a tenth of the data.

use super::{is_object_name, Backend, FileKind, RequestCounters};
use std::fs::{self, File};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::aligned::{clear_direct, direct_io_allowed, write_options, AlignedBuf, BLOCK};

/// A repository in a local directory.
pub struct LocalBackend {
    root: PathBuf,
    counters: RequestCounters,
    /// Packs go through the page cache: direct writes are off (`VMVAULT_DIRECT_IO=0`) or
    /// the file system refused one.
    no_direct: AtomicBool,
    /// Aligned buffers for direct writes, one per pack being written at once.
    bounce: Mutex<Vec<AlignedBuf>>,
}

/// Objects at least this large (packs) are written with direct I/O.
const DIRECT_MIN: usize = 1 << 20;
/// Bytes per direct write.
const DIRECT_PIECE: usize = 4 << 20;

const DIRS: [&str; 5] = ["keys", "data", "index", "snapshots", "locks"];

impl LocalBackend {
    /// A backend rooted at `root` (which need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend {
            root: root.into(),
            counters: RequestCounters::default(),
            no_direct: AtomicBool::new(!direct_io_allowed()),
            bounce: Mutex::new(Vec::new()),
        }
    }

    fn dir(&self, kind: FileKind, name: &str) -> PathBuf {
        match kind {
            FileKind::Config => self.root.clone(),
            FileKind::Key => self.root.join("keys"),
            FileKind::Pack => self.root.join("data").join(name.get(..2).unwrap_or("xx")),
            FileKind::Index => self.root.join("index"),
            FileKind::Snapshot => self.root.join("snapshots"),
            FileKind::Lock => self.root.join("locks"),
        }
    }

    fn path(&self, kind: FileKind, name: &str) -> io::Result<PathBuf> {
        if kind == FileKind::Config {
            return Ok(self.root.join("config"));
        }
        if !is_object_name(name) {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("invalid object name {name:?}"),
            ));
        }
        Ok(self.dir(kind, name).join(name))
    }

    /// Writes `data` to `f` (opened with `O_DIRECT`, empty) in block-aligned pieces from a
    /// reused aligned buffer; the last piece is padded with zeros and the file is cut back
    /// to `data`'s length. Where a direct write is refused, the rest goes through the page
    /// cache and later packs do too.
    fn write_direct(&self, f: &File, data: &[u8]) -> io::Result<()> {
        let mut bounce = self
            .bounce
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default();
        let result = (|| {
            for (i, piece) in data.chunks(DIRECT_PIECE).enumerate() {
                let at = (i * DIRECT_PIECE) as u64;
                let buf = bounce.get(piece.len().next_multiple_of(BLOCK));
                buf[..piece.len()].copy_from_slice(piece);
                buf[piece.len()..].fill(0);
                match f.write_all_at(buf, at) {
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        self.no_direct.store(true, Ordering::Relaxed);
                        clear_direct(f)?;
                        f.write_all_at(&data[i * DIRECT_PIECE..], at)?;
                        break;
                    }
                    r => r?,
                }
            }
            // Cut off the last piece's padding (also after a refused, partly done write).
            if f.metadata()?.len() != data.len() as u64 {
                f.set_len(data.len() as u64)?;
            }
            Ok(())
        })();
        self.bounce
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(bounce);
        result
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn tmp_name() -> String {
    let mut r = [0u8; 8];
    // A collision only makes create_new fail, which is reported; no silent damage.
    let _ = getrandom::fill(&mut r);
    format!(".tmp-{}", hex::encode(r))
}

/// Creates a new file for writing (failing if it exists), with `O_DIRECT` when `direct`.
fn create_file(path: &Path, direct: bool) -> io::Result<File> {
    write_options(direct).create_new(true).open(path)
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn counters(&self) -> &RequestCounters {
        &self.counters
    }

    /// Two: while one pack waits for its fsync, the next is copied into the page cache.
    fn upload_concurrency(&self) -> usize {
        2
    }

    fn create(&self) -> io::Result<()> {
        match fs::read_dir(&self.root) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(io::Error::new(
                        ErrorKind::AlreadyExists,
                        format!("{} is not empty", self.root.display()),
                    ));
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => fs::create_dir_all(&self.root)?,
            Err(e) => return Err(e),
        }
        for d in DIRS {
            fs::create_dir(self.root.join(d))?;
        }
        for i in 0..256 {
            fs::create_dir(self.root.join("data").join(format!("{i:02x}")))?;
        }
        sync_dir(&self.root.join("data"))?;
        sync_dir(&self.root)?;
        Ok(())
    }

    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> io::Result<()> {
        let final_path = self.path(kind, name)?;
        let dir = self.dir(kind, name);
        if kind != FileKind::Config && final_path.exists() {
            // Content-addressed and immutable: the same name means the same bytes.
            return Ok(());
        }
        self.counters.put(1, data.len() as u64);
        let tmp = dir.join(tmp_name());
        let result = (|| {
            let direct = kind == FileKind::Pack
                && data.len() >= DIRECT_MIN
                && !self.no_direct.load(Ordering::Relaxed);
            let buffered = || -> io::Result<File> {
                let mut f = create_file(&tmp, false)?;
                f.write_all(data)?;
                Ok(f)
            };
            let f = match direct.then(|| create_file(&tmp, true)) {
                Some(Ok(f)) => {
                    self.write_direct(&f, data)?;
                    f
                }
                Some(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // Refused by the file system, which may have created the file first.
                    self.no_direct.store(true, Ordering::Relaxed);
                    let _ = fs::remove_file(&tmp);
                    buffered()?
                }
                Some(Err(e)) => return Err(e),
                None => buffered()?,
            };
            f.sync_all()?;
            drop(f);
            match fs::hard_link(&tmp, &final_path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists && kind != FileKind::Config => {}
                Err(e) => return Err(e),
            }
            sync_dir(&dir)
        })();
        let _ = fs::remove_file(&tmp);
        result
    }

    fn get(&self, kind: FileKind, name: &str) -> io::Result<Vec<u8>> {
        let bytes = fs::read(self.path(kind, name)?)?;
        self.counters.get(bytes.len() as u64);
        Ok(bytes)
    }

    fn read_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> io::Result<()> {
        File::open(self.path(kind, name)?)?.read_exact_at(buf, offset)?;
        self.counters.get(buf.len() as u64);
        Ok(())
    }

    fn list(&self, kind: FileKind) -> io::Result<Vec<(String, u64)>> {
        let dirs: Vec<PathBuf> = match kind {
            FileKind::Config => return Ok(Vec::new()),
            FileKind::Pack => (0..256)
                .map(|i| self.root.join("data").join(format!("{i:02x}")))
                .collect(),
            _ => vec![self.dir(kind, "")],
        };
        let mut out = Vec::new();
        for dir in dirs {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound && kind == FileKind::Pack => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !is_object_name(&name) {
                    continue;
                }
                out.push((name, entry.metadata()?.len()));
            }
        }
        out.sort();
        self.counters.list(out.len() as u64);
        Ok(out)
    }

    fn remove(&self, kind: FileKind, name: &str) -> io::Result<()> {
        let p = self.path(kind, name)?;
        self.counters.delete();
        match fs::remove_file(&p) {
            Ok(()) => sync_dir(&self.dir(kind, name)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "00aa000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn put_get_list_remove() {
        let d = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(d.path().join("repo"));
        b.create().unwrap();
        assert!(b.create().is_err(), "create twice must fail");
        b.put(FileKind::Pack, NAME, b"hello").unwrap();
        b.put(FileKind::Pack, NAME, b"hello").unwrap();
        assert_eq!(b.get(FileKind::Pack, NAME).unwrap(), b"hello");
        assert_eq!(b.get_range(FileKind::Pack, NAME, 1, 3).unwrap(), b"ell");
        assert!(b.get_range(FileKind::Pack, NAME, 3, 3).is_err());
        assert_eq!(b.list(FileKind::Pack).unwrap(), vec![(NAME.to_string(), 5)]);
        assert!(d.path().join("repo/data/00").join(NAME).exists());
        b.remove(FileKind::Pack, NAME).unwrap();
        b.remove(FileKind::Pack, NAME).unwrap();
        assert_eq!(
            b.get(FileKind::Pack, NAME).unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }

    /// Packs large enough for direct writes, of sizes around the piece and block
    /// boundaries, read back exactly, at their exact length, with no temporary file left.
    #[test]
    fn large_packs_round_trip_at_every_size() {
        let d = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(d.path().join("repo"));
        b.create().unwrap();
        let sizes = [
            DIRECT_MIN,
            DIRECT_MIN + 1,
            DIRECT_PIECE - 1,
            DIRECT_PIECE,
            DIRECT_PIECE + BLOCK + 17,
            3 * DIRECT_PIECE - 4095,
        ];
        for (i, &len) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|j| (j * 7 + i) as u8).collect();
            let name = format!("{i:02x}{}", &NAME[2..]);
            b.put(FileKind::Pack, &name, &data).unwrap();
            assert!(b.get(FileKind::Pack, &name).unwrap() == data, "size {len}");
            let on_disk = d.path().join("repo/data").join(&name[..2]).join(&name);
            assert_eq!(fs::metadata(on_disk).unwrap().len(), len as u64);
        }
        for dir in fs::read_dir(d.path().join("repo/data")).unwrap() {
            for e in fs::read_dir(dir.unwrap().path()).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                assert!(!name.starts_with(".tmp"), "left behind: {name}");
            }
        }
    }

    #[test]
    fn config_is_create_only_and_names_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(d.path());
        b.create().unwrap();
        b.put(FileKind::Config, "", b"one").unwrap();
        assert!(b.put(FileKind::Config, "", b"two").is_err());
        assert_eq!(b.get(FileKind::Config, "").unwrap(), b"one");
        assert!(b.put(FileKind::Index, "../escape", b"x").is_err());
        // No temporary files are left behind.
        let leftovers: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
