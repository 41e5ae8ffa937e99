//! Pack layout (FORMAT.md section 6).
//!
//! ```text
//! 0       7   magic "VMVPACK"
//! 7       1   version = 1 or 2
//! 8       32  salt
//! 40      ..  blobs: ciphertext || tag(16), nonce = u64le(offset) || 0u32,
//!             aad = chunk id (one-chunk blob) or empty (several chunks)
//! H       L   header ciphertext || tag, nonce = ff×12, aad = bytes 0..40
//! end-4   4   L (u32)
//! ```
//! Header plaintext: u32 count, then `count` × [`PackEntry`] (52 bytes each in version 1,
//! 60 in version 2), one per chunk.

use super::bytes::Reader;
use super::DecodeError;
use vmvault_chunker::{ChunkId, MAX_CHUNK};

/// Magic at the start of every pack, before its version byte.
pub const PACK_MAGIC: &[u8; 7] = b"VMVPACK";
/// The pack (and index) versions this code reads and writes.
pub const PACK_VERSIONS: std::ops::RangeInclusive<u8> = 1..=2;
/// Length of the plaintext prefix (magic, version, salt); the first blob starts here.
pub const PACK_PREFIX_LEN: u64 = 40;
/// Length of the trailing header-length field.
pub const PACK_TRAILER_LEN: u64 = 4;
/// Encoded length of one entry in a version 1 pack or index.
pub const ENTRY_LEN_V1: usize = 52;
/// Encoded length of one entry in a version 2 pack or index.
pub const ENTRY_LEN_V2: usize = 60;
/// The largest blob plaintext a reader accepts, and so the most a reader decompresses.
pub const MAX_BLOB_PLAIN: u32 = 16 << 20;

/// Encoded length of one entry of a pack or index of `version` (1 or 2).
pub fn entry_len(version: u8) -> usize {
    if version >= 2 {
        ENTRY_LEN_V2
    } else {
        ENTRY_LEN_V1
    }
}
/// Largest header a reader accepts (about 640 000 entries).
pub const MAX_HEADER_LEN: u32 = 32 << 20;

/// Blob kind: disk data.
pub const KIND_DATA: u8 = 0;
/// Blob kind: manifest (tree).
pub const KIND_TREE: u8 = 1;
/// Compression: stored as is.
pub const COMPRESSION_NONE: u8 = 0;
/// Compression: one zstd frame.
pub const COMPRESSION_ZSTD: u8 = 1;

/// Where one chunk lives inside its pack and how to decode it: the blob that holds it
/// and its place in the blob's plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// The chunk id (keyed BLAKE3 of the chunk's plaintext).
    pub id: ChunkId,
    /// Byte offset of the blob in the pack.
    pub offset: u64,
    /// Stored length of the blob, tag included.
    pub stored_len: u32,
    /// The chunk's length.
    pub raw_len: u32,
    /// [`KIND_DATA`] or [`KIND_TREE`].
    pub kind: u8,
    /// The blob's compression: [`COMPRESSION_NONE`] or [`COMPRESSION_ZSTD`].
    pub compression: u8,
    /// Offset of the chunk within the blob's plaintext (0 in version 1).
    pub chunk_offset: u32,
    /// Length of the blob's plaintext (the raw length in version 1).
    pub blob_len: u32,
}

impl PackEntry {
    /// An entry for a blob that holds this one chunk.
    pub fn single(
        id: ChunkId,
        offset: u64,
        stored_len: u32,
        raw_len: u32,
        kind: u8,
        compression: u8,
    ) -> Self {
        PackEntry {
            id,
            offset,
            stored_len,
            raw_len,
            kind,
            compression,
            chunk_offset: 0,
            blob_len: raw_len,
        }
    }

    /// True when the blob holds this chunk alone (always so in version 1 packs); such a
    /// blob is sealed with the chunk id as associated data.
    pub fn is_single(&self) -> bool {
        self.chunk_offset == 0 && self.raw_len == self.blob_len
    }

    /// The associated data the blob is sealed with (FORMAT.md section 6).
    pub fn aad(&self) -> &[u8] {
        if self.is_single() {
            &self.id.0
        } else {
            &[]
        }
    }

    /// The chunk's byte range within the blob's plaintext.
    pub fn chunk_range(&self) -> std::ops::Range<usize> {
        self.chunk_offset as usize..self.chunk_offset as usize + self.raw_len as usize
    }

    /// Appends the encoding for a pack or index of `version`: 52 bytes (version 1, which
    /// can only describe one-chunk blobs) or 60 bytes (version 2).
    pub fn encode_into(&self, out: &mut Vec<u8>, version: u8) {
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.push(self.kind);
        out.push(self.compression);
        out.extend_from_slice(&[0, 0]);
        if version >= 2 {
            out.extend_from_slice(&self.chunk_offset.to_le_bytes());
            out.extend_from_slice(&self.blob_len.to_le_bytes());
        }
    }

    pub(crate) fn decode_from(r: &mut Reader<'_>, version: u8) -> Result<Self, DecodeError> {
        let mut e = PackEntry {
            id: ChunkId(r.array32()?),
            offset: r.u64()?,
            stored_len: r.u32()?,
            raw_len: r.u32()?,
            kind: r.u8()?,
            compression: r.u8()?,
            chunk_offset: 0,
            blob_len: 0,
        };
        if r.u16()? != 0 {
            return Err(DecodeError::new(format!(
                "blob {} has non-zero reserved bytes",
                e.id
            )));
        }
        if version >= 2 {
            e.chunk_offset = r.u32()?;
            e.blob_len = r.u32()?;
        } else {
            e.blob_len = e.raw_len;
        }
        e.check()?;
        Ok(e)
    }

    /// Per-entry sanity checks independent of the pack it is in.
    fn check(&self) -> Result<(), DecodeError> {
        if self.kind > KIND_TREE {
            return Err(DecodeError::new(format!("unknown blob kind {}", self.kind)));
        }
        if self.compression > COMPRESSION_ZSTD {
            return Err(DecodeError::new(format!(
                "unknown compression {}",
                self.compression
            )));
        }
        if self.stored_len < 16 || self.stored_len > MAX_CHUNK + (1 << 20) {
            return Err(DecodeError::new(format!(
                "blob {} has impossible stored length {}",
                self.id, self.stored_len
            )));
        }
        if self.raw_len > MAX_CHUNK {
            return Err(DecodeError::new(format!(
                "blob {} claims {} bytes, more than the 16 MiB limit",
                self.id, self.raw_len
            )));
        }
        if self.blob_len > MAX_BLOB_PLAIN {
            return Err(DecodeError::new(format!(
                "blob of chunk {} claims {} bytes of plaintext, more than the 16 MiB limit",
                self.id, self.blob_len
            )));
        }
        if u64::from(self.chunk_offset) + u64::from(self.raw_len) > u64::from(self.blob_len) {
            return Err(DecodeError::new(format!(
                "chunk {} lies outside its blob's plaintext",
                self.id
            )));
        }
        if self.compression == COMPRESSION_NONE
            && u64::from(self.blob_len) + 16 != u64::from(self.stored_len)
        {
            return Err(DecodeError::new(format!(
                "uncompressed blob {} has inconsistent lengths",
                self.id
            )));
        }
        if self.offset < PACK_PREFIX_LEN {
            return Err(DecodeError::new("blob overlaps the pack prefix"));
        }
        // So that `end()` cannot overflow (and wrap below a pack's size in release builds).
        if self
            .offset
            .checked_add(u64::from(self.stored_len))
            .is_none()
        {
            return Err(DecodeError::new(format!(
                "blob {} ends past the largest possible offset",
                self.id
            )));
        }
        Ok(())
    }

    /// One past the blob's last byte.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.stored_len)
    }

    /// True when `other` describes the same blob (offset, stored length, kind,
    /// compression and plaintext length all agree).
    pub fn same_blob(&self, other: &PackEntry) -> bool {
        self.offset == other.offset
            && self.stored_len == other.stored_len
            && self.kind == other.kind
            && self.compression == other.compression
            && self.blob_len == other.blob_len
    }
}

/// Encodes a header plaintext for a pack of `version`.
pub fn encode_header(entries: &[PackEntry], version: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.len() * entry_len(version));
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        e.encode_into(&mut out, version);
    }
    out
}

/// Checks that `entries` (in order) tile blobs and blobs tile `[40, end)`: the entries of
/// one blob are consecutive, agree on the blob, and their chunks tile its plaintext.
pub fn check_tiling(entries: &[PackEntry], end: u64) -> Result<(), DecodeError> {
    let filled = |p: &PackEntry| {
        if p.chunk_offset + p.raw_len == p.blob_len {
            Ok(())
        } else {
            Err(DecodeError::new(format!(
                "the chunks of the blob at offset {} do not fill its plaintext",
                p.offset
            )))
        }
    };
    let mut prev: Option<&PackEntry> = None;
    for e in entries {
        let expect_chunk = match prev {
            Some(p) if p.offset == e.offset => {
                if !p.same_blob(e) {
                    return Err(DecodeError::new(format!(
                        "chunks {} and {} disagree about their blob at offset {}",
                        p.id, e.id, e.offset
                    )));
                }
                p.chunk_offset + p.raw_len
            }
            _ => {
                let blob_start = match prev {
                    Some(p) => {
                        filled(p)?;
                        p.end()
                    }
                    None => PACK_PREFIX_LEN,
                };
                if e.offset != blob_start {
                    return Err(DecodeError::new(format!(
                        "blob {} at offset {} where {} was expected",
                        e.id, e.offset, blob_start
                    )));
                }
                0
            }
        };
        if e.chunk_offset != expect_chunk {
            return Err(DecodeError::new(format!(
                "chunk {} at offset {} of its blob where {} was expected",
                e.id, e.chunk_offset, expect_chunk
            )));
        }
        prev = Some(e);
    }
    let blobs_end = match prev {
        Some(p) => {
            filled(p)?;
            p.end()
        }
        None => PACK_PREFIX_LEN,
    };
    if blobs_end != end {
        return Err(DecodeError::new(format!(
            "blobs end at {blobs_end} but the header starts at {end}"
        )));
    }
    Ok(())
}

/// Decodes a header plaintext of a pack of `version` whose header starts at
/// `header_offset`, checking that the blobs tile `[40, header_offset)` exactly and the
/// chunks tile each blob ([`check_tiling`]).
pub fn decode_header(
    plain: &[u8],
    header_offset: u64,
    version: u8,
) -> Result<Vec<PackEntry>, DecodeError> {
    let mut r = Reader::new(plain, "pack header");
    let n = r.count(entry_len(version))?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        entries.push(PackEntry::decode_from(&mut r, version)?);
    }
    r.finish()?;
    check_tiling(&entries, header_offset)?;
    Ok(entries)
}

/// Parses the prefix (first 40 bytes) of a pack: returns its salt and version.
pub fn decode_prefix(prefix: &[u8]) -> Result<([u8; 32], u8), DecodeError> {
    if prefix.len() < PACK_PREFIX_LEN as usize {
        return Err(DecodeError::new("pack shorter than its prefix"));
    }
    if &prefix[..7] != PACK_MAGIC {
        return Err(DecodeError::new("not a vmvault pack (bad magic)"));
    }
    let version = prefix[7];
    if !PACK_VERSIONS.contains(&version) {
        return Err(DecodeError::new(format!(
            "unsupported pack version {version}"
        )));
    }
    let mut salt = [0u8; 32];
    salt.copy_from_slice(&prefix[8..40]);
    Ok((salt, version))
}

/// From the pack's total size and its last 4 bytes, where the header starts and how long
/// it is (tag included).
pub fn locate_header(pack_size: u64, trailer: &[u8]) -> Result<(u64, u32), DecodeError> {
    if trailer.len() != 4 {
        return Err(DecodeError::new("pack trailer must be 4 bytes"));
    }
    let mut a = [0u8; 4];
    a.copy_from_slice(trailer);
    let len = u32::from_le_bytes(a);
    if !(4 + 16..=MAX_HEADER_LEN).contains(&len) {
        return Err(DecodeError::new(format!(
            "pack header length {len} out of range"
        )));
    }
    let start = pack_size
        .checked_sub(PACK_TRAILER_LEN + u64::from(len))
        .filter(|&s| s >= PACK_PREFIX_LEN)
        .ok_or_else(|| DecodeError::new("pack header runs past the start of the pack"))?;
    Ok((start, len))
}
