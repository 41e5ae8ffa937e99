//! Index files (FORMAT.md section 7): which packs hold which chunks.

use super::bytes::Reader;
use super::pack::{PackEntry, ENTRY_LEN};
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

/// Encodes an index file's plaintext.
pub fn encode_index(packs: &[IndexPack]) -> Vec<u8> {
    let n: usize = packs.iter().map(|p| 76 + p.entries.len() * ENTRY_LEN).sum();
    let mut out = Vec::with_capacity(4 + n);
    out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for p in packs {
        out.extend_from_slice(&p.name);
        out.extend_from_slice(&p.salt);
        out.extend_from_slice(&p.size.to_le_bytes());
        out.extend_from_slice(&(p.entries.len() as u32).to_le_bytes());
        for e in &p.entries {
            e.encode_into(&mut out);
        }
    }
    out
}

/// Decodes an index file's plaintext, checking that every blob lies inside its pack.
pub fn decode_index(plain: &[u8]) -> Result<Vec<IndexPack>, DecodeError> {
    let mut r = Reader::new(plain, "index");
    let n = r.count(76)?;
    let mut packs = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.array32()?;
        let salt = r.array32()?;
        let size = r.u64()?;
        let count = r.count(ENTRY_LEN)?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let e = PackEntry::decode_from(&mut r)?;
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
