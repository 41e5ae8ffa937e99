//! Locks: an exclusive lock stops backups, restores and checks with exit 11 and a
//! message naming the holder; stale locks of dead processes on this host do not.
//!
//! Locks of other hosts and of dead processes are forged through the `vmvault-repo`
//! library; `tests/tests/lifecycle.rs` covers the CLI's own exclusive operations.

use std::sync::Arc;
use vmvault_repo::backend::LocalBackend;
use vmvault_repo::format::lock::LockInfo;
use vmvault_repo::format::sealed::KIND_LOCK;
use vmvault_repo::Repository;
use vmvault_tests::*;

fn open(v: &Vault) -> Repository {
    Repository::open(Arc::new(LocalBackend::new(&v.repo)), v.password.as_bytes())
        .expect("open the repository through the library")
}

/// Writes a lock as another process would: sealed JSON named by its hash.
fn forge_lock(v: &Vault, repo: &Repository, info: &LockInfo) -> std::path::PathBuf {
    let sealed = repo
        .keys()
        .seal(KIND_LOCK, &info.encode(), false)
        .expect("seal");
    let name = blake3::hash(&sealed).to_hex().to_string();
    let dir = v.repo.join("locks");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, sealed).unwrap();
    p
}

fn setup() -> (Vault, std::path::PathBuf, String) {
    let v = Vault::init();
    let img = v.path("vm.img");
    build_gpt_image(&img, &GptSpec::small(131));
    let b = v.backup("vm", &[&img]);
    (v, img, b["id"].as_str().unwrap().to_string())
}

/// Backup, restore and check all stop with exit 11 naming the holder.
fn all_refused(v: &Vault, img: &std::path::Path, id: &str, needles: &[&str]) {
    let snaps = v.repo_files("snapshots");
    let out = v.path("locked.raw");
    v.run(&["backup", "--vm", "vm", img.to_str().unwrap()])
        .assert_fails(exit::LOCKED, needles);
    v.run(&["restore", id, "--target", out.to_str().unwrap()])
        .assert_fails(exit::LOCKED, needles);
    v.run(&["check"]).assert_fails(exit::LOCKED, needles);
    assert_eq!(v.repo_files("snapshots"), snaps);
    assert!(!out.exists() || file_size(&out) == 0);
}

#[test]
fn a_live_exclusive_lock_stops_everything_with_exit_11() {
    let (v, img, id) = setup();
    let repo = open(&v);
    let guard = vmvault_repo::lock::lock(&repo, "prune", true).expect("exclusive lock");
    let pid = std::process::id().to_string();
    all_refused(&v, &img, &id, &["locked", "prune", &pid]);
    // Listing only reads and takes no lock.
    v.ok(&["snapshots"]);
    drop(guard);
    v.backup("vm", &[&img]);
    let out = v.path("after.raw");
    v.restore("latest", &out, &[]);
    assert_same(&img, &out);
    assert!(
        v.repo_files("locks").is_empty(),
        "locks left behind: {:?}",
        v.repo_files("locks")
    );
}

#[test]
fn an_exclusive_lock_of_another_host_is_respected() {
    let (v, img, id) = setup();
    let repo = open(&v);
    let lock = forge_lock(
        &v,
        &repo,
        &LockInfo {
            version: 1,
            exclusive: true,
            operation: "prune".into(),
            host: "other-kvm-host".into(),
            pid: 1,
            // A live lock is refreshed, so its time is recent.
            time: vmvault_repo::repository::now_rfc3339(),
        },
    );
    all_refused(&v, &img, &id, &["locked", "other-kvm-host"]);
    std::fs::remove_file(lock).unwrap();
    v.backup("vm", &[&img]);
}

#[test]
fn a_lock_of_another_host_not_refreshed_for_30_minutes_is_stale() {
    let (v, img, _) = setup();
    let repo = open(&v);
    let lock = forge_lock(
        &v,
        &repo,
        &LockInfo {
            version: 1,
            exclusive: true,
            operation: "prune".into(),
            host: "other-kvm-host".into(),
            pid: 1,
            time: "2026-01-01T00:00:00.000000Z".into(),
        },
    );
    // Ignored by backups (its holder stopped refreshing it long ago)...
    v.backup("vm", &[&img]);
    // ...left in place by them (its host may only be slow), removed by unlock.
    assert!(lock.exists());
    let o = v.json(&["unlock"]);
    assert_eq!(o["removed"].as_array().unwrap().len(), 1, "{o}");
    assert!(!lock.exists());
}

#[test]
fn a_stale_exclusive_lock_of_this_host_is_removed() {
    let (v, img, _) = setup();
    let repo = open(&v);
    let lock = forge_lock(
        &v,
        &repo,
        &LockInfo {
            version: 1,
            exclusive: true,
            operation: "prune".into(),
            host: vmvault_repo::repository::hostname(),
            // Above any pid_max: no such process.
            pid: 4_999_999,
            time: "2026-01-01T00:00:00.000000Z".into(),
        },
    );
    v.backup("vm", &[&img]);
    assert!(!lock.exists(), "the stale lock was not removed");
    v.check_ok(false);
}

#[test]
fn the_locked_message_suggests_only_commands_that_exist() {
    let (v, img, _) = setup();
    let repo = open(&v);
    let _guard = vmvault_repo::lock::lock(&repo, "prune", true).expect("exclusive lock");
    let o = v.run(&["backup", "--vm", "vm", img.to_str().unwrap()]);
    o.assert_fails(exit::LOCKED, &["locked"]);
    // Every `vmvault <command>` the message suggests must be a real command.
    for (i, _) in o.stderr.match_indices("`vmvault ") {
        let rest = &o.stderr[i + 9..];
        let cmd: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        let help = v.run(&[cmd.as_str(), "--help"]);
        assert_eq!(
            help.code, 0,
            "the message suggests `vmvault {cmd}`, which does not exist:\n{}\n{}",
            o.stderr, help.stderr
        );
    }
}

#[test]
fn a_damaged_lock_file_is_named() {
    let (v, img, _) = setup();
    let dir = v.repo.join("locks");
    std::fs::create_dir_all(&dir).unwrap();
    let name = "ab".repeat(32);
    std::fs::write(dir.join(&name), b"VMVS garbage that is no lock").unwrap();
    let o = v.run(&["backup", "--vm", "vm", img.to_str().unwrap()]);
    o.assert_no_panic();
    if o.code != 0 {
        o.assert_stderr_has(&[&name]);
    }
}
