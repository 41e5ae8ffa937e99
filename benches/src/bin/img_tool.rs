//! Small image manipulations for `e2e.sh` that standard tools do slowly or not at all.
//! Every command touches only the allocated (SEEK_DATA) parts of sparse images.
//!
//! ```text
//! img_tool allocated IMG OUT            concatenate IMG's allocated bytes into OUT
//! img_tool scribble IMG N SEED          overwrite N random 4 KiB pages inside IMG's
//!                                       allocated data with random bytes
//! img_tool replicate SRC SOFF LEN DST DOFF K
//!                                       copy the allocated bytes of SRC[SOFF..SOFF+LEN]
//!                                       to DST at DOFF with every non-zero byte value
//!                                       rotated by K within 1..=255: a copy that
//!                                       compresses like the original (same matches, same
//!                                       symbol statistics) but shares no chunk with it
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use vmvault_benches::{data_extents, random_pages, scribble_pages, Rng};

fn usage() -> ! {
    eprintln!(
        "usage: img_tool allocated IMG OUT | scribble IMG N SEED | replicate SRC SOFF LEN DST DOFF K"
    );
    std::process::exit(2)
}

fn num(s: &str) -> u64 {
    s.parse().unwrap_or_else(|_| usage())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["allocated", img, out] => allocated(Path::new(img), Path::new(out)),
        ["scribble", img, n, seed] => {
            let img = Path::new(img);
            let mut rng = Rng::new(num(seed));
            let pages = random_pages(&data_extents(img), 4096, num(n) as usize, &mut rng);
            scribble_pages(img, &pages, 4096, &mut rng);
            println!("{}", pages.len());
        }
        ["replicate", src, soff, len, dst, doff, k] => replicate(
            Path::new(src),
            num(soff),
            num(len),
            Path::new(dst),
            num(doff),
            num(k),
        ),
        _ => usage(),
    }
}

fn allocated(img: &Path, out: &Path) {
    let src = File::open(img).expect("open image");
    let mut dst = File::create(out).expect("create output");
    let mut buf = vec![0u8; 8 << 20];
    let mut total = 0u64;
    for (off, len) in data_extents(img) {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            src.read_exact_at(&mut buf[..n], off + done).expect("read");
            dst.write_all(&buf[..n]).expect("write");
            done += n as u64;
        }
        total += len;
    }
    dst.sync_all().expect("sync");
    println!("{total}");
}

fn replicate(src: &Path, soff: u64, len: u64, dst: &Path, doff: u64, k: u64) {
    // rotate[b] for b in 1..=255 is ((b - 1 + k) mod 255) + 1; 0 stays 0 so that zero
    // blocks (and holes) stay zero.
    let mut rotate = [0u8; 256];
    for (b, r) in rotate.iter_mut().enumerate().skip(1) {
        *r = ((b as u64 - 1 + k) % 255 + 1) as u8;
    }
    let s = File::open(src).expect("open source");
    let d = OpenOptions::new()
        .write(true)
        .open(dst)
        .expect("open destination");
    let mut buf = vec![0u8; 8 << 20];
    let mut copied = 0u64;
    for (off, l) in data_extents(src) {
        let start = off.max(soff);
        let end = (off + l).min(soff + len);
        let mut pos = start;
        while pos < end {
            let n = (end - pos).min(buf.len() as u64) as usize;
            s.read_exact_at(&mut buf[..n], pos).expect("read");
            for b in &mut buf[..n] {
                *b = rotate[*b as usize];
            }
            d.write_all_at(&buf[..n], pos - soff + doff).expect("write");
            pos += n as u64;
            copied += n as u64;
        }
    }
    d.sync_all().expect("sync");
    println!("{copied}");
}
