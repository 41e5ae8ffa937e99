//! Reading blobs back: fetch, authenticate, decompress and verify the chunk id.

use crate::backend::FileKind;
use crate::cache::IndexCache;
use crate::crypto::{MasterKeys, PackCipher};
use crate::error::{RepoError, Result};
use crate::format::pack::{PackEntry, COMPRESSION_NONE, COMPRESSION_ZSTD};
use crate::repository::{io_err, Repository};
use vmvault_chunker::ChunkId;

/// Authenticates and decodes one blob in place: `stored` (`ciphertext || tag`, read from
/// `entry.offset` of the pack whose cipher is given) is decrypted where it lies; the
/// plaintext is returned either as a sub-slice of `stored` or, when compressed, in
/// `scratch` (reused, never grown beyond the entry's raw length). The length and the chunk
/// id are checked before the plaintext is returned.
pub fn open_blob<'a>(
    keys: &MasterKeys,
    cipher: &PackCipher,
    pack_name: &str,
    e: &PackEntry,
    stored: &'a mut [u8],
    decompressor: &mut zstd::bulk::Decompressor<'static>,
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8]> {
    let bad = |reason: String| RepoError::corrupt(FileKind::Pack, pack_name, reason);
    let n = cipher
        .decrypt_blob(e.offset, &e.id, stored)
        .map_err(|err| bad(format!("chunk {} at offset {}: {err}", e.id, e.offset)))?;
    let plain: &[u8] = match e.compression {
        COMPRESSION_NONE => &stored[..n],
        COMPRESSION_ZSTD => {
            scratch.clear();
            scratch.reserve(e.raw_len as usize);
            decompressor
                .decompress_to_buffer(&stored[..n], scratch)
                .map_err(|err| bad(format!("chunk {}: zstd: {err}", e.id)))?;
            &scratch[..]
        }
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
    if keys.chunk_id(plain) != e.id {
        return Err(bad(format!("chunk {} does not hash to its id", e.id)));
    }
    Ok(plain)
}

/// A zstd decompressor for [`open_blob`].
pub fn new_decompressor() -> Result<zstd::bulk::Decompressor<'static>> {
    zstd::bulk::Decompressor::new().map_err(|e| RepoError::Invalid(format!("zstd: {e}")))
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
    let mut stored = stored;
    let mut scratch = Vec::new();
    let plain = open_blob(
        repo.keys(),
        &repo.keys().pack_cipher(&salt),
        &pack_name,
        &loc.entry,
        &mut stored,
        &mut new_decompressor()?,
        &mut scratch,
    )?;
    Ok(plain.to_vec())
}
