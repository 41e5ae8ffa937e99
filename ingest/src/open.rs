//! Opening an image of any format as a [`DiskSource`], following backing chains.

use crate::detect::{detect, ImageFormat, DETECT_HEAD, DETECT_TAIL};
use crate::image_file::{ImageFile, ReadAt};
use crate::{DiskSource, IngestError, RawFile};
use std::path::{Path, PathBuf};

/// Longest backing chain followed; a longer one is refused as probably a loop.
pub const MAX_CHAIN_DEPTH: usize = 64;

/// How an image reaches the other files it refers to: its backing (parent) disk and, for
/// VMDK descriptors and qcow2 external data files, the files holding its data. Readers
/// never touch the filesystem themselves, so they also run on in-memory bytes.
pub trait FileResolver {
    /// Opens the file that image `from` (its [`ReadAt::name`]) calls `reference`.
    fn open_file(&mut self, from: &str, reference: &str) -> Result<Box<dyn ReadAt>, IngestError>;

    /// Opens the parent disk that image `from` calls `reference`, in `format` when the
    /// child says which, detecting it otherwise.
    fn open_parent(
        &mut self,
        from: &str,
        reference: &str,
        format: Option<ImageFormat>,
    ) -> Result<Box<dyn DiskSource>, IngestError>;
}

/// A resolver that has no files: every reference fails. For in-memory images (fuzzing,
/// tests of single files).
pub struct NoFiles;

impl FileResolver for NoFiles {
    fn open_file(&mut self, from: &str, reference: &str) -> Result<Box<dyn ReadAt>, IngestError> {
        Err(IngestError::Unsupported {
            path: PathBuf::from(from),
            reason: format!("refers to file {reference:?}, which is not available here"),
        })
    }

    fn open_parent(
        &mut self,
        from: &str,
        reference: &str,
        _format: Option<ImageFormat>,
    ) -> Result<Box<dyn DiskSource>, IngestError> {
        Err(IngestError::Unsupported {
            path: PathBuf::from(from),
            reason: format!("refers to parent disk {reference:?}, which is not available here"),
        })
    }
}

/// Resolves references on the local filesystem, relative to the referring image's
/// directory, refusing loops and chains deeper than [`MAX_CHAIN_DEPTH`].
pub struct FsResolver {
    /// Replaces the top image's backing reference (`--backing`).
    backing_override: Option<PathBuf>,
    /// Canonical paths of the images opened so far in this chain, top first.
    chain: Vec<PathBuf>,
}

impl FsResolver {
    /// A resolver for one top-level image at `top`.
    pub fn new(top: &Path, backing_override: Option<PathBuf>) -> Self {
        FsResolver {
            backing_override,
            chain: vec![std::fs::canonicalize(top).unwrap_or_else(|_| top.to_path_buf())],
        }
    }

    fn resolve(from: &str, reference: &str) -> PathBuf {
        let r = Path::new(reference);
        if r.is_absolute() {
            return r.to_path_buf();
        }
        Path::new(from)
            .parent()
            .map_or_else(|| r.to_path_buf(), |dir| dir.join(r))
    }
}

impl FileResolver for FsResolver {
    fn open_file(&mut self, from: &str, reference: &str) -> Result<Box<dyn ReadAt>, IngestError> {
        Ok(Box::new(ImageFile::open(&Self::resolve(from, reference))?))
    }

    fn open_parent(
        &mut self,
        from: &str,
        reference: &str,
        format: Option<ImageFormat>,
    ) -> Result<Box<dyn DiskSource>, IngestError> {
        let path = match self.backing_override.take() {
            Some(p) => p,
            None => Self::resolve(from, reference),
        };
        let canonical = std::fs::canonicalize(&path).map_err(|e| IngestError::Unsupported {
            path: PathBuf::from(from),
            reason: format!(
                "its backing (parent) file {} cannot be opened: {e}; if it moved, give its \
                 new path with --backing",
                path.display()
            ),
        })?;
        if let Some(pos) = self.chain.iter().position(|p| *p == canonical) {
            let names: Vec<String> = self.chain[pos..]
                .iter()
                .chain(std::iter::once(&canonical))
                .map(|p| p.display().to_string())
                .collect();
            return Err(IngestError::Unsupported {
                path: PathBuf::from(from),
                reason: format!("backing chain loops: {}", names.join(" -> ")),
            });
        }
        if self.chain.len() >= MAX_CHAIN_DEPTH {
            return Err(IngestError::Unsupported {
                path: PathBuf::from(from),
                reason: format!("backing chain deeper than {MAX_CHAIN_DEPTH} images"),
            });
        }
        self.chain.push(canonical);
        open_with(&path, format, self)
    }
}

/// Options for [`open_disk`].
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// The format, or `None` to detect it from magic bytes.
    pub format: Option<ImageFormat>,
    /// The top image's backing file, replacing the one its header names.
    pub backing: Option<PathBuf>,
}

/// Reads the bytes [`detect`] needs from `file` and returns the detected format; a
/// container vmvault does not read (VDI, QED, compressed files, ...) is an error rather
/// than "raw".
pub fn probe(file: &dyn ReadAt) -> Result<ImageFormat, IngestError> {
    let len = file.len();
    let mut head = vec![0u8; len.min(DETECT_HEAD as u64) as usize];
    let mut tail = vec![0u8; len.min(DETECT_TAIL as u64) as usize];
    let read = |off, buf: &mut [u8]| {
        file.read_exact_at(off, buf)
            .map_err(|source| IngestError::Read {
                what: file.name().to_string(),
                offset: off,
                source,
            })
    };
    read(0, &mut head)?;
    read(len - tail.len() as u64, &mut tail)?;
    detect_supported(&head, &tail, file.name())
}

/// [`detect`], but a container vmvault does not read (VDI, QED, compressed files, ...) is
/// an error naming `what` rather than "raw". `tail` may be empty (a stream).
pub fn detect_supported(head: &[u8], tail: &[u8], what: &str) -> Result<ImageFormat, IngestError> {
    let format = detect(head, tail);
    if format == ImageFormat::Raw {
        if let Some(kind) = crate::detect::unsupported_container(head) {
            return Err(IngestError::Unimplemented {
                what: what.to_string(),
                format: "disk",
                reason: format!(
                    "this is a {kind} file, which vmvault does not read; convert it \
                     (`qemu-img convert -O qcow2`, or decompress it), or give --format raw \
                     to store the file's bytes as they are"
                ),
            });
        }
    }
    Ok(format)
}

/// Detects the format of the file at `path` (a file or block device).
pub fn probe_path(path: &Path) -> Result<ImageFormat, IngestError> {
    probe(&ImageFile::open(path)?)
}

/// Opens the image at `path` as a logical disk, following its backing chain. XVA archives
/// hold several disks and are read as streams ([`crate::xva`]); they are refused here.
pub fn open_disk(path: &Path, opts: &OpenOptions) -> Result<Box<dyn DiskSource>, IngestError> {
    let mut resolver = FsResolver::new(path, opts.backing.clone());
    let source = open_with(path, opts.format, &mut resolver)?;
    if let Some(unused) = resolver.backing_override {
        return Err(IngestError::Unsupported {
            path: path.to_path_buf(),
            reason: format!(
                "--backing {} given, but the image has no backing file",
                unused.display()
            ),
        });
    }
    Ok(source)
}

fn open_with(
    path: &Path,
    format: Option<ImageFormat>,
    resolver: &mut dyn FileResolver,
) -> Result<Box<dyn DiskSource>, IngestError> {
    let format = match format {
        Some(f) => f,
        None => probe_path(path)?,
    };
    match format {
        ImageFormat::Raw => Ok(Box::new(RawFile::open(path)?)),
        ImageFormat::Xva => Err(IngestError::Unsupported {
            path: path.to_path_buf(),
            reason: "an XVA archive holds a whole VM; it is read as a stream, not as one disk"
                .into(),
        }),
        other => open_file_as(Box::new(ImageFile::open(path)?), other, resolver),
    }
}

/// Opens an already opened image file in `format` (not raw or XVA).
pub fn open_file_as(
    file: Box<dyn ReadAt>,
    format: ImageFormat,
    resolver: &mut dyn FileResolver,
) -> Result<Box<dyn DiskSource>, IngestError> {
    match format {
        ImageFormat::Qcow2 => crate::qcow2::open(file, resolver),
        ImageFormat::Vmdk => crate::vmdk::open(file, resolver),
        ImageFormat::Vhd => crate::vhd::open(file, resolver),
        ImageFormat::Vhdx => Err(IngestError::Unimplemented {
            what: file.name().to_string(),
            format: "VHDX",
            reason: "VHDX is not supported yet; convert it with `qemu-img convert -O vhd` or \
                     `-O qcow2` first"
                .into(),
        }),
        ImageFormat::Raw | ImageFormat::Xva => Err(IngestError::Unsupported {
            path: PathBuf::from(file.name()),
            reason: format!("{format} is not opened through open_file_as"),
        }),
    }
}
