//! Operations at the same time on one repository with one cache directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;
use vmvault_tests::*;

fn spawn(v: &Vault, args: &[&str]) -> (Child, String) {
    let mut c = v.cmd();
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    (
        c.spawn().expect("start vmvault"),
        format!("vmvault {}", args.join(" ")),
    )
}

fn finish((child, what): (Child, String)) -> Out {
    let o = wait_output(child, what, COMMAND_TIMEOUT);
    eprintln!("[exit {}] {}", o.code, o.what);
    o
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn vm_image(v: &Vault, name: &str, seed: u64, random: u64) -> PathBuf {
    let img = v.path(name);
    build_gpt_image(
        &img,
        &GptSpec {
            size: 192 * MIB,
            efi: 8 * MIB,
            ext_dirs: vec!["/usr/lib/python3.11/email".into(), "/etc".into()],
            random_bytes: random,
            seed,
        },
    );
    img
}

#[test]
fn two_vms_backed_up_at_once_both_restore() {
    let v = Vault::init();
    let a = vm_image(&v, "vm-a.img", 91, 64 * MIB);
    let b = vm_image(&v, "vm-b.img", 92, 64 * MIB);
    let mut rng = Rng::new(93);
    for round in 0..3 {
        if round > 0 {
            write_random(&a, 150 * MIB, 16 * MIB, &mut rng);
            write_random(&b, 150 * MIB, 16 * MIB, &mut rng);
        }
        let pa = spawn(&v, &["--json", "backup", "--vm", "vm-a", s(&a)]);
        let pb = spawn(&v, &["--json", "backup", "--vm", "vm-b", s(&b)]);
        let (oa, ob) = (finish(pa), finish(pb));
        oa.assert_ok();
        ob.assert_ok();
        let (ja, jb) = (oa.json(), ob.json());
        for (j, img, vm) in [(&ja, &a, "vm-a"), (&jb, &b, "vm-b")] {
            assert_eq!(j["vm"], vm);
            let out = v.path(&format!("{vm}-{round}.raw"));
            v.restore(j["id"].as_str().unwrap(), &out, &[]);
            assert_same(img, &out);
            std::fs::remove_file(&out).unwrap();
        }
        v.check_ok(false);
    }
    assert_eq!(v.snapshots().len(), 6);
    v.check_ok(true);
}

#[test]
fn same_data_from_two_vms_at_once_and_a_restore_and_check_alongside() {
    let v = Vault::init();
    let a = vm_image(&v, "tmpl.img", 94, 48 * MIB);
    let b = v.path("clone.img");
    copy_sparse(&a, &b);
    let first = v.backup("base", &[&a]);
    let before = v.path("before.img");
    copy_sparse(&a, &before);
    // New identical data in both: both backups race to store the same chunks.
    let mut r1 = Rng::new(95);
    let mut r2 = Rng::new(95);
    write_random(&a, 120 * MIB, 48 * MIB, &mut r1);
    write_random(&b, 120 * MIB, 48 * MIB, &mut r2);

    let out0 = v.path("base.raw");
    let pa = spawn(&v, &["--json", "backup", "--vm", "web01", s(&a)]);
    let pb = spawn(&v, &["--json", "backup", "--vm", "web02", s(&b)]);
    std::thread::sleep(Duration::from_millis(100));
    let pr = spawn(
        &v,
        &[
            "restore",
            first["id"].as_str().unwrap(),
            "--target",
            s(&out0),
        ],
    );
    let pc = spawn(&v, &["check"]);
    let (oa, ob, or, oc) = (finish(pa), finish(pb), finish(pr), finish(pc));
    oa.assert_ok();
    ob.assert_ok();
    or.assert_ok();
    oc.assert_ok();

    assert_same(&before, &out0);

    for (j, img) in [(oa.json(), &a), (ob.json(), &b)] {
        let out = v.path("x.raw");
        let _ = std::fs::remove_file(&out);
        v.restore(j["id"].as_str().unwrap(), &out, &[]);
        assert_same(img, &out);
    }
    v.check_ok(true);
}

/// Another process holding the cache (here `flock` on its lock file) must make vmvault use
/// a private cache, not delete the one in use.
#[test]
fn a_cache_in_use_by_another_process_is_left_alone() {
    use std::os::unix::fs::MetadataExt;
    let v = Vault::init();
    let img = vm_image(&v, "held.img", 96, 4 * MIB);
    v.backup("held", &[&img]);
    // The cache's lock file, CACHE/<repo id>/index-v1/lock, which a vmvault process
    // holds with flock while it uses the cache.
    let mut dbs = Vec::new();
    for e in std::fs::read_dir(&v.cache).unwrap().flatten() {
        let db = e.path().join("index-v1").join("lock");
        if db.is_file() {
            dbs.push(db);
        }
    }
    assert_eq!(
        dbs.len(),
        1,
        "expected one index cache in {}",
        v.cache.display()
    );
    let db = dbs.remove(0);
    let dir = db.parent().unwrap().to_path_buf();
    let inode = |p: &Path| std::fs::metadata(p).map(|m| m.ino()).ok();
    let (db_ino, dir_ino) = (inode(&db), inode(&dir));

    let mut holder = std::process::Command::new("flock")
        .arg("-x")
        .arg(&db)
        .args(["sleep", "120"])
        .spawn()
        .expect("flock");
    // Wait until the lock is held.
    let t = std::time::Instant::now();
    loop {
        let free = std::process::Command::new("flock")
            .args(["-n", "-x"])
            .arg(&db)
            .arg("true")
            .status()
            .unwrap()
            .success();
        if !free {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "flock never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut rng = Rng::new(97);
    write_random(&img, 100 * MIB, MIB, &mut rng);
    let o = v.run(&["--json", "backup", "--vm", "held", s(&img)]);
    let out = v.path("held.raw");
    let r = v.run(&["restore", "latest", "--target", s(&out)]);
    let still_there = (inode(&db), inode(&dir));
    let _ = holder.kill();
    let _ = holder.wait();
    o.assert_ok();
    r.assert_ok();
    assert_same(&img, &out);
    assert_eq!(
        still_there,
        (db_ino, dir_ino),
        "vmvault deleted and recreated a cache that another process held"
    );
    v.check_ok(false);
}
