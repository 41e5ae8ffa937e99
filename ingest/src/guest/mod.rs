//! Browsing the guest inside a disk: partition tables, guest LVM and file systems, read
//! through a random-access view of the disk (a snapshot in the repository, or an image
//! file in tests) without restoring it.
//!
//! Everything here reads untrusted bytes. Parsers bound every count and offset by the
//! volume they read, never loop on a cycle, and turn damage into [`GuestError`]s for the
//! path at fault so the rest of the disk stays browsable. Third-party file system crates
//! are called through [`guarded`], so a panic in one becomes an error, not a crash.

mod error;
pub mod ext4;
pub mod fat;
pub mod fuzz_fs;
pub mod fuzz_walk;
pub mod lvm;
pub mod ntfs;
pub mod partition;
pub mod view;
pub mod volumes;
pub mod walk;

pub use error::GuestError;
pub use view::{MemView, SliceView, VolumeRead};

/// The result type of guest browsing.
pub type Result<T> = std::result::Result<T, GuestError>;

/// What an entry of a guest file system is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A character or block device, FIFO or socket: listed, never read.
    Special,
}

/// Metadata of one guest file system entry, as far as the file system records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMeta {
    /// What the entry is.
    pub kind: NodeKind,
    /// Length in bytes (of the target path for a symlink, 0 for a directory where the
    /// file system does not say).
    pub size: u64,
    /// Permission bits (`0o7777` at most); file systems without them report `0o755`
    /// for directories and `0o644` for files (FAT: `0o444` for read-only files).
    pub mode: u32,
    /// Owner user id (0 where the file system has none).
    pub uid: u32,
    /// Owner group id (0 where the file system has none).
    pub gid: u32,
    /// Last modification, seconds since the Unix epoch (may be negative).
    pub mtime: i64,
    /// Nanoseconds part of `mtime`, below 1e9.
    pub mtime_nsec: u32,
    /// Last access, seconds since the Unix epoch (`mtime` where not recorded).
    pub atime: i64,
}

/// One entry of a guest directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name: never empty, never `.` or `..`, never containing `/` or NUL.
    pub name: String,
    /// Its metadata.
    pub meta: NodeMeta,
}

/// An open guest file: positioned reads of its content.
pub trait GuestFile {
    /// The file's length in bytes.
    fn len(&self) -> u64;

    /// True for an empty file.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns how many, fewer only at the end
    /// of the file (0 at or past it).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize>;
}

/// A read-only guest file system. Paths are `/`-separated and relative to the file
/// system's root (`""` or `"/"` is the root); `.`/`..` components and symlinks inside a
/// path are not followed except where a method says so.
///
/// Implementations are not required to be `Send` (some crates use `Rc` inside); callers
/// that need threads confine a file system to one.
pub trait GuestFs {
    /// The file system type ("ext4", "ntfs", "vfat", ...).
    fn fs_type(&self) -> &'static str;

    /// The metadata of `path`, not following a final symlink.
    fn stat(&self, path: &str) -> Result<NodeMeta>;

    /// The entries of directory `path`, without `.` and `..`, in the file system's order.
    fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>>;

    /// The target of symlink `path`, as stored (bytes; usually UTF-8).
    fn read_link(&self, path: &str) -> Result<Vec<u8>>;

    /// Opens regular file `path` for reading.
    fn open(&self, path: &str) -> Result<Box<dyn GuestFile + '_>>;
}

/// Runs `f`, turning a panic inside it (a bug in a file system crate reached by hostile
/// bytes) into [`GuestError::Corrupt`] about `what`.
pub fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    GUARD_DEPTH.with(|d| d.set(d.get() + 1));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARD_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    match outcome {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(GuestError::Corrupt {
                what: what.to_string(),
                reason: format!("the parser failed on damaged metadata ({msg})"),
            })
        }
    }
}

thread_local! {
    /// How many [`guarded`] calls this thread is inside.
    static GUARD_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Installs (once per process) a panic hook that stays silent for panics inside
/// [`guarded`], which become errors, and hands every other panic to the hook that was in
/// place before (the default message, or libFuzzer's abort).
pub fn install_guarded_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARD_DEPTH.with(|d| d.get()) == 0 {
                previous(info);
            }
        }));
    });
}

/// Splits a guest path into its components, ignoring empty ones and `.`; `..` is refused
/// so that a path cannot leave the file system's root.
pub fn path_components(path: &str) -> Result<Vec<&str>> {
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(GuestError::BadPath(path.to_string())),
            c if c.contains('\0') => return Err(GuestError::BadPath(path.to_string())),
            c => out.push(c),
        }
    }
    Ok(out)
}
