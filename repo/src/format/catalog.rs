//! File catalogs (FORMAT.md section 15): the entries of one guest file system as a
//! prefix-compressed record stream.
//!
//! ```text
//! 6 magic "VVCAT\x01"
//! records: varint shared, varint suffix_len, suffix, u8 kind, varint mode, varint uid,
//!          varint gid, varint size, varint zigzag(mtime), varint mtime_nsec
//! ```

use super::DecodeError;
use std::io::Read;
use vmvault_ingest::guest::{NodeKind, NodeMeta};

/// The stream's first bytes; the last is the catalog version.
pub const MAGIC: &[u8; 6] = b"VVCAT\x01";
/// Longest path a catalog holds, in bytes.
pub const MAX_PATH: usize = 4096;

/// One catalogued entry: a path relative to the file system's root and its metadata
/// (`atime` is not stored and reads back as `mtime`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    /// `/`-separated, no leading `/`, no empty, `.` or `..` components.
    pub path: String,
    /// Type, size, mode, owner and modification time.
    pub meta: NodeMeta,
}

fn kind_code(k: NodeKind) -> u8 {
    match k {
        NodeKind::File => 0,
        NodeKind::Dir => 1,
        NodeKind::Symlink => 2,
        NodeKind::Special => 3,
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Builds a catalog stream; entries must come in catalog order (the walker's order).
pub struct CatalogEncoder {
    out: Vec<u8>,
    prev: String,
    entries: u64,
}

impl Default for CatalogEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl CatalogEncoder {
    /// An empty catalog (just the magic).
    pub fn new() -> Self {
        CatalogEncoder {
            out: MAGIC.to_vec(),
            prev: String::new(),
            entries: 0,
        }
    }

    /// Appends one entry. Paths longer than [`MAX_PATH`] or not valid catalog paths are
    /// refused (returns false) and not written.
    pub fn push(&mut self, path: &str, meta: &NodeMeta) -> bool {
        if !valid_path(path) {
            return false;
        }
        let shared = self
            .prev
            .bytes()
            .zip(path.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        // Keep the split on a character boundary so the suffix is valid UTF-8.
        let mut shared = shared;
        while !path.is_char_boundary(shared) {
            shared -= 1;
        }
        let suffix = &path.as_bytes()[shared..];
        put_varint(&mut self.out, shared as u64);
        put_varint(&mut self.out, suffix.len() as u64);
        self.out.extend_from_slice(suffix);
        self.out.push(kind_code(meta.kind));
        put_varint(&mut self.out, u64::from(meta.mode & 0o7777));
        put_varint(&mut self.out, u64::from(meta.uid));
        put_varint(&mut self.out, u64::from(meta.gid));
        put_varint(&mut self.out, meta.size);
        put_varint(
            &mut self.out,
            ((meta.mtime << 1) ^ (meta.mtime >> 63)) as u64,
        );
        put_varint(&mut self.out, u64::from(meta.mtime_nsec.min(999_999_999)));
        self.prev.clear();
        self.prev.push_str(path);
        self.entries += 1;
        true
    }

    /// Entries pushed so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// The encoded stream.
    pub fn finish(self) -> Vec<u8> {
        self.out
    }
}

/// True for a path a catalog may hold.
pub fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_PATH
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'))
}

/// Reads a catalog stream entry by entry. Every record is checked; the first damaged one
/// ends the stream with an error. Memory is one path.
pub struct CatalogDecoder<R: Read> {
    input: R,
    path: Vec<u8>,
    offset: u64,
    done: bool,
}

impl<R: Read> CatalogDecoder<R> {
    /// Checks the magic and returns a decoder positioned at the first record.
    pub fn new(mut input: R) -> Result<Self, DecodeError> {
        let mut magic = [0u8; 6];
        read_full(&mut input, &mut magic)
            .map_err(|e| DecodeError::new(format!("catalog header: {e}")))?;
        if &magic[..5] != b"VVCAT" {
            return Err(DecodeError::new("not a catalog (bad magic)"));
        }
        if magic[5] != MAGIC[5] {
            return Err(DecodeError::new(format!(
                "unsupported catalog version {}",
                magic[5]
            )));
        }
        Ok(CatalogDecoder {
            input,
            path: Vec::new(),
            offset: 6,
            done: false,
        })
    }

    fn byte(&mut self) -> Result<Option<u8>, DecodeError> {
        let mut b = [0u8; 1];
        loop {
            match self.input.read(&mut b) {
                Ok(0) => return Ok(None),
                Ok(_) => {
                    self.offset += 1;
                    return Ok(Some(b[0]));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DecodeError::new(format!("catalog read error: {e}"))),
            }
        }
    }

    fn need_byte(&mut self) -> Result<u8, DecodeError> {
        self.byte()?.ok_or_else(|| {
            DecodeError::new(format!(
                "catalog ends inside a record at byte {}",
                self.offset
            ))
        })
    }

    fn varint_from(&mut self, first: u8) -> Result<u64, DecodeError> {
        let mut v = u64::from(first & 0x7f);
        let mut b = first;
        let mut shift = 7;
        while b & 0x80 != 0 {
            if shift > 63 {
                return Err(DecodeError::new(format!(
                    "catalog varint too long at byte {}",
                    self.offset
                )));
            }
            b = self.need_byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(DecodeError::new(format!(
                    "catalog varint overflows at byte {}",
                    self.offset
                )));
            }
            v |= bits << shift;
            shift += 7;
        }
        Ok(v)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let b = self.need_byte()?;
        self.varint_from(b)
    }

    fn small(&mut self, what: &str, max: u64) -> Result<u64, DecodeError> {
        let v = self.varint()?;
        if v > max {
            return Err(DecodeError::new(format!(
                "catalog record before byte {}: {what} {v} out of range",
                self.offset
            )));
        }
        Ok(v)
    }

    fn record(&mut self, first: u8) -> Result<CatalogEntry, DecodeError> {
        let at = self.offset;
        let shared = self.varint_from(first)?;
        if shared > self.path.len() as u64 {
            return Err(DecodeError::new(format!(
                "catalog record at byte {at}: shares {shared} bytes with a {}-byte path",
                self.path.len()
            )));
        }
        let suffix = self.small("suffix length", MAX_PATH as u64)? as usize;
        if shared as usize + suffix > MAX_PATH {
            return Err(DecodeError::new(format!(
                "catalog record at byte {at}: path longer than {MAX_PATH} bytes"
            )));
        }
        self.path.truncate(shared as usize);
        let start = self.path.len();
        self.path.resize(start + suffix, 0);
        read_full(&mut self.input, &mut self.path[start..])
            .map_err(|e| DecodeError::new(format!("catalog record at byte {at}: path: {e}")))?;
        self.offset += suffix as u64;
        let path = std::str::from_utf8(&self.path)
            .map_err(|_| {
                DecodeError::new(format!("catalog record at byte {at}: path is not UTF-8"))
            })?
            .to_string();
        if !valid_path(&path) {
            return Err(DecodeError::new(format!(
                "catalog record at byte {at}: invalid path {path:?}"
            )));
        }
        let kind = match self.need_byte()? {
            0 => NodeKind::File,
            1 => NodeKind::Dir,
            2 => NodeKind::Symlink,
            3 => NodeKind::Special,
            k => {
                return Err(DecodeError::new(format!(
                    "catalog record at byte {at}: unknown kind {k}"
                )))
            }
        };
        let mode = self.small("mode", 0o7777)? as u32;
        let uid = self.small("uid", u64::from(u32::MAX))? as u32;
        let gid = self.small("gid", u64::from(u32::MAX))? as u32;
        let size = self.varint()?;
        let z = self.varint()?;
        let mtime = ((z >> 1) as i64) ^ -((z & 1) as i64);
        let mtime_nsec = self.small("mtime nanoseconds", 999_999_999)? as u32;
        Ok(CatalogEntry {
            path,
            meta: NodeMeta {
                kind,
                size,
                mode,
                uid,
                gid,
                mtime,
                mtime_nsec,
                atime: mtime,
            },
        })
    }
}

impl<R: Read> Iterator for CatalogDecoder<R> {
    type Item = Result<CatalogEntry, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = match self.byte() {
            Ok(None) => {
                self.done = true;
                return None;
            }
            Ok(Some(first)) => self.record(first),
            Err(e) => Err(e),
        };
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<()> {
    r.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(kind: NodeKind, size: u64, mtime: i64) -> NodeMeta {
        NodeMeta {
            kind,
            size,
            mode: 0o640,
            uid: 1000,
            gid: 100,
            mtime,
            mtime_nsec: 123_456_789,
            atime: mtime,
        }
    }

    #[test]
    fn round_trip_with_prefix_sharing_and_negative_times() {
        let entries = [
            ("etc", meta(NodeKind::Dir, 0, 1_700_000_000)),
            ("etc/hostname", meta(NodeKind::File, 7, -5)),
            ("etc/hosts", meta(NodeKind::File, u64::MAX, i64::MIN)),
            ("etc/ssl/é/x", meta(NodeKind::Symlink, 3, i64::MAX)),
            ("etc/ssl/é/xé", meta(NodeKind::Special, 0, 0)),
            ("var", meta(NodeKind::Dir, 0, 1)),
        ];
        let mut enc = CatalogEncoder::new();
        for (p, m) in &entries {
            assert!(enc.push(p, m));
        }
        assert!(!enc.push("a//b", &entries[0].1));
        assert!(!enc.push("../x", &entries[0].1));
        assert_eq!(enc.entries(), 6);
        let bytes = enc.finish();
        let back: Vec<CatalogEntry> = CatalogDecoder::new(&bytes[..])
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back.len(), entries.len());
        for (b, (p, m)) in back.iter().zip(&entries) {
            assert_eq!(b.path, *p);
            assert_eq!(b.meta, *m);
        }
    }

    #[test]
    fn damaged_streams_are_errors() {
        let mut enc = CatalogEncoder::new();
        enc.push("a/b", &meta(NodeKind::File, 1, 1));
        enc.push("a/c", &meta(NodeKind::File, 1, 1));
        let good = enc.finish();
        assert!(CatalogDecoder::new(&b"VVCAT\x02"[..]).is_err());
        assert!(CatalogDecoder::new(&b"VVC"[..]).is_err());
        // Every truncation either decodes a prefix of the entries or ends in an error.
        for cut in 6..good.len() {
            let r: Vec<_> = CatalogDecoder::new(&good[..cut]).unwrap().collect();
            assert!(r.len() <= 2);
            if cut < good.len() {
                let complete = r.iter().filter(|x| x.is_ok()).count();
                assert!(complete < 2 || cut == good.len());
            }
        }
        // A first record that claims shared bytes.
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(&[3, 1, b'x', 0, 0, 0, 0, 0, 0, 0]);
        let r: Vec<_> = CatalogDecoder::new(&bad[..]).unwrap().collect();
        assert!(r[0].is_err());
    }
}
