//! The demo's sample disk: a GPT-partitioned, sparse raw image with realistic content,
//! written without root or external tools.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

const SECTOR: u64 = 512;

/// A small deterministic generator (xorshift64*), so every demo run builds the same disk.
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

const WORDS: &[&str] = &[
    "kernel",
    "systemd",
    "nginx",
    "worker",
    "request",
    "GET",
    "POST",
    "/var/log",
    "error",
    "warning",
    "info",
    "debug",
    "connection",
    "timeout",
    "user",
    "session",
    "database",
    "INSERT",
    "SELECT",
    "config",
    "true",
    "false",
    "null",
    "127.0.0.1",
    "10.0.0.12",
    "HTTP/1.1",
    "200",
    "404",
    "500",
    "cache",
    "backup",
    "snapshot",
    "volume",
    "mount",
    "eth0",
    "ssh",
    "accepted",
    "publickey",
    "for",
    "root",
    "from",
    "port",
    "the",
    "a",
    "of",
    "and",
    "to",
];

/// Text that compresses like logs and configuration files (about 3-4x with zstd).
pub fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let line_words = 4 + rng.below(10);
        out.extend_from_slice(format!("{:010} ", 1_700_000_000 + rng.below(10_000_000)).as_bytes());
        for _ in 0..line_words {
            out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
            out.push(b' ');
        }
        out.push(b'\n');
    }
    out.truncate(len);
    out
}

/// Binary data like executables and libraries: random runs mixed with repeated
/// structures (compresses about 1.5x).
pub fn binary(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 4096);
    while out.len() < len {
        if rng.below(3) == 0 {
            let pattern: Vec<u8> = (0..16).map(|_| rng.next_u64() as u8).collect();
            for _ in 0..(16 + rng.below(128)) {
                out.extend_from_slice(&pattern);
            }
        } else {
            for _ in 0..(64 + rng.below(256)) {
                out.extend_from_slice(&rng.next_u64().to_le_bytes());
            }
        }
    }
    out.truncate(len);
    out
}

/// Writes a protective MBR and a primary and backup GPT with the given partitions
/// (start and end LBA inclusive, name).
fn write_gpt(f: &File, disk_size: u64, parts: &[(u64, u64, &str, [u8; 16])]) -> io::Result<()> {
    let sectors = disk_size / SECTOR;
    // Protective MBR.
    let mut mbr = [0u8; 512];
    mbr[446 + 4] = 0xee;
    mbr[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    mbr[446 + 12..446 + 16].copy_from_slice(&((sectors - 1).min(0xffff_ffff) as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    f.write_all_at(&mbr, 0)?;
    // Partition entries: 128 × 128 bytes.
    let mut entries = vec![0u8; 128 * 128];
    for (i, (first, last, name, type_guid)) in parts.iter().enumerate() {
        let e = &mut entries[i * 128..(i + 1) * 128];
        e[..16].copy_from_slice(type_guid);
        let mut unique = [0u8; 16];
        unique[0] = i as u8 + 1;
        unique[15] = 0x42;
        e[16..32].copy_from_slice(&unique);
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        for (j, c) in name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&c.to_le_bytes());
        }
    }
    let entries_crc = crc32fast::hash(&entries);
    let header = |current: u64, backup: u64, entries_lba: u64| {
        let mut h = [0u8; 92];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&current.to_le_bytes());
        h[32..40].copy_from_slice(&backup.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&(sectors - 34).to_le_bytes());
        h[56..72].copy_from_slice(b"vmvault-demo-001");
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    f.write_all_at(&header(1, sectors - 1, 2), SECTOR)?;
    f.write_all_at(&entries, 2 * SECTOR)?;
    f.write_all_at(&entries, (sectors - 33) * SECTOR)?;
    f.write_all_at(
        &header(sectors - 1, 1, sectors - 33),
        (sectors - 1) * SECTOR,
    )?;
    Ok(())
}

/// Creates the demo disk at `path`: `size` bytes logical, an EFI system partition and a
/// Linux partition with text, binaries, duplicated files and free (unwritten) space.
/// Returns the bytes of data written.
pub fn create(path: &Path, size: u64, data_target: u64) -> io::Result<u64> {
    const EFI: [u8; 16] = [
        0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9,
        0x3b,
    ];
    const LINUX: [u8; 16] = [
        0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d,
        0xe4,
    ];
    let f = File::create(path)?;
    f.set_len(size)?;
    let mib = 1 << 20;
    let efi_start = mib;
    let efi_end = 65 * mib;
    let root_start = efi_end;
    let root_end = size - mib;
    write_gpt(
        &f,
        size,
        &[
            (efi_start / SECTOR, efi_end / SECTOR - 1, "EFI System", EFI),
            (root_start / SECTOR, root_end / SECTOR - 1, "root", LINUX),
        ],
    )?;
    let mut rng = Rng::new(0x5eed);
    let mut written = 0u64;
    // EFI partition: a few MiB of boot loader binaries.
    let efi = binary(&mut rng, 6 * mib as usize);
    f.write_all_at(&efi, efi_start + mib)?;
    written += efi.len() as u64;
    // Root partition: files laid out from the start with gaps, some duplicated.
    let mut pos = root_start + 4 * mib;
    let mut previous: Vec<Vec<u8>> = Vec::new();
    while written < data_target && pos < root_end - 8 * mib {
        let len = (16 << 10) + rng.below(4 * mib) as usize;
        let file = match rng.below(10) {
            0..=4 => text(&mut rng, len),
            5..=7 => binary(&mut rng, len),
            _ if !previous.is_empty() => {
                previous[rng.below(previous.len() as u64) as usize].clone()
            }
            _ => text(&mut rng, len),
        };
        let at = pos & !4095;
        f.write_all_at(&file, at)?;
        written += file.len() as u64;
        pos = at + file.len() as u64 + rng.below(256 << 10) + 4096;
        if previous.len() < 16 {
            previous.push(file);
        }
    }
    f.sync_all()?;
    Ok(written)
}

/// Simulates a day of guest activity: `pages` scattered 4 KiB page writes inside the
/// first `span` bytes of the root partition, plus a new 4 MiB log file.
pub fn change(path: &Path, pages: u64, span: u64) -> io::Result<u64> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    let mut rng = Rng::new(0x00c4_a96e);
    let root_start = 65u64 << 20;
    for _ in 0..pages {
        let at = root_start + (rng.below(span / 4096) * 4096);
        f.write_all_at(&binary(&mut rng, 4096), at)?;
    }
    let log = text(&mut rng, 4 << 20);
    f.write_all_at(&log, root_start + span + (8 << 20))?;
    f.sync_all()?;
    Ok(pages * 4096 + log.len() as u64)
}
