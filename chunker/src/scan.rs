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
    /// Position in the buffer passed to [`scan`].
    pub pos: usize,
    /// The window hash at `pos` (including the byte at `pos`).
    pub hash: u64,
}

/// Appends to `out`, in ascending order, every position `p` in `start..end` whose window
/// hash `W(p)` satisfies `W(p) & filter == 0`.
///
/// `W(p)` is the gear hash rolled from 0 over `buf[max(from, p - 63) ..= p]`: its bits
/// below 64 (all of them) equal those of a hash rolled from any earlier start at or after
/// `from`, as long as that start is at most `p - 63`; in particular the masked bits of
/// FastCDC's chunk-local hash once the chunk's hashing began at least `mask width - 1`
/// bytes before `p`. Requires `from <= start <= end <= buf.len()`.
pub(crate) fn scan(
    buf: &[u8],
    from: usize,
    start: usize,
    end: usize,
    gear: &[u64; 256],
    filter: u64,
    out: &mut Vec<Candidate>,
) {
    let len = end - start;
    if len < 4 * MIN_LANE {
        scan_one(buf, from, start, end, gear, filter, out);
        return;
    }
    let lane = len / 4;
    let starts = [start, start + lane, start + 2 * lane, start + 3 * lane];
    let mut hashes = [0u64; 4];
    for (h, &s) in hashes.iter_mut().zip(&starts) {
        *h = roll(0, &buf[s.saturating_sub(WARM_UP).max(from)..s], gear);
    }
    let lanes = [
        &buf[starts[0]..starts[0] + lane],
        &buf[starts[1]..starts[1] + lane],
        &buf[starts[2]..starts[2] + lane],
        &buf[starts[3]..starts[3] + lane],
    ];
    // Lanes 1..3 are rare hits kept apart so that `out` stays sorted.
    let mut later: [Vec<Candidate>; 3] = Default::default();
    let mut i = 0;
    while i < lane {
        i = run_to_hit(lanes, i, &mut hashes, gear, filter);
        if i == lane {
            break;
        }
        for (k, &h) in hashes.iter().enumerate() {
            if h & filter == 0 {
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
    scan_one(buf, from, start + 4 * lane, end, gear, filter, out);
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
        h0 = (h0 << 1).wrapping_add(gear[usize::from(l0[i])]);
        h1 = (h1 << 1).wrapping_add(gear[usize::from(l1[i])]);
        h2 = (h2 << 1).wrapping_add(gear[usize::from(l2[i])]);
        h3 = (h3 << 1).wrapping_add(gear[usize::from(l3[i])]);
        if h0 & filter == 0 || h1 & filter == 0 || h2 & filter == 0 || h3 & filter == 0 {
            break;
        }
        i += 1;
    }
    *hashes = [h0, h1, h2, h3];
    i
}

/// [`scan`] with one lane.
fn scan_one(
    buf: &[u8],
    from: usize,
    start: usize,
    end: usize,
    gear: &[u64; 256],
    filter: u64,
    out: &mut Vec<Candidate>,
) {
    let mut h = roll(
        0,
        &buf[start.saturating_sub(WARM_UP).max(from)..start],
        gear,
    );
    for (i, &b) in buf[start..end].iter().enumerate() {
        h = (h << 1).wrapping_add(gear[usize::from(b)]);
        if h & filter == 0 {
            out.push(Candidate {
                pos: start + i,
                hash: h,
            });
        }
    }
}

/// The gear hash `h` rolled over `bytes`.
pub(crate) fn roll(mut h: u64, bytes: &[u8], gear: &[u64; 256]) -> u64 {
    for &b in bytes {
        h = (h << 1).wrapping_add(gear[usize::from(b)]);
    }
    h
}
