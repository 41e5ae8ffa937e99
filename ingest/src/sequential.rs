//! Sequential, segment-at-a-time reading: what the backup pipeline consumes.

use crate::{DiskSource, Extent, ExtentKind, IngestError};

/// One aligned segment of a disk, as read.
#[derive(Clone, Debug, Default)]
pub struct Segment {
    /// Disk offset of the first byte; a multiple of the segment size.
    pub offset: u64,
    /// Length of the segment in bytes (the last one may be short).
    pub len: u64,
    /// The segment's allocation map, in disk offsets, covering it exactly. The bytes of
    /// `Data` extents are in the buffer at `extent.offset - segment.offset`.
    pub extents: Vec<Extent>,
}

/// A disk read front to back in aligned segments. Streams (stdin, XVA) implement this
/// directly; random-access formats get it from [`Sequential`].
pub trait SequentialDisk: Send {
    /// The disk's logical size when known before reading (for progress).
    fn size_hint(&self) -> Option<u64>;

    /// Reads the next segment of at most `segment_size` bytes into `buf`, which is resized
    /// to the segment's length. Returns `None` after the last segment. Segments start at
    /// multiples of `segment_size`, which must not change between calls.
    fn next_segment(
        &mut self,
        segment_size: usize,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Segment>, IngestError>;

    /// A short name for the source format, stored in the snapshot.
    fn format_name(&self) -> &'static str;
}

/// Reads any [`DiskSource`] sequentially, reading only its `Data` extents.
pub struct Sequential<S: DiskSource> {
    source: S,
    next: u64,
}

impl<S: DiskSource> Sequential<S> {
    /// Starts reading `source` from offset 0.
    pub fn new(source: S) -> Self {
        Sequential { source, next: 0 }
    }
}

impl<S: DiskSource> SequentialDisk for Sequential<S> {
    fn size_hint(&self) -> Option<u64> {
        Some(self.source.size())
    }

    fn next_segment(
        &mut self,
        segment_size: usize,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Segment>, IngestError> {
        let size = self.source.size();
        if self.next >= size {
            return Ok(None);
        }
        let offset = self.next;
        let len = (size - offset).min(segment_size as u64);
        let extents = self.source.extents(offset, len)?;
        buf.resize(len as usize, 0);
        for e in extents.iter().filter(|e| e.kind == ExtentKind::Data) {
            let start = (e.offset - offset) as usize;
            self.source
                .read_at(e.offset, &mut buf[start..start + e.len as usize])?;
        }
        self.next = offset + len;
        Ok(Some(Segment {
            offset,
            len,
            extents,
        }))
    }

    fn format_name(&self) -> &'static str {
        self.source.format_name()
    }
}
