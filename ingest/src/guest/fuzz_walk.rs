//! Fuzz entry points for the guest partition table and LVM readers.
//!
//! Each function reads untrusted bytes in memory. Errors are normal outcomes; a panic, a
//! hang or an allocation out of proportion to the input is a bug. The invariants the
//! readers promise (partitions inside the disk, numbers increasing, LV views as large as
//! announced and readable everywhere inside) are checked with assertions.

use super::lvm::{logical_volumes, parse_vg_metadata, read_pv_label};
use super::partition::{crc32_update, read_partition_table};
use super::view::VolumeRead;
use crate::image_file::MemFile;
use std::sync::Arc;

/// Size of the PV images [`lvm`] builds around metadata text.
const SYNTHETIC_PV_SIZE: u64 = 2 << 20;
/// LVs read per input at most.
const MAX_LVS_READ: usize = 64;

/// Parses `data` as a whole disk's partition table and checks the result: every
/// partition non-empty and inside the disk, numbers strictly increasing.
pub fn partitions(data: &[u8]) {
    let disk = MemFile::new(data.to_vec(), "fuzz-input");
    if let Ok(Some(table)) = read_partition_table(&disk) {
        let mut last = 0;
        for p in &table.partitions {
            assert!(p.size > 0, "empty partition {p:?}");
            assert!(
                p.start
                    .checked_add(p.size)
                    .is_some_and(|end| end <= disk.size()),
                "partition outside the disk: {p:?}"
            );
            assert!(p.number > last, "partition numbers out of order: {p:?}");
            last = p.number;
        }
    }
}

/// Reads `data` as an LVM physical volume (label, metadata, linear LVs, a few KiB of each
/// LV at a few offsets); then, if `data` parses as metadata text, does the same on a
/// well-formed PV image built around it (whose label carries the UUID of the text's
/// first PV), so that the text parser and LV mapping are reached without the fuzzer
/// having to forge checksums.
pub fn lvm(data: &[u8]) {
    walk_pv(Arc::new(MemFile::new(data.to_vec(), "fuzz-input")));
    if let Ok(vg) = parse_vg_metadata(data, "fuzz-input") {
        let uuid = vg
            .physical_volumes
            .first()
            .map(|p| p.id.clone())
            .unwrap_or_default();
        // Also exercise the circular buffer: place the text so that it wraps when long.
        let offset = if data.len().is_multiple_of(2) {
            512
        } else {
            0xff000 - 600
        };
        if let Some(image) = synthetic_pv(&uuid, data, SYNTHETIC_PV_SIZE, offset) {
            walk_pv(Arc::new(MemFile::new(image, "fuzz-pv")));
        }
    }
}

fn walk_pv(vol: Arc<dyn VolumeRead>) {
    let Ok(Some(label)) = read_pv_label(&*vol) else {
        return;
    };
    let (lvs, _problems) = logical_volumes(&[(vol, label)], "fuzz");
    let mut buf = vec![0u8; 4096];
    for lv in lvs.iter().take(MAX_LVS_READ) {
        let size = lv.view.size();
        assert_eq!(lv.size, size, "LV size differs from its view's");
        for offset in [
            0,
            (size / 2).saturating_sub(2048),
            size.saturating_sub(4096),
        ] {
            let len = (size - offset).min(4096) as usize;
            let dst = &mut buf[..len];
            if let Err(e) = lv.view.read_exact_at(offset, dst) {
                panic!("a read inside LV {} failed: {e}", lv.view.name());
            }
        }
        assert!(lv.view.read_exact_at(size, &mut [0u8; 1]).is_err());
    }
}

/// Builds an LVM2 PV image of `size` bytes (at least 1 MiB) holding `text` as its VG
/// metadata, with correct checksums: the label in sector 1 with UUID `uuid` (dashes
/// dropped, cut or padded to 32 bytes), one metadata area at bytes 4096 to 1 MiB whose
/// text starts at `text_offset` of the area (wrapping to just after the area header when
/// it runs past the end), data from 1 MiB. `None` when the text does not fit or the
/// offset is outside the area. For tests and fuzzing.
pub fn synthetic_pv(uuid: &str, text: &[u8], size: u64, text_offset: u64) -> Option<Vec<u8>> {
    const MDA_START: u64 = 4096;
    const MDA_SIZE: u64 = (1 << 20) - MDA_START;
    const INITIAL_CRC: u32 = 0xf597_a6cf;
    let len = text.len() as u64;
    if size < 1 << 20 || len == 0 || len > MDA_SIZE - 512 - 512 {
        return None;
    }
    if !(512..MDA_SIZE).contains(&text_offset) {
        return None;
    }
    let first = len.min(MDA_SIZE - text_offset);
    let wrap = len - first;
    if wrap > text_offset - 512 {
        return None;
    }
    let mut img = vec![0u8; usize::try_from(size).ok()?];
    let put = |img: &mut Vec<u8>, at: u64, bytes: &[u8]| {
        let at = at as usize;
        img[at..at + bytes.len()].copy_from_slice(bytes);
    };
    // Label (sector 1) and PV header.
    let mut label = [0u8; 512];
    label[..8].copy_from_slice(b"LABELONE");
    label[8..16].copy_from_slice(&1u64.to_le_bytes());
    label[20..24].copy_from_slice(&32u32.to_le_bytes());
    label[24..32].copy_from_slice(b"LVM2 001");
    let bare: Vec<u8> = uuid.bytes().filter(|&b| b != b'-').take(32).collect();
    label[32..32 + bare.len()].copy_from_slice(&bare);
    label[64..72].copy_from_slice(&size.to_le_bytes());
    label[72..80].copy_from_slice(&(1u64 << 20).to_le_bytes()); // data area at 1 MiB
    label[104..112].copy_from_slice(&MDA_START.to_le_bytes()); // metadata area
    label[112..120].copy_from_slice(&MDA_SIZE.to_le_bytes());
    let crc = crc32_update(INITIAL_CRC, &label[20..]);
    label[16..20].copy_from_slice(&crc.to_le_bytes());
    put(&mut img, 512, &label);
    // Metadata area header.
    let mut h = [0u8; 512];
    h[4..20].copy_from_slice(b" LVM2 x[5A%r0N*>");
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[24..32].copy_from_slice(&MDA_START.to_le_bytes());
    h[32..40].copy_from_slice(&MDA_SIZE.to_le_bytes());
    h[40..48].copy_from_slice(&text_offset.to_le_bytes());
    h[48..56].copy_from_slice(&len.to_le_bytes());
    h[56..60].copy_from_slice(&crc32_update(INITIAL_CRC, text).to_le_bytes());
    let crc = crc32_update(INITIAL_CRC, &h[4..]);
    h[..4].copy_from_slice(&crc.to_le_bytes());
    put(&mut img, MDA_START, &h);
    let (head, tail) = text.split_at(first as usize);
    put(&mut img, MDA_START + text_offset, head);
    put(&mut img, MDA_START + 512, tail);
    Some(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_points_survive_odd_inputs() {
        for data in [
            &b""[..],
            b"LABELONE",
            b"vg { extent_size = 1 seqno = 1 physical_volumes { pv0 { id = \"x\" pe_start = 2048 pe_count = 2 } } }",
            b"vg { extent_size = 1 seqno = 1 physical_volumes { pv0 { id = \"x\" pe_start = 2048 pe_count = 4 } } logical_volumes { lv { status = [\"VISIBLE\"] segment_count = 1 segment1 { start_extent = 0 extent_count = 4 type = \"striped\" stripe_count = 1 stripes = [\"pv0\", 0] } } } }\0",
            &[0x55; 4096],
        ] {
            partitions(data);
            lvm(data);
        }
    }
}
