//! Writing an XVA stream: `ova.xml`, then each disk's non-zero 1 MiB blocks (plus the
//! first and last, which xapi always expects) with `.checksum` (SHA-1) members, then the
//! tar end. Only `Write` is needed, so the output can be a pipe.

use super::disk::hex;
use super::tar::{build_header, padding, BLOCK};
use super::{ova, BLOCK_SIZE};
use crate::write::{check_order, write_err};
use crate::IngestError;
use std::io::{BufWriter, Write};

/// Writes an XVA archive to a stream.
pub struct XvaWriter<W: Write + Send> {
    out: BufWriter<W>,
    name: String,
    disks: Vec<(String, u64)>,
    /// Index of the disk being written; `disks.len()` once all are finished.
    current: usize,
    /// Next allowed offset in the current disk.
    next: u64,
    /// Number of the block held in `block`.
    block_no: u64,
    block: Vec<u8>,
    /// Bytes written so far.
    written: u64,
}

fn invalid(what: &str, msg: String) -> IngestError {
    IngestError::Write {
        what: what.to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, msg),
    }
}

impl<W: Write + Send> XvaWriter<W> {
    /// Starts the archive and writes `ova_xml` (the stored one when the VM came from
    /// XVA, else from [`super::generate_ova_xml`]). `disks` are `(ref_id, size)` in
    /// order; they must be exactly the disks `ova_xml` lists (see [`super::ova_disks`]),
    /// since an importer expects data for those and no others. `name` ("stdout", a
    /// path) appears in errors.
    pub fn new(
        out: W,
        name: &str,
        ova_xml: &[u8],
        disks: &[(String, u64)],
    ) -> Result<Self, IngestError> {
        if ova_xml.len() as u64 > ova::MAX_OVA_XML {
            return Err(invalid(name, "ova.xml is too large".into()));
        }
        let listed = super::ova_disks(ova_xml)?;
        if listed != disks {
            return Err(invalid(
                name,
                format!("internal error: ova.xml lists disks {listed:?} but {disks:?} were given"),
            ));
        }
        for (r, _) in disks {
            if r.is_empty() || r.len() > 80 || r.contains('/') || r.contains('\0') {
                return Err(invalid(
                    name,
                    format!("VDI id {r:?} cannot name a tar member"),
                ));
            }
        }
        let mut w = XvaWriter {
            out: BufWriter::with_capacity(256 << 10, out),
            name: name.to_string(),
            disks: disks.to_vec(),
            current: 0,
            next: 0,
            block_no: 0,
            block: vec![0u8; BLOCK_SIZE as usize],
            written: 0,
        };
        w.member("ova.xml", ova_xml)?;
        Ok(w)
    }

    fn member(&mut self, member: &str, data: &[u8]) -> Result<(), IngestError> {
        let header = build_header(member, data.len() as u64).map_err(|m| invalid(&self.name, m))?;
        let pad = padding(data.len() as u64) as usize;
        let err = write_err(&self.name);
        self.out.write_all(&header).map_err(&err)?;
        self.out.write_all(data).map_err(&err)?;
        self.out.write_all(&[0u8; BLOCK][..pad]).map_err(&err)?;
        self.written += (BLOCK + data.len() + pad) as u64;
        Ok(())
    }

    fn check_disk(&self, index: usize) -> Result<u64, IngestError> {
        if index != self.current || index >= self.disks.len() {
            return Err(invalid(
                &self.name,
                format!(
                    "internal error: data for disk {index} while disk {} is being written \
                     (disks are written in order, each ended with finish_disk)",
                    self.current
                ),
            ));
        }
        Ok(self.disks[index].1)
    }

    /// Length of block `n` of a disk of `size` bytes.
    fn block_len(size: u64, n: u64) -> usize {
        (size - n * BLOCK_SIZE).min(BLOCK_SIZE) as usize
    }

    /// Writes the held block if it holds data, or is the first or the last block.
    fn flush_block(&mut self, force: bool) -> Result<(), IngestError> {
        let size = self.disks[self.current].1;
        let n = self.block_no;
        let len = Self::block_len(size, n);
        let last = (size - 1) / BLOCK_SIZE;
        let data = &self.block[..len];
        if force || n == 0 || n == last || data.iter().any(|&b| b != 0) {
            use sha1::{Digest, Sha1};
            let sum = hex(&Sha1::digest(data));
            let base = format!("{}/{n:08}", self.disks[self.current].0);
            let block = std::mem::take(&mut self.block);
            let r = self
                .member(&base, &block[..len])
                .and_then(|()| self.member(&format!("{base}.checksum"), sum.as_bytes()));
            self.block = block;
            r?;
        }
        self.block.fill(0);
        Ok(())
    }

    /// Data of disk `index` at `offset`: offsets increase within a disk and writes do
    /// not overlap; disks are written in order. Bytes never written read as zero.
    pub fn write_data(
        &mut self,
        index: usize,
        offset: u64,
        data: &[u8],
    ) -> Result<(), IngestError> {
        let size = self.check_disk(index)?;
        check_order(&self.name, self.next, offset, data.len(), size)?;
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let n = pos / BLOCK_SIZE;
            if n != self.block_no {
                self.flush_block(false)?;
                self.block_no = n;
            }
            let within = (pos % BLOCK_SIZE) as usize;
            let k = rest.len().min(BLOCK_SIZE as usize - within);
            self.block[within..within + k].copy_from_slice(&rest[..k]);
            pos += k as u64;
            rest = &rest[k..];
        }
        self.next = pos;
        Ok(())
    }

    /// Ends disk `index`: writes the held block, and the last block (zeros if nothing
    /// was written there), which an XVA always contains. A zero-size disk has no blocks.
    pub fn finish_disk(&mut self, index: usize) -> Result<(), IngestError> {
        let size = self.check_disk(index)?;
        if size > 0 {
            let last = (size - 1) / BLOCK_SIZE;
            self.flush_block(false)?;
            if self.block_no != last {
                self.block_no = last;
                self.flush_block(true)?;
            }
        }
        self.current += 1;
        self.next = 0;
        self.block_no = 0;
        self.block.fill(0);
        Ok(())
    }

    /// Ends the tar stream (two zero blocks) and flushes; returns the bytes written.
    /// Every disk must have been ended with [`XvaWriter::finish_disk`].
    pub fn finish(mut self) -> Result<u64, IngestError> {
        if self.current != self.disks.len() {
            return Err(invalid(
                &self.name,
                format!(
                    "internal error: disk {} of {} was not finished",
                    self.current,
                    self.disks.len()
                ),
            ));
        }
        let err = write_err(&self.name);
        self.out.write_all(&[0u8; 2 * BLOCK]).map_err(&err)?;
        self.written += 2 * BLOCK as u64;
        self.out.flush().map_err(&err)?;
        Ok(self.written)
    }
}
