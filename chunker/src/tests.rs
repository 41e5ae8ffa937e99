use super::*;

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn chunker() -> Chunker {
    Chunker::new(ChunkerParams::with_avg(128 << 10), &[7u8; 32], &[9u8; 32])
}

fn check_cover(cuts: &[Cut], len: usize, p: &ChunkerParams) {
    let mut pos = 0;
    for c in cuts {
        assert_eq!(c.start, pos, "cuts must be contiguous");
        assert!(c.len > 0);
        match c.kind {
            CutKind::Data(_) => assert!(c.len <= p.max_size as usize),
            CutKind::Zero => assert!(c.len >= p.zero_run_min as usize),
        }
        pos += c.len;
    }
    assert_eq!(pos, len, "cuts must cover the buffer");
}

#[test]
fn default_params_are_valid() {
    ChunkerParams::default_v1().validate().unwrap();
    for avg in [64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20] {
        ChunkerParams::with_avg(avg).validate().unwrap();
    }
}

#[test]
fn hostile_params_are_refused() {
    let mut p = ChunkerParams::default_v1();
    p.max_size = u32::MAX;
    assert!(p.validate().is_err());
    let mut p = ChunkerParams::default_v1();
    p.zero_block = 3000;
    assert!(p.validate().is_err());
    let mut p = ChunkerParams::default_v1();
    p.segment_size = 0;
    assert!(p.validate().is_err());
}

#[test]
fn random_data_is_cut_near_the_average() {
    let c = chunker();
    let data = pseudo_random(8 << 20, 1);
    let mut cuts = Vec::new();
    c.split(&data, 0, &mut cuts);
    check_cover(&cuts, data.len(), c.params());
    let avg = data.len() / cuts.len();
    assert!((64 << 10..=256 << 10).contains(&avg), "average {avg}");
}

/// Pins the chunk boundaries for a fixed key: a silent change to the chunker (crate
/// upgrade, gear derivation, masks) would break deduplication against old snapshots.
#[test]
fn boundaries_are_pinned() {
    let c = chunker();
    let data = pseudo_random(2 << 20, 42);
    let mut cuts = Vec::new();
    c.split(&data, 0, &mut cuts);
    let lens: Vec<usize> = cuts.iter().map(|c| c.len).collect();
    assert_eq!(lens, PINNED_LENS, "chunk boundaries changed");
    let CutKind::Data(first) = cuts[0].kind else {
        panic!("first cut must be data")
    };
    assert_eq!(&first.to_hex()[..16], PINNED_FIRST_ID);
}

const PINNED_LENS: &[usize] = &[
    146350, 102753, 120496, 149949, 90922, 217496, 157999, 231697, 52303, 194977, 180868, 214395,
    198198, 38749,
];
const PINNED_FIRST_ID: &str = "e37008083e3b23e4";

#[test]
fn keys_change_boundaries_and_ids() {
    let data = pseudo_random(4 << 20, 3);
    let a = chunker();
    let b = Chunker::new(ChunkerParams::default_v1(), &[8u8; 32], &[9u8; 32]);
    let (mut ca, mut cb) = (Vec::new(), Vec::new());
    a.split(&data, 0, &mut ca);
    b.split(&data, 0, &mut cb);
    let la: Vec<usize> = ca.iter().map(|c| c.len).collect();
    let lb: Vec<usize> = cb.iter().map(|c| c.len).collect();
    assert_ne!(la, lb, "the chunker key must change the boundaries");
    let other_id = Chunker::new(ChunkerParams::default_v1(), &[7u8; 32], &[1u8; 32]);
    assert_ne!(a.chunk_id(b"x"), other_id.chunk_id(b"x"));
}

#[test]
fn zero_runs_become_zero_cuts() {
    let c = chunker();
    let mut data = pseudo_random(1 << 20, 5);
    // 128 KiB of zeros at a 4 KiB boundary, and a short 8 KiB zero run that stays data.
    data[256 << 10..384 << 10].fill(0);
    data[600 << 10..608 << 10].fill(0);
    let mut cuts = Vec::new();
    c.split(&data, 0, &mut cuts);
    check_cover(&cuts, data.len(), c.params());
    let zeros: Vec<(usize, usize)> = cuts
        .iter()
        .filter(|c| c.kind == CutKind::Zero)
        .map(|c| (c.start, c.len))
        .collect();
    assert_eq!(zeros, vec![(256 << 10, 128 << 10)]);
}

#[test]
fn all_zero_buffer_is_one_zero_cut() {
    let c = chunker();
    let data = vec![0u8; 4 << 20];
    let mut cuts = Vec::new();
    c.split(&data, 0, &mut cuts);
    assert_eq!(
        cuts,
        vec![Cut {
            start: 0,
            len: 4 << 20,
            kind: CutKind::Zero
        }]
    );
}

#[test]
fn misaligned_runs_align_zero_blocks_to_the_disk() {
    let c = chunker();
    let mut data = pseudo_random(512 << 10, 6);
    // Buffer starts at disk offset 1000; zero blocks are aligned on the disk.
    let zero_from = 4096 * 20 - 1000;
    data[zero_from..zero_from + (96 << 10)].fill(0);
    let mut cuts = Vec::new();
    c.split(&data, 1000, &mut cuts);
    check_cover(&cuts, data.len(), c.params());
    let z: Vec<&Cut> = cuts.iter().filter(|c| c.kind == CutKind::Zero).collect();
    assert_eq!(z.len(), 1);
    assert_eq!((z[0].start + 1000) % 4096, 0);
    assert_eq!(z[0].len, 96 << 10);
}

#[test]
fn tiny_and_empty_buffers() {
    let c = chunker();
    let mut cuts = Vec::new();
    c.split(&[], 0, &mut cuts);
    assert!(cuts.is_empty());
    c.split(&[1, 2, 3], 0, &mut cuts);
    assert_eq!(cuts.len(), 1);
    assert_eq!(cuts[0].len, 3);
}

#[test]
fn is_zero_finds_a_single_byte() {
    let mut b = vec![0u8; 10_000];
    assert!(is_zero(&b));
    for i in [0, 255, 256, 9_999] {
        b[i] = 1;
        assert!(!is_zero(&b), "byte {i}");
        b[i] = 0;
    }
}

#[test]
fn gaps_cut_exactly_like_zero_filled_bytes() {
    let c = chunker();
    let mut rng = 0x1234_5678_9abc_def0u64;
    for round in 0..40u64 {
        let len = 1_000_000 + (round as usize * 37_123) % 3_000_000;
        let mut data = vec![0u8; len];
        for b in data.iter_mut() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            *b = rng as u8;
        }
        // Gaps of every size class: tiny, just under and over a zero run, huge; some
        // at the ends, some touching zero bytes that are data.
        let mut gaps = Vec::new();
        let mut pos = (round as usize * 4099) % 50_000;
        let sizes = [1usize, 700, 4096, 60_000, 65_536, 70_001, 300_000, 1 << 20];
        let mut k = round as usize;
        while pos < len {
            let g = sizes[k % sizes.len()].min(len - pos);
            gaps.push(pos..pos + g);
            // Zeros in the data right after some gaps, which a zero run may absorb.
            let tail = if k.is_multiple_of(3) { 8192 } else { 0 };
            let after = (pos + g + tail).min(len);
            data[pos + g..after].fill(0);
            pos = after + 40_000 + (k * 7919) % 200_000;
            k += 1;
        }
        let mut filled = data.clone();
        for g in &gaps {
            filled[g.clone()].fill(0);
        }
        // The gap bytes in the buffer given to split_with_gaps are garbage.
        let mut garbage = data.clone();
        for g in &gaps {
            for (i, b) in garbage[g.clone()].iter_mut().enumerate() {
                *b = (i as u8) | 1;
            }
        }
        let offset = round * 512 + if round.is_multiple_of(2) { 0 } else { 1000 };
        let (mut want, mut got) = (Vec::new(), Vec::new());
        c.split(&filled, offset, &mut want);
        c.split_with_gaps(&mut garbage, offset, &gaps, &mut got);
        assert_eq!(want, got, "round {round}");
    }
}

/// FastCDC 2020's own cut loop (the `fastcdc` crate's `cut_gear`), applied again and
/// again over `buf`: the reference the candidate scan must reproduce exactly.
fn reference_cuts(c: &Chunker, buf: &[u8]) -> Vec<usize> {
    let p = c.params();
    let (mask_s, mask_l) = c.masks;
    let gear_ls: Vec<u64> = c.gear.iter().map(|g| g << 1).collect();
    let mut lens = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let (_, mut len) = fastcdc::v2020::cut_gear(
            &buf[pos..],
            p.min_size as usize,
            p.avg_size as usize,
            p.max_size as usize,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
            &c.gear[..],
            &gear_ls,
        );
        if len == 0 {
            len = buf.len() - pos;
        }
        lens.push(len);
        pos += len;
    }
    lens
}

fn data_cut_lens(c: &Chunker, buf: &[u8]) -> Vec<usize> {
    let mut lens = Vec::new();
    let _ = c.cut_data(buf, 0, buf.len(), &mut |cut: Cut, bytes: &[u8]| {
        assert_eq!(cut.len, bytes.len());
        lens.push(cut.len);
        Ok::<(), std::convert::Infallible>(())
    });
    lens
}

/// Low-entropy data: few distinct byte values in runs, so that window hashes repeat and
/// candidates are dense (including every position, for some keys and bytes).
fn low_entropy(len: usize, seed: u64, alphabet: u8) -> Vec<u8> {
    let noise = pseudo_random(len, seed);
    let mut out = Vec::with_capacity(len);
    let mut i = 0;
    while out.len() < len {
        let run = 1 + usize::from(noise[i % len]) * 37;
        let byte = noise[(i + 1) % len] % alphabet;
        out.extend(std::iter::repeat_n(byte, run.min(len - out.len())));
        i += 2;
    }
    out
}

#[test]
fn candidate_scan_cuts_exactly_like_fastcdc() {
    let mut cases = 0;
    for avg in [4096u32, 16 << 10, 128 << 10, 256 << 10] {
        for normalization in 0..=3u8 {
            let mut p = ChunkerParams::with_avg(avg);
            p.normalization = normalization;
            for key in 0..3u8 {
                let c = Chunker::new(p.clone(), &[key; 32], &[9u8; 32]);
                let big = 12 * avg as usize + 12345;
                let inputs = [
                    pseudo_random(big, u64::from(key) + 1),
                    low_entropy(big, u64::from(key) + 7, 2),
                    low_entropy(big, u64::from(key) + 9, 1 + key * 40),
                    vec![key; big],
                    pseudo_random(p.min_size as usize + 1, 3),
                    pseudo_random(p.min_size as usize + 63, 4),
                    pseudo_random(avg as usize + 1, 5),
                    pseudo_random(p.max_size as usize + 1, 6),
                    pseudo_random(17, 7),
                ];
                for data in &inputs {
                    assert_eq!(
                        data_cut_lens(&c, data),
                        reference_cuts(&c, data),
                        "avg {avg} normalization {normalization} key {key} len {}",
                        data.len()
                    );
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 4 * 4 * 3 * 9);
}

/// Every byte value repeated: the window hash is the same at every position, so for some
/// keys every position is a candidate; the candidate list stays bounded by the scan
/// window and the cuts still match FastCDC.
#[test]
fn constant_runs_that_hit_every_position_still_cut_like_fastcdc() {
    let p = ChunkerParams::with_avg(128 << 10);
    let mut dense = 0;
    for key in 0..2048u16 {
        let mut chunker_key = [0u8; 32];
        chunker_key[..2].copy_from_slice(&key.to_le_bytes());
        let c = Chunker::new(p.clone(), &chunker_key, &[1u8; 32]);
        for byte in 0..=255u8 {
            // The window hash of a constant run, once 64 bytes long.
            let w = (0..64).fold(0u64, |h, _| {
                (h << 1).wrapping_add(c.gear[usize::from(byte)])
            });
            if w & c.masks.1 == 0 {
                let data = vec![byte; 3 << 20];
                assert_eq!(data_cut_lens(&c, &data), reference_cuts(&c, &data));
                dense += 1;
            }
        }
    }
    assert!(
        dense > 0,
        "no key and byte gave a candidate at every position"
    );
}
