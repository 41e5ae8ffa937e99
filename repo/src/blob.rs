//! Reading blobs back: fetch, authenticate, decompress and verify the chunk id.

use crate::backend::FileKind;
use crate::cache::IndexCache;
use crate::crypto::{MasterKeys, PackCipher};
use crate::error::{RepoError, Result};
use crate::format::pack::{PackEntry, COMPRESSION_NONE, COMPRESSION_ZSTD};
use crate::repository::{io_err, Repository};
use vmvault_chunker::ChunkId;

/// Authenticates and decodes one blob in place: `stored` (`ciphertext || tag`, read from
/// `e.offset` of the pack whose cipher is given) is decrypted where it lies; the blob's
/// whole plaintext is returned either as a sub-slice of `stored` or, when compressed, in
/// `scratch` (reused, never grown beyond the entry's blob length, at most 16 MiB). The
/// plaintext's length is checked; the chunks in it are not ([`chunk_in_blob`] does that).
pub fn open_blob_plain<'a>(
    cipher: &PackCipher,
    pack_name: &str,
    e: &PackEntry,
    stored: &'a mut [u8],
    decompressor: &mut zstd::bulk::Decompressor<'static>,
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8]> {
    let bad = |reason: String| RepoError::corrupt(FileKind::Pack, pack_name, reason);
    let n = cipher
        .decrypt_blob(e.offset, e.aad(), stored)
        .map_err(|err| bad(format!("chunk {} at offset {}: {err}", e.id, e.offset)))?;
    let plain: &[u8] = match e.compression {
        COMPRESSION_NONE => &stored[..n],
        COMPRESSION_ZSTD => {
            scratch.clear();
            scratch.reserve(e.blob_len as usize);
            decompressor
                .decompress_to_buffer(&stored[..n], scratch)
                .map_err(|err| bad(format!("chunk {}: zstd: {err}", e.id)))?;
            &scratch[..]
        }
        c => return Err(bad(format!("chunk {}: unknown compression {c}", e.id))),
    };
    if plain.len() != e.blob_len as usize {
        return Err(bad(format!(
            "blob of chunk {} has {} bytes, the index says {}",
            e.id,
            plain.len(),
            e.blob_len
        )));
    }
    Ok(plain)
}

/// The chunk `e` names inside `blob_plain`, the plaintext of its blob (from
/// [`open_blob_plain`] for an entry of the same blob), after checking that it hashes to
/// its id.
pub fn chunk_in_blob<'a>(
    keys: &MasterKeys,
    pack_name: &str,
    e: &PackEntry,
    blob_plain: &'a [u8],
) -> Result<&'a [u8]> {
    let bad = |reason: String| RepoError::corrupt(FileKind::Pack, pack_name, reason);
    if blob_plain.len() != e.blob_len as usize {
        return Err(bad(format!(
            "blob of chunk {} has {} bytes, the index says {}",
            e.id,
            blob_plain.len(),
            e.blob_len
        )));
    }
    let plain = blob_plain
        .get(e.chunk_range())
        .ok_or_else(|| bad(format!("chunk {} lies outside its blob", e.id)))?;
    if keys.chunk_id(plain) != e.id {
        return Err(bad(format!("chunk {} does not hash to its id", e.id)));
    }
    Ok(plain)
}

/// [`open_blob_plain`] then [`chunk_in_blob`]: the verified chunk `e` names. For several
/// chunks of one blob, decode the blob once with those two instead.
pub fn open_blob<'a>(
    keys: &MasterKeys,
    cipher: &PackCipher,
    pack_name: &str,
    e: &PackEntry,
    stored: &'a mut [u8],
    decompressor: &mut zstd::bulk::Decompressor<'static>,
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8]> {
    let blob = open_blob_plain(cipher, pack_name, e, stored, decompressor, scratch)?;
    chunk_in_blob(keys, pack_name, e, blob)
}

/// Checks that `entries`, listed for one blob, agree about it ([`PackEntry::same_blob`]),
/// so that decoding the blob once with the first of them serves all.
pub fn one_blob<'e>(
    pack_name: &str,
    entries: impl IntoIterator<Item = &'e PackEntry>,
) -> Result<()> {
    let mut entries = entries.into_iter();
    let Some(first) = entries.next() else {
        return Ok(());
    };
    match entries.find(|e| !e.same_blob(first)) {
        None => Ok(()),
        Some(other) => Err(RepoError::corrupt(
            FileKind::Pack,
            pack_name,
            format!(
                "chunks {} and {} disagree about their blob at offset {}",
                first.id, other.id, first.offset
            ),
        )),
    }
}

/// A zstd decompressor for [`open_blob`].
pub fn new_decompressor() -> Result<zstd::bulk::Decompressor<'static>> {
    zstd::bulk::Decompressor::new().map_err(|e| RepoError::Invalid(format!("zstd: {e}")))
}

/// Reads one chunk by id through the index cache.
pub fn read_chunk(repo: &Repository, cache: &IndexCache, id: &ChunkId) -> Result<Vec<u8>> {
    let mut got = read_chunks(repo, cache, std::slice::from_ref(id))?;
    got.pop()
        .map(|(_, bytes)| bytes)
        .ok_or_else(|| RepoError::Invalid(format!("internal error: chunk {id} not read")))
}

/// Chunks read back: each id with its verified bytes.
pub type ChunkBytes = Vec<(ChunkId, Vec<u8>)>;

/// Reads chunks by id through the index cache, each verified, in parallel: one read and
/// one decoding per blob however many of the wanted chunks it holds. Returns them in no
/// particular order.
pub fn read_chunks(repo: &Repository, cache: &IndexCache, ids: &[ChunkId]) -> Result<ChunkBytes> {
    use rayon::prelude::*;
    let mut by_blob: std::collections::BTreeMap<([u8; 32], u64), Vec<PackEntry>> =
        std::collections::BTreeMap::new();
    for id in ids {
        let loc = cache.lookup(id)?.ok_or_else(|| RepoError::NotFound {
            kind: FileKind::Index,
            name: format!("entry for chunk {id}"),
        })?;
        by_blob
            .entry((loc.pack, loc.entry.offset))
            .or_default()
            .push(loc.entry);
    }
    let blobs: Vec<_> = by_blob.into_iter().collect();
    let decoded: Result<Vec<ChunkBytes>> = blobs
        .par_iter()
        .map(|((pack, _), entries)| read_blob_chunks(repo, cache, pack, entries))
        .collect();
    Ok(decoded?.into_iter().flatten().collect())
}

/// Reads one blob of `pack` and returns the chunks `entries` (all of that blob) name.
fn read_blob_chunks(
    repo: &Repository,
    cache: &IndexCache,
    pack: &[u8; 32],
    entries: &[PackEntry],
) -> Result<ChunkBytes> {
    let pack_name = hex::encode(pack);
    let Some(first) = entries.first() else {
        return Ok(Vec::new());
    };
    one_blob(&pack_name, entries)?;
    let (salt, _) = cache.pack_info(pack)?.ok_or_else(|| RepoError::NotFound {
        kind: FileKind::Index,
        name: format!("entry for pack {pack_name}"),
    })?;
    let mut stored = repo
        .backend()
        .get_range(
            FileKind::Pack,
            &pack_name,
            first.offset,
            u64::from(first.stored_len),
        )
        .map_err(|e| io_err(FileKind::Pack, &pack_name, e))?;
    let mut scratch = Vec::new();
    let plain = open_blob_plain(
        &repo.keys().pack_cipher(&salt),
        &pack_name,
        first,
        &mut stored,
        &mut new_decompressor()?,
        &mut scratch,
    )?;
    entries
        .iter()
        .map(|e| {
            Ok((
                e.id,
                chunk_in_blob(repo.keys(), &pack_name, e, plain)?.to_vec(),
            ))
        })
        .collect()
}
