//! LVM2 inside a guest: physical volume labels, the volume group metadata they carry (a
//! text format), and read-only views of linear logical volumes.
//!
//! Only what is needed to read linear LVs without device-mapper is supported: the label
//! (`LABELONE`/`LVM2 001` in one of the first four sectors), the PV header with its data
//! and metadata area lists, the metadata area header and its first (current) text
//! location, a circular buffer, and the text itself. Everything is checked: label,
//! area header and text checksums (LVM's own CRC32 variant), offsets against the volume,
//! list lengths against the label sector, the text's size against [`MAX_METADATA_TEXT`],
//! nesting against [`MAX_DEPTH`] and its items against [`MAX_ITEMS`].
//!
//! Logical volumes that are not plain linear ones (striped, mirrored, RAID, thin, cache,
//! VDO, snapshot copy-on-write stores...), that lie on physical volumes not present, or
//! whose extents fall outside their PV are not returned; each yields a problem naming it.

use super::partition::crc32_update;
use super::view::{out_of_range, VolumeRead};
use super::{GuestError, Result};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

/// Sectors at the start of a volume searched for an LVM label.
const LABEL_SCAN_SECTORS: u64 = 4;
/// LVM's sector size: labels, PV headers and the metadata's `pe_start` and
/// `extent_size` are counted in 512-byte sectors.
const SECTOR: u64 = 512;
const LABEL_ID: &[u8; 8] = b"LABELONE";
const LVM2_LABEL_TYPE: &[u8; 8] = b"LVM2 001";
const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
const MDA_HEADER_SIZE: u64 = 512;
/// `raw_locn` flag: this metadata area is to be ignored.
const RAW_LOCN_IGNORED: u32 = 1;
/// Start value of LVM's CRC (`INITIAL_CRC` in lvm2's `lib/misc/crc.h`).
const INITIAL_CRC: u32 = 0xf597_a6cf;
/// Largest metadata text read, in bytes (real ones are a few KiB to a few hundred KiB).
pub const MAX_METADATA_TEXT: u64 = 16 << 20;
/// Deepest nesting of sections accepted in metadata text.
pub const MAX_DEPTH: usize = 32;
/// Most items (settings, sections and list elements together) accepted in metadata text.
pub const MAX_ITEMS: usize = 1_000_000;

/// LVM's checksum: the reflected CRC32 of polynomial 0xEDB88320, started at
/// `0xf597a6cf`, with no final inversion (lvm2's `calc_crc`).
fn lvm_crc(initial: u32, data: &[u8]) -> u32 {
    crc32_update(initial, data)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off.saturating_add(4))
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .unwrap_or(0)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off.saturating_add(8))
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// Drops the dashes of an LVM UUID (labels store 32 characters, metadata writes them in
/// groups separated by `-`).
fn bare_uuid(s: &str) -> String {
    s.chars().filter(|&c| c != '-').collect()
}

/// True for a name LVM accepts for a VG or LV: 1 to 127 characters of `A-Za-z0-9+_.-`,
/// not starting with `-`, not `.` or `..`. Such a name is safe in a path component.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 127
        && !s.starts_with('-')
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'_' | b'.' | b'-'))
}

// ---------------------------------------------------------------------------------------
// Public types.

/// An LVM2 physical volume label and what its metadata areas say.
#[derive(Debug)]
pub struct PvLabel {
    /// The PV's UUID as stored in the label: 32 characters, no dashes.
    pub uuid: String,
    /// The sector (0 to 3) the label was found in.
    pub label_sector: u64,
    /// The volume size recorded when the PV was created, in bytes (0: not recorded).
    pub device_size: u64,
    /// Byte offset of the first data area (where extents start) according to the label;
    /// 0 when the label lists none. The metadata's `pe_start` takes precedence for
    /// mapping extents.
    pub pe_start: u64,
    /// The VG metadata of the first metadata area that could be read and parsed; `None`
    /// for a PV in no VG, a PV created without metadata copies, or when every area is
    /// damaged (see `problems`).
    pub metadata: Option<VgMetadata>,
    /// Metadata areas that could not be read or parsed.
    pub problems: Vec<GuestError>,
}

/// A volume group's metadata: the parts needed to map linear logical volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VgMetadata {
    /// The VG's name: a valid LVM name (safe as a path component).
    pub name: String,
    /// The VG's UUID as written (with dashes; empty if absent).
    pub id: String,
    /// Sequence number: higher is newer.
    pub seqno: u64,
    /// Extent size in 512-byte sectors, never 0.
    pub extent_size: u64,
    /// The PVs of the VG, in metadata order.
    pub physical_volumes: Vec<PvMeta>,
    /// The LVs of the VG, hidden ones included, in metadata order.
    pub logical_volumes: Vec<LvMeta>,
}

/// One entry of a VG's `physical_volumes` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvMeta {
    /// The entry's key (`pv0`), which segments refer to.
    pub key: String,
    /// The PV's UUID as written (with dashes).
    pub id: String,
    /// Where extents start on the PV, in 512-byte sectors.
    pub pe_start: u64,
    /// Number of extents on the PV.
    pub pe_count: u64,
}

/// One entry of a VG's `logical_volumes` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvMeta {
    /// The LV's name (its section name).
    pub name: String,
    /// The LV's UUID as written (empty if absent).
    pub id: String,
    /// Status flags (`READ`, `WRITE`, `VISIBLE`...).
    pub status: Vec<String>,
    /// Segments, sorted by `start_extent`.
    pub segments: Vec<SegmentMeta>,
    /// Why the LV's entry is unusable (an invalid name, a malformed segment, a wrong
    /// `segment_count`), if it is.
    pub damage: Option<String>,
}

impl LvMeta {
    /// True when the LV is user-visible (status `VISIBLE`); hidden ones are internal
    /// parts of other LVs (RAID images, thin pool data, snapshot records...).
    pub fn visible(&self) -> bool {
        self.status.iter().any(|s| s == "VISIBLE")
    }
}

/// One segment of a logical volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentMeta {
    /// First logical extent covered.
    pub start_extent: u64,
    /// Number of logical extents covered.
    pub extent_count: u64,
    /// Segment type (`striped` for linear and striped, `thin`, `raid1`, `snapshot`...).
    pub seg_type: String,
    /// Number of stripes (1 for linear); 0 when the type has none.
    pub stripe_count: u64,
    /// `(PV key, first physical extent)` of each stripe.
    pub stripes: Vec<(String, u64)>,
    /// For a `snapshot` segment: the LV holding the copy-on-write store.
    pub cow_store: Option<String>,
}

/// A linear logical volume found on a disk's PVs, readable through `view`.
#[derive(Clone)]
pub struct LogicalVolume {
    /// The VG's name (a valid LVM name).
    pub vg: String,
    /// The LV's name (a valid LVM name).
    pub name: String,
    /// Size in bytes: the LV's extents times the extent size; equals `view.size()`.
    pub size: u64,
    /// The LV's bytes, called `"{disk}/lvm/{vg}/{lv}"`.
    pub view: Arc<dyn VolumeRead>,
}

impl fmt::Debug for LogicalVolume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogicalVolume")
            .field("vg", &self.vg)
            .field("name", &self.name)
            .field("size", &self.size)
            .field("view", &self.view.name())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------
// Label, PV header, metadata areas.

/// Reads the LVM2 PV label of `vol`, if it has one, and the VG metadata of its first
/// readable metadata area.
///
/// `Ok(None)`: no `LABELONE` label of type `LVM2 001` in sectors 0 to 3. `Err`: read
/// errors, and a label that exists but is damaged (wrong sector, bad checksum, malformed
/// PV header) with no good label after it. Damaged metadata areas are not errors: they
/// are listed in [`PvLabel::problems`] and the next area is tried. Never panics.
pub fn read_pv_label(vol: &dyn VolumeRead) -> Result<Option<PvLabel>> {
    let name = vol.name();
    let mut fault = None;
    for s in 0..LABEL_SCAN_SECTORS {
        let offset = s * SECTOR;
        if offset + SECTOR > vol.size() {
            break;
        }
        let mut sector = [0u8; SECTOR as usize];
        vol.read_exact_at(offset, &mut sector)?;
        if &sector[..8] != LABEL_ID || &sector[24..32] != LVM2_LABEL_TYPE {
            continue;
        }
        let what = format!("{name}: LVM label at sector {s}");
        let said = u64_at(&sector, 8);
        let stored = u32_at(&sector, 16);
        let computed = lvm_crc(INITIAL_CRC, &sector[20..]);
        let header = u32_at(&sector, 20) as usize;
        let problem = if said != s {
            Some(format!("the label says it lies in sector {said}"))
        } else if stored != computed {
            Some(format!(
                "label checksum mismatch (stored 0x{stored:08x}, computed 0x{computed:08x})"
            ))
        } else if header < 32 || header > sector.len() - 40 {
            Some(format!("PV header offset {header} is out of range"))
        } else {
            None
        };
        if let Some(reason) = problem {
            if fault.is_none() {
                fault = Some(GuestError::corrupt(what, reason));
            }
            continue;
        }
        return match parse_pv_header(vol, s, &sector, header) {
            Ok(label) => Ok(Some(label)),
            Err(reason) => Err(GuestError::corrupt(what, reason)),
        };
    }
    match fault {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// Reads a list of `disk_locn`s (offset, size; ended by a zero offset) at `*pos` of the
/// label sector.
fn locn_list(
    sector: &[u8],
    pos: &mut usize,
    list: &str,
) -> std::result::Result<Vec<(u64, u64)>, String> {
    let mut out = Vec::new();
    loop {
        if pos.saturating_add(16) > sector.len() {
            return Err(format!(
                "the {list} list runs past the end of the label sector"
            ));
        }
        let offset = u64_at(sector, *pos);
        let size = u64_at(sector, *pos + 8);
        *pos += 16;
        if offset == 0 {
            return Ok(out);
        }
        out.push((offset, size));
    }
}

fn parse_pv_header(
    vol: &dyn VolumeRead,
    label_sector: u64,
    sector: &[u8],
    header: usize,
) -> std::result::Result<PvLabel, String> {
    let uuid_bytes = sector.get(header..header + 32).unwrap_or_default();
    let uuid = String::from_utf8_lossy(uuid_bytes)
        .trim_end_matches('\0')
        .to_string();
    let device_size = u64_at(sector, header + 32);
    let mut pos = header + 40;
    let data_areas = locn_list(sector, &mut pos, "data area")?;
    let metadata_areas = locn_list(sector, &mut pos, "metadata area")?;
    let mut label = PvLabel {
        uuid,
        label_sector,
        device_size,
        pe_start: data_areas.first().map_or(0, |d| d.0),
        metadata: None,
        problems: Vec::new(),
    };
    for (offset, size) in metadata_areas {
        match read_mda(vol, offset, size) {
            Ok(Some(vg)) => {
                label.metadata = Some(vg);
                break;
            }
            Ok(None) => {}
            Err(e) => label.problems.push(e),
        }
    }
    Ok(label)
}

/// Reads the metadata area at byte `start` of `vol`, `size` bytes long: `Ok(None)` when
/// it holds no metadata (a PV in no VG, an ignored area).
fn read_mda(vol: &dyn VolumeRead, start: u64, size: u64) -> Result<Option<VgMetadata>> {
    let what = format!("{}: LVM metadata area at byte {start}", vol.name());
    let bad = |reason: String| Err(GuestError::corrupt(what.clone(), reason));
    if size <= MDA_HEADER_SIZE || start.checked_add(size).is_none_or(|end| end > vol.size()) {
        return bad(format!(
            "the area ({size} bytes) lies outside the volume ({} bytes) or is too small",
            vol.size()
        ));
    }
    let mut h = [0u8; MDA_HEADER_SIZE as usize];
    vol.read_exact_at(start, &mut h)?;
    if &h[4..20] != MDA_MAGIC {
        return bad("no metadata area header (bad magic)".into());
    }
    let stored = u32_at(&h, 0);
    let computed = lvm_crc(INITIAL_CRC, &h[4..]);
    if stored != computed {
        return bad(format!(
            "area header checksum mismatch (stored 0x{stored:08x}, computed 0x{computed:08x})"
        ));
    }
    let version = u32_at(&h, 20);
    if version != 1 {
        return Err(GuestError::Unsupported {
            what,
            reason: format!("metadata area header version {version}"),
        });
    }
    let said_start = u64_at(&h, 24);
    let area = u64_at(&h, 32);
    if said_start != start {
        return bad(format!(
            "the area header says it starts at byte {said_start}"
        ));
    }
    if area <= MDA_HEADER_SIZE || area > size {
        return bad(format!(
            "the area header's size {area} does not fit the area ({size} bytes)"
        ));
    }
    let offset = u64_at(&h, 40);
    let len = u64_at(&h, 48);
    let checksum = u32_at(&h, 56);
    let flags = u32_at(&h, 60);
    if (offset == 0 && len == 0) || flags & RAW_LOCN_IGNORED != 0 {
        return Ok(None);
    }
    if len == 0 || len > MAX_METADATA_TEXT {
        return bad(format!(
            "metadata text size {len} is out of range (1 to {MAX_METADATA_TEXT})"
        ));
    }
    if offset < MDA_HEADER_SIZE || offset >= area {
        return bad(format!(
            "metadata text at offset {offset} lies outside the area ({area} bytes)"
        ));
    }
    // A circular buffer: what does not fit before the area's end continues right after
    // the area header.
    let first = len.min(area - offset);
    let wrap = len - first;
    if wrap > offset - MDA_HEADER_SIZE {
        return bad(format!(
            "metadata text of {len} bytes at offset {offset} wraps over itself"
        ));
    }
    // len <= MAX_METADATA_TEXT and lies inside the area, itself inside the volume.
    let mut text = vec![0u8; len as usize];
    let (head, tail) = text.split_at_mut(first as usize);
    vol.read_exact_at(start + offset, head)?;
    if wrap > 0 {
        vol.read_exact_at(start + MDA_HEADER_SIZE, tail)?;
    }
    let computed = lvm_crc(INITIAL_CRC, &text);
    if computed != checksum {
        return bad(format!(
            "metadata text checksum mismatch (stored 0x{checksum:08x}, computed 0x{computed:08x})"
        ));
    }
    parse_vg_metadata(&text, &what).map(Some)
}

// ---------------------------------------------------------------------------------------
// The metadata text format.

/// A value of the text format.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Int(i64),
    Str(String),
    List(Vec<Value>),
}

/// A setting's value or a section's contents.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Value(Value),
    Section(Section),
}

/// A section: its items in order (keys may repeat; the first wins on lookup).
#[derive(Debug, Clone, PartialEq, Default)]
struct Section {
    items: Vec<(String, Node)>,
}

impl Section {
    fn get(&self, key: &str) -> Option<&Node> {
        self.items.iter().find(|(k, _)| k == key).map(|(_, n)| n)
    }

    fn section(&self, key: &str) -> Option<&Section> {
        match self.get(key) {
            Some(Node::Section(s)) => Some(s),
            _ => None,
        }
    }

    fn value(&self, key: &str) -> Option<&Value> {
        match self.get(key) {
            Some(Node::Value(v)) => Some(v),
            _ => None,
        }
    }

    fn u64(&self, key: &str) -> std::result::Result<u64, String> {
        match self.value(key) {
            Some(Value::Int(i)) => {
                u64::try_from(*i).map_err(|_| format!("{key} = {i} is negative"))
            }
            Some(_) => Err(format!("{key} is not a number")),
            None => Err(format!("{key} is missing")),
        }
    }

    fn string(&self, key: &str) -> Option<&str> {
        match self.value(key) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }

    fn strings(&self, key: &str) -> Vec<String> {
        match self.value(key) {
            Some(Value::List(l)) => l
                .iter()
                .filter_map(|v| match v {
                    Value::Str(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

struct Parser<'a> {
    b: &'a [u8],
    pos: usize,
    items: usize,
    line: usize,
}

fn is_delim(c: u8) -> bool {
    c.is_ascii_whitespace()
        || matches!(
            c,
            b'#' | b'{' | b'}' | b'[' | b']' | b'=' | b',' | b'"' | b'\''
        )
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn err(&self, what: &str) -> String {
        format!("metadata text line {}: {what}", self.line)
    }

    fn bump(&mut self) -> TextResult<()> {
        self.items += 1;
        if self.items > MAX_ITEMS {
            return Err(self.err(&format!("more than {MAX_ITEMS} items")));
        }
        Ok(())
    }

    /// Skips white space and `#` comments.
    fn skip(&mut self) {
        while let Some(c) = self.peek() {
            if c == b'\n' {
                self.line += 1;
                self.pos += 1;
            } else if c.is_ascii_whitespace() {
                self.pos += 1;
            } else if c == b'#' {
                while let Some(c) = self.peek() {
                    if c == b'\n' {
                        break;
                    }
                    self.pos += 1;
                }
            } else {
                break;
            }
        }
    }

    fn word(&mut self) -> &[u8] {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if is_delim(c) {
                break;
            }
            self.pos += 1;
        }
        self.b.get(start..self.pos).unwrap_or_default()
    }

    /// Items up to the end of the text (`depth` 0) or to the closing brace.
    fn items(&mut self, depth: usize) -> TextResult<Section> {
        let mut section = Section::default();
        loop {
            self.skip();
            match self.peek() {
                None if depth == 0 => return Ok(section),
                None => return Err(self.err("unterminated section (missing '}')")),
                Some(b'}') if depth > 0 => {
                    self.pos += 1;
                    return Ok(section);
                }
                _ => {}
            }
            let key = self.word();
            if key.is_empty() {
                let c = self.peek().map_or('?', char::from);
                return Err(self.err(&format!("unexpected {c:?} where a name was expected")));
            }
            let key = String::from_utf8_lossy(key).into_owned();
            self.skip();
            match self.peek() {
                Some(b'=') => {
                    self.pos += 1;
                    let v = self.value()?;
                    section.items.push((key, Node::Value(v)));
                }
                Some(b'{') => {
                    self.pos += 1;
                    if depth >= MAX_DEPTH {
                        return Err(self.err(&format!("sections nested deeper than {MAX_DEPTH}")));
                    }
                    let sub = self.items(depth + 1)?;
                    section.items.push((key, Node::Section(sub)));
                }
                _ => return Err(self.err(&format!("'=' or '{{' expected after {key:?}"))),
            }
            self.bump()?;
        }
    }

    fn value(&mut self) -> TextResult<Value> {
        self.skip();
        if self.peek() != Some(b'[') {
            return self.scalar();
        }
        self.pos += 1;
        let mut list = Vec::new();
        loop {
            self.skip();
            if self.peek() == Some(b']') {
                self.pos += 1;
                return Ok(Value::List(list));
            }
            list.push(self.scalar()?);
            self.bump()?;
            self.skip();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {}
                _ => return Err(self.err("',' or ']' expected in a list")),
            }
        }
    }

    fn scalar(&mut self) -> TextResult<Value> {
        self.skip();
        match self.peek() {
            Some(q @ (b'"' | b'\'')) => {
                self.pos += 1;
                let mut s = Vec::new();
                loop {
                    match self.peek() {
                        None => return Err(self.err("unterminated string")),
                        Some(c) if c == q => {
                            self.pos += 1;
                            break;
                        }
                        Some(b'\\') => {
                            self.pos += 1;
                            match self.peek() {
                                Some(c) => {
                                    s.push(c);
                                    self.pos += 1;
                                }
                                None => return Err(self.err("unterminated string")),
                            }
                        }
                        Some(c) => {
                            if c == b'\n' {
                                self.line += 1;
                            }
                            s.push(c);
                            self.pos += 1;
                        }
                    }
                }
                Ok(Value::Str(String::from_utf8_lossy(&s).into_owned()))
            }
            _ => {
                let w = self.word();
                if w.is_empty() {
                    return Err(self.err("a value was expected"));
                }
                let text = String::from_utf8_lossy(w).into_owned();
                let digits = text.strip_prefix('-').unwrap_or(&text);
                if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                    text.parse::<i64>()
                        .map(Value::Int)
                        .map_err(|_| self.err(&format!("number {text} is out of range")))
                } else {
                    // Floats and bare words: kept as text (nothing needed here uses them).
                    Ok(Value::Str(text))
                }
            }
        }
    }
}

/// Parser results carry a message; the caller names the structure.
type TextResult<T> = std::result::Result<T, String>;

fn parse_text(text: &[u8]) -> TextResult<Section> {
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    let mut p = Parser {
        b: text.get(..end).unwrap_or_default(),
        pos: 0,
        items: 0,
        line: 1,
    };
    p.items(0)
}

/// Parses LVM2 metadata text (as stored in a metadata area, or as written by
/// `vgcfgbackup`) and extracts the volume group it describes. `what` names the source
/// in errors. The text ends at its first NUL if any.
///
/// Errors (each starting with `what`): a syntax error (with its line), nesting deeper
/// than [`MAX_DEPTH`], more than [`MAX_ITEMS`] items, no VG section, an invalid VG
/// name, a missing or malformed `seqno`, `extent_size` or PV entry. Problems confined to
/// one LV are recorded in its [`LvMeta::damage`] instead. Never panics.
pub fn parse_vg_metadata(text: &[u8], what: &str) -> Result<VgMetadata> {
    let root = parse_text(text).map_err(|e| GuestError::corrupt(what, e))?;
    extract_vg(&root).map_err(|e| GuestError::corrupt(what, e))
}

fn extract_vg(root: &Section) -> TextResult<VgMetadata> {
    let (name, vg) = root
        .items
        .iter()
        .find_map(|(k, n)| match n {
            Node::Section(s) if s.get("extent_size").is_some() => Some((k, s)),
            _ => None,
        })
        .ok_or("no volume group section (with an extent_size) in the metadata")?;
    if !valid_name(name) {
        return Err(format!("volume group name {name:?} is invalid"));
    }
    let ctx = |e: String| format!("volume group {name}: {e}");
    let seqno = vg.u64("seqno").map_err(ctx)?;
    let extent_size = vg.u64("extent_size").map_err(ctx)?;
    if extent_size == 0 || extent_size.checked_mul(SECTOR).is_none() {
        return Err(ctx(format!("extent_size {extent_size} is out of range")));
    }
    let pvs = vg
        .section("physical_volumes")
        .ok_or_else(|| ctx("the physical_volumes section is missing".into()))?;
    let mut physical_volumes = Vec::new();
    for (key, node) in &pvs.items {
        let Node::Section(pv) = node else {
            continue;
        };
        let pctx = |e: String| format!("volume group {name}: physical volume {key}: {e}");
        physical_volumes.push(PvMeta {
            key: key.clone(),
            id: pv
                .string("id")
                .ok_or_else(|| pctx("id is missing".into()))?
                .to_string(),
            pe_start: pv.u64("pe_start").map_err(pctx)?,
            pe_count: pv.u64("pe_count").map_err(pctx)?,
        });
    }
    let mut logical_volumes = Vec::new();
    if let Some(lvs) = vg.section("logical_volumes") {
        for (key, node) in &lvs.items {
            if let Node::Section(lv) = node {
                logical_volumes.push(extract_lv(key, lv));
            }
        }
    }
    Ok(VgMetadata {
        name: name.clone(),
        id: vg.string("id").unwrap_or_default().to_string(),
        seqno,
        extent_size,
        physical_volumes,
        logical_volumes,
    })
}

fn extract_lv(name: &str, lv: &Section) -> LvMeta {
    let mut meta = LvMeta {
        name: name.to_string(),
        id: lv.string("id").unwrap_or_default().to_string(),
        status: lv.strings("status"),
        segments: Vec::new(),
        damage: None,
    };
    if !valid_name(name) {
        meta.damage = Some("the name is invalid".into());
        return meta;
    }
    for (key, node) in &lv.items {
        let (Some(n), Node::Section(seg)) = (key.strip_prefix("segment"), node) else {
            continue;
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        match extract_segment(seg) {
            Ok(s) => meta.segments.push(s),
            Err(e) => {
                meta.damage = Some(format!("{key}: {e}"));
                return meta;
            }
        }
    }
    meta.segments.sort_by_key(|s| s.start_extent);
    match lv.u64("segment_count") {
        Ok(n) if n == meta.segments.len() as u64 => {}
        Ok(n) => {
            meta.damage = Some(format!(
                "segment_count is {n} but {} segments are described",
                meta.segments.len()
            ))
        }
        Err(e) => meta.damage = Some(e),
    }
    meta
}

fn extract_segment(seg: &Section) -> TextResult<SegmentMeta> {
    let seg_type = seg.string("type").ok_or("type is missing")?.to_string();
    let mut out = SegmentMeta {
        start_extent: seg.u64("start_extent")?,
        extent_count: seg.u64("extent_count")?,
        stripe_count: 0,
        stripes: Vec::new(),
        cow_store: seg.string("cow_store").map(str::to_string),
        seg_type,
    };
    if out.seg_type == "striped" {
        out.stripe_count = seg.u64("stripe_count")?;
        let Some(Value::List(list)) = seg.value("stripes") else {
            return Err("stripes is missing".into());
        };
        for pair in list.chunks(2) {
            match pair {
                [Value::Str(pv), Value::Int(pe)] => {
                    let pe = u64::try_from(*pe)
                        .map_err(|_| format!("stripe on {pv} starts at a negative extent"))?;
                    out.stripes.push((pv.clone(), pe));
                }
                _ => return Err("stripes is not a list of \"pvN\", extent pairs".into()),
            }
        }
        if out.stripes.len() as u64 != out.stripe_count {
            return Err(format!(
                "stripe_count is {} but {} stripes are listed",
                out.stripe_count,
                out.stripes.len()
            ));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Logical volumes.

/// One mapped piece of an LV: `len` bytes from LV byte `start` live at `pv_offset` of
/// `pv`.
struct LvSegment {
    start: u64,
    len: u64,
    pv: Arc<dyn VolumeRead>,
    pv_offset: u64,
}

/// A linear logical volume's bytes, mapped through its segments onto PV views. Its
/// segments are contiguous from 0 to its size and each lies inside its PV, so every
/// read inside the size maps to reads inside PVs.
pub struct LvView {
    name: String,
    size: u64,
    segments: Vec<LvSegment>,
}

impl VolumeRead for LvView {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.size)
        {
            return Err(out_of_range(&self.name, offset, buf.len()));
        }
        let mut done = 0usize;
        // Each turn consumes at least one byte and moves to the next segment.
        while done < buf.len() {
            let pos = offset + done as u64;
            let i = self.segments.partition_point(|s| s.start + s.len <= pos);
            let Some(seg) = self.segments.get(i).filter(|s| s.start <= pos) else {
                return Err(out_of_range(&self.name, pos, buf.len() - done));
            };
            let within = pos - seg.start;
            let n = (seg.len - within).min((buf.len() - done) as u64) as usize;
            let Some(dst) = buf.get_mut(done..done + n) else {
                return Err(out_of_range(&self.name, pos, buf.len() - done));
            };
            seg.pv.read_exact_at(seg.pv_offset + within, dst)?;
            done += n;
        }
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// The linear logical volumes of the PVs of one disk, and the problems met.
///
/// PVs are grouped by VG (UUID, else name); the metadata with the highest `seqno` among
/// a VG's PVs is used. Every visible LV whose segments are all linear (`striped` with one
/// stripe), contiguous from extent 0, on PVs present in `pvs` (matched by UUID, dashes
/// ignored) and inside them, is returned with a view called
/// `"{disk_name}/lvm/{vg}/{lv}"`. Every other visible LV yields one problem naming it and
/// saying why; hidden LVs are skipped silently. VG and LV names are valid LVM names and
/// the `(vg, name)` pairs returned are unique. Never panics.
pub fn logical_volumes(
    pvs: &[(Arc<dyn VolumeRead>, PvLabel)],
    disk_name: &str,
) -> (Vec<LogicalVolume>, Vec<GuestError>) {
    let mut problems = Vec::new();
    // PVs present, by bare UUID.
    let mut present: HashMap<String, &Arc<dyn VolumeRead>> = HashMap::new();
    for (view, label) in pvs {
        let uuid = bare_uuid(&label.uuid);
        if present.contains_key(&uuid) {
            problems.push(GuestError::corrupt(
                view.name(),
                format!(
                    "duplicate LVM physical volume UUID {}: this copy is ignored",
                    label.uuid
                ),
            ));
            continue;
        }
        present.insert(uuid, view);
    }
    // The newest metadata of each VG, in order of first appearance.
    let mut vgs: Vec<&VgMetadata> = Vec::new();
    for (_, label) in pvs {
        let Some(md) = &label.metadata else {
            continue;
        };
        let key = |m: &VgMetadata| {
            if m.id.is_empty() {
                m.name.clone()
            } else {
                bare_uuid(&m.id)
            }
        };
        match vgs.iter_mut().find(|v| key(v) == key(md)) {
            Some(v) if v.seqno < md.seqno => *v = md,
            Some(_) => {}
            None => vgs.push(md),
        }
    }
    let mut lvs = Vec::new();
    let mut names = HashSet::new();
    for vg in vgs {
        if !names.insert(vg.name.clone()) {
            problems.push(GuestError::corrupt(
                format!("{disk_name}/lvm/{}", vg.name),
                "two different volume groups have this name: the second is ignored",
            ));
            continue;
        }
        map_vg(vg, &present, disk_name, &mut lvs, &mut problems);
    }
    (lvs, problems)
}

fn map_vg(
    vg: &VgMetadata,
    present: &HashMap<String, &Arc<dyn VolumeRead>>,
    disk_name: &str,
    lvs: &mut Vec<LogicalVolume>,
    problems: &mut Vec<GuestError>,
) {
    let cow_stores: HashMap<&str, &str> = vg
        .logical_volumes
        .iter()
        .flat_map(|lv| {
            lv.segments
                .iter()
                .filter_map(move |s| s.cow_store.as_deref().map(|c| (c, lv.name.as_str())))
        })
        .collect();
    // By key, the first entry of a key winning (lookups per segment must not scan).
    let mut pv_by_key: HashMap<&str, &PvMeta> = HashMap::new();
    for pv in &vg.physical_volumes {
        pv_by_key.entry(pv.key.as_str()).or_insert(pv);
    }
    let mut seen = HashSet::new();
    for lv in &vg.logical_volumes {
        if !lv.visible() {
            continue;
        }
        let what = format!("{disk_name}/lvm/{}/{}", vg.name, lv.name);
        if !seen.insert(lv.name.as_str()) {
            problems.push(GuestError::corrupt(
                what,
                "the volume group describes two logical volumes of this name: the second is ignored",
            ));
            continue;
        }
        if let Some(snap) = cow_stores.get(lv.name.as_str()) {
            problems.push(GuestError::Unsupported {
                what,
                reason: format!(
                    "the copy-on-write store of snapshot {snap}: snapshots cannot be read"
                ),
            });
            continue;
        }
        match map_lv(vg, lv, &pv_by_key, present, &what) {
            Ok(view) => lvs.push(LogicalVolume {
                vg: vg.name.clone(),
                name: lv.name.clone(),
                size: view.size,
                view: Arc::new(view),
            }),
            Err(e) => problems.push(e),
        }
    }
}

fn map_lv(
    vg: &VgMetadata,
    lv: &LvMeta,
    pv_by_key: &HashMap<&str, &PvMeta>,
    present: &HashMap<String, &Arc<dyn VolumeRead>>,
    what: &str,
) -> Result<LvView> {
    let corrupt = |reason: String| Err(GuestError::corrupt(what, reason));
    let unsupported = |reason: String| {
        Err(GuestError::Unsupported {
            what: what.to_string(),
            reason,
        })
    };
    if let Some(d) = &lv.damage {
        return corrupt(d.clone());
    }
    if lv.segments.is_empty() {
        return corrupt("the logical volume has no segments".into());
    }
    let extent = vg.extent_size.saturating_mul(SECTOR);
    let mut segments = Vec::with_capacity(lv.segments.len());
    let mut next = 0u64;
    for (i, seg) in (1u64..).zip(lv.segments.iter()) {
        if seg.seg_type != "striped" {
            return unsupported(format!(
                "segment {i} has type {:?}: only linear logical volumes can be read",
                seg.seg_type
            ));
        }
        let [(pv_key, pe)] = seg.stripes.as_slice() else {
            return unsupported(format!(
                "segment {i} is striped over {} physical volumes: only linear logical volumes \
                 can be read",
                seg.stripes.len()
            ));
        };
        if seg.start_extent != next {
            return corrupt(format!(
                "segment {i} starts at extent {}, where extent {next} was expected",
                seg.start_extent
            ));
        }
        if seg.extent_count == 0 {
            return corrupt(format!("segment {i} has no extents"));
        }
        let Some(pv) = pv_by_key.get(pv_key.as_str()) else {
            return corrupt(format!(
                "segment {i} lies on {pv_key}, which the volume group does not list"
            ));
        };
        let Some(view) = present.get(&bare_uuid(&pv.id)) else {
            return unsupported(format!(
                "segment {i} lies on physical volume {pv_key} ({}), which is not on this disk",
                pv.id
            ));
        };
        let placed = (|| {
            let pe_end = pe.checked_add(seg.extent_count)?;
            let pv_offset = pv
                .pe_start
                .checked_mul(SECTOR)?
                .checked_add(pe.checked_mul(extent)?)?;
            let len = seg.extent_count.checked_mul(extent)?;
            let start = seg.start_extent.checked_mul(extent)?;
            let end_in_pv = pv_offset.checked_add(len)?;
            Some((pe_end, pv_offset, len, start, end_in_pv))
        })();
        let Some((pe_end, pv_offset, len, start, end_in_pv)) = placed else {
            return corrupt(format!("segment {i}: its extents are out of range"));
        };
        if pe_end > pv.pe_count || end_in_pv > view.size() {
            return corrupt(format!(
                "segment {i}: extents {pe}..{pe_end} of physical volume {pv_key} lie outside it \
                 ({} extents, {} bytes)",
                pv.pe_count,
                view.size()
            ));
        }
        segments.push(LvSegment {
            start,
            len,
            pv: Arc::clone(view),
            pv_offset,
        });
        next = seg.start_extent.saturating_add(seg.extent_count);
    }
    let Some(size) = next.checked_mul(extent) else {
        return corrupt("the logical volume's size is out of range".into());
    };
    Ok(LvView {
        name: what.to_string(),
        size,
        segments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::fuzz_walk::synthetic_pv;
    use crate::image_file::{ImageFile, MemFile};
    use std::process::Command;

    const UUID0: &str = "AAAAAA-BBBB-CCCC-DDDD-EEEE-FFFF-000000";
    const UUID1: &str = "AAAAAA-BBBB-CCCC-DDDD-EEEE-FFFF-111111";
    /// Extent size of the synthetic VGs: 8 sectors (4 KiB).
    const EXT: u64 = 4096;
    /// Synthetic PVs: 2 MiB, extents from 1 MiB.
    const PV_SIZE: u64 = 2 << 20;
    const PE_START: u64 = 1 << 20;

    fn arc(bytes: Vec<u8>, name: &str) -> Arc<dyn VolumeRead> {
        Arc::new(MemFile::new(bytes, name))
    }

    fn msgs(problems: &[GuestError]) -> Vec<String> {
        problems.iter().map(|e| e.to_string()).collect()
    }

    // --- real bytes written by lvm2 2.03 (pvcreate, vgcreate, vgcfgrestore) ------------

    const REAL_LABEL: &str = "4c4142454c4f4e45010000000000000073e13928200000004c564d32203030315635796d686a42623738416837666343425158476169494857327173794c6b7600000004000000000000100000000000000000000000000000000000000000000000000000000000001000000000000000f00f0000000000000000000000000000000000000000000200000001";
    const REAL_MDA_HEADER: &str = "b0174f13204c564d3220785b35412572304e2a3e01000000001000000000000000f00f0000000000000600000000000036050000000000006401ae58";
    const REAL_TEXT: &str = "vgtest {
id = \"8HZABO-oelL-mDab-gpGs-Vn8O-iYeM-6MMhY8\"
seqno = 2
format = \"lvm2\"
status = [\"RESIZEABLE\", \"READ\", \"WRITE\"]
flags = []
extent_size = 8192
max_lv = 0
max_pv = 0
metadata_copies = 0

physical_volumes {

pv0 {
id = \"V5ymhj-Bb78-Ah7f-cCBQ-XGai-IHW2-qsyLkv\"
device = \"/dev/loop0\"

status = [\"ALLOCATABLE\"]
flags = []
dev_size = 131072
pe_start = 2048
pe_count = 15
}
}

logical_volumes {

root {
id = \"aaaaaa-bbbb-cccc-dddd-eeee-ffff-gggggg\"
status = [\"READ\", \"WRITE\", \"VISIBLE\"]
flags = []
segment_count = 1

segment1 {
start_extent = 0
extent_count = 4

type = \"striped\"
stripe_count = 1

stripes = [
\"pv0\", 0
]
}
}

data {
id = \"aaaaaa-bbbb-cccc-dddd-eeee-ffff-hhhhhh\"
status = [\"READ\", \"WRITE\", \"VISIBLE\"]
flags = []
segment_count = 2

segment1 {
start_extent = 0
extent_count = 2

type = \"striped\"
stripe_count = 1

stripes = [
\"pv0\", 10
]
}
segment2 {
start_extent = 2
extent_count = 3

type = \"striped\"
stripe_count = 1

stripes = [
\"pv0\", 5
]
}
}
}

}
# Generated by LVM2 version 2.03.16(2) (2022-05-18): Mon Nov 23 23:32:36 2026

contents = \"Text Format Volume Group\"
version = 1

description = \"Write from vgcfgrestore --config 'devices { use_devicesfile=0 }' -f y.vg vgtest.\"

creation_host = \"vm\"\t# Linux vm 6.18.44-fc-v782 #1 SMP PREEMPT_DYNAMIC @0 x86_64
creation_time = 1795476756\t# Mon Nov 23 23:32:36 2026

\0";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    fn real_pv() -> Vec<u8> {
        let mut img = vec![0u8; 1 << 20];
        let label = unhex(REAL_LABEL);
        img[512..512 + label.len()].copy_from_slice(&label);
        let h = unhex(REAL_MDA_HEADER);
        img[4096..4096 + h.len()].copy_from_slice(&h);
        img[4096 + 1536..4096 + 1536 + REAL_TEXT.len()].copy_from_slice(REAL_TEXT.as_bytes());
        img
    }

    #[test]
    fn reads_a_real_label_area_and_text() {
        assert_eq!(REAL_TEXT.len(), 1334);
        assert_eq!(lvm_crc(INITIAL_CRC, REAL_TEXT.as_bytes()), 0x58ae_0164);
        let vol = arc(real_pv(), "web01-disk0/p2");
        let label = read_pv_label(&*vol).unwrap().unwrap();
        assert!(label.problems.is_empty(), "{:?}", msgs(&label.problems));
        assert_eq!(label.uuid, "V5ymhjBb78Ah7fcCBQXGaiIHW2qsyLkv");
        assert_eq!(label.label_sector, 1);
        assert_eq!(label.device_size, 64 << 20);
        assert_eq!(label.pe_start, 1 << 20);
        let md = label.metadata.as_ref().unwrap();
        assert_eq!(md.name, "vgtest");
        assert_eq!(md.id, "8HZABO-oelL-mDab-gpGs-Vn8O-iYeM-6MMhY8");
        assert_eq!(md.seqno, 2);
        assert_eq!(md.extent_size, 8192);
        assert_eq!(
            md.physical_volumes,
            [PvMeta {
                key: "pv0".into(),
                id: "V5ymhj-Bb78-Ah7f-cCBQ-XGai-IHW2-qsyLkv".into(),
                pe_start: 2048,
                pe_count: 15,
            }]
        );
        let names: Vec<_> = md.logical_volumes.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["root", "data"]);
        let data = &md.logical_volumes[1];
        assert!(data.visible() && data.damage.is_none());
        assert_eq!(data.status, ["READ", "WRITE", "VISIBLE"]);
        let segs: Vec<_> = data
            .segments
            .iter()
            .map(|s| {
                (
                    s.start_extent,
                    s.extent_count,
                    s.seg_type.as_str(),
                    s.stripes.clone(),
                )
            })
            .collect();
        assert_eq!(
            segs,
            [
                (0, 2, "striped", vec![("pv0".to_string(), 10)]),
                (2, 3, "striped", vec![("pv0".to_string(), 5)]),
            ]
        );
        // The volume is only 1 MiB: the extents (4 MiB each) are not in it.
        let (lvs, problems) = logical_volumes(&[(vol, label)], "web01-disk0");
        assert!(lvs.is_empty());
        assert_eq!(
            msgs(&problems),
            [
                "web01-disk0/lvm/vgtest/root: segment 1: extents 0..4 of physical volume pv0 lie \
                 outside it (15 extents, 1048576 bytes)",
                "web01-disk0/lvm/vgtest/data: segment 1: extents 10..12 of physical volume pv0 \
                 lie outside it (15 extents, 1048576 bytes)",
            ]
        );
    }

    // --- the text format ---------------------------------------------------------------

    #[test]
    fn text_syntax() {
        let t = parse_text(
            b"# comment\na = 1 b=-2 c = \"x \\\"q\\\" \\\\ y\" # trailing\n\
              d = [ \"p\", 3 , 'single' ] e = [] f { g { h = 1.5 } } i = bare\0garbage {",
        )
        .unwrap();
        assert_eq!(t.value("a"), Some(&Value::Int(1)));
        assert_eq!(t.value("b"), Some(&Value::Int(-2)));
        assert_eq!(t.string("c"), Some("x \"q\" \\ y"));
        assert_eq!(
            t.value("d"),
            Some(&Value::List(vec![
                Value::Str("p".into()),
                Value::Int(3),
                Value::Str("single".into())
            ]))
        );
        assert_eq!(t.value("e"), Some(&Value::List(vec![])));
        let g = t.section("f").unwrap().section("g").unwrap();
        assert_eq!(g.string("h"), Some("1.5"));
        assert_eq!(t.string("i"), Some("bare"));
    }

    #[test]
    fn text_errors_say_where() {
        let cases: [(&[u8], &str); 8] = [
            (b"a = \"open", "line 1: unterminated string"),
            (b"s {\n a = 1\n", "line 3: unterminated section"),
            (b"a = [1 2]", "',' or ']' expected"),
            (b"a 1", "'=' or '{' expected after \"a\""),
            (b"}", "unexpected '}'"),
            (
                b"a = 99999999999999999999",
                "number 99999999999999999999 is out of range",
            ),
            (b"a = ", "a value was expected"),
            (b"a = [\"x\", [1]]", "a value was expected"),
        ];
        for (text, want) in cases {
            let e = parse_text(text).unwrap_err();
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(text));
        }
        let deep = "a {".repeat(MAX_DEPTH + 1) + &"}".repeat(MAX_DEPTH + 1);
        assert!(parse_text(deep.as_bytes())
            .unwrap_err()
            .contains("nested deeper than 32"));
        let ok = "a {".repeat(MAX_DEPTH) + &"}".repeat(MAX_DEPTH);
        assert!(parse_text(ok.as_bytes()).is_ok());
        let many = format!("a = [{}]", "1,".repeat(MAX_ITEMS + 1));
        assert!(parse_text(many.as_bytes())
            .unwrap_err()
            .contains("more than 1000000 items"));
    }

    #[test]
    fn vg_extraction_errors() {
        let e = |t: &str| {
            parse_vg_metadata(t.as_bytes(), "vol: area")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e("contents = \"x\""),
            "vol: area: no volume group section (with an extent_size) in the metadata"
        );
        assert!(e("../x { extent_size = 8 }").contains("volume group name \"../x\" is invalid"));
        assert!(e("vg { extent_size = 8 }").contains("volume group vg: seqno is missing"));
        assert!(e("vg { extent_size = 0 seqno = 1 }").contains("extent_size 0 is out of range"));
        assert!(
            e("vg { extent_size = 8 seqno = 1 }").contains("physical_volumes section is missing")
        );
        assert!(e("vg { extent_size = 8 seqno = -1 }").contains("seqno = -1 is negative"));
        assert!(e(
            "vg { extent_size = 8 seqno = 1 physical_volumes { pv0 { id = \"x\" pe_start = 1 } } }"
        )
        .contains("physical volume pv0: pe_count is missing"));
    }

    #[test]
    fn lv_damage_is_recorded_per_lv() {
        let text = vg_text(
            "vg",
            1,
            &[("pv0", UUID0, 256)],
            &[
                "a { status = [\"VISIBLE\"] segment_count = 2 segment1 { start_extent = 0 extent_count = 1 type = \"striped\" stripe_count = 1 stripes = [\"pv0\", 0] } }".into(),
                "b { status = [\"VISIBLE\"] segment_count = 1 segment1 { start_extent = 0 extent_count = 1 type = \"striped\" stripe_count = 2 stripes = [\"pv0\", 0] } }".into(),
                "c { status = [\"VISIBLE\"] segment_count = 1 segment1 { start_extent = 0 type = \"striped\" } }".into(),
                "d { status = [\"VISIBLE\"] segment_count = 1 segment1 { start_extent = 0 extent_count = 1 type = \"striped\" stripe_count = 1 stripes = [\"pv0\", -4] } }".into(),
                "e { status = [\"VISIBLE\"] segment_count = 1 segment1 { start_extent = 0 extent_count = 1 type = \"striped\" stripe_count = 1 stripes = [0, \"pv0\"] } }".into(),
            ],
        );
        let md = parse_vg_metadata(text.as_bytes(), "t").unwrap();
        let damage: Vec<_> = md
            .logical_volumes
            .iter()
            .map(|l| l.damage.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            damage,
            [
                "segment_count is 2 but 1 segments are described",
                "segment1: stripe_count is 2 but 1 stripes are listed",
                "segment1: extent_count is missing",
                "segment1: stripe on pv0 starts at a negative extent",
                "segment1: stripes is not a list of \"pvN\", extent pairs",
            ]
        );
    }

    // --- synthetic PVs -----------------------------------------------------------------

    fn vg_text(name: &str, seqno: u64, pvs: &[(&str, &str, u64)], lvs: &[String]) -> String {
        let mut t = format!(
            "{name} {{\nid = \"VGVGVG-BBBB-CCCC-DDDD-EEEE-FFFF-{name:0>6}\"\nseqno = {seqno}\n\
             extent_size = {}\nphysical_volumes {{\n",
            EXT / 512
        );
        for (key, id, count) in pvs {
            t += &format!(
                "{key} {{\nid = \"{id}\"\npe_start = {}\npe_count = {count}\n}}\n",
                PE_START / 512
            );
        }
        t += "}\nlogical_volumes {\n";
        for lv in lvs {
            t += lv;
            t += "\n";
        }
        t += "}\n}\ncontents = \"Text Format Volume Group\"\nversion = 1\n\0";
        t
    }

    /// A linear LV section: segments of (PV key, first PE, extents), in the order given.
    fn linear(name: &str, visible: bool, segs: &[(&str, u64, u64)]) -> String {
        let status = if visible {
            "[\"READ\", \"WRITE\", \"VISIBLE\"]"
        } else {
            "[\"READ\", \"WRITE\"]"
        };
        let mut t = format!(
            "{name} {{\nid = \"x\"\nstatus = {status}\nsegment_count = {}\n",
            segs.len()
        );
        let mut start = 0;
        let mut sections = Vec::new();
        for (i, (pv, pe, n)) in segs.iter().enumerate() {
            sections.push(format!(
                "segment{} {{\nstart_extent = {start}\nextent_count = {n}\ntype = \"striped\"\n\
                 stripe_count = 1\nstripes = [\n\"{pv}\", {pe}\n]\n}}\n",
                i + 1
            ));
            start += n;
        }
        for s in &sections {
            t += s;
        }
        t + "}"
    }

    /// [`linear`] with the segment sections written last first (lvm2 itself refuses
    /// that, but the order in the text must not matter here).
    fn linear_reversed(name: &str, segs: &[(&str, u64, u64)]) -> String {
        let t = linear(name, true, segs);
        let first = t.find("segment1 {").unwrap();
        let body = &t[first..t.len() - 1];
        let mut parts: Vec<&str> = body.split_inclusive("]\n}\n").collect();
        assert_eq!(parts.len(), segs.len());
        parts.reverse();
        format!("{}{}}}", &t[..first], parts.concat())
    }

    /// A PV image around `text`, its data area filled with bytes that differ per PV and
    /// position.
    fn pv_image(uuid: &str, text: &str, seed: u8) -> Vec<u8> {
        let mut img = synthetic_pv(uuid, text.as_bytes(), PV_SIZE, 512).unwrap();
        for (i, b) in img[PE_START as usize..].iter_mut().enumerate() {
            *b = (i / 509) as u8 ^ (i % 251) as u8 ^ seed;
        }
        img
    }

    /// The bytes an LV made of `segs` (image index, PE, extents) must read as.
    fn expected(images: &[&[u8]], segs: &[(usize, u64, u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(img, pe, n) in segs {
            let a = (PE_START + pe * EXT) as usize;
            out.extend_from_slice(&images[img][a..a + (n * EXT) as usize]);
        }
        out
    }

    fn read_all(view: &dyn VolumeRead) -> Vec<u8> {
        let mut buf = vec![0u8; view.size() as usize];
        view.read_exact_at(0, &mut buf).unwrap();
        buf
    }

    fn two_pv_vg() -> String {
        vg_text(
            "vg0",
            7,
            &[("pv0", UUID0, 256), ("pv1", UUID1, 256)],
            &[
                linear("root", true, &[("pv0", 0, 4)]),
                linear_reversed("data", &[("pv0", 10, 2), ("pv1", 3, 5), ("pv0", 4, 1)]),
                linear("hidden", false, &[("pv0", 20, 1)]),
                "striped2 { status = [\"VISIBLE\"] segment_count = 1 segment1 { start_extent = 0 extent_count = 2 type = \"striped\" stripe_count = 2 stripe_size = 128 stripes = [\"pv0\", 30, \"pv1\", 30] } }".into(),
                "thin1 { status = [\"VISIBLE\"] segment_count = 1 segment1 { start_extent = 0 extent_count = 2 type = \"thin\" thin_pool = \"pool\" transaction_id = 1 device_id = 1 } }".into(),
                "gap { status = [\"VISIBLE\"] segment_count = 2 segment1 { start_extent = 0 extent_count = 1 type = \"striped\" stripe_count = 1 stripes = [\"pv0\", 40] } segment2 { start_extent = 2 extent_count = 1 type = \"striped\" stripe_count = 1 stripes = [\"pv0\", 41] } }".into(),
                linear("outside", true, &[("pv1", 250, 7)]),
                linear("unlisted", true, &[("pv9", 0, 1)]),
                linear("snap", true, &[("pv0", 50, 2)]),
                "snapshot0 { status = [\"READ\"] segment_count = 1 segment1 { start_extent = 0 extent_count = 2 type = \"snapshot\" chunk_size = 8 origin = \"root\" cow_store = \"snap\" } }".into(),
            ],
        )
    }

    #[test]
    fn linear_lvs_map_through_their_segments() {
        let text = two_pv_vg();
        let img0 = pv_image(UUID0, &text, 0);
        let img1 = pv_image(UUID1, &text, 0x5A);
        let v0 = arc(img0.clone(), "web01-disk0/p1");
        let v1 = arc(img1.clone(), "web01-disk0/p2");
        let l0 = read_pv_label(&*v0).unwrap().unwrap();
        let l1 = read_pv_label(&*v1).unwrap().unwrap();
        assert_eq!(l0.uuid, bare_uuid(UUID0));
        assert_eq!(l0.pe_start, PE_START);
        let (lvs, problems) = logical_volumes(&[(v0, l0), (v1, l1)], "web01-disk0");
        let names: Vec<_> = lvs
            .iter()
            .map(|l| (l.vg.as_str(), l.name.as_str(), l.size))
            .collect();
        assert_eq!(names, [("vg0", "root", 4 * EXT), ("vg0", "data", 8 * EXT)]);
        assert_eq!(lvs[1].view.name(), "web01-disk0/lvm/vg0/data");
        assert_eq!(
            msgs(&problems),
            [
                "web01-disk0/lvm/vg0/striped2: segment 1 is striped over 2 physical volumes: only \
                 linear logical volumes can be read",
                "web01-disk0/lvm/vg0/thin1: segment 1 has type \"thin\": only linear logical \
                 volumes can be read",
                "web01-disk0/lvm/vg0/gap: segment 2 starts at extent 2, where extent 1 was expected",
                "web01-disk0/lvm/vg0/outside: segment 1: extents 250..257 of physical volume pv1 \
                 lie outside it (256 extents, 2097152 bytes)",
                "web01-disk0/lvm/vg0/unlisted: segment 1 lies on pv9, which the volume group does \
                 not list",
                "web01-disk0/lvm/vg0/snap: the copy-on-write store of snapshot snapshot0: \
                 snapshots cannot be read",
            ]
        );
        let images: [&[u8]; 2] = [&img0, &img1];
        assert_eq!(read_all(&*lvs[0].view), expected(&images, &[(0, 0, 4)]));
        let want = expected(&images, &[(0, 10, 2), (1, 3, 5), (0, 4, 1)]);
        let data = &*lvs[1].view;
        assert_eq!(read_all(data), want);
        // Reads spanning segment boundaries, and at the edges.
        for (off, len) in [
            (2 * EXT - 100, 300),
            (7 * EXT - 1, 2),
            (0, 1),
            (8 * EXT - 1, 1),
            (100, 7 * EXT),
        ] {
            let mut buf = vec![0u8; len as usize];
            data.read_exact_at(off, &mut buf).unwrap();
            assert_eq!(
                buf,
                want[off as usize..(off + len) as usize],
                "read {off}+{len}"
            );
        }
        let e = data.read_exact_at(8 * EXT - 1, &mut [0u8; 2]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("read error in web01-disk0/lvm/vg0/data at offset 32767"),
            "{e}"
        );
        assert!(data.read_exact_at(u64::MAX, &mut [0u8; 2]).is_err());
        data.read_exact_at(8 * EXT, &mut []).unwrap();
    }

    #[test]
    fn lvs_on_missing_pvs_are_problems() {
        let text = two_pv_vg();
        let v0 = arc(pv_image(UUID0, &text, 0), "d/p1");
        let l0 = read_pv_label(&*v0).unwrap().unwrap();
        let (lvs, problems) = logical_volumes(&[(v0, l0)], "d");
        let names: Vec<_> = lvs.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["root"]);
        let m = msgs(&problems);
        assert!(
            m.contains(
                &"d/lvm/vg0/data: segment 2 lies on physical volume pv1 \
              (AAAAAA-BBBB-CCCC-DDDD-EEEE-FFFF-111111), which is not on this disk"
                    .to_string()
            ),
            "{m:?}"
        );
    }

    #[test]
    fn newest_metadata_wins_and_duplicates_are_reported() {
        let old = vg_text(
            "vg0",
            2,
            &[("pv0", UUID0, 256), ("pv1", UUID1, 256)],
            &[linear("old", true, &[("pv0", 0, 1)])],
        );
        let new = vg_text(
            "vg0",
            3,
            &[("pv0", UUID0, 256), ("pv1", UUID1, 256)],
            &[linear("new", true, &[("pv1", 0, 1)])],
        );
        let v0 = arc(pv_image(UUID0, &old, 0), "d/p1");
        let v1 = arc(pv_image(UUID1, &new, 1), "d/p2");
        let v2 = arc(pv_image(UUID1, &old, 2), "d/p3");
        let pvs: Vec<_> = [v0, v1, v2]
            .into_iter()
            .map(|v| {
                let l = read_pv_label(&*v).unwrap().unwrap();
                (v, l)
            })
            .collect();
        let (lvs, problems) = logical_volumes(&pvs, "d");
        let names: Vec<_> = lvs.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["new"]);
        assert_eq!(
            msgs(&problems),
            ["d/p3: duplicate LVM physical volume UUID AAAAAABBBBCCCCDDDDEEEEFFFF111111: this copy is ignored"]
        );
    }

    #[test]
    fn wrapped_metadata_text_reads() {
        let text = two_pv_vg();
        let plain = synthetic_pv(UUID0, text.as_bytes(), PV_SIZE, 512).unwrap();
        let md0 = read_pv_label(&MemFile::new(plain, "a"))
            .unwrap()
            .unwrap()
            .metadata
            .unwrap();
        let mda_size = (1 << 20) - 4096;
        let img = synthetic_pv(UUID0, text.as_bytes(), PV_SIZE, mda_size - 100).unwrap();
        let label = read_pv_label(&MemFile::new(img, "b")).unwrap().unwrap();
        assert!(label.problems.is_empty(), "{:?}", msgs(&label.problems));
        assert_eq!(label.metadata.unwrap(), md0);
    }

    fn fix_label_crc(img: &mut [u8]) {
        let crc = lvm_crc(INITIAL_CRC, &img[512 + 20..1024]);
        img[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
    }

    fn fix_mda_crc(img: &mut [u8]) {
        let crc = lvm_crc(INITIAL_CRC, &img[4096 + 4..4096 + 512]);
        img[4096..4100].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn damaged_labels_are_errors() {
        let text = two_pv_vg();
        let good = synthetic_pv(UUID0, text.as_bytes(), PV_SIZE, 512).unwrap();
        let err = |img: Vec<u8>| {
            read_pv_label(&MemFile::new(img, "web01-disk0/p2"))
                .unwrap_err()
                .to_string()
        };

        let mut img = good.clone();
        img[512 + 40] ^= 1;
        assert!(
            err(img).starts_with("web01-disk0/p2: LVM label at sector 1: label checksum mismatch")
        );

        let mut img = good.clone();
        img[512 + 8] = 3;
        fix_label_crc(&mut img);
        assert_eq!(
            err(img),
            "web01-disk0/p2: LVM label at sector 1: the label says it lies in sector 3"
        );

        let mut img = good.clone();
        img[512 + 20..512 + 24].copy_from_slice(&500u32.to_le_bytes());
        fix_label_crc(&mut img);
        assert!(err(img).ends_with("PV header offset 500 is out of range"));

        // No terminator in the lists: they run to the end of the sector.
        let mut img = good.clone();
        for b in img[512 + 72..1024].chunks_mut(8) {
            b.copy_from_slice(&7u64.to_le_bytes());
        }
        fix_label_crc(&mut img);
        assert!(err(img).ends_with("the data area list runs past the end of the label sector"));

        // A good label in a later sector is used.
        let mut img = good.clone();
        img.copy_within(512..1024, 1536);
        img[1536 + 8] = 3;
        img[512 + 40] ^= 1;
        let crc = lvm_crc(INITIAL_CRC, &img[1536 + 20..2048]);
        img[1536 + 16..1536 + 20].copy_from_slice(&crc.to_le_bytes());
        let label = read_pv_label(&MemFile::new(img, "x")).unwrap().unwrap();
        assert_eq!(label.label_sector, 3);
        assert!(label.metadata.is_some());

        // Nothing at all, or a volume too small.
        assert!(read_pv_label(&MemFile::new(vec![0; 4096], "x"))
            .unwrap()
            .is_none());
        assert!(read_pv_label(&MemFile::new(good[..600].to_vec(), "x"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn damaged_metadata_areas_are_problems() {
        let text = two_pv_vg();
        let good = synthetic_pv(UUID0, text.as_bytes(), PV_SIZE, 512).unwrap();
        let problems = |img: Vec<u8>| {
            let label = read_pv_label(&MemFile::new(img, "d/p2")).unwrap().unwrap();
            assert!(label.metadata.is_none());
            msgs(&label.problems)
        };
        let area = "d/p2: LVM metadata area at byte 4096: ";

        let mut img = good.clone();
        img[4096 + 5] ^= 1;
        assert_eq!(
            problems(img),
            [format!("{area}no metadata area header (bad magic)")]
        );

        let mut img = good.clone();
        img[4096 + 30] ^= 1;
        assert!(problems(img)[0].starts_with(&format!("{area}area header checksum mismatch")));

        let mut img = good.clone();
        img[4096 + 512 + 3] ^= 1;
        assert!(problems(img)[0].starts_with(&format!("{area}metadata text checksum mismatch")));

        let mut img = good.clone();
        img[4096 + 40..4096 + 48].copy_from_slice(&(1u64 << 40).to_le_bytes());
        fix_mda_crc(&mut img);
        assert!(problems(img)[0].contains("lies outside the area"));

        let mut img = good.clone();
        img[4096 + 48..4096 + 56].copy_from_slice(&u64::MAX.to_le_bytes());
        fix_mda_crc(&mut img);
        assert!(
            problems(img)[0].contains("metadata text size 18446744073709551615 is out of range")
        );

        let mut img = good.clone();
        img[4096 + 40..4096 + 48].copy_from_slice(&600u64.to_le_bytes());
        img[4096 + 48..4096 + 56].copy_from_slice(&((1u64 << 20) - 4096 - 100).to_le_bytes());
        fix_mda_crc(&mut img);
        assert!(problems(img)[0].contains("wraps over itself"));

        let mut img = good.clone();
        img[4096 + 20] = 2;
        fix_mda_crc(&mut img);
        assert_eq!(
            problems(img),
            [format!("{area}metadata area header version 2")]
        );

        // An area past the end of the volume.
        let mut img = good.clone();
        img[512 + 104..512 + 112].copy_from_slice(&(PV_SIZE - 100).to_le_bytes());
        fix_label_crc(&mut img);
        assert!(problems(img)[0].contains("lies outside the volume"));

        // Syntax errors in the text name the area and the line.
        let img = synthetic_pv(UUID0, b"vg {\nextent_size = 8\n", PV_SIZE, 512).unwrap();
        assert_eq!(
            problems(img),
            [format!(
                "{area}metadata text line 3: unterminated section (missing '}}')"
            )]
        );

        // An empty or ignored area is no problem: a PV in no VG.
        let mut img = good.clone();
        img[4096 + 40..4096 + 64].fill(0);
        fix_mda_crc(&mut img);
        assert!(problems(img).is_empty());
        let mut img = good;
        img[4096 + 60] = 1;
        fix_mda_crc(&mut img);
        assert!(problems(img).is_empty());
    }

    /// Cheap in-process fuzzing of the whole path; `fuzz_walk::lvm` asserts the
    /// invariants.
    #[test]
    fn mutations_never_panic() {
        let text = two_pv_vg();
        let img = synthetic_pv(UUID0, text.as_bytes(), PV_SIZE, 512).unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let mut t = text.clone().into_bytes();
            for _ in 0..(rand() % 4 + 1) {
                let at = (rand() % t.len() as u64) as usize;
                let alphabet = b"{}[]=,\"\\#0123456789 \n-x";
                t[at] = alphabet[(rand() % alphabet.len() as u64) as usize];
            }
            crate::guest::fuzz_walk::lvm(&t);
        }
        let hot = [512usize, 512 + 64, 4096, 4096 + 40];
        for _ in 0..300 {
            let mut b = img[..8192].to_vec();
            for _ in 0..(rand() % 4 + 1) {
                let at = hot[(rand() % 4) as usize] + (rand() % 64) as usize;
                b[at] = rand() as u8;
            }
            fix_label_crc(&mut b);
            fix_mda_crc(&mut b);
            crate::guest::fuzz_walk::lvm(&b);
        }
    }

    // --- real LVM tools on loop devices --------------------------------------------------

    /// Loop devices attached by a test; detached on drop, which also makes the test's VG
    /// disappear from the system (it lives only in the image files).
    struct Loops(Vec<String>);

    impl Drop for Loops {
        fn drop(&mut self) {
            for dev in self.0.drain(..) {
                let _ = Command::new("losetup").args(["-d", &dev]).status();
            }
        }
    }

    const LVM_CONFIG: &str = "devices { use_devicesfile=0 } backup { backup=0 archive=0 }";

    fn lvm_cmd(args: &[&str]) -> std::process::Output {
        Command::new(args[0])
            .args(&args[1..])
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", args[0]))
    }

    fn check(out: std::process::Output, what: &str) {
        assert!(
            out.status.success(),
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn real_lvm_metadata_on_loop_devices() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: loop devices need root");
            return;
        }
        for tool in [
            "losetup",
            "pvcreate",
            "vgcreate",
            "vgcfgbackup",
            "vgcfgrestore",
        ] {
            if Command::new(tool).arg("--version").output().is_err() {
                eprintln!("skipping: {tool} is not installed");
                return;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let vg = format!("vmvt{}", std::process::id());
        let mut loops = Loops(Vec::new());
        let mut paths = Vec::new();
        for i in 0..2 {
            let path = dir.path().join(format!("pv{i}.img"));
            std::fs::File::create(&path)
                .unwrap()
                .set_len(64 << 20)
                .unwrap();
            let out = Command::new("losetup")
                .args(["-f", "--show"])
                .arg(&path)
                .output()
                .unwrap();
            if !out.status.success() {
                eprintln!(
                    "skipping: losetup failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                return;
            }
            loops
                .0
                .push(String::from_utf8_lossy(&out.stdout).trim().to_string());
            paths.push(path);
        }
        let (d0, d1) = (loops.0[0].clone(), loops.0[1].clone());
        check(
            lvm_cmd(&["pvcreate", "-q", "--config", LVM_CONFIG, &d0, &d1]),
            "pvcreate",
        );
        check(
            lvm_cmd(&["vgcreate", "-q", "--config", LVM_CONFIG, &vg, &d0, &d1]),
            "vgcreate",
        );
        let backup = dir.path().join("vg.txt");
        let backup_s = backup.to_str().unwrap();
        check(
            lvm_cmd(&[
                "vgcfgbackup",
                "-q",
                "--config",
                LVM_CONFIG,
                "-f",
                backup_s,
                &vg,
            ]),
            "vgcfgbackup",
        );
        // Add LVs at the end of the VG's section, the last one of the backup file.
        let text = std::fs::read_to_string(&backup).unwrap();
        let end = text.rfind('}').unwrap();
        let lvs = [
            linear("root", true, &[("pv0", 0, 4)]),
            linear("data", true, &[("pv0", 10, 2), ("pv1", 3, 5), ("pv0", 5, 3)]),
            linear("hidden", false, &[("pv0", 4, 1)]),
            "striped2 { id = \"x\" status = [\"READ\", \"WRITE\", \"VISIBLE\"] segment_count = 1 segment1 { start_extent = 0 extent_count = 2 type = \"striped\" stripe_count = 2 stripe_size = 128 stripes = [\"pv0\", 12, \"pv1\", 12] } }".to_string(),
        ];
        // lvm2 wants well-formed (32-character) LV ids.
        let lvs: Vec<String> = lvs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let id = format!("id = \"LVLVLV-BBBB-CCCC-DDDD-EEEE-FFFF-00000{i}\"");
                s.replacen("id = \"x\"", &id, 1)
            })
            .collect();
        let new_text = format!(
            "{}\nlogical_volumes {{\n{}\n}}\n{}",
            &text[..end],
            lvs.join("\n"),
            &text[end..]
        );
        std::fs::write(&backup, new_text).unwrap();
        check(
            lvm_cmd(&[
                "vgcfgrestore",
                "-q",
                "--config",
                LVM_CONFIG,
                "-f",
                backup_s,
                &vg,
            ]),
            "vgcfgrestore",
        );
        drop(loops); // detach: the VG leaves the system, the images keep it

        // Known bytes in each extent of each PV (pe_start 1 MiB, extents 4 MiB).
        let mut images = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            let mut img = std::fs::read(path).unwrap();
            for (k, b) in img[1 << 20..].iter_mut().enumerate() {
                *b = (k / 4093) as u8 ^ (k % 253) as u8 ^ (i as u8 * 0x3C);
            }
            std::fs::write(path, &img).unwrap();
            images.push(img);
        }
        let pvs: Vec<(Arc<dyn VolumeRead>, PvLabel)> = paths
            .iter()
            .map(|p| {
                let v: Arc<dyn VolumeRead> = Arc::new(ImageFile::open(p).unwrap());
                let l = read_pv_label(&*v).unwrap().expect("a PV label");
                assert!(l.problems.is_empty(), "{:?}", msgs(&l.problems));
                (v, l)
            })
            .collect();
        let md = pvs[0].1.metadata.as_ref().expect("VG metadata");
        assert_eq!(md.name, vg);
        assert_eq!(md.extent_size, 8192);
        assert_eq!(pvs[0].1.pe_start, 1 << 20);
        assert_eq!(md.physical_volumes.len(), 2);
        assert_eq!(bare_uuid(&md.physical_volumes[1].id), pvs[1].1.uuid);
        assert_eq!(pvs[1].1.metadata.as_ref().unwrap(), md);

        let (lvs, problems) = logical_volumes(&pvs, "web01-disk0");
        let names: Vec<_> = lvs.iter().map(|l| (l.name.as_str(), l.size)).collect();
        assert_eq!(names, [("root", 16 << 20), ("data", 40 << 20)]);
        assert_eq!(
            msgs(&problems),
            [format!(
                "web01-disk0/lvm/{vg}/striped2: segment 1 is striped over 2 physical volumes: \
                 only linear logical volumes can be read"
            )]
        );
        let ext = 4usize << 20;
        let slice = |img: usize, pe: usize, n: usize| {
            let a = (1 << 20) + pe * ext;
            &images[img][a..a + n * ext]
        };
        assert_eq!(read_all(&*lvs[0].view), slice(0, 0, 4));
        let want = [slice(0, 10, 2), slice(1, 3, 5), slice(0, 5, 3)].concat();
        assert_eq!(read_all(&*lvs[1].view), want);
        let mut buf = vec![0u8; 5000];
        lvs[1]
            .view
            .read_exact_at(2 * ext as u64 - 2500, &mut buf)
            .unwrap();
        assert_eq!(buf, want[2 * ext - 2500..2 * ext + 2500]);
    }
}
