//! Finding the volumes of a guest disk: partitions (MBR, GPT), a file system on the whole
//! disk, and linear logical volumes of guest LVM; and what each volume holds.

use super::lvm::{self, PvLabel};
use super::partition::{self, Scheme};
use super::view::{SliceView, VolumeRead};
use super::{GuestError, GuestFs, Result};
use std::sync::Arc;

/// What a volume holds, recognised by its magic numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// ext2, ext3 or ext4.
    Ext4,
    /// NTFS.
    Ntfs,
    /// FAT12, FAT16 or FAT32.
    Fat,
    /// exFAT (recognised, not browsable).
    Exfat,
    /// XFS (recognised, not browsable).
    Xfs,
    /// btrfs (recognised, not browsable).
    Btrfs,
    /// Linux swap.
    Swap,
    /// An LVM2 physical volume (its logical volumes are volumes of their own).
    LvmPv,
    /// A LUKS encrypted volume.
    Luks,
    /// Nothing recognised.
    Unknown,
}

impl Content {
    /// The name used in catalogs and listings ("ext4", "ntfs", "vfat", ...).
    pub fn name(self) -> &'static str {
        match self {
            Content::Ext4 => "ext4",
            Content::Ntfs => "ntfs",
            Content::Fat => "vfat",
            Content::Exfat => "exfat",
            Content::Xfs => "xfs",
            Content::Btrfs => "btrfs",
            Content::Swap => "swap",
            Content::LvmPv => "lvm2-pv",
            Content::Luks => "luks",
            Content::Unknown => "unknown",
        }
    }

    /// True when vmvault can browse the files of this content.
    pub fn browsable(self) -> bool {
        matches!(self, Content::Ext4 | Content::Ntfs | Content::Fat)
    }
}

fn read_opt(view: &dyn VolumeRead, offset: u64, len: usize) -> Result<Option<Vec<u8>>> {
    if offset.saturating_add(len as u64) > view.size() {
        return Ok(None);
    }
    let mut buf = vec![0u8; len];
    view.read_exact_at(offset, &mut buf)?;
    Ok(Some(buf))
}

fn looks_like_fat(b: &[u8]) -> bool {
    if b.len() < 512 || b[510] != 0x55 || b[511] != 0xAA {
        return false;
    }
    let bps = u16::from_le_bytes([b[11], b[12]]);
    let spc = b[13];
    let reserved = u16::from_le_bytes([b[14], b[15]]);
    let fats = b[16];
    let label = &b[54..59] == b"FAT12" || &b[54..59] == b"FAT16" || &b[82..87] == b"FAT32";
    let label = label || &b[54..57] == b"FAT";
    label
        && bps.is_power_of_two()
        && (512..=4096).contains(&bps)
        && spc.is_power_of_two()
        && reserved > 0
        && (1..=2).contains(&fats)
}

/// Recognises what `view` holds from its first 68 KiB. Errors are read errors only.
pub fn detect_content(view: &dyn VolumeRead) -> Result<Content> {
    let Some(head) = read_opt(view, 0, 4096.min(view.size() as usize))? else {
        return Ok(Content::Unknown);
    };
    if head.len() >= 512 {
        if &head[3..11] == b"NTFS    " {
            return Ok(Content::Ntfs);
        }
        if &head[3..11] == b"EXFAT   " {
            return Ok(Content::Exfat);
        }
        if looks_like_fat(&head) {
            return Ok(Content::Fat);
        }
    }
    if head.starts_with(b"XFSB") {
        return Ok(Content::Xfs);
    }
    if head.starts_with(b"LUKS\xba\xbe") {
        return Ok(Content::Luks);
    }
    if head.len() == 4096 && (&head[4086..] == b"SWAPSPACE2" || &head[4086..] == b"SWAP-SPACE") {
        return Ok(Content::Swap);
    }
    if let Some(sb) = read_opt(view, 1024, 1024)? {
        if sb[56..58] == [0x53, 0xEF] {
            return Ok(Content::Ext4);
        }
    }
    if let Some(b) = read_opt(view, 0x10040, 8)? {
        if b == b"_BHRfS_M" {
            return Ok(Content::Btrfs);
        }
    }
    // A damaged LVM label still marks an LVM volume; `discover` reports the damage.
    match lvm::read_pv_label(view) {
        Ok(Some(_)) | Err(GuestError::Corrupt { .. }) => Ok(Content::LvmPv),
        Ok(None) => Ok(Content::Unknown),
        Err(e) => Err(e),
    }
}

/// Opens the file system `content` on `vol`; an error for content that is not browsable.
pub fn open_fs(content: Content, vol: Arc<dyn VolumeRead>) -> Result<Box<dyn GuestFs>> {
    match content {
        Content::Ext4 => Ok(Box::new(super::ext4::Ext4Fs::open(vol)?)),
        Content::Ntfs => Ok(Box::new(super::ntfs::NtfsFs::open(vol)?)),
        Content::Fat => Ok(Box::new(super::fat::FatFs::open(vol)?)),
        other => Err(GuestError::Unsupported {
            what: vol.name().to_string(),
            reason: format!("{} volumes cannot be browsed", other.name()),
        }),
    }
}

/// One volume of a guest disk.
#[derive(Clone)]
pub struct Volume {
    /// `p1`, `p5`, `fs` or `lvm/VG/LV`: unique on its disk.
    pub name: String,
    /// Partition type, "whole disk" or "LVM logical volume".
    pub description: String,
    /// Byte offset on the disk (none for LVM logical volumes).
    pub start: Option<u64>,
    /// Size in bytes.
    pub size: u64,
    /// What it holds.
    pub content: Content,
    /// Its bytes.
    pub view: Arc<dyn VolumeRead>,
}

/// The volumes of one disk and what could not be read on the way.
#[derive(Default)]
pub struct Layout {
    /// The partition table's kind, if the disk has one.
    pub scheme: Option<Scheme>,
    /// Volumes in disk order; logical volumes after the partitions.
    pub volumes: Vec<Volume>,
    /// Damage met (a bad partition entry, an LV on a missing PV); the rest was read.
    pub problems: Vec<GuestError>,
}

impl Layout {
    /// The volume called `name`.
    pub fn volume(&self, name: &str) -> Option<&Volume> {
        self.volumes.iter().find(|v| v.name == name)
    }
}

/// Finds the volumes of `disk`. A file system at offset 0 takes precedence over a
/// partition table (FAT and NTFS boot sectors carry the MBR signature too). Errors are
/// read errors of the disk itself; damage inside tables goes to [`Layout::problems`].
pub fn discover(disk: Arc<dyn VolumeRead>) -> Result<Layout> {
    let mut layout = Layout::default();
    let disk_name = disk.name().to_string();
    let mut pvs: Vec<(Arc<dyn VolumeRead>, PvLabel)> = Vec::new();
    let whole = detect_content(&*disk)?;
    let table = if whole == Content::Unknown {
        match partition::read_partition_table(&*disk) {
            Ok(t) => t,
            Err(e) => {
                layout.problems.push(e);
                None
            }
        }
    } else {
        None
    };
    if let Some(table) = table {
        layout.scheme = Some(table.scheme);
        layout.problems.extend(table.problems);
        for p in table.partitions {
            let name = format!("p{}", p.number);
            let view: Arc<dyn VolumeRead> = match SliceView::new(
                disk.clone(),
                p.start,
                p.size,
                format!("{disk_name}/{name}"),
            ) {
                Ok(v) => Arc::new(v),
                Err(e) => {
                    layout.problems.push(e);
                    continue;
                }
            };
            let content = match detect_content(&*view) {
                Ok(c) => c,
                Err(e) => {
                    layout.problems.push(e);
                    Content::Unknown
                }
            };
            if content == Content::LvmPv {
                match lvm::read_pv_label(&*view) {
                    Ok(Some(label)) => pvs.push((view.clone(), label)),
                    Ok(None) => {}
                    Err(e) => layout.problems.push(e),
                }
            }
            layout.volumes.push(Volume {
                name,
                description: p.type_name,
                start: Some(p.start),
                size: p.size,
                content,
                view,
            });
        }
    } else if whole != Content::Unknown {
        let view: Arc<dyn VolumeRead> = Arc::new(SliceView::new(
            disk.clone(),
            0,
            disk.size(),
            format!("{disk_name}/fs"),
        )?);
        if whole == Content::LvmPv {
            match lvm::read_pv_label(&*view) {
                Ok(Some(label)) => pvs.push((view.clone(), label)),
                Ok(None) => {}
                Err(e) => layout.problems.push(e),
            }
        }
        layout.volumes.push(Volume {
            name: "fs".into(),
            description: "whole disk".into(),
            start: Some(0),
            size: disk.size(),
            content: whole,
            view,
        });
    }
    if !pvs.is_empty() {
        let (lvs, problems) = lvm::logical_volumes(&pvs, &disk_name);
        layout.problems.extend(problems);
        for lv in lvs {
            let content = match detect_content(&*lv.view) {
                Ok(c) => c,
                Err(e) => {
                    layout.problems.push(e);
                    Content::Unknown
                }
            };
            layout.volumes.push(Volume {
                name: format!("lvm/{}/{}", lv.vg, lv.name),
                description: "LVM logical volume".into(),
                start: None,
                size: lv.size,
                content,
                view: lv.view,
            });
        }
    }
    Ok(layout)
}
