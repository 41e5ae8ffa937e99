//! Reading a pack's own header (FORMAT.md section 6): what the pack says it holds, as an
//! index file would list it. Used where the index cannot be trusted or does not yet know
//! the pack (check, sync of packs copied by an interrupted run).

use crate::backend::{Backend, FileKind};
use crate::crypto::MasterKeys;
use crate::error::{RepoError, Result};
use crate::format::index::IndexPack;
use crate::format::pack::{
    decode_header, decode_prefix, locate_header, PackEntry, PACK_PREFIX_LEN, PACK_TRAILER_LEN,
};
use crate::repository::io_err;

/// Bytes read from a pack's end in the first request for its header: enough for the
/// header of a pack of several hundred blobs, so one request usually suffices.
const TAIL_GUESS: u64 = 64 << 10;

/// Decrypts and decodes the header of a whole pack held in memory. Returns the pack's
/// salt and entries. Fails with a message naming what is wrong.
pub fn parse_pack(
    keys: &MasterKeys,
    bytes: &[u8],
) -> std::result::Result<([u8; 32], Vec<PackEntry>), String> {
    let (salt, version) = decode_prefix(bytes).map_err(|e| e.0)?;
    let n = bytes.len() as u64;
    let trailer = &bytes[bytes.len().saturating_sub(PACK_TRAILER_LEN as usize)..];
    let (start, len) = locate_header(n, trailer).map_err(|e| e.0)?;
    let mut header = bytes[start as usize..start as usize + len as usize].to_vec();
    let plain_len = keys
        .pack_cipher(&salt)
        .decrypt_header(&bytes[..PACK_PREFIX_LEN as usize], &mut header)
        .map_err(|e| format!("header: {e}"))?;
    let entries = decode_header(&header[..plain_len], start, version).map_err(|e| e.0)?;
    Ok((salt, entries))
}

/// The index record of a whole pack held in memory, after checking that its bytes match
/// `name` and that its header authenticates.
pub fn index_record(keys: &MasterKeys, name: &str, bytes: &[u8]) -> Result<IndexPack> {
    if crate::repository::object_name(bytes) != name {
        return Err(RepoError::corrupt(
            FileKind::Pack,
            name,
            "content does not match its name",
        ));
    }
    let (salt, entries) =
        parse_pack(keys, bytes).map_err(|e| RepoError::corrupt(FileKind::Pack, name, e))?;
    Ok(IndexPack {
        name: pack_id(name)?,
        salt,
        size: bytes.len() as u64,
        entries,
    })
}

/// The index record of a stored pack of `size` bytes, read with ranged requests (the
/// prefix, then the tail; a third request only for an unusually long header).
pub fn read_index_record(
    keys: &MasterKeys,
    backend: &dyn Backend,
    name: &str,
    size: u64,
) -> Result<IndexPack> {
    let corrupt = |e: String| RepoError::corrupt(FileKind::Pack, name, e);
    if size < PACK_PREFIX_LEN + PACK_TRAILER_LEN {
        return Err(corrupt(format!("{size} bytes is too short for a pack")));
    }
    let get = |offset: u64, len: u64| {
        backend
            .get_range(FileKind::Pack, name, offset, len)
            .map_err(|e| io_err(FileKind::Pack, name, e))
    };
    let prefix = get(0, PACK_PREFIX_LEN)?;
    let (salt, version) = decode_prefix(&prefix).map_err(|e| corrupt(e.0))?;
    let tail_len = TAIL_GUESS.min(size - PACK_PREFIX_LEN);
    let tail_start = size - tail_len;
    let tail = get(tail_start, tail_len)?;
    let trailer = &tail[tail.len() - PACK_TRAILER_LEN as usize..];
    let (start, len) = locate_header(size, trailer).map_err(|e| corrupt(e.0))?;
    let mut header = if start >= tail_start {
        let from = (start - tail_start) as usize;
        tail[from..from + len as usize].to_vec()
    } else {
        get(start, u64::from(len))?
    };
    let plain_len = keys
        .pack_cipher(&salt)
        .decrypt_header(&prefix, &mut header)
        .map_err(|e| corrupt(format!("header: {e}")))?;
    let entries = decode_header(&header[..plain_len], start, version).map_err(|e| corrupt(e.0))?;
    Ok(IndexPack {
        name: pack_id(name)?,
        salt,
        size,
        entries,
    })
}

fn pack_id(name: &str) -> Result<[u8; 32]> {
    let mut id = [0u8; 32];
    hex::decode_to_slice(name, &mut id)
        .map_err(|_| RepoError::Invalid(format!("malformed pack name {name:?}")))?;
    Ok(id)
}
