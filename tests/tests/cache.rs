//! The local cache is only a cache: deleting it (or damaging it, or not having one)
//! loses nothing, and it is rebuilt from the repository.

use vmvault_tests::*;

fn dir_size(p: &std::path::Path) -> usize {
    let mut v = Vec::new();
    walk_files(p, &mut v);
    v.len()
}

fn walk_files(p: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                walk_files(&path, out);
            } else {
                out.push(path);
            }
        }
    }
}

#[test]
fn deleting_the_cache_loses_nothing() {
    let v = Vault::init();
    let img = v.path("vm1.img");
    let g = build_gpt_image(&img, &GptSpec::small(51));
    let b1 = v.backup("vm1", &[&img]);
    assert!(
        v.cache.is_dir(),
        "backup did not create the cache in {}",
        v.cache.display()
    );
    assert!(dir_size(&v.cache) > 0);
    let first = v.path("first.img");
    copy_sparse(&img, &first);

    std::fs::remove_dir_all(&v.cache).unwrap();

    // Dedup still works after the cache is rebuilt from the index files.
    let mut rng = Rng::new(52);
    write_random(&img, g.ext.0 + 5 * MIB, 64 * KIB, &mut rng);
    let b2 = v.backup("vm1", &[&img]);
    assert!(
        b2["new_bytes"].as_u64().unwrap() < 2 * MIB,
        "after deleting the cache, an almost unchanged disk was stored again: {b2}"
    );
    assert!(v.cache.is_dir(), "the cache was not rebuilt");
    assert!(dir_size(&v.cache) > 0);

    std::fs::remove_dir_all(&v.cache).unwrap();
    let out = v.path("out1.raw");
    v.restore(b1["id"].as_str().unwrap(), &out, &[]);
    assert_same(&first, &out);
    assert!(v.cache.is_dir(), "restore did not rebuild the cache");

    std::fs::remove_dir_all(&v.cache).unwrap();
    let out2 = v.path("out2.raw");
    v.restore(b2["id"].as_str().unwrap(), &out2, &[]);
    assert_same(&img, &out2);

    std::fs::remove_dir_all(&v.cache).unwrap();
    v.check_ok(true);
}

#[test]
fn no_cache_option_works_and_writes_no_cache() {
    let v = Vault::init();
    let img = v.path("vm2.img");
    build_gpt_image(&img, &GptSpec::small(53));
    let b = v.json(&[
        "--no-cache".as_ref(),
        "backup".as_ref(),
        "--vm".as_ref(),
        "vm2".as_ref(),
        img.as_os_str(),
    ]);
    let b2 = v.json(&[
        "--no-cache".as_ref(),
        "backup".as_ref(),
        "--vm".as_ref(),
        "vm2".as_ref(),
        img.as_os_str(),
    ]);
    assert_eq!(b2["new_chunks"], 0, "--no-cache lost dedup: {b2}");
    let out = v.path("out.raw");
    v.ok(&[
        "--no-cache".as_ref(),
        "restore".as_ref(),
        b["id"].as_str().unwrap().as_ref(),
        "--target".as_ref(),
        out.as_os_str(),
    ]);
    assert_same(&img, &out);
    v.ok(&["--no-cache", "check", "--read-data"]);
    assert!(
        !v.cache.exists() || dir_size(&v.cache) == 0,
        "--no-cache wrote into the cache directory"
    );
}

#[test]
fn damaged_cache_is_rebuilt() {
    let v = Vault::init();
    let img = v.path("vm3.img");
    build_gpt_image(&img, &GptSpec::small(54));
    let b = v.backup("vm3", &[&img]);
    // Overwrite every file of the cache with garbage of the same size.
    let mut files = Vec::new();
    walk_files(&v.cache, &mut files);
    assert!(!files.is_empty());
    let mut rng = Rng::new(55);
    for f in &files {
        let n = file_size(f).max(1);
        let mut buf = vec![0u8; n as usize];
        rng.fill(&mut buf);
        std::fs::write(f, &buf).unwrap();
    }
    let out = v.path("out.raw");
    let o = v.run(&[
        "restore".as_ref(),
        b["id"].as_str().unwrap().as_ref(),
        "--target".as_ref(),
        out.as_os_str(),
    ]);
    o.assert_ok();
    assert_same(&img, &out);
    let b2 = v.backup("vm3", &[&img]);
    assert_eq!(b2["new_chunks"], 0, "{b2}");
    v.check_ok(true);
}

#[test]
fn one_cache_dir_serves_two_repositories() {
    let a = Vault::init();
    let mut b = Vault::init();
    // b uses a's cache directory.
    b.cache = a.cache.clone();
    let img_a = a.path("a.img");
    let img_b = b.path("b.img");
    build_gpt_image(&img_a, &GptSpec::small(56));
    build_gpt_image(&img_b, &GptSpec::small(57));
    a.backup("a", &[&img_a]);
    // The same disk into repository b must be stored there, not deduplicated against
    // chunks that only repository a holds.
    let sb = b.backup("a", &[&img_a]);
    assert!(sb["new_chunks"].as_u64().unwrap() > 0, "{sb}");
    b.backup("b", &[&img_b]);
    let out = b.path("out.raw");
    b.restore("latest", &out, &["--vm", "a"]);
    assert_same(&img_a, &out);
    a.check_ok(true);
    b.check_ok(true);
}

/// A private cache left by a killed process (`tmp-*` with a free lock) is deleted on the
/// next run; one whose lock is held by a live process is left alone.
#[test]
fn abandoned_private_caches_are_removed_live_ones_kept() {
    let v = Vault::init();
    let img = v.path("vm5.img");
    build_gpt_image(&img, &GptSpec::small(55));
    v.backup("vm5", &[&img]);
    let base = std::fs::read_dir(&v.cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("index-v1").is_dir())
        .expect("the repository's cache directory");
    let abandoned = base.join("tmp-abandoned");
    let live = base.join("tmp-live");
    for d in [&abandoned, &live] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("lock"), b"").unwrap();
    }
    let mut holder = std::process::Command::new("flock")
        .arg("-x")
        .arg(live.join("lock"))
        .args(["sleep", "60"])
        .spawn()
        .expect("flock");
    let t = std::time::Instant::now();
    while std::process::Command::new("flock")
        .args(["-n", "-x"])
        .arg(live.join("lock"))
        .arg("true")
        .status()
        .unwrap()
        .success()
    {
        assert!(t.elapsed().as_secs() < 10, "flock never took the lock");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    v.backup("vm5", &[&img]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(!abandoned.exists(), "an abandoned private cache was kept");
    assert!(live.exists(), "a private cache in use was deleted");
}
