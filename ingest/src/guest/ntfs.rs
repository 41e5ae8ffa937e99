//! NTFS guest file systems, read with the `ntfs` crate: paths are looked up through the
//! directory indexes (case-insensitively, by the volume's `$UpCase` table, as Windows
//! does), metadata comes from `$STANDARD_INFORMATION` and the unnamed `$DATA` attribute,
//! and file content is read from that attribute's data runs (resident, non-resident,
//! sparse, split over an attribute list). Nothing is ever written.
//!
//! Not supported, and reported as [`GuestError::Unsupported`] rather than read as
//! garbage: compressed and EFS-encrypted files, and files whose content lives elsewhere
//! (WOF/CompactOS compression, deduplication, cloud placeholders). Alternate data
//! streams are not shown. The `$LogFile` is not replayed: a crash-consistent snapshot
//! reads as the volume was last flushed.

use super::view::{VolumeCursor, VolumeRead};
use super::{guarded, DirEntry, GuestError, GuestFile, GuestFs, NodeKind, NodeMeta, Result};
use ntfs::attribute_value::NtfsAttributeValue;
use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::{
    NtfsAttributeList, NtfsFileAttributeFlags, NtfsFileNamespace, NtfsIndexRoot,
};
use ntfs::{
    Ntfs, NtfsAttributeFlags, NtfsAttributeType, NtfsError, NtfsFile, NtfsFileFlags, NtfsReadSeek,
    NtfsTime,
};
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::rc::Rc;
use std::sync::Arc;

/// File record number of the root directory.
const ROOT: u64 = 5;
/// File records below this number are NTFS metafiles, never listed.
const FIRST_USER_RECORD: u64 = 16;
/// Bytes a single crate step (a lookup in one directory, one step of a directory
/// listing, loading one file record and its attribute list) may read before it is taken
/// for a loop in damaged metadata.
const STEP_BUDGET: u64 = 64 << 20;
/// Accounting cost of one read call beyond its bytes, so that loops of tiny reads are
/// bounded too.
const CALL_COST: u64 = 16;
/// Largest reparse point data NTFS allows.
const MAX_REPARSE: u64 = 16 * 1024 + 8;
/// Longest Interix (ntfs-3g) symlink file read to find its target.
const MAX_INTERIX: u64 = 8 + 2 * 4096;
/// Seconds between 1601-01-01 and 1970-01-01, in 100 ns ticks.
const EPOCH_DIFF_TICKS: i128 = 116_444_736_000_000_000;

const TAG_MOUNT_POINT: u32 = 0xA000_0003;
const TAG_SYMLINK: u32 = 0xA000_000C;
/// Reparse tags whose file content is not in the unnamed `$DATA` attribute.
const TAGS_ELSEWHERE: &[(u32, &str)] = &[
    (0xC000_0004, "NTFS HSM (offline) file"),
    (0x8000_0006, "NTFS HSM (offline) file"),
    (0x8000_0007, "NTFS single-instance-storage file"),
    (0x8000_0013, "NTFS deduplicated file"),
    (0x8000_0017, "NTFS WOF-compressed (CompactOS) file"),
];

/// Read allowance shared by a [`MeteredCursor`] and its owner: the owner refills it
/// before each step, the cursor spends it, and records where a read failed.
pub(super) struct Meter {
    pub(super) left: Cell<u64>,
    tripped: Cell<bool>,
    failed_at: Cell<Option<u64>>,
}

impl Meter {
    /// Allows `bytes` more bytes of reads (each call also costs a little), and forgets any
    /// earlier failure.
    pub(super) fn reset(&self, bytes: u64) {
        self.left.set(bytes);
        self.tripped.set(false);
        self.failed_at.set(None);
    }

    /// Maps an I/O error seen by a crate about `what` to a [`GuestError`]: a spent
    /// allowance or a read past the end of the volume is damage, another read failure is
    /// an I/O error at the offset it happened, anything else is damage described by
    /// `reason`.
    pub(super) fn io_error(&self, what: &str, e: std::io::Error, kind: &str) -> GuestError {
        if self.tripped.get() {
            return GuestError::corrupt(
                what,
                format!(
                    "{kind}: the metadata needs more than {} MiB of reads in one step \
                     (a loop in damaged structures?)",
                    STEP_BUDGET >> 20
                ),
            );
        }
        match self.failed_at.get() {
            Some(offset) if e.kind() == std::io::ErrorKind::UnexpectedEof => GuestError::corrupt(
                what,
                format!("{kind}: the metadata points past the end of the volume (offset {offset})"),
            ),
            Some(offset) => GuestError::Io {
                what: what.to_string(),
                offset,
                source: e,
            },
            None => GuestError::corrupt(what, format!("{kind}: {e}")),
        }
    }
}

/// A [`VolumeCursor`] whose reads spend a [`Meter`]'s allowance and fail once it is
/// spent, so that a crate walking a cyclic structure in a damaged volume stops with an
/// error instead of running forever. Writes always fail.
pub(super) struct MeteredCursor {
    cursor: VolumeCursor,
    pos: u64,
    meter: Rc<Meter>,
}

impl MeteredCursor {
    /// A cursor at offset 0 of `vol`, with an empty allowance, and its meter.
    pub(super) fn new(vol: Arc<dyn VolumeRead>) -> (MeteredCursor, Rc<Meter>) {
        let meter = Rc::new(Meter {
            left: Cell::new(0),
            tripped: Cell::new(false),
            failed_at: Cell::new(None),
        });
        let cursor = MeteredCursor {
            cursor: VolumeCursor::new(vol),
            pos: 0,
            meter: meter.clone(),
        };
        (cursor, meter)
    }
}

impl Read for MeteredCursor {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let cost = (buf.len() as u64).saturating_add(CALL_COST);
        let left = self.meter.left.get();
        if cost > left {
            self.meter.tripped.set(true);
            return Err(std::io::Error::other("read allowance spent"));
        }
        self.meter.left.set(left - cost);
        match self.cursor.read(buf) {
            // Past the end of the volume: zeros, not a short read. The crate turns an
            // end-of-file in the middle of a structure into a panic (a binrw error it
            // calls unreachable); zeros fail its signature and range checks instead.
            Ok(0) if !buf.is_empty() => {
                buf.fill(0);
                self.pos = self.pos.saturating_add(buf.len() as u64);
                Ok(buf.len())
            }
            Ok(n) => {
                self.pos = self.pos.saturating_add(n as u64);
                Ok(n)
            }
            Err(e) => {
                self.meter.failed_at.set(Some(self.pos));
                Err(e)
            }
        }
    }
}

impl Seek for MeteredCursor {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let p = self.cursor.seek(pos)?;
        self.pos = p;
        Ok(p)
    }
}

impl Write for MeteredCursor {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.cursor.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.cursor.flush()
    }
}

/// An NTFS file system, opened read-only. Not `Send` (one reader is shared inside).
///
/// Guarantees: every call into the `ntfs` crate runs under [`guarded`] with a bounded
/// read allowance, so damaged metadata yields [`GuestError`]s naming the volume and the
/// guest path, never a panic or a hang; listings never show DOS 8.3 aliases, `.`, or the
/// root's metafiles (`$MFT`, `$Extend`, ... and any root name starting with `$`).
pub struct NtfsFs {
    ntfs: Ntfs,
    io: RefCell<MeteredCursor>,
    meter: Rc<Meter>,
    vol: Arc<dyn VolumeRead>,
    name: String,
}

/// What an entry is, as far as opening and listing care.
struct Kind {
    kind: NodeKind,
    /// The target of a symlink (reparse point or Interix link), as UTF-8 bytes.
    target: Option<Vec<u8>>,
    /// Why the content cannot be read, for files whose data lives elsewhere.
    elsewhere: Option<&'static str>,
}

/// Where the bytes of an unnamed `$DATA` attribute are.
struct Layout {
    len: u64,
    /// Bytes from here on read as zeros (the valid data length).
    init: u64,
    content: Content,
}

enum Content {
    Resident(Vec<u8>),
    Runs(Vec<Run>),
}

/// A data run: `len` bytes of the stream from `start`, at volume offset `phys` (`None`:
/// sparse, zeros).
#[derive(Debug, Clone, Copy)]
struct Run {
    start: u64,
    len: u64,
    phys: Option<u64>,
}

impl NtfsFs {
    /// Opens the NTFS file system on `vol`: the boot sector, the `$MFT` record, the
    /// `$UpCase` table and the root directory are read and checked now. Damage is an
    /// error naming the volume.
    pub fn open(vol: Arc<dyn VolumeRead>) -> Result<NtfsFs> {
        let name = vol.name().to_string();
        let (mut cursor, meter) = MeteredCursor::new(vol.clone());
        let ntfs = guarded(&name, || {
            meter.reset(STEP_BUDGET);
            let mut ntfs = Ntfs::new(&mut cursor).map_err(|e| map_err(&meter, &name, e))?;
            meter.reset(STEP_BUDGET);
            ntfs.read_upcase_table(&mut cursor)
                .map_err(|e| map_err(&meter, &name, e))?;
            Ok(ntfs)
        })?;
        let fs = NtfsFs {
            ntfs,
            io: RefCell::new(cursor),
            meter,
            vol,
            name,
        };
        let meta = fs.stat("")?;
        if meta.kind != NodeKind::Dir {
            return Err(GuestError::corrupt(
                fs.name.clone(),
                "the root directory's file record is not a directory",
            ));
        }
        Ok(fs)
    }

    fn label(&self, path: &str) -> String {
        format!("{}/{}", self.name, path.trim_start_matches('/'))
    }

    /// Runs `f` under [`guarded`] with the shared reader.
    fn with_io<T>(
        &self,
        label: &str,
        f: impl FnOnce(&mut MeteredCursor) -> Result<T>,
    ) -> Result<T> {
        guarded(label, || {
            let mut io = self
                .io
                .try_borrow_mut()
                .map_err(|_| GuestError::corrupt(label, "the NTFS reader is busy (re-entered)"))?;
            f(&mut io)
        })
    }

    fn err(&self, label: &str, e: NtfsError) -> GuestError {
        map_err(&self.meter, label, e)
    }

    /// Loads file record `frn`, which must be in use.
    fn record(&self, io: &mut MeteredCursor, frn: u64, label: &str) -> Result<NtfsFile<'_>> {
        self.meter.reset(STEP_BUDGET);
        let file = self.ntfs.file(io, frn).map_err(|e| self.err(label, e))?;
        if !file.flags().contains(NtfsFileFlags::IN_USE) {
            return Err(GuestError::corrupt(
                label,
                format!("file record {frn} is not in use"),
            ));
        }
        Ok(file)
    }

    /// The file record that `path` names.
    fn lookup(&self, io: &mut MeteredCursor, path: &str) -> Result<NtfsFile<'_>> {
        let label = self.label(path);
        let comps = super::path_components(path)?;
        let mut file = self.record(io, ROOT, &label)?;
        for comp in comps.iter() {
            if self.kind_of(io, &file, &label)?.kind != NodeKind::Dir {
                return Err(GuestError::NotADirectory(label));
            }
            self.check_index(io, &file, &label)?;
            let in_root = file.file_record_number() == ROOT;
            let frn = {
                self.meter.reset(STEP_BUDGET);
                let index = file.directory_index(io).map_err(|e| self.err(&label, e))?;
                let mut finder = index.finder();
                match NtfsFileNameIndex::find(&mut finder, &self.ntfs, io, comp) {
                    None => return Err(GuestError::NotFound(label)),
                    Some(Err(e)) => return Err(self.err(&label, e)),
                    Some(Ok(entry)) => entry.file_reference().file_record_number(),
                }
            };
            if in_root && (frn < FIRST_USER_RECORD || comp.starts_with('$')) {
                return Err(GuestError::NotFound(label));
            }
            file = self.record(io, frn, &label)?;
        }
        Ok(file)
    }

    /// Checks the directory index of `dir` before the crate reads it: its record size
    /// is what the crate allocates per index record.
    fn check_index(&self, io: &mut MeteredCursor, dir: &NtfsFile<'_>, label: &str) -> Result<()> {
        self.meter.reset(STEP_BUDGET);
        let mut attrs = dir.attributes();
        while let Some(item) = attrs.next(io) {
            let item = item.map_err(|e| self.err(label, e))?;
            let attr = item.to_attribute().map_err(|e| self.err(label, e))?;
            if attr.ty().ok() != Some(NtfsAttributeType::IndexRoot) {
                continue;
            }
            if attr.name().map_err(|e| self.err(label, e))? != "$I30" {
                continue;
            }
            let root = attr
                .resident_structured_value::<NtfsIndexRoot>()
                .map_err(|e| self.err(label, e))?;
            let size = root.index_record_size();
            if !size.is_power_of_two() || !(512..=65536).contains(&size) {
                return Err(GuestError::corrupt(
                    label,
                    format!("the directory index has an invalid record size ({size})"),
                ));
            }
            return Ok(());
        }
        Err(GuestError::corrupt(
            label,
            "the directory has no $I30 index",
        ))
    }

    /// What `file` is: a directory, a file, or a symlink (reparse point symlink or
    /// junction, or an Interix link as ntfs-3g writes them).
    fn kind_of(&self, io: &mut MeteredCursor, file: &NtfsFile<'_>, label: &str) -> Result<Kind> {
        let info = file.info().map_err(|e| self.err(label, e))?;
        let attrs = info.file_attributes();
        let mut out = Kind {
            kind: if file.is_directory() {
                NodeKind::Dir
            } else {
                NodeKind::File
            },
            target: None,
            elsewhere: None,
        };
        if attrs.contains(NtfsFileAttributeFlags::REPARSE_POINT) {
            if let Some(data) = self.reparse_data(io, file, label)? {
                let tag = le_u32(&data, 0).unwrap_or(0);
                if tag == TAG_SYMLINK || tag == TAG_MOUNT_POINT {
                    out.kind = NodeKind::Symlink;
                    out.target =
                        Some(reparse_target(&data, tag == TAG_SYMLINK).ok_or_else(|| {
                            GuestError::corrupt(label, "the symlink's reparse data is damaged")
                        })?);
                } else if let Some((_, what)) = TAGS_ELSEWHERE.iter().find(|(t, _)| *t == tag) {
                    out.elsewhere = Some(what);
                } else if tag & 0xFFFF_0FFF == 0x9000_001A {
                    out.elsewhere = Some("NTFS cloud files placeholder");
                }
            }
        } else if out.kind == NodeKind::File && attrs.contains(NtfsFileAttributeFlags::SYSTEM) {
            // ntfs-3g writes symlinks and device nodes as Interix system files.
            let len = self.data_len(io, file, label)?;
            let layout = if (8..=MAX_INTERIX).contains(&len) {
                match self.layout(io, file, label) {
                    Ok(layout) => Some(layout),
                    Err(GuestError::Unsupported { .. }) => None,
                    Err(e) => return Err(e),
                }
            } else {
                None
            };
            if let Some(layout) = layout {
                let mut data = vec![0u8; layout.len as usize];
                let mut reader = NtfsData {
                    vol: self.vol.clone(),
                    label: label.to_string(),
                    layout,
                };
                let n = reader.read_at(0, &mut data)?;
                data.truncate(n);
                if data.starts_with(b"IntxLNK\x01") {
                    out.kind = NodeKind::Symlink;
                    out.target = Some(utf16_bytes(&data[8..]));
                } else if data.starts_with(b"IntxCHR\0") || data.starts_with(b"IntxBLK\0") {
                    out.kind = NodeKind::Special;
                }
            }
        }
        Ok(out)
    }

    /// The value of the `$REPARSE_POINT` attribute of `file`, if it has one.
    fn reparse_data(
        &self,
        io: &mut MeteredCursor,
        file: &NtfsFile<'_>,
        label: &str,
    ) -> Result<Option<Vec<u8>>> {
        self.meter.reset(STEP_BUDGET);
        let mut attrs = file.attributes();
        while let Some(item) = attrs.next(io) {
            let item = item.map_err(|e| self.err(label, e))?;
            let attr = item.to_attribute().map_err(|e| self.err(label, e))?;
            if attr.ty().ok() != Some(NtfsAttributeType::ReparsePoint) {
                continue;
            }
            let len = attr.value_length();
            if len > MAX_REPARSE {
                return Err(GuestError::corrupt(
                    label,
                    format!("the reparse point data is too long ({len} bytes)"),
                ));
            }
            let mut value = attr.value(io).map_err(|e| self.err(label, e))?;
            let mut data = vec![0u8; len as usize];
            value
                .read_exact(io, &mut data)
                .map_err(|e| self.err(label, e))?;
            return Ok(Some(data));
        }
        Ok(None)
    }

    /// Metadata of `file`.
    fn meta_of(
        &self,
        io: &mut MeteredCursor,
        file: &NtfsFile<'_>,
        label: &str,
    ) -> Result<NodeMeta> {
        let kind = self.kind_of(io, file, label)?;
        let info = file.info().map_err(|e| self.err(label, e))?;
        let (mtime, mtime_nsec) = ntfs_time(info.modification_time());
        let (atime, _) = ntfs_time(info.access_time());
        let read_only = info
            .file_attributes()
            .contains(NtfsFileAttributeFlags::READ_ONLY);
        let (size, mode) = match kind.kind {
            NodeKind::Dir => (0, 0o755),
            NodeKind::Symlink => (kind.target.as_ref().map_or(0, |t| t.len() as u64), 0o777),
            NodeKind::File | NodeKind::Special => {
                let size = self.data_len(io, file, label)?;
                (size, if read_only { 0o444 } else { 0o644 })
            }
        };
        Ok(NodeMeta {
            kind: kind.kind,
            size,
            mode,
            uid: 0,
            gid: 0,
            mtime,
            mtime_nsec,
            atime,
        })
    }

    /// Length of the unnamed `$DATA` attribute of `file` (0 without one).
    fn data_len(&self, io: &mut MeteredCursor, file: &NtfsFile<'_>, label: &str) -> Result<u64> {
        self.meter.reset(STEP_BUDGET);
        match file.data(io, "") {
            None => Ok(0),
            Some(Err(e)) => Err(self.err(label, e)),
            Some(Ok(item)) => Ok(item
                .to_attribute()
                .map_err(|e| self.err(label, e))?
                .value_length()),
        }
    }

    /// Where the content of `file` is: its unnamed `$DATA` attribute's value, resident
    /// or as data runs (all fragments, when an attribute list splits it).
    fn layout(&self, io: &mut MeteredCursor, file: &NtfsFile<'_>, label: &str) -> Result<Layout> {
        let err = |e| self.err(label, e);
        self.meter.reset(STEP_BUDGET);
        let item = match file.data(io, "") {
            None => {
                return Ok(Layout {
                    len: 0,
                    init: 0,
                    content: Content::Resident(Vec::new()),
                })
            }
            Some(item) => item.map_err(err)?,
        };
        let attr = item.to_attribute().map_err(err)?;
        let len = attr.value_length();
        check_flags(attr.flags(), attr.is_resident(), label)?;
        if attr.is_resident() {
            return match attr.value(io).map_err(err)? {
                NtfsAttributeValue::Resident(v) => Ok(Layout {
                    len,
                    init: len,
                    content: Content::Resident(v.data().to_vec()),
                }),
                _ => Err(GuestError::corrupt(
                    label,
                    "a resident $DATA reads as non-resident",
                )),
            };
        }
        let mut has_list = false;
        for attr in file.attributes_raw() {
            if attr.map_err(err)?.ty().ok() == Some(NtfsAttributeType::AttributeList) {
                has_list = true;
                break;
            }
        }
        let mut runs = Vec::new();
        let mut total = 0u64;
        let init = if !has_list {
            match attr.value(io).map_err(err)? {
                NtfsAttributeValue::NonResident(v) => {
                    self.push_runs(v.data_runs(), &mut runs, &mut total, label)?
                }
                _ => {
                    return Err(GuestError::corrupt(
                        label,
                        "a non-resident $DATA reads as another kind",
                    ))
                }
            }
            self.initialized_size(file, &attr, label)?
        } else {
            self.list_runs(io, file, &mut runs, &mut total, label)?
        };
        let init = init.min(len);
        if total < init {
            return Err(GuestError::corrupt(
                label,
                format!("the data runs cover {total} bytes of a {len}-byte file"),
            ));
        }
        Ok(Layout {
            len,
            init,
            content: Content::Runs(runs),
        })
    }

    /// Collects the runs of every fragment of the unnamed `$DATA` of `file` from its
    /// attribute list, in order; returns the valid data length from the first fragment.
    fn list_runs(
        &self,
        io: &mut MeteredCursor,
        file: &NtfsFile<'_>,
        runs: &mut Vec<Run>,
        total: &mut u64,
        label: &str,
    ) -> Result<u64> {
        let err = |e| self.err(label, e);
        let mut list_attr = None;
        for attr in file.attributes_raw() {
            let attr = attr.map_err(err)?;
            if attr.ty().ok() == Some(NtfsAttributeType::AttributeList) {
                list_attr = Some(attr);
                break;
            }
        }
        let Some(list_attr) = list_attr else {
            return Err(GuestError::corrupt(label, "the attribute list vanished"));
        };
        let list = list_attr
            .structured_value::<_, NtfsAttributeList>(io)
            .map_err(err)?;
        let mut entries = list.entries();
        let mut init = None;
        let cluster = u64::from(self.ntfs.cluster_size());
        while let Some(entry) = entries.next(io) {
            let entry = entry.map_err(err)?;
            if entry.ty().ok() != Some(NtfsAttributeType::Data) || entry.name_length() != 0 {
                continue;
            }
            let vcn = u64::try_from(entry.lowest_vcn().value()).ok();
            if vcn.and_then(|v| v.checked_mul(cluster)) != Some(*total) {
                return Err(GuestError::corrupt(
                    label,
                    "the $DATA fragments in the attribute list do not follow each other",
                ));
            }
            let rec = entry.to_file(&self.ntfs, io).map_err(err)?;
            let attr = entry.to_attribute(&rec).map_err(err)?;
            check_flags(attr.flags(), attr.is_resident(), label)?;
            if attr.is_resident() {
                return Err(GuestError::corrupt(
                    label,
                    "a resident $DATA fragment in an attribute list",
                ));
            }
            match attr.value(io).map_err(err)? {
                NtfsAttributeValue::NonResident(v) => {
                    self.push_runs(v.data_runs(), runs, total, label)?
                }
                _ => {
                    return Err(GuestError::corrupt(
                        label,
                        "a $DATA fragment reads as another kind",
                    ))
                }
            }
            if init.is_none() {
                init = Some(self.initialized_size(&rec, &attr, label)?);
            }
            self.meter.reset(STEP_BUDGET);
        }
        init.ok_or_else(|| GuestError::corrupt(label, "the attribute list has no $DATA entry"))
    }

    fn push_runs(
        &self,
        data_runs: ntfs::attribute_value::NtfsDataRuns<'_, '_>,
        runs: &mut Vec<Run>,
        total: &mut u64,
        label: &str,
    ) -> Result<()> {
        for run in data_runs {
            let run = run.map_err(|e| self.err(label, e))?;
            let len = run.allocated_size();
            let phys = run.data_position().value().map(|p| p.get());
            if let Some(p) = phys {
                if p.checked_add(len).is_none_or(|end| end > self.vol.size()) {
                    return Err(GuestError::corrupt(
                        label,
                        format!("a data run ({len} bytes at {p}) lies outside the volume"),
                    ));
                }
            }
            runs.push(Run {
                start: *total,
                len,
                phys,
            });
            *total = total
                .checked_add(len)
                .ok_or_else(|| GuestError::corrupt(label, "the data runs overflow"))?;
        }
        Ok(())
    }

    /// The valid data length of non-resident `attr` in file record `rec` (the crate does
    /// not expose it): read from the record on disk, after the update sequence fixup.
    fn initialized_size(
        &self,
        rec: &NtfsFile<'_>,
        attr: &ntfs::NtfsAttribute<'_, '_>,
        label: &str,
    ) -> Result<u64> {
        let bad = || GuestError::corrupt(label, "cannot locate the $DATA attribute header");
        let rec_pos = rec.position().value().ok_or_else(bad)?.get();
        let attr_pos = attr.position().value().ok_or_else(bad)?.get();
        let mut buf = vec![0u8; self.ntfs.file_record_size() as usize];
        self.vol.read_exact_at(rec_pos, &mut buf)?;
        fixup(&mut buf).ok_or_else(bad)?;
        let off =
            usize::try_from(attr_pos.checked_sub(rec_pos).ok_or_else(bad)?).map_err(|_| bad())?;
        off.checked_add(0x38)
            .and_then(|at| le_u64(&buf, at))
            .ok_or_else(bad)
    }
}

/// Refuses `$DATA` attributes whose bytes are not the file's content.
fn check_flags(flags: NtfsAttributeFlags, resident: bool, label: &str) -> Result<()> {
    if flags.contains(NtfsAttributeFlags::ENCRYPTED) {
        return Err(GuestError::Unsupported {
            what: label.to_string(),
            reason: "NTFS encrypted (EFS) file, not supported".into(),
        });
    }
    // Resident values are never stored compressed, whatever the flag says.
    if flags.contains(NtfsAttributeFlags::COMPRESSED) && !resident {
        return Err(GuestError::Unsupported {
            what: label.to_string(),
            reason: "NTFS compressed file, not supported".into(),
        });
    }
    Ok(())
}

/// Applies the update sequence fixup to a file record read raw from disk.
fn fixup(rec: &mut [u8]) -> Option<()> {
    let usa = usize::from(le_u16(rec, 4)?);
    let count = usize::from(le_u16(rec, 6)?);
    for i in 1..count {
        let end = i.checked_mul(512)?;
        let src = usa.checked_add(2 * i)?;
        if end > rec.len() || src + 2 > rec.len() {
            return None;
        }
        let fix = [rec[src], rec[src + 1]];
        rec[end - 2..end].copy_from_slice(&fix);
    }
    Some(())
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// UTF-16LE bytes as UTF-8 (lossy), up to a NUL.
fn utf16_bytes(b: &[u8]) -> Vec<u8> {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units).into_bytes()
}

/// The target of a symlink or junction reparse point, `/`-separated: the print name, or
/// the substitute name without its `\??\` prefix.
fn reparse_target(data: &[u8], symlink: bool) -> Option<Vec<u8>> {
    let body_len = usize::from(le_u16(data, 4)?);
    let body = data.get(8..8 + body_len)?;
    let sub = (usize::from(le_u16(body, 0)?), usize::from(le_u16(body, 2)?));
    let print = (usize::from(le_u16(body, 4)?), usize::from(le_u16(body, 6)?));
    let buf = body.get(if symlink { 12 } else { 8 }..)?;
    let (off, len) = if print.1 > 0 { print } else { sub };
    let raw = buf.get(off..off.checked_add(len)?)?;
    let mut s = String::from_utf8(utf16_bytes(raw)).ok()?;
    if let Some(rest) = s.strip_prefix("\\??\\") {
        s = rest.to_string();
    }
    let s = s.replace('\\', "/");
    if s.is_empty() {
        return None;
    }
    Some(s.into_bytes())
}

/// An NTFS time (100 ns ticks since 1601-01-01) as Unix seconds and nanoseconds.
fn ntfs_time(t: NtfsTime) -> (i64, u32) {
    let ticks = i128::from(t.nt_timestamp()) - EPOCH_DIFF_TICKS;
    let secs = ticks.div_euclid(10_000_000);
    let nsec = ticks.rem_euclid(10_000_000) * 100;
    (
        i64::try_from(secs).unwrap_or(i64::MAX),
        u32::try_from(nsec).unwrap_or(0),
    )
}

/// Maps a crate error about `what` to a [`GuestError`].
fn map_err(meter: &Meter, what: &str, e: NtfsError) -> GuestError {
    match e {
        NtfsError::Io(io) => meter.io_error(what, io, "NTFS"),
        NtfsError::NotADirectory { .. } => GuestError::NotADirectory(what.to_string()),
        other => GuestError::corrupt(what, format!("NTFS: {other}")),
    }
}

impl GuestFs for NtfsFs {
    fn fs_type(&self) -> &'static str {
        "ntfs"
    }

    fn stat(&self, path: &str) -> Result<NodeMeta> {
        let label = self.label(path);
        self.with_io(&label, |io| {
            let file = self.lookup(io, path)?;
            self.meta_of(io, &file, &label)
        })
    }

    fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let label = self.label(path);
        self.with_io(&label, |io| {
            let dir = self.lookup(io, path)?;
            if self.kind_of(io, &dir, &label)?.kind != NodeKind::Dir {
                return Err(GuestError::NotADirectory(label.clone()));
            }
            self.check_index(io, &dir, &label)?;
            let in_root = dir.file_record_number() == ROOT;
            let mut found: Vec<(String, u64)> = Vec::new();
            {
                let mut seen = HashSet::new();
                self.meter.reset(STEP_BUDGET);
                let index = dir.directory_index(io).map_err(|e| self.err(&label, e))?;
                let mut entries = index.entries();
                loop {
                    self.meter.reset(STEP_BUDGET);
                    let Some(entry) = entries.next(io) else { break };
                    let entry = entry.map_err(|e| self.err(&label, e))?;
                    let frn = entry.file_reference().file_record_number();
                    let Some(key) = entry.key() else { continue };
                    let key = key.map_err(|e| self.err(&label, e))?;
                    if key.namespace() == NtfsFileNamespace::Dos {
                        continue;
                    }
                    let name = key.name().to_string_lossy();
                    if name == "." || name == ".." {
                        continue;
                    }
                    if in_root && (frn < FIRST_USER_RECORD || name.starts_with('$')) {
                        continue;
                    }
                    if name.is_empty() || name.contains('/') || name.contains('\0') {
                        return Err(GuestError::corrupt(
                            label.clone(),
                            "a directory entry has an invalid name",
                        ));
                    }
                    if !seen.insert((frn, name.clone())) {
                        return Err(GuestError::corrupt(
                            label.clone(),
                            format!("the directory index repeats {name:?} (a loop?)"),
                        ));
                    }
                    found.push((name, frn));
                }
            }
            let mut out = Vec::with_capacity(found.len());
            for (name, frn) in found {
                let child = format!("{}/{}", label.trim_end_matches('/'), name);
                let file = self.record(io, frn, &child)?;
                let meta = self.meta_of(io, &file, &child)?;
                out.push(DirEntry { name, meta });
            }
            Ok(out)
        })
    }

    fn read_link(&self, path: &str) -> Result<Vec<u8>> {
        let label = self.label(path);
        self.with_io(&label, |io| {
            let file = self.lookup(io, path)?;
            match self.kind_of(io, &file, &label)?.target {
                Some(t) => Ok(t),
                None => Err(GuestError::WrongKind {
                    path: label.clone(),
                    reason: "not a symbolic link".into(),
                }),
            }
        })
    }

    fn open(&self, path: &str) -> Result<Box<dyn GuestFile + '_>> {
        let label = self.label(path);
        let layout = self.with_io(&label, |io| {
            let file = self.lookup(io, path)?;
            let kind = self.kind_of(io, &file, &label)?;
            match kind.kind {
                NodeKind::File => {}
                NodeKind::Dir => return Err(GuestError::IsADirectory(label.clone())),
                NodeKind::Symlink => {
                    return Err(GuestError::WrongKind {
                        path: label.clone(),
                        reason: "a symbolic link or junction has no content to read".into(),
                    })
                }
                NodeKind::Special => {
                    return Err(GuestError::WrongKind {
                        path: label.clone(),
                        reason: "a device node has no content to read".into(),
                    })
                }
            }
            if let Some(what) = kind.elsewhere {
                return Err(GuestError::Unsupported {
                    what: label.clone(),
                    reason: format!("{what}, not supported"),
                });
            }
            self.layout(io, &file, &label)
        })?;
        Ok(Box::new(NtfsData {
            vol: self.vol.clone(),
            label,
            layout,
        }))
    }
}

/// An open NTFS file: its data runs, resolved at open; reads go straight to the volume,
/// binary-searching the runs, so any access pattern costs O(log runs) per read.
struct NtfsData {
    vol: Arc<dyn VolumeRead>,
    label: String,
    layout: Layout,
}

impl GuestFile for NtfsData {
    fn len(&self) -> u64 {
        self.layout.len
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let len = self.layout.len;
        if offset >= len || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(len - offset).unwrap_or(usize::MAX));
        let buf = &mut buf[..want];
        let runs = match &self.layout.content {
            Content::Resident(data) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                let src = data.get(start..).unwrap_or(&[]);
                let n = src.len().min(want);
                buf[..n].copy_from_slice(&src[..n]);
                buf[n..].fill(0);
                return Ok(want);
            }
            Content::Runs(runs) => runs,
        };
        let init = self.layout.init;
        let mut done = 0usize;
        while done < want {
            let pos = offset + done as u64;
            if pos >= init {
                buf[done..].fill(0);
                break;
            }
            let idx = runs.partition_point(|r| r.start + r.len <= pos);
            let Some(run) = runs.get(idx) else {
                return Err(GuestError::corrupt(
                    self.label.clone(),
                    format!("no data run covers offset {pos}"),
                ));
            };
            let in_run = pos - run.start;
            let n = ((want - done) as u64).min(run.len - in_run).min(init - pos) as usize;
            let dst = &mut buf[done..done + n];
            match run.phys {
                None => dst.fill(0),
                Some(p) => self
                    .vol
                    .read_exact_at(p + in_run, dst)
                    .map_err(|e| match e {
                        GuestError::Io { source, .. } => GuestError::Io {
                            what: self.label.clone(),
                            offset: pos,
                            source,
                        },
                        other => other,
                    })?,
            }
            done += n;
        }
        Ok(want)
    }
}
