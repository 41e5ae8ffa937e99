//! Pack layout (FORMAT.md section 6).
//!
//! ```text
//! 0       7   magic "VMVPACK"
//! 7       1   version = 1
//! 8       32  salt
//! 40      ..  blobs: ciphertext || tag(16), nonce = u64le(offset) || 0u32, aad = chunk id
//! H       L   header ciphertext || tag, nonce = ff×12, aad = bytes 0..40
//! end-4   4   L (u32)
//! ```
//! Header plaintext: u32 count, then `count` × [`PackEntry`] (52 bytes each).

use super::bytes::Reader;
use super::DecodeError;
use vmvault_chunker::{ChunkId, MAX_CHUNK};

/// Magic and version at the start of every pack.
pub const PACK_MAGIC: &[u8; 8] = b"VMVPACK\x01";
/// Length of the plaintext prefix (magic, version, salt); the first blob starts here.
pub const PACK_PREFIX_LEN: u64 = 40;
/// Length of the trailing header-length field.
pub const PACK_TRAILER_LEN: u64 = 4;
/// Encoded length of one entry.
pub const ENTRY_LEN: usize = 52;
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

/// Where one blob lives inside its pack and how to decode it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// The chunk id (keyed BLAKE3 of the plaintext).
    pub id: ChunkId,
    /// Byte offset of the blob in the pack.
    pub offset: u64,
    /// Stored length, tag included.
    pub stored_len: u32,
    /// Plaintext length before compression.
    pub raw_len: u32,
    /// [`KIND_DATA`] or [`KIND_TREE`].
    pub kind: u8,
    /// [`COMPRESSION_NONE`] or [`COMPRESSION_ZSTD`].
    pub compression: u8,
}

impl PackEntry {
    /// Appends the 52-byte encoding.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.push(self.kind);
        out.push(self.compression);
        out.extend_from_slice(&[0, 0]);
    }

    pub(crate) fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let e = PackEntry {
            id: ChunkId(r.array32()?),
            offset: r.u64()?,
            stored_len: r.u32()?,
            raw_len: r.u32()?,
            kind: r.u8()?,
            compression: r.u8()?,
        };
        if r.u16()? != 0 {
            return Err(DecodeError::new(format!(
                "blob {} has non-zero reserved bytes",
                e.id
            )));
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
        if self.compression == COMPRESSION_NONE && self.raw_len + 16 != self.stored_len {
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
}

/// Encodes a header plaintext.
pub fn encode_header(entries: &[PackEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.len() * ENTRY_LEN);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        e.encode_into(&mut out);
    }
    out
}

/// Decodes a header plaintext of a pack whose header starts at `header_offset`, checking
/// that the blobs tile `[40, header_offset)` exactly.
pub fn decode_header(plain: &[u8], header_offset: u64) -> Result<Vec<PackEntry>, DecodeError> {
    let mut r = Reader::new(plain, "pack header");
    let n = r.count(ENTRY_LEN)?;
    let mut entries = Vec::with_capacity(n);
    let mut expect = PACK_PREFIX_LEN;
    for _ in 0..n {
        let e = PackEntry::decode_from(&mut r)?;
        if e.offset != expect {
            return Err(DecodeError::new(format!(
                "blob {} at offset {} where {} was expected",
                e.id, e.offset, expect
            )));
        }
        expect = e.end();
        entries.push(e);
    }
    r.finish()?;
    if expect != header_offset {
        return Err(DecodeError::new(format!(
            "blobs end at {expect} but the header starts at {header_offset}"
        )));
    }
    Ok(entries)
}

/// Parses the prefix (first 40 bytes) of a pack: returns its salt.
pub fn decode_prefix(prefix: &[u8]) -> Result<[u8; 32], DecodeError> {
    if prefix.len() < PACK_PREFIX_LEN as usize {
        return Err(DecodeError::new("pack shorter than its prefix"));
    }
    if &prefix[..8] != PACK_MAGIC {
        if &prefix[..7] == b"VMVPACK" {
            return Err(DecodeError::new(format!(
                "unsupported pack version {}",
                prefix[7]
            )));
        }
        return Err(DecodeError::new("not a vmvault pack (bad magic)"));
    }
    let mut salt = [0u8; 32];
    salt.copy_from_slice(&prefix[8..40]);
    Ok(salt)
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
