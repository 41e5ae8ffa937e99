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
    /// `Data` extents are in the buffer at `data_start + extent.offset - segment.offset`.
    pub extents: Vec<Extent>,
    /// Where the segment's first byte is in the buffer: a reader may start it a little
    /// way in so that the data is page-aligned in memory (for direct I/O).
    pub data_start: usize,
}

/// Memory alignment [`Sequential`] gives segment data, so sources can read with
/// `O_DIRECT` straight into the buffer.
pub const BUFFER_ALIGN: usize = 4096;

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

    /// The same disk as segments that several threads may read at once, where the source
    /// allows it (raw files and block devices). A caller that uses it reads every segment
    /// through it and does not call `next_segment`.
    fn concurrent(&self) -> Option<&dyn ConcurrentSegments> {
        None
    }
}

/// A disk whose segments may be read by several threads at once, each read independent
/// of the others (positional reads of one file). Readers in parallel keep more than one
/// request in flight, which direct I/O needs to keep a device busy.
pub trait ConcurrentSegments: Sync {
    /// The disk's logical size in bytes.
    fn size(&self) -> u64;

    /// Reads the segment `[offset, offset + len)` (clamped to the disk) into `buf`, with
    /// the same result as [`SequentialDisk::next_segment`] gives for that segment.
    fn read_segment(
        &self,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<Segment, IngestError>;
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
        let merge_gap = self.source.read_gap_merge();
        let source = &mut self.source;
        let seg = fill_segment(offset, len, extents, merge_gap, buf, |at, part| {
            source.read_at(at, part)
        })?;
        self.next = offset + len;
        Ok(Some(seg))
    }

    fn format_name(&self) -> &'static str {
        self.source.format_name()
    }

    fn concurrent(&self) -> Option<&dyn ConcurrentSegments> {
        self.source.concurrent()
    }
}

/// Builds the segment `[offset, offset + len)` whose allocation map is `extents`: sizes
/// `buf`, page-aligns the data in it, and fills the data extents with
/// `read(disk_offset, part)`, as grouped by [`read_runs`].
pub(crate) fn fill_segment(
    offset: u64,
    len: u64,
    extents: Vec<Extent>,
    merge_gap: u64,
    buf: &mut Vec<u8>,
    mut read: impl FnMut(u64, &mut [u8]) -> Result<(), IngestError>,
) -> Result<Segment, IngestError> {
    buf.resize(len as usize + BUFFER_ALIGN, 0);
    let data_start = buf.as_ptr().align_offset(BUFFER_ALIGN).min(BUFFER_ALIGN);
    for run in read_runs(&extents, offset, offset + len, merge_gap) {
        let start = data_start + (run.start - offset) as usize;
        let end = data_start + (run.end - offset) as usize;
        read(run.start, &mut buf[start..end])?;
    }
    Ok(Segment {
        offset,
        len,
        extents,
        data_start,
    })
}

/// The disk ranges to read for one segment `[seg_start, seg_end)`: each `Data` extent on
/// its own when `merge_gap` is 0; otherwise data extents at most `merge_gap` apart share
/// one read, which also covers the gap between them, and each read is widened to
/// [`BUFFER_ALIGN`] boundaries inside the segment (so a direct-I/O source can take it
/// without a bounce). Every data byte is covered exactly once.
fn read_runs(
    extents: &[Extent],
    seg_start: u64,
    seg_end: u64,
    merge_gap: u64,
) -> Vec<std::ops::Range<u64>> {
    let mut runs: Vec<std::ops::Range<u64>> = Vec::new();
    for e in extents
        .iter()
        .filter(|e| e.kind == ExtentKind::Data && e.len > 0)
    {
        match runs.last_mut() {
            Some(last) if merge_gap > 0 && e.offset - last.end <= merge_gap => last.end = e.end(),
            _ => runs.push(e.offset..e.end()),
        }
    }
    if merge_gap > 0 {
        let align = BUFFER_ALIGN as u64;
        for r in &mut runs {
            r.start = (r.start / align * align).max(seg_start);
            r.end = r.end.div_ceil(align).saturating_mul(align).min(seg_end);
        }
        // Widening may make neighbours touch or overlap; join them.
        runs.dedup_by(|next, prev| {
            if next.start <= prev.end {
                prev.end = prev.end.max(next.end);
                true
            } else {
                false
            }
        });
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(offset: u64, len: u64, kind: ExtentKind) -> Extent {
        Extent { offset, len, kind }
    }

    #[test]
    fn without_merging_each_data_extent_is_read_alone() {
        let e = [
            ext(0, 4096, ExtentKind::Data),
            ext(4096, 100, ExtentKind::Unallocated),
            ext(4196, 50, ExtentKind::Data),
            ext(4246, 10, ExtentKind::Zero),
        ];
        assert_eq!(read_runs(&e, 0, 4256, 0), vec![0..4096, 4196..4246]);
    }

    #[test]
    fn close_data_extents_share_one_aligned_read_within_the_segment() {
        let seg = 8u64 << 20;
        let e = [
            ext(seg, 5000, ExtentKind::Unallocated),
            ext(seg + 5000, 3000, ExtentKind::Data),
            ext(seg + 8000, 60_000, ExtentKind::Unallocated),
            ext(seg + 68_000, 1000, ExtentKind::Data),
            ext(seg + 69_000, 3 << 20, ExtentKind::Unallocated),
            ext(seg + 69_000 + (3 << 20), 500, ExtentKind::Data),
            ext(seg + 69_500 + (3 << 20), 100, ExtentKind::Unallocated),
        ];
        let end = seg + 69_600 + (3 << 20);
        let runs = read_runs(&e, seg, end, 1 << 20);
        // The first two are joined across 60 000 bytes; the third is 3 MiB away.
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!(runs[0], seg + 4096..seg + 69_632);
        assert_eq!(runs[1].start, seg + 65_536 + (3 << 20));
        assert_eq!(runs[1].end, end, "clamped to the segment's end");
        for r in &runs {
            assert!(r.start >= seg && r.end <= end);
        }
        // Every data byte is covered.
        for d in e.iter().filter(|e| e.kind == ExtentKind::Data) {
            assert!(runs.iter().any(|r| r.start <= d.offset && d.end() <= r.end));
        }
    }

    #[test]
    fn widened_reads_that_meet_are_joined() {
        let e = [
            ext(0, 100, ExtentKind::Data),
            ext(100, 5000, ExtentKind::Unallocated),
            ext(5100, 100, ExtentKind::Data),
        ];
        // A merge gap smaller than the hole keeps them apart, but widening to pages makes
        // them touch (0..4096 and 4096..8192): one read.
        assert_eq!(read_runs(&e, 0, 8192, 1000), vec![0..8192]);
    }
}
