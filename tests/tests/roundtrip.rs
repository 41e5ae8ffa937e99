//! Round trips of real disk images: GPT + FAT + ext4, a mostly sparse 4 GiB disk, several
//! disks in one snapshot, allocated zeros and odd sizes. Everything restored must be
//! byte-for-byte identical (`cmp`, `qemu-img compare`) and sparse.

use std::path::Path;
use vmvault_tests::*;

#[test]
fn gpt_ext4_fat_image_round_trips_byte_for_byte() {
    let v = Vault::init();
    let img = v.path("web01-disk0.img");
    let g = build_gpt_image(&img, &GptSpec::small(1));
    // The image is a real partitioned disk.
    let table = sh("sgdisk", ["-p", img.to_str().unwrap()]);
    assert!(table.contains("EF00") && table.contains("8300"), "{table}");

    let b = v.backup("web01", &[&img]);
    assert_eq!(b["vm"], "web01");
    assert_eq!(b["snapshot"], b["id"]);
    let disks = b["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 1);
    assert_eq!(
        disks[0]["name"], "web01-disk0",
        "disk name is the file stem"
    );
    assert_eq!(disks[0]["size"], g.size);
    assert_eq!(b["logical_bytes"], g.size);
    // Only allocated bytes are read.
    let read = b["read_bytes"].as_u64().unwrap();
    assert!(
        read > 0 && read <= allocated(&img) + MIB,
        "read {read} bytes: {b}"
    );

    let out = v.path("out.raw");
    v.restore(b["id"].as_str().unwrap(), &out, &[]);
    assert_same(&img, &out);
    assert_sparse_like(&out, &img, MIB);
    // The partition table survived: sgdisk reads the restored disk.
    let t2 = sh("sgdisk", ["-p", out.to_str().unwrap()]);
    assert_eq!(
        table.replace(&img.display().to_string(), ""),
        t2.replace(&out.display().to_string(), "")
    );

    // 'latest' and a short prefix resolve to the same snapshot.
    let out2 = v.path("out2.raw");
    v.restore("latest", &out2, &[]);
    assert_same(&img, &out2);
    let out3 = v.path("out3.raw");
    v.restore(&b["id"].as_str().unwrap()[..12], &out3, &[]);
    assert_same(&img, &out3);

    // A directory target gets DIR/<disk>.raw.
    let dir = v.path("restored");
    std::fs::create_dir(&dir).unwrap();
    v.restore("latest", &dir, &[]);
    assert_same(&img, &dir.join("web01-disk0.raw"));
    v.check_ok(true);
}

#[test]
fn mostly_sparse_4gib_image_round_trips_and_stays_sparse() {
    let v = Vault::init();
    let img = v.path("big.img");
    let spec = GptSpec {
        size: 4 * GIB,
        efi: 64 * MIB,
        ext_dirs: vec!["/etc/apt".into(), "/usr/lib/python3.11/json".into()],
        random_bytes: 3 * MIB,
        seed: 7,
    };
    let g = build_gpt_image(&img, &spec);
    // A few MiB of data near the end of the disk, outside any filesystem.
    let mut rng = Rng::new(99);
    write_random(&img, g.size - 3 * MIB - 12345, MIB + 777, &mut rng);
    let src_alloc = allocated(&img);
    assert!(
        src_alloc < 64 * MIB,
        "source allocates {src_alloc}: builder not sparse"
    );

    let b = v.backup("big", &[&img]);
    assert_eq!(b["logical_bytes"], 4 * GIB);
    let read = b["read_bytes"].as_u64().unwrap();
    assert!(
        read <= src_alloc + MIB,
        "backup read {read} bytes of a disk with {src_alloc} allocated: holes were read"
    );

    let out = v.path("big.raw");
    v.restore("latest", &out, &[]);
    assert_eq!(file_size(&out), 4 * GIB);
    assert_same(&img, &out);
    assert_sparse_like(&out, &img, MIB);

    // A second backup of the unchanged disk stores (almost) nothing new.
    let b2 = v.backup("big", &[&img]);
    assert_eq!(b2["new_chunks"], 0, "{b2}");
    assert!(b2["new_bytes"].as_u64().unwrap() < MIB, "{b2}");

    // One changed 4 KiB block in the fourth GiB costs a chunk and a manifest page.
    dd_random_block(&img, g.size - 3 * MIB);
    let b3 = v.backup("big", &[&img]);
    assert!(
        b3["new_bytes"].as_u64().unwrap() < 2 * MIB,
        "one changed block in a 4 GiB disk: {b3}"
    );
    let out3 = v.path("big3.raw");
    v.restore(b3["id"].as_str().unwrap(), &out3, &[]);
    assert_same(&img, &out3);
    // The first snapshot still has the old block.
    std::fs::remove_file(&out3).unwrap();
    v.restore(b["id"].as_str().unwrap(), &out3, &[]);
    assert_same(&out, &out3);
}

#[test]
fn several_disks_in_one_snapshot_restore_into_a_directory() {
    let v = Vault::init();
    let a = v.path("db01-root.img");
    let b = v.path("db01-data.img");
    build_gpt_image(&a, &GptSpec::small(11));
    // The data disk: no partition table, scattered random data and a tail that is
    // not a multiple of 4 KiB.
    let size = 48 * MIB + 4096 * 3 + 123;
    std::fs::File::create(&b).unwrap().set_len(size).unwrap();
    let mut rng = Rng::new(12);
    for i in 0..6 {
        write_random(&b, i * 7 * MIB + i * 4096 + 17, 300 * KIB + i, &mut rng);
    }
    write_random(&b, size - 1000, 1000, &mut rng);

    let s = v.backup("db01", &[&a, &b]);
    let names: Vec<&str> = s["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db01-root", "db01-data"]);

    let dir = v.path("out");
    v.restore("latest", &dir, &[]);
    assert_same(&a, &dir.join("db01-root.raw"));
    assert_same(&b, &dir.join("db01-data.raw"));
    assert_eq!(file_size(&dir.join("db01-data.raw")), size);

    // --disk picks one disk; with a file target it is written to that file.
    let one = v.path("data-only.raw");
    v.restore("latest", &one, &["--disk", "db01-data"]);
    assert_same(&b, &one);

    // An unknown disk name fails and names the disks there are.
    let o = v.run(&[
        "restore",
        "latest",
        "--disk",
        "nope",
        "--target",
        v.path("nope.raw").to_str().unwrap(),
    ]);
    o.assert_fails(exit::FAILURE, &["nope", "db01-root", "db01-data"]);
    assert!(!v.path("nope.raw").exists() || file_size(&v.path("nope.raw")) == 0);

    // --disk-name renames disks, in order.
    let s2 = v.backup_with(
        "db01",
        &[&a, &b],
        &["--disk-name", "vda", "--disk-name", "vdb"],
    );
    let names: Vec<&str> = s2["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vda", "vdb"]);
    let dir2 = v.path("out2");
    v.restore(s2["id"].as_str().unwrap(), &dir2, &[]);
    assert_same(&a, &dir2.join("vda.raw"));
    assert_same(&b, &dir2.join("vdb.raw"));
}

#[test]
fn allocated_zeros_and_zero_blocks_restore_as_holes() {
    let v = Vault::init();
    let img = v.path("zeros.img");
    // 64 MiB, fully allocated: data, 8 MiB of allocated zeros, data with single zero
    // 4 KiB blocks inside, then more allocated zeros.
    let mut rng = Rng::new(3);
    let mut buf = vec![0u8; (64 * MIB) as usize];
    rng.fill(&mut buf[..(4 * MIB) as usize]);
    // 8 MiB..9 MiB: random, with every 4th 4 KiB block zero (shorter than a zero run).
    let (s, e) = ((8 * MIB) as usize, (9 * MIB) as usize);
    rng.fill(&mut buf[s..e]);
    for blk in (s..e).step_by(16 * 1024) {
        buf[blk..blk + 4096].fill(0);
    }
    rng.fill(&mut buf[(20 * MIB) as usize..(21 * MIB) as usize]);
    std::fs::write(&img, &buf).unwrap();
    let src_alloc = allocated(&img);
    assert!(
        src_alloc >= 63 * MIB,
        "source should be fully allocated: {src_alloc}"
    );

    let b = v.backup("zeros", &[&img]);
    let zero = b["zero_bytes"].as_u64().unwrap();
    assert!(zero >= 50 * MIB, "zero runs were not detected: {b}");

    let out = v.path("zeros.raw");
    v.restore("latest", &out, &[]);
    assert_same(&img, &out);
    let r = allocated(&out);
    // 6 MiB of data minus the zero blocks; allow some slack for file-system rounding.
    assert!(
        r <= 6 * MIB + MIB,
        "restored file allocates {r} bytes; zero runs and zero blocks should be holes"
    );
    // The single zero 4 KiB blocks inside data are holes too.
    assert!(
        r < 6 * MIB,
        "restored file allocates {r} bytes; all-zero 4 KiB blocks should be holes"
    );
}

#[test]
fn tiny_and_odd_sized_disks_round_trip() {
    let v = Vault::init();
    let mut rng = Rng::new(5);
    let cases: &[(&str, u64)] = &[
        ("one-byte", 1),
        ("sector", 512),
        ("odd", 4096 * 5 + 1),
        ("cut", 4 * MIB + 3),
    ];
    for (name, size) in cases {
        let p = v.path(&format!("{name}.img"));
        std::fs::write(&p, b"").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(*size)
            .unwrap();
        write_random(&p, 0, (*size).min(3000), &mut rng);
        if *size > 8192 {
            write_random(&p, size - 10, 10, &mut rng);
        }
    }
    let empty = v.path("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let paths: Vec<_> = cases
        .iter()
        .map(|(n, _)| v.path(&format!("{n}.img")))
        .collect();
    let mut refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    refs.push(&empty);
    let b = v.backup("odd", &refs);
    assert_eq!(b["disks"].as_array().unwrap().len(), cases.len() + 1);
    let dir = v.path("out");
    v.restore("latest", &dir, &[]);
    for (n, _) in cases {
        assert_same(&v.path(&format!("{n}.img")), &dir.join(format!("{n}.raw")));
    }
    assert_eq!(file_size(&dir.join("empty.raw")), 0);
    v.check_ok(true);
}
