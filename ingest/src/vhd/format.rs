//! Pure parsing and building of the VHD on-disk structures (footer, dynamic disk header),
//! on byte slices, with no I/O. All fields are big-endian.

/// Size of the hard disk footer (and of its copy at offset 0 of dynamic disks).
pub const FOOTER_SIZE: usize = 512;
/// Size of the dynamic disk header.
pub const HEADER_SIZE: usize = 1024;
/// The footer's cookie.
pub const FOOTER_COOKIE: &[u8; 8] = b"conectix";
/// The dynamic disk header's cookie.
pub const HEADER_COOKIE: &[u8; 8] = b"cxsparse";
/// A BAT entry for a block that is not allocated.
pub const BAT_UNUSED: u32 = 0xFFFF_FFFF;
/// Bytes per sector: VHD addresses everything in 512-byte sectors.
pub const SECTOR: u64 = 512;
/// The largest CHS geometry a footer can hold (65535 × 16 × 255 sectors); qemu (and
/// Windows) take the footer's current size for disks with this geometry.
pub const MAX_GEOMETRY_SECTORS: u64 = 65535 * 16 * 255;

/// Offset of the checksum field in the footer.
const FOOTER_CHECKSUM_AT: usize = 64;
/// Offset of the checksum field in the dynamic disk header.
const HEADER_CHECKSUM_AT: usize = 36;

/// The disk types a footer can declare that vmvault reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskType {
    /// Type 2: the data precedes the footer, sector for sector.
    Fixed,
    /// Type 3: blocks allocated on demand through a BAT.
    Dynamic,
    /// Type 4: a dynamic disk whose unwritten sectors come from a parent disk.
    Differencing,
}

/// A parsed hard disk footer whose cookie and checksum were verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footer {
    /// Offset of the dynamic disk header (meaningless for fixed disks).
    pub data_offset: u64,
    /// The application that created the image ("qemu", "win ", "vpc ", ...).
    pub creator_app: [u8; 4],
    /// The disk's size in bytes as the footer states it.
    pub current_size: u64,
    /// Cylinders of the CHS geometry.
    pub cylinders: u16,
    /// Heads of the CHS geometry.
    pub heads: u8,
    /// Sectors per track of the CHS geometry.
    pub sectors_per_track: u8,
    /// Fixed, dynamic or differencing.
    pub disk_type: DiskType,
    /// The disk's unique id; a differencing child records its parent's.
    pub unique_id: [u8; 16],
}

pub use crate::error::ParseError;

fn be16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_be_bytes(a)
}

/// Big-endian u32 at `at`; the caller guarantees `b.len() >= at + 4`.
pub fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// The VHD checksum of `bytes`: the one's complement of the sum of all bytes, with the
/// four bytes at `checksum_at` counted as zero.
pub fn checksum(bytes: &[u8], checksum_at: usize) -> u32 {
    let sum = bytes.iter().enumerate().fold(0u32, |acc, (i, &b)| {
        if (checksum_at..checksum_at + 4).contains(&i) {
            acc
        } else {
            acc.wrapping_add(u32::from(b))
        }
    });
    !sum
}

/// True when `bytes` starts with the footer cookie.
pub fn has_footer_cookie(bytes: &[u8]) -> bool {
    bytes.starts_with(FOOTER_COOKIE)
}

/// Parses a footer. `bytes` is the 512-byte footer, or the 511 bytes some old writers
/// leave (the missing last reserved byte counts as zero). Verifies cookie and checksum.
pub fn parse_footer(bytes: &[u8]) -> Result<Footer, ParseError> {
    if bytes.len() != FOOTER_SIZE && bytes.len() != FOOTER_SIZE - 1 {
        return Err(ParseError::Corrupt(format!(
            "footer of {} bytes (expected 512)",
            bytes.len()
        )));
    }
    if !has_footer_cookie(bytes) {
        return Err(ParseError::Corrupt(
            "no \"conectix\" cookie at the start of the footer".into(),
        ));
    }
    let stored = be32(bytes, FOOTER_CHECKSUM_AT);
    let computed = checksum(bytes, FOOTER_CHECKSUM_AT);
    if stored != computed {
        return Err(ParseError::Corrupt(format!(
            "footer checksum {stored:#010x} does not match its contents ({computed:#010x})"
        )));
    }
    let disk_type = match be32(bytes, 60) {
        2 => DiskType::Fixed,
        3 => DiskType::Dynamic,
        4 => DiskType::Differencing,
        t @ (0 | 1 | 5 | 6) => {
            return Err(ParseError::Unimplemented(format!(
                "disk type {t} (none or a deprecated type) is not a readable disk"
            )))
        }
        t => return Err(ParseError::Corrupt(format!("unknown disk type {t}"))),
    };
    let mut creator_app = [0u8; 4];
    creator_app.copy_from_slice(&bytes[28..32]);
    let mut unique_id = [0u8; 16];
    unique_id.copy_from_slice(&bytes[68..84]);
    Ok(Footer {
        data_offset: be64(bytes, 16),
        creator_app,
        current_size: be64(bytes, 48),
        cylinders: be16(bytes, 56),
        heads: bytes[58],
        sectors_per_track: bytes[59],
        disk_type,
        unique_id,
    })
}

impl Footer {
    /// The CHS geometry's capacity in sectors.
    pub fn chs_sectors(&self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors_per_track)
    }

    /// The logical disk size in bytes, as qemu (`qemu-img info`) computes it: the footer's
    /// current size (rounded down to whole sectors) for images from creators known to
    /// use it (Hyper-V "win ", qemu with force_size "qem2", Disk2vhd "d2v ", XenServer
    /// "tap\0", XenConverter "CTXS") or with the maximum CHS geometry; the CHS geometry's
    /// capacity otherwise (Virtual PC, plain qemu: the visible size is the geometry's).
    ///
    /// Where qemu would take a geometry that is empty or larger than the current size (a
    /// damaged or odd footer), the current size is used instead, so that a backup never
    /// loses sectors the footer says exist nor reads past them.
    pub fn disk_size(&self) -> u64 {
        let current = self.current_size / SECTOR * SECTOR;
        let trusts_current = matches!(
            &self.creator_app,
            b"win " | b"qem2" | b"d2v " | b"CTXS" | b"tap\0"
        );
        let chs = self.chs_sectors();
        if trusts_current || chs == MAX_GEOMETRY_SECTORS || chs == 0 {
            return current;
        }
        let chs_bytes = chs * SECTOR;
        if chs_bytes > current {
            current
        } else {
            chs_bytes
        }
    }
}

/// One parent locator entry of a dynamic disk header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentLocator {
    /// Platform code ("W2ru", "W2ku", "MacX", ...).
    pub platform: [u8; 4],
    /// Length in bytes of the locator's data.
    pub data_length: u32,
    /// Offset of the locator's data in the file.
    pub data_offset: u64,
}

/// A parsed dynamic disk header whose cookie and checksum were verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynamicHeader {
    /// Offset of the block allocation table.
    pub table_offset: u64,
    /// Entries of the BAT.
    pub max_table_entries: u32,
    /// Bytes per block: a power of two, at least one sector.
    pub block_size: u32,
    /// The parent's unique id (differencing disks).
    pub parent_unique_id: [u8; 16],
    /// The parent's file name (UTF-16BE in the header), possibly empty.
    pub parent_name: String,
    /// The non-empty parent locator entries.
    pub locators: Vec<ParentLocator>,
}

/// Largest block size accepted (the spec's default is 2 MiB; Hyper-V also uses 512 KiB).
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;

/// Parses a 1024-byte dynamic disk header, verifying cookie, checksum and block size.
pub fn parse_dynamic_header(bytes: &[u8]) -> Result<DynamicHeader, ParseError> {
    if bytes.len() != HEADER_SIZE {
        return Err(ParseError::Corrupt(format!(
            "dynamic disk header of {} bytes (expected 1024)",
            bytes.len()
        )));
    }
    if !bytes.starts_with(HEADER_COOKIE) {
        return Err(ParseError::Corrupt(
            "no \"cxsparse\" cookie at the start of the dynamic disk header".into(),
        ));
    }
    let stored = be32(bytes, HEADER_CHECKSUM_AT);
    let computed = checksum(bytes, HEADER_CHECKSUM_AT);
    if stored != computed {
        return Err(ParseError::Corrupt(format!(
            "dynamic disk header checksum {stored:#010x} does not match its contents \
             ({computed:#010x})"
        )));
    }
    let block_size = be32(bytes, 32);
    if !block_size.is_power_of_two() || u64::from(block_size) < SECTOR {
        return Err(ParseError::Corrupt(format!(
            "block size {block_size} is not a power of two of at least 512"
        )));
    }
    if block_size > MAX_BLOCK_SIZE {
        return Err(ParseError::Unimplemented(format!(
            "block size {block_size} is larger than the {MAX_BLOCK_SIZE} bytes vmvault reads"
        )));
    }
    let mut parent_unique_id = [0u8; 16];
    parent_unique_id.copy_from_slice(&bytes[40..56]);
    let name_units: Vec<u16> = bytes[64..576]
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let parent_name = String::from_utf16_lossy(&name_units);
    let locators = bytes[576..768]
        .chunks_exact(24)
        .filter_map(|e| {
            let mut platform = [0u8; 4];
            platform.copy_from_slice(&e[0..4]);
            let data_length = be32(e, 8);
            (platform != [0; 4] && data_length > 0).then(|| ParentLocator {
                platform,
                data_length,
                data_offset: be64(e, 16),
            })
        })
        .collect();
    Ok(DynamicHeader {
        table_offset: be64(bytes, 16),
        max_table_entries: be32(bytes, 28),
        block_size,
        parent_unique_id,
        parent_name,
        locators,
    })
}

/// Bytes of the sector bitmap that precedes each block's data: one bit per sector,
/// padded to whole sectors.
pub fn bitmap_size(block_size: u32) -> u64 {
    let bits = u64::from(block_size) / SECTOR;
    bits.div_ceil(8).div_ceil(SECTOR) * SECTOR
}

/// True when sector `i` of a block is marked present in its `bitmap` (the first sector is
/// the most significant bit of the first byte). Bits past the bitmap read as absent.
pub fn bitmap_bit(bitmap: &[u8], i: u64) -> bool {
    usize::try_from(i / 8)
        .ok()
        .and_then(|at| bitmap.get(at))
        .is_some_and(|b| (b >> (7 - (i % 8))) & 1 == 1)
}

/// Fields of a footer that [`build_footer`] writes.
#[derive(Clone, Debug)]
pub struct FooterFields {
    /// Offset of the dynamic header, or `u64::MAX` for a fixed disk.
    pub data_offset: u64,
    /// Seconds since 2000-01-01 00:00:00 UTC.
    pub timestamp: u32,
    /// Disk size in bytes (a multiple of 512).
    pub size: u64,
    /// 2 fixed, 3 dynamic.
    pub disk_type: u32,
    /// The disk's unique id.
    pub unique_id: [u8; 16],
}

/// Builds a 512-byte footer with the creator fields qemu writes for `force_size=on`
/// ("qem2", version 5.3, "Wi2k") and the maximum CHS geometry, so that qemu, Hyper-V and
/// VirtualBox all take `size` (the current size) as the disk's size.
pub fn build_footer(f: &FooterFields) -> [u8; FOOTER_SIZE] {
    let mut b = [0u8; FOOTER_SIZE];
    b[0..8].copy_from_slice(FOOTER_COOKIE);
    b[8..12].copy_from_slice(&2u32.to_be_bytes());
    b[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    b[16..24].copy_from_slice(&f.data_offset.to_be_bytes());
    b[24..28].copy_from_slice(&f.timestamp.to_be_bytes());
    b[28..32].copy_from_slice(b"qem2");
    b[32..36].copy_from_slice(&0x0005_0003u32.to_be_bytes());
    b[36..40].copy_from_slice(b"Wi2k");
    b[40..48].copy_from_slice(&f.size.to_be_bytes());
    b[48..56].copy_from_slice(&f.size.to_be_bytes());
    b[56..58].copy_from_slice(&65535u16.to_be_bytes());
    b[58] = 16;
    b[59] = 255;
    b[60..64].copy_from_slice(&f.disk_type.to_be_bytes());
    b[68..84].copy_from_slice(&f.unique_id);
    let sum = checksum(&b, FOOTER_CHECKSUM_AT);
    b[FOOTER_CHECKSUM_AT..FOOTER_CHECKSUM_AT + 4].copy_from_slice(&sum.to_be_bytes());
    b
}

/// Builds a 1024-byte dynamic disk header with no parent.
pub fn build_dynamic_header(table_offset: u64, entries: u32, block_size: u32) -> Vec<u8> {
    let mut b = vec![0u8; HEADER_SIZE];
    b[0..8].copy_from_slice(HEADER_COOKIE);
    b[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
    b[16..24].copy_from_slice(&table_offset.to_be_bytes());
    b[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    b[28..32].copy_from_slice(&entries.to_be_bytes());
    b[32..36].copy_from_slice(&block_size.to_be_bytes());
    let sum = checksum(&b, HEADER_CHECKSUM_AT);
    b[HEADER_CHECKSUM_AT..HEADER_CHECKSUM_AT + 4].copy_from_slice(&sum.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn footer(app: &[u8; 4], size: u64, chs: (u16, u8, u8)) -> Vec<u8> {
        let mut b = build_footer(&FooterFields {
            data_offset: 512,
            timestamp: 0,
            size,
            disk_type: 3,
            unique_id: [7; 16],
        })
        .to_vec();
        b[28..32].copy_from_slice(app);
        b[56..58].copy_from_slice(&chs.0.to_be_bytes());
        b[58] = chs.1;
        b[59] = chs.2;
        let sum = checksum(&b, 64);
        b[64..68].copy_from_slice(&sum.to_be_bytes());
        b
    }

    #[test]
    fn built_footer_parses_back() {
        let b = footer(b"qem2", 4 << 20, (65535, 16, 255));
        let f = parse_footer(&b).unwrap();
        assert_eq!(f.disk_type, DiskType::Dynamic);
        assert_eq!(f.disk_size(), 4 << 20);
        assert_eq!(f.unique_id, [7; 16]);
        // The 511-byte variant: the last reserved byte is missing.
        assert!(parse_footer(&b[..511]).is_ok());
    }

    #[test]
    fn size_follows_qemu_rules() {
        // qemu's own (non force_size) images: the geometry's capacity.
        let f = parse_footer(&footer(b"qemu", 4212736, (121, 4, 17))).unwrap();
        assert_eq!(f.disk_size(), 121 * 4 * 17 * 512);
        // Hyper-V: the current size, whatever the geometry.
        let f = parse_footer(&footer(b"win ", 4 << 20, (121, 4, 17))).unwrap();
        assert_eq!(f.disk_size(), 4 << 20);
        // A geometry larger than the current size is not believed.
        let f = parse_footer(&footer(b"vpc ", 1 << 20, (1000, 16, 63))).unwrap();
        assert_eq!(f.disk_size(), 1 << 20);
    }

    #[test]
    fn damaged_footers_are_refused() {
        let mut b = footer(b"qemu", 1 << 20, (30, 4, 17));
        b[100] ^= 1;
        assert!(matches!(parse_footer(&b), Err(ParseError::Corrupt(_))));
        assert!(parse_footer(&b[..100]).is_err());
        let mut b = footer(b"qemu", 1 << 20, (30, 4, 17));
        b[63] = 9;
        let sum = checksum(&b, 64);
        b[64..68].copy_from_slice(&sum.to_be_bytes());
        assert!(matches!(parse_footer(&b), Err(ParseError::Corrupt(_))));
    }

    #[test]
    fn dynamic_header_round_trips_and_checks_block_size() {
        let h = build_dynamic_header(1536, 3, 2 << 20);
        let p = parse_dynamic_header(&h).unwrap();
        assert_eq!((p.table_offset, p.max_table_entries), (1536, 3));
        assert!(p.locators.is_empty());
        let h = build_dynamic_header(1536, 3, 3000);
        assert!(parse_dynamic_header(&h).is_err());
    }

    #[test]
    fn bitmap_geometry() {
        assert_eq!(bitmap_size(2 << 20), 512);
        assert_eq!(bitmap_size(512), 512);
        assert_eq!(bitmap_size(32 << 20), 8192);
        assert!(bitmap_bit(&[0x80], 0));
        assert!(!bitmap_bit(&[0x80], 1));
        assert!(bitmap_bit(&[0x01], 7));
        assert!(!bitmap_bit(&[0xff], 8));
    }
}
