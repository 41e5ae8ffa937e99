//! Single-file restore end to end: real partitioned disks (GPT with FAT and ext4, MBR
//! with logical partitions) built with sgdisk/sfdisk, mkfs.ext4 -d and mkfs.fat + mcopy,
//! backed up, then browsed with `ls`, read with `dump`, restored with `restore
//! --include` and searched with `find`; every restored file is compared with its source
//! in bytes and metadata.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use vmvault_tests::*;

const MIB: u64 = 1 << 20;

/// Sets a file's mtime and atime (seconds) without following symlinks.
fn touch(p: &Path, secs: i64) {
    sh(
        "touch",
        [
            "-h".to_string(),
            "-d".into(),
            format!("@{secs}"),
            p.display().to_string(),
        ],
    );
}

/// A guest file tree with what the tests look for: nested directories, modes, times, a
/// symlink, an empty file, a multi-megabyte file, a UTF-8 name.
fn source_tree(root: &Path, variant: u8) -> PathBuf {
    let src = root.join(format!("src{variant}"));
    let w = |rel: &str, bytes: &[u8], mode: u32, mtime: i64| {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        touch(&p, mtime);
    };
    w(
        "etc/nginx/nginx.conf",
        b"worker_processes 4;\nevents {}\n",
        0o644,
        1_700_000_000,
    );
    w("etc/hostname", b"web01\n", 0o644, 1_700_000_100);
    w(
        "etc/shadow",
        b"root:*:19000:0:99999:7:::\n",
        0o640,
        1_700_000_200,
    );
    w("etc/empty.conf", b"", 0o600, 1_700_000_300);
    let big: Vec<u8> = (0..3 * MIB as usize + 12345)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    w("var/lib/data.bin", &big, 0o644, 1_700_000_400);
    w("home/ünïcødé/notes.txt", b"hello\n", 0o644, 1_700_000_500);
    if variant == 0 {
        w(
            "var/log/old.log",
            b"only in the first snapshot\n",
            0o644,
            1_600_000_000,
        );
    } else {
        w(
            "var/log/new.log",
            b"only in the second snapshot\n",
            0o644,
            1_800_000_000,
        );
    }
    std::os::unix::fs::symlink("nginx/nginx.conf", src.join("etc/nginx.conf")).unwrap();
    touch(&src.join("etc/nginx.conf"), 1_700_000_600);
    std::fs::set_permissions(src.join("var/lib"), std::fs::Permissions::from_mode(0o750)).unwrap();
    for d in [
        "etc/nginx",
        "etc",
        "var/lib",
        "var/log",
        "var",
        "home/ünïcødé",
        "home",
    ] {
        touch(&src.join(d), 1_690_000_000);
    }
    src
}

/// An ext4 image of `size` bytes holding `src`.
fn ext4_image(src: &Path, img: &Path, size: u64) {
    std::fs::File::create(img).unwrap().set_len(size).unwrap();
    sh(
        "mkfs.ext4",
        [
            "-q",
            "-F",
            "-E",
            "root_owner=0:0",
            "-d",
            &src.display().to_string(),
            &img.display().to_string(),
        ],
    );
}

/// A FAT32 image of `size` bytes holding `src` (mcopy -m keeps mtimes).
fn fat_image(src: &Path, img: &Path, size: u64) {
    std::fs::File::create(img).unwrap().set_len(size).unwrap();
    sh("mkfs.fat", ["-F", "32", &img.display().to_string()]);
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        sh(
            "mcopy",
            [
                "-s",
                "-m",
                "-i",
                &img.display().to_string(),
                &p.display().to_string(),
                "::/",
            ],
        );
    }
}

/// Copies `part` into `disk` at `offset`.
fn place(disk: &Path, part: &Path, offset: u64) {
    sh(
        "dd",
        [
            format!("if={}", part.display()),
            format!("of={}", disk.display()),
            "bs=1M".into(),
            format!("seek={}", offset / MIB),
            "conv=notrunc,sparse".into(),
            "status=none".into(),
        ],
    );
}

/// A GPT disk: p1 FAT32 (16..80 MiB) holding `fat_src`, p2 ext4 (80..208 MiB) holding
/// `ext_src`.
fn gpt_disk(dir: &Path, name: &str, fat_src: &Path, ext_src: &Path) -> PathBuf {
    let disk = dir.join(format!("{name}.img"));
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(224 * MIB)
        .unwrap();
    sh(
        "sgdisk",
        [
            "-n",
            "1:16M:+64M",
            "-t",
            "1:ef00",
            "-c",
            "1:EFI",
            "-n",
            "2:80M:+128M",
            "-t",
            "2:8300",
            "-c",
            "2:root",
            &disk.display().to_string(),
        ],
    );
    let fat = dir.join(format!("{name}-p1.fat"));
    fat_image(fat_src, &fat, 64 * MIB);
    place(&disk, &fat, 16 * MIB);
    let ext = dir.join(format!("{name}-p2.ext4"));
    ext4_image(ext_src, &ext, 128 * MIB);
    place(&disk, &ext, 80 * MIB);
    disk
}

/// Compares a restored tree with its source: names, kinds, bytes, modes, mtimes and
/// symlink targets.
fn assert_same_tree(src: &Path, got: &Path) {
    let mut want: Vec<PathBuf> = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.symlink_metadata().unwrap().is_dir() {
                stack.push(p.clone());
            }
            want.push(p);
        }
    }
    assert!(!want.is_empty());
    for p in want {
        let rel = p.strip_prefix(src).unwrap();
        let q = got.join(rel);
        let (a, b) = (
            p.symlink_metadata().unwrap(),
            q.symlink_metadata()
                .unwrap_or_else(|e| panic!("{} was not restored: {e}", q.display())),
        );
        assert_eq!(a.file_type(), b.file_type(), "{}", rel.display());
        assert_eq!(a.mtime(), b.mtime(), "mtime of {}", rel.display());
        if a.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&p).unwrap(),
                std::fs::read_link(&q).unwrap()
            );
            continue;
        }
        assert_eq!(
            a.mode() & 0o7777,
            b.mode() & 0o7777,
            "mode of {}",
            rel.display()
        );
        if a.is_file() {
            assert_eq!(
                std::fs::read(&p).unwrap(),
                std::fs::read(&q).unwrap(),
                "{}",
                rel.display()
            );
        }
    }
}

fn backup(v: &Vault, vm: &str, disk: &Path, extra: &[&str]) -> String {
    let s = v.backup_with(vm, &[disk], extra);
    s["id"].as_str().unwrap().to_string()
}

#[test]
fn browse_dump_restore_and_find_on_a_gpt_disk() {
    let v = Vault::init();
    let src0 = source_tree(v.dir.path(), 0);
    let fat_src = v.path("fatsrc");
    std::fs::create_dir_all(fat_src.join("EFI/BOOT")).unwrap();
    std::fs::write(fat_src.join("EFI/BOOT/grubx64.efi"), vec![0x4du8; 300_000]).unwrap();
    std::fs::write(fat_src.join("Long File Name.txt"), b"fat long name\n").unwrap();
    let disk0 = gpt_disk(v.dir.path(), "web01-disk0", &fat_src, &src0);
    let id0 = backup(&v, "web01", &disk0, &[]);

    // The snapshot records the volumes and their catalogs.
    let snaps = v.snapshots();
    let cats = snaps[0]["catalogs"]
        .as_array()
        .expect("catalogs in snapshots --json");
    let vols: Vec<(&str, &str)> = cats
        .iter()
        .map(|c| {
            (
                c["volume"].as_str().unwrap(),
                c["content"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(vols, [("p1", "vfat"), ("p2", "ext4")], "{cats:?}");

    // ls at each level.
    let disks = v.json(&["ls", &id0]);
    assert_eq!(disks[0]["name"], "web01-disk0");
    let parts = v.json(&["ls", &id0, "web01-disk0"]);
    let names: Vec<&str> = parts
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["p1", "p2"]);
    for catalog in [true, false] {
        let mut args = vec!["ls", &id0, "web01-disk0/p2/etc", "-l"];
        if !catalog {
            args.push("--no-catalog");
        }
        let l = v.json(&args);
        let mut got: Vec<(String, String, u64, String)> = l
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["type"].as_str().unwrap().to_string(),
                    e["size"].as_u64().unwrap(),
                    e["mode"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        got.sort();
        let want = [
            ("empty.conf", "file", 0, "0600"),
            ("hostname", "file", 6, "0644"),
            ("nginx", "dir", 0, "0755"),
            ("nginx.conf", "symlink", 16, "0777"),
            ("shadow", "file", 26, "0640"),
        ];
        let want: Vec<(String, String, u64, String)> = want
            .iter()
            .map(|(a, b, c, d)| (a.to_string(), b.to_string(), *c, d.to_string()))
            .collect();
        assert_eq!(got, want, "catalog: {catalog}");
    }
    let fat = v.ok(&["ls", &id0, "web01-disk0/p1"]).stdout;
    assert!(
        fat.contains("Long File Name.txt") && fat.contains("EFI/"),
        "{fat}"
    );

    // dump: bytes equal, symlinks followed, the big file too.
    for (path, rel) in [
        (
            "web01-disk0/p2/etc/nginx/nginx.conf",
            "etc/nginx/nginx.conf",
        ),
        ("web01-disk0/p2/etc/nginx.conf", "etc/nginx/nginx.conf"),
        ("web01-disk0/p2/var/lib/data.bin", "var/lib/data.bin"),
        (
            "web01-disk0/p2/home/ünïcødé/notes.txt",
            "home/ünïcødé/notes.txt",
        ),
    ] {
        let out = v.cmd().args(["dump", &id0, path]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, std::fs::read(src0.join(rel)).unwrap(), "{path}");
    }
    let out = v
        .cmd()
        .args(["dump", &id0, "web01-disk0/p1/EFI/BOOT/grubx64.efi"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, vec![0x4du8; 300_000]);
    v.run(&["dump", &id0, "web01-disk0/p2/etc/missing"])
        .assert_fails(1, &["etc/missing", "no such file"]);
    v.run(&["dump", &id0, "web01-disk0/p2/etc"])
        .assert_fails(1, &["not a regular file"]);
    v.run(&["dump", &id0, "web01-disk0/p9/x"])
        .assert_fails(1, &["no volume", "p9"]);

    // restore --include: whole trees with modes, times and symlinks.
    let out = v.path("out");
    v.ok(&[
        "restore",
        &id0,
        "--include",
        "web01-disk0/p2/etc",
        "--include",
        "web01-disk0/p2/var",
        "--include",
        "web01-disk0/p2/home",
        "--target",
        out.to_str().unwrap(),
    ]);
    assert_same_tree(&src0, &out.join("web01-disk0/p2"));
    // A second restore onto the same files refuses to overwrite them.
    v.run(&[
        "restore",
        &id0,
        "--include",
        "web01-disk0/p2/etc/hostname",
        "--target",
        out.to_str().unwrap(),
    ])
    .assert_fails(1, &["exists", "--overwrite"]);

    // A second snapshot without old.log: find sees it only in the first.
    let src1 = source_tree(v.dir.path(), 1);
    let disk1 = gpt_disk(v.dir.path(), "web01-disk0b", &fat_src, &src1);
    let id1 = backup(&v, "web01", &disk1, &["--disk-name", "web01-disk0"]);
    let hits = v.json(&["find", "old.log"]);
    let hits = hits.as_array().unwrap();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0]["snapshot"], id0.as_str());
    assert_eq!(hits[0]["path"], "web01-disk0/p2/var/log/old.log");
    let conf = v.json(&["find", "*.conf", "--vm", "web01"]);
    assert_eq!(conf.as_array().unwrap().len(), 6, "{conf}"); // nginx.conf, its link, empty.conf, twice
    let newer = v.json(&["find", "*.log", "--newer", "2025-01-01"]);
    let newer = newer.as_array().unwrap();
    assert_eq!(newer.len(), 1, "{newer:?}");
    assert_eq!(newer[0]["snapshot"], id1.as_str());
    v.run(&["find", "no-such-file"])
        .assert_fails(1, &["no matches"]);

    // Catalogs of unchanged directories dedup: the second backup stored little new.
    v.check_ok(true);
}

#[test]
fn mbr_with_logical_partitions_and_no_catalog() {
    let v = Vault::init();
    let src = source_tree(v.dir.path(), 0);
    let disk = v.path("db01.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(256 * MIB)
        .unwrap();
    // p1 primary, p2 extended holding p5 and p6.
    let layout = "label: dos\nstart=2048, size=65536, type=83\nstart=133120, size=270336, type=5\nstart=135168, size=131072, type=83\nstart=268288, size=131072, type=b\n";
    let mut c = Command::new("sfdisk");
    c.arg("-q").arg(&disk).stdin(std::process::Stdio::piped());
    let mut child = c.spawn().expect("sfdisk runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(layout.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let ext = v.path("p5.ext4");
    ext4_image(&src, &ext, 64 * MIB);
    place(&disk, &ext, 135168 * 512);
    let fat = v.path("p6.fat");
    let small = v.path("fat6");
    std::fs::create_dir_all(&small).unwrap();
    std::fs::write(small.join("readme.txt"), b"logical six\n").unwrap();
    fat_image(&small, &fat, 64 * MIB);
    place(&disk, &fat, 268288 * 512);
    let id = backup(&v, "db01", &disk, &["--no-catalog"]);
    assert!(
        v.snapshots()[0]["catalogs"].is_null()
            || v.snapshots()[0]["catalogs"].as_array().unwrap().is_empty()
    );
    let parts = v.json(&["ls", &id, "db01"]);
    let names: Vec<&str> = parts
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["p1", "p5", "p6"], "{parts}");
    let out = v
        .cmd()
        .args(["dump", &id, "db01/p6/readme.txt"])
        .output()
        .unwrap();
    assert_eq!(
        out.stdout,
        b"logical six\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = v
        .cmd()
        .args(["dump", &id, "db01/p5/var/lib/data.bin"])
        .output()
        .unwrap();
    assert_eq!(
        out.stdout,
        std::fs::read(src.join("var/lib/data.bin")).unwrap()
    );
    // No catalog: find says so rather than finding nothing silently.
    v.run(&["find", "data.bin"])
        .assert_fails(1, &["no catalog"]);
    // p1 holds no file system.
    v.run(&["ls", &id, "db01/p1"])
        .assert_fails(1, &["cannot be browsed"]);
}

#[test]
fn a_damaged_guest_file_system_leaves_the_rest_browsable() {
    let v = Vault::init();
    let src = source_tree(v.dir.path(), 0);
    let fat_src = v.path("fatsrc");
    std::fs::create_dir_all(&fat_src).unwrap();
    std::fs::write(fat_src.join("ok.txt"), b"still here\n").unwrap();
    let disk = gpt_disk(v.dir.path(), "broken", &fat_src, &src);
    // Wreck the group descriptors of p2's ext4 (right after its superblock, whose magic
    // stays, so the volume is still recognised as ext4).
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0xA5; 8192], 80 * MIB + 2048).unwrap();
    drop(f);
    let s = v.backup_with("broken", &[&disk], &[]);
    let id = s["id"].as_str().unwrap().to_string();
    let o = v.run(&["ls", &id, "broken/p2"]);
    o.assert_no_panic();
    assert_ne!(o.code, 0);
    let out = v
        .cmd()
        .args(["dump", &id, "broken/p1/ok.txt"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"still here\n");
}

/// Walks `root` and returns every regular file's path relative to it.
fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read_dir {}: {e}", d.display())) {
            let p = e.unwrap().path();
            let m = p.symlink_metadata().unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                out.push(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn fuse_mount_serves_disks_and_guest_files() {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: no /dev/fuse");
        return;
    }
    let v = Vault::init();
    let src = source_tree(v.dir.path(), 0);
    let fat_src = v.path("fatsrc");
    std::fs::create_dir_all(fat_src.join("sub")).unwrap();
    std::fs::write(fat_src.join("sub/a.txt"), b"fat file\n").unwrap();
    let disk = gpt_disk(v.dir.path(), "app01-disk0", &fat_src, &src);
    backup(&v, "app01", &disk, &[]);
    let mnt = v.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut child = v
        .cmd()
        .arg("mount")
        .arg(&mnt)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("vmvault mount starts");
    let latest = mnt.join("app01/latest");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !latest.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the mount did not appear"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "vmvault mount exited early"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let result = std::panic::catch_unwind(|| {
        let snap = latest.canonicalize().unwrap();
        // The whole disk, holes as zeros, equal to the image.
        assert_same(&snap.join("disks/app01-disk0.raw"), &disk);
        // Every guest file equal to its source, read by two readers at once.
        let ext_root = snap.join("files/app01-disk0/p2");
        let files = files_under(&src);
        assert!(files.len() >= 6);
        std::thread::scope(|s| {
            for half in files.chunks(files.len().div_ceil(2)) {
                let (src, ext_root) = (&src, &ext_root);
                s.spawn(move || {
                    for rel in half {
                        let got = std::fs::read(ext_root.join(rel)).unwrap();
                        assert_eq!(
                            got,
                            std::fs::read(src.join(rel)).unwrap(),
                            "{}",
                            rel.display()
                        );
                    }
                });
            }
        });
        let m = std::fs::metadata(ext_root.join("etc/shadow")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(m.mtime(), 1_700_000_200);
        assert_eq!(
            std::fs::read_link(ext_root.join("etc/nginx.conf")).unwrap(),
            Path::new("nginx/nginx.conf")
        );
        assert_eq!(
            std::fs::read(snap.join("files/app01-disk0/p1/sub/a.txt")).unwrap(),
            b"fat file\n"
        );
        assert!(std::fs::read(ext_root.join("no/such")).is_err());
        assert!(
            std::fs::write(ext_root.join("etc/hostname"), b"x").is_err(),
            "read-only"
        );
    });
    // SIGTERM unmounts cleanly.
    sh("kill", ["-TERM".to_string(), child.id().to_string()]);
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    if let Err(p) = result {
        let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
        std::panic::resume_unwind(p);
    }
    assert!(status.success(), "vmvault mount: {status}\n{err}");
    assert!(err.contains("unmounted"), "{err}");
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0, "still mounted");
}

/// Detaches a loop device and forgets a VG when dropped, even if the test fails.
struct LoopGuard(String, String);

impl Drop for LoopGuard {
    fn drop(&mut self) {
        let cfg = "devices { use_devicesfile=0 }";
        let _ = Command::new("vgchange")
            .args(["-q", "--config", cfg, "-an", &self.1])
            .output();
        let _ = Command::new("losetup").args(["-d", &self.0]).output();
    }
}

#[test]
fn guest_lvm_logical_volumes_are_browsable() {
    let have = |t: &str| {
        Command::new("which")
            .arg(t)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    if !root || !have("pvcreate") || !have("losetup") {
        eprintln!("skipped: needs root, losetup and lvm2");
        return;
    }
    let v = Vault::init();
    let src = source_tree(v.dir.path(), 0);
    let disk = v.path("lvm01.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(160 * MIB)
        .unwrap();
    sh(
        "sgdisk",
        [
            "-n",
            "1:1M:+150M",
            "-t",
            "1:8e00",
            &disk.display().to_string(),
        ],
    );
    // The PV on a loop device over partition 1 (device-mapper is not needed: no LV is
    // activated; the LV is written into the metadata with vgcfgrestore).
    let lo = sh(
        "losetup",
        [
            "-f".to_string(),
            "--show".into(),
            "-o".into(),
            MIB.to_string(),
            "--sizelimit".into(),
            (150 * MIB).to_string(),
            disk.display().to_string(),
        ],
    )
    .trim()
    .to_string();
    let vg = format!("vmvt{}", std::process::id());
    let _guard = LoopGuard(lo.clone(), vg.clone());
    let cfg = "devices { use_devicesfile=0 } backup { backup=0 archive=0 }";
    sh("pvcreate", ["-q", "--config", cfg, &lo]);
    sh("vgcreate", ["-q", "--config", cfg, "-s", "1M", &vg, &lo]);
    let text_path = v.path("vg.txt");
    sh(
        "vgcfgbackup",
        [
            "-q",
            "--config",
            cfg,
            "-f",
            text_path.to_str().unwrap(),
            &vg,
        ],
    );
    let text = std::fs::read_to_string(&text_path).unwrap();
    let lv = "logical_volumes {\nroot {\nid = \"aaaaaa-bbbb-cccc-dddd-eeee-ffff-000001\"\nstatus = [\"READ\", \"WRITE\", \"VISIBLE\"]\nflags = []\nsegment_count = 1\nsegment1 {\nstart_extent = 0\nextent_count = 64\ntype = \"striped\"\nstripe_count = 1\nstripes = [\"pv0\", 10]\n}\n}\n}\n";
    let last = text.rfind('}').unwrap();
    std::fs::write(
        &text_path,
        format!("{}{lv}{}", &text[..last], &text[last..]),
    )
    .unwrap();
    sh(
        "vgcfgrestore",
        [
            "-q",
            "--config",
            cfg,
            "-f",
            text_path.to_str().unwrap(),
            &vg,
        ],
    );
    drop(_guard);
    // pe_start is 1 MiB by default; the LV starts at extent 10 of the PV.
    let ext = v.path("root.ext4");
    ext4_image(&src, &ext, 64 * MIB);
    place(&disk, &ext, MIB + MIB + 10 * MIB);
    let id = backup(&v, "lvm01", &disk, &[]);
    let vols = v.json(&["ls", &id, "lvm01"]);
    let names: Vec<&str> = vols
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let lvname = format!("lvm/{vg}/root");
    assert_eq!(names, ["p1", lvname.as_str()], "{vols}");
    let out = v
        .cmd()
        .args(["dump", &id, &format!("lvm01/{lvname}/var/lib/data.bin")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.stdout,
        std::fs::read(src.join("var/lib/data.bin")).unwrap()
    );
    let hits = v.json(&["find", "hostname"]);
    assert_eq!(hits[0]["path"], format!("lvm01/{lvname}/etc/hostname"));
}

#[test]
fn ntfs_partition_files_dump_and_restore() {
    let have = |t: &str| {
        Command::new("which")
            .arg(t)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !Path::new("/dev/fuse").exists() || !have("ntfs-3g") || !have("mkntfs") {
        eprintln!("skipped: needs /dev/fuse, ntfs-3g and mkntfs");
        return;
    }
    let v = Vault::init();
    // An NTFS volume filled through ntfs-3g: nested directories, a non-resident file, a
    // sparse file, a tiny (resident) file, a known mtime.
    let ntfs = v.path("p1.ntfs");
    std::fs::File::create(&ntfs)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    sh("mkntfs", ["-q", "-F", "-f", ntfs.to_str().unwrap()]);
    let m = v.path("ntfs-mnt");
    std::fs::create_dir(&m).unwrap();
    sh("ntfs-3g", [ntfs.to_str().unwrap(), m.to_str().unwrap()]);
    let big: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(7919) >> 5) as u8)
        .collect();
    let fill = || {
        std::fs::create_dir_all(m.join("Windows/System32/drivers/etc")).unwrap();
        std::fs::write(
            m.join("Windows/System32/drivers/etc/hosts"),
            b"127.0.0.1 localhost\n",
        )
        .unwrap();
        std::fs::write(m.join("big.bin"), &big).unwrap();
        let f = std::fs::File::create(m.join("sparse.bin")).unwrap();
        f.set_len(10 * MIB).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"tail", 10 * MIB).unwrap();
        drop(f);
        touch(&m.join("big.bin"), 1_700_000_000);
    };
    let filled = std::panic::catch_unwind(fill);
    sh("umount", [m.to_str().unwrap()]);
    if let Err(p) = filled {
        std::panic::resume_unwind(p);
    }
    let disk = v.path("win01.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(80 * MIB)
        .unwrap();
    let mut c = Command::new("sfdisk");
    c.arg("-q").arg(&disk).stdin(std::process::Stdio::piped());
    let mut child = c.spawn().expect("sfdisk runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, size=131072, type=7\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    place(&disk, &ntfs, MIB);
    let id = backup(&v, "win01", &disk, &[]);
    let top = v.json(&["ls", &id, "win01/p1"]);
    let mut names: Vec<&str> = top
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["Windows", "big.bin", "sparse.bin"], "{top}");
    let out = v
        .cmd()
        .args(["dump", &id, "win01/p1/big.bin"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, big);
    let out = v
        .cmd()
        .args(["dump", &id, "win01/p1/sparse.bin"])
        .output()
        .unwrap();
    assert_eq!(out.stdout.len() as u64, 10 * MIB + 4);
    assert!(out.stdout[..(10 * MIB) as usize].iter().all(|&b| b == 0));
    assert_eq!(&out.stdout[(10 * MIB) as usize..], b"tail");
    let target = v.path("out");
    v.ok(&[
        "restore",
        &id,
        "--include",
        "win01/p1/Windows",
        "--include",
        "win01/p1/big.bin",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(target.join("win01/p1/Windows/System32/drivers/etc/hosts")).unwrap(),
        b"127.0.0.1 localhost\n"
    );
    let meta = std::fs::metadata(target.join("win01/p1/big.bin")).unwrap();
    assert_eq!(meta.mtime(), 1_700_000_000);
    assert_eq!(std::fs::read(target.join("win01/p1/big.bin")).unwrap(), big);
    let hits = v.json(&["find", "hosts"]);
    assert_eq!(
        hits[0]["path"],
        "win01/p1/Windows/System32/drivers/etc/hosts"
    );
}
