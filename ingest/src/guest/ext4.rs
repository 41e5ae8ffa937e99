//! ext2/3/4 guest file systems, read with the `ext4-view` crate (extents, htree
//! directories, inline data, symlinks; the journal is replayed in memory, so a
//! crash-consistent snapshot of a running guest reads as the guest would see it after
//! recovery). Nothing is ever written.

use super::view::VolumeRead;
use super::{guarded, DirEntry, GuestError, GuestFile, GuestFs, NodeKind, NodeMeta, Result};
use ext4_view::{Ext4, Ext4Error, Ext4Read, Metadata};
use std::sync::Arc;

/// Reads an ext4 volume through a [`VolumeRead`].
struct Reader(Arc<dyn VolumeRead>);

impl Ext4Read for Reader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.0
            .read_exact_at(start_byte, dst)
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
    }
}

/// An ext2, ext3 or ext4 file system, opened read-only. Not `Send` (the crate shares its
/// state with `Rc`).
pub struct Ext4Fs {
    fs: Ext4,
    name: String,
}

impl Ext4Fs {
    /// Opens the file system on `vol`: the superblock, group descriptors and journal are
    /// read and checked now. Unsupported incompatible features and damage are errors
    /// naming the volume.
    pub fn open(vol: Arc<dyn VolumeRead>) -> Result<Ext4Fs> {
        let name = vol.name().to_string();
        let fs = guarded(&name, || {
            Ext4::load(Box::new(Reader(vol))).map_err(|e| to_guest(&name, "", e))
        })?;
        Ok(Ext4Fs { fs, name })
    }

    fn abs(&self, path: &str) -> Result<String> {
        let parts = super::path_components(path)?;
        Ok(format!("/{}", parts.join("/")))
    }

    fn label(&self, path: &str) -> String {
        format!("{}/{}", self.name, path.trim_start_matches('/'))
    }
}

/// Maps a crate error about `path` of volume `vol` to a [`GuestError`].
fn to_guest(vol: &str, path: &str, e: Ext4Error) -> GuestError {
    let what = if path.is_empty() {
        vol.to_string()
    } else {
        format!("{vol}/{}", path.trim_start_matches('/'))
    };
    match e {
        Ext4Error::NotFound => GuestError::NotFound(what),
        Ext4Error::NotADirectory => GuestError::NotADirectory(what),
        Ext4Error::IsADirectory => GuestError::IsADirectory(what),
        Ext4Error::IsASpecialFile => GuestError::WrongKind {
            path: what,
            reason: "a device node, FIFO or socket has no content to read".into(),
        },
        Ext4Error::NotASymlink => GuestError::WrongKind {
            path: what,
            reason: "not a symbolic link".into(),
        },
        Ext4Error::Encrypted => GuestError::Unsupported {
            what,
            reason: "ext4 encrypted file (fscrypt), not supported".into(),
        },
        Ext4Error::Incompatible(i) => GuestError::Unsupported {
            what,
            reason: format!("ext4 feature not supported: {i}"),
        },
        Ext4Error::Io(err) => match err.downcast::<GuestError>() {
            Ok(g) => *g,
            Err(other) => GuestError::Io {
                what,
                offset: 0,
                source: std::io::Error::other(other),
            },
        },
        other => GuestError::corrupt(what, format!("ext4: {other}")),
    }
}

fn meta_of(m: &Metadata) -> NodeMeta {
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_symlink() {
        NodeKind::Symlink
    } else if ft.is_regular_file() {
        NodeKind::File
    } else {
        NodeKind::Special
    };
    let mtime = m.modified();
    NodeMeta {
        kind,
        size: if kind == NodeKind::Dir { 0 } else { m.len() },
        mode: u32::from(m.mode()) & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime: mtime.seconds(),
        mtime_nsec: mtime.nanoseconds().min(999_999_999),
        atime: m.accessed().seconds(),
    }
}

impl GuestFs for Ext4Fs {
    fn fs_type(&self) -> &'static str {
        "ext4"
    }

    fn stat(&self, path: &str) -> Result<NodeMeta> {
        let abs = self.abs(path)?;
        guarded(&self.label(path), || {
            self.fs
                .symlink_metadata(abs.as_str())
                .map(|m| meta_of(&m))
                .map_err(|e| to_guest(&self.name, path, e))
        })
    }

    fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let abs = self.abs(path)?;
        guarded(&self.label(path), || {
            let err = |e| to_guest(&self.name, path, e);
            let mut out = Vec::new();
            for entry in self.fs.read_dir(abs.as_str()).map_err(err)? {
                let entry = entry.map_err(err)?;
                let name = entry.file_name();
                let bytes = name.as_ref();
                if bytes == b"." || bytes == b".." {
                    continue;
                }
                let name = String::from_utf8_lossy(bytes).into_owned();
                if name.is_empty() || name.contains('/') || name.contains('\0') {
                    return Err(GuestError::corrupt(
                        self.label(path),
                        "a directory entry has an invalid name",
                    ));
                }
                let meta = entry.metadata().map_err(err)?;
                out.push(DirEntry {
                    name,
                    meta: meta_of(&meta),
                });
            }
            Ok(out)
        })
    }

    fn read_link(&self, path: &str) -> Result<Vec<u8>> {
        let abs = self.abs(path)?;
        guarded(&self.label(path), || {
            self.fs
                .read_link(abs.as_str())
                .map(|p| p.as_ref().to_vec())
                .map_err(|e| to_guest(&self.name, path, e))
        })
    }

    fn open(&self, path: &str) -> Result<Box<dyn GuestFile + '_>> {
        let meta = self.stat(path)?;
        match meta.kind {
            NodeKind::File => {}
            NodeKind::Dir => return Err(GuestError::IsADirectory(self.label(path))),
            _ => {
                return Err(GuestError::WrongKind {
                    path: self.label(path),
                    reason: "not a regular file".into(),
                })
            }
        }
        let abs = self.abs(path)?;
        let label = self.label(path);
        let file = guarded(&label, || {
            self.fs
                .open(abs.as_str())
                .map_err(|e| to_guest(&self.name, path, e))
        })?;
        Ok(Box::new(Ext4File {
            len: file.metadata().len(),
            file,
            label,
            vol: self.name.clone(),
            path: path.to_string(),
        }))
    }
}

/// An open ext4 file.
struct Ext4File {
    file: ext4_view::File,
    len: u64,
    label: String,
    vol: String,
    path: String,
}

impl GuestFile for Ext4File {
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
        let (file, label, vol, path) = (&mut self.file, &self.label, &self.vol, &self.path);
        guarded(label, || {
            let err = |e| to_guest(vol, path, e);
            if file.position() != offset {
                file.seek_to(offset).map_err(err)?;
            }
            let mut done = 0;
            while done < want {
                let n = file.read_bytes(&mut buf[done..want]).map_err(err)?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            Ok(done)
        })
    }
}
