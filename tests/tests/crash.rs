//! kill -9 in the middle of backups: after every kill `check` passes, earlier snapshots
//! still restore byte for byte, and the next backup completes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use vmvault_tests::*;

/// Number of killed backups.
const KILLS: usize = 20;

/// Overwrites `len` bytes at `off` with fresh random data (a new version of the disk).
fn mutate(img: &Path, off: u64, len: u64, rng: &mut Rng) {
    write_random(img, off, len, rng);
}

#[test]
fn kill_9_during_backup_never_damages_the_repository() {
    let v = Vault::init();
    let img = v.path("db01.img");
    let g = build_gpt_image(
        &img,
        &GptSpec {
            size: 256 * MIB,
            efi: 16 * MIB,
            ext_dirs: vec!["/usr/lib/python3.11".into()],
            random_bytes: 8 * MIB,
            seed: 81,
        },
    );
    let mut rng = Rng::from_time("crash");
    // A region outside the file system that each new version rewrites with
    // incompressible data, so that every backup attempt has ~96 MiB of new data.
    let hot = (g.ext.0 + g.ext.1 - 100 * MIB, 96 * MIB);
    mutate(&img, hot.0, hot.1, &mut rng);

    // Three completed snapshots, each of a different version of the disk.
    let mut done: Vec<(String, PathBuf)> = Vec::new();
    let mut expected = Duration::ZERO;
    for i in 0..3 {
        if i > 0 {
            mutate(&img, hot.0, hot.1, &mut rng);
        }
        let t = Instant::now();
        let b = v.backup("db01", &[&img]);
        if i > 0 {
            // The first backup also stores the file system; later ones are like the
            // attempts below.
            expected += t.elapsed() / 2;
        }
        let copy = v.path(&format!("version-{i}.img"));
        copy_sparse(&img, &copy);
        done.push((b["id"].as_str().unwrap().to_string(), copy));
    }
    eprintln!("a backup takes about {expected:?}");
    assert!(
        expected > Duration::from_millis(150),
        "backups are too fast ({expected:?}) for kills to land inside them"
    );
    mutate(&img, hot.0, hot.1, &mut rng);

    let mut killed = 0;
    let mut completed = 0;
    let mut attempt = 0;
    while killed < KILLS {
        attempt += 1;
        assert!(
            attempt < KILLS * 3,
            "too many backups completed before the kill"
        );
        let delay = expected.mul_f64(rng.below(1000) as f64 / 1000.0);
        let mut c = v.cmd();
        c.args(["-q", "backup", "--vm", "db01"])
            .arg(&img)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("start vmvault");
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap();
        if finished.is_none() {
            child.kill().expect("kill -9");
        }
        let status = child.wait().unwrap();
        let mut err = String::new();
        use std::io::Read;
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        assert!(!err.contains("panicked"), "backup panicked: {err}");
        if finished.is_some() {
            // It beat the kill: keep it as one more snapshot to verify, and change
            // the disk so that the next attempt has new data again.
            assert!(
                status.success(),
                "backup failed on its own: {status:?}\n{err}"
            );
            completed += 1;
            let id = v.snapshots().last().unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            let copy = v.path(&format!("completed-{completed}.img"));
            copy_sparse(&img, &copy);
            done.push((id, copy));
            mutate(&img, hot.0, hot.1, &mut rng);
        } else {
            killed += 1;
            eprintln!("attempt {attempt}: killed after {delay:?}");
            // A kill can land after the snapshot is committed but before the process
            // exits: then that snapshot is complete and must restore like the others.
            let snaps = v.snapshots();
            if snaps.len() > done.len() {
                let id = snaps.last().unwrap()["id"].as_str().unwrap().to_string();
                eprintln!("attempt {attempt}: killed after committing snapshot {id}");
                let copy = v.path(&format!("committed-{attempt}.img"));
                copy_sparse(&img, &copy);
                done.push((id, copy));
                mutate(&img, hot.0, hot.1, &mut rng);
            }
        }
        // The repository is consistent after every kill.
        let o = v.run(&["check"]);
        o.assert_ok();
    }
    eprintln!("{killed} backups killed, {completed} completed");

    // No snapshot but the completed ones, and each restores byte for byte.
    let ids: Vec<String> = v
        .snapshots()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), done.len(), "snapshots: {ids:?}");
    for (id, copy) in &done {
        assert!(ids.contains(id));
        let out = v.path("restored.raw");
        let _ = std::fs::remove_file(&out);
        v.restore(id, &out, &[]);
        assert_same(copy, &out);
    }
    let c = v.check_ok(true);
    eprintln!("check --read-data after the kills: {c}");

    // A final backup completes and restores.
    let b = v.backup("db01", &[&img]);
    let out = v.path("final.raw");
    v.restore(b["id"].as_str().unwrap(), &out, &[]);
    assert_same(&img, &out);
    v.check_ok(false);
}
