//! A real S3-compatible server for the object-storage tests, and a proxy that injects
//! faults between vmvault and it.
//!
//! The server is `s3s-fs` (installed by `.ci/run` with `cargo install s3s-fs --features
//! binary`): it keeps objects as plain files under a root directory, so it can be killed
//! and restarted without losing what it stored, and it pages listings at 1000 keys like
//! S3. Each test starts its own on a free port of 127.0.0.1; a bucket is a directory.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The test server's access key.
pub const ACCESS_KEY: &str = "vmvault-test-access";
/// The test server's secret key (tests assert it never appears in output).
pub const SECRET_KEY: &str = "vmvault-test-secret-Zq81x";

/// The `s3s-fs` binary: `$VMVAULT_S3S_FS`, else `s3s-fs` on PATH or in ~/.cargo/bin.
pub fn s3s_fs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VMVAULT_S3S_FS").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cargo/bin"));
    }
    dirs.push("/usr/local/bin".into());
    for d in dirs {
        let p = d.join("s3s-fs");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "s3s-fs not found: the object-storage tests need it (.ci/run installs it: \
         cargo install s3s-fs --version 0.14.1 --features binary --locked)"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_listening(port: u16, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A running `s3s-fs` on 127.0.0.1, killed when dropped (unless it is the shared one
/// `.ci/run` started).
pub struct S3Server {
    child: Option<Child>,
    shared: bool,
    /// Where it keeps buckets (one directory each) and objects (files).
    pub root: PathBuf,
    /// Its port.
    pub port: u16,
}

impl S3Server {
    /// Starts a server keeping its data under `root` (created if needed).
    pub fn start(root: &Path) -> Self {
        std::fs::create_dir_all(root).expect("server root");
        let mut s = S3Server {
            child: None,
            shared: false,
            root: root.to_path_buf(),
            port: free_port(),
        };
        s.spawn();
        s
    }

    /// The server `.ci/run` started for the whole suite (`VMVAULT_TEST_S3_PORT` and
    /// `VMVAULT_TEST_S3_ROOT`), or else a private one under `root`. Tests that kill the
    /// server use [`S3Server::start`] instead.
    pub fn shared_or_start(root: &Path) -> Self {
        let port = std::env::var("VMVAULT_TEST_S3_PORT")
            .ok()
            .and_then(|p| p.parse::<u16>().ok());
        match (port, std::env::var_os("VMVAULT_TEST_S3_ROOT")) {
            (Some(port), Some(shared_root)) => {
                assert!(
                    wait_listening(port, Duration::from_secs(5)),
                    "the shared S3 server (VMVAULT_TEST_S3_PORT={port}) is not listening"
                );
                S3Server {
                    child: None,
                    shared: true,
                    root: PathBuf::from(shared_root),
                    port,
                }
            }
            _ => Self::start(root),
        }
    }

    /// A bucket name unique to this process and call, for tests sharing a server.
    pub fn unique_bucket(&self, stem: &str) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{stem}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.bucket(&name)
    }

    fn spawn(&mut self) {
        let child = Command::new(s3s_fs_bin())
            .args(["--host", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        assert!(
            wait_listening(self.port, Duration::from_secs(20)),
            "s3s-fs did not start listening on port {}",
            self.port
        );
    }

    /// `kill -9`s the server.
    pub fn kill(&mut self) {
        assert!(!self.shared, "tests must not kill the shared server");
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Creates a bucket and returns its name.
    pub fn bucket(&self, name: &str) -> String {
        std::fs::create_dir_all(self.root.join(name)).expect("bucket dir");
        name.to_string()
    }

    /// The server's endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment vmvault needs to reach this server (or a proxy in front of it on
    /// `port`).
    pub fn env_for_port(port: u16) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The environment vmvault needs to reach this server.
    pub fn env(&self) -> Vec<(String, String)> {
        Self::env_for_port(self.port)
    }

    /// Files the server holds under `bucket/prefix`, recursively (its objects).
    pub fn objects(&self, bucket: &str, prefix: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        fn walk(d: &Path, out: &mut Vec<PathBuf>) {
            let Ok(rd) = std::fs::read_dir(d) else { return };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
        walk(&self.root.join(bucket).join(prefix), &mut out);
        out.sort();
        out
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // The shared server belongs to .ci/run, which stops it.
        if !self.shared {
            self.kill();
        }
    }
}

/// Which fault a new connection gets, by its number: `n % period`.
#[derive(Clone, Copy, Debug)]
pub struct FaultPlan {
    /// Connections are numbered from 0; faults repeat with this period.
    pub period: u64,
    /// The connection number (mod period) answered `500 Internal Server Error`.
    pub error_500: u64,
    /// The number whose connection is cut after a few hundred KiB either way.
    pub drop: u64,
    /// The number whose every read from the server is delayed.
    pub slow: u64,
}

/// How many faults a proxy injected.
#[derive(Default, Debug)]
pub struct FaultCounts {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// 500 responses sent.
    pub errors: AtomicU64,
    /// Connections cut.
    pub drops: AtomicU64,
    /// Slow connections.
    pub slow: AtomicU64,
}

/// A TCP proxy on 127.0.0.1 in front of an upstream port, injecting faults per
/// [`FaultPlan`]. Stops when dropped.
pub struct FaultProxy {
    /// The proxy's port (point vmvault here).
    pub port: u16,
    /// What it did so far.
    pub counts: Arc<FaultCounts>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (a port on 127.0.0.1).
    pub fn start(upstream: u16, plan: FaultPlan) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listener");
        let port = listener.local_addr().expect("proxy addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let counts = Arc::new(FaultCounts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (counts.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        c.connections.fetch_add(1, Ordering::Relaxed);
                        let fault = n % plan.period;
                        n += 1;
                        let c = c.clone();
                        std::thread::spawn(move || serve(client, upstream, fault, plan, &c));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FaultProxy { port, counts, stop }
    }

    /// (500s, drops, slow connections) injected so far.
    pub fn injected(&self) -> (u64, u64, u64) {
        (
            self.counts.errors.load(Ordering::Relaxed),
            self.counts.drops.load(Ordering::Relaxed),
            self.counts.slow.load(Ordering::Relaxed),
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut client: TcpStream, upstream: u16, fault: u64, plan: FaultPlan, c: &FaultCounts) {
    if fault == plan.error_500 {
        c.errors.fetch_add(1, Ordering::Relaxed);
        // Read the request head, answer 500 and close.
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
            match client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => head.extend_from_slice(&buf[..k]),
            }
        }
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code><Message>injected by the test proxy</Message></Error>";
        let _ = write!(
            client,
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (limit, delay) = if fault == plan.drop {
        c.drops.fetch_add(1, Ordering::Relaxed);
        (Some(300 * 1024u64), None)
    } else if fault == plan.slow {
        c.slow.fetch_add(1, Ordering::Relaxed);
        (None, Some(Duration::from_millis(400)))
    } else {
        (None, None)
    };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || pump(c2, s2, limit, None));
    pump(server, client, limit, delay);
    let _ = up.join();
}

/// Copies `from` to `to` until EOF, an error, or `limit` bytes (then cuts both ways).
/// With `delay`, data that arrives after a pause (the start of a response) is held back
/// that long: every response starts late.
fn pump(mut from: TcpStream, mut to: TcpStream, limit: Option<u64>, delay: Option<Duration>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    let mut last = Instant::now() - Duration::from_secs(1);
    loop {
        let k = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => k,
        };
        if let Some(d) = delay {
            if last.elapsed() > Duration::from_millis(50) {
                std::thread::sleep(d);
            }
            last = Instant::now();
        }
        if let Some(l) = limit {
            if sent + k as u64 > l {
                let _ = to.write_all(&buf[..(l - sent) as usize]);
                break;
            }
        }
        if to.write_all(&buf[..k]).is_err() {
            break;
        }
        sent += k as u64;
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
