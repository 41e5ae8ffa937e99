//! Reading blobs back: fetch, authenticate, decompress and verify the chunk id.

use crate::backend::FileKind;
use crate::cache::{ChunkLocation, IndexCache};
use crate::crypto::{decompress_capped, MasterKeys};
use crate::error::{RepoError, Result};
use crate::format::pack::{COMPRESSION_NONE, COMPRESSION_ZSTD};
use crate::repository::{io_err, Repository};
use vmvault_chunker::{ChunkId, MAX_CHUNK};

/// Decodes one stored blob (`ciphertext || tag`, as read from `entry.offset` of a pack
/// with `salt`) into its plaintext, checking the tag, the length and the chunk id.
pub fn decode_blob(
    keys: &MasterKeys,
    salt: &[u8; 32],
    pack_name: &str,
    loc: &ChunkLocation,
    mut stored: Vec<u8>,
) -> Result<Vec<u8>> {
    let e = &loc.entry;
    let bad = |reason: String| RepoError::corrupt(FileKind::Pack, pack_name, reason);
    let n = keys
        .pack_cipher(salt)
        .decrypt_blob(e.offset, &e.id, &mut stored)
        .map_err(|err| bad(format!("chunk {} at offset {}: {err}", e.id, e.offset)))?;
    stored.truncate(n);
    let plain = match e.compression {
        COMPRESSION_NONE => stored,
        COMPRESSION_ZSTD => decompress_capped(&stored, MAX_CHUNK as usize)
            .map_err(|err| bad(format!("chunk {}: {err}", e.id)))?,
        c => return Err(bad(format!("chunk {}: unknown compression {c}", e.id))),
    };
    if plain.len() != e.raw_len as usize {
        return Err(bad(format!(
            "chunk {} has {} bytes, the index says {}",
            e.id,
            plain.len(),
            e.raw_len
        )));
    }
    if keys.chunk_id(&plain) != e.id {
        return Err(bad(format!("chunk {} does not hash to its id", e.id)));
    }
    Ok(plain)
}

/// Reads one chunk by id through the index cache.
pub fn read_chunk(repo: &Repository, cache: &IndexCache, id: &ChunkId) -> Result<Vec<u8>> {
    let loc = cache.lookup(id)?.ok_or_else(|| RepoError::NotFound {
        kind: FileKind::Index,
        name: format!("entry for chunk {id}"),
    })?;
    let pack_name = hex::encode(loc.pack);
    let (salt, _) = cache
        .pack_info(&loc.pack)?
        .ok_or_else(|| RepoError::NotFound {
            kind: FileKind::Index,
            name: format!("entry for pack {pack_name}"),
        })?;
    let stored = repo
        .backend()
        .get_range(
            FileKind::Pack,
            &pack_name,
            loc.entry.offset,
            u64::from(loc.entry.stored_len),
        )
        .map_err(|e| io_err(FileKind::Pack, &pack_name, e))?;
    decode_blob(repo.keys(), &salt, &pack_name, &loc, stored)
}
