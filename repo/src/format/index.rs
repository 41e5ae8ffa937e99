//! Index files (FORMAT.md section 7): which packs hold which chunks.

use super::bytes::Reader;
use super::pack::{entry_len, PackEntry};
use super::DecodeError;

/// One pack and its blobs, as listed by an index file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPack {
    /// The pack's name (BLAKE3 of its bytes).
    pub name: [u8; 32],
    /// The pack's salt.
    pub salt: [u8; 32],
    /// The pack's size in bytes.
    pub size: u64,
    /// Its blobs.
    pub entries: Vec<PackEntry>,
}

/// The first bytes of a version 2 index file's plaintext (a version 1 index has none).
pub const INDEX_MAGIC_V2: &[u8; 8] = b"VMVIDX\x00\x02";

/// Encodes an index file's plaintext in `version` (1 or 2, the repository's pack version).
pub fn encode_index(packs: &[IndexPack], version: u8) -> Vec<u8> {
    let n: usize = packs
        .iter()
        .map(|p| 76 + p.entries.len() * entry_len(version))
        .sum();
    let mut out = Vec::with_capacity(12 + n);
    if version >= 2 {
        out.extend_from_slice(INDEX_MAGIC_V2);
    }
    out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for p in packs {
        out.extend_from_slice(&p.name);
        out.extend_from_slice(&p.salt);
        out.extend_from_slice(&p.size.to_le_bytes());
        out.extend_from_slice(&(p.entries.len() as u32).to_le_bytes());
        for e in &p.entries {
            e.encode_into(&mut out, version);
        }
    }
    out
}

/// Decodes an index file's plaintext of either version, checking that every blob lies
/// inside its pack (each entry on its own, section 6; readers that decode a blob once for
/// several entries check that the entries agree about it).
pub fn decode_index(plain: &[u8]) -> Result<Vec<IndexPack>, DecodeError> {
    let (version, body) = match plain.strip_prefix(INDEX_MAGIC_V2.as_slice()) {
        Some(rest) => (2, rest),
        None => (1, plain),
    };
    let mut r = Reader::new(body, "index");
    let n = r.count(76)?;
    let mut packs = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.array32()?;
        let salt = r.array32()?;
        let size = r.u64()?;
        let count = r.count(entry_len(version))?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let e = PackEntry::decode_from(&mut r, version)?;
            if e.end() > size {
                return Err(DecodeError::new(format!(
                    "blob {} lies beyond the end of pack {}",
                    e.id,
                    hex::encode(name)
                )));
            }
            entries.push(e);
        }
        packs.push(IndexPack {
            name,
            salt,
            size,
            entries,
        });
    }
    r.finish()?;
    Ok(packs)
}
