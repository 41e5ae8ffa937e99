//! Output image files of `restore --format`: which writer, which file name, how opened.

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use vmvault_ingest::vmdk::VmdkSubformat;
use vmvault_ingest::{qcow2, vhd, vmdk, ImageFormat, ImageWriter};

/// VMDK layouts `restore --vmdk-subformat` can write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VmdkLayout {
    /// One sparse file with grain tables (what Workstation and qemu use).
    #[value(name = "monolithicSparse")]
    MonolithicSparse,
    /// Compressed grains in stream order (what vSphere / OVF import takes).
    #[value(name = "streamOptimized")]
    StreamOptimized,
}

/// VHD layouts `restore --vhd-subformat` can write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VhdSubformat {
    /// Sparse: only blocks holding data are stored.
    Dynamic,
    /// Every byte stored, then a footer (what Azure and some tools require).
    Fixed,
}

/// Output options shared by every disk of one restore.
#[derive(Clone, Copy, Debug)]
pub struct OutputFormat {
    /// The image format.
    pub format: ImageFormat,
    /// VMDK layout.
    pub vmdk: VmdkLayout,
    /// VHD layout.
    pub vhd: VhdSubformat,
}

impl OutputFormat {
    /// The file extension of a disk written in this format.
    pub fn extension(&self) -> &'static str {
        match self.format {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Vhd | ImageFormat::Vhdx => "vhd",
            ImageFormat::Xva => "xva",
        }
    }
}

/// Buffered output file; one large buffer keeps writers' small table writes cheap.
type Out = BufWriter<File>;

/// Creates `path` for a new image: refuses to replace a non-empty file without
/// `overwrite`, and anything that is not a regular file.
pub fn create_file(path: &Path, overwrite: bool) -> Result<Out> {
    if let Ok(m) = std::fs::metadata(path) {
        if !m.is_file() {
            bail!(
                "{} exists and is not a regular file (images in formats other than raw are \
                 written to files only)",
                path.display()
            );
        }
        if m.len() > 0 && !overwrite {
            bail!(
                "{} exists; refusing to overwrite it (use --overwrite)",
                path.display()
            );
        }
    }
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(BufWriter::with_capacity(1 << 20, file))
}

/// A writer for one disk of `size` bytes in `fmt` (not raw or XVA) into `out`.
pub fn disk_writer(
    fmt: &OutputFormat,
    out: Out,
    name: &str,
    size: u64,
) -> Result<Box<dyn ImageWriter>> {
    Ok(match fmt.format {
        ImageFormat::Qcow2 => qcow2::create_writer(out, name, size)?,
        ImageFormat::Vmdk => {
            let sub = match fmt.vmdk {
                VmdkLayout::MonolithicSparse => VmdkSubformat::MonolithicSparse,
                VmdkLayout::StreamOptimized => VmdkSubformat::StreamOptimized,
            };
            vmdk::create_writer(out, name, size, sub)?
        }
        ImageFormat::Vhd => vhd::create_writer(out, name, size, fmt.vhd == VhdSubformat::Fixed)?,
        other => bail!("restore cannot write {other} images"),
    })
}
