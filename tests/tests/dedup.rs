//! Deduplication: scattered small writes to a disk cost little; a second VM cloned from
//! the same template costs almost nothing; `stats` reports a ratio above 1.

use vmvault_tests::*;

#[test]
fn scattered_writes_and_cloned_vm_dedup() {
    let v = Vault::init();
    // A template with about 200 MiB of real files and some incompressible data.
    let template = v.path("template.img");
    let g = build_gpt_image(
        &template,
        &GptSpec {
            size: 512 * MIB,
            efi: 32 * MIB,
            ext_dirs: vec!["/usr/share/doc".into(), "/usr/lib/python3.11".into()],
            random_bytes: 24 * MIB,
            seed: 41,
        },
    );
    let disk = v.path("web01-disk0.img");
    copy_sparse(&template, &disk);

    let b1 = v.backup("web01", &[&disk]);
    let new1 = b1["new_bytes"].as_u64().unwrap();
    let stored1 = b1["stored_bytes"].as_u64().unwrap();
    assert!(new1 > 150 * MIB, "template too small for the test: {b1}");
    assert!(stored1 > 0 && stored1 <= new1 + MIB, "{b1}");
    let first = v.path("first.img");
    copy_sparse(&disk, &first);

    // ~50 random 4 KiB writes at random 4 KiB-aligned offsets inside data of the ext4
    // partition.
    let blocks = nonzero_blocks(&disk, g.ext.0, g.ext.1);
    assert!(blocks.len() > 10_000, "ext4 partition holds little data");
    let mut rng = Rng::from_time("dedup writes");
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < 50 {
        picked.insert(blocks[rng.below(blocks.len() as u64) as usize]);
    }
    for off in &picked {
        dd_random_block(&disk, *off);
    }

    let b2 = v.backup("web01", &[&disk]);
    let new2 = b2["new_bytes"].as_u64().unwrap();
    eprintln!("first backup new_bytes {new1}, after 50 writes {new2}");
    assert!(new2 >= 50 * 4 * KIB, "the writes were not seen: {b2}");
    assert!(
        new2 < 50 * MIB,
        "50 writes of 4 KiB cost {new2} new bytes: {b2}"
    );
    assert!(
        new2 * 10 < new1,
        "50 writes of 4 KiB cost {new2} new bytes, over 10% of the first backup's {new1}"
    );
    assert!(b2["new_chunks"].as_u64().unwrap() <= 2 * 50 + 4, "{b2}");

    // A second VM from a copy of the template adds almost nothing.
    let clone = v.path("web02-disk0.img");
    copy_sparse(&template, &clone);
    let b3 = v.backup("web02", &[&clone]);
    let stored3 = b3["stored_bytes"].as_u64().unwrap();
    assert!(
        stored3 * 20 < stored1,
        "a clone of the template stored {stored3} bytes, over 5% of the first backup's {stored1}: {b3}"
    );
    assert_eq!(b3["new_chunks"], 0, "{b3}");

    // Everything restores.
    for (snap, orig) in [(&b1, &first), (&b2, &disk), (&b3, &clone)] {
        let out = v.path("out.raw");
        let _ = std::fs::remove_file(&out);
        v.restore(snap["id"].as_str().unwrap(), &out, &[]);
        assert_same(orig, &out);
        assert_sparse_like(&out, orig, 2 * MIB);
    }

    let st = v.json(&["stats"]);
    assert_eq!(st["snapshots"], 3, "{st}");
    assert_eq!(st["vms"], 2, "{st}");
    let ratio = st["dedup_ratio"].as_f64().unwrap();
    assert!(
        ratio > 2.0,
        "three backups of nearly the same disk: ratio {ratio}: {st}"
    );
    v.check_ok(true);
}

#[test]
fn chunking_does_not_depend_on_thread_count() {
    let v = Vault::init();
    let img = v.path("t.img");
    build_gpt_image(
        &img,
        &GptSpec {
            size: 128 * MIB,
            efi: 8 * MIB,
            ext_dirs: vec!["/usr/lib/python3.11/asyncio".into(), "/etc".into()],
            random_bytes: 16 * MIB,
            seed: 42,
        },
    );
    let b1 = v.backup_with("t", &[&img], &["--threads", "1"]);
    for threads in ["2", "3", "8"] {
        let b = v.backup_with("t", &[&img], &["--threads", threads]);
        assert_eq!(b["new_chunks"], 0, "--threads {threads}: {b}");
        assert_eq!(b["chunks"], b1["chunks"], "--threads {threads}: {b}");
        assert_eq!(
            b["disks"][0]["manifest"], b1["disks"][0]["manifest"],
            "--threads {threads} gives another manifest"
        );
    }
    let out = v.path("t.raw");
    v.restore("latest", &out, &["--threads", "1"]);
    assert_same(&img, &out);
}
