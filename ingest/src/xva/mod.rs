//! XVA: the archive `xe vm-export` (XenServer, XCP-ng) writes, read as a stream.
//!
//! An XVA is a POSIX tar stream: first `ova.xml` (the VM's database records in XML-RPC
//! form, listing VBDs and VDIs with their `virtual_size`), then, disk after disk, the
//! members `Ref:<id>/<8-digit block number>` of 1 MiB (the last one of a disk shorter
//! when its size is not a multiple of 1 MiB), each followed by `<same name>.checksum`
//! (SHA-1, hex) or `.xxhash` (XXH64 with seed 0, 16 upper-case hex digits). All-zero
//! blocks are omitted, except the first and last block of a disk, which the exporter
//! always writes. Zero-length members are keep-alives: they take a block number and no
//! disk space (xapi's importer places blocks by counting, see [`disk`]). Exports made
//! with `compress=true` (gzip) or `compress=zstd` are decompressed on the fly.
//!
//! Reading ([`open_stream`]) never seeks: the disks share the stream and are read one
//! after the other, each to its end. Memory is bounded by one segment, `ova.xml` (at
//! most 64 MiB) and small headers. Writing ([`XvaWriter`]) is equally streamable.

mod disk;
mod ova;
mod tar;
mod writer;

use crate::sequential::SequentialDisk;
use crate::IngestError;
use std::io::{Cursor, ErrorKind, Read};
use std::sync::{Arc, Mutex};

pub use disk::XvaSeqDisk;
pub use writer::XvaWriter;

/// The format name reported by XVA disks.
pub const FORMAT: &str = "xva";
/// Size of an XVA block.
pub const BLOCK_SIZE: u64 = 1 << 20;
/// Largest zstd window accepted from a compressed export (xapi's zstd uses far less).
const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// One disk (VDI) of an XVA archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XvaDisk {
    /// The VDI's id in `ova.xml` ("Ref:12"), the directory of its blocks in the tar.
    pub ref_id: String,
    /// A stable name, unique within the archive and safe as a file name: the VBD device
    /// ("xvda") when `ova.xml` has one, else the VDI's sanitised `name_label`, else
    /// `disk<N>`; "suspend" for a suspend image.
    pub name: String,
    /// The VDI's `virtual_size` in bytes.
    pub size: u64,
}

/// An XVA stream opened up to and including `ova.xml`.
pub struct XvaArchive {
    /// The raw `ova.xml`, to be stored and written back unchanged on restore.
    pub ova_xml: Vec<u8>,
    /// The disks whose data follows, in stream order.
    pub disks: Vec<XvaDisk>,
    shared: Arc<Mutex<disk::Shared>>,
}

impl std::fmt::Debug for XvaArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XvaArchive")
            .field("ova_xml_len", &self.ova_xml.len())
            .field("disks", &self.disks)
            .finish()
    }
}

/// Reads the tar stream up to and including `ova.xml` and parses the VDIs it lists.
/// `name` ("stdin", a path) appears in errors. A gzip or zstd compressed stream is
/// recognised by its magic number and decompressed.
pub fn open_stream<R: Read + Send + 'static>(
    reader: R,
    name: &str,
) -> Result<XvaArchive, IngestError> {
    open_with(
        Box::new(reader),
        name,
        ZSTD_WINDOW_LOG_MAX,
        ova::MAX_OVA_XML,
    )
}

fn open_with(
    mut reader: Box<dyn Read + Send>,
    name: &str,
    zstd_window_log: u32,
    ova_cap: u64,
) -> Result<XvaArchive, IngestError> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match reader.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(IngestError::Read {
                    what: name.to_string(),
                    offset: got as u64,
                    source,
                })
            }
        }
    }
    let head = Cursor::new(magic[..got].to_vec());
    let joined: Box<dyn Read + Send> = Box::new(head.chain(reader));
    let stream: Box<dyn Read + Send> = if magic[..got].starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(joined))
    } else if magic[..got] == [0x28, 0xb5, 0x2f, 0xfd] {
        let mut d =
            zstd::stream::read::Decoder::new(joined).map_err(|source| IngestError::Read {
                what: name.to_string(),
                offset: 0,
                source,
            })?;
        d.window_log_max(zstd_window_log)
            .map_err(|source| IngestError::Read {
                what: name.to_string(),
                offset: 0,
                source,
            })?;
        Box::new(d)
    } else {
        joined
    };

    let mut tar = tar::TarReader::new(stream, name);
    let first = tar.next_member()?.ok_or_else(|| IngestError::Corrupt {
        what: name.to_string(),
        format: FORMAT,
        offset: 0,
        reason: "empty tar archive: no ova.xml".into(),
    })?;
    if first.name != "ova.xml" {
        return Err(tar.corrupt(
            first.header_offset,
            format!(
                "the first member is {:?}, not ova.xml: not an XVA export",
                first.name
            ),
        ));
    }
    let ova_xml = tar.read_small(&first, ova_cap)?;
    let disks: Vec<XvaDisk> = ova::parse_disks(&ova_xml, name)?
        .into_iter()
        .map(|d| XvaDisk {
            ref_id: d.ref_id,
            name: d.name,
            size: d.size,
        })
        .collect();
    let mut shared = disk::Shared {
        tar,
        current: 0,
        sizes: disks.iter().map(|d| d.size).collect(),
        failed: None,
    };
    shared.start();
    Ok(XvaArchive {
        ova_xml,
        disks,
        shared: Arc::new(Mutex::new(shared)),
    })
}

impl XvaArchive {
    /// One [`SequentialDisk`] per disk, in `disks` order. They share the stream and must
    /// be consumed in that order, each to its end; asking a disk for data before the
    /// ones before it are finished is an error naming the problem. A zero-size disk has
    /// no blocks and yields no segments. Segment sizes must be multiples of 1 MiB.
    pub fn into_disks(self) -> Vec<Box<dyn SequentialDisk>> {
        self.disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                Box::new(XvaSeqDisk::new(
                    Arc::clone(&self.shared),
                    i,
                    &d.ref_id,
                    &d.name,
                    d.size,
                )) as Box<dyn SequentialDisk>
            })
            .collect()
    }
}

/// A minimal `ova.xml` for a VM that did not come from XVA: one halted HVM VM
/// (1 GiB, 1 vCPU, BIOS boot), one VBD + VDI per disk `(name, size)` on one placeholder
/// SR. Returns the XML and the ref ids used for the disks, which sort in `disks` order.
pub fn generate_ova_xml(vm_name: &str, disks: &[(String, u64)]) -> (Vec<u8>, Vec<String>) {
    ova::generate(vm_name, disks)
}

/// The `(ref_id, virtual_size)` of each VDI whose data an archive with this `ova.xml`
/// carries, in the order [`open_stream`] lists the disks.
pub fn ova_disks(ova_xml: &[u8]) -> Result<Vec<(String, u64)>, IngestError> {
    Ok(ova::parse_disks(ova_xml, "ova.xml")?
        .into_iter()
        .map(|d| (d.ref_id, d.size))
        .collect())
}

/// Fuzz entry point: opens `data` as an XVA stream and reads its disks in 1 MiB
/// segments, checking that segments are aligned and their extents cover them exactly.
/// Bounded: at most 64 segments in all are read.
pub fn xva(data: &[u8]) {
    // A small zstd window and ova.xml cap keep memory within the fuzzing allowance even
    // for a compressed input that expands a thousandfold.
    let input = Box::new(Cursor::new(data.to_vec()));
    let Ok(archive) = open_with(input, "fuzz-input", 20, 256 << 10) else {
        return;
    };
    let mut budget = 64u32;
    let mut buf = Vec::new();
    for mut disk in archive.into_disks() {
        let size = disk.size_hint().unwrap_or(0);
        let mut expect = 0u64;
        loop {
            if budget == 0 {
                return;
            }
            budget -= 1;
            match disk.next_segment(BLOCK_SIZE as usize, &mut buf) {
                Ok(Some(seg)) => {
                    assert_eq!(seg.offset, expect, "segments are not consecutive");
                    assert_eq!(buf.len() as u64, seg.len, "buffer length");
                    let mut pos = seg.offset;
                    for e in &seg.extents {
                        assert_eq!(e.offset, pos, "extents are not contiguous");
                        assert!(e.len > 0, "empty extent");
                        pos = e.end();
                    }
                    assert_eq!(
                        pos,
                        seg.offset + seg.len,
                        "extents do not cover the segment"
                    );
                    expect = pos;
                }
                Ok(None) => {
                    assert_eq!(expect, size, "disk ended before its size");
                    break;
                }
                Err(_) => return,
            }
        }
    }
}
