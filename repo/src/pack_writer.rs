//! Building one pack in memory (FORMAT.md section 6).

use crate::crypto::{random_salt, MasterKeys, PackCipher};
use crate::error::{RepoError, Result};
use crate::format::index::IndexPack;
use crate::format::pack::{encode_header, PackEntry, PACK_MAGIC, PACK_PREFIX_LEN};
use vmvault_chunker::ChunkId;

/// A pack being filled. Blobs are encrypted as they are added, at the offset they will
/// occupy; [`PackWriter::finish`] appends the encrypted header and names the pack.
pub struct PackWriter {
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
    /// Starts a new pack with a fresh salt, reserving `capacity` bytes.
    pub fn new(keys: &MasterKeys, capacity: usize) -> Result<Self> {
        Self::with_buffer(keys, Vec::with_capacity(capacity))
    }

    /// Starts a new pack in `buf`, a buffer recycled from an earlier pack: its contents are
    /// discarded but its memory is reused, which spares the page faults of fresh memory.
    pub fn with_buffer(keys: &MasterKeys, mut buf: Vec<u8>) -> Result<Self> {
        let salt = random_salt().map_err(|e| RepoError::Invalid(e.to_string()))?;
        buf.clear();
        buf.extend_from_slice(PACK_MAGIC);
        buf.extend_from_slice(&salt);
        Ok(PackWriter {
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

    /// Appends a blob: `payload` is the (possibly compressed) plaintext.
    pub fn add(&mut self, id: ChunkId, kind: u8, compression: u8, raw_len: u32, payload: &[u8]) {
        let offset = self.buf.len() as u64;
        let start = self.buf.len();
        self.buf.extend_from_slice(payload);
        let tag = self
            .cipher
            .encrypt_blob(offset, &id, &mut self.buf[start..]);
        self.buf.extend_from_slice(&tag);
        self.entries.push(PackEntry {
            id,
            offset,
            stored_len: (payload.len() + tag.len()) as u32,
            raw_len,
            kind,
            compression,
        });
    }

    /// Seals the header and names the pack.
    pub fn finish(mut self) -> FinishedPack {
        let header_offset = self.buf.len();
        let mut header = encode_header(&self.entries);
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
