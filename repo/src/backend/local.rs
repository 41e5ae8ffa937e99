//! A repository in a local directory.
//!
//! Writes go to `.tmp-<random>` in the destination directory, are fsynced, hard-linked
//! to the final name (which fails if it exists, giving create-only semantics), and the
//! directory is fsynced; the temporary name is then removed.

use super::{is_object_name, Backend, FileKind, RequestCounters};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A repository in a local directory.
pub struct LocalBackend {
    root: PathBuf,
    counters: RequestCounters,
}

const DIRS: [&str; 5] = ["keys", "data", "index", "snapshots", "locks"];

impl LocalBackend {
    /// A backend rooted at `root` (which need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend {
            root: root.into(),
            counters: RequestCounters::default(),
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
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(data)?;
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
