//! Partition tables of guest disks: MBR (primary partitions and the logical partitions of
//! an extended partition's EBR chain) and GPT (primary header, or the backup header when
//! the primary is damaged).
//!
//! Everything read here is untrusted. Offsets and counts are checked before use, the EBR
//! chain is followed at most [`MAX_EBRS`] links and never twice through the same sector,
//! the GPT entry array is read only when it lies inside the disk and is at most
//! [`MAX_GPT_ARRAY`] bytes. Damaged entries are reported in
//! [`PartitionTable::problems`] and left out; the rest of the table is still returned.

use super::view::VolumeRead;
use super::{GuestError, Result};
use std::collections::HashSet;

/// Sector size of MBR tables (logical sectors of 4 KiB are not supported for MBR).
const MBR_SECTOR: u64 = 512;
/// Logical partitions returned at most; later ones are reported as a problem.
pub const MAX_LOGICAL: u32 = 128;
/// EBRs read at most per extended partition (empty EBRs included).
pub const MAX_EBRS: usize = 256;
/// Largest GPT partition entry array read, in bytes.
pub const MAX_GPT_ARRAY: u64 = 1 << 20;
/// Smallest GPT partition entry (the UEFI specification's minimum).
const MIN_GPT_ENTRY: u32 = 128;
/// GPT header signature.
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// Smallest GPT header (UEFI 2.x).
const GPT_HEADER_MIN: u32 = 92;

/// The kind of partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// A DOS/MBR table, possibly with logical partitions.
    Mbr,
    /// A GUID partition table.
    Gpt,
}

impl Scheme {
    /// A short lower-case name: `"mbr"` or `"gpt"`.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Mbr => "mbr",
            Scheme::Gpt => "gpt",
        }
    }
}

/// A disk's partition table as far as it could be read.
#[derive(Debug)]
pub struct PartitionTable {
    /// MBR or GPT.
    pub scheme: Scheme,
    /// The usable partitions, in increasing [`Partition::number`] order; each lies
    /// entirely inside the disk, and numbers are unique.
    pub partitions: Vec<Partition>,
    /// Damage met on the way: entries pointing outside the disk, a broken EBR chain, a
    /// damaged primary GPT header replaced by the backup... Each names the table or entry.
    pub problems: Vec<GuestError>,
}

/// One partition of a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The number Linux gives it: MBR primary slots 1 to 4 (empty slots keep their
    /// number), logical partitions from 5 in EBR-chain order; GPT: entry index + 1.
    pub number: u32,
    /// Byte offset on the disk.
    pub start: u64,
    /// Length in bytes, never 0; `start + size` never exceeds the disk's size.
    pub size: u64,
    /// The type in words ("Linux filesystem", "EFI System", ...), or `"type 0x83"` / the
    /// type GUID when the type is not known.
    pub type_name: String,
    /// The raw type: `"0x83"` for MBR, the lower-case canonical type GUID for GPT.
    pub type_id: String,
    /// True for the Linux LVM type (MBR 0x8e, GPT `e6d6d379-...`).
    pub is_lvm: bool,
    /// True for the Linux swap type (MBR 0x82, GPT `0657fd6d-...`).
    pub is_swap: bool,
    /// The GPT partition name, if any (trimmed at the first NUL; never empty).
    pub label: Option<String>,
}

/// Reads the partition table of `disk`.
///
/// Returns `Ok(None)` when the disk has neither an MBR (the 0x55AA signature at byte 510
/// with valid boot flags) nor a GPT header (at byte 512 or 4096, or a backup at the last
/// sector). A protective MBR (type 0xEE, hybrid MBRs included) means GPT. Errors are read
/// errors of the first sector, and a protective MBR whose GPT cannot be read at all;
/// damage inside a readable table goes to [`PartitionTable::problems`]. Never panics,
/// whatever the bytes.
pub fn read_partition_table(disk: &dyn VolumeRead) -> Result<Option<PartitionTable>> {
    let name = disk.name().to_string();
    if disk.size() < MBR_SECTOR {
        return Ok(None);
    }
    let mut sector = [0u8; 512];
    disk.read_exact_at(0, &mut sector)?;
    let entries = mbr_entries(&sector);
    let is_mbr =
        sector[510..512] == [0x55, 0xAA] && entries.iter().all(|e| e.boot == 0 || e.boot == 0x80);
    let protective = is_mbr && entries.iter().any(|e| e.kind == 0xEE);
    if protective {
        match read_gpt(disk)? {
            Gpt::Found(table) => return Ok(Some(table)),
            Gpt::Absent => {
                return fallback_to_mbr(
                    disk,
                    &entries,
                    "the protective MBR announces a GPT, but there is no GPT header at LBA 1 \
                     or at the last LBA"
                        .into(),
                )
            }
            Gpt::Broken(why) => {
                return fallback_to_mbr(
                    disk,
                    &entries,
                    format!("the protective MBR announces a GPT, but {why}"),
                )
            }
        }
    }
    if is_mbr {
        return Ok(Some(read_mbr(disk, &entries)?));
    }
    match read_gpt(disk)? {
        Gpt::Found(mut table) => {
            table.problems.insert(
                0,
                GuestError::corrupt(
                    format!("{name}: MBR"),
                    "no protective MBR in front of the GPT (read anyway)",
                ),
            );
            Ok(Some(table))
        }
        Gpt::Absent => Ok(None),
        Gpt::Broken(why) => Err(GuestError::corrupt(format!("{name}: GPT"), why)),
    }
}

/// A protective MBR without a readable GPT: the other MBR entries of a hybrid MBR are
/// used if there are any, else the table is an error.
fn fallback_to_mbr(
    disk: &dyn VolumeRead,
    entries: &[MbrEntry; 4],
    why: String,
) -> Result<Option<PartitionTable>> {
    let name = disk.name();
    let others = entries
        .iter()
        .any(|e| e.kind != 0 && e.kind != 0xEE && e.sectors != 0);
    if !others {
        return Err(GuestError::corrupt(format!("{name}: GPT"), why));
    }
    let mut table = read_mbr(disk, entries)?;
    table.problems.insert(
        0,
        GuestError::corrupt(
            format!("{name}: GPT"),
            format!("{why}; using the partitions of the hybrid MBR"),
        ),
    );
    Ok(Some(table))
}

// ---------------------------------------------------------------------------------------
// Byte helpers. Offsets are constants inside fixed buffers; out of range reads give 0.

fn u16_at(b: &[u8], off: usize) -> u16 {
    b.get(off..off.saturating_add(2))
        .and_then(|s| s.try_into().ok())
        .map(u16::from_le_bytes)
        .unwrap_or(0)
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

// ---------------------------------------------------------------------------------------
// CRC32 (IEEE 802.3, reflected, polynomial 0xEDB88320), shared with the LVM reader.

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// Feeds `data` into a running reflected CRC32 register `crc` (no pre- or
/// post-inversion: callers choose the initial value and final xor).
pub(crate) fn crc32_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = CRC_TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

/// The standard CRC32 (zlib, GPT) of `data`.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    !crc32_update(!0, data)
}

// ---------------------------------------------------------------------------------------
// Partition placement.

/// Converts a sector range to bytes and checks it lies inside a disk of `disk_size`
/// bytes; the error says what is wrong.
fn place(
    disk_size: u64,
    sector: u64,
    start_lba: u64,
    sectors: u64,
) -> std::result::Result<(u64, u64), String> {
    let start = start_lba
        .checked_mul(sector)
        .ok_or_else(|| format!("starts at LBA {start_lba}, outside the disk"))?;
    let size = sectors
        .checked_mul(sector)
        .ok_or_else(|| format!("its size of {sectors} sectors is out of range"))?;
    if start == 0 {
        return Err("starts at sector 0, over the partition table itself".into());
    }
    if start >= disk_size {
        return Err(format!(
            "starts at byte {start}, outside the disk ({disk_size} bytes)"
        ));
    }
    match start.checked_add(size) {
        Some(end) if end <= disk_size => Ok((start, size)),
        Some(end) => Err(format!(
            "ends at byte {end}, past the end of the disk ({disk_size} bytes)"
        )),
        None => Err(format!(
            "its end lies past the end of the disk ({disk_size} bytes)"
        )),
    }
}

// ---------------------------------------------------------------------------------------
// MBR.

#[derive(Debug, Clone, Copy, Default)]
struct MbrEntry {
    boot: u8,
    kind: u8,
    lba: u32,
    sectors: u32,
}

fn mbr_entries(sector: &[u8; 512]) -> [MbrEntry; 4] {
    let mut out = [MbrEntry::default(); 4];
    for (i, e) in out.iter_mut().enumerate() {
        let off = 446 + 16 * i;
        *e = MbrEntry {
            boot: sector.get(off).copied().unwrap_or(0),
            kind: sector.get(off + 4).copied().unwrap_or(0),
            lba: u32_at(sector, off + 8),
            sectors: u32_at(sector, off + 12),
        };
    }
    out
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0F | 0x85)
}

fn mbr_type_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        0x01 => "FAT12",
        0x04 => "FAT16 <32M",
        0x05 => "Extended",
        0x06 => "FAT16",
        0x07 => "NTFS/exFAT",
        0x0B => "FAT32",
        0x0C => "FAT32 (LBA)",
        0x0E => "FAT16 (LBA)",
        0x0F => "Extended (LBA)",
        0x11 => "Hidden FAT12",
        0x12 => "Compaq diagnostics",
        0x14 => "Hidden FAT16 <32M",
        0x16 => "Hidden FAT16",
        0x17 => "Hidden NTFS",
        0x1B => "Hidden FAT32",
        0x1C => "Hidden FAT32 (LBA)",
        0x1E => "Hidden FAT16 (LBA)",
        0x27 => "Windows recovery",
        0x42 => "Windows dynamic",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x85 => "Linux extended",
        0x8E => "Linux LVM",
        0xA5 => "FreeBSD",
        0xA6 => "OpenBSD",
        0xA8 => "Darwin UFS",
        0xA9 => "NetBSD",
        0xAF => "HFS / HFS+",
        0xBF => "Solaris",
        0xDE => "Dell Utility",
        0xEE => "GPT protective",
        0xEF => "EFI System",
        0xFB => "VMware VMFS",
        0xFC => "VMware VMKCORE",
        0xFD => "Linux raid autodetect",
        _ => return None,
    })
}

fn mbr_partition(number: u32, kind: u8, start: u64, size: u64) -> Partition {
    Partition {
        number,
        start,
        size,
        type_name: mbr_type_name(kind)
            .map(str::to_string)
            .unwrap_or_else(|| format!("type 0x{kind:02x}")),
        type_id: format!("0x{kind:02x}"),
        is_lvm: kind == 0x8E,
        is_swap: kind == 0x82,
        label: None,
    }
}

/// Reads the MBR table whose primary entries are `entries`, following the EBR chain of
/// every extended partition. GPT-protective entries are skipped.
fn read_mbr(disk: &dyn VolumeRead, entries: &[MbrEntry; 4]) -> Result<PartitionTable> {
    let name = disk.name();
    let size = disk.size();
    let mut table = PartitionTable {
        scheme: Scheme::Mbr,
        partitions: Vec::new(),
        problems: Vec::new(),
    };
    let mut extended = Vec::new();
    for (slot, e) in (1u32..).zip(entries.iter()) {
        if e.kind == 0 || e.kind == 0xEE || e.sectors == 0 {
            continue;
        }
        if is_extended(e.kind) {
            extended.push((slot, *e));
            continue;
        }
        match place(size, MBR_SECTOR, u64::from(e.lba), u64::from(e.sectors)) {
            Ok((start, len)) => table
                .partitions
                .push(mbr_partition(slot, e.kind, start, len)),
            Err(why) => table.problems.push(GuestError::corrupt(
                format!("{name}: MBR partition {slot}"),
                why,
            )),
        }
    }
    let mut next_number = 5u32;
    for (slot, ext) in extended {
        if next_number > 4 + MAX_LOGICAL {
            break;
        }
        read_ebr_chain(disk, slot, ext, &mut next_number, &mut table)?;
    }
    table.partitions.sort_by_key(|p| p.number);
    Ok(table)
}

/// Follows the EBR chain of the extended partition in primary slot `slot`, appending its
/// logical partitions (numbered from `*next_number`) and problems to `table`.
fn read_ebr_chain(
    disk: &dyn VolumeRead,
    slot: u32,
    ext: MbrEntry,
    next_number: &mut u32,
    table: &mut PartitionTable,
) -> Result<()> {
    let name = disk.name();
    let disk_size = disk.size();
    let ext_lba = u64::from(ext.lba);
    let ext_end_lba = ext_lba.saturating_add(u64::from(ext.sectors));
    if let Err(why) = place(disk_size, MBR_SECTOR, ext_lba, 1) {
        table.problems.push(GuestError::corrupt(
            format!("{name}: extended partition {slot}"),
            format!("its first EBR {why}"),
        ));
        return Ok(());
    }
    let mut visited = HashSet::new();
    let mut ebr_lba = ext_lba;
    for step in 0..=MAX_EBRS {
        let what = format!("{name}: EBR at LBA {ebr_lba}");
        if step == MAX_EBRS {
            table.problems.push(GuestError::corrupt(
                what,
                format!("the EBR chain of extended partition {slot} is longer than {MAX_EBRS} links: the rest is skipped"),
            ));
            break;
        }
        if !visited.insert(ebr_lba) {
            table.problems.push(GuestError::corrupt(
                what,
                "the EBR chain loops back to an EBR already read: the rest is skipped",
            ));
            break;
        }
        let Some(offset) = ebr_lba.checked_mul(MBR_SECTOR).filter(|o| {
            o.checked_add(MBR_SECTOR)
                .is_some_and(|end| end <= disk_size)
        }) else {
            table.problems.push(GuestError::corrupt(
                what,
                format!("the EBR lies outside the disk ({disk_size} bytes): the chain ends here"),
            ));
            break;
        };
        let mut sector = [0u8; 512];
        disk.read_exact_at(offset, &mut sector)?;
        if sector[510..512] != [0x55, 0xAA] {
            // An all-zero first EBR is an empty extended partition, not damage.
            if step > 0 || sector.iter().any(|&b| b != 0) {
                table.problems.push(GuestError::corrupt(
                    what,
                    "no 0x55AA signature: the EBR chain ends here",
                ));
            }
            break;
        }
        let entries = mbr_entries(&sector);
        for (i, e) in entries.iter().enumerate() {
            if e.kind == 0 || e.sectors == 0 || is_extended(e.kind) {
                continue;
            }
            let Some(start_lba) = ebr_lba.checked_add(u64::from(e.lba)) else {
                continue;
            };
            // Like Linux, the 3rd and 4th entries are often garbage: they count only when
            // they lie inside the extended partition.
            if i >= 2
                && (start_lba < ext_lba
                    || start_lba.saturating_add(u64::from(e.sectors)) > ext_end_lba)
            {
                continue;
            }
            if *next_number > 4 + MAX_LOGICAL {
                table.problems.push(GuestError::corrupt(
                    what,
                    format!("more than {MAX_LOGICAL} logical partitions: the rest are skipped"),
                ));
                return Ok(());
            }
            let number = *next_number;
            *next_number += 1;
            match place(disk_size, MBR_SECTOR, start_lba, u64::from(e.sectors)) {
                Ok((start, len)) => table
                    .partitions
                    .push(mbr_partition(number, e.kind, start, len)),
                Err(why) => table.problems.push(GuestError::corrupt(
                    format!("{name}: logical partition {number} (EBR at LBA {ebr_lba})"),
                    why,
                )),
            }
        }
        let Some(link) = entries
            .iter()
            .find(|e| is_extended(e.kind) && e.sectors != 0)
        else {
            break;
        };
        match ext_lba.checked_add(u64::from(link.lba)) {
            Some(next) => ebr_lba = next,
            None => break,
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// GPT.

enum Gpt {
    /// A valid header (primary, or backup with a problem recorded) and its entries.
    Found(PartitionTable),
    /// No "EFI PART" signature where headers live.
    Absent,
    /// Headers exist but none is usable: why, naming each.
    Broken(String),
}

struct GptHeader {
    lba: u64,
    alternate_lba: u64,
    entries_lba: u64,
    num_entries: u32,
    entry_size: u32,
    entries_crc: u32,
}

/// A header that could not be used: where, why, and whether its own checksum was good
/// (so that its alternate LBA can be trusted).
struct HeaderFault {
    lba: u64,
    reason: String,
    alternate: Option<u64>,
}

/// Reads the sector at `lba` of `sector` bytes if it lies inside the disk and starts
/// with the GPT signature.
fn gpt_sector(disk: &dyn VolumeRead, sector: u64, lba: u64) -> Result<Option<Vec<u8>>> {
    let Some(offset) = lba.checked_mul(sector) else {
        return Ok(None);
    };
    if offset
        .checked_add(sector)
        .is_none_or(|end| end > disk.size())
    {
        return Ok(None);
    }
    let mut sig = [0u8; 8];
    disk.read_exact_at(offset, &mut sig)?;
    if &sig != GPT_SIGNATURE {
        return Ok(None);
    }
    let mut buf = vec![0u8; sector as usize];
    disk.read_exact_at(offset, &mut buf)?;
    Ok(Some(buf))
}

/// Checks the GPT header in `buf` (one sector read at `lba`) and reads its entry array.
fn check_header(
    disk: &dyn VolumeRead,
    sector: u64,
    lba: u64,
    buf: &[u8],
) -> Result<std::result::Result<(GptHeader, Vec<u8>), HeaderFault>> {
    let fault = |reason: String, alternate: Option<u64>| {
        Ok(Err(HeaderFault {
            lba,
            reason,
            alternate,
        }))
    };
    let header_size = u32_at(buf, 12);
    if header_size < GPT_HEADER_MIN || u64::from(header_size) > sector {
        return fault(
            format!("header size {header_size} is out of range ({GPT_HEADER_MIN} to {sector})"),
            None,
        );
    }
    let mut copy = buf.get(..header_size as usize).unwrap_or_default().to_vec();
    if let Some(crc_field) = copy.get_mut(16..20) {
        crc_field.fill(0);
    }
    let stored = u32_at(buf, 16);
    let computed = crc32(&copy);
    if stored != computed {
        return fault(
            format!("header checksum mismatch (stored 0x{stored:08x}, computed 0x{computed:08x})"),
            None,
        );
    }
    let header = GptHeader {
        lba: u64_at(buf, 24),
        alternate_lba: u64_at(buf, 32),
        entries_lba: u64_at(buf, 72),
        num_entries: u32_at(buf, 80),
        entry_size: u32_at(buf, 84),
        entries_crc: u32_at(buf, 88),
    };
    let alternate = Some(header.alternate_lba);
    if header.lba != lba {
        return fault(
            format!("the header says it lies at LBA {}", header.lba),
            alternate,
        );
    }
    if header.entry_size < MIN_GPT_ENTRY || !header.entry_size.is_multiple_of(8) {
        return fault(
            format!(
                "partition entry size {} is invalid (at least {MIN_GPT_ENTRY}, a multiple of 8)",
                header.entry_size
            ),
            alternate,
        );
    }
    let array_len = u64::from(header.num_entries) * u64::from(header.entry_size);
    if array_len > MAX_GPT_ARRAY {
        return fault(
            format!(
                "{} partition entries of {} bytes make an array of {array_len} bytes, over the \
                 {MAX_GPT_ARRAY}-byte limit",
                header.num_entries, header.entry_size
            ),
            alternate,
        );
    }
    let array_start = header.entries_lba.checked_mul(sector);
    if header.entries_lba == 0
        || array_start
            .and_then(|s| s.checked_add(array_len))
            .is_none_or(|end| end > disk.size())
    {
        return fault(
            format!(
                "partition entry array at LBA {} ({array_len} bytes) lies outside the disk",
                header.entries_lba
            ),
            alternate,
        );
    }
    let array_start = array_start.unwrap_or(0);
    // array_len <= MAX_GPT_ARRAY and the array lies inside the disk: bounded allocation.
    let mut array = vec![0u8; array_len as usize];
    disk.read_exact_at(array_start, &mut array)?;
    let computed = crc32(&array);
    if computed != header.entries_crc {
        return fault(
            format!(
                "partition entry array checksum mismatch (stored 0x{:08x}, computed 0x{computed:08x})",
                header.entries_crc
            ),
            alternate,
        );
    }
    Ok(Ok((header, array)))
}

/// Formats a GPT GUID (mixed-endian on disk) in canonical lower-case text form.
fn guid_text(b: &[u8]) -> String {
    let mut g = [0u8; 16];
    if let Some(src) = b.get(..16) {
        g.copy_from_slice(src);
    }
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        u32_at(&g, 0),
        u16_at(&g, 4),
        u16_at(&g, 6),
        g[8],
        g[9],
        g[10],
        g[11],
        g[12],
        g[13],
        g[14],
        g[15]
    )
}

const GPT_LVM: &str = "e6d6d379-f507-44c2-a23c-238f2a3df928";
const GPT_SWAP: &str = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f";

fn gpt_type_name(guid: &str) -> Option<&'static str> {
    Some(match guid {
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b" => "EFI System",
        "21686148-6449-6e6f-744e-656564454649" => "BIOS boot",
        "0fc63daf-8483-4772-8e79-3d69d8477de4" => "Linux filesystem",
        GPT_LVM => "Linux LVM",
        GPT_SWAP => "Linux swap",
        "a19d880f-05fc-4d3b-a006-743f0f84911e" => "Linux RAID",
        "44479540-f297-41b2-9af7-d131d5f0458a" => "Linux root (x86)",
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709" => "Linux root (x86-64)",
        "b921b045-1df0-41c3-af44-4c6f280d3fae" => "Linux root (ARM64)",
        "69dad710-2ce4-4e3c-b16c-21a1d49abed3" => "Linux root (ARM)",
        "933ac7e1-2eb4-4f13-b844-0e14e2aef915" => "Linux /home",
        "3b8f8425-20e0-4f3b-907f-1a25a76f98e8" => "Linux /srv",
        "4d21b016-b534-45c2-a9fb-5c16e091fd2d" => "Linux /var",
        "7ec6f557-3bc5-4aca-b293-16ef5df639d1" => "Linux /var/tmp",
        "ca7d7ccb-63ed-4c53-861c-1742536059cc" => "Linux LUKS",
        "8da63339-0007-60c0-c436-083ac8230908" => "Linux reserved",
        "bc13c2ff-59e6-4262-a352-b275fd6f7172" => "Linux extended boot",
        "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7" => "Microsoft basic data",
        "e3c9e316-0b5c-4db8-817d-f92df00215ae" => "Microsoft reserved",
        "de94bba4-06d1-4d40-a16a-bfd50179d6ac" => "Windows recovery",
        "5808c8aa-7e8f-42e0-85d2-e1e90434cfb3" => "Windows LDM metadata",
        "af9b60a0-1431-4f62-bc68-3311714a69ad" => "Windows LDM data",
        "48465300-0000-11aa-aa11-00306543ecac" => "Apple HFS/HFS+",
        "7c3457ef-0000-11aa-aa11-00306543ecac" => "Apple APFS",
        "83bd6b9d-7f41-11dc-be0b-001560b84f0f" => "FreeBSD boot",
        "516e7cb5-6ecf-11d6-8ff8-00022d09712b" => "FreeBSD swap",
        "516e7cb6-6ecf-11d6-8ff8-00022d09712b" => "FreeBSD UFS",
        "516e7cba-6ecf-11d6-8ff8-00022d09712b" => "FreeBSD ZFS",
        "6a898cc3-1dd2-11b2-99a6-080020736631" => "Solaris /usr & Apple ZFS",
        "aa31e02a-400f-11db-9590-000c2911d1b8" => "VMware VMFS",
        "9d275380-40ad-11db-bf97-000c2911d1b8" => "VMware kcore",
        "9e1a2d38-c612-4316-aa26-8b49521e5a8b" => "PowerPC PReP boot",
        "024dee41-33e7-11d3-9d69-0008c781f39f" => "MBR partition scheme",
        _ => return None,
    })
}

/// Decodes a GPT partition name: UTF-16LE, up to the first NUL, trimmed.
fn gpt_label(raw: &[u8]) -> Option<String> {
    let units: Vec<u16> = raw
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let text = String::from_utf16_lossy(&units);
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Finds and reads the GPT of `disk`: the primary header at LBA 1 (512- then
/// 4096-byte sectors), else a backup header.
fn read_gpt(disk: &dyn VolumeRead) -> Result<Gpt> {
    let name = disk.name();
    let mut faults: Vec<HeaderFault> = Vec::new();
    let mut sector_sizes: Vec<u64> = vec![512, 4096];
    for sector in [512u64, 4096] {
        if let Some(buf) = gpt_sector(disk, sector, 1)? {
            match check_header(disk, sector, 1, &buf)? {
                Ok((header, array)) => {
                    return Ok(Gpt::Found(gpt_table(disk, sector, &header, &array)))
                }
                Err(f) => {
                    faults.push(f);
                    sector_sizes = vec![sector];
                    break;
                }
            }
        }
    }
    for sector in sector_sizes {
        let lbas = disk.size() / sector;
        if lbas < 3 {
            continue;
        }
        let mut candidates = vec![lbas - 1];
        if let Some(alt) = faults.first().and_then(|f| f.alternate) {
            if alt != lbas - 1 && alt > 1 && alt < lbas {
                candidates.push(alt);
            }
        }
        for lba in candidates {
            let Some(buf) = gpt_sector(disk, sector, lba)? else {
                continue;
            };
            match check_header(disk, sector, lba, &buf)? {
                Ok((header, array)) => {
                    let mut table = gpt_table(disk, sector, &header, &array);
                    let primary = match faults.first() {
                        Some(f) => format!("{}; using the backup header at LBA {lba}", f.reason),
                        None => format!(
                            "no primary GPT header (no signature); using the backup header at \
                             LBA {lba}"
                        ),
                    };
                    table.problems.insert(
                        0,
                        GuestError::corrupt(format!("{name}: GPT header at LBA 1"), primary),
                    );
                    return Ok(Gpt::Found(table));
                }
                Err(f) => faults.push(f),
            }
        }
    }
    if faults.is_empty() {
        return Ok(Gpt::Absent);
    }
    let why: Vec<String> = faults
        .iter()
        .map(|f| format!("the GPT header at LBA {}: {}", f.lba, f.reason))
        .collect();
    let mut why = why.join("; ");
    if faults.len() == 1 {
        why.push_str("; no usable backup header");
    }
    Ok(Gpt::Broken(why))
}

/// The partitions of a checked GPT header and its entry array.
fn gpt_table(
    disk: &dyn VolumeRead,
    sector: u64,
    header: &GptHeader,
    array: &[u8],
) -> PartitionTable {
    let name = disk.name();
    let mut table = PartitionTable {
        scheme: Scheme::Gpt,
        partitions: Vec::new(),
        problems: Vec::new(),
    };
    let entry_size = header.entry_size as usize;
    for (number, entry) in (1u32..).zip(array.chunks_exact(entry_size)) {
        let type_guid = entry.get(..16).unwrap_or_default();
        if type_guid.iter().all(|&b| b == 0) {
            continue;
        }
        let first = u64_at(entry, 32);
        let last = u64_at(entry, 40);
        let what = format!("{name}: GPT partition {number}");
        if last < first {
            table.problems.push(GuestError::corrupt(
                what,
                format!("ends at LBA {last}, before its start at LBA {first}"),
            ));
            continue;
        }
        let sectors = (last - first).saturating_add(1);
        let (start, size) = match place(disk.size(), sector, first, sectors) {
            Ok(p) => p,
            Err(why) => {
                table.problems.push(GuestError::corrupt(what, why));
                continue;
            }
        };
        let type_id = guid_text(type_guid);
        table.partitions.push(Partition {
            number,
            start,
            size,
            type_name: gpt_type_name(&type_id)
                .map(str::to_string)
                .unwrap_or_else(|| type_id.clone()),
            is_lvm: type_id == GPT_LVM,
            is_swap: type_id == GPT_SWAP,
            type_id,
            label: gpt_label(entry.get(56..128).unwrap_or_default()),
        });
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_file::{ImageFile, MemFile};
    use std::process::Command;

    const LINUX_FS: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";
    const EFI: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";

    fn mem(bytes: Vec<u8>) -> MemFile {
        MemFile::new(bytes, "web01-disk0")
    }

    fn table(bytes: Vec<u8>) -> PartitionTable {
        read_partition_table(&mem(bytes))
            .expect("table reads")
            .expect("a table is found")
    }

    fn numbers(t: &PartitionTable) -> Vec<u32> {
        t.partitions.iter().map(|p| p.number).collect()
    }

    fn messages(t: &PartitionTable) -> Vec<String> {
        t.problems.iter().map(|e| e.to_string()).collect()
    }

    /// Runs a command; `false` (with a note) when the tool is missing, a panic when it
    /// runs and fails.
    fn run(cmd: &mut Command, stdin: Option<&str>) -> bool {
        use std::io::Write;
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("skipping: cannot run {:?}: {e}", cmd.get_program());
                return false;
            }
        };
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        true
    }

    // --- hand-made GPT images -----------------------------------------------------------

    fn guid_bytes(text: &str) -> [u8; 16] {
        let hex: String = text.chars().filter(|c| *c != '-').collect();
        let mut b = [0u8; 16];
        for (i, out) in b.iter_mut().enumerate() {
            *out = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        b[0..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
        b
    }

    struct Entry {
        index: usize,
        kind: &'static str,
        first: u64,
        last: u64,
        name: &'static str,
    }

    struct GptImage {
        sector: u64,
        lbas: u64,
        num_entries: u32,
        entry_size: u32,
        bytes: Vec<u8>,
    }

    impl GptImage {
        fn new(sector: u64, lbas: u64, entries: &[Entry]) -> GptImage {
            let mut g = GptImage {
                sector,
                lbas,
                num_entries: 128,
                entry_size: 128,
                bytes: vec![0u8; (sector * lbas) as usize],
            };
            // Protective MBR.
            g.bytes[446 + 4] = 0xEE;
            g.bytes[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
            let n = u32::try_from(lbas - 1).unwrap_or(u32::MAX);
            g.bytes[446 + 12..446 + 16].copy_from_slice(&n.to_le_bytes());
            g.bytes[510] = 0x55;
            g.bytes[511] = 0xAA;
            let mut array = vec![0u8; 128 * 128];
            for e in entries {
                let off = e.index * 128;
                array[off..off + 16].copy_from_slice(&guid_bytes(e.kind));
                array[off + 16] = e.index as u8 + 1; // unique GUID, whatever
                array[off + 32..off + 40].copy_from_slice(&e.first.to_le_bytes());
                array[off + 40..off + 48].copy_from_slice(&e.last.to_le_bytes());
                for (i, u) in e.name.encode_utf16().enumerate() {
                    array[off + 56 + 2 * i..off + 58 + 2 * i].copy_from_slice(&u.to_le_bytes());
                }
            }
            let array_sectors = (array.len() as u64).div_ceil(sector);
            let backup_array = lbas - 1 - array_sectors;
            g.put(2 * sector, &array);
            g.put(backup_array * sector, &array);
            g.write_header(1, lbas - 1, 2, crc32(&array));
            g.write_header(lbas - 1, 1, backup_array, crc32(&array));
            g
        }

        fn put(&mut self, offset: u64, data: &[u8]) {
            let o = offset as usize;
            self.bytes[o..o + data.len()].copy_from_slice(data);
        }

        fn header_offset(&self, lba: u64) -> usize {
            (lba * self.sector) as usize
        }

        fn write_header(&mut self, lba: u64, alternate: u64, entries_lba: u64, array_crc: u32) {
            let mut h = vec![0u8; 92];
            h[0..8].copy_from_slice(GPT_SIGNATURE);
            h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
            h[12..16].copy_from_slice(&92u32.to_le_bytes());
            h[24..32].copy_from_slice(&lba.to_le_bytes());
            h[32..40].copy_from_slice(&alternate.to_le_bytes());
            h[40..48].copy_from_slice(&34u64.to_le_bytes());
            h[48..56].copy_from_slice(&(self.lbas - 34).to_le_bytes());
            h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
            h[80..84].copy_from_slice(&self.num_entries.to_le_bytes());
            h[84..88].copy_from_slice(&self.entry_size.to_le_bytes());
            h[88..92].copy_from_slice(&array_crc.to_le_bytes());
            let crc = crc32(&h);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
            self.put(lba * self.sector, &h);
        }

        /// Changes a header field and fixes the header checksum, so that only the field
        /// is wrong.
        fn patch_header(&mut self, lba: u64, field: usize, value: &[u8]) {
            let o = self.header_offset(lba);
            self.bytes[o + field..o + field + value.len()].copy_from_slice(value);
            self.bytes[o + 16..o + 20].fill(0);
            let crc = crc32(&self.bytes[o..o + 92]);
            self.bytes[o + 16..o + 20].copy_from_slice(&crc.to_le_bytes());
        }

        /// Changes an entry of the primary array and fixes both checksums.
        fn patch_primary_entry(&mut self, index: usize, field: usize, value: &[u8]) {
            let o = (2 * self.sector) as usize + index * 128 + field;
            self.bytes[o..o + value.len()].copy_from_slice(value);
            let a = (2 * self.sector) as usize;
            let crc = crc32(&self.bytes[a..a + 128 * 128]);
            self.patch_header(1, 88, &crc.to_le_bytes());
        }
    }

    fn two_partitions() -> Vec<Entry> {
        vec![
            Entry {
                index: 0,
                kind: EFI,
                first: 34,
                last: 99,
                name: "ESP",
            },
            Entry {
                index: 2,
                kind: LINUX_FS,
                first: 100,
                last: 199,
                name: "root",
            },
        ]
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn hand_made_gpt_reads() {
        let g = GptImage::new(512, 256, &two_partitions());
        let t = table(g.bytes);
        assert_eq!(t.scheme, Scheme::Gpt);
        assert!(t.problems.is_empty(), "{:?}", messages(&t));
        assert_eq!(numbers(&t), [1, 3]);
        let p = &t.partitions[1];
        assert_eq!((p.start, p.size), (100 * 512, 100 * 512));
        assert_eq!(p.type_id, LINUX_FS);
        assert_eq!(p.type_name, "Linux filesystem");
        assert_eq!(p.label.as_deref(), Some("root"));
        assert_eq!(t.partitions[0].type_name, "EFI System");
    }

    #[test]
    fn gpt_with_4096_byte_sectors() {
        let g = GptImage::new(4096, 256, &two_partitions());
        let t = table(g.bytes);
        assert_eq!(t.scheme, Scheme::Gpt);
        assert!(t.problems.is_empty(), "{:?}", messages(&t));
        assert_eq!(numbers(&t), [1, 3]);
        assert_eq!(t.partitions[1].start, 100 * 4096);
        assert_eq!(t.partitions[1].size, 100 * 4096);
    }

    #[test]
    fn bad_primary_header_crc_falls_back_to_backup() {
        let mut g = GptImage::new(512, 256, &two_partitions());
        g.bytes[512 + 40] ^= 0xFF; // first usable LBA, checksum not fixed
        let t = table(g.bytes);
        assert_eq!(numbers(&t), [1, 3]);
        let m = messages(&t);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(
            m[0].starts_with("web01-disk0: GPT header at LBA 1: header checksum mismatch"),
            "{m:?}"
        );
        assert!(m[0].contains("using the backup header at LBA 255"), "{m:?}");
    }

    #[test]
    fn bad_entry_array_crc_falls_back_to_backup() {
        let mut g = GptImage::new(512, 256, &two_partitions());
        g.bytes[2 * 512 + 128 * 2 + 40] ^= 1; // the primary copy of entry 3
        let t = table(g.bytes);
        assert_eq!(numbers(&t), [1, 3]);
        assert_eq!(t.partitions[1].size, 100 * 512);
        let m = messages(&t);
        assert!(
            m[0].contains("partition entry array checksum mismatch"),
            "{m:?}"
        );
    }

    #[test]
    fn both_headers_bad_is_an_error_naming_both() {
        let mut g = GptImage::new(512, 256, &two_partitions());
        g.bytes[512 + 40] ^= 0xFF;
        g.bytes[255 * 512 + 40] ^= 0xFF;
        let e = read_partition_table(&mem(g.bytes)).unwrap_err().to_string();
        assert!(
            e.starts_with("web01-disk0: GPT: the protective MBR announces a GPT"),
            "{e}"
        );
        assert!(e.contains("LBA 1: header checksum mismatch"), "{e}");
        assert!(e.contains("LBA 255: header checksum mismatch"), "{e}");
    }

    #[test]
    fn absurd_entry_count_is_refused_without_allocating() {
        let mut g = GptImage::new(512, 256, &two_partitions());
        g.patch_header(1, 80, &u32::MAX.to_le_bytes());
        let t = table(g.bytes.clone());
        assert_eq!(numbers(&t), [1, 3], "the backup is used");
        let m = messages(&t);
        assert!(m[0].contains("over the 1048576-byte limit"), "{m:?}");

        // Without a usable backup, the table is an error.
        g.patch_header(255, 84, &u32::MAX.to_le_bytes());
        let e = read_partition_table(&mem(g.bytes)).unwrap_err().to_string();
        assert!(e.contains("entry size 4294967295 is invalid"), "{e}");
    }

    #[test]
    fn entry_array_outside_the_disk() {
        let mut g = GptImage::new(512, 256, &two_partitions());
        g.patch_header(1, 72, &250u64.to_le_bytes());
        g.patch_header(255, 72, &u64::MAX.to_le_bytes());
        let e = read_partition_table(&mem(g.bytes)).unwrap_err().to_string();
        assert!(
            e.contains("GPT header at LBA 1: partition entry array at LBA 250 (16384 bytes) lies outside the disk"),
            "{e}"
        );
        assert!(e.contains("LBA 255: partition entry array"), "{e}");
    }

    #[test]
    fn gpt_entries_out_of_range_are_problems() {
        let mut entries = two_partitions();
        entries.push(Entry {
            index: 3,
            kind: LINUX_FS,
            first: 200,
            last: 300, // past the end (256 sectors)
            name: "long",
        });
        entries.push(Entry {
            index: 4,
            kind: LINUX_FS,
            first: 1 << 60,
            last: u64::MAX,
            name: "far",
        });
        entries.push(Entry {
            index: 5,
            kind: LINUX_FS,
            first: 150,
            last: 120,
            name: "backwards",
        });
        entries.push(Entry {
            index: 6,
            kind: "01234567-89ab-cdef-0123-456789abcdef",
            first: 200,
            last: 210,
            name: "",
        });
        let g = GptImage::new(512, 256, &entries);
        let t = table(g.bytes);
        assert_eq!(numbers(&t), [1, 3, 7]);
        let p7 = &t.partitions[2];
        assert_eq!(p7.type_name, "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(p7.label, None);
        let m = messages(&t);
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(
            m[0].starts_with("web01-disk0: GPT partition 4: ends at byte"),
            "{m:?}"
        );
        assert!(m[1].starts_with("web01-disk0: GPT partition 5: "), "{m:?}");
        assert!(
            m[2].contains("GPT partition 6: ends at LBA 120, before its start"),
            "{m:?}"
        );
    }

    #[test]
    fn a_valid_primary_is_preferred_to_a_differing_backup() {
        let mut g = GptImage::new(512, 256, &two_partitions());
        // Partition 3 now ends past the disk in the primary only, checksums fixed: the
        // primary is valid, so it is used and the entry reported.
        g.patch_primary_entry(2, 40, &1000u64.to_le_bytes());
        let t = table(g.bytes);
        assert_eq!(numbers(&t), [1]);
        assert_eq!(
            messages(&t),
            [
                "web01-disk0: GPT partition 3: ends at byte 512512, past the end of the disk \
              (131072 bytes)"
            ]
        );
    }

    #[test]
    fn header_pointing_elsewhere_is_refused() {
        let mut g = GptImage::new(512, 256, &two_partitions());
        g.patch_header(1, 24, &7u64.to_le_bytes());
        let t = table(g.bytes);
        assert!(messages(&t)[0].contains("the header says it lies at LBA 7"));
        assert_eq!(numbers(&t), [1, 3]);
    }

    #[test]
    fn gpt_without_protective_mbr_is_read_with_a_problem() {
        let mut g = GptImage::new(512, 256, &two_partitions());
        g.bytes[..512].fill(0);
        let t = table(g.bytes);
        assert_eq!(t.scheme, Scheme::Gpt);
        assert_eq!(numbers(&t), [1, 3]);
        assert!(messages(&t)[0].contains("no protective MBR"));
    }

    #[test]
    fn hybrid_mbr_with_broken_gpt_uses_mbr_entries() {
        let mut g = GptImage::new(512, 256, &two_partitions());
        // Slot 2: a Linux partition over sectors 100..200.
        let e = 446 + 16;
        g.bytes[e + 4] = 0x83;
        g.bytes[e + 8..e + 12].copy_from_slice(&100u32.to_le_bytes());
        g.bytes[e + 12..e + 16].copy_from_slice(&100u32.to_le_bytes());
        g.bytes[512..1024].fill(0);
        g.bytes[255 * 512..].fill(0);
        let t = table(g.bytes);
        assert_eq!(t.scheme, Scheme::Mbr);
        assert_eq!(numbers(&t), [2]);
        assert_eq!(t.partitions[0].type_name, "Linux");
        assert!(messages(&t)[0].contains("using the partitions of the hybrid MBR"));
    }

    #[test]
    fn only_a_protective_mbr_is_an_error() {
        let mut g = GptImage::new(512, 256, &two_partitions());
        g.bytes[512..1024].fill(0);
        g.bytes[255 * 512..].fill(0);
        let e = read_partition_table(&mem(g.bytes)).unwrap_err().to_string();
        assert!(
            e.contains("no GPT header at LBA 1 or at the last LBA"),
            "{e}"
        );
    }

    // --- hand-made MBR images -----------------------------------------------------------

    fn mbr_entry(sector: &mut [u8], slot: usize, kind: u8, lba: u32, sectors: u32) {
        let e = 446 + 16 * slot;
        sector[e + 4] = kind;
        sector[e + 8..e + 12].copy_from_slice(&lba.to_le_bytes());
        sector[e + 12..e + 16].copy_from_slice(&sectors.to_le_bytes());
        sector[510] = 0x55;
        sector[511] = 0xAA;
    }

    #[test]
    fn no_signature_means_no_table() {
        assert!(read_partition_table(&mem(vec![0; 4096])).unwrap().is_none());
        assert!(read_partition_table(&mem(vec![0; 100])).unwrap().is_none());
        assert!(read_partition_table(&mem(Vec::new())).unwrap().is_none());
        // A signature with garbage boot flags (a boot sector) is not a table either.
        let mut b = vec![0u8; 4096];
        mbr_entry(&mut b, 0, 0x83, 1, 2);
        b[446] = 0x12;
        assert!(read_partition_table(&mem(b)).unwrap().is_none());
    }

    #[test]
    fn mbr_entries_outside_the_disk_are_problems() {
        let mut b = vec![0u8; 100 * 512];
        mbr_entry(&mut b, 0, 0x83, 1, 10);
        mbr_entry(&mut b, 1, 0x83, 90, 20); // extends past the end
        mbr_entry(&mut b, 2, 0x07, 200, 20); // starts past the end
        mbr_entry(&mut b, 3, 0x8e, u32::MAX, u32::MAX);
        let t = table(b);
        assert_eq!(numbers(&t), [1]);
        let m = messages(&t);
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[0],
            "web01-disk0: MBR partition 2: ends at byte 56320, past the end of the disk (51200 bytes)"
        );
        assert!(m[1].starts_with("web01-disk0: MBR partition 3: starts at byte 102400"));
        assert!(m[2].starts_with("web01-disk0: MBR partition 4: "));
    }

    /// An MBR with one extended partition at LBA 10 of `len` sectors; EBRs are added by
    /// the caller.
    fn extended_disk(sectors: usize, len: u32) -> Vec<u8> {
        let mut b = vec![0u8; sectors * 512];
        mbr_entry(&mut b, 0, 0x83, 1, 9);
        mbr_entry(&mut b, 1, 0x05, 10, len);
        b
    }

    fn ebr(b: &mut [u8], lba: usize, data: Option<(u32, u32)>, next: Option<u32>) {
        let s = &mut b[lba * 512..(lba + 1) * 512];
        if let Some((rel, n)) = data {
            mbr_entry(s, 0, 0x83, rel, n);
        }
        if let Some(next) = next {
            mbr_entry(s, 1, 0x05, next, 2);
        }
        s[510] = 0x55;
        s[511] = 0xAA;
    }

    #[test]
    fn ebr_loop_is_detected() {
        let mut b = extended_disk(100, 80);
        ebr(&mut b, 10, Some((1, 4)), Some(10)); // -> LBA 20
        ebr(&mut b, 20, Some((1, 4)), Some(0)); // -> LBA 10 again
        let t = table(b);
        assert_eq!(numbers(&t), [1, 5, 6]);
        assert_eq!(t.partitions[1].start, 11 * 512);
        assert_eq!(t.partitions[2].start, 21 * 512);
        let m = messages(&t);
        assert_eq!(m.len(), 1);
        assert!(
            m[0].starts_with("web01-disk0: EBR at LBA 10: the EBR chain loops back"),
            "{m:?}"
        );
    }

    #[test]
    fn self_referencing_ebr_terminates() {
        let mut b = extended_disk(100, 80);
        ebr(&mut b, 10, Some((1, 4)), Some(0));
        let t = table(b);
        assert_eq!(numbers(&t), [1, 5]);
        assert_eq!(t.problems.len(), 1);
    }

    #[test]
    fn logical_partitions_are_capped() {
        let n = 140usize;
        let mut b = extended_disk(10 + 2 * n + 2, (2 * n + 1) as u32);
        for i in 0..n {
            let lba = 10 + 2 * i;
            ebr(&mut b, lba, Some((1, 1)), Some((2 * i + 2) as u32));
        }
        let t = table(b);
        assert_eq!(t.partitions.len(), 1 + MAX_LOGICAL as usize);
        assert_eq!(t.partitions.last().unwrap().number, 4 + MAX_LOGICAL);
        let m = messages(&t);
        assert!(
            m.iter()
                .any(|m| m.contains("more than 128 logical partitions")),
            "{m:?}"
        );
    }

    #[test]
    fn long_chain_of_empty_ebrs_is_capped() {
        let n = MAX_EBRS + 20;
        let mut b = extended_disk(10 + n + 2, (n + 1) as u32);
        for i in 0..n {
            ebr(&mut b, 10 + i, None, Some((i + 1) as u32));
        }
        let t = table(b);
        assert_eq!(numbers(&t), [1]);
        assert!(messages(&t)[0].contains("longer than 256 links"));
    }

    #[test]
    fn ebr_outside_the_disk_and_missing_signature() {
        let mut b = extended_disk(100, 80);
        ebr(&mut b, 10, Some((1, 4)), Some(1000));
        let t = table(b);
        assert_eq!(numbers(&t), [1, 5]);
        assert!(messages(&t)[0].contains("EBR at LBA 1010: the EBR lies outside the disk"));

        let mut b = extended_disk(100, 80);
        ebr(&mut b, 10, Some((1, 4)), Some(20));
        b[30 * 512 + 3] = 1; // LBA 30: not an EBR
        let t = table(b);
        assert_eq!(numbers(&t), [1, 5]);
        assert!(messages(&t)[0].contains("EBR at LBA 30: no 0x55AA signature"));

        // An untouched (all-zero) extended partition is not damage.
        let t = table(extended_disk(100, 80));
        assert_eq!(numbers(&t), [1]);
        assert!(t.problems.is_empty());
    }

    #[test]
    fn truncated_disk() {
        let g = GptImage::new(512, 256, &two_partitions());
        // Cut the disk inside partition 3: the primary still reads, partition 3 does not
        // fit any more.
        let t = table(g.bytes[..150 * 512].to_vec());
        assert_eq!(numbers(&t), [1]);
        let m = messages(&t);
        assert!(
            m.iter()
                .any(|m| m.contains("GPT partition 3: ends at byte 102400")),
            "{m:?}"
        );
        // Cut inside the primary entry array: nothing usable.
        assert!(read_partition_table(&mem(g.bytes[..2048].to_vec())).is_err());
    }

    /// Cheap in-process fuzzing: random byte flips of valid tables never panic and never
    /// yield a partition outside the disk.
    #[test]
    fn mutations_never_panic() {
        let gpt = GptImage::new(512, 256, &two_partitions()).bytes;
        let mut mbr = extended_disk(100, 80);
        ebr(&mut mbr, 10, Some((1, 4)), Some(10));
        ebr(&mut mbr, 20, Some((1, 4)), None);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let hot = [
            0usize,
            446,
            510,
            512,
            512 + 72,
            512 + 80,
            1024,
            10 * 512 + 446,
        ];
        for round in 0..3000 {
            let mut b = if round % 2 == 0 {
                gpt.clone()
            } else {
                mbr.clone()
            };
            for _ in 0..(rand() % 8 + 1) {
                let base = hot[(rand() % hot.len() as u64) as usize];
                let at = (base + (rand() % 64) as usize) % b.len();
                b[at] = rand() as u8;
            }
            if round % 7 == 0 {
                b.truncate((rand() % b.len() as u64) as usize);
            }
            let size = b.len() as u64;
            if let Ok(Some(t)) = read_partition_table(&mem(b)) {
                for p in &t.partitions {
                    assert!(p.size > 0 && p.start.checked_add(p.size).unwrap() <= size);
                }
            }
        }
    }

    // --- images made by the real tools --------------------------------------------------

    #[test]
    fn sgdisk_gpt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpt.img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let ok = run(
            Command::new("sgdisk")
                .args(["-n", "1:2048:+1M", "-t", "1:ef02", "-c", "1:BIOS boot"])
                .args(["-n", "2:0:+8M", "-t", "2:ef00", "-c", "2:EFI system"])
                .args(["-n", "3:0:+16M", "-t", "3:8300", "-c", "3:root fs"])
                .args(["-n", "5:0:+8M", "-t", "5:8e00", "-c", "5:pv"])
                .args(["-n", "6:0:0", "-t", "6:8200"])
                .arg(&path),
            None,
        );
        if !ok {
            return;
        }
        let disk = ImageFile::open(&path).unwrap();
        let t = read_partition_table(&disk).unwrap().unwrap();
        assert_eq!(t.scheme, Scheme::Gpt);
        assert!(t.problems.is_empty(), "{:?}", messages(&t));
        let got: Vec<_> = t
            .partitions
            .iter()
            .map(|p| {
                (
                    p.number,
                    p.start / 512,
                    p.size / 512,
                    p.type_name.as_str(),
                    p.label.as_deref(),
                    p.is_lvm,
                    p.is_swap,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (1, 2048, 2048, "BIOS boot", Some("BIOS boot"), false, false),
                (
                    2,
                    4096,
                    16384,
                    "EFI System",
                    Some("EFI system"),
                    false,
                    false
                ),
                (
                    3,
                    20480,
                    32768,
                    "Linux filesystem",
                    Some("root fs"),
                    false,
                    false
                ),
                (5, 53248, 16384, "Linux LVM", Some("pv"), true, false),
                (
                    6,
                    69632,
                    131038 - 69632 + 1,
                    "Linux swap",
                    None,
                    false,
                    true
                ),
            ]
        );
        assert_eq!(t.partitions[2].type_id, LINUX_FS);

        // Damage the primary header on the copy: the backup takes over.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[512 + 20] ^= 0x55;
        let t2 = table(bytes.clone());
        assert_eq!(t2.partitions, t.partitions);
        assert_eq!(t2.problems.len(), 1);

        // Truncated to 40 MiB: partitions 5 and 6 no longer fit; the primary still reads.
        bytes.truncate(40 << 20);
        bytes[512 + 20] ^= 0x55;
        let t3 = table(bytes);
        assert_eq!(numbers(&t3), [1, 2, 3, 5]);
        let m = messages(&t3);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].starts_with("web01-disk0: GPT partition 6: "), "{m:?}");
    }

    #[test]
    fn sfdisk_mbr_with_logical_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mbr.img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let layout = "label: dos\n\
            start=2048, size=8192, type=83\n\
            start=10240, size=65536, type=5\n\
            start=12288, size=16384, type=8e\n\
            start=30720, size=8192, type=c\n\
            start=40960, size=20480, type=82\n\
            start=77824, size=4096, type=7\n";
        if !run(Command::new("sfdisk").arg("-q").arg(&path), Some(layout)) {
            return;
        }
        let disk = ImageFile::open(&path).unwrap();
        let t = read_partition_table(&disk).unwrap().unwrap();
        assert_eq!(t.scheme, Scheme::Mbr);
        assert!(t.problems.is_empty(), "{:?}", messages(&t));
        let got: Vec<_> = t
            .partitions
            .iter()
            .map(|p| {
                (
                    p.number,
                    p.start / 512,
                    p.size / 512,
                    p.type_name.as_str(),
                    p.type_id.as_str(),
                    p.is_lvm,
                    p.is_swap,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (1, 2048, 8192, "Linux", "0x83", false, false),
                (3, 77824, 4096, "NTFS/exFAT", "0x07", false, false),
                (5, 12288, 16384, "Linux LVM", "0x8e", true, false),
                (6, 30720, 8192, "FAT32 (LBA)", "0x0c", false, false),
                (7, 40960, 20480, "Linux swap", "0x82", false, true),
            ]
        );
    }
}
