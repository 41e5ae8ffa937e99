//! Repository lifecycle: forget (retention), prune (space reclaimed, concurrent backups,
//! kill -9), keys and unlock.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use vmvault_tests::*;

fn repo_bytes(v: &Vault) -> u64 {
    v.packs()
        .iter()
        .chain(v.repo_files("index").iter())
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// Backs up `versions` versions of a real disk, each after scattered changes; returns
/// (snapshot id, copy of the image) per version.
fn versions(v: &Vault, vm: &str, versions: usize, seed: u64) -> Vec<(String, PathBuf)> {
    let img = v.path(&format!("{vm}.img"));
    let g = build_gpt_image(
        &img,
        &GptSpec {
            size: 128 * MIB,
            efi: 16 * MIB,
            ext_dirs: vec!["/usr/lib/python3.11/email".into()],
            random_bytes: 12 * MIB,
            seed,
        },
    );
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for i in 0..versions {
        if i > 0 {
            // A rewritten region and scattered pages, as a day of guest writes.
            write_random(&img, g.ext.0 + 40 * MIB, 6 * MIB, &mut rng);
            for _ in 0..30 {
                let off = g.ext.0 + rng.below(g.ext.1 / 4096) * 4096;
                write_random(&img, off, 4096, &mut rng);
            }
        }
        let id = v.backup(vm, &[&img])["id"].as_str().unwrap().to_string();
        let copy = v.path(&format!("{vm}-v{i}.img"));
        copy_sparse(&img, &copy);
        out.push((id, copy));
    }
    out
}

fn restore_all_match(v: &Vault, expected: &[(String, PathBuf)]) {
    let listed: Vec<String> = v
        .snapshots()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    for (id, copy) in expected {
        if !listed.contains(id) {
            continue;
        }
        let out = v.path("check-restore.raw");
        let _ = std::fs::remove_file(&out);
        v.restore(id, &out, &[]);
        assert_same(copy, &out);
    }
}

#[test]
fn forget_and_prune_reclaim_the_space_of_forgotten_snapshots() {
    let v = Vault::init();
    let web = versions(&v, "web", 5, 1);
    let db = versions(&v, "db", 2, 2);
    let before = repo_bytes(&v);

    // No rule: a usage error, nothing removed.
    v.run(&["forget"])
        .assert_fails(exit::USAGE, &["no keep rule"]);
    // Dry run: reasons, nothing removed.
    let plan = v.json(&["forget", "--vm", "web", "--keep-last", "1", "--dry-run"]);
    let groups = plan["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{plan}");
    let snaps = groups[0]["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 5);
    assert_eq!(snaps[0]["keep"], true);
    assert_eq!(snaps[0]["reasons"][0], "last 1");
    assert!(snaps[1..].iter().all(|s| s["keep"] == false));
    assert_eq!(v.snapshots().len(), 7);

    let r = v.json(&["forget", "--vm", "web", "--keep-last", "1", "--prune"]);
    assert_eq!(r["removed"].as_array().unwrap().len(), 4, "{r}");
    assert!(
        r["prune"]["packs_deleted"].as_u64().unwrap()
            + r["prune"]["packs_repacked"].as_u64().unwrap()
            > 0
    );
    assert_eq!(v.snapshots().len(), 3);
    v.check_ok(true);
    restore_all_match(&v, &web);
    restore_all_match(&v, &db);
    let after = repo_bytes(&v);
    assert!(after < before, "prune freed nothing: {before} -> {after}");

    // Within a few percent of a fresh repository holding the same snapshots.
    let fresh = Vault::init();
    fresh.backup("web", &[&web[4].1]);
    fresh.backup("db", &[&db[0].1]);
    fresh.backup("db", &[&db[1].1]);
    let fresh_bytes = repo_bytes(&fresh);
    eprintln!(
        "before {before} bytes, after forget+prune {after}, fresh repository {fresh_bytes} ({:.3}x)",
        after as f64 / fresh_bytes as f64
    );
    assert!(
        (after as f64) < fresh_bytes as f64 * 1.06,
        "after prune {after} bytes, a fresh repository {fresh_bytes}"
    );

    // The newest snapshot of a VM stays unless asked.
    let r = v.json(&[
        "forget",
        "--vm",
        "web",
        "--keep-within",
        "1s",
        "--tag",
        "none",
    ]);
    assert_eq!(r["removed"].as_array().unwrap().len(), 0);
    // A second prune has nothing to do.
    let p = v.json(&["prune"]);
    assert_eq!(p["packs_deleted"], 0, "{p}");
    assert_eq!(p["packs_repacked"], 0, "{p}");
}

#[test]
fn keys_add_change_and_remove() {
    let v = Vault::init();
    let img = v.path("k.img");
    random_file(&img, 2 * MIB, 5);
    v.backup("k", &[&img]);
    let keys = v.json(&["key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_eq!(keys[0]["current"], true);
    // The only key cannot be removed, nor the one in use.
    let only = keys[0]["id"].as_str().unwrap().to_string();
    v.run(&["key", "remove", &only[..10]])
        .assert_fails(1, &["refusing to remove"]);

    let mut c = v.cmd();
    c.args(["--json", "key", "add"])
        .env("VMVAULT_NEW_PASSWORD", "second secret");
    let added = run_command(c, Stdio::null());
    added.assert_ok();
    let added_id = added.json()["added"].as_str().unwrap().to_string();
    // Both passwords open the repository.
    let mut c = v.cmd();
    c.env("VMVAULT_PASSWORD", "second secret").arg("snapshots");
    run_command(c, Stdio::null()).assert_ok();
    v.ok(&["snapshots"]);

    // passwd: the current password is replaced; only the key file changes.
    let data_before = v.packs();
    let pw_file = v.path("new-pw");
    std::fs::write(&pw_file, "third secret\n").unwrap();
    v.ok(&[
        OsStr::new("key"),
        OsStr::new("passwd"),
        OsStr::new("--new-password-file"),
        pw_file.as_os_str(),
    ]);
    assert_eq!(v.packs(), data_before);
    v.run(&["snapshots"])
        .assert_fails(exit::WRONG_PASSWORD, &["wrong password"]);
    let mut c = v.cmd();
    c.env("VMVAULT_PASSWORD", "third secret")
        .args(["--json", "key", "list"]);
    let o = run_command(c, Stdio::null());
    o.assert_ok();
    assert_eq!(o.json().as_array().unwrap().len(), 2);
    // Remove the second key with the third password; then only the third remains.
    let mut c = v.cmd();
    c.env("VMVAULT_PASSWORD", "third secret")
        .args(["key", "remove", &added_id[..12]]);
    run_command(c, Stdio::null()).assert_ok();
    let mut c = v.cmd();
    c.env("VMVAULT_PASSWORD", "second secret").arg("snapshots");
    run_command(c, Stdio::null()).assert_fails(exit::WRONG_PASSWORD, &[]);
}

#[test]
fn prune_runs_safely_beside_backups() {
    let v = Vault::init();
    let img = v.path("busy.img");
    random_file(&img, 48 * MIB, 7);
    let mut rng = Rng::new(8);
    // Some history to prune.
    for _ in 0..4 {
        write_random(&img, rng.below(40) * MIB, 4 * MIB, &mut rng);
        v.backup("busy", &[&img]);
    }
    v.ok(&["forget", "--keep-last", "2"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let backups = {
        let stop = stop.clone();
        let cmd = v.cmd();
        let program = cmd.get_program().to_owned();
        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        let envs: Vec<_> = cmd
            .get_envs()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned())))
            .collect();
        let img = img.clone();
        let dir = v.path("versions");
        std::fs::create_dir_all(&dir).unwrap();
        std::thread::spawn(move || {
            let mut rng = Rng::new(9);
            let mut done = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || done.len() < 3 {
                write_random(&img, rng.below(40) * MIB, 2 * MIB, &mut rng);
                let mut c = std::process::Command::new(&program);
                c.args(&args)
                    .envs(envs.iter().map(|(k, v)| (k, v)))
                    .args(["--json", "--retry-lock", "5m", "backup", "--vm", "busy"])
                    .arg(&img);
                let o = run_command(c, Stdio::null());
                o.assert_ok();
                let id = o.json()["id"].as_str().unwrap().to_string();
                let copy = dir.join(format!("v{i}.img"));
                copy_sparse(&img, &copy);
                done.push((id, copy));
                i += 1;
            }
            done
        })
    };
    for _ in 0..4 {
        v.ok(&[
            "--retry-lock",
            "5m",
            "forget",
            "--keep-last",
            "2",
            "--prune",
        ]);
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let done = backups.join().unwrap();
    v.ok(&["prune"]);
    v.check_ok(true);
    restore_all_match(&v, &done);
    assert!(!v.snapshots().is_empty());
}

#[test]
fn kill_9_during_forget_and_prune_never_loses_a_listed_snapshot() {
    let v = Vault::init();
    let img = v.path("k.img");
    random_file(&img, 24 * MIB, 11);
    let mut rng = Rng::from_time("prune-kill");
    let mut all: Vec<(String, PathBuf)> = Vec::new();
    let add_versions = |n: usize, all: &mut Vec<(String, PathBuf)>, rng: &mut Rng| {
        for _ in 0..n {
            write_random(&img, rng.below(20) * MIB, 3 * MIB, rng);
            let id = v.backup("k", &[&img])["id"].as_str().unwrap().to_string();
            let copy = v.path(&format!("k-{}.img", &id[..12]));
            copy_sparse(&img, &copy);
            all.push((id, copy));
        }
    };
    add_versions(6, &mut all, &mut rng);
    // How long a forget+prune takes, to aim the kills.
    let t = std::time::Instant::now();
    v.ok(&["prune", "--dry-run"]);
    // The aim adapts: shorter after a run that finished before its kill, longer after
    // a kill, so the kills land inside runs however loaded the machine is.
    let mut span = t.elapsed().mul_f64(3.0).max(Duration::from_millis(100));
    let mut kills = 0;
    let mut rounds = 0;
    while kills < 20 {
        rounds += 1;
        assert!(rounds < 150, "too few kills landed: {kills}");
        if v.snapshots().len() < 3 {
            add_versions(3, &mut all, &mut rng);
        }
        let mut c = v.cmd();
        let keep = (1 + rng.below(3)).to_string();
        c.args([
            "-q",
            "forget",
            "--keep-last",
            &keep,
            "--prune",
            "--max-unused",
            "0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        std::thread::sleep(span.mul_f64(rng.below(1000) as f64 / 1000.0));
        if child.try_wait().unwrap().is_none() {
            let _ = child.kill();
            kills += 1;
            span = span.mul_f64(1.1);
        } else {
            span = span.mul_f64(0.7).max(Duration::from_millis(20));
        }
        let _ = child.wait();
        // Every listed snapshot still restores byte for byte.
        restore_all_match(&v, &all);
    }
    eprintln!("{kills} kills in {rounds} rounds");
    v.ok(&["prune"]);
    v.check_ok(true);
    restore_all_match(&v, &all);
}

#[test]
fn unlock_removes_only_stale_locks_and_retry_lock_waits() {
    let v = Vault::init();
    let img = v.path("u.img");
    random_file(&img, 2 * MIB, 13);
    v.backup("u", &[&img]);
    // An exclusive lock (as prune holds), taken through the library: a backup without
    // --retry-lock fails at once naming it; with --retry-lock it waits and completes.
    let repo = vmvault_repo::Repository::open(
        std::sync::Arc::new(vmvault_repo::backend::LocalBackend::new(&v.repo)),
        v.password.as_bytes(),
    )
    .unwrap();
    let guard = vmvault_repo::lock::lock(&repo, "prune", true).unwrap();
    v.run(&["backup", "--vm", "u", img.to_str().unwrap()])
        .assert_fails(exit::LOCKED, &["exclusive lock held by prune"]);
    // Browsing reads packs too, so it waits for prune like a restore.
    v.run(&["ls", "latest", "u"])
        .assert_fails(exit::LOCKED, &["exclusive lock held by prune"]);
    v.run(&["find", "*"])
        .assert_fails(exit::LOCKED, &["exclusive lock held by prune"]);
    let waiter = {
        let mut c = v.cmd();
        c.args(["--retry-lock", "1m", "-q", "backup", "--vm", "u"])
            .arg(&img)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    std::thread::sleep(Duration::from_millis(1500));
    drop(guard);
    wait_output(
        waiter,
        "backup --retry-lock".into(),
        Duration::from_secs(60),
    )
    .assert_ok();
    assert_eq!(v.snapshots().len(), 2);

    // unlock: a live lock of this process stays; a lock of a dead process goes.
    let live = vmvault_repo::lock::lock(&repo, "backup", false).unwrap();
    let o = v.json(&["unlock"]);
    assert_eq!(o["removed"].as_array().unwrap().len(), 0, "{o}");
    assert_eq!(o["live"].as_array().unwrap().len(), 1, "{o}");
    drop(live);
    // A lock naming a dead pid of this host is what a crash leaves.
    let info = vmvault_repo::format::lock::LockInfo {
        version: 1,
        exclusive: true,
        operation: "prune".into(),
        host: vmvault_repo::repository::hostname(),
        pid: u32::MAX - 7,
        time: vmvault_repo::repository::now_rfc3339(),
    };
    let sealed = repo
        .keys()
        .seal(
            vmvault_repo::format::sealed::KIND_LOCK,
            &info.encode(),
            false,
        )
        .unwrap();
    let name = blake3::hash(&sealed).to_hex().to_string();
    std::fs::write(v.repo.join("locks").join(&name), sealed).unwrap();
    let o = v.json(&["unlock"]);
    let removed = o["removed"].as_array().unwrap();
    assert_eq!(removed.len(), 1, "{o}");
    assert_eq!(removed[0]["name"], name.as_str());
    assert!(!v.repo.join("locks").join(&name).exists());
}

#[test]
fn a_pack_deleted_behind_our_back_is_named_and_repair_saves_the_rest() {
    let v = Vault::init();
    let a = v.path("a.img");
    let b = v.path("b.img");
    random_file(&a, 40 * MIB, 21);
    random_file(&b, 24 * MIB, 22);
    let sa = v.backup("a", &[&a])["id"].as_str().unwrap().to_string();
    let sb = v.backup("b", &[&b])["id"].as_str().unwrap().to_string();
    // The first pack of VM a's data goes missing.
    let packs = v.packs();
    let victim = packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap()
        .clone();
    std::fs::remove_file(&victim).unwrap();

    let o = v.run(&["--json", "check"]);
    assert_eq!(o.code, exit::CHECK_FAILED);
    let report = o.json();
    let affected: Vec<&str> = report["affected_snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(!affected.is_empty(), "{}", report["errors"]);
    let damaged = affected[0].to_string();
    let (lost_img, intact_id, intact_img) = if damaged == sa {
        (&a, &sb, &b)
    } else {
        (&b, &sa, &a)
    };

    // A dry run says what would be lost and changes nothing.
    let dry = v.json(&["repair", "snapshots", "--dry-run"]);
    assert_eq!(
        dry["repaired"].as_array().unwrap().len(),
        affected.len(),
        "{dry}"
    );
    assert!(dry["repaired"][0]["lost_bytes"].as_u64().unwrap() > 0);
    assert_eq!(v.snapshots().len(), 2);

    let r = v.json(&["repair", "snapshots"]);
    let fixed = &r["repaired"][0];
    assert_eq!(fixed["old_id"], damaged.as_str());
    let new_id = fixed["new_id"].as_str().unwrap().to_string();
    let lost: Vec<(u64, u64)> = fixed["lost"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["offset"].as_u64().unwrap(), l["len"].as_u64().unwrap()))
        .collect();
    assert!(!r["missing_packs"].as_array().unwrap().is_empty());
    v.json(&["repair", "index"]);
    v.check_ok(true);
    let snaps = v.snapshots();
    assert_eq!(snaps.len(), 2);
    let repaired = snaps.iter().find(|s| s["id"] == new_id.as_str()).unwrap();
    assert!(repaired["tags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == "repaired"));

    // The intact snapshot restores byte for byte; the repaired one matches except in the
    // lost ranges, which read as zeros.
    let out = v.path("intact.raw");
    v.restore(intact_id, &out, &[]);
    assert_same(intact_img, &out);
    let out = v.path("repaired.raw");
    v.restore(&new_id, &out, &[]);
    let want = std::fs::read(lost_img).unwrap();
    let got = std::fs::read(&out).unwrap();
    assert_eq!(want.len(), got.len());
    let mut in_lost = vec![false; got.len()];
    for (off, len) in &lost {
        for x in &mut in_lost[*off as usize..(*off + *len) as usize] {
            *x = true;
        }
    }
    for i in 0..got.len() {
        if in_lost[i] {
            assert_eq!(got[i], 0, "lost byte {i} is not zero");
        } else {
            assert_eq!(got[i], want[i], "byte {i} differs outside the lost ranges");
        }
    }
    // A new backup stores the lost data again (the index no longer claims it).
    let again = v.backup("x", &[lost_img]);
    let out = v.path("again.raw");
    v.restore(again["id"].as_str().unwrap(), &out, &[]);
    assert_same(lost_img, &out);
    v.check_ok(true);
}

#[test]
fn check_read_data_subsets_cover_every_pack_once() {
    let v = Vault::init();
    let img = v.path("s.img");
    random_file(&img, 64 * MIB, 31);
    v.backup("s", &[&img]);
    let full = v.check_ok(true)["bytes_read"].as_u64().unwrap();
    let mut sum = 0;
    for i in 1..=3 {
        let part = format!("{i}/3");
        let o = v.json(&["check", "--read-data-subset", &part]);
        sum += o["bytes_read"].as_u64().unwrap();
    }
    assert_eq!(sum, full);
    v.run(&["check", "--read-data-subset", "4/3"])
        .assert_fails(exit::USAGE, &["N <= M"]);
    // A flipped bit in a data pack (the largest; manifests, read by every check, live in
    // a small one) is found by exactly one part.
    let pack = v
        .packs()
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let middle = std::fs::metadata(&pack).unwrap().len() as i64 / 2;
    flip_bit(&pack, middle, 3);
    let failing = (1..=3)
        .filter(|i| {
            let part = format!("{i}/3");
            v.run(&["check", "--read-data-subset", &part]).code == exit::CHECK_FAILED
        })
        .count();
    assert_eq!(failing, 1);
}

#[test]
fn diff_names_changed_extents_and_stats_splits_unique_from_shared() {
    let v = Vault::init();
    let a = v.path("a.img");
    random_file(&a, 48 * MIB, 61);
    let clone = v.path("clone.img");
    std::fs::copy(&a, &clone).unwrap();
    let s1 = v.backup("a", &[&a])["id"].as_str().unwrap().to_string();
    let mut rng = Rng::new(62);
    write_random(&a, 10 * MIB, 4096, &mut rng);
    write_random(&a, 30 * MIB, 3 * MIB, &mut rng);
    let s2 = v.backup("a", &[&a])["id"].as_str().unwrap().to_string();
    v.backup("clone", &[&clone]);

    let d = v.json(&["diff", &s1, &s2]);
    let disk = &d["disks"][0];
    assert_eq!(disk["status"], "changed", "{d}");
    assert_eq!(disk["changed_extents"], 2, "{d}");
    let changed = disk["changed_bytes"].as_u64().unwrap();
    // Chunk granularity: at least what was written, at most a few chunks more.
    assert!(
        (3 * MIB + 4096..3 * MIB + 4 * MIB).contains(&changed),
        "{d}"
    );
    for e in disk["extents"].as_array().unwrap() {
        let (off, len) = (e[0].as_u64().unwrap(), e[1].as_u64().unwrap());
        let hits_write =
            (off..off + len).contains(&(10 * MIB)) || (off < 33 * MIB && off + len > 30 * MIB);
        assert!(hits_write, "extent {off}+{len} covers no write");
    }
    let same = v.json(&["diff", &s2, &s2]);
    assert_eq!(same["disks"][0]["status"], "same");

    let st = v.json(&["stats"]);
    let per: Vec<&serde_json::Value> = st["vms_detail"].as_array().unwrap().iter().collect();
    let vm = |n: &str| *per.iter().find(|x| x["vm"] == n).unwrap();
    // The clone shares everything with a's first version; a alone holds its changes.
    assert_eq!(vm("clone")["unique_stored_bytes"], 0, "{st}");
    let a_unique = vm("a")["unique_stored_bytes"].as_u64().unwrap();
    assert!((3 * MIB..8 * MIB).contains(&a_unique), "{st}");
    assert!(vm("a")["shared_stored_bytes"].as_u64().unwrap() > 40 * MIB);
    let only = v.json(&["stats", "--vm", "clone"]);
    assert_eq!(only["vms_detail"].as_array().unwrap().len(), 1);
    v.run(&["stats", "--vm", "nope"])
        .assert_fails(1, &["no snapshot of VM"]);
}
