//! Content-defined chunking for vmvault (FORMAT.md section 5).
//!
//! Pure functions on buffers: a [`Chunker`] turns one allocated run of disk bytes into
//! zero extents and data chunks named by keyed BLAKE3. The same bytes, parameters and
//! keys always give the same cuts, whatever thread calls it; segmenting and parallelism
//! live in the repository's backup pipeline.

mod params;
mod scan;
mod zero;

pub use params::{ChunkerParams, ParamsError, MAX_CHUNK};
pub use zero::is_zero;

use fastcdc::v2020::{select_masks, Normalization};
use scan::{Candidate, Scan};

/// A 32-byte chunk id: `BLAKE3-keyed(id_key, plaintext)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Lowercase hexadecimal form, as used in file names and messages.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            s.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
        }
        s
    }
}

impl std::fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// What a run of bytes turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutKind {
    /// At least `zero_run_min` bytes of zero blocks: never stored.
    Zero,
    /// A chunk to be stored (or deduplicated) under this id.
    Data(ChunkId),
}

/// One piece of a run: `len` bytes at `start` (relative to the run's first byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cut {
    /// Offset of the piece within the buffer passed to [`Chunker::split`].
    pub start: usize,
    /// Length in bytes; never 0, and at most `max_size` for data.
    pub len: usize,
    /// Zero run or data chunk.
    pub kind: CutKind,
}

/// Keyed FastCDC chunker with zero-run detection. Holds key material: it is neither
/// `Debug` nor `Clone`, and wipes its keys when dropped.
pub struct Chunker {
    params: ChunkerParams,
    gear: Box<[u64; 256]>,
    /// FastCDC's strict and loose masks.
    masks: (u64, u64),
    id_key: [u8; 32],
}

impl Drop for Chunker {
    fn drop(&mut self) {
        // Best-effort wipe of key material; the gear table is derived from a key too.
        self.id_key.iter_mut().for_each(|b| *b = 0);
        self.gear.iter_mut().for_each(|g| *g = 0);
        std::hint::black_box(&self.id_key);
    }
}

impl Chunker {
    /// Builds a chunker from validated parameters, the chunker key (gear table) and the
    /// chunk-id key.
    pub fn new(params: ChunkerParams, chunker_key: &[u8; 32], id_key: &[u8; 32]) -> Self {
        let gear = gear_table(chunker_key);
        let level = match params.normalization {
            0 => Normalization::Level0,
            1 => Normalization::Level1,
            2 => Normalization::Level2,
            _ => Normalization::Level3,
        };
        let (mask_s, mask_l) = select_masks(params.avg_size as usize, level);
        Chunker {
            params,
            gear,
            masks: (mask_s, mask_l),
            id_key: *id_key,
        }
    }

    /// The parameters this chunker cuts with.
    pub fn params(&self) -> &ChunkerParams {
        &self.params
    }

    /// Names a chunk: `BLAKE3-keyed(id_key, bytes)`.
    pub fn chunk_id(&self, bytes: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.id_key, bytes).as_bytes())
    }

    /// Cuts one allocated run of disk bytes that starts at disk offset `disk_offset`.
    ///
    /// Guarantees: the cuts are contiguous, cover `buf` exactly, zero cuts are at least
    /// `zero_run_min` long and aligned to `zero_block` on the disk, data cuts are at most
    /// `max_size` long, and the result depends only on `buf`, `disk_offset % zero_block`,
    /// the parameters and the keys.
    pub fn split(&self, buf: &[u8], disk_offset: u64, out: &mut Vec<Cut>) {
        let _ = self.split_inner(buf, disk_offset, &[], &mut collect_into(out));
    }

    /// Cuts a run of disk bytes in which the ranges `gaps` (sorted, disjoint, inside
    /// `buf`) are known to read as zeros but were not read: unallocated or zero extents.
    ///
    /// Guarantees: the cuts are exactly those [`Chunker::split`] makes of `buf` with every
    /// gap filled with zeros, so chunk boundaries depend only on the logical content and
    /// never on which parts a container happened to allocate. The bytes of the gaps in
    /// `buf` are overwritten with zeros where a data cut may include them (small gaps and
    /// the partial blocks at the ends of large ones); the whole blocks of a gap at least
    /// `zero_run_min` long are neither written nor scanned, so a large gap costs nothing.
    pub fn split_with_gaps(
        &self,
        buf: &mut [u8],
        disk_offset: u64,
        gaps: &[std::ops::Range<usize>],
        out: &mut Vec<Cut>,
    ) {
        let _ = self.split_with_gaps_each(buf, disk_offset, gaps, collect_into(out));
    }

    /// [`Chunker::split_with_gaps`] that hands each cut to `each` as soon as it is made,
    /// with its bytes (empty for zero cuts), instead of collecting them: a chunk can be
    /// compressed while the cut and the hash have just left it in the CPU's cache.
    ///
    /// Guarantees: `each` sees exactly the cuts `split_with_gaps` returns, in order; the
    /// first error it returns stops the split and is returned.
    pub fn split_with_gaps_each<E>(
        &self,
        buf: &mut [u8],
        disk_offset: u64,
        gaps: &[std::ops::Range<usize>],
        mut each: impl FnMut(Cut, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let block = self.params.zero_block as usize;
        let misalign = (disk_offset % block as u64) as usize;
        let buf_len = buf.len();
        // Buffer positions of block boundaries: `k * block - misalign`.
        let align_up = |p: usize| -> usize {
            let q = p + misalign;
            (q.div_ceil(block) * block - misalign).min(buf_len)
        };
        let align_down = |p: usize| -> usize {
            let q = p + misalign;
            (q / block * block).saturating_sub(misalign)
        };
        let mut whole: Vec<std::ops::Range<usize>> = Vec::with_capacity(gaps.len());
        for g in gaps {
            let g = g.start.min(buf.len())..g.end.min(buf.len());
            let (inner_start, inner_end) = (align_up(g.start), align_down(g.end));
            // Whole blocks of the gap that form a zero run on their own always end up in
            // a zero cut, so they need neither bytes nor a scan; anything shorter may be
            // part of a data chunk and is materialised.
            if inner_end >= inner_start + self.params.zero_run_min as usize {
                buf[g.start..inner_start].fill(0);
                buf[inner_end..g.end].fill(0);
                whole.push(inner_start..inner_end);
            } else {
                buf[g.clone()].fill(0);
            }
        }
        self.split_inner(buf, disk_offset, &whole, &mut each)
    }

    /// `split` where the blocks of `zero_blocks` (block-aligned ranges) count as zero
    /// without being scanned.
    fn split_inner<E>(
        &self,
        buf: &[u8],
        disk_offset: u64,
        zero_blocks: &[std::ops::Range<usize>],
        each: &mut impl FnMut(Cut, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let block = self.params.zero_block as usize;
        let run_min = self.params.zero_run_min as usize;
        let mut data_start = 0usize;
        let mut zero_start: Option<usize> = None;
        // First block boundary at or after the start, in buffer coordinates.
        let misalign = (disk_offset % block as u64) as usize;
        let mut next_gap = 0usize;
        let mut pos = 0usize;
        while pos < buf.len() {
            while next_gap < zero_blocks.len() && zero_blocks[next_gap].end <= pos {
                next_gap += 1;
            }
            let (zero, block_end) = match zero_blocks.get(next_gap) {
                Some(g) if g.start <= pos => (true, g.end),
                _ => {
                    let end = if pos == 0 && misalign != 0 {
                        (block - misalign).min(buf.len())
                    } else {
                        (pos + block).min(buf.len())
                    };
                    (is_zero(&buf[pos..end]), end)
                }
            };
            match (zero, zero_start) {
                (true, None) => zero_start = Some(pos),
                (false, Some(z)) => {
                    if pos - z >= run_min {
                        self.cut_data(buf, data_start, z, each)?;
                        let zero = Cut {
                            start: z,
                            len: pos - z,
                            kind: CutKind::Zero,
                        };
                        each(zero, &[])?;
                        data_start = pos;
                    }
                    zero_start = None;
                }
                _ => {}
            }
            pos = block_end;
        }
        if let Some(z) = zero_start {
            if buf.len() - z >= run_min {
                self.cut_data(buf, data_start, z, each)?;
                let zero = Cut {
                    start: z,
                    len: buf.len() - z,
                    kind: CutKind::Zero,
                };
                return each(zero, &[]);
            }
        }
        self.cut_data(buf, data_start, buf.len(), each)
    }

    /// FastCDC over `buf[from..to]`, handing each data cut to `each`.
    ///
    /// The cuts are exactly those of FastCDC 2020's `cut_gear` applied again and again
    /// from `from` (the chunk-local hash starts at 0 at `chunk start + min_size`; a
    /// position is a cut if its hash clears the strict mask before `avg_size` and the
    /// loose mask from there to `max_size`, pairs of positions being tested, so an odd
    /// last byte never is). They are found from the window-hash candidates of
    /// [`Scan::run`]: the first `mask width - 1` positions of each chunk, where the
    /// chunk-local hash has not yet covered the whole mask, are hashed one by one;
    /// from there on the two hashes agree on every masked bit.
    fn cut_data<E>(
        &self,
        buf: &[u8],
        from: usize,
        to: usize,
        each: &mut impl FnMut(Cut, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let p = &self.params;
        let (min, avg, max) = (
            p.min_size as usize,
            p.avg_size as usize,
            p.max_size as usize,
        );
        let (mask_s, mask_l) = self.masks;
        // Positions that clear either mask clear the bits they share.
        let filter = mask_s & mask_l;
        let width = (64 - (mask_s | mask_l).leading_zeros()) as usize;
        let scanner = Scan {
            buf,
            from,
            gear: &self.gear,
            filter,
        };
        let mut cands: Vec<Candidate> = Vec::new();
        let (mut next, mut scanned) = (0usize, from);
        let mut pos = from;
        while pos < to {
            let n = to - pos;
            let mut len = n;
            if n > min {
                let remaining = n.min(max);
                let strict_end = pos + (remaining.min(avg) & !1);
                let loose_end = pos + (remaining & !1);
                let mask_at = |q: usize| if q < strict_end { mask_s } else { mask_l };
                len = remaining;
                // The chunk's first positions, with the chunk-local hash.
                let exact_from = (pos + min + width.saturating_sub(1)).min(loose_end);
                let mut h = 0u64;
                let mut found = None;
                for (q, &b) in (pos + min..).zip(&buf[pos + min..exact_from]) {
                    h = scan::step(h, b, &self.gear);
                    if h & mask_at(q) == 0 {
                        found = Some(q);
                        break;
                    }
                }
                if found.is_none() && exact_from < loose_end {
                    while scanned < loose_end {
                        if next > 0 {
                            cands.drain(..next);
                            next = 0;
                        }
                        let window_end = (scanned + SCAN_WINDOW).min(to);
                        scanner.run(scanned, window_end, &mut cands);
                        scanned = window_end;
                    }
                    while cands.get(next).is_some_and(|c| c.pos < exact_from) {
                        next += 1;
                    }
                    found = cands[next..]
                        .iter()
                        .take_while(|c| c.pos < loose_end)
                        .find(|c| c.hash & mask_at(c.pos) == 0)
                        .map(|c| c.pos);
                }
                if let Some(q) = found {
                    len = q - pos;
                }
            }
            let bytes = &buf[pos..pos + len];
            let cut = Cut {
                start: pos,
                len,
                kind: CutKind::Data(self.chunk_id(bytes)),
            };
            each(cut, bytes)?;
            pos += len;
        }
        Ok(())
    }
}

/// A cut callback that collects the cuts into `out` and never fails.
fn collect_into(
    out: &mut Vec<Cut>,
) -> impl FnMut(Cut, &[u8]) -> Result<(), std::convert::Infallible> + '_ {
    |c, _| {
        out.push(c);
        Ok(())
    }
}

/// Bytes scanned for candidates at a time: bounds the candidate list (8 MiB even if
/// every position were one) while keeping the per-scan set-up negligible.
const SCAN_WINDOW: usize = 512 << 10;

/// The keyed gear table of FORMAT.md section 5.
fn gear_table(chunker_key: &[u8; 32]) -> Box<[u64; 256]> {
    let mut gear = Box::new([0u64; 256]);
    for (i, g) in gear.iter_mut().enumerate() {
        let mut h = blake3::Hasher::new_keyed(chunker_key);
        h.update(b"vmvault v1 gear");
        h.update(&[i as u8]);
        let out = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&out.as_bytes()[..8]);
        *g = u64::from_le_bytes(first);
    }
    gear
}

#[cfg(test)]
mod tests;
