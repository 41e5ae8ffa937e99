//! The command-line contract: restore targets and snapshot selection, and the shape of
//! the JSON that `backup`, `snapshots`, `check` and `stats` print.

use serde_json::Value;
use std::path::{Path, PathBuf};
use vmvault_tests::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small raw disk with a few MiB of random data at scattered places.
fn small_disk(v: &Vault, name: &str, seed: u64) -> PathBuf {
    let p = v.path(name);
    std::fs::File::create(&p)
        .unwrap()
        .set_len(24 * MIB)
        .unwrap();
    let mut rng = Rng::new(seed);
    write_random(&p, 0, 256 * KIB, &mut rng);
    write_random(&p, 5 * MIB + 4096, MIB, &mut rng);
    write_random(&p, 24 * MIB - 100 * KIB, 100 * KIB, &mut rng);
    p
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

// --- restore targets ------------------------------------------------------------------

#[test]
fn restore_refuses_to_overwrite_without_overwrite() {
    let v = Vault::init();
    let img = v.path("vm.img");
    build_gpt_image(&img, &GptSpec::small(101));
    let b = v.backup("vm", &[&img]);
    let id = b["id"].as_str().unwrap();

    let target = v.path("precious.raw");
    let precious = b"important data that must survive\n".repeat(1000);
    std::fs::write(&target, &precious).unwrap();
    let before = mtime(&target);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let o = v.run(&["restore", id, "--target", s(&target)]);
    o.assert_fails(exit::FAILURE, &[s(&target), "--overwrite"]);
    assert_eq!(
        std::fs::read(&target).unwrap(),
        precious,
        "the file was changed"
    );
    assert_eq!(mtime(&target), before, "the file was touched");

    // With --overwrite it is replaced by exactly the disk, even where the disk has
    // holes and the old file had data, and even when the old file was longer.
    let big = v.path("bigger.raw");
    random_file(&big, file_size(&img) + 3 * MIB + 5, 102);
    v.restore(id, &big, &["--overwrite"]);
    assert_same(&img, &big);
    v.restore(id, &target, &["--overwrite"]);
    assert_same(&img, &target);

    // An existing empty file needs no --overwrite.
    let empty = v.path("empty.raw");
    std::fs::write(&empty, b"").unwrap();
    v.restore(id, &empty, &[]);
    assert_same(&img, &empty);

    // In a directory target, an existing DIR/<disk>.raw is protected the same way.
    let dir = v.path("dir");
    std::fs::create_dir(&dir).unwrap();
    let inside = dir.join("vm.raw");
    std::fs::write(&inside, &precious).unwrap();
    let o = v.run(&["restore", id, "--target", s(&dir)]);
    o.assert_fails(exit::FAILURE, &["vm.raw", "--overwrite"]);
    assert_eq!(std::fs::read(&inside).unwrap(), precious);
    v.restore(id, &dir, &["--overwrite"]);
    assert_same(&img, &inside);
}

#[test]
fn latest_picks_the_newest_snapshot_of_the_vm() {
    let v = Vault::init();
    let x1 = small_disk(&v, "x1.img", 1);
    let y1 = small_disk(&v, "y1.img", 2);
    let x2 = small_disk(&v, "x2.img", 3);
    let z1 = small_disk(&v, "z1.img", 4);
    let dn = ["--disk-name", "disk0"];
    let bx1 = v.backup_with("X", &[&x1], &dn);
    let by1 = v.backup_with("Y", &[&y1], &dn);
    let bx2 = v.backup_with("X", &[&x2], &dn);
    let bz1 = v.backup_with("Z", &[&z1], &dn);

    let check_latest = |extra: &[&str], expect: &Value, img: &Path| {
        let out = v.path("latest.raw");
        let _ = std::fs::remove_file(&out);
        let mut a = vec!["--json", "restore", "latest", "--target", s(&out)];
        a.extend_from_slice(extra);
        let o = v.ok(&a);
        assert_eq!(o.json()["snapshot"], expect["id"], "restore {extra:?}");
        assert_same(img, &out);
    };
    check_latest(&["--vm", "X"], &bx2, &x2);
    check_latest(&["--vm", "Y"], &by1, &y1);
    check_latest(&[], &bz1, &z1);

    // A prefix plus --vm of another VM finds nothing.
    let out = v.path("none.raw");
    let id = bx1["id"].as_str().unwrap();
    v.run(&["restore", id, "--vm", "Y", "--target", s(&out)])
        .assert_fails(exit::FAILURE, &[&id[..12], "\"Y\""]);
    // latest of an unknown VM.
    v.run(&["restore", "latest", "--vm", "W", "--target", s(&out)])
        .assert_fails(exit::FAILURE, &["W"]);
    assert!(!out.exists() || file_size(&out) == 0);

    // snapshots --vm filters.
    let xs = v.json(&["snapshots", "--vm", "X"]);
    let ids: Vec<&str> = xs
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [bx1["id"].as_str().unwrap(), bx2["id"].as_str().unwrap()]
    );
}

#[test]
fn unknown_ambiguous_and_malformed_snapshot_ids_fail_clearly() {
    let v = Vault::init();
    let out = v.path("out.raw");
    v.run(&["restore", "latest", "--target", s(&out)])
        .assert_fails(exit::FAILURE, &["no snapshots"]);

    // Back up until two snapshot ids share their first hex digit (at most 17 needed).
    let img = small_disk(&v, "d.img", 9);
    let mut rng = Rng::new(10);
    let mut ids: Vec<String> = Vec::new();
    let shared = loop {
        write_random(&img, 0, 4096, &mut rng);
        let b = v.backup("d", &[&img]);
        let id = b["id"].as_str().unwrap().to_string();
        if let Some(other) = ids.iter().find(|o| o[..1] == id[..1]) {
            // The longest common prefix of the two.
            let n = other
                .bytes()
                .zip(id.bytes())
                .take_while(|(a, b)| a == b)
                .count();
            break id[..n].to_string();
        }
        ids.push(id);
        assert!(ids.len() <= 16);
    };
    v.run(&["restore", &shared, "--target", s(&out)])
        .assert_fails(exit::FAILURE, &[&shared, "matches"]);
    // Upper case works like lower case.
    v.run(&["restore", &shared.to_uppercase(), "--target", s(&out)])
        .assert_fails(exit::FAILURE, &["matches"]);

    // A hex prefix that matches nothing.
    let all: Vec<String> = v
        .snapshots()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    let unknown = (0..u64::MAX)
        .map(|i| format!("{i:012x}"))
        .find(|p| !all.iter().any(|id| id.starts_with(p.as_str())))
        .unwrap();
    v.run(&["restore", &unknown, "--target", s(&out)])
        .assert_fails(exit::FAILURE, &[&unknown, "no snapshot"]);
    // Not hex at all.
    v.run(&["restore", "yesterday", "--target", s(&out)])
        .assert_fails(exit::FAILURE, &["yesterday"]);
    v.run(&["restore", "", "--target", s(&out)])
        .assert_no_panic();
    assert!(!out.exists() || file_size(&out) == 0);

    // A unique prefix works, in either case.
    let id = &all[0];
    let n = (1..=64)
        .find(|&n| all.iter().filter(|o| o.starts_with(&id[..n])).count() == 1)
        .unwrap();
    v.restore(&id[..n].to_uppercase(), &out, &[]);
}

#[test]
fn missing_or_bad_arguments_are_usage_errors() {
    let v = Vault::init();
    let cases: [(&[&str], &str); 7] = [
        (&["backup"], "--vm"),
        (&["backup", "--vm", "x"], "PATHS"),
        (&["restore", "latest"], "--target"),
        (&["restore", "--target", "/tmp/x"], "SNAPSHOT"),
        (&["frobnicate"], "frobnicate"),
        (
            &["backup", "--vm", "x", "--threads", "many", "/dev/null"],
            "many",
        ),
        (&["backup", "--vm", "x", "--size", "-5", "-"], "-5"),
    ];
    for (args, needle) in cases {
        v.run(args).assert_fails(exit::USAGE, &[needle]);
    }
    let o = v.run(&["--help"]);
    o.assert_ok();
    for cmd in ["init", "backup", "snapshots", "restore", "check", "stats"] {
        assert!(o.stdout.contains(cmd), "--help does not list {cmd}");
    }
    let o = v.run(&["--version"]);
    o.assert_ok();
    assert!(o.stdout.contains("vmvault"));
}

// --- JSON output ----------------------------------------------------------------------

fn assert_rfc3339_utc(t: &str) {
    let b = t.as_bytes();
    let ok = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && t.ends_with('Z')
        && t[..4].bytes().all(|c| c.is_ascii_digit())
        && t[11..13].bytes().all(|c| c.is_ascii_digit());
    assert!(ok, "{t:?} is not an RFC 3339 UTC time");
}

fn is_hex64(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit()))
}

#[test]
fn json_output_has_the_documented_shape() {
    let v = Vault::init();
    let img = v.path("web01-disk0.img");
    let g = build_gpt_image(&img, &GptSpec::small(111));
    let data = small_disk(&v, "web01-data.img", 112);

    let b1 = v.backup_with(
        "web01",
        &[&img, &data],
        &["--tag", "nightly", "--tag", "pre-upgrade"],
    );
    for f in [
        "id",
        "snapshot",
        "vm",
        "time",
        "disks",
        "logical_bytes",
        "read_bytes",
        "zero_bytes",
        "new_bytes",
        "stored_bytes",
        "chunks",
        "new_chunks",
        "packs",
        "index_files",
        "duration_secs",
    ] {
        assert!(!b1[f].is_null(), "backup --json lacks {f}: {b1}");
    }
    assert!(is_hex64(&b1["id"]), "{b1}");
    assert_eq!(b1["snapshot"], b1["id"]);
    assert_rfc3339_utc(b1["time"].as_str().unwrap());
    assert_eq!(
        b1["logical_bytes"].as_u64().unwrap(),
        g.size + file_size(&data)
    );
    for d in b1["disks"].as_array().unwrap() {
        for f in [
            "name",
            "size",
            "source",
            "source_format",
            "manifest",
            "allocated_bytes",
            "zero_bytes",
            "data_chunks",
        ] {
            assert!(!d[f].is_null(), "backup --json disk lacks {f}: {d}");
        }
        assert!(is_hex64(&d["manifest"]), "{d}");
        assert_eq!(d["source_format"], "raw");
    }
    let chunks: u64 = b1["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["data_chunks"].as_u64().unwrap())
        .sum();
    assert_eq!(chunks, b1["chunks"].as_u64().unwrap(), "{b1}");

    // Second backup of VM web01 (similar data) and one of another VM.
    let mut rng = Rng::new(113);
    write_random(&data, 10 * MIB, 64 * KIB, &mut rng);
    let b2 = v.backup("web01", &[&img, &data]);
    let other = small_disk(&v, "db.img", 114);
    let b3 = v.backup("db01", &[&other]);

    let list = v.snapshots();
    assert_eq!(list.len(), 3);
    for snap in &list {
        for f in [
            "id", "short_id", "time", "vm", "host", "tags", "parent", "program", "disks",
        ] {
            assert!(
                snap.as_object().unwrap().contains_key(f),
                "snapshots --json lacks {f}: {snap}"
            );
        }
        let id = snap["id"].as_str().unwrap();
        assert!(is_hex64(&snap["id"]));
        assert_eq!(snap["short_id"].as_str().unwrap(), &id[..12]);
        assert_rfc3339_utc(snap["time"].as_str().unwrap());
        assert!(!snap["host"].as_str().unwrap().is_empty());
        assert!(snap["program"].as_str().unwrap().starts_with("vmvault"));
        assert!(snap["tags"].is_array());
        for d in snap["disks"].as_array().unwrap() {
            for f in [
                "name",
                "size",
                "allocated_bytes",
                "zero_bytes",
                "source",
                "source_format",
            ] {
                assert!(!d[f].is_null(), "snapshots --json disk lacks {f}: {d}");
            }
        }
    }
    let (s1, s2, s3) = (&list[0], &list[1], &list[2]);
    assert_eq!(s1["id"], b1["id"], "snapshots are listed oldest first");
    assert_eq!(s2["id"], b2["id"]);
    assert_eq!(s3["id"], b3["id"]);
    assert!(s1["time"].as_str() < s2["time"].as_str());
    assert_eq!(s1["tags"], serde_json::json!(["nightly", "pre-upgrade"]));
    assert_eq!(s2["tags"], serde_json::json!([]));
    assert_eq!(s1["parent"], Value::Null);
    assert_eq!(
        s2["parent"], b1["id"],
        "parent is the VM's previous snapshot"
    );
    assert_eq!(s3["parent"], Value::Null, "db01 has no earlier snapshot");
    assert_eq!(s1["time"], b1["time"]);
    let disks = s1["disks"].as_array().unwrap();
    assert_eq!(disks[0]["name"], "web01-disk0");
    assert_eq!(disks[0]["size"], g.size);
    assert_eq!(disks[1]["name"], "web01-data");
    assert_eq!(disks[1]["size"], file_size(&data));
    assert_eq!(
        disks[0]["source"].as_str().unwrap(),
        std::fs::canonicalize(&img).unwrap().to_str().unwrap()
    );

    // check --json.
    let c = v.check_ok(false);
    for f in [
        "ok",
        "errors",
        "warnings",
        "damaged_chunks",
        "affected_snapshots",
        "packs",
        "index_files",
        "snapshots",
        "bytes_read",
    ] {
        assert!(!c[f].is_null(), "check --json lacks {f}: {c}");
    }
    assert_eq!(c["snapshots"], 3);
    let c = v.check_ok(true);
    assert!(c["bytes_read"].as_u64().unwrap() > 0);

    // stats --json: two backups of similar data dedup.
    let st = v.json(&["stats"]);
    assert_eq!(st["snapshots"], 3, "{st}");
    assert_eq!(st["vms"], 2, "{st}");
    let ratio = st["dedup_ratio"].as_f64().unwrap();
    assert!(
        ratio > 1.0,
        "dedup_ratio {ratio} after two similar backups: {st}"
    );
    let logical = st["logical_bytes"].as_u64().unwrap();
    assert_eq!(
        logical,
        2 * (g.size + file_size(&data)) + file_size(&other),
        "{st}"
    );

    // --quiet prints nothing on stdout; human output goes to stdout.
    let o = v.ok(&["-q", "backup", "--vm", "db01", s(&other)]);
    assert!(o.stdout.trim().is_empty(), "{}", o.stdout);
    let o = v.ok(&["snapshots"]);
    assert!(
        o.stdout.contains(&b1["id"].as_str().unwrap()[..12]),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("web01") && o.stdout.contains("db01"));
}

#[test]
fn repository_from_environment_and_password_file() {
    let v = Vault::new();
    let pw = v.path("pw");
    std::fs::write(&pw, format!("{}\nsecond line ignored\n", v.password)).unwrap();
    let cmd = |args: &[&str]| {
        let mut c = std::process::Command::new(vmvault_bin());
        c.env("VMVAULT_REPOSITORY", &v.repo)
            .env("VMVAULT_PASSWORD_FILE", &pw)
            .env_remove("VMVAULT_PASSWORD")
            .env("VMVAULT_CACHE_DIR", &v.cache)
            .env("HOME", v.dir.path())
            .args(args);
        run_command(c, std::process::Stdio::null())
    };
    cmd(&["init"]).assert_ok();
    let img = small_disk(&v, "e.img", 120);
    cmd(&["backup", "--vm", "e", s(&img)]).assert_ok();
    // The same repository through -r and VMVAULT_PASSWORD.
    assert_eq!(v.snapshots().len(), 1);
    // An empty password file is refused, naming the file.
    let empty = v.path("empty-pw");
    std::fs::write(&empty, "").unwrap();
    let mut c = v.cmd();
    c.env_remove("VMVAULT_PASSWORD")
        .args(["--password-file", s(&empty), "snapshots"]);
    run_command(c, std::process::Stdio::null()).assert_fails(exit::FAILURE, &["empty-pw"]);
    // No password at all, and no terminal: a clear error, not a hang.
    let mut c = v.cmd();
    c.env_remove("VMVAULT_PASSWORD").arg("snapshots");
    run_command(c, std::process::Stdio::null()).assert_fails(exit::FAILURE, &["password"]);
}

#[test]
fn unusual_vm_disk_and_tag_names_round_trip() {
    let v = Vault::init();
    let a = small_disk(&v, "a.img", 140);
    let b = small_disk(&v, "b.img", 141);
    let vm = "web 01 · prod (ü)";
    let (da, db) = ("disk #1 with spaces", "диск-2.qcow");
    let s1 = v.backup_with(
        vm,
        &[&a, &b],
        &[
            "--disk-name",
            da,
            "--disk-name",
            db,
            "--tag",
            "a tag, with comma",
            "--tag",
            "ünï",
        ],
    );
    assert_eq!(s1["vm"], vm);
    let list = v.json(&["snapshots", "--vm", vm]);
    let snap = &list[0];
    assert_eq!(snap["vm"], vm);
    assert_eq!(
        snap["tags"],
        serde_json::json!(["a tag, with comma", "ünï"])
    );
    assert_eq!(snap["disks"][0]["name"], da);
    assert_eq!(snap["disks"][1]["name"], db);
    let dir = v.path("out");
    v.restore("latest", &dir, &["--vm", vm]);
    assert_same(&a, &dir.join(format!("{da}.raw")));
    assert_same(&b, &dir.join(format!("{db}.raw")));
    let one = v.path("one.raw");
    v.restore("latest", &one, &["--vm", vm, "--disk", db]);
    assert_same(&b, &one);
    // The human listing shows the VM.
    let o = v.ok(&["snapshots"]);
    assert!(o.stdout.contains("web 01"), "{}", o.stdout);
}

// --- compression level -----------------------------------------------------------------

/// A raw disk of real, compressible bytes: the programs under /usr/bin, concatenated.
fn binaries_disk(v: &Vault, name: &str, bytes: usize) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir("/usr/bin")
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut data = Vec::new();
    for f in files {
        if data.len() >= bytes {
            break;
        }
        if let Ok(b) = std::fs::read(&f) {
            data.extend_from_slice(&b);
        }
    }
    data.truncate(bytes);
    assert_eq!(data.len(), bytes, "not enough programs under /usr/bin");
    let p = v.path(name);
    std::fs::write(&p, &data).unwrap();
    p
}

#[test]
fn compression_level_is_set_at_init_and_changes_only_the_stored_size() {
    let mut stored = Vec::new();
    for level in [1, 19] {
        let v = Vault::new();
        let init = v.json(&["init", "--compression-level", &level.to_string()]);
        assert_eq!(init["compression_level"], level);
        let disk = binaries_disk(&v, "bin.img", 8 << 20);
        let b = v.backup("vm", &[&disk]);
        let stats = v.json(&["stats"]);
        assert_eq!(stats["compression_level"], level);
        let out = v.path("restored.img");
        v.restore(b["id"].as_str().unwrap(), &out, &[]).assert_ok();
        assert_same(&disk, &out);
        v.check_ok(true);
        stored.push(b["stored_bytes"].as_u64().unwrap());
    }
    assert!(
        stored[1] < stored[0] * 97 / 100,
        "level 19 should store clearly less than level 1: {stored:?}"
    );
    let v = Vault::new();
    v.run(&["init", "--compression-level", "23"])
        .assert_fails(1, &["compression level 23"]);
    assert!(
        !v.repo.join("config").exists(),
        "a refused init leaves no repository"
    );
    v.run(&["init", "--compression-level", "-8"])
        .assert_fails(1, &["compression level -8"]);
}
