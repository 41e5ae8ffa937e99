//! Building one pack in memory (FORMAT.md section 6).

use crate::crypto::{random_salt, MasterKeys, PackCipher, TAG_LEN};
use crate::error::{RepoError, Result};
use crate::format::index::IndexPack;
use crate::format::pack::{encode_header, PackEntry, PACK_MAGIC, PACK_PREFIX_LEN};
use vmvault_chunker::ChunkId;

/// A pack being filled. Blobs are encrypted as they are added, at the offset they will
/// occupy; [`PackWriter::finish`] appends the encrypted header and names the pack.
pub struct PackWriter {
    version: u8,
    salt: [u8; 32],
    cipher: PackCipher,
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

/// A complete pack, ready to store.
pub struct FinishedPack {
    /// The pack's name (BLAKE3 of `bytes`).
    pub name: [u8; 32],
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// What an index file will say about it.
    pub index: IndexPack,
}

impl PackWriter {
    /// Starts a new pack of `version` (1 or 2, the repository's pack version) with a
    /// fresh salt, reserving `capacity` bytes.
    pub fn new(keys: &MasterKeys, version: u8, capacity: usize) -> Result<Self> {
        Self::with_buffer(keys, version, Vec::with_capacity(capacity))
    }

    /// Starts a new pack in `buf`, a buffer recycled from an earlier pack: its contents are
    /// discarded but its memory is reused, which spares the page faults of fresh memory.
    pub fn with_buffer(keys: &MasterKeys, version: u8, mut buf: Vec<u8>) -> Result<Self> {
        let salt = random_salt().map_err(|e| RepoError::Invalid(e.to_string()))?;
        buf.clear();
        buf.extend_from_slice(PACK_MAGIC);
        buf.push(version);
        buf.extend_from_slice(&salt);
        Ok(PackWriter {
            version,
            salt,
            cipher: keys.pack_cipher(&salt),
            buf,
            entries: Vec::new(),
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True before the first blob.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends a blob holding one chunk: `payload` is the (possibly compressed) chunk.
    pub fn add(&mut self, id: ChunkId, kind: u8, compression: u8, raw_len: u32, payload: &[u8]) {
        self.add_blob(kind, compression, payload, &[(id, raw_len)]);
    }

    /// Appends a blob holding `chunks` (id and length, in the order their bytes follow each
    /// other in the blob's plaintext): `payload` is that plaintext, compressed as a whole
    /// or not. A version 1 pack holds one chunk per blob; callers of such a pack pass one.
    pub fn add_blob(
        &mut self,
        kind: u8,
        compression: u8,
        payload: &[u8],
        chunks: &[(ChunkId, u32)],
    ) {
        debug_assert!(self.version >= 2 || chunks.len() == 1);
        if chunks.is_empty() {
            return;
        }
        let blob_len: u32 = chunks.iter().map(|c| c.1).sum();
        let offset = self.buf.len() as u64;
        let stored_len = (payload.len() + TAG_LEN) as u32;
        let first_entry = self.entries.len();
        let mut chunk_offset = 0u32;
        for &(id, raw_len) in chunks {
            self.entries.push(PackEntry {
                id,
                offset,
                stored_len,
                raw_len,
                kind,
                compression,
                chunk_offset,
                blob_len,
            });
            chunk_offset += raw_len;
        }
        self.buf.extend_from_slice(payload);
        let aad = self.entries[first_entry].aad();
        let tag = self
            .cipher
            .encrypt_blob(offset, aad, &mut self.buf[offset as usize..]);
        self.buf.extend_from_slice(&tag);
    }

    /// Seals the header and names the pack.
    pub fn finish(mut self) -> FinishedPack {
        let header_offset = self.buf.len();
        let mut header = encode_header(&self.entries, self.version);
        let prefix: [u8; PACK_PREFIX_LEN as usize] = {
            let mut p = [0u8; PACK_PREFIX_LEN as usize];
            p.copy_from_slice(&self.buf[..PACK_PREFIX_LEN as usize]);
            p
        };
        let tag = self.cipher.encrypt_header(&prefix, &mut header);
        self.buf.extend_from_slice(&header);
        self.buf.extend_from_slice(&tag);
        let header_len = (self.buf.len() - header_offset) as u32;
        self.buf.extend_from_slice(&header_len.to_le_bytes());
        let name = *blake3::hash(&self.buf).as_bytes();
        FinishedPack {
            name,
            index: IndexPack {
                name,
                salt: self.salt,
                size: self.buf.len() as u64,
                entries: self.entries,
            },
            bytes: self.buf,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::{new_decompressor, open_blob};
    use crate::format::index::{decode_index, encode_index};
    use crate::format::pack::{
        decode_header, encode_header, COMPRESSION_NONE, COMPRESSION_ZSTD, KIND_DATA, KIND_TREE,
    };
    use crate::pack_header::parse_pack;

    fn chunks() -> Vec<Vec<u8>> {
        vec![
            (0..5000u32).map(|i| (i % 251) as u8).collect(),
            vec![7u8; 3000],
            b"a short chunk".to_vec(),
        ]
    }

    /// Writes a pack of `version`: the chunks as one compressed blob (version 2) or one
    /// blob each (version 1), then a tree chunk on its own.
    fn write(keys: &MasterKeys, version: u8) -> (FinishedPack, Vec<Vec<u8>>) {
        let mut w = PackWriter::new(keys, version, 1 << 16).unwrap();
        let cs = chunks();
        if version >= 2 {
            let plain = cs.concat();
            let z = zstd::bulk::compress(&plain, 3).unwrap();
            let list: Vec<(ChunkId, u32)> = cs
                .iter()
                .map(|c| (keys.chunk_id(c), c.len() as u32))
                .collect();
            w.add_blob(KIND_DATA, COMPRESSION_ZSTD, &z, &list);
        } else {
            for c in &cs {
                w.add(
                    keys.chunk_id(c),
                    KIND_DATA,
                    COMPRESSION_NONE,
                    c.len() as u32,
                    c,
                );
            }
        }
        let tree = b"tree".to_vec();
        w.add(keys.chunk_id(&tree), KIND_TREE, COMPRESSION_NONE, 4, &tree);
        let mut all = cs;
        all.push(tree);
        (w.finish(), all)
    }

    /// Every chunk of a pack of either version reads back, verified, from its header's
    /// entries; a grouped blob's chunks share its offset and tile its plaintext.
    #[test]
    fn both_versions_read_back_chunk_by_chunk() {
        let keys = MasterKeys::generate().unwrap();
        for version in [1u8, 2] {
            let (pack, originals) = write(&keys, version);
            assert_eq!(pack.bytes[7], version);
            let (salt, entries) = parse_pack(&keys, &pack.bytes).unwrap();
            assert_eq!(entries, pack.index.entries);
            assert_eq!(entries.len(), originals.len());
            if version == 2 {
                assert!(entries[..3].iter().all(|e| e.same_blob(&entries[0])));
                assert_eq!(entries[1].chunk_offset, 5000);
                assert_eq!(entries[2].chunk_offset, 8000);
                assert!(!entries[0].is_single() && entries[3].is_single());
            } else {
                assert!(entries.iter().all(|e| e.is_single()));
            }
            let cipher = keys.pack_cipher(&salt);
            let mut d = new_decompressor().unwrap();
            for (e, original) in entries.iter().zip(&originals) {
                let mut stored = pack.bytes[e.offset as usize..e.end() as usize].to_vec();
                let mut scratch = Vec::new();
                let got =
                    open_blob(&keys, &cipher, "p", e, &mut stored, &mut d, &mut scratch).unwrap();
                assert_eq!(got, &original[..]);
            }
            // Index files of either version carry the same entries.
            let listed =
                decode_index(&encode_index(std::slice::from_ref(&pack.index), version)).unwrap();
            assert_eq!(listed, vec![pack.index.clone()]);
        }
    }

    /// A flipped bit in a grouped blob, or an entry pointing at the wrong place in it,
    /// is an error naming the chunk, never wrong data.
    #[test]
    fn damaged_grouped_blobs_are_refused() {
        let keys = MasterKeys::generate().unwrap();
        let (pack, _) = write(&keys, 2);
        let (salt, entries) = parse_pack(&keys, &pack.bytes).unwrap();
        let cipher = keys.pack_cipher(&salt);
        let mut d = new_decompressor().unwrap();
        let e = entries[1];
        let mut stored = pack.bytes[e.offset as usize..e.end() as usize].to_vec();
        stored[3] ^= 1;
        let mut scratch = Vec::new();
        let err = open_blob(&keys, &cipher, "p", &e, &mut stored, &mut d, &mut scratch)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&e.id.to_string()), "{err}");
        let mut moved = e;
        moved.chunk_offset = 0;
        let mut stored = pack.bytes[e.offset as usize..e.end() as usize].to_vec();
        let err = open_blob(
            &keys,
            &cipher,
            "p",
            &moved,
            &mut stored,
            &mut d,
            &mut scratch,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("does not hash to its id"), "{err}");
    }

    /// Headers whose chunks do not tile their blobs, or whose entries disagree about a
    /// blob, are refused.
    #[test]
    fn headers_must_tile_blobs_with_chunks() {
        let keys = MasterKeys::generate().unwrap();
        let (pack, _) = write(&keys, 2);
        let entries = pack.index.entries.clone();
        let header_offset = entries.last().unwrap().end();
        let decode = |es: &[PackEntry]| decode_header(&encode_header(es, 2), header_offset, 2);
        assert_eq!(decode(&entries).unwrap(), entries);
        let mut gap = entries.clone();
        gap[1].chunk_offset += 1;
        gap[1].raw_len -= 1;
        assert!(decode(&gap).is_err());
        let mut short = entries.clone();
        short.remove(2);
        assert!(decode(&short).is_err());
        let mut disagree = entries.clone();
        disagree[2].compression = COMPRESSION_NONE;
        assert!(decode(&disagree).is_err());
        let mut kinds = entries.clone();
        kinds[1].kind = KIND_TREE;
        assert!(decode(&kinds).is_err());
        // Version 1 cannot describe a blob of several chunks.
        let v1 = decode_header(&encode_header(&entries, 1), header_offset, 1);
        assert!(v1.is_err());
    }
}
