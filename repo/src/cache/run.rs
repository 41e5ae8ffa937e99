//! Immutable sorted run files of the local index cache.
//!
//! ```text
//! 0        8   magic "VMVCRUN1"
//! 8        2   record length (u16)
//! 10       6   reserved, 0
//! 16       8   record count (u64)
//! 24       8   block count (u64)
//! 32       ..  blocks of 4096 bytes: records sorted by key, zero padding, CRC-32 of
//!              the first 4092 bytes in the last 4
//! ..       ..  fences: the first 32-byte key of every block
//! end-4    4   CRC-32 of the header and the fences
//! ```
//! A lookup binary-searches the fences (held in memory: 32 bytes per block, under one
//! byte per record) and reads one block. Nothing else of a run is ever in memory.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: &[u8; 8] = b"VMVCRUN1";
const HEADER: usize = 32;
/// Bytes per block, CRC included.
pub const BLOCK: usize = 4096;
const PAYLOAD: usize = BLOCK - 4;
/// Length of a record's key (a chunk id or a pack name).
pub const KEY: usize = 32;

fn bad(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

/// Writes a run from records supplied in strictly increasing key order.
pub struct RunWriter {
    out: BufWriter<File>,
    rec_len: usize,
    per_block: usize,
    block: Vec<u8>,
    in_block: usize,
    fences: Vec<[u8; KEY]>,
    count: u64,
    last: Option<[u8; KEY]>,
}

impl RunWriter {
    /// Starts a run at `path` (a temporary name; the caller renames it when finished).
    pub fn create(path: &Path, rec_len: usize) -> io::Result<Self> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        out.write_all(&[0u8; HEADER])?;
        Ok(RunWriter {
            out,
            rec_len,
            per_block: PAYLOAD / rec_len,
            block: Vec::with_capacity(BLOCK),
            in_block: 0,
            fences: Vec::new(),
            count: 0,
            last: None,
        })
    }

    /// Appends a record (key first); a key not greater than the previous one is skipped,
    /// so duplicates keep their first occurrence.
    pub fn push(&mut self, rec: &[u8]) -> io::Result<()> {
        let mut key = [0u8; KEY];
        key.copy_from_slice(&rec[..KEY]);
        if self.last.is_some_and(|l| l >= key) {
            return Ok(());
        }
        self.last = Some(key);
        if self.in_block == 0 {
            self.fences.push(key);
        }
        self.block.extend_from_slice(&rec[..self.rec_len]);
        self.in_block += 1;
        self.count += 1;
        if self.in_block == self.per_block {
            self.end_block()?;
        }
        Ok(())
    }

    fn end_block(&mut self) -> io::Result<()> {
        self.block.resize(PAYLOAD, 0);
        let crc = crc32fast::hash(&self.block);
        self.block.extend_from_slice(&crc.to_le_bytes());
        self.out.write_all(&self.block)?;
        self.block.clear();
        self.in_block = 0;
        Ok(())
    }

    /// Writes the fences and header, and syncs the file. Returns the record count.
    pub fn finish(mut self) -> io::Result<u64> {
        if self.in_block > 0 {
            self.end_block()?;
        }
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&(self.rec_len as u16).to_le_bytes());
        header.extend_from_slice(&[0u8; 6]);
        header.extend_from_slice(&self.count.to_le_bytes());
        header.extend_from_slice(&(self.fences.len() as u64).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        for f in &self.fences {
            self.out.write_all(f)?;
            crc.update(f);
        }
        self.out.write_all(&crc.finalize().to_le_bytes())?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.write_all_at(&header, 0)?;
        file.sync_all()?;
        Ok(self.count)
    }
}

/// An open run: its file and its fences.
pub struct Run {
    file: File,
    rec_len: usize,
    per_block: usize,
    count: u64,
    fences: Vec<[u8; KEY]>,
}

impl Run {
    /// Opens a run and loads its fences, checking their CRC.
    pub fn open(path: &Path, rec_len: usize) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut header = [0u8; HEADER];
        file.read_exact_at(&mut header, 0)?;
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[i..i + 8]);
            u64::from_le_bytes(b)
        };
        if &header[..8] != MAGIC
            || usize::from(u16::from_le_bytes([header[8], header[9]])) != rec_len
        {
            return Err(bad(path, "not a cache run"));
        }
        let (count, blocks) = (u64_at(16), u64_at(24));
        let expect = (HEADER as u64)
            .checked_add(
                blocks
                    .checked_mul((BLOCK + KEY) as u64)
                    .ok_or_else(|| bad(path, "size"))?,
            )
            .and_then(|v| v.checked_add(4));
        let per_block = PAYLOAD / rec_len;
        if expect != Some(len) || count > blocks * per_block as u64 {
            return Err(bad(path, "inconsistent size"));
        }
        let fence_at = HEADER as u64 + blocks * BLOCK as u64;
        let mut raw = vec![0u8; blocks as usize * KEY + 4];
        file.read_exact_at(&mut raw, fence_at)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        crc.update(&raw[..raw.len() - 4]);
        if crc.finalize().to_le_bytes() != raw[raw.len() - 4..] {
            return Err(bad(path, "fence checksum mismatch"));
        }
        let fences = raw[..raw.len() - 4]
            .chunks_exact(KEY)
            .map(|c| {
                let mut k = [0u8; KEY];
                k.copy_from_slice(c);
                k
            })
            .collect();
        Ok(Run {
            file,
            rec_len,
            per_block,
            count,
            fences,
        })
    }

    /// Number of records.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Reads block `i`, checking its CRC; returns its records.
    fn block(&self, i: usize, buf: &mut [u8; BLOCK]) -> io::Result<usize> {
        self.file
            .read_exact_at(buf, HEADER as u64 + (i * BLOCK) as u64)?;
        if crc32fast::hash(&buf[..PAYLOAD]).to_le_bytes() != buf[PAYLOAD..] {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "cache block checksum mismatch",
            ));
        }
        // Records in a block: all but possibly the last block are full.
        let full = i + 1 < self.fences.len();
        let n = if full {
            self.per_block
        } else {
            (self.count as usize).saturating_sub(i * self.per_block)
        };
        Ok(n.min(self.per_block))
    }

    /// The record with this key, if the run has it.
    pub fn get(&self, key: &[u8; KEY]) -> io::Result<Option<Vec<u8>>> {
        let i = self.fences.partition_point(|f| f <= key);
        if i == 0 {
            return Ok(None);
        }
        let mut buf = [0u8; BLOCK];
        let n = self.block(i - 1, &mut buf)?;
        let recs = &buf[..n * self.rec_len];
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let rec = &recs[mid * self.rec_len..(mid + 1) * self.rec_len];
            match rec[..KEY].cmp(&key[..]) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(Some(rec.to_vec())),
            }
        }
        Ok(None)
    }

    /// A cursor reading records in key order, one block at a time.
    pub fn cursor(&self) -> Cursor<'_> {
        Cursor {
            run: self,
            block: 0,
            buf: Box::new([0u8; BLOCK]),
            n: 0,
            pos: 0,
        }
    }
}

/// Sequential reader over a run (for merging).
pub struct Cursor<'a> {
    run: &'a Run,
    block: usize,
    buf: Box<[u8; BLOCK]>,
    n: usize,
    pos: usize,
}

impl Cursor<'_> {
    /// The current record, loading the next block when needed; `None` at the end.
    pub fn peek(&mut self) -> io::Result<Option<&[u8]>> {
        while self.pos == self.n {
            if self.block == self.run.fences.len() {
                return Ok(None);
            }
            self.n = self.run.block(self.block, &mut self.buf)?;
            self.block += 1;
            self.pos = 0;
        }
        let l = self.run.rec_len;
        Ok(Some(&self.buf[self.pos * l..(self.pos + 1) * l]))
    }

    /// Moves past the current record.
    pub fn advance(&mut self) {
        self.pos += 1;
    }
}

/// Merges two runs into a new one at `path`; on equal keys `newer` wins.
pub fn merge(newer: &Run, older: &Run, path: &Path) -> io::Result<u64> {
    let mut w = RunWriter::create(path, newer.rec_len)?;
    let (mut a, mut b) = (newer.cursor(), older.cursor());
    loop {
        let pick_a = match (a.peek()?, b.peek()?) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(x), Some(y)) => x[..KEY] <= y[..KEY],
        };
        if pick_a {
            let rec = a.peek()?.map(<[u8]>::to_vec).unwrap_or_default();
            w.push(&rec)?;
            a.advance();
        } else {
            let rec = b.peek()?.map(<[u8]>::to_vec).unwrap_or_default();
            w.push(&rec)?;
            b.advance();
        }
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(k: u32, v: u8) -> Vec<u8> {
        let mut r = vec![v; 40];
        r[..KEY].fill(0);
        r[28..32].copy_from_slice(&k.to_be_bytes());
        r
    }

    fn key(k: u32) -> [u8; KEY] {
        let mut out = [0u8; KEY];
        out[28..32].copy_from_slice(&k.to_be_bytes());
        out
    }

    #[test]
    fn write_lookup_merge_and_detect_damage() {
        let d = tempfile::tempdir().unwrap();
        let (pa, pb, pm) = (d.path().join("a"), d.path().join("b"), d.path().join("m"));
        let mut w = RunWriter::create(&pa, 40).unwrap();
        for k in (0..5000).step_by(2) {
            w.push(&rec(k, 1)).unwrap();
        }
        w.push(&rec(4998, 9)).unwrap(); // duplicate key: skipped
        assert_eq!(w.finish().unwrap(), 2500);
        let mut w = RunWriter::create(&pb, 40).unwrap();
        for k in (0..5000).step_by(3) {
            w.push(&rec(k, 2)).unwrap();
        }
        w.finish().unwrap();
        let (a, b) = (Run::open(&pa, 40).unwrap(), Run::open(&pb, 40).unwrap());
        assert_eq!(a.get(&key(10)).unwrap().unwrap()[39], 1);
        assert!(a.get(&key(11)).unwrap().is_none());
        assert!(a.get(&key(99_999)).unwrap().is_none());
        let n = merge(&a, &b, &pm).unwrap();
        let m = Run::open(&pm, 40).unwrap();
        assert_eq!(n, m.count());
        // 0..5000 step 2 ∪ step 3 = 2500 + 1667 - 834 (multiples of 6).
        assert_eq!(m.count(), 2500 + 1667 - 834);
        assert_eq!(m.get(&key(6)).unwrap().unwrap()[39], 1, "newer wins");
        assert_eq!(m.get(&key(9)).unwrap().unwrap()[39], 2);
        let (mut seen, mut c, mut prev) = (0, m.cursor(), None);
        while let Some(r) = c.peek().unwrap() {
            let k = r[..KEY].to_vec();
            assert!(prev.as_ref().is_none_or(|p| *p < k), "keys must increase");
            prev = Some(k);
            seen += 1;
            c.advance();
        }
        assert_eq!(seen, m.count());
        // A flipped byte in a block is detected on lookup, in the fences on open.
        let f = std::fs::OpenOptions::new().write(true).open(&pm).unwrap();
        f.write_all_at(&[0xff], HEADER as u64 + 100).unwrap();
        assert!(Run::open(&pm, 40).unwrap().get(&key(0)).is_err());
        let len = f.metadata().unwrap().len();
        f.write_all_at(&[0xff], len - 10).unwrap();
        assert!(Run::open(&pm, 40).is_err());
        assert!(Run::open(&pa, 41).is_err(), "record length must match");
    }
}
