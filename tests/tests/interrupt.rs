//! SIGINT and SIGTERM stop a backup cleanly: exit 130, no snapshot, no lock left behind,
//! and the repository checks clean.

use std::process::Stdio;
use std::time::{Duration, Instant};
use vmvault_tests::{random_file, Vault, MIB};

fn interrupt_backup(signal: &str) {
    let v = Vault::init();
    let disk = v.path("disk.img");
    random_file(&disk, 768 * MIB, 11);
    let mut c = v.cmd();
    c.args(["backup", "--vm", "sig", disk.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    // Wait until the backup has written its first pack, i.e. is well under way.
    let started = Instant::now();
    while v.packs().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "backup never wrote a pack"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{signal}: {stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(stderr.contains("no snapshot was written"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        v.snapshots().is_empty(),
        "an interrupted backup wrote a snapshot"
    );
    assert!(v.repo_files("locks").is_empty(), "the lock was left behind");
    v.check_ok(false);
    // The next backup completes.
    v.backup("sig", &[&disk]);
}

#[test]
fn sigint_stops_a_backup_cleanly() {
    interrupt_backup("-INT");
}

#[test]
fn sigterm_stops_a_backup_cleanly() {
    interrupt_backup("-TERM");
}
