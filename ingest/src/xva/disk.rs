//! One disk of an XVA stream, read as a [`SequentialDisk`].
//!
//! Placement of blocks follows xapi's importer: a block member numbered `n` after block
//! `last` is preceded by `n - last - 1` omitted all-zero blocks of 1 MiB; a zero-length
//! member (the exporter's keep-alive) takes a number but no disk space. Without
//! keep-alives this is simply "block `n` holds `[n MiB, n MiB + 1 MiB)`".

use super::tar::{Member, TarReader};
use super::{BLOCK_SIZE, FORMAT};
use crate::sequential::{Segment, SequentialDisk};
use crate::{push_merged, Extent, ExtentKind, IngestError};
use std::sync::{Arc, Mutex};

/// Longest checksum member accepted.
const MAX_CHECKSUM: u64 = 256;

/// The tar stream the disks of one archive share.
pub(super) struct Shared {
    pub tar: TarReader,
    /// Index of the disk whose blocks come next.
    pub current: usize,
    /// Sizes of all disks (to skip empty ones, which have no blocks).
    pub sizes: Vec<u64>,
    /// Set after an error: the stream position is unknown from then on.
    pub failed: Option<String>,
}

impl Shared {
    /// Moves `current` past `index` and any following zero-size disks.
    fn advance_from(&mut self, index: usize) {
        let mut c = index + 1;
        while c < self.sizes.len() && self.sizes[c] == 0 {
            c += 1;
        }
        self.current = c;
    }

    /// The first disk with blocks.
    pub fn start(&mut self) {
        let mut c = 0;
        while c < self.sizes.len() && self.sizes[c] == 0 {
            c += 1;
        }
        self.current = c;
    }
}

/// A block member whose header has been read but whose data has not.
struct Pending {
    number: u64,
    /// Disk offset of the block.
    offset: u64,
    /// Data length; 0 for a keep-alive.
    len: u64,
    member: Member,
}

/// One VDI of an XVA stream.
pub struct XvaSeqDisk {
    shared: Arc<Mutex<Shared>>,
    index: usize,
    ref_id: String,
    prefix: String,
    name: String,
    size: u64,
    /// Start of the next segment.
    next: u64,
    /// Disk bytes accounted for by the blocks read so far.
    pos: u64,
    last: Option<u64>,
    pending: Option<Pending>,
}

impl XvaSeqDisk {
    pub(super) fn new(
        shared: Arc<Mutex<Shared>>,
        index: usize,
        ref_id: &str,
        name: &str,
        size: u64,
    ) -> Self {
        XvaSeqDisk {
            shared,
            index,
            ref_id: ref_id.to_string(),
            prefix: format!("{ref_id}/"),
            name: name.to_string(),
            size,
            next: 0,
            pos: 0,
            last: None,
            pending: None,
        }
    }

    fn label(&self) -> String {
        format!("disk {} ({}, {})", self.index, self.name, self.ref_id)
    }

    fn refuse(&self, what: &str, reason: String) -> IngestError {
        IngestError::Unimplemented {
            what: what.to_string(),
            format: FORMAT,
            reason,
        }
    }

    /// Reads the next block member header of this disk and places it.
    fn next_block(&mut self, tar: &mut TarReader) -> Result<Pending, IngestError> {
        let Some(member) = tar.next_member()? else {
            return Err(IngestError::Truncated {
                what: format!("{}: {}", tar.what(), self.label()),
                expected: self.size,
                got: self.pos,
            });
        };
        let at = member.header_offset;
        let Some(suffix) = member.name.strip_prefix(&self.prefix) else {
            return Err(tar.corrupt(
                at,
                format!(
                    "{} ends early: its blocks stop at disk offset {} of {} (the last block \
                     is always present), and the next member is {:?}",
                    self.label(),
                    self.pos,
                    self.size,
                    member.name
                ),
            ));
        };
        if suffix.is_empty() || suffix.len() > 12 || !suffix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(tar.corrupt(
                at,
                format!(
                    "member {:?} of {} is not a block (expected {}<number>)",
                    member.name,
                    self.label(),
                    self.prefix
                ),
            ));
        }
        let number: u64 = suffix
            .parse()
            .map_err(|_| tar.corrupt(at, format!("bad block number in {:?}", member.name)))?;
        let gap = match self.last {
            Some(last) if number <= last => {
                return Err(tar.corrupt(
                    at,
                    format!(
                        "block {number} of {} comes after block {last}: blocks out of order \
                         or duplicated",
                        self.label()
                    ),
                ))
            }
            Some(last) => number - last - 1,
            None => number,
        };
        let offset = gap
            .checked_mul(BLOCK_SIZE)
            .and_then(|g| g.checked_add(self.pos))
            .filter(|&o| o < self.size)
            .ok_or_else(|| {
                tar.corrupt(
                    at,
                    format!(
                        "block {number} ({:?}) lies past the virtual size {} of {}",
                        member.name,
                        self.size,
                        self.label()
                    ),
                )
            })?;
        let expected = (self.size - offset).min(BLOCK_SIZE);
        if member.size != 0 && member.size != expected {
            return Err(tar.corrupt(
                at,
                format!(
                    "block {number} ({:?}) of {} holds {} bytes, expected {expected} at disk \
                     offset {offset}",
                    member.name,
                    self.label(),
                    member.size
                ),
            ));
        }
        self.last = Some(number);
        Ok(Pending {
            number,
            offset,
            len: member.size,
            member,
        })
    }

    /// Reads the checksum member that follows a block and compares it with `data`.
    fn verify(&self, tar: &mut TarReader, block: &Pending, data: &[u8]) -> Result<(), IngestError> {
        let Some(c) = tar.next_member()? else {
            return Err(IngestError::Truncated {
                what: format!(
                    "{}: checksum of {} of {}",
                    tar.what(),
                    block.member.name,
                    self.label()
                ),
                expected: self.size,
                got: block.offset + block.len,
            });
        };
        let rest = c.name.strip_prefix(block.member.name.as_str());
        let computed = match rest {
            Some(".checksum") => {
                use sha1::{Digest, Sha1};
                hex(&Sha1::digest(data))
            }
            Some(".xxhash") => format!("{:016X}", xxhash_rust::xxh64::xxh64(data, 0)),
            _ => {
                return Err(tar.corrupt(
                    c.header_offset,
                    format!(
                        "block member {:?} is not followed by its .checksum or .xxhash member \
                         (found {:?})",
                        block.member.name, c.name
                    ),
                ))
            }
        };
        let stored = tar.read_small(&c, MAX_CHECKSUM)?;
        let stored = String::from_utf8_lossy(&stored);
        let stored = stored.trim();
        if !stored.eq_ignore_ascii_case(&computed) {
            return Err(tar.corrupt(
                c.header_offset,
                format!(
                    "checksum mismatch for block {} ({:?}) of {} at disk offset {}: \
                     {:?} says {stored}, the data hashes to {computed}",
                    block.number,
                    block.member.name,
                    self.label(),
                    block.offset,
                    c.name
                ),
            ));
        }
        Ok(())
    }

    fn fill_segment(
        &mut self,
        tar: &mut TarReader,
        segment_size: u64,
        buf: &mut Vec<u8>,
    ) -> Result<Segment, IngestError> {
        let offset = self.next;
        let end = offset.saturating_add(segment_size).min(self.size);
        let len = end - offset;
        buf.resize(len as usize, 0);
        let mut extents = Vec::new();
        while self.pos < end {
            let pending = match self.pending.take() {
                Some(p) => p,
                None => self.next_block(tar)?,
            };
            if pending.offset >= end {
                push_merged(&mut extents, unallocated(self.pos, end - self.pos));
                self.pos = end;
                self.pending = Some(pending);
                break;
            }
            push_merged(
                &mut extents,
                unallocated(self.pos, pending.offset - self.pos),
            );
            let start = (pending.offset - offset) as usize;
            let stop = start + pending.len as usize;
            let data = &mut buf[start..stop];
            tar.read_data(data, &pending.member.name)?;
            self.verify(tar, &pending, data)?;
            push_merged(
                &mut extents,
                Extent {
                    offset: pending.offset,
                    len: pending.len,
                    kind: ExtentKind::Data,
                },
            );
            self.pos = pending.offset + pending.len;
        }
        self.next = end;
        Ok(Segment {
            offset,
            len,
            extents,
            data_start: 0,
        })
    }
}

fn unallocated(offset: u64, len: u64) -> Extent {
    Extent {
        offset,
        len,
        kind: ExtentKind::Unallocated,
    }
}

/// Lower-case hex of `bytes`.
pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

impl SequentialDisk for XvaSeqDisk {
    fn size_hint(&self) -> Option<u64> {
        Some(self.size)
    }

    fn next_segment(
        &mut self,
        segment_size: usize,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Segment>, IngestError> {
        let shared = Arc::clone(&self.shared);
        let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
        let what = guard.tar.what().to_string();
        if segment_size == 0 || (segment_size as u64) & (BLOCK_SIZE - 1) != 0 {
            return Err(self.refuse(
                &what,
                format!("segment size {segment_size} is not a multiple of the 1 MiB XVA block"),
            ));
        }
        if self.next >= self.size {
            return Ok(None);
        }
        if let Some(reason) = &guard.failed {
            return Err(self.refuse(
                &what,
                format!("the stream is unusable after an earlier error ({reason})"),
            ));
        }
        if guard.current != self.index {
            return Err(self.refuse(
                &what,
                format!(
                    "disks of an XVA stream must be read in order, each to its end: {} was \
                     asked for while disk {} has not been read to its end",
                    self.label(),
                    guard.current
                ),
            ));
        }
        match self.fill_segment(&mut guard.tar, segment_size as u64, buf) {
            Ok(segment) => {
                if self.next >= self.size {
                    guard.advance_from(self.index);
                }
                Ok(Some(segment))
            }
            Err(e) => {
                guard.failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    fn format_name(&self) -> &'static str {
        FORMAT
    }
}
