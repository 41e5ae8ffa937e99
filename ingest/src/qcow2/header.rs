//! Pure parsing (and, for the writer, building) of the qcow2 header and its header
//! extensions, on byte slices, with no I/O. All fields are big-endian.

/// The magic at offset 0: "QFI\xfb".
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Length of a version 2 header (and of the fields common to both versions).
pub const V2_HEADER_LEN: usize = 72;
/// Smallest length of a version 3 header.
pub const V3_HEADER_MIN: usize = 104;
/// Smallest cluster_bits accepted (512-byte clusters).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster_bits accepted (2 MiB clusters, qemu's limit).
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Largest backing file name, in bytes (the spec's limit).
pub const MAX_BACKING_NAME: u32 = 1023;

/// Incompatible feature bit 0: refcounts may be inconsistent (harmless for reading).
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit 1: the image is marked corrupt.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit 2: guest data lives in an external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature bit 3: compressed clusters use `compression_type`.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature bit 4: extended L2 entries (32 subclusters per cluster).
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Every incompatible feature bit this reader understands.
pub const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

/// Header extension: end of the extension area.
const EXT_END: u32 = 0;
/// Header extension: backing file format name.
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension: feature name table.
const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
/// Header extension: external data file name.
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// How compressed clusters are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Raw deflate (no zlib header), qemu's "zlib".
    Deflate,
    /// Zstandard frames.
    Zstd,
}

pub use crate::error::ParseError;

/// A parsed qcow2 header whose fixed fields were checked for internal consistency (not
/// yet against the file's length).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Offset of the backing file name, 0 without a backing file.
    pub backing_file_offset: u64,
    /// Length of the backing file name (at most [`MAX_BACKING_NAME`]).
    pub backing_file_size: u32,
    /// log2 of the cluster size, in [`MIN_CLUSTER_BITS`]..=[`MAX_CLUSTER_BITS`].
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// 0 for none, 1 for AES, 2 for LUKS.
    pub crypt_method: u32,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// Offset of the active L1 table.
    pub l1_table_offset: u64,
    /// Offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters of the refcount table.
    pub refcount_table_clusters: u32,
    /// Incompatible feature bits (0 for version 2).
    pub incompatible: u64,
    /// Compatible feature bits (0 for version 2).
    pub compatible: u64,
    /// Autoclear feature bits (0 for version 2).
    pub autoclear: u64,
    /// log2 of the refcount width in bits (4 for version 2), at most 6.
    pub refcount_order: u32,
    /// Length of the header; header extensions follow it.
    pub header_length: u32,
    /// The compression of compressed clusters, from `compression_type`.
    pub compression: Compression,
}

impl Header {
    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    /// True when the image uses extended L2 entries (subclusters).
    pub fn extended_l2(&self) -> bool {
        self.incompatible & INCOMPAT_EXTL2 != 0
    }

    /// Bytes per L2 entry (8, or 16 with extended L2 entries).
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2() {
            16
        } else {
            8
        }
    }

    /// L2 entries per L2 table (one cluster).
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_size()
    }

    /// Where the header extension area ends: the backing file name or the end of the
    /// first cluster.
    pub fn extensions_end(&self) -> u64 {
        if self.backing_file_offset != 0 {
            self.backing_file_offset.min(self.cluster_size())
        } else {
            self.cluster_size()
        }
    }
}

/// Big-endian u32 at `at`, or `None` when `b` is too short.
pub fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(s.try_into().ok()?))
}

/// Big-endian u64 at `at`, or `None` when `b` is too short.
pub fn be64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(s.try_into().ok()?))
}

fn short(what: &str) -> ParseError {
    ParseError::Corrupt(format!("file too short to hold the {what}"))
}

/// Parses the fixed header at the start of `b` (which holds at least the header; pass the
/// whole first cluster when available). Checks magic, version, cluster size, refcount
/// order, header length and the compression type; feature bits are left to the caller.
pub fn parse_header(b: &[u8]) -> Result<Header, ParseError> {
    if b.len() < 8 {
        return Err(short("qcow2 header"));
    }
    if b.get(0..4) != Some(&MAGIC[..]) {
        return Err(ParseError::Corrupt("no qcow2 magic \"QFI\\xfb\"".into()));
    }
    let version = be32(b, 4).ok_or_else(|| short("qcow2 header"))?;
    if version != 2 && version != 3 {
        return Err(ParseError::Unimplemented(format!(
            "qcow2 version {version} (only versions 2 and 3 are read)"
        )));
    }
    let f32 = |at| be32(b, at).ok_or_else(|| short("qcow2 header"));
    let f64 = |at| be64(b, at).ok_or_else(|| short("qcow2 header"));
    let cluster_bits = f32(20)?;
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(ParseError::Corrupt(format!(
            "cluster_bits {cluster_bits} out of range {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"
        )));
    }
    let mut h = Header {
        version,
        backing_file_offset: f64(8)?,
        backing_file_size: f32(16)?,
        cluster_bits,
        size: f64(24)?,
        crypt_method: f32(32)?,
        l1_size: f32(36)?,
        l1_table_offset: f64(40)?,
        refcount_table_offset: f64(48)?,
        refcount_table_clusters: f32(56)?,
        incompatible: 0,
        compatible: 0,
        autoclear: 0,
        refcount_order: 4,
        header_length: V2_HEADER_LEN as u32,
        compression: Compression::Deflate,
    };
    if version == 3 {
        h.incompatible = f64(72)?;
        h.compatible = f64(80)?;
        h.autoclear = f64(88)?;
        h.refcount_order = f32(96)?;
        h.header_length = f32(100)?;
        if h.refcount_order > 6 {
            return Err(ParseError::Corrupt(format!(
                "refcount_order {} is larger than 6",
                h.refcount_order
            )));
        }
        let hl = u64::from(h.header_length);
        if hl < V3_HEADER_MIN as u64 || !hl.is_multiple_of(8) || hl > h.cluster_size() {
            return Err(ParseError::Corrupt(format!(
                "header_length {hl} is not a multiple of 8 between {V3_HEADER_MIN} and the \
                 cluster size {}",
                h.cluster_size()
            )));
        }
        if (b.len() as u64) < hl {
            return Err(short("qcow2 header"));
        }
        let compression_type = if h.header_length > 104 {
            b.get(104).copied().unwrap_or(0)
        } else {
            0
        };
        let flagged = h.incompatible & INCOMPAT_COMPRESSION != 0;
        h.compression = match (flagged, compression_type) {
            (false, 0) => Compression::Deflate,
            (true, 1) => Compression::Zstd,
            (false, t) => {
                return Err(ParseError::Corrupt(format!(
                    "compression_type {t} without the compression type feature bit"
                )))
            }
            (true, 0) => {
                return Err(ParseError::Corrupt(
                    "compression type feature bit set but compression_type is 0".into(),
                ))
            }
            (true, t) => {
                return Err(ParseError::Unimplemented(format!(
                    "unknown compression type {t}"
                )))
            }
        };
    }
    if h.backing_file_offset != 0 {
        if h.backing_file_size > MAX_BACKING_NAME {
            return Err(ParseError::Corrupt(format!(
                "backing file name of {} bytes (at most {MAX_BACKING_NAME})",
                h.backing_file_size
            )));
        }
        let end = h
            .backing_file_offset
            .checked_add(u64::from(h.backing_file_size));
        if h.backing_file_offset < u64::from(h.header_length)
            || end.is_none_or(|e| e > h.cluster_size())
        {
            return Err(ParseError::Corrupt(format!(
                "backing file name at {} ({} bytes) is not inside the header cluster",
                h.backing_file_offset, h.backing_file_size
            )));
        }
    }
    Ok(h)
}

/// One entry of the feature name table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureName {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub kind: u8,
    /// Bit number in that feature bitmap.
    pub bit: u8,
    /// The feature's name.
    pub name: String,
}

/// The header extensions vmvault uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    /// Backing file format name ("qcow2", "raw", ...).
    pub backing_format: Option<String>,
    /// External data file name.
    pub data_file: Option<String>,
    /// The feature name table.
    pub feature_names: Vec<FeatureName>,
}

fn ext_string(data: &[u8], what: &str) -> Result<String, ParseError> {
    String::from_utf8(data.to_vec())
        .map_err(|_| ParseError::Corrupt(format!("{what} is not valid UTF-8")))
}

/// Parses the header extensions following the header in the first cluster `b`, up to
/// [`Header::extensions_end`] (or the end of `b`). Unknown extensions are skipped.
pub fn parse_extensions(b: &[u8], h: &Header) -> Result<Extensions, ParseError> {
    let mut ext = Extensions::default();
    let end = usize::try_from(h.extensions_end().min(b.len() as u64)).unwrap_or(b.len());
    let mut pos = h.header_length as usize;
    while pos.checked_add(8).is_some_and(|p| p <= end) {
        let (Some(kind), Some(len)) = (be32(b, pos), be32(b, pos + 4)) else {
            break;
        };
        if kind == EXT_END {
            break;
        }
        let start = pos + 8;
        let data_end = start
            .checked_add(len as usize)
            .filter(|e| *e <= end)
            .ok_or_else(|| {
                ParseError::Corrupt(format!(
                    "header extension {kind:#010x} at {pos} of {len} bytes runs past the \
                     header area ({end} bytes)"
                ))
            })?;
        let data = b.get(start..data_end).unwrap_or(&[]);
        match kind {
            EXT_BACKING_FORMAT => {
                ext.backing_format = Some(ext_string(data, "backing file format name")?)
            }
            EXT_DATA_FILE => ext.data_file = Some(ext_string(data, "external data file name")?),
            EXT_FEATURE_NAMES => {
                for e in data.chunks_exact(48) {
                    let raw = e.get(2..).unwrap_or(&[]);
                    let n = raw.iter().position(|c| *c == 0).unwrap_or(raw.len());
                    ext.feature_names.push(FeatureName {
                        kind: e.first().copied().unwrap_or(0),
                        bit: e.get(1).copied().unwrap_or(0),
                        name: String::from_utf8_lossy(raw.get(..n).unwrap_or(&[])).into_owned(),
                    });
                }
            }
            _ => {}
        }
        pos = data_end.checked_next_multiple_of(8).unwrap_or(usize::MAX);
    }
    Ok(ext)
}

/// The backing file name stored in the first cluster `b`, if the header names one.
pub fn backing_name(b: &[u8], h: &Header) -> Result<Option<String>, ParseError> {
    if h.backing_file_offset == 0 {
        return Ok(None);
    }
    let start = h.backing_file_offset as usize;
    let bytes = start
        .checked_add(h.backing_file_size as usize)
        .and_then(|end| b.get(start..end))
        .ok_or_else(|| short("backing file name"))?;
    if bytes.is_empty() {
        return Ok(None);
    }
    ext_string(bytes, "backing file name").map(Some)
}

/// Describes unknown incompatible feature bits, with their names from the table when the
/// image gives them.
pub fn describe_unknown(bits: u64, names: &[FeatureName]) -> String {
    let mut parts = Vec::new();
    for bit in 0..64u8 {
        if bits & (1u64 << bit) == 0 {
            continue;
        }
        match names.iter().find(|f| f.kind == 0 && f.bit == bit) {
            Some(f) => parts.push(format!("bit {bit} ({:?})", f.name)),
            None => parts.push(format!("bit {bit}")),
        }
    }
    parts.join(", ")
}

/// Fields of a version 3 header for the writer.
#[derive(Clone, Copy, Debug)]
pub struct NewHeader {
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size.
    pub size: u64,
    /// Entries of the L1 table.
    pub l1_size: u32,
    /// Offset of the L1 table.
    pub l1_table_offset: u64,
    /// Offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters of the refcount table.
    pub refcount_table_clusters: u32,
}

/// Length of the header [`build_header`] writes (with the compression type byte padded).
pub const WRITTEN_HEADER_LEN: usize = 112;

/// Builds a version 3 header (16-bit refcounts, no features, deflate compression type)
/// followed by an empty header extension area: [`WRITTEN_HEADER_LEN`] + 8 bytes.
pub fn build_header(n: &NewHeader) -> Vec<u8> {
    let mut b = vec![0u8; WRITTEN_HEADER_LEN + 8];
    let put32 = |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    let put64 = |b: &mut [u8], at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_be_bytes());
    b[0..4].copy_from_slice(&MAGIC);
    put32(&mut b, 4, 3);
    put32(&mut b, 20, n.cluster_bits);
    put64(&mut b, 24, n.size);
    put32(&mut b, 36, n.l1_size);
    put64(&mut b, 40, n.l1_table_offset);
    put64(&mut b, 48, n.refcount_table_offset);
    put32(&mut b, 56, n.refcount_table_clusters);
    put32(&mut b, 96, 4);
    put32(&mut b, 100, WRITTEN_HEADER_LEN as u32);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_header_parses_back() {
        let n = NewHeader {
            cluster_bits: 16,
            size: 5 << 30,
            l1_size: 10,
            l1_table_offset: 65536,
            refcount_table_offset: 131072,
            refcount_table_clusters: 1,
        };
        let b = build_header(&n);
        let h = parse_header(&b).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.size, 5 << 30);
        assert_eq!(h.l1_size, 10);
        assert_eq!(h.compression, Compression::Deflate);
        assert_eq!(parse_extensions(&b, &h).unwrap(), Extensions::default());
    }

    #[test]
    fn rejects_bad_cluster_bits_and_short_input() {
        let mut b = build_header(&NewHeader {
            cluster_bits: 16,
            size: 0,
            l1_size: 0,
            l1_table_offset: 0,
            refcount_table_offset: 0,
            refcount_table_clusters: 0,
        });
        assert!(parse_header(&b[..50]).is_err());
        b[23] = 30;
        assert!(matches!(parse_header(&b), Err(ParseError::Corrupt(_))));
    }
}
