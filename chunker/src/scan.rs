//! The candidate scan behind the chunker: every position of a buffer where the gear hash
//! of the bytes ending there has all the bits of a filter mask clear.
//!
//! FastCDC's gear hash shifts left by one bit per byte, so its low `k` bits depend only on
//! the last `k` bytes: whether a position can be a cut point is a property of a short
//! window, not of where the chunk began. The scan therefore needs no chunk boundaries and
//! runs four independent lanes over four parts of the buffer at once; the serial hash
//! chain of one lane (a shift and an add per byte) no longer bounds the speed. The cut
//! selection in `lib.rs` turns the candidates into exactly FastCDC's cuts.

/// Bytes of warm-up before a lane's first position: more than any mask is wide.
const WARM_UP: usize = 64;
/// Below this many bytes a range is scanned by one lane.
const MIN_LANE: usize = 4096;

/// A position where the window hash passed the filter, with the hash itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// Position in [`Scan::buf`].
    pub pos: usize,
    /// The window hash at `pos` (including the byte at `pos`).
    pub hash: u64,
}

/// One gear-hash step: `h` rolled over one more byte `b`.
#[inline(always)]
pub(crate) fn step(h: u64, b: u8, gear: &[u64; 256]) -> u64 {
    (h << 1).wrapping_add(gear[usize::from(b)])
}

/// The data a candidate scan runs over, and what it looks for.
pub(crate) struct Scan<'a> {
    /// The buffer; positions are indexes into it.
    pub buf: &'a [u8],
    /// Where the data run starts: no window reaches before it.
    pub from: usize,
    /// The keyed gear table.
    pub gear: &'a [u64; 256],
    /// A position is a candidate when its window hash has all these bits clear.
    pub filter: u64,
}

impl Scan<'_> {
    /// Appends to `out`, in ascending order, every position `p` in `start..end` whose
    /// window hash `W(p)` satisfies `W(p) & filter == 0`.
    ///
    /// `W(p)` is the gear hash rolled from 0 over `buf[max(from, p - 63) ..= p]`: its
    /// bits below 64 (all of them) equal those of a hash rolled from any earlier start at
    /// or after `from`, as long as that start is at most `p - 63`; in particular the
    /// masked bits of FastCDC's chunk-local hash once the chunk's hashing began at least
    /// `mask width - 1` bytes before `p`. Requires `from <= start <= end <= buf.len()`.
    pub fn run(&self, start: usize, end: usize, out: &mut Vec<Candidate>) {
        let len = end - start;
        if len < 4 * MIN_LANE {
            self.run_one(start, end, out);
            return;
        }
        let lane = len / 4;
        let starts = [start, start + lane, start + 2 * lane, start + 3 * lane];
        let mut hashes = starts.map(|s| self.warm_up(s));
        let lanes = starts.map(|s| &self.buf[s..s + lane]);
        // Lanes 1..3 are rare hits kept apart so that `out` stays sorted.
        let mut later: [Vec<Candidate>; 3] = Default::default();
        let mut i = 0;
        while i < lane {
            i = run_to_hit(lanes, i, &mut hashes, self.gear, self.filter);
            if i == lane {
                break;
            }
            for (k, &h) in hashes.iter().enumerate() {
                if h & self.filter == 0 {
                    let c = Candidate {
                        pos: starts[k] + i,
                        hash: h,
                    };
                    match k.checked_sub(1) {
                        None => out.push(c),
                        Some(l) => later[l].push(c),
                    }
                }
            }
            i += 1;
        }
        for l in &later {
            out.extend_from_slice(l);
        }
        self.run_one(start + 4 * lane, end, out);
    }

    /// [`Scan::run`] with one lane.
    fn run_one(&self, start: usize, end: usize, out: &mut Vec<Candidate>) {
        let mut h = self.warm_up(start);
        for (i, &b) in self.buf[start..end].iter().enumerate() {
            h = step(h, b, self.gear);
            if h & self.filter == 0 {
                out.push(Candidate {
                    pos: start + i,
                    hash: h,
                });
            }
        }
    }

    /// The window hash just before `start`: rolled over the bytes that reach into the
    /// windows of the positions from `start` on.
    fn warm_up(&self, start: usize) -> u64 {
        let bytes = &self.buf[start.saturating_sub(WARM_UP).max(self.from)..start];
        bytes.iter().fold(0, |h, &b| step(h, b, self.gear))
    }
}

/// Rolls the four lanes' hashes from position `i` on and returns the first position at
/// which one of them passes the filter (its hashes include that position), or
/// `lanes[0].len()` when none does. All lanes must be as long as the first. Kept free of
/// calls and out of line so that the whole state stays in registers.
#[inline(never)]
fn run_to_hit(
    lanes: [&[u8]; 4],
    mut i: usize,
    hashes: &mut [u64; 4],
    gear: &[u64; 256],
    filter: u64,
) -> usize {
    let n = lanes[0].len();
    let [l0, l1, l2, l3] = lanes.map(|l| &l[..n]);
    let [mut h0, mut h1, mut h2, mut h3] = *hashes;
    while i < n {
        h0 = step(h0, l0[i], gear);
        h1 = step(h1, l1[i], gear);
        h2 = step(h2, l2[i], gear);
        h3 = step(h3, l3[i], gear);
        if h0 & filter == 0 || h1 & filter == 0 || h2 & filter == 0 || h3 & filter == 0 {
            break;
        }
        i += 1;
    }
    *hashes = [h0, h1, h2, h3];
    i
}
