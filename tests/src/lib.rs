//! Shared helpers for vmvault's end-to-end tests.
//!
//! The tests drive the real `vmvault` binary (see [`vmvault_bin`]) on real disk images
//! built with the system's tools (`sgdisk`, `mkfs.ext4`, `mkfs.vfat`, `mtools`), and
//! compare what comes back with `cmp` and `qemu-img compare`. Every test gets its own
//! temporary directory holding the repository, the cache and its images ([`Vault`]), so
//! tests never touch `~/.cache` and can run in parallel.
//!
//! Run: `cargo build --release -p vmvault && cargo test --release -p vmvault-tests`
//! (`--no-fail-fast` to see every failing file). `VMVAULT_BIN` overrides the binary;
//! `VMVAULT_TEST_SEED` replays the randomised tests (their seed is printed). Every
//! command run is logged to stderr with its duration and exit code, which the test
//! harness shows for failing tests (or with `--nocapture`). Needs `sgdisk`, `mkfs.ext4`,
//! `mkfs.vfat`, mtools, `qemu-img`, `cmp`, `flock`; `losetup` (root) for block devices,
//! skipped with a note without it.

use serde_json::Value;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod s3;

pub use serde_json;
pub use tempfile;

/// Exit codes of the CLI contract.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Any other failure.
    pub const FAILURE: i32 = 1;
    /// Bad command line.
    pub const USAGE: i32 = 2;
    /// `check` found damage.
    pub const CHECK_FAILED: i32 = 3;
    /// No repository at the location.
    pub const NO_REPOSITORY: i32 = 10;
    /// Locked by another operation.
    pub const LOCKED: i32 = 11;
    /// Wrong password.
    pub const WRONG_PASSWORD: i32 = 12;
}

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;
pub const GIB: u64 = 1024 * MIB;

/// Longest any single vmvault invocation may take before the test fails as hung.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------
// Locating the binary
// ---------------------------------------------------------------------------------------

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `vmvault` binary under test: `$VMVAULT_BIN`, else `<target>/release/vmvault` for
/// a release build of the tests and `<target>/debug/vmvault` otherwise, where `<target>`
/// is `$CARGO_TARGET_DIR` (at run or build time) or `<workspace>/target`.
pub fn vmvault_bin() -> PathBuf {
    if let Some(b) = std::env::var_os("VMVAULT_BIN").filter(|b| !b.is_empty()) {
        let b = PathBuf::from(b);
        assert!(b.is_file(), "VMVAULT_BIN={} does not exist", b.display());
        return b;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|t| !t.is_empty())
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(PathBuf::from))
        .map(|t| {
            if t.is_relative() {
                workspace_root().join(t)
            } else {
                t
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let bin = target.join(profile).join("vmvault");
    if !bin.is_file() {
        panic!(
            "{} not found: build it first: cargo build --release -p vmvault",
            bin.display()
        );
    }
    bin
}

// ---------------------------------------------------------------------------------------
// Running processes
// ---------------------------------------------------------------------------------------

/// What a finished process left behind.
#[derive(Debug, Clone)]
pub struct Out {
    /// A description of the command, for messages.
    pub what: String,
    /// Exit code, or -signal when killed by a signal.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

fn code_of(s: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| -s.signal().unwrap_or(0))
}

impl Out {
    fn context(&self) -> String {
        format!(
            "command: {}\nexit code: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.code, self.stdout, self.stderr
        )
    }

    /// Asserts that nothing panicked (exit 101 or "panicked" in stderr).
    pub fn assert_no_panic(&self) -> &Self {
        assert!(
            self.code != 101 && !self.stderr.contains("panicked"),
            "vmvault panicked\n{}",
            self.context()
        );
        assert!(
            self.code >= 0,
            "vmvault was killed by signal {}\n{}",
            -self.code,
            self.context()
        );
        self
    }

    /// Asserts success.
    pub fn assert_ok(&self) -> &Self {
        self.assert_no_panic();
        assert_eq!(self.code, 0, "expected success\n{}", self.context());
        self
    }

    /// Asserts failure with exactly `code`, no panic, and that stderr contains every
    /// one of `needles` (case-insensitively).
    pub fn assert_fails(&self, code: i32, needles: &[&str]) -> &Self {
        self.assert_no_panic();
        assert_eq!(
            self.code,
            code,
            "expected exit code {code}\n{}",
            self.context()
        );
        self.assert_stderr_has(needles)
    }

    /// Asserts that stderr contains every one of `needles` (case-insensitively).
    pub fn assert_stderr_has(&self, needles: &[&str]) -> &Self {
        let low = self.stderr.to_lowercase();
        for n in needles {
            assert!(
                low.contains(&n.to_lowercase()),
                "stderr does not mention {n:?}\n{}",
                self.context()
            );
        }
        self
    }

    /// Parses stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{}", self.context()))
    }
}

/// Runs a prepared command to completion (with [`COMMAND_TIMEOUT`]), capturing output.
pub fn run_command(mut cmd: Command, stdin: Stdio) -> Out {
    let what = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    cmd.stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    wait_output(child, what, COMMAND_TIMEOUT)
}

/// Waits for a child whose stdout and stderr are piped, killing it after `timeout`.
pub fn wait_output(mut child: Child, what: String, timeout: Duration) -> Out {
    let mut so = child.stdout.take();
    let mut se = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(o) = so.as_mut() {
            let _ = o.read_to_end(&mut s);
        }
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(o) = se.as_mut() {
            let _ = o.read_to_end(&mut s);
        }
        s
    });
    let started = Instant::now();
    let deadline = started + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
            panic!("{what} did not finish within {timeout:?} (killed)\nstderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // Shown with the test's output on failure (or with --nocapture).
    eprintln!(
        "[{:6.2}s, exit {}] {what}",
        started.elapsed().as_secs_f64(),
        code_of(status)
    );
    Out {
        what,
        code: code_of(status),
        stdout: String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned(),
    }
}

/// Runs a system tool and asserts it succeeded; returns its stdout.
pub fn sh<I, S>(prog: &str, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(prog);
    cmd.args(args);
    let out = run_command(cmd, Stdio::null());
    assert_eq!(
        out.code, 0,
        "{prog} failed\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.stdout, out.stderr
    );
    out.stdout
}

// ---------------------------------------------------------------------------------------
// A repository in a temporary directory
// ---------------------------------------------------------------------------------------

/// One test's world: a temporary directory with a repository, a cache directory and
/// room for images. Every command gets the password and cache dir explicitly.
pub struct Vault {
    pub dir: tempfile::TempDir,
    /// The repository directory (for a local repository).
    pub repo: PathBuf,
    /// What `-r` gets when set with [`Vault::at`] (a URL); empty means `repo`.
    pub location: std::ffi::OsString,
    /// Extra environment for every command (object-store credentials).
    pub env: Vec<(String, String)>,
    pub cache: PathBuf,
    pub password: String,
}

impl Default for Vault {
    fn default() -> Self {
        Self::new()
    }
}

impl Vault {
    /// A fresh world; the repository is not initialised yet.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("vmvault-e2e-")
            .tempdir()
            .expect("temp dir");
        let repo = dir.path().join("repo");
        let cache = dir.path().join("cache");
        Vault {
            dir,
            location: std::ffi::OsString::new(),
            repo,
            env: Vec::new(),
            cache,
            password: "correct horse battery staple".into(),
        }
    }

    /// A fresh world whose repository is at `location` (a URL), with `env` given to
    /// every command; not initialised yet.
    pub fn at(location: &str, env: Vec<(String, String)>) -> Self {
        let mut v = Self::new();
        v.location = location.into();
        v.env = env;
        v
    }

    /// A fresh world with an initialised repository.
    pub fn init() -> Self {
        let v = Self::new();
        v.ok(&["init"]);
        v
    }

    /// A path inside this test's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `vmvault -r REPO` with the password, the cache dir and a private HOME.
    pub fn cmd(&self) -> Command {
        self.cmd_at(&self.loc())
    }

    /// The repository location commands get: the URL given to [`Vault::at`], else the
    /// `repo` directory (which tests may change after construction).
    pub fn loc(&self) -> std::ffi::OsString {
        if self.location.is_empty() {
            self.repo.clone().into_os_string()
        } else {
            self.location.clone()
        }
    }

    /// Like [`Vault::cmd`] for another repository location.
    pub fn cmd_at(&self, location: &OsStr) -> Command {
        let mut c = Command::new(vmvault_bin());
        c.env_remove("VMVAULT_REPOSITORY")
            .env_remove("VMVAULT_PASSWORD_FILE")
            .env("VMVAULT_PASSWORD", &self.password)
            .env("VMVAULT_CACHE_DIR", &self.cache)
            .env("HOME", self.dir.path())
            .env("XDG_CACHE_HOME", self.dir.path().join("xdg-cache"))
            .env("RUST_BACKTRACE", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("-r")
            .arg(location);
        c
    }

    /// Runs vmvault with `args` (stdin empty) and returns what happened.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Out {
        let mut c = self.cmd();
        c.args(args);
        run_command(c, Stdio::null())
    }

    /// Runs vmvault with `args` and the given stdin.
    pub fn run_stdin<S: AsRef<OsStr>>(&self, args: &[S], stdin: Stdio) -> Out {
        let mut c = self.cmd();
        c.args(args);
        run_command(c, stdin)
    }

    /// Runs vmvault and asserts success.
    pub fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> Out {
        let o = self.run(args);
        o.assert_ok();
        o
    }

    /// Runs `vmvault --json ARGS`, asserts success and parses stdout.
    pub fn json<S: AsRef<OsStr>>(&self, args: &[S]) -> Value {
        let mut a: Vec<&OsStr> = vec![OsStr::new("--json")];
        a.extend(args.iter().map(|s| s.as_ref()));
        self.ok(&a).json()
    }

    /// `vmvault --json backup --vm VM PATHS...`; returns the summary.
    pub fn backup(&self, vm: &str, paths: &[&Path]) -> Value {
        self.backup_with(vm, paths, &[])
    }

    /// Like [`Vault::backup`] with extra options (before the paths).
    pub fn backup_with(&self, vm: &str, paths: &[&Path], extra: &[&str]) -> Value {
        let mut a: Vec<&OsStr> = vec!["backup".as_ref(), "--vm".as_ref(), vm.as_ref()];
        a.extend(extra.iter().map(OsStr::new));
        a.extend(paths.iter().map(|p| p.as_os_str()));
        let v = self.json(&a);
        assert!(v["id"].is_string(), "backup --json has no id: {v}");
        v
    }

    /// `vmvault restore SNAP --target TARGET EXTRA...`, asserting success.
    pub fn restore(&self, snap: &str, target: &Path, extra: &[&str]) -> Out {
        let mut a: Vec<&OsStr> = vec!["restore".as_ref(), snap.as_ref(), "--target".as_ref()];
        a.push(target.as_os_str());
        a.extend(extra.iter().map(OsStr::new));
        self.ok(&a)
    }

    /// `vmvault --json snapshots`.
    pub fn snapshots(&self) -> Vec<Value> {
        match self.json(&["snapshots"]) {
            Value::Array(a) => a,
            v => panic!("snapshots --json is not an array: {v}"),
        }
    }

    /// `vmvault --json check [--read-data]`, asserting exit 0 and ok=true.
    pub fn check_ok(&self, read_data: bool) -> Value {
        let mut a = vec!["--json", "check"];
        if read_data {
            a.push("--read-data");
        }
        let o = self.run(&a);
        o.assert_ok();
        let v = o.json();
        assert_eq!(v["ok"], true, "check says not ok: {v}");
        assert_eq!(
            v["errors"].as_array().map(Vec::len),
            Some(0),
            "check has errors: {v}"
        );
        v
    }

    /// Files of the repository under `sub` (e.g. "data", "index", "snapshots"),
    /// recursively, sorted, without incomplete `.tmp-` files.
    pub fn repo_files(&self, sub: &str) -> Vec<PathBuf> {
        let mut v = Vec::new();
        walk(&self.repo.join(sub), &mut v);
        v.retain(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".tmp-"))
        });
        v.sort();
        v
    }

    /// The packs (data/xx/name) of the repository.
    pub fn packs(&self) -> Vec<PathBuf> {
        self.repo_files("data")
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&p, out),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
}

/// The file name of a path as a string.
pub fn name_of(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------

/// Asserts two files (or block devices) are byte-for-byte equal, with `cmp` and, for
/// regular files, `qemu-img compare` (hole-aware). `cmp` reads holes byte by byte, so
/// for files over [`CMP_LIMIT`] only `qemu-img compare` and a size check are used.
pub fn assert_same(a: &Path, b: &Path) {
    let regular = |p: &Path| std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false);
    if regular(a) && regular(b) {
        assert_eq!(
            file_size(a),
            file_size(b),
            "{} and {} differ in size",
            a.display(),
            b.display()
        );
    }
    let big = regular(a) && regular(b) && file_size(a) > CMP_LIMIT;
    let o = run_command(
        {
            let mut c = Command::new(if big { "true" } else { "cmp" });
            c.arg(a).arg(b);
            c
        },
        Stdio::null(),
    );
    assert_eq!(
        o.code,
        0,
        "cmp {} {} differ: {}{}",
        a.display(),
        b.display(),
        o.stdout,
        o.stderr
    );
    if regular(a) && regular(b) {
        let o = run_command(
            {
                let mut c = Command::new("qemu-img");
                c.args(["compare", "-f", "raw", "-F", "raw"]).arg(a).arg(b);
                c
            },
            Stdio::null(),
        );
        assert_eq!(
            o.code,
            0,
            "qemu-img compare {} {} says they differ: {}{}",
            a.display(),
            b.display(),
            o.stdout,
            o.stderr
        );
    }
}

/// Files larger than this are compared by `qemu-img compare` only.
pub const CMP_LIMIT: u64 = GIB;

/// Bytes actually allocated on disk for a file (st_blocks × 512).
pub fn allocated(p: &Path) -> u64 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .blocks()
        * 512
}

/// Logical size of a file.
pub fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .len()
}

/// Asserts that `restored` is sparse: it allocates well below its logical size and no
/// more than `source` does plus `slack` bytes.
pub fn assert_sparse_like(restored: &Path, source: &Path, slack: u64) {
    let (r, s) = (allocated(restored), allocated(source));
    let size = file_size(restored);
    assert!(
        r <= s + slack,
        "{} allocates {r} bytes, more than its source {} ({s}) + {slack}",
        restored.display(),
        source.display()
    );
    assert!(
        r < size / 2,
        "{} allocates {r} of {size} logical bytes: not sparse",
        restored.display()
    );
}

/// Flips bit `bit` of the byte at `offset` (negative: from the end) of a file.
pub fn flip_bit(p: &Path, offset: i64, bit: u8) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let len = f.metadata().unwrap().len();
    let off = if offset < 0 {
        len - offset.unsigned_abs()
    } else {
        offset as u64
    };
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off).unwrap();
    b[0] ^= 1 << bit;
    f.write_all_at(&b, off).unwrap();
    f.sync_all().unwrap();
}

/// Makes a read-write copy of a file that keeps holes (`cp --sparse=always`).
pub fn copy_sparse(from: &Path, to: &Path) {
    sh(
        "cp",
        [
            OsStr::new("--sparse=always"),
            from.as_os_str(),
            to.as_os_str(),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// Deterministic pseudo-random data
// ---------------------------------------------------------------------------------------

/// splitmix64: small, fast, deterministic; good enough for test data and offsets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5eed_5eed_5eed_5eed)
    }

    /// Seeded from the clock (printed, so a failure can be replayed with `Rng::new`).
    pub fn from_time(what: &str) -> Self {
        let seed = std::env::var("VMVAULT_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{what}: random seed {seed} (set VMVAULT_TEST_SEED to replay)");
        Self::new(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Writes `len` pseudo-random bytes at `offset` of an existing file.
pub fn write_random(p: &Path, offset: u64, len: u64, rng: &mut Rng) {
    let f = OpenOptions::new().write(true).open(p).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(MIB) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all_at(&buf[..n], offset + done).unwrap();
        done += n as u64;
    }
}

/// Creates a file of `len` pseudo-random bytes.
pub fn random_file(p: &Path, len: u64, seed: u64) {
    let mut f = File::create(p).unwrap();
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; MIB as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(MIB) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        done += n as u64;
    }
    f.sync_all().unwrap();
}

/// Offsets of the 4 KiB blocks in `range` of a file that are not all zero.
pub fn nonzero_blocks(p: &Path, start: u64, len: u64) -> Vec<u64> {
    let mut f = File::open(p).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    let mut r = std::io::BufReader::with_capacity(MIB as usize, f.take(len));
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let mut off = start;
    loop {
        let mut got = 0;
        while got < buf.len() {
            let n = r.read(&mut buf[got..]).unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        if got == 0 {
            break;
        }
        if buf[..got].iter().any(|&b| b != 0) {
            out.push(off);
        }
        off += got as u64;
        if got < buf.len() {
            break;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Disk images
// ---------------------------------------------------------------------------------------

/// What goes into a GPT image built by [`build_gpt_image`].
#[derive(Debug, Clone)]
pub struct GptSpec {
    /// Logical size of the image.
    pub size: u64,
    /// Size of the EFI (FAT32) partition, starting at 1 MiB.
    pub efi: u64,
    /// Directories whose contents are copied into the ext4 partition (each under its
    /// own name).
    pub ext_dirs: Vec<PathBuf>,
    /// Bytes of pseudo-random (incompressible) data added as a file in the ext4
    /// partition.
    pub random_bytes: u64,
    /// Seed for the random file (different seeds: different VMs' data).
    pub seed: u64,
}

impl GptSpec {
    /// A small image: 128 MiB, a 16 MiB EFI partition, some of /etc and a few MiB of
    /// Python's standard library in ext4.
    pub fn small(seed: u64) -> Self {
        GptSpec {
            size: 128 * MIB,
            efi: 16 * MIB,
            ext_dirs: vec!["/etc/apt".into(), "/usr/lib/python3.11/email".into()],
            random_bytes: 2 * MIB,
            seed,
        }
    }
}

/// Where things are in a built image.
#[derive(Debug, Clone)]
pub struct GptImage {
    pub path: PathBuf,
    pub size: u64,
    /// Byte offset and length of the EFI partition.
    pub efi: (u64, u64),
    /// Byte offset and length of the ext4 partition.
    pub ext: (u64, u64),
}

const SECTOR: u64 = 512;

/// Builds a GPT disk image (no root needed): `truncate` + `sgdisk` for the partition
/// table, an EFI partition formatted with `mkfs.vfat` in a separate file holding a few
/// real files (copied with `mcopy`) and copied in with `dd conv=notrunc,sparse`, and a
/// Linux partition made by `mkfs.ext4 -E offset= -d` from real files. Unallocated space
/// stays sparse.
pub fn build_gpt_image(path: &Path, spec: &GptSpec) -> GptImage {
    let work = tempfile::Builder::new()
        .prefix("vmvault-img-")
        .tempdir_in(path.parent().unwrap())
        .unwrap();
    let size = spec.size;
    let efi_start = MIB;
    let efi_end = efi_start + spec.efi; // exclusive
    let ext_start = efi_end;
    // The backup GPT takes the last 33 sectors; keep the partition 1 MiB aligned.
    let ext_len = (size - 34 * SECTOR - ext_start) / MIB * MIB;
    copy_sparse(&blank_gpt(size, spec.efi, ext_len), path);

    // EFI: FAT32 with a few real files.
    let fat = work.path().join("efi.img");
    sh(
        "truncate",
        [
            OsStr::new("-s"),
            spec.efi.to_string().as_ref(),
            fat.as_os_str(),
        ],
    );
    sh(
        "mkfs.vfat",
        [OsStr::new("-n"), OsStr::new("EFI"), fat.as_os_str()],
    );
    let fat_arg = fat.display().to_string();
    sh("mmd", ["-i", &fat_arg, "::/EFI", "::/EFI/debian"]);
    let mut boot_files: Vec<String> = Vec::new();
    for f in [
        "/etc/os-release",
        "/etc/fstab",
        "/etc/hostname",
        "/usr/share/doc/bash/copyright",
        "/usr/share/common-licenses/GPL-3",
    ] {
        if Path::new(f).is_file() {
            boot_files.push(f.into());
        }
    }
    assert!(
        !boot_files.is_empty(),
        "no real files for the EFI partition"
    );
    let mut args = vec!["-i".to_string(), fat_arg.clone()];
    args.extend(boot_files);
    args.push("::/EFI/debian/".into());
    sh("mcopy", &args);
    // A seed-dependent file so that different VMs' EFI partitions differ.
    let seeded = work.path().join("seed.bin");
    random_file(&seeded, 64 * KIB, spec.seed ^ 0xefe);
    sh(
        "mcopy",
        [
            "-i",
            &fat_arg,
            &seeded.display().to_string(),
            "::/EFI/debian/grubenv",
        ],
    );
    dd_into(&fat, path, efi_start);

    // Linux: ext4 from a directory of real files plus a random file.
    let root = work.path().join("root");
    std::fs::create_dir(&root).unwrap();
    for d in &spec.ext_dirs {
        let name = d.file_name().unwrap();
        let mut args: Vec<&OsStr> = vec!["-r".as_ref(), d.as_os_str()];
        let dst = root.join(name);
        args.push(dst.as_os_str());
        sh("cp", args);
    }
    if spec.random_bytes > 0 {
        random_file(&root.join("random.bin"), spec.random_bytes, spec.seed);
    }
    // Straight into the partition (mkfs.ext4 -E offset=), which keeps the image sparse.
    sh(
        "mkfs.ext4",
        [
            OsStr::new("-q"),
            OsStr::new("-F"),
            OsStr::new("-E"),
            format!("offset={ext_start},lazy_itable_init=1,lazy_journal_init=1").as_ref(),
            OsStr::new("-L"),
            OsStr::new("root"),
            OsStr::new("-d"),
            root.as_os_str(),
            path.as_os_str(),
            format!("{}k", ext_len / KIB).as_ref(),
        ],
    );
    assert_eq!(file_size(path), size, "mkfs.ext4 changed the image's size");
    GptImage {
        path: path.to_path_buf(),
        size,
        efi: (efi_start, spec.efi),
        ext: (ext_start, ext_len),
    }
}

/// A per-process directory for fixtures that are slow to build; directories of
/// processes that are gone are removed when the first one is made.
pub fn fixture_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = std::env::temp_dir();
        let prefix = "vmvault-e2e-fixtures-";
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix(prefix) {
                    if !Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let d = tmp.join(format!("{prefix}{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// An empty image of `size` bytes with the GPT partition table of [`build_gpt_image`],
/// made once per process and geometry (`sgdisk` sleeps a second on every run).
fn blank_gpt(size: u64, efi: u64, ext_len: u64) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let path = fixture_dir().join(format!("gpt-{size}-{efi}-{ext_len}.img"));
    if path.exists() {
        return path;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    sh(
        "truncate",
        [OsStr::new("-s"), size.to_string().as_ref(), tmp.as_os_str()],
    );
    let efi_start = MIB;
    let ext_start = efi_start + efi;
    sh(
        "sgdisk",
        [
            "-n".to_string(),
            format!("1:{}:{}", efi_start / SECTOR, ext_start / SECTOR - 1),
            "-t".into(),
            "1:ef00".into(),
            "-c".into(),
            "1:EFI".into(),
            "-n".into(),
            format!(
                "2:{}:{}",
                ext_start / SECTOR,
                (ext_start + ext_len) / SECTOR - 1
            ),
            "-t".into(),
            "2:8300".into(),
            "-c".into(),
            "2:root".into(),
            tmp.display().to_string(),
        ],
    );
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// `dd if=FROM of=TO bs=4k seek=OFFSET conv=notrunc,sparse`.
pub fn dd_into(from: &Path, to: &Path, offset: u64) {
    assert_eq!(offset % (4 * KIB), 0);
    sh(
        "dd",
        [
            format!("if={}", from.display()),
            format!("of={}", to.display()),
            "bs=4k".into(),
            format!("seek={}", offset / (4 * KIB)),
            "conv=notrunc,sparse".into(),
            "status=none".into(),
        ],
    );
}

/// `dd if=/dev/urandom of=P bs=4k seek=BLOCK count=1 conv=notrunc`: one random 4 KiB
/// write at a 4 KiB-aligned offset.
pub fn dd_random_block(p: &Path, offset: u64) {
    assert_eq!(offset % (4 * KIB), 0);
    sh(
        "dd",
        [
            "if=/dev/urandom".to_string(),
            format!("of={}", p.display()),
            "bs=4k".into(),
            format!("seek={}", offset / (4 * KIB)),
            "count=1".into(),
            "conv=notrunc".into(),
            "status=none".into(),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// Loop devices
// ---------------------------------------------------------------------------------------

/// A loop device attached with `losetup -f --show`, detached on drop.
pub struct LoopDev {
    pub dev: PathBuf,
}

impl LoopDev {
    /// Attaches `file`; `None` (with a note on stderr) when losetup is unavailable or
    /// not permitted, so callers can skip.
    pub fn attach(file: &Path) -> Option<Self> {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
                Some(LoopDev { dev: dev.into() })
            }
            Ok(o) => {
                eprintln!(
                    "SKIPPED: losetup -f --show {} failed: {}",
                    file.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run losetup: {e}");
                None
            }
        }
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        for _ in 0..20 {
            match Command::new("losetup").arg("-d").arg(&self.dev).status() {
                Ok(s) if s.success() => return,
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        eprintln!("warning: could not detach {}", self.dev.display());
    }
}
