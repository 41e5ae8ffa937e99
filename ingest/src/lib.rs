//! Disk image formats for vmvault: sources to back up and writers to restore to.
//!
//! A disk source exposes a logical disk as a size, an allocation map (data, zero and
//! unallocated extents) and reads. Holes and unallocated clusters are reported as such
//! so the backup pipeline never reads, hashes or stores them. Format parsing stays in
//! this crate; the repository only sees [`SequentialDisk`].

pub mod detect;
mod error;
mod extent;
pub mod fuzzing;
pub mod guest;
pub mod image_file;
pub mod open;
pub mod qcow2;
mod raw;
mod sequential;
mod stream;
pub mod vhd;
pub mod vmdk;
pub mod write;
pub mod xva;

pub use detect::ImageFormat;
pub use error::IngestError;
pub use extent::{push_merged, Extent, ExtentKind};
pub use image_file::{ImageFile, MemFile, ReadAt};
pub use open::{open_disk, probe_path, FileResolver, FsResolver, NoFiles, OpenOptions};
pub use raw::{
    block_device_size, direct_io_allowed, direct_reads_wanted, set_direct_reads, RawFile,
    DIRECT_IO_ENV,
};
pub use sequential::{ConcurrentSegments, Segment, Sequential, SequentialDisk, BUFFER_ALIGN};
pub use stream::StreamDisk;
pub use write::ImageWriter;

/// A logical disk with random access: the interface every image format implements.
pub trait DiskSource: Send {
    /// Logical size of the disk in bytes.
    fn size(&self) -> u64;

    /// The allocation map of `[offset, offset + len)`: extents sorted, contiguous and
    /// covering the range exactly (clamped to the disk's size).
    fn extents(&mut self, offset: u64, len: u64) -> Result<Vec<Extent>, IngestError>;

    /// Fills `buf` with the bytes at `offset`; fails rather than returning short data.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IngestError>;

    /// A short name for the format ("raw", "block device", ...), stored in snapshots.
    fn format_name(&self) -> &'static str;

    /// How far apart (in bytes) two `Data` extents may lie for a sequential reader to
    /// fetch both, and the gap between them, with one `read_at`. 0, the default, reads
    /// each data extent on its own. A source returns more where reading a gap is cheap
    /// and each read waits for the device (direct I/O); reads across gaps must then
    /// succeed, and the bytes they return for the gap are ignored.
    fn read_gap_merge(&self) -> u64 {
        0
    }

    /// The disk as segments several threads may read at once, where the source allows it
    /// (see [`ConcurrentSegments`]); `None`, the default, where reads need `&mut self`.
    fn concurrent(&self) -> Option<&dyn ConcurrentSegments> {
        None
    }
}

impl<T: DiskSource + ?Sized> DiskSource for Box<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }

    fn extents(&mut self, offset: u64, len: u64) -> Result<Vec<Extent>, IngestError> {
        (**self).extents(offset, len)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IngestError> {
        (**self).read_at(offset, buf)
    }

    fn format_name(&self) -> &'static str {
        (**self).format_name()
    }

    fn read_gap_merge(&self) -> u64 {
        (**self).read_gap_merge()
    }

    fn concurrent(&self) -> Option<&dyn ConcurrentSegments> {
        (**self).concurrent()
    }
}
