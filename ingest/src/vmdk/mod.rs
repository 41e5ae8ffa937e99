//! VMware VMDK images, read as [`DiskSource`]s and written (monolithicSparse,
//! streamOptimized) by [`create_writer`].
//!
//! A VMDK is a text descriptor listing extents (in its own file, or embedded in a sparse
//! extent), each flat (plain bytes in a file), sparse (a "KDMV" file with grain
//! directory and grain tables, optionally deflate-compressed with markers:
//! streamOptimized) or zero. A delta disk names its parent with `parentFileNameHint`;
//! grains it does not allocate come from the parent. ESXi's own delta formats
//! (vmfsSparse "COWD", seSparse) are recognised and refused, never misread.

mod descriptor;
mod sparse;
mod writer;

pub use writer::{create_stream_writer, create_writer, VmdkSubformat};

use crate::image_file::{read_checked, ReadAt};
use crate::open::FileResolver;
use crate::{push_merged, DiskSource, Extent, ExtentKind, IngestError};
use descriptor::{Descriptor, ExtentType};
use sparse::{GrainKind, SparseExtent, SECTOR};

/// Format name used in error messages.
const FORMAT: &str = "VMDK";

/// How one part of the disk is stored.
enum Store {
    Flat { file: Box<dyn ReadAt>, offset: u64 },
    Sparse(SparseExtent),
    Zero,
}

/// One extent: `len` guest bytes from `start`.
struct Part {
    start: u64,
    len: u64,
    store: Store,
}

/// A VMDK disk: its extents in order, and a parent for delta disks.
pub struct VmdkDisk {
    name: String,
    size: u64,
    parts: Vec<Part>,
    parent: Option<Box<dyn DiskSource>>,
    format_name: &'static str,
    runs: Vec<(u64, u64, GrainKind)>,
}

/// Opens a VMDK from `file`: a text descriptor, a sparse extent file ("KDMV", which may
/// embed its descriptor), or an ESXi delta ("COWD", refused). Extent files and the
/// parent disk are reached through `resolver`.
pub fn open(
    file: Box<dyn ReadAt>,
    resolver: &mut dyn FileResolver,
) -> Result<Box<dyn DiskSource>, IngestError> {
    let name = file.name().to_string();
    let head = read_checked(file.as_ref(), FORMAT, "header", 0, file.len().min(512))?;
    if head.starts_with(b"COWD") {
        return Err(unimplemented(
            &name,
            "ESXi vmfsSparse (\"COWD\") delta disks are not supported yet; consolidate the \
             snapshot or convert the disk with `vmkfstools -i` first",
        ));
    }
    if head.starts_with(b"KDMV") {
        let (extent, embedded) = SparseExtent::open(file)?;
        let desc = match embedded {
            Some(bytes) => Some(descriptor::parse(&bytes).map_err(|r| corrupt(&name, 0, r))?),
            None => None,
        };
        let create_type = desc
            .as_ref()
            .map(|d| d.create_type.clone())
            .unwrap_or_else(|| "monolithicSparse".into());
        let parent = match desc.as_ref().and_then(|d| d.parent_hint.clone()) {
            Some(hint) => Some(resolver.open_parent(&name, &hint, None)?),
            None => None,
        };
        let size = extent.size();
        return Ok(Box::new(VmdkDisk {
            name,
            size,
            parts: vec![Part {
                start: 0,
                len: size,
                store: Store::Sparse(extent),
            }],
            parent,
            format_name: static_name(&create_type),
            runs: Vec::new(),
        }));
    }
    if file.len() > descriptor::MAX_DESCRIPTOR {
        return Err(corrupt(
            &name,
            0,
            "neither a sparse extent nor a descriptor of at most 1 MiB".into(),
        ));
    }
    let text = read_checked(file.as_ref(), FORMAT, "descriptor", 0, file.len())?;
    let desc = descriptor::parse(&text).map_err(|r| corrupt(&name, 0, r))?;
    open_descriptor(&name, &desc, resolver)
}

fn open_descriptor(
    name: &str,
    desc: &Descriptor,
    resolver: &mut dyn FileResolver,
) -> Result<Box<dyn DiskSource>, IngestError> {
    if desc.create_type.eq_ignore_ascii_case("seSparse") {
        return Err(unimplemented(
            name,
            "ESXi seSparse delta disks are not supported yet; consolidate the snapshot first",
        ));
    }
    let mut parts = Vec::new();
    let mut start = 0u64;
    for e in &desc.extents {
        let len = e
            .sectors
            .checked_mul(SECTOR)
            .filter(|l| start.checked_add(*l).is_some())
            .ok_or_else(|| corrupt(name, 0, format!("extent of {} sectors", e.sectors)))?;
        if e.no_access {
            return Err(unimplemented(name, "a NOACCESS extent cannot be read"));
        }
        let file_name = e.file.clone().unwrap_or_default();
        let store = match &e.kind {
            ExtentType::Zero => Store::Zero,
            ExtentType::Flat => Store::Flat {
                file: resolver.open_file(name, &file_name)?,
                offset: e
                    .offset
                    .checked_mul(SECTOR)
                    .ok_or_else(|| corrupt(name, 0, "flat extent offset overflows".into()))?,
            },
            ExtentType::Sparse => {
                let f = resolver.open_file(name, &file_name)?;
                let extent = SparseExtent::open(f)?.0;
                // The grain tables must cover every sector the descriptor gives the
                // extent, or part of the disk would have no mapping at all.
                if extent.size() < len {
                    return Err(corrupt(
                        &file_name,
                        12,
                        format!(
                            "sparse extent holds {} bytes, the descriptor {name} gives it {len}",
                            extent.size()
                        ),
                    ));
                }
                Store::Sparse(extent)
            }
            ExtentType::Other(t) => {
                return Err(unimplemented(
                    name,
                    &format!(
                        "{t} extents (ESXi delta or raw device mapping) are not supported yet"
                    ),
                ))
            }
        };
        parts.push(Part { start, len, store });
        start += len;
    }
    if parts.is_empty() {
        return Err(corrupt(name, 0, "descriptor lists no extents".into()));
    }
    let parent = match &desc.parent_hint {
        Some(hint) => Some(resolver.open_parent(name, hint, None)?),
        None => None,
    };
    Ok(Box::new(VmdkDisk {
        name: name.to_string(),
        size: start,
        parts,
        parent,
        format_name: static_name(&desc.create_type),
        runs: Vec::new(),
    }))
}

fn static_name(create_type: &str) -> &'static str {
    match create_type.to_ascii_lowercase().as_str() {
        "monolithicsparse" => "vmdk (monolithicSparse)",
        "streamoptimized" => "vmdk (streamOptimized)",
        "monolithicflat" => "vmdk (monolithicFlat)",
        "twogbmaxextentsparse" => "vmdk (twoGbMaxExtentSparse)",
        "twogbmaxextentflat" => "vmdk (twoGbMaxExtentFlat)",
        "vmfs" | "vmfsthin" | "vmfsthick" | "vmfspreallocated" | "vmfseagerzeroedthick" => {
            "vmdk (vmfs)"
        }
        _ => "vmdk",
    }
}

fn corrupt(what: &str, offset: u64, reason: String) -> IngestError {
    IngestError::Corrupt {
        what: what.to_string(),
        format: FORMAT,
        offset,
        reason,
    }
}

fn unimplemented(what: &str, reason: &str) -> IngestError {
    IngestError::Unimplemented {
        what: what.to_string(),
        format: FORMAT,
        reason: reason.to_string(),
    }
}

impl VmdkDisk {
    /// Adds the parent's view of `[offset, offset + len)` (or unallocated) to `out`.
    fn parent_extents(
        &mut self,
        offset: u64,
        len: u64,
        out: &mut Vec<Extent>,
    ) -> Result<(), IngestError> {
        let end = offset + len;
        let from_parent = match self.parent.as_mut() {
            Some(p) if offset < p.size() => {
                let pe = p.extents(offset, len)?;
                let covered = pe.last().map_or(offset, Extent::end);
                for e in pe {
                    push_merged(out, e);
                }
                covered
            }
            _ => offset,
        };
        push_merged(
            out,
            Extent {
                offset: from_parent,
                len: end - from_parent,
                kind: ExtentKind::Unallocated,
            },
        );
        Ok(())
    }
}

impl DiskSource for VmdkDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn extents(&mut self, offset: u64, len: u64) -> Result<Vec<Extent>, IngestError> {
        let end = offset.saturating_add(len).min(self.size);
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.parts.len() {
            let (p_start, p_len) = (self.parts[i].start, self.parts[i].len);
            let (from, to) = (offset.max(p_start), end.min(p_start + p_len));
            if from < to {
                match &mut self.parts[i].store {
                    Store::Flat { file, offset: base } => {
                        // Holes in a flat extent file are never read.
                        let at = *base + (from - p_start);
                        if at.saturating_add(to - from) > file.len() {
                            return Err(corrupt(
                                file.name(),
                                file.len(),
                                "flat extent file is shorter than the descriptor says".into(),
                            ));
                        }
                        let ranges = file
                            .data_ranges(at, to - from)
                            .unwrap_or_else(|| vec![(at, to - from)]);
                        let mut pos = from;
                        for (d, l) in ranges {
                            let d_guest = from + (d - at);
                            let gap = Extent {
                                offset: pos,
                                len: d_guest - pos,
                                kind: ExtentKind::Unallocated,
                            };
                            push_merged(&mut out, gap);
                            push_merged(
                                &mut out,
                                Extent {
                                    offset: d_guest,
                                    len: l,
                                    kind: ExtentKind::Data,
                                },
                            );
                            pos = d_guest + l;
                        }
                        push_merged(
                            &mut out,
                            Extent {
                                offset: pos,
                                len: to - pos,
                                kind: ExtentKind::Unallocated,
                            },
                        );
                    }
                    Store::Zero => push_merged(
                        &mut out,
                        Extent {
                            offset: from,
                            len: to - from,
                            kind: ExtentKind::Zero,
                        },
                    ),
                    Store::Sparse(s) => {
                        let mut runs = std::mem::take(&mut self.runs);
                        runs.clear();
                        let mapped = s.map(from - p_start, to - from, &mut runs);
                        let result = mapped.and_then(|()| {
                            for &(o, l, k) in &runs {
                                let at = p_start + o;
                                let kind = match k {
                                    GrainKind::Unallocated => {
                                        self.parent_extents(at, l, &mut out)?;
                                        continue;
                                    }
                                    GrainKind::Zero => ExtentKind::Zero,
                                    _ => ExtentKind::Data,
                                };
                                push_merged(
                                    &mut out,
                                    Extent {
                                        offset: at,
                                        len: l,
                                        kind,
                                    },
                                );
                            }
                            Ok(())
                        });
                        self.runs = runs;
                        result?;
                    }
                }
            }
            i += 1;
        }
        Ok(out)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IngestError> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.size)
            .ok_or_else(|| IngestError::Read {
                what: self.name.clone(),
                offset,
                source: std::io::ErrorKind::UnexpectedEof.into(),
            })?;
        for i in 0..self.parts.len() {
            let (p_start, p_len) = (self.parts[i].start, self.parts[i].len);
            let (from, to) = (offset.max(p_start), end.min(p_start + p_len));
            if from >= to {
                continue;
            }
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            match &mut self.parts[i].store {
                Store::Zero => dst.fill(0),
                Store::Flat { file, offset: base } => {
                    let at = *base + (from - p_start);
                    let avail = file.len().saturating_sub(at).min(dst.len() as u64) as usize;
                    crate::image_file::read_into(file.as_ref(), FORMAT, at, &mut dst[..avail])?;
                    if avail < dst.len() {
                        return Err(corrupt(
                            file.name(),
                            at + avail as u64,
                            "flat extent file is shorter than the descriptor says".into(),
                        ));
                    }
                }
                Store::Sparse(s) => {
                    let mut runs = Vec::new();
                    s.map(from - p_start, to - from, &mut runs)?;
                    for (o, l, k) in runs {
                        let at = p_start + o;
                        let piece = &mut dst[(at - from) as usize..(at - from + l) as usize];
                        match (k, self.parent.as_mut()) {
                            (GrainKind::Unallocated, Some(p)) => {
                                let psize = p.size();
                                let inside = psize.saturating_sub(at).min(l) as usize;
                                if inside > 0 {
                                    p.read_at(at, &mut piece[..inside])?;
                                }
                                piece[inside..].fill(0);
                            }
                            _ => s.read_run(k, o, piece)?,
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn format_name(&self) -> &'static str {
        self.format_name
    }
}
