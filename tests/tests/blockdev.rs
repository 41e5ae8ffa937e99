//! Block devices: back up a loop device, restore it to a file and to another loop
//! device. Needs root (losetup); skipped with a note otherwise.

use vmvault_tests::*;

#[test]
fn loop_device_backs_up_and_restores_to_file_and_device() {
    let v = Vault::init();
    let img = v.path("vm-disk.img");
    let g = build_gpt_image(
        &img,
        &GptSpec {
            size: 64 * MIB,
            efi: 8 * MIB,
            ext_dirs: vec!["/etc/apt".into(), "/usr/lib/python3.11/json".into()],
            random_bytes: 3 * MIB,
            seed: 21,
        },
    );
    let Some(src) = LoopDev::attach(&img) else {
        return;
    };
    let dev = src.dev.to_str().unwrap().to_string();

    let b = v.backup("loopvm", &[&src.dev]);
    let disk = &b["disks"][0];
    assert_eq!(disk["size"], g.size, "{b}");
    let stem = src.dev.file_name().unwrap().to_str().unwrap();
    assert_eq!(disk["name"], stem, "default disk name of {dev}: {b}");
    let snaps = v.snapshots();
    assert_eq!(snaps[0]["disks"][0]["source"], dev.as_str(), "{snaps:?}");

    // To a file.
    let out = v.path("restored.raw");
    v.restore("latest", &out, &[]);
    assert_same(&img, &out);
    assert_same(&src.dev, &out);
    // A block device has no holes to report, yet the file restored from it is sparse.
    assert_sparse_like(&out, &img, 2 * MIB);

    // To a second loop device whose backing file is full of garbage: every byte of it,
    // zero ranges included, must be overwritten.
    let back = v.path("target-disk.img");
    random_file(&back, g.size, 77);
    let Some(dst) = LoopDev::attach(&back) else {
        return;
    };
    // Writing onto a device replaces it, so it takes --overwrite; without, it is refused
    // and the device untouched.
    let o = v.run(&["restore", "latest", "--target", dst.dev.to_str().unwrap()]);
    o.assert_fails(exit::FAILURE, &["--overwrite"]);
    let garbage = v.path("garbage-expect.img");
    random_file(&garbage, g.size, 77);
    assert_same(&garbage, &dst.dev);
    v.restore("latest", &dst.dev, &["--overwrite"]);
    assert_same(&img, &dst.dev);
    drop(dst);
    assert_same(&img, &back);

    // A device smaller than the disk is refused, naming the device.
    let small = v.path("small-disk.img");
    random_file(&small, 16 * MIB, 78);
    let Some(tiny) = LoopDev::attach(&small) else {
        return;
    };
    let o = v.run(&[
        "restore",
        "latest",
        "--overwrite",
        "--target",
        tiny.dev.to_str().unwrap(),
    ]);
    o.assert_fails(exit::FAILURE, &[tiny.dev.to_str().unwrap()]);
    drop(tiny);
    // ... and left untouched.
    let expect = v.path("small-expect.img");
    random_file(&expect, 16 * MIB, 78);
    assert_same(&expect, &small);
}
