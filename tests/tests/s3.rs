//! Object storage: every command against a real S3-compatible server (s3s-fs on
//! 127.0.0.1), request counts, listing pagination, credentials kept out of output, and
//! faults: the server killed mid-backup and mid-sync, and a proxy that injects 500s, slow
//! responses and dropped connections.

use std::ffi::OsStr;
use std::process::Stdio;
use std::time::Duration;
use vmvault_tests::s3::{FaultPlan, FaultProxy, S3Server, SECRET_KEY};
use vmvault_tests::*;

fn s3_vault(server: &S3Server, bucket: &str, prefix: &str) -> Vault {
    server.bucket(bucket);
    Vault::at(&format!("s3://{bucket}/{prefix}"), server.env())
}

/// The suite's shared server when `.ci/run` started one, else a private one.
fn server(tmp: &tempfile::TempDir) -> S3Server {
    S3Server::shared_or_start(&tmp.path().join("s3"))
}

/// A GPT disk with FAT and ext4 holding real files and 24 MiB of random data.
fn disk(v: &Vault, name: &str, seed: u64) -> std::path::PathBuf {
    let img = v.path(name);
    build_gpt_image(
        &img,
        &GptSpec {
            size: 192 * MIB,
            efi: 16 * MIB,
            ext_dirs: vec!["/usr/lib/python3.11/email".into(), "/etc/apt".into()],
            random_bytes: 24 * MIB,
            seed,
        },
    );
    img
}

fn no_secret(o: &Out) {
    assert!(
        !o.stdout.contains(SECRET_KEY) && !o.stderr.contains(SECRET_KEY),
        "the secret key appears in output: {} / {}",
        o.stdout,
        o.stderr
    );
}

#[test]
fn every_command_works_on_s3_with_few_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server(&tmp);
    let bucket = server.unique_bucket("vault");
    let v = s3_vault(&server, &bucket, "prod/repo");
    v.ok(&["init"]);
    // init refuses a prefix that already holds a repository.
    v.run(&["init"])
        .assert_fails(1, &["already holds a repository"]);
    let img = disk(&v, "web01-disk0.img", 5);

    let b1 = v.backup("web01", &[&img]);
    let stored = b1["stored_bytes"].as_u64().unwrap();
    let puts = b1["requests"]["put"].as_u64().unwrap();
    // Packs, one index file, the snapshot and the lock: at most one PUT per 8 MiB stored
    // plus that fixed overhead.
    assert!(
        puts <= stored.div_ceil(8 * MIB) + 3,
        "{puts} PUTs for {stored} bytes stored: {b1}"
    );
    // Objects really are in the bucket, under the prefix.
    let objects = server.objects(&bucket, "prod/repo");
    assert!(objects.iter().any(|p| p.ends_with("config")));
    assert!(objects
        .iter()
        .any(|p| p.to_string_lossy().contains("/data/")));

    // Scattered 4 KiB writes, then a second backup: little new data, few requests.
    let mut rng = Rng::new(9);
    for i in 0..20u64 {
        write_random(&img, 40 * MIB + i * 5 * MIB, 4096, &mut rng);
    }
    let b2 = v.backup("web01", &[&img]);
    assert!(b2["new_bytes"].as_u64().unwrap() < 20 * 512 * 1024);
    // Unchanged disk: nothing new, only the snapshot, lock and listings.
    let b3 = v.backup("web01", &[&img]);
    assert_eq!(b3["new_chunks"], 0);
    let r = &b3["requests"];
    assert!(
        r["put"].as_u64().unwrap() <= 2 && r["get"].as_u64().unwrap() <= 12,
        "an unchanged backup made too many requests: {r}"
    );

    let snaps = v.snapshots();
    assert_eq!(snaps.len(), 3);
    let out = v.path("out.raw");
    v.restore(b2["id"].as_str().unwrap(), &out, &[]);
    assert_same(&img, &out);
    assert_sparse_like(&out, &img, MIB);
    let out1 = v.path("out1.raw");
    let o = v.json(&[
        "restore",
        b1["id"].as_str().unwrap(),
        "--target",
        out1.to_str().unwrap(),
    ]);
    assert!(o["requests"]["get"].as_u64().unwrap() > 0, "{o}");
    // Restore to qcow2 from S3 too.
    let q = v.path("out.qcow2");
    v.restore("latest", &q, &["--format", "qcow2"]);
    sh(
        "qemu-img",
        [
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            img.to_str().unwrap(),
            q.to_str().unwrap(),
        ],
    );
    let c = v.check_ok(true);
    assert!(c["bytes_read"].as_u64().unwrap() > 0);
    v.ok(&["stats"]);
    // Guest files straight from S3.
    let ls = v.ok(&["ls", "latest", "web01-disk0/p2/"]);
    assert!(ls.stdout.contains("email"), "{}", ls.stdout);

    // Deleting the local cache loses nothing.
    std::fs::remove_dir_all(&v.cache).unwrap();
    let out2 = v.path("out2.raw");
    v.restore("latest", &out2, &[]);
    assert_same(&img, &out2);
    v.backup("web01", &[&img]);
    v.check_ok(false);
}

#[test]
fn listings_longer_than_one_page_are_read_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server(&tmp);
    let bucket = server.unique_bucket("many");
    let v = s3_vault(&server, &bucket, "r");
    v.ok(&["init"]);
    let img = v.path("small.img");
    random_file(&img, 3 * MIB, 1);
    v.backup("small", &[&img]);
    // 1100 stray objects in data/ (as an interrupted upload could leave, but more): a
    // listing of data/ takes two pages.
    let data = server.root.join(&bucket).join("r/data");
    for i in 0..1100u32 {
        let name = format!("{:064x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15 + 1);
        let dir = data.join(&name[..2]);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(&name), b"not a pack").unwrap();
    }
    let o = v.run(&["--json", "check"]);
    let report = o.json();
    let stored = server.objects(&bucket, "r/data").len();
    assert!(stored > 1100);
    assert_eq!(report["packs"], stored as u64, "{}", report["packs"]);
    assert!(
        report["requests"]["list"].as_u64().unwrap() >= 2,
        "{}",
        report["requests"]
    );
    // The data is intact; the strays are only unreferenced.
    let out = v.path("out.raw");
    v.restore("latest", &out, &[]);
    assert_same(&img, &out);
}

#[test]
fn credentials_never_appear_in_messages_or_json() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server(&tmp);
    let bucket = server.unique_bucket("creds");
    let mut v = s3_vault(&server, &bucket, "r");
    let o = v.run(&["--json", "init"]);
    o.assert_ok();
    no_secret(&o);
    let img = v.path("a.img");
    random_file(&img, 2 * MIB, 3);
    let o = v.run(&["--json", "backup", "--vm", "a", img.to_str().unwrap()]);
    o.assert_ok();
    no_secret(&o);
    // Wrong secret: a clear failure without the secret.
    for (k, val) in v.env.iter_mut() {
        if k == "AWS_SECRET_ACCESS_KEY" {
            *val = format!("{SECRET_KEY}-wrong");
        }
    }
    let o = v.run(&["snapshots"]);
    assert_ne!(o.code, 0);
    no_secret(&o);
    assert!(!o.stderr.contains("-wrong"), "{}", o.stderr);
    // Credentials in the URL are not echoed either.
    let o = v.run_with_location(
        &format!("s3://AKIDEXAMPLE:hunter2secret@{bucket}/r"),
        &["snapshots"],
    );
    assert!(!o.stderr.contains("hunter2secret"), "{}", o.stderr);
    // An unknown scheme is refused by name.
    v.run_with_location("ftp://host/x", &["snapshots"])
        .assert_fails(1, &["unsupported repository URL scheme"]);
}

#[test]
fn sync_local_to_s3_to_local_and_s3_to_s3() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server(&tmp);
    let offsite = server.unique_bucket("offsite");
    let second = server.unique_bucket("second");
    let other_url = format!("s3://{offsite}/other");
    let mirror_url = format!("s3://{offsite}/mirror");
    let m2_url = format!("s3://{second}/m2");
    let mut src = Vault::new();
    src.env = server.env();
    src.ok(&["init"]);
    let a = disk(&src, "a.img", 11);
    let b = disk(&src, "b.img", 12);
    let sa1 = src.backup("vm-a", &[&a])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let sb1 = src.backup("vm-b", &[&b])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let a1 = src.path("a1.img");
    copy_sparse(&a, &a1);
    let mut rng = Rng::new(4);
    write_random(&a, 60 * MIB, 8 * MIB, &mut rng);
    let sa2 = src.backup("vm-a", &[&a])["id"]
        .as_str()
        .unwrap()
        .to_string();

    // A repository that is not a mirror is refused, naming the fix.
    let other = s3_vault(&server, &offsite, "other");
    other.ok(&["init"]);
    src.run(&["sync", "--to", &other_url])
        .assert_fails(1, &["does not share the keys", "--mirror-of"]);

    // local -> S3 mirror.
    let m = s3_vault(&server, &offsite, "mirror");
    let src_loc = src.loc().to_str().unwrap().to_string();
    m.ok(&["init", "--mirror-of", &src_loc]);
    let plan = src.json(&["sync", "--to", &mirror_url, "--dry-run"]);
    assert_eq!(plan["snapshots"].as_array().unwrap().len(), 3, "{plan}");
    assert!(plan["packs"].as_u64().unwrap() > 0);
    assert!(m.snapshots().is_empty(), "a dry run copies nothing");
    let s = src.json(&["sync", "--to", &mirror_url]);
    assert_eq!(s["snapshots_copied"].as_array().unwrap().len(), 3, "{s}");
    assert_eq!(s["packs_copied"], plan["packs"]);
    assert_eq!(s["bytes_copied"], plan["bytes"]);
    // Packs copied verbatim: the same names and bytes in both repositories.
    for p in src.packs() {
        let name = name_of(&p);
        let remote = server
            .root
            .join(&offsite)
            .join("mirror/data")
            .join(&name[..2])
            .join(&name);
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&remote).unwrap());
    }
    m.check_ok(true);
    let out = m.path("a2.raw");
    m.restore(&sa2, &out, &[]);
    assert_same(&a, &out);
    // Idempotent: nothing left to copy.
    let again = src.json(&["sync", "--to", &mirror_url]);
    assert_eq!(again["packs_copied"], 0, "{again}");
    assert_eq!(again["snapshots_present"], 3);
    assert_eq!(again["destination_requests"]["put"], 0);

    // S3 -> local mirror, only vm-a's first snapshot.
    let local = Vault::at(
        tmp.path().join("local-mirror").to_str().unwrap(),
        server.env(),
    );
    local.ok(&["init", "--mirror-of", &mirror_url]);
    let local_loc = local.loc().to_str().unwrap().to_string();
    let s = m.json(&["sync", "--to", &local_loc, "--vm", "vm-a", &sa1[..10]]);
    assert_eq!(
        s["snapshots_copied"],
        serde_json::json!([sa1.clone()]),
        "{s}"
    );
    let snaps = local.snapshots();
    assert_eq!(snaps.len(), 1);
    local.check_ok(true);
    let out = local.path("a1.raw");
    local.restore(&sa1, &out, &[]);
    assert_same(&a1, &out);
    // vm-b's snapshot was not copied.
    assert!(local.run(&["restore", &sb1, "--target", "/dev/null"]).code != 0);

    // S3 -> S3.
    let m2 = s3_vault(&server, &second, "m2");
    m2.ok(&["init", "--mirror-of", &mirror_url]);
    let s = m.json(&["sync", "--to", &m2_url, "--vm", "vm-b"]);
    assert_eq!(s["snapshots_copied"], serde_json::json!([sb1.clone()]));
    m2.check_ok(true);
    let out = m2.path("b.raw");
    m2.restore(&sb1, &out, &[]);
    assert_same(&b, &out);
}

/// Runs `vmvault ARGS` in the background and kills the server after `after`, restarting
/// it `down` later. Returns the command's result.
fn with_server_outage(
    server: &mut S3Server,
    v: &Vault,
    args: &[&str],
    after: Duration,
    down: Duration,
) -> Out {
    let mut c = v.cmd();
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().expect("start vmvault");
    std::thread::sleep(after);
    server.kill();
    std::thread::sleep(down);
    server.restart();
    wait_output(child, args.join(" "), Duration::from_secs(300))
}

#[test]
fn server_killed_during_backup_and_sync_then_reruns_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = S3Server::start(&tmp.path().join("s3"));
    let v = s3_vault(&server, "outage", "r");
    v.ok(&["init"]);
    let img = v.path("big.img");
    random_file(&img, 160 * MIB, 21);

    // Backup: the server dies for 8 s shortly after the start (longer than the retries
    // wait), so the backup fails or finishes late; either way the rerun completes.
    let o = with_server_outage(
        &mut server,
        &v,
        &["-q", "backup", "--vm", "big", img.to_str().unwrap()],
        Duration::from_millis(300),
        Duration::from_secs(8),
    );
    o.assert_no_panic();
    if o.code != 0 {
        assert!(o.stderr.contains("no snapshot was written"), "{}", o.stderr);
        assert!(v.snapshots().is_empty());
        // Its lock is gone with it (the process ended cleanly).
        v.backup("big", &[&img]);
    }
    // A short outage (1 s) is ridden out by the retries.
    let o = with_server_outage(
        &mut server,
        &v,
        &["-q", "backup", "--vm", "big", img.to_str().unwrap()],
        Duration::from_millis(200),
        Duration::from_secs(1),
    );
    o.assert_ok();
    v.check_ok(true);
    let out = v.path("out.raw");
    v.restore("latest", &out, &[]);
    assert_same(&img, &out);

    // Sync to a mirror with the same outage.
    let m = s3_vault(&server, "outage", "mirror");
    m.ok(&["init", "--mirror-of", "s3://outage/r"]);
    let o = with_server_outage(
        &mut server,
        &v,
        &["-q", "sync", "--to", "s3://outage/mirror"],
        Duration::from_millis(300),
        Duration::from_secs(8),
    );
    o.assert_no_panic();
    // Whatever happened, the mirror never lists a snapshot it cannot restore.
    m.check_ok(false);
    let s = v.json(&["sync", "--to", "s3://outage/mirror"]);
    assert!(
        s["snapshots_copied"].as_array().unwrap().len()
            + s["snapshots_present"].as_u64().unwrap() as usize
            == 2,
        "{s}"
    );
    m.check_ok(true);
    let out = m.path("m.raw");
    m.restore("latest", &out, &[]);
    assert_same(&img, &out);
}

#[test]
fn faults_injected_by_a_proxy_are_ridden_out() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3"));
    server.bucket("flaky");
    let proxy = FaultProxy::start(
        server.port,
        FaultPlan {
            period: 4,
            error_500: 1,
            drop: 2,
            slow: 3,
        },
    );
    let v = Vault::at("s3://flaky/r", S3Server::env_for_port(proxy.port));
    v.ok(&["init"]);
    let img = disk(&v, "flaky.img", 31);
    let b = v.backup("flaky", &[&img]);
    let out = v.path("out.raw");
    v.restore(b["id"].as_str().unwrap(), &out, &[]);
    assert_same(&img, &out);
    v.check_ok(true);
    let m = Vault::at("s3://flaky/mirror", S3Server::env_for_port(proxy.port));
    m.ok(&["init", "--mirror-of", "s3://flaky/r"]);
    v.json(&["sync", "--to", "s3://flaky/mirror"]);
    m.check_ok(true);
    let out2 = m.path("out2.raw");
    m.restore("latest", &out2, &[]);
    assert_same(&img, &out2);
    let (errors, drops, slow) = proxy.injected();
    eprintln!("injected: {errors} 500s, {drops} dropped connections, {slow} slow connections");
    assert!(
        errors > 0 && drops > 0 && slow > 0,
        "the proxy injected too few faults: {errors} 500s, {drops} drops, {slow} slow"
    );
}

#[test]
fn sync_killed_at_random_points_resumes_and_never_shows_incomplete_snapshots() {
    let src = Vault::init();
    let img = src.path("s.img");
    random_file(&img, 96 * MIB, 41);
    let mut rng = Rng::from_time("sync-kill");
    for i in 0..4u64 {
        write_random(&img, i * 20 * MIB, 12 * MIB, &mut rng);
        src.backup("s", &[&img]);
    }
    let m = Vault::new();
    m.ok(&[
        OsStr::new("init"),
        OsStr::new("--mirror-of"),
        src.repo.as_os_str(),
    ]);
    let started = std::time::Instant::now();
    let plan = src.json(&[
        OsStr::new("sync"),
        OsStr::new("--dry-run"),
        OsStr::new("--to"),
        m.repo.as_os_str(),
    ]);
    assert_eq!(plan["snapshots"].as_array().unwrap().len(), 4);
    // Time a whole sync into a throw-away mirror to aim the kills.
    let probe = Vault::new();
    probe.ok(&[
        OsStr::new("init"),
        OsStr::new("--mirror-of"),
        src.repo.as_os_str(),
    ]);
    let t = std::time::Instant::now();
    src.json(&[
        OsStr::new("sync"),
        OsStr::new("--to"),
        probe.repo.as_os_str(),
    ]);
    let full = t.elapsed().max(Duration::from_millis(50));
    let _ = started;
    let mut kills = 0;
    for _ in 0..12 {
        let mut c = src.cmd();
        c.args(["-q", "sync", "--to"])
            .arg(&m.repo)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        std::thread::sleep(full.mul_f64(rng.below(1000) as f64 / 1000.0));
        if child.try_wait().unwrap().is_none() {
            let _ = child.kill();
            kills += 1;
        }
        let _ = child.wait();
        // Every snapshot the mirror lists has all its data there and indexed.
        m.check_ok(false);
        let listed = m.snapshots().len();
        assert!(listed <= 4);
        if listed == 4 {
            break;
        }
    }
    eprintln!("killed {kills} syncs");
    // The rerun finishes without sending again what arrived.
    let s = src.json(&[OsStr::new("sync"), OsStr::new("--to"), m.repo.as_os_str()]);
    let sent: u64 = m
        .packs()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(s["bytes_copied"].as_u64().unwrap() <= sent, "{s}");
    assert_eq!(m.snapshots().len(), 4);
    m.check_ok(true);
    for snap in src.snapshots() {
        let id = snap["id"].as_str().unwrap();
        let out = m.path(&format!("{id}.raw"));
        m.restore(id, &out, &[]);
        let expect = src.path(&format!("{id}.raw"));
        src.restore(id, &expect, &[]);
        assert_same(&expect, &out);
    }
}

trait RunWithLocation {
    fn run_with_location(&self, location: &str, args: &[&str]) -> Out;
}

impl RunWithLocation for Vault {
    fn run_with_location(&self, location: &str, args: &[&str]) -> Out {
        let mut c = self.cmd_at(OsStr::new(location));
        c.args(args);
        run_command(c, Stdio::null())
    }
}

#[test]
fn prune_on_s3_reads_indexes_and_headers_not_whole_packs() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server(&tmp);
    let bucket = server.unique_bucket("prune");
    let v = s3_vault(&server, &bucket, "r");
    v.ok(&["init"]);
    let img = v.path("p.img");
    random_file(&img, 64 * MIB, 51);
    let mut rng = Rng::new(52);
    for _ in 0..4 {
        write_random(&img, rng.below(56) * MIB, 8 * MIB, &mut rng);
        v.backup("p", &[&img]);
    }
    v.ok(&["forget", "--keep-last", "1"]);
    // Without repacking, prune reads index files and manifests only.
    let p = v.json(&["prune", "--max-unused", "100"]);
    let down = p["requests"]["bytes_down"].as_u64().unwrap();
    let total = p["bytes"].as_u64().unwrap();
    assert!(p["packs_deleted"].as_u64().unwrap() > 0, "{p}");
    eprintln!("prune without repacking downloaded {down} of {total} pack bytes");
    assert!(
        down * 20 < total,
        "prune downloaded {down} of {total} bytes: {p}"
    );
    // With repacking, whole-pack reads stay within the repacked packs.
    let p = v.json(&["prune", "--max-unused", "0"]);
    let down = p["requests"]["bytes_down"].as_u64().unwrap();
    let repacked = p["repacked_pack_bytes"].as_u64().unwrap();
    eprintln!("prune with repacking downloaded {down} bytes; repacked packs hold {repacked}");
    assert!(down <= repacked + total / 20, "{p}");
    v.check_ok(true);
    let out = v.path("out.raw");
    v.restore("latest", &out, &[]);
    assert_same(&img, &out);
}
