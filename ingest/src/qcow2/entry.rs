//! Pure decoding of L1 and L2 table entries, with no I/O.

/// Bits 9..=55 of an L1 or L2 entry: a host offset.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 63: refcount exactly one.
pub const COPIED: u64 = 1 << 63;
/// Bit 62 of an L2 entry: a compressed cluster.
pub const COMPRESSED: u64 = 1 << 62;
/// Bit 0 of an L2 entry (version 3, no extended L2): the cluster reads as zeros.
pub const ZERO: u64 = 1;
/// Subclusters per cluster with extended L2 entries.
pub const SUBCLUSTERS: u32 = 32;

/// What the reader needs to know to decode an L2 entry.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Extended L2 entries (subclusters).
    pub extended: bool,
    /// Guest data lives in an external data file (offset 0 is valid there).
    pub external: bool,
    /// Image version (the zero flag needs version 3).
    pub version: u32,
}

impl Geometry {
    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }
}

/// A decoded L2 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cluster {
    /// Not allocated here: reads from the backing file (or zeros).
    Unallocated,
    /// Reads as zeros.
    Zero,
    /// The whole cluster's data at this host offset (cluster aligned).
    Normal(u64),
    /// Compressed data: `len` bytes (at most, the last sector may be partial) at `offset`.
    Compressed {
        /// Host byte offset of the compressed data.
        offset: u64,
        /// Bytes the descriptor covers from `offset`.
        len: u64,
    },
    /// Extended L2 entry with per-subcluster state: subcluster `i` is allocated at
    /// `host + i * subcluster size` when bit `i` of `alloc` is set, reads as zeros when
    /// bit `i` of `zero` is set, and is unallocated otherwise. `host` is `None` only when
    /// `alloc` is 0.
    Sub {
        /// Host offset of the cluster, if one is allocated.
        host: Option<u64>,
        /// Allocation bitmap.
        alloc: u32,
        /// Zero bitmap.
        zero: u32,
    },
}

/// Decodes an L1 entry into the L2 table's offset (`None`: unallocated), checking that
/// it is cluster aligned.
pub fn l1_target(g: &Geometry, entry: u64) -> Result<Option<u64>, String> {
    let off = entry & OFFSET_MASK;
    if off == 0 {
        return Ok(None);
    }
    if off & (g.cluster_size() - 1) != 0 {
        return Err(format!("L2 table offset {off:#x} is not cluster aligned"));
    }
    Ok(Some(off))
}

/// Decodes an L2 entry (and, with extended L2 entries, its bitmap), rejecting the
/// combinations the specification forbids.
pub fn decode_l2(g: &Geometry, entry: u64, bitmap: u64) -> Result<Cluster, String> {
    if entry & COMPRESSED != 0 {
        if g.external {
            return Err("compressed cluster in an image with an external data file".into());
        }
        if g.extended && bitmap != 0 {
            return Err("compressed cluster with a non-zero subcluster bitmap".into());
        }
        let shift = 62 - (g.cluster_bits - 8);
        let sectors_mask = (1u64 << (g.cluster_bits - 8)) - 1;
        let offset = entry & ((1u64 << shift) - 1);
        if offset >> 56 != 0 {
            return Err(format!("compressed cluster offset {offset:#x} beyond 2^56"));
        }
        let sectors = ((entry >> shift) & sectors_mask) + 1;
        let len = sectors * 512 - (offset & 511);
        return Ok(Cluster::Compressed { offset, len });
    }
    let host = entry & OFFSET_MASK;
    let allocated = host != 0 || (g.external && entry & COPIED != 0);
    if allocated && host & (g.cluster_size() - 1) != 0 {
        return Err(format!(
            "data cluster offset {host:#x} is not cluster aligned"
        ));
    }
    if !g.extended {
        if entry & ZERO != 0 {
            if g.version < 3 {
                return Err("zero cluster flag in a version 2 image".into());
            }
            return Ok(Cluster::Zero);
        }
        return Ok(if allocated {
            Cluster::Normal(host)
        } else {
            Cluster::Unallocated
        });
    }
    if entry & ZERO != 0 {
        return Err("zero flag set in an extended L2 entry".into());
    }
    let alloc = bitmap as u32;
    let zero = (bitmap >> 32) as u32;
    if alloc & zero != 0 {
        return Err(format!(
            "subclusters both allocated and zero (bitmap {bitmap:#018x})"
        ));
    }
    if !allocated && alloc != 0 {
        return Err(format!(
            "subclusters allocated in an unallocated cluster (bitmap {bitmap:#018x})"
        ));
    }
    Ok(match (allocated, alloc, zero) {
        (true, u32::MAX, _) => Cluster::Normal(host),
        (_, 0, 0) => Cluster::Unallocated,
        (_, 0, u32::MAX) => Cluster::Zero,
        _ => Cluster::Sub {
            host: allocated.then_some(host),
            alloc,
            zero,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Geometry = Geometry {
        cluster_bits: 16,
        extended: false,
        external: false,
        version: 3,
    };

    #[test]
    fn standard_entries() {
        assert_eq!(decode_l2(&G, 0, 0), Ok(Cluster::Unallocated));
        assert_eq!(
            decode_l2(&G, COPIED | 0x30000, 0),
            Ok(Cluster::Normal(0x30000))
        );
        assert_eq!(decode_l2(&G, 1, 0), Ok(Cluster::Zero));
        assert_eq!(decode_l2(&G, 0x30000 | 1, 0), Ok(Cluster::Zero));
        assert!(decode_l2(&G, 0x30200, 0).is_err());
        let v2 = Geometry { version: 2, ..G };
        assert!(decode_l2(&v2, 1, 0).is_err());
    }

    #[test]
    fn compressed_descriptor() {
        // 64 KiB clusters: shift 54, 8 bits of sector count.
        let e = COMPRESSED | (3u64 << 54) | 0x12345;
        assert_eq!(
            decode_l2(&G, e, 0),
            Ok(Cluster::Compressed {
                offset: 0x12345,
                len: 4 * 512 - 0x145
            })
        );
    }

    #[test]
    fn extended_entries() {
        let g = Geometry {
            extended: true,
            ..G
        };
        assert_eq!(decode_l2(&g, 0, 0), Ok(Cluster::Unallocated));
        assert_eq!(decode_l2(&g, 0, 0xffff_ffff << 32), Ok(Cluster::Zero));
        assert!(decode_l2(&g, 0, 1).is_err());
        assert!(decode_l2(&g, 0x10000, 0x1_0000_0001).is_err());
        assert_eq!(
            decode_l2(&g, 0x10000, 0x2_0000_0001),
            Ok(Cluster::Sub {
                host: Some(0x10000),
                alloc: 1,
                zero: 2
            })
        );
    }
}
