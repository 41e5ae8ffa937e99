//! Extents of a logical disk.

/// What a run of a disk holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentKind {
    /// Allocated bytes that must be read.
    Data,
    /// Known to read as zeros without reading (e.g. a qcow2 zero cluster).
    Zero,
    /// Not allocated in the source (a hole); reads as zeros, never read.
    Unallocated,
}

/// A run of a disk: `len` bytes from `offset`, all of one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First byte of the run.
    pub offset: u64,
    /// Length in bytes, never 0.
    pub len: u64,
    /// What the run holds.
    pub kind: ExtentKind,
}

impl Extent {
    /// One past the last byte of the run.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Appends an extent, merging it with the previous one when both are of the same kind
/// and adjacent.
pub fn push_merged(out: &mut Vec<Extent>, e: Extent) {
    if e.len == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.kind == e.kind && last.end() == e.offset {
            last.len += e.len;
            return;
        }
    }
    out.push(e);
}
