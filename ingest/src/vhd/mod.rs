//! The vhd reader (and writer). To be implemented.

use crate::image_file::ReadAt;
use crate::open::FileResolver;
use crate::{DiskSource, IngestError};

/// Opens a vhd image from `file`, reaching parent disks and other files through
/// `resolver`.
pub fn open(
    file: Box<dyn ReadAt>,
    _resolver: &mut dyn FileResolver,
) -> Result<Box<dyn DiskSource>, IngestError> {
    Err(IngestError::Unimplemented {
        what: file.name().to_string(),
        format: "vhd",
        reason: "not implemented yet".into(),
    })
}
