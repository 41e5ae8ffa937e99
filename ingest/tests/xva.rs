//! XVA (xe vm-export) archives: reading streams built here by hand the way xapi writes
//! them (independently of the crate's tar code and writer), hostile variants, and the
//! writer's round trip checked with the system `tar`.

use std::io::Write;
use std::process::Command;
use vmvault_ingest::xva::{self, open_stream, XvaWriter};
use vmvault_ingest::{ExtentKind, IngestError, SequentialDisk};

const MIB: usize = 1 << 20;

// ----- a hand-made tar / XVA builder -------------------------------------------------

fn tar_member(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000400");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = b'0';
    h[257..262].copy_from_slice(b"ustar");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

#[derive(Clone, Copy, PartialEq)]
enum Sum {
    Sha1,
    XxHash,
}

fn checksum_member(name: &str, data: &[u8], kind: Sum) -> (String, Vec<u8>) {
    match kind {
        Sum::Sha1 => {
            use sha1::{Digest, Sha1};
            let d = Sha1::digest(data);
            let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
            (format!("{name}.checksum"), hex.into_bytes())
        }
        Sum::XxHash => (
            format!("{name}.xxhash"),
            format!("{:016X}", xxhash_rust::xxh64::xxh64(data, 0)).into_bytes(),
        ),
    }
}

/// The members xapi's (non-sparse) exporter writes for one disk: chunks numbered from 0,
/// all-zero chunks omitted except the first and the last, and a zero-length keep-alive
/// (taking a number, not advancing the disk) before each chunk index in `keepalives`.
fn disk_members(
    reference: &str,
    raw: &[u8],
    keepalives: &[usize],
    kind: Sum,
) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let (mut no, mut off) = (0usize, 0usize);
    let mut kept = Vec::new();
    while off < raw.len() {
        let len = (raw.len() - off).min(MIB);
        let first_or_last = no == 0 || len == raw.len() - off;
        let chunk = off / MIB;
        if keepalives.contains(&chunk) && !kept.contains(&chunk) && !first_or_last {
            kept.push(chunk);
            let name = format!("{reference}/{no:08}");
            let c = checksum_member(&name, &[], kind);
            out.push((name, Vec::new()));
            out.push(c);
            no += 1;
            continue;
        }
        let data = &raw[off..off + len];
        if first_or_last || data.iter().any(|&b| b != 0) {
            let name = format!("{reference}/{no:08}");
            let c = checksum_member(&name, data, kind);
            out.push((name, data.to_vec()));
            out.push(c);
        }
        no += 1;
        off += len;
    }
    out
}

fn ova_xml(disks: &[(&str, &str, u64)]) -> String {
    // (vdi ref, vbd device, size); VBD ids Ref:9xx.
    let mut objs = String::from(
        "<value><struct><member><name>class</name><value>VM</value></member>\
         <member><name>id</name><value>Ref:0</value></member><member><name>snapshot</name>\
         <value><struct><member><name>name_label</name><value>test</value></member></struct>\
         </value></member></struct></value>",
    );
    for (i, (r, dev, size)) in disks.iter().enumerate() {
        objs.push_str(&format!(
            "<value><struct><member><name>class</name><value>VBD</value></member>\
             <member><name>id</name><value>Ref:9{i:02}</value></member>\
             <member><name>snapshot</name><value><struct>\
             <member><name>VDI</name><value>{r}</value></member>\
             <member><name>type</name><value>Disk</value></member>\
             <member><name>device</name><value>{dev}</value></member>\
             </struct></value></member></struct></value>\
             <value><struct><member><name>class</name><value>VDI</value></member>\
             <member><name>id</name><value>{r}</value></member>\
             <member><name>snapshot</name><value><struct>\
             <member><name>virtual_size</name><value>{size}</value></member>\
             <member><name>name_label</name><value>disk {i}</value></member>\
             <member><name>SR</name><value>Ref:1</value></member>\
             </struct></value></member></struct></value>"
        ));
    }
    format!(
        "<?xml version=\"1.0\"?><value><struct><member><name>version</name><value><struct>\
         <member><name>export_vsn</name><value>2</value></member></struct></value></member>\
         <member><name>objects</name><value><array><data>{objs}</data></array></value>\
         </member></struct></value>"
    )
}

fn archive(ova: &str, members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    tar_member(&mut out, "ova.xml", ova.as_bytes());
    for (name, data) in members {
        tar_member(&mut out, name, data);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// A reproducible pseudo-random byte stream.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Disk A: 5.5 MiB; data in blocks 0, 2 (partly) and the short last block; 1, 3, 4 zero.
fn disk_a() -> Vec<u8> {
    let mut raw = vec![0u8; 5 * MIB + MIB / 2];
    raw[..MIB].copy_from_slice(&noise(1, MIB));
    raw[2 * MIB + 4096..2 * MIB + 8192].copy_from_slice(&noise(2, 4096));
    raw[5 * MIB + 100..5 * MIB + 200].copy_from_slice(&noise(3, 100));
    raw
}

/// Disk B: 3 MiB, all zero but for a few bytes in block 1 (so blocks 0 and 2 are
/// written as zeros: first and last).
fn disk_b() -> Vec<u8> {
    let mut raw = vec![0u8; 3 * MIB];
    raw[MIB + 17] = 0x5a;
    raw
}

struct Read {
    bytes: Vec<u8>,
    unallocated: Vec<(u64, u64)>,
}

fn read_disk(disk: &mut dyn SequentialDisk, segment: usize) -> Result<Read, IngestError> {
    let mut bytes = Vec::new();
    let mut unallocated = Vec::new();
    let mut buf = Vec::new();
    while let Some(seg) = disk.next_segment(segment, &mut buf)? {
        assert_eq!(seg.offset, bytes.len() as u64);
        assert_eq!(seg.offset % segment as u64, 0);
        let mut pos = seg.offset;
        for e in &seg.extents {
            assert_eq!(e.offset, pos);
            pos = e.end();
            let start = (e.offset - seg.offset) as usize;
            match e.kind {
                ExtentKind::Data => {}
                _ => {
                    buf[start..start + e.len as usize].fill(0);
                    unallocated.push((e.offset, e.len));
                }
            }
        }
        assert_eq!(pos, seg.offset + seg.len);
        bytes.extend_from_slice(&buf);
    }
    Ok(Read { bytes, unallocated })
}

fn two_disk_archive() -> Vec<u8> {
    let (a, b) = (disk_a(), disk_b());
    let ova = ova_xml(&[
        ("Ref:5", "xvda", a.len() as u64),
        ("Ref:7", "xvdb", b.len() as u64),
    ]);
    let mut members = disk_members("Ref:5", &a, &[1, 3], Sum::Sha1);
    members.extend(disk_members("Ref:7", &b, &[1], Sum::XxHash));
    archive(&ova, &members)
}

fn open(bytes: Vec<u8>) -> Result<xva::XvaArchive, IngestError> {
    open_stream(std::io::Cursor::new(bytes), "test.xva")
}

// ----- reading -------------------------------------------------------------------------

#[test]
fn reads_two_disks_with_holes_keepalives_and_both_checksums() {
    for segment in [MIB, 4 * MIB] {
        let arch = open(two_disk_archive()).unwrap();
        let names: Vec<(&str, &str, u64)> = arch
            .disks
            .iter()
            .map(|d| (d.ref_id.as_str(), d.name.as_str(), d.size))
            .collect();
        assert_eq!(
            names,
            vec![
                ("Ref:5", "xvda", (5 * MIB + MIB / 2) as u64),
                ("Ref:7", "xvdb", 3 * MIB as u64)
            ]
        );
        assert!(String::from_utf8_lossy(&arch.ova_xml).contains("Ref:7"));
        let mut disks = arch.into_disks();
        assert_eq!(disks[0].size_hint(), Some((5 * MIB + MIB / 2) as u64));
        assert_eq!(disks[0].format_name(), "xva");
        let a = read_disk(disks[0].as_mut(), segment).unwrap();
        assert_eq!(a.bytes, disk_a(), "disk A differs (segment {segment})");
        // Blocks 1, 3 and 4 were omitted: reported unallocated, never read.
        let m = MIB as u64;
        let holes: u64 = a.unallocated.iter().map(|e| e.1).sum();
        assert_eq!(holes, 3 * m);
        for (o, l) in &a.unallocated {
            assert!(
                (*o >= m && o + l <= 2 * m) || (*o >= 3 * m && o + l <= 5 * m),
                "unexpected hole {o}+{l}"
            );
        }
        let b = read_disk(disks[1].as_mut(), segment).unwrap();
        assert_eq!(b.bytes, disk_b(), "disk B differs");
        assert!(b.unallocated.is_empty());
        // Finished disks stay finished.
        assert!(disks[0]
            .next_segment(segment, &mut Vec::new())
            .unwrap()
            .is_none());
    }
}

#[test]
fn sparse_numbering_without_keepalives_maps_block_n_to_n_mib() {
    // As xapi's sparse (VHD/qcow2-backed) export: block numbers are offsets / 1 MiB.
    let raw = disk_a();
    let ova = ova_xml(&[("Ref:3", "", raw.len() as u64)]);
    let arch = open(archive(
        &ova,
        &disk_members("Ref:3", &raw, &[], Sum::XxHash),
    ))
    .unwrap();
    assert_eq!(
        arch.disks[0].name, "disk_0",
        "falls back to the sanitised name_label"
    );
    let mut disks = arch.into_disks();
    assert_eq!(read_disk(disks[0].as_mut(), 4 * MIB).unwrap().bytes, raw);
}

#[test]
fn gzip_compressed_export_is_read() {
    let plain = two_disk_archive();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let arch = open(gz.finish().unwrap()).unwrap();
    let mut disks = arch.into_disks();
    assert_eq!(
        read_disk(disks[0].as_mut(), 4 * MIB).unwrap().bytes,
        disk_a()
    );
    assert_eq!(
        read_disk(disks[1].as_mut(), 4 * MIB).unwrap().bytes,
        disk_b()
    );
}

#[test]
fn bad_checksum_names_the_block() {
    let a = disk_a();
    let ova = ova_xml(&[("Ref:5", "xvda", a.len() as u64)]);
    let mut members = disk_members("Ref:5", &a, &[], Sum::Sha1);
    // Flip a byte in block 2's data.
    let idx = members
        .iter()
        .position(|(n, _)| n == "Ref:5/00000002")
        .unwrap();
    members[idx].1[5000] ^= 0xff;
    let mut disks = open(archive(&ova, &members)).unwrap().into_disks();
    let err = read_disk(disks[0].as_mut(), 4 * MIB)
        .err()
        .expect("must fail");
    let msg = err.to_string();
    assert!(matches!(err, IngestError::Corrupt { .. }), "{msg}");
    assert!(
        msg.contains("checksum mismatch") && msg.contains("Ref:5/00000002"),
        "{msg}"
    );
    // The stream is unusable afterwards, and says so.
    let again = disks[0].next_segment(4 * MIB, &mut Vec::new()).unwrap_err();
    assert!(again.to_string().contains("earlier error"), "{again}");

    // Same with an xxhash member.
    let mut members = disk_members("Ref:5", &a, &[], Sum::XxHash);
    let idx = members
        .iter()
        .position(|(n, _)| n == "Ref:5/00000000.xxhash")
        .unwrap();
    members[idx].1[0] ^= 1;
    let mut disks = open(archive(&ova, &members)).unwrap().into_disks();
    let msg = read_disk(disks[0].as_mut(), MIB).err().unwrap().to_string();
    assert!(msg.contains("Ref:5/00000000"), "{msg}");
}

#[test]
fn truncated_streams_are_errors() {
    let full = two_disk_archive();
    // Cut inside ova.xml, inside block data, between members, before disk B's last block,
    // and just before the end marker (the data is complete there: that one reads fine).
    let ends = [700, 5000, 600_000, 2 * MIB + 3000, full.len() - 2048 - 1024];
    for &cut in &ends {
        let res = open(full[..cut].to_vec()).and_then(|arch| {
            let mut disks = arch.into_disks();
            read_disk(disks[0].as_mut(), 4 * MIB)?;
            read_disk(disks[1].as_mut(), 4 * MIB)?;
            Ok(())
        });
        let err = res
            .err()
            .unwrap_or_else(|| panic!("cut at {cut} read fine"));
        let msg = err.to_string();
        assert!(
            msg.contains("ended early") || msg.contains("ends early"),
            "cut at {cut}: {msg}"
        );
    }
    let arch = open(full[..full.len() - 1024].to_vec()).unwrap();
    let mut disks = arch.into_disks();
    read_disk(disks[0].as_mut(), 4 * MIB).unwrap();
    read_disk(disks[1].as_mut(), 4 * MIB).unwrap();
}

#[test]
fn disks_read_out_of_order_is_an_error() {
    let arch = open(two_disk_archive()).unwrap();
    let mut disks = arch.into_disks();
    let err = disks[1].next_segment(4 * MIB, &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("must be read in order"), "{err}");
    // Reading disk 0 partly still blocks disk 1.
    disks[0].next_segment(4 * MIB, &mut Vec::new()).unwrap();
    assert!(disks[1].next_segment(4 * MIB, &mut Vec::new()).is_err());
    // Once disk 0 is done, disk 1 reads.
    while disks[0]
        .next_segment(4 * MIB, &mut Vec::new())
        .unwrap()
        .is_some()
    {}
    assert_eq!(
        read_disk(disks[1].as_mut(), 4 * MIB).unwrap().bytes,
        disk_b()
    );
}

#[test]
fn segment_size_must_be_whole_blocks() {
    let mut disks = open(two_disk_archive()).unwrap().into_disks();
    let err = disks[0].next_segment(4096, &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("multiple of the 1 MiB"), "{err}");
}

#[test]
fn hostile_block_layouts_are_refused() {
    let raw = vec![1u8; 2 * MIB + 10];
    let ova = ova_xml(&[("Ref:5", "xvda", raw.len() as u64)]);
    let good = disk_members("Ref:5", &raw, &[], Sum::Sha1);
    let read = |members: Vec<(String, Vec<u8>)>| -> String {
        let mut disks = open(archive(&ova, &members)).unwrap().into_disks();
        read_disk(disks[0].as_mut(), 4 * MIB)
            .err()
            .expect("must fail")
            .to_string()
    };
    // Duplicate block.
    let mut dup = good.clone();
    dup.insert(2, good[0].clone());
    dup.insert(3, good[1].clone());
    assert!(read(dup).contains("out of order"));
    // Out of order.
    let mut swapped = good.clone();
    swapped.swap(0, 2);
    swapped.swap(1, 3);
    assert!(read(swapped).contains("out of order"));
    // Block past the virtual size.
    let mut past = good[..4].to_vec();
    let name = "Ref:5/00000009".to_string();
    let c = checksum_member(&name, &raw[..MIB], Sum::Sha1);
    past.push((name, raw[..MIB].to_vec()));
    past.push(c);
    assert!(read(past).contains("past the virtual size"));
    // Wrong length of a middle block.
    let mut short = good.clone();
    short[2].1.truncate(1000);
    short[3] = checksum_member(&short[2].0, &short[2].1, Sum::Sha1);
    assert!(read(short).contains("expected 1048576"));
    // Missing checksum member.
    let mut nosum = good.clone();
    nosum.remove(1);
    assert!(read(nosum).contains("not followed by its .checksum"));
    // The last block missing (a disk whose blocks stop early).
    let cut = good[..good.len() - 2].to_vec();
    assert!(read(cut).contains("ended early"));
    // A disk whose blocks never appear, followed by another disk's.
    let ova2 = ova_xml(&[("Ref:5", "xvda", 10), ("Ref:6", "xvdb", raw.len() as u64)]);
    let mut disks = open(archive(&ova2, &disk_members("Ref:6", &raw, &[], Sum::Sha1)))
        .unwrap()
        .into_disks();
    let msg = read_disk(disks[0].as_mut(), MIB).err().unwrap().to_string();
    assert!(
        msg.contains("ends early") && msg.contains("Ref:6/00000000"),
        "{msg}"
    );
}

#[test]
fn hostile_archives_do_not_panic() {
    let full = two_disk_archive();
    // Not a tar; first member not ova.xml; flipped header bytes.
    assert!(open(b"hello world, not a tar".to_vec()).is_err());
    let mut other = Vec::new();
    tar_member(&mut other, "foo.txt", b"x");
    assert!(open(other).unwrap_err().to_string().contains("not ova.xml"));
    for pos in [0usize, 100, 124, 130, 148, 156, 257, 512 * 3, 512 * 3 + 124] {
        let mut bad = full.clone();
        bad[pos] ^= 0x55;
        if let Ok(arch) = open(bad) {
            for mut d in arch.into_disks() {
                let _ = read_disk(d.as_mut(), MIB);
            }
        }
    }
    // A header whose size is absurd (base-256).
    let mut huge = full.clone();
    huge[124] = 0x80;
    huge[125..136].fill(0xff);
    let sum: u32 = huge[..512]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u32
            }
        })
        .sum();
    huge[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    assert!(open(huge).is_err());
}

// ----- writing -------------------------------------------------------------------------

fn write_archive(disks: &[Vec<u8>], names: &[&str]) -> Vec<u8> {
    let spec: Vec<(String, u64)> = names
        .iter()
        .zip(disks)
        .map(|(n, d)| (n.to_string(), d.len() as u64))
        .collect();
    let (xml, refs) = xva::generate_ova_xml("round trip", &spec);
    let listed: Vec<(String, u64)> = refs
        .iter()
        .cloned()
        .zip(disks.iter().map(|d| d.len() as u64))
        .collect();
    assert_eq!(xva::ova_disks(&xml).unwrap(), listed);
    let mut out = Vec::new();
    let mut w = XvaWriter::new(&mut out, "out.xva", &xml, &listed).unwrap();
    for (i, raw) in disks.iter().enumerate() {
        // Uneven pieces, skipping all-zero runs as the restore pipeline does.
        let mut off = 0;
        let mut step = 300_000usize;
        while off < raw.len() {
            let end = (off + step).min(raw.len());
            if raw[off..end].iter().any(|&b| b != 0) {
                w.write_data(i, off as u64, &raw[off..end]).unwrap();
            }
            off = end;
            step = step * 7 / 5 + 1;
        }
        w.finish_disk(i).unwrap();
    }
    let n = w.finish().unwrap();
    assert_eq!(n as usize, out.len());
    out
}

#[test]
fn writer_round_trip_and_system_tar_listing() {
    let mut empty_tail = vec![0u8; 4 * MIB + 3];
    empty_tail[10] = 9;
    let disks = vec![
        disk_a(),
        disk_b(),
        empty_tail,
        Vec::new(),
        vec![0u8; 2 * MIB],
    ];
    let names = ["root", "data", "tail", "empty", "zero"];
    let bytes = write_archive(&disks, &names);

    let arch = open(bytes.clone()).unwrap();
    let got: Vec<&str> = arch.disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(got, names);
    let mut readers = arch.into_disks();
    for (i, raw) in disks.iter().enumerate() {
        let r = read_disk(readers[i].as_mut(), 4 * MIB).unwrap();
        assert_eq!(&r.bytes, raw, "disk {i}");
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.xva");
    std::fs::write(&path, &bytes).unwrap();
    let listing = Command::new("tar").arg("-tvf").arg(&path).output().unwrap();
    assert!(
        listing.status.success(),
        "{}",
        String::from_utf8_lossy(&listing.stderr)
    );
    let text = String::from_utf8(listing.stdout).unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    let refs: Vec<(String, u64)> = xva::ova_disks(&open(bytes).unwrap().ova_xml).unwrap();
    let (r0, r1, r2, r4) = (&refs[0].0, &refs[1].0, &refs[2].0, &refs[4].0);
    let expected: Vec<String> = [
        "ova.xml".to_string(),
        // Disk A: blocks 0, 2 and 5 hold data; 1, 3, 4 omitted.
        format!("{r0}/00000000"),
        format!("{r0}/00000000.checksum"),
        format!("{r0}/00000002"),
        format!("{r0}/00000002.checksum"),
        format!("{r0}/00000005"),
        format!("{r0}/00000005.checksum"),
        // Disk B: block 1 holds data, 0 and 2 are first and last.
        format!("{r1}/00000000"),
        format!("{r1}/00000000.checksum"),
        format!("{r1}/00000001"),
        format!("{r1}/00000001.checksum"),
        format!("{r1}/00000002"),
        format!("{r1}/00000002.checksum"),
        // Tail disk: first and the 3-byte last block.
        format!("{r2}/00000000"),
        format!("{r2}/00000000.checksum"),
        format!("{r2}/00000004"),
        format!("{r2}/00000004.checksum"),
        // The empty disk has no blocks; the zero disk its first and last.
        format!("{r4}/00000000"),
        format!("{r4}/00000000.checksum"),
        format!("{r4}/00000001"),
        format!("{r4}/00000001.checksum"),
    ]
    .into();
    assert_eq!(names, expected, "{text}");
    // Sizes as tar sees them: the last block of the tail disk is 3 bytes.
    let last = text
        .lines()
        .find(|l| l.ends_with(&format!("{r2}/00000004")))
        .unwrap();
    assert!(last.split_whitespace().any(|f| f == "3"), "{last}");
    // Checksum members hold the SHA-1 that sha1sum computes.
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(&path)
        .arg(format!("{r0}/00000002.checksum"))
        .output()
        .unwrap();
    use sha1::{Digest, Sha1};
    let want: String = Sha1::digest(&disk_a()[2 * MIB..3 * MIB])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), want);
}

#[test]
fn writer_refuses_misuse() {
    let (xml, refs) = xva::generate_ova_xml("vm", &[("a".into(), 3 * MIB as u64)]);
    let disks = vec![(refs[0].clone(), 3 * MIB as u64)];
    // Disks that ova.xml does not list.
    assert!(XvaWriter::new(Vec::new(), "o", &xml, &[("Ref:1".into(), 5)]).is_err());
    let mut w = XvaWriter::new(Vec::new(), "o", &xml, &disks).unwrap();
    w.write_data(0, MIB as u64, &[1; 10]).unwrap();
    assert!(w.write_data(0, 0, &[1; 10]).is_err(), "backwards");
    assert!(
        w.write_data(0, 3 * MIB as u64 - 1, &[1; 2]).is_err(),
        "past the end"
    );
    assert!(w.write_data(1, 0, &[1]).is_err(), "no such disk");
    let w2 = XvaWriter::new(Vec::new(), "o", &xml, &disks).unwrap();
    assert!(w2.finish().is_err(), "unfinished disk");
    w.finish_disk(0).unwrap();
    w.finish().unwrap();
}

// ----- fuzz seeds ----------------------------------------------------------------------

/// Small valid archives for fuzz/corpus/xva (run with `--ignored` to rewrite them). Also
/// runs them through the fuzz entry point.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
    // One small disk, one short block (first = last), SHA-1.
    let small = noise(7, 3000);
    let ova = ova_xml(&[("Ref:1", "xvda", small.len() as u64)]);
    seeds.push((
        "one-block-sha1",
        archive(&ova, &disk_members("Ref:1", &small, &[], Sum::Sha1)),
    ));
    // 3 MiB + 512 disk: only the last block present, as a sparse export without block 0,
    // plus a keep-alive; xxhash.
    let size = 3 * MIB + 512;
    let tail = noise(8, 512);
    let name = "Ref:2/00000002".to_string();
    let ka = checksum_member(&name, &[], Sum::XxHash);
    let last = "Ref:2/00000004".to_string();
    let lc = checksum_member(&last, &tail, Sum::XxHash);
    let members = vec![(name, Vec::new()), ka, (last, tail), lc];
    let ova = ova_xml(&[("Ref:2", "xvda", size as u64)]);
    seeds.push(("keepalive-xxhash", archive(&ova, &members)));
    // Two small disks, one of size zero.
    let d1 = noise(9, 700);
    let ova = ova_xml(&[("Ref:3", "xvda", 0), ("Ref:4", "xvdb", d1.len() as u64)]);
    seeds.push((
        "two-disks",
        archive(&ova, &disk_members("Ref:4", &d1, &[], Sum::Sha1)),
    ));
    // The crate's own writer with its generated ova.xml.
    seeds.push((
        "writer",
        write_archive(&[noise(10, 5000), vec![0u8; 100]], &["a", "b"]),
    ));
    // Gzip-compressed.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&seeds[0].1).unwrap();
    seeds.push(("gzip", gz.finish().unwrap()));
    seeds
}

/// Random byte flips, truncations and insertions in the seeds never panic the reader.
#[test]
fn mutated_seeds_do_not_panic() {
    let seeds = seeds();
    let mut rng = noise(42, 40_000).into_iter().cycle();
    let mut next = move || rng.next().unwrap() as usize;
    for round in 0..1500 {
        let mut data = seeds[round % seeds.len()].1.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() << 8 | next()) % data.len();
            match next() % 4 {
                0 => data[at] ^= 1 << (next() % 8),
                1 => data[at] = next() as u8,
                2 => data.truncate(at),
                _ => data.insert(at, next() as u8),
            }
            if data.is_empty() {
                break;
            }
        }
        xva::xva(&data);
    }
}

#[test]
#[ignore]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/xva");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in &seeds() {
        assert!(bytes.len() < 64 << 10, "{name} is {} bytes", bytes.len());
        xva::xva(bytes);
        let arch = open(bytes.clone()).unwrap();
        let sizes: Vec<u64> = arch.disks.iter().map(|d| d.size).collect();
        for (i, mut d) in arch.into_disks().into_iter().enumerate() {
            let r = read_disk(d.as_mut(), MIB).unwrap();
            assert_eq!(r.bytes.len() as u64, sizes[i], "{name}");
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
