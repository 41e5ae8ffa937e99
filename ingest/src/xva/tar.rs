//! A minimal, hostile-input-safe POSIX tar reader and writer for XVA streams.
//!
//! Only what XVA archives need is read: regular files (`'0'`/NUL), directory entries
//! (skipped), GNU long names (`'L'`) and pax headers (`'x'` for `path`/`size`, `'g'`
//! ignored). Every other member type is refused. Header parsing is pure (on 512-byte
//! blocks); [`TarReader`] does the I/O.

use crate::IngestError;
use std::io::{ErrorKind, Read};

/// Size of a tar block.
pub const BLOCK: usize = 512;
/// Longest GNU long name or pax `path` accepted.
const MAX_LONG_NAME: u64 = 4096;
/// Largest pax extended header accepted.
const MAX_PAX: u64 = 64 << 10;
/// Largest member size accepted (tar's own limit for the octal field is 8 GiB; base-256
/// may say more, but no XVA member is anywhere near this).
const MAX_MEMBER: u64 = 1 << 40;

/// What one 512-byte header block says.
#[derive(Debug, PartialEq, Eq)]
pub enum RawHeader {
    /// An all-zero block: end of archive.
    End,
    /// A member header.
    Member {
        /// The name (ustar prefix joined), without trailing NULs.
        name: String,
        /// The data length in bytes.
        size: u64,
        /// The type flag byte.
        kind: u8,
    },
}

/// Parses a numeric header field: octal digits (leading spaces, NUL/space terminated) or
/// GNU base-256 (first byte's high bit set, positive values only).
pub fn parse_number(field: &[u8]) -> Result<u64, String> {
    let Some(&first) = field.first() else {
        return Err("empty numeric field".into());
    };
    if first & 0x80 != 0 {
        if first & 0x40 != 0 {
            return Err("negative base-256 number".into());
        }
        let mut v: u64 = u64::from(first & 0x3f);
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or("base-256 number overflows 64 bits")?;
        }
        return Ok(v);
    }
    let mut v: u64 = 0;
    let mut seen = false;
    let mut i = 0;
    while i < field.len() && field[i] == b' ' {
        i += 1;
    }
    while i < field.len() {
        let b = field[i];
        match b {
            b'0'..=b'7' => {
                v = v
                    .checked_mul(8)
                    .and_then(|v| v.checked_add(u64::from(b - b'0')))
                    .ok_or("octal number overflows 64 bits")?;
                seen = true;
            }
            0 | b' ' => break,
            _ => return Err(format!("invalid byte {b:#04x} in octal field")),
        }
        i += 1;
    }
    // After the terminator only NULs and spaces may follow.
    if field[i..].iter().any(|&b| b != 0 && b != b' ') {
        return Err("garbage after octal number".into());
    }
    if !seen {
        // An empty field reads as zero (some writers leave unused fields blank).
        return Ok(0);
    }
    Ok(v)
}

fn cstr(field: &[u8]) -> Result<String, String> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8(field[..end].to_vec()).map_err(|_| "member name is not UTF-8".to_string())
}

/// Parses one header block, verifying its checksum.
pub fn parse_header(block: &[u8; BLOCK]) -> Result<RawHeader, String> {
    if block.iter().all(|&b| b == 0) {
        return Ok(RawHeader::End);
    }
    let stored = parse_number(&block[148..156]).map_err(|e| format!("checksum field: {e}"))?;
    let unsigned: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    let signed: i64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                i64::from(b as i8)
            }
        })
        .sum();
    if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
        return Err(format!(
            "header checksum mismatch (stored {stored}, computed {unsigned})"
        ));
    }
    let size = parse_number(&block[124..136]).map_err(|e| format!("size field: {e}"))?;
    if size > MAX_MEMBER {
        return Err(format!("member size {size} is absurd"));
    }
    let mut name = cstr(&block[0..100])?;
    // POSIX ustar: a prefix joined with '/'. GNU tar's "ustar  \0" uses that area for
    // other fields, so only the POSIX magic is trusted.
    if &block[257..263] == b"ustar\0" {
        let prefix = cstr(&block[345..500])?;
        if !prefix.is_empty() {
            name = format!("{prefix}/{name}");
        }
    }
    Ok(RawHeader::Member {
        name,
        size,
        kind: block[156],
    })
}

/// Reads the `path` and `size` records of a pax extended header.
pub fn parse_pax(data: &[u8]) -> Result<(Option<String>, Option<u64>), String> {
    let mut path = None;
    let mut size = None;
    let mut rest = data;
    while !rest.is_empty() {
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or("pax record without length")?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("bad pax record length")?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err("pax record length out of range".into());
        }
        let record = &rest[sp + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or("pax record without '='")?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => {
                path = Some(String::from_utf8(value.to_vec()).map_err(|_| "pax path is not UTF-8")?)
            }
            b"size" => {
                let v: u64 = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or("bad pax size")?;
                if v > MAX_MEMBER {
                    return Err(format!("pax size {v} is absurd"));
                }
                size = Some(v)
            }
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok((path, size))
}

/// Builds a ustar header for a regular file `name` of `size` bytes.
pub fn build_header(name: &str, size: u64) -> Result<[u8; BLOCK], String> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 99 || bytes.contains(&0) {
        return Err(format!("member name {name:?} does not fit a tar header"));
    }
    if size >= 1 << 33 {
        return Err(format!("member size {size} does not fit a tar header"));
    }
    let mut h = [0u8; BLOCK];
    h[..bytes.len()].copy_from_slice(bytes);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    Ok(h)
}

/// Padding after `size` bytes of member data.
pub fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// A regular-file member whose header has been read.
#[derive(Clone, Debug)]
pub struct Member {
    /// Full name (long names resolved).
    pub name: String,
    /// Data length.
    pub size: u64,
    /// Stream offset of its (first) header block.
    pub header_offset: u64,
}

/// Reads members of a tar stream one after the other.
pub struct TarReader {
    reader: Box<dyn Read + Send>,
    what: String,
    /// Bytes consumed from the stream.
    pos: u64,
    /// Data bytes of the current member not yet read.
    remaining: u64,
    /// Padding after the current member's data.
    pad: u64,
}

impl TarReader {
    /// Wraps a stream; `what` names it in errors.
    pub fn new(reader: Box<dyn Read + Send>, what: &str) -> Self {
        TarReader {
            reader,
            what: what.to_string(),
            pos: 0,
            remaining: 0,
            pad: 0,
        }
    }

    /// The stream's name in errors.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// A [`IngestError::Corrupt`] at `offset`.
    pub fn corrupt(&self, offset: u64, reason: String) -> IngestError {
        IngestError::Corrupt {
            what: self.what.clone(),
            format: "xva",
            offset,
            reason,
        }
    }

    /// Fills `buf` completely; `Ok(false)` if the stream ended before the first byte
    /// (only when `eof_ok`), an error if it ended later.
    fn fill(&mut self, buf: &mut [u8], eof_ok: bool, context: &str) -> Result<bool, IngestError> {
        let mut done = 0;
        while done < buf.len() {
            match self.reader.read(&mut buf[done..]) {
                Ok(0) => {
                    if done == 0 && eof_ok {
                        return Ok(false);
                    }
                    return Err(IngestError::Truncated {
                        what: format!("{} ({context})", self.what),
                        expected: self.pos + buf.len() as u64,
                        got: self.pos + done as u64,
                    });
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(IngestError::Read {
                        what: self.what.clone(),
                        offset: self.pos + done as u64,
                        source,
                    })
                }
            }
        }
        self.pos += buf.len() as u64;
        Ok(true)
    }

    fn skip(&mut self, mut n: u64, context: &str) -> Result<(), IngestError> {
        let mut scratch = [0u8; 8192];
        while n > 0 {
            let k = n.min(scratch.len() as u64) as usize;
            self.fill(&mut scratch[..k], false, context)?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes of the current member's data.
    pub fn read_data(&mut self, buf: &mut [u8], member: &str) -> Result<(), IngestError> {
        if buf.len() as u64 > self.remaining {
            return Err(self.corrupt(
                self.pos,
                format!("internal: read past the end of member {member}"),
            ));
        }
        self.fill(buf, false, &format!("in member {member}"))?;
        self.remaining -= buf.len() as u64;
        Ok(())
    }

    /// Reads a whole small member (at most `cap` bytes) into memory, growing the buffer
    /// as data arrives rather than trusting the header's size.
    pub fn read_small(&mut self, member: &Member, cap: u64) -> Result<Vec<u8>, IngestError> {
        if member.size > cap {
            return Err(self.corrupt(
                member.header_offset,
                format!(
                    "member {} is {} bytes, more than the {cap} accepted",
                    member.name, member.size
                ),
            ));
        }
        let mut out = Vec::new();
        let mut chunk = [0u8; 16384];
        while self.remaining > 0 {
            let k = self.remaining.min(chunk.len() as u64) as usize;
            self.read_data(&mut chunk[..k], &member.name)?;
            out.extend_from_slice(&chunk[..k]);
        }
        Ok(out)
    }

    /// Skips the rest of the current member (data and padding) and reads the next
    /// regular-file member's header; `None` at the end of the archive (a zero block or
    /// a clean end of stream between members).
    pub fn next_member(&mut self) -> Result<Option<Member>, IngestError> {
        let rest = self.remaining + self.pad;
        self.remaining = 0;
        self.pad = 0;
        self.skip(rest, "skipping member data")?;
        let mut long_name: Option<String> = None;
        let mut pax_size: Option<u64> = None;
        loop {
            let header_offset = self.pos;
            let mut block = [0u8; BLOCK];
            if !self.fill(&mut block, true, "tar header")? {
                if long_name.is_some() || pax_size.is_some() {
                    return Err(
                        self.corrupt(header_offset, "stream ends after an extended header".into())
                    );
                }
                return Ok(None);
            }
            let header =
                parse_header(&block).map_err(|reason| self.corrupt(header_offset, reason))?;
            let (name, size, kind) = match header {
                RawHeader::End => return Ok(None),
                RawHeader::Member { name, size, kind } => (name, size, kind),
            };
            match kind {
                b'0' | 0 | b'7' => {
                    let size = pax_size.unwrap_or(size);
                    let name = long_name.unwrap_or(name);
                    self.remaining = size;
                    self.pad = padding(size);
                    return Ok(Some(Member {
                        name,
                        size,
                        header_offset,
                    }));
                }
                b'5' => {
                    // A directory entry ("Ref:12/") carries no data.
                    self.skip(size + padding(size), "directory entry")?;
                    long_name = None;
                    pax_size = None;
                }
                b'L' => {
                    if size > MAX_LONG_NAME {
                        return Err(self.corrupt(
                            header_offset,
                            format!("GNU long name of {size} bytes is too long"),
                        ));
                    }
                    let data = self.read_ext(size)?;
                    long_name =
                        Some(cstr(&data).map_err(|reason| self.corrupt(header_offset, reason))?);
                }
                b'x' => {
                    if size > MAX_PAX {
                        return Err(self.corrupt(
                            header_offset,
                            format!("pax header of {size} bytes is too large"),
                        ));
                    }
                    let data = self.read_ext(size)?;
                    let (path, psize) =
                        parse_pax(&data).map_err(|reason| self.corrupt(header_offset, reason))?;
                    if let Some(p) = path {
                        if p.len() as u64 > MAX_LONG_NAME {
                            return Err(self.corrupt(header_offset, "pax path too long".into()));
                        }
                        long_name = Some(p);
                    }
                    if psize.is_some() {
                        pax_size = psize;
                    }
                }
                b'g' => {
                    if size > MAX_PAX {
                        return Err(self.corrupt(
                            header_offset,
                            format!("pax global header of {size} bytes is too large"),
                        ));
                    }
                    self.skip(size + padding(size), "pax global header")?;
                }
                other => {
                    return Err(IngestError::Unimplemented {
                        what: self.what.clone(),
                        format: "xva",
                        reason: format!(
                            "tar member {name:?} at offset {header_offset} has type {:?}, \
                             which an XVA archive never contains",
                            other as char
                        ),
                    })
                }
            }
        }
    }

    fn read_ext(&mut self, size: u64) -> Result<Vec<u8>, IngestError> {
        let mut data = vec![0u8; size as usize];
        self.fill(&mut data, false, "extended header")?;
        self.skip(padding(size), "extended header")?;
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_number(b"00000001750\0").unwrap(), 0o1750);
        assert_eq!(parse_number(b"   17 \0").unwrap(), 0o17);
        assert_eq!(parse_number(b"\0\0\0").unwrap(), 0);
        assert!(parse_number(b"0009\0").is_err());
        assert!(parse_number(b"12 3").is_err());
        let mut b256 = [0u8; 12];
        b256[0] = 0x80;
        b256[11] = 5;
        b256[10] = 1;
        assert_eq!(parse_number(&b256).unwrap(), 261);
        b256[0] = 0xff;
        assert!(parse_number(&b256).is_err());
        let big = [
            0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ];
        assert!(parse_number(&big).is_err());
    }

    #[test]
    fn header_round_trip_and_checksum() {
        let h = build_header("Ref:3/00000001", 1 << 20).unwrap();
        match parse_header(&h).unwrap() {
            RawHeader::Member { name, size, kind } => {
                assert_eq!(name, "Ref:3/00000001");
                assert_eq!(size, 1 << 20);
                assert_eq!(kind, b'0');
            }
            other => panic!("{other:?}"),
        }
        let mut bad = h;
        bad[0] ^= 1;
        assert!(parse_header(&bad).unwrap_err().contains("checksum"));
        assert_eq!(parse_header(&[0; BLOCK]).unwrap(), RawHeader::End);
    }

    #[test]
    fn pax_records() {
        let (p, s) = parse_pax(b"21 path=Ref:1/000001\n12 size=300\n").unwrap();
        assert_eq!(p.as_deref(), Some("Ref:1/000001"));
        assert_eq!(s, Some(300));
        assert!(parse_pax(b"99 path=x\n").is_err());
        assert!(parse_pax(b"x").is_err());
    }
}
