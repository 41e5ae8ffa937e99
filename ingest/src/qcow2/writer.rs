//! Writing a disk as a sparse qcow2 version 3 image (64 KiB clusters, 16-bit refcounts,
//! no compression).
//!
//! Layout, all appended front to back: the header cluster (written last, by seeking back
//! to 0), then for each L2 range its data clusters followed by its L2 table, then the L1
//! table, the refcount table and the refcount blocks. Every cluster of the file is used
//! exactly once, so all refcounts are 1 and the refcount blocks are generated at the end
//! without keeping any per-cluster state. Memory: the L1 table, one L2 table and one
//! cluster of data.

use super::entry::COPIED;
use super::header::{build_header, NewHeader};
use super::MAX_L1_BYTES;
use crate::write::{check_order, write_err, ImageWriter};
use crate::IngestError;
use std::io::{Seek, SeekFrom, Write};

/// log2 of the cluster size written.
const CLUSTER_BITS: u32 = 16;
/// Bytes per cluster written.
const CS: u64 = 1 << CLUSTER_BITS;
/// L2 entries per table.
const L2_ENTRIES: u64 = CS / 8;
/// Refcount entries (16 bits) per refcount block.
const RC_ENTRIES: u64 = CS * 8 / 16;

/// Creates a writer of a qcow2 image of a disk of `size` bytes into `out` (called `name`
/// in errors). Clusters never written, or written all zero, stay unallocated; the image
/// is complete only after [`ImageWriter::finish`]. The header records the size rounded
/// up to a multiple of 512 bytes, since qemu ignores a partial last sector.
pub fn create_writer<W: Write + Seek + Send + 'static>(
    mut out: W,
    name: &str,
    size: u64,
) -> Result<Box<dyn ImageWriter>, IngestError> {
    let header_size = size.checked_next_multiple_of(512).unwrap_or(u64::MAX);
    let l1_size = header_size.div_ceil(CS).div_ceil(L2_ENTRIES);
    if l1_size * 8 > MAX_L1_BYTES {
        return Err(IngestError::Write {
            what: name.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a disk of {size} bytes is too large for a qcow2 image"),
            ),
        });
    }
    // Placeholder for the header cluster.
    out.write_all(&[0u8; CS as usize])
        .map_err(write_err(name))?;
    Ok(Box::new(Qcow2Writer {
        out,
        name: name.to_string(),
        size,
        header_size,
        next: 0,
        end: CS,
        l1: vec![0; l1_size as usize],
        l2: vec![0; L2_ENTRIES as usize],
        l2_index: None,
        cur: None,
        buf: vec![0; CS as usize],
    }))
}

struct Qcow2Writer<W> {
    out: W,
    name: String,
    size: u64,
    /// The size the header records.
    header_size: u64,
    /// End of the last write_data (ordering check).
    next: u64,
    /// End of the output file: where the next cluster goes.
    end: u64,
    l1: Vec<u64>,
    /// The L2 table being filled.
    l2: Vec<u64>,
    /// Its index in the L1 table.
    l2_index: Option<u64>,
    /// Guest cluster held in `buf`.
    cur: Option<u64>,
    buf: Vec<u8>,
}

impl<W: Write + Seek + Send> Qcow2Writer<W> {
    fn append(&mut self, bytes: &[u8]) -> Result<(), IngestError> {
        self.out.write_all(bytes).map_err(write_err(&self.name))?;
        self.end += bytes.len() as u64;
        Ok(())
    }

    /// Writes the buffered cluster unless it is all zeros.
    fn flush_cluster(&mut self) -> Result<(), IngestError> {
        let Some(idx) = self.cur.take() else {
            return Ok(());
        };
        if self.buf.iter().all(|b| *b == 0) {
            return Ok(());
        }
        let l1i = idx / L2_ENTRIES;
        if self.l2_index != Some(l1i) {
            self.finish_l2()?;
            self.l2_index = Some(l1i);
            self.l2.fill(0);
        }
        self.l2[(idx % L2_ENTRIES) as usize] = self.end | COPIED;
        let buf = std::mem::take(&mut self.buf);
        let r = self.append(&buf);
        self.buf = buf;
        r
    }

    /// Appends the current L2 table and points its L1 entry at it.
    fn finish_l2(&mut self) -> Result<(), IngestError> {
        let Some(l1i) = self.l2_index.take() else {
            return Ok(());
        };
        let bytes: Vec<u8> = self.l2.iter().flat_map(|e| e.to_be_bytes()).collect();
        self.l1[l1i as usize] = self.end | COPIED;
        self.append(&bytes)
    }
}

/// Refcount blocks and refcount table clusters needed for `n` other clusters.
fn refcount_layout(n: u64) -> (u64, u64) {
    let (mut blocks, mut table) = (0u64, 1u64);
    loop {
        let total = n + blocks + table;
        let b = total.div_ceil(RC_ENTRIES);
        let t = (b * 8).div_ceil(CS).max(1);
        if (b, t) == (blocks, table) {
            return (blocks, table);
        }
        (blocks, table) = (b, t);
    }
}

impl<W: Write + Seek + Send> ImageWriter for Qcow2Writer<W> {
    fn write_data(&mut self, offset: u64, data: &[u8]) -> Result<(), IngestError> {
        check_order(&self.name, self.next, offset, data.len(), self.size)?;
        self.next = offset + data.len() as u64;
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let idx = pos / CS;
            if self.cur != Some(idx) {
                self.flush_cluster()?;
                self.cur = Some(idx);
                self.buf.fill(0);
            }
            let within = (pos % CS) as usize;
            let n = rest.len().min(CS as usize - within);
            self.buf[within..within + n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            pos += n as u64;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<u64, IngestError> {
        self.flush_cluster()?;
        self.finish_l2()?;

        // An empty L1 table (a disk of size 0) takes no cluster and has offset 0, as
        // qemu-img writes it.
        let l1_offset = if self.l1.is_empty() { 0 } else { self.end };
        let l1_clusters = (self.l1.len() as u64 * 8).div_ceil(CS);
        let mut l1_bytes: Vec<u8> = self.l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        l1_bytes.resize((l1_clusters * CS) as usize, 0);
        self.append(&l1_bytes)?;

        let (blocks, table_clusters) = refcount_layout(self.end / CS);
        let table_offset = self.end;
        let first_block = table_offset + table_clusters * CS;
        let total = self.end / CS + table_clusters + blocks;
        let mut cluster = vec![0u8; CS as usize];
        for t in 0..table_clusters {
            cluster.fill(0);
            for (i, slot) in cluster.chunks_exact_mut(8).enumerate() {
                let b = t * (CS / 8) + i as u64;
                if b < blocks {
                    slot.copy_from_slice(&(first_block + b * CS).to_be_bytes());
                }
            }
            self.append(&cluster)?;
        }
        for b in 0..blocks {
            cluster.fill(0);
            for (i, slot) in cluster.chunks_exact_mut(2).enumerate() {
                if b * RC_ENTRIES + (i as u64) < total {
                    slot.copy_from_slice(&1u16.to_be_bytes());
                }
            }
            self.append(&cluster)?;
        }
        debug_assert_eq!(self.end / CS, total);

        let header = build_header(&NewHeader {
            cluster_bits: CLUSTER_BITS,
            size: self.header_size,
            l1_size: self.l1.len() as u32,
            l1_table_offset: l1_offset,
            refcount_table_offset: table_offset,
            refcount_table_clusters: table_clusters as u32,
        });
        let name = self.name.clone();
        self.out
            .seek(SeekFrom::Start(0))
            .map_err(write_err(&name))?;
        self.out.write_all(&header).map_err(write_err(&name))?;
        self.out.flush().map_err(write_err(&name))?;
        Ok(self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcount_layout_covers_itself() {
        for n in [
            1,
            5,
            RC_ENTRIES - 2,
            RC_ENTRIES - 1,
            RC_ENTRIES,
            10 * RC_ENTRIES,
        ] {
            let (b, t) = refcount_layout(n);
            assert!(b * RC_ENTRIES >= n + b + t);
            assert!((b - 1) * RC_ENTRIES < n + b + t);
            assert!(t * (CS / 8) >= b);
        }
    }
}
