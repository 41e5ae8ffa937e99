//! QEMU copy-on-write images (qcow2, versions 2 and 3), read as [`DiskSource`]s, and
//! written (version 3, sparse) by [`create_writer`].
//!
//! Layout: a header in the first cluster (followed by header extensions and the backing
//! file name) points to the active L1 table; each L1 entry points to an L2 table (one
//! cluster) whose entries map guest clusters to host clusters, compressed clusters or
//! zero clusters. Unallocated clusters come from the backing file. Internal snapshots
//! are ignored: the active L1 table is read. Encrypted images are refused.

mod disk;
mod entry;
mod header;
mod writer;

pub use writer::create_writer;

use crate::detect::ImageFormat;
use crate::image_file::{read_checked, ReadAt};
use crate::open::FileResolver;
use crate::{DiskSource, IngestError};
use disk::{Parts, Qcow2Disk};
use entry::Geometry;
use header::{Header, ParseError};

/// Format name used in error messages.
const FORMAT: &str = "qcow2";
/// Largest L1 table accepted, in bytes (qemu's limit).
const MAX_L1_BYTES: u64 = 32 << 20;

/// Opens a qcow2 image from `file`, reaching its backing disk and external data file
/// through `resolver`. Every table is checked against the file's length before use;
/// damaged metadata gives [`IngestError::Corrupt`] and features vmvault does not read
/// (encryption, unknown incompatible features) give [`IngestError::Unimplemented`],
/// never a misread disk.
pub fn open(
    file: Box<dyn ReadAt>,
    resolver: &mut dyn FileResolver,
) -> Result<Box<dyn DiskSource>, IngestError> {
    let f = file.as_ref();
    let probe = read_checked(
        f,
        FORMAT,
        "qcow2 header",
        0,
        (header::V2_HEADER_LEN as u64).min(f.len()),
    )?;
    // The header may run up to the end of the first cluster: read the whole cluster when
    // cluster_bits is sane (parse_header reports it otherwise).
    let head = match header::be32(&probe, 20)
        .filter(|b| (header::MIN_CLUSTER_BITS..=header::MAX_CLUSTER_BITS).contains(b))
    {
        Some(cb) => read_checked(f, FORMAT, "header cluster", 0, (1u64 << cb).min(f.len()))?,
        None => probe,
    };
    let h = header::parse_header(&head).map_err(|e| parse_err(f, 0, e))?;
    let ext = header::parse_extensions(&head, &h).map_err(|e| parse_err(f, 0, e))?;
    check_features(f, &h, &ext.feature_names)?;

    let geo = Geometry {
        cluster_bits: h.cluster_bits,
        extended: h.extended_l2(),
        external: h.incompatible & header::INCOMPAT_DATA_FILE != 0,
        version: h.version,
    };
    let l1 = read_l1(f, &h)?;

    let data_file = if geo.external {
        let name = ext
            .data_file
            .as_deref()
            .ok_or_else(|| IngestError::Unimplemented {
                what: f.name().to_string(),
                format: FORMAT,
                reason: "uses an external data file but does not name it".into(),
            })?;
        Some(resolver.open_file(f.name(), name)?)
    } else {
        None
    };

    let parent =
        match header::backing_name(&head, &h).map_err(|e| parse_err(f, 0, e))? {
            Some(name) => {
                let fmt =
                    match ext.backing_format.as_deref() {
                        Some(s) => Some(s.parse::<ImageFormat>().map_err(|_| {
                            IngestError::Unimplemented {
                                what: f.name().to_string(),
                                format: FORMAT,
                                reason: format!(
                                    "backing file {name:?} has unsupported format {s:?}"
                                ),
                            }
                        })?),
                        None => None,
                    };
                Some(resolver.open_parent(f.name(), &name, fmt)?)
            }
            None => None,
        };

    Ok(Box::new(Qcow2Disk::new(
        file,
        Parts {
            geo,
            size: h.size,
            l1,
            data_file,
            parent,
            compression: h.compression,
        },
    )))
}

/// Refuses encrypted images, images marked corrupt and unknown incompatible features.
fn check_features(
    f: &dyn ReadAt,
    h: &Header,
    names: &[header::FeatureName],
) -> Result<(), IngestError> {
    let unimpl = |reason: String| IngestError::Unimplemented {
        what: f.name().to_string(),
        format: FORMAT,
        reason,
    };
    if h.crypt_method != 0 {
        let kind = match h.crypt_method {
            1 => "AES",
            2 => "LUKS",
            _ => "unknown",
        };
        return Err(unimpl(format!(
            "the image is encrypted ({kind}, crypt_method {}); encrypted qcow2 images are \
             not supported: decrypt it first with `qemu-img convert`",
            h.crypt_method
        )));
    }
    let unknown = h.incompatible & !header::INCOMPAT_KNOWN;
    if unknown != 0 {
        return Err(unimpl(format!(
            "unknown incompatible features: {}",
            header::describe_unknown(unknown, names)
        )));
    }
    if h.incompatible & header::INCOMPAT_CORRUPT != 0 {
        return Err(corrupt(
            f,
            72,
            "the image is marked corrupt (incompatible feature bit 1); repair it with \
             `qemu-img check -r all` first"
                .into(),
        ));
    }
    if h.extended_l2() && h.cluster_bits < 14 {
        return Err(corrupt(
            f,
            20,
            format!(
                "extended L2 entries need clusters of at least 16 KiB (cluster_bits {})",
                h.cluster_bits
            ),
        ));
    }
    Ok(())
}

/// Reads the active L1 table after checking that it covers the disk, is aligned, fits in
/// the file and is not absurdly large.
fn read_l1(f: &dyn ReadAt, h: &Header) -> Result<Vec<u64>, IngestError> {
    let cs = h.cluster_size();
    let clusters = h.size.div_ceil(cs);
    let needed = clusters.div_ceil(h.l2_entries());
    if u64::from(h.l1_size) < needed {
        return Err(corrupt(
            f,
            36,
            format!(
                "L1 table of {} entries is too small for a disk of {} bytes ({needed} needed)",
                h.l1_size, h.size
            ),
        ));
    }
    let bytes = u64::from(h.l1_size) * 8;
    if bytes > MAX_L1_BYTES {
        return Err(corrupt(
            f,
            36,
            format!("L1 table of {bytes} bytes exceeds the limit of {MAX_L1_BYTES}"),
        ));
    }
    if bytes == 0 {
        return Ok(Vec::new());
    }
    if h.l1_table_offset == 0 || !h.l1_table_offset.is_multiple_of(cs) {
        return Err(corrupt(
            f,
            40,
            format!(
                "L1 table offset {} is not a non-zero multiple of the cluster size {cs}",
                h.l1_table_offset
            ),
        ));
    }
    let raw = read_checked(f, FORMAT, "L1 table", h.l1_table_offset, bytes)?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
        .collect())
}

/// A [`IngestError::Corrupt`] for `file` at `offset`.
fn corrupt(file: &dyn ReadAt, offset: u64, reason: String) -> IngestError {
    ParseError::Corrupt(reason).at(file, FORMAT, offset)
}

/// Turns a structure's [`ParseError`] into the matching [`IngestError`].
fn parse_err(file: &dyn ReadAt, offset: u64, e: ParseError) -> IngestError {
    e.at(file, FORMAT, offset)
}
