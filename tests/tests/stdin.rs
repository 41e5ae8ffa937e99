//! Backups from standard input (`-`): `cat img | vmvault backup --vm x -`, `--disk-name`,
//! `--size`, and streams that end early or run long.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use vmvault_tests::*;

/// Starts `prog args` with stdout piped, for use as vmvault's stdin.
fn producer(prog: &str, args: &[&str]) -> Child {
    Command::new(prog)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {prog}: {e}"))
}

/// `PRODUCER | vmvault --json backup ARGS`.
fn backup_from(v: &Vault, mut from: Child, args: &[&str]) -> Out {
    let stdin = Stdio::from(from.stdout.take().unwrap());
    let mut a = vec!["--json", "backup"];
    a.extend_from_slice(args);
    let o = v.run_stdin(&a, stdin);
    let _ = from.kill();
    let _ = from.wait();
    o
}

fn image(v: &Vault, name: &str, seed: u64) -> std::path::PathBuf {
    let img = v.path(name);
    build_gpt_image(&img, &GptSpec::small(seed));
    img
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn cat_image_into_backup_round_trips() {
    let v = Vault::init();
    let img = image(&v, "piped.img", 31);
    let o = backup_from(&v, producer("cat", &[s(&img)]), &["--vm", "x", "-"]);
    o.assert_ok();
    let b = o.json();
    let disk = &b["disks"][0];
    assert_eq!(disk["name"], "stdin", "{b}");
    assert_eq!(disk["source"], "stdin", "{b}");
    assert_eq!(disk["size"], file_size(&img), "{b}");
    assert_eq!(b["logical_bytes"], file_size(&img), "{b}");

    let out = v.path("out.raw");
    v.restore("latest", &out, &[]);
    assert_same(&img, &out);
    // A stream has no holes, but its zero runs come back as holes.
    assert_sparse_like(&out, &img, 2 * MIB);

    // The same stream again dedups completely. (The file itself need not: its holes
    // cut chunks where the stream has short zero runs inside data.)
    let o = backup_from(&v, producer("cat", &[s(&img)]), &["--vm", "x", "-"]);
    o.assert_ok();
    let b2 = o.json();
    assert_eq!(b2["new_chunks"], 0, "{b2}");
    assert_eq!(b2["packs"], 0, "{b2}");
    v.check_ok(true);
}

#[test]
fn disk_name_and_exact_size_are_honoured() {
    let v = Vault::init();
    let img = image(&v, "named.img", 32);
    let size = file_size(&img).to_string();
    let o = backup_from(
        &v,
        producer("cat", &[s(&img)]),
        &["--vm", "x", "--disk-name", "vda", "--size", &size, "-"],
    );
    o.assert_ok();
    let b = o.json();
    assert_eq!(b["disks"][0]["name"], "vda", "{b}");
    let snaps = v.snapshots();
    assert_eq!(snaps[0]["disks"][0]["name"], "vda");
    assert_eq!(snaps[0]["disks"][0]["size"], file_size(&img));
    let out = v.path("vda.raw");
    v.restore("latest", &out, &["--disk", "vda"]);
    assert_same(&img, &out);

    // stdin next to a file: each keeps its own name.
    let other = image(&v, "other.img", 33);
    let o = backup_from(
        &v,
        producer("cat", &[s(&img)]),
        &["--vm", "y", s(&other), "-"],
    );
    o.assert_ok();
    let names: Vec<String> = o.json()["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["other", "stdin"]);
    let dir = v.path("y");
    v.restore("latest", &dir, &["--vm", "y"]);
    assert_same(&other, &dir.join("other.raw"));
    assert_same(&img, &dir.join("stdin.raw"));
}

#[test]
fn truncated_stream_with_size_fails_and_writes_no_snapshot() {
    let v = Vault::init();
    let img = image(&v, "full.img", 34);
    v.backup("x", &[&img]);
    let before = v.repo_files("snapshots");
    let size = file_size(&img);
    let cut = (size / 2 + 12345).to_string();
    let o = backup_from(
        &v,
        producer("head", &["-c", &cut, s(&img)]),
        &["--vm", "x", "--size", &size.to_string(), "-"],
    );
    o.assert_fails(exit::FAILURE, &["ended early"]);
    assert!(
        o.stdout.trim().is_empty(),
        "no summary expected: {}",
        o.stdout
    );
    assert_eq!(v.repo_files("snapshots"), before, "a snapshot was written");
    assert_eq!(v.snapshots().len(), 1);
    v.check_ok(false);

    // An empty stream with a declared size fails the same way.
    let o = v.run_stdin(
        &["backup", "--vm", "x", "--size", "4096", "-"],
        Stdio::null(),
    );
    o.assert_fails(exit::FAILURE, &["ended early"]);
    assert_eq!(v.repo_files("snapshots"), before);
}

#[test]
fn stream_longer_than_size_fails() {
    let v = Vault::init();
    let img = image(&v, "long.img", 35);
    let size = file_size(&img);
    let o = backup_from(
        &v,
        producer("cat", &[s(&img)]),
        &["--vm", "x", "--size", &(size - 4096).to_string(), "-"],
    );
    o.assert_no_panic();
    assert_ne!(o.code, 0, "a stream longer than --size was accepted: {o:?}");
    assert_eq!(o.code, exit::FAILURE);
    o.assert_stderr_has(&["stdin"]);
    assert!(v.repo_files("snapshots").is_empty());
}

/// The CLI contract: exit 2 for a bad command line.
#[test]
fn stdin_given_twice_is_a_usage_error() {
    let v = Vault::init();
    let o = v.run(&["backup", "--vm", "x", "-", "-"]);
    o.assert_fails(exit::USAGE, &["standard input"]);
    assert!(v.repo_files("snapshots").is_empty());
}

/// The CLI contract: exit 2 for a bad command line.
#[test]
fn more_disk_names_than_paths_is_a_usage_error() {
    let v = Vault::init();
    let img = image(&v, "u.img", 36);
    let o = v.run(&[
        "backup",
        "--vm",
        "x",
        "--disk-name",
        "a",
        "--disk-name",
        "b",
        s(&img),
    ]);
    o.assert_fails(exit::USAGE, &["disk-name"]);
    assert!(v.repo_files("snapshots").is_empty());
}

#[test]
fn duplicate_or_bad_disk_and_vm_names_are_refused() {
    let v = Vault::init();
    let img = image(&v, "u.img", 37);
    // Two disks with the same name could not both be restored as DIR/<name>.raw.
    let o = v.run(&[
        "backup",
        "--vm",
        "x",
        "--disk-name",
        "a",
        "--disk-name",
        "a",
        s(&img),
        s(&img),
    ]);
    o.assert_fails(exit::FAILURE, &["\"a\"", "twice"]);
    let o = v.run(&["backup", "--vm", "x", "--disk-name", "a/b", s(&img)]);
    o.assert_fails(exit::FAILURE, &["a/b"]);
    let o = v.run(&["backup", "--vm", "a/b", s(&img)]);
    o.assert_fails(exit::FAILURE, &["VM name"]);
    let o = v.run(&["backup", "--vm", "", s(&img)]);
    o.assert_no_panic();
    assert_ne!(o.code, 0, "an empty VM name was accepted");
    assert!(v.repo_files("snapshots").is_empty());
    // A directory is not a disk.
    let d = v.path("a-directory");
    std::fs::create_dir(&d).unwrap();
    let o = v.run(&["backup", "--vm", "x", s(&d)]);
    o.assert_fails(exit::FAILURE, &[s(&d)]);
    // A path that does not exist is named.
    let o = v.run(&["backup", "--vm", "x", "/nonexistent/disk.img"]);
    o.assert_fails(exit::FAILURE, &["/nonexistent/disk.img"]);
    assert!(v.repo_files("snapshots").is_empty());
}
