//! Peak memory of a backup stays bounded (issue 3: ≤ 150 MB; measured ~80 MB, of which the
//! 64 MiB password KDF is most). This also guards the binary's malloc tuning: without
//! it, freed 16 MiB pack buffers stay resident and the peak roughly doubles.

use std::process::Command;
use vmvault_tests::{random_file, Vault, MIB};

/// Runs `vmvault ARGS` under `/usr/bin/time` and returns the peak RSS in bytes.
fn peak_rss(v: &Vault, args: &[&str]) -> u64 {
    let inner = v.cmd();
    let report = v.path("time.txt");
    let mut c = Command::new("/usr/bin/time");
    c.arg("-f").arg("%M").arg("-o").arg(&report);
    c.arg(inner.get_program());
    c.args(inner.get_args());
    c.args(args);
    for (k, val) in inner.get_envs() {
        match val {
            Some(val) => c.env(k, val),
            None => c.env_remove(k),
        };
    }
    let out = c
        .output()
        .expect("/usr/bin/time runs (apt-get install time)");
    assert!(
        out.status.success(),
        "vmvault {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kib: u64 = std::fs::read_to_string(&report)
        .unwrap()
        .trim()
        .lines()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    kib * 1024
}

#[test]
fn backup_and_restore_peak_rss_is_bounded() {
    let v = Vault::init();
    // Incompressible data: 512 MiB become about 32 packs, each buffered in memory once.
    let disk = v.path("disk.img");
    random_file(&disk, 512 * MIB, 7);
    let backup = peak_rss(&v, &["backup", "-q", "--vm", "mem", disk.to_str().unwrap()]);
    eprintln!("backup peak RSS: {} MiB", backup / MIB);
    assert!(
        backup < 110 * MIB,
        "backup peak RSS {} MiB (bound 150 MiB, measured ~80 MiB)",
        backup / MIB
    );
    let out = v.path("out.img");
    let restore = peak_rss(
        &v,
        &["restore", "-q", "latest", "--target", out.to_str().unwrap()],
    );
    assert!(
        restore < 110 * MIB,
        "restore peak RSS {} MiB",
        restore / MIB
    );
}
