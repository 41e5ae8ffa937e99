//! A repository on object storage (S3 and compatible stores, GCS, Azure) through
//! `object_store`.
//!
//! Keys mirror the local layout under the URL's prefix (`<prefix>/config`,
//! `<prefix>/data/<xx>/<name>`, ...). Object stores make every PUT atomic, so a reader
//! never sees half an object. Immutable objects are written create-only
//! (`PutMode::Create`) where the store supports it and overwritten (with the same bytes,
//! since names are content hashes) where it does not. Objects larger than
//! [`MULTIPART_THRESHOLD`] go up in parts. `object_store` retries throttling, server
//! errors and refused connections with exponential backoff; on top of that every call is
//! retried a few times as a whole, which also covers a connection dropped in the middle
//! of a body. No message carries the store's credentials: they are redacted from every
//! error text.

use super::{is_object_name, Backend, FileKind, RequestCounters};
use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, GetOptions, GetRange, ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutMode,
    PutOptions, PutPayload, RetryConfig,
};
use std::io::{self, ErrorKind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Objects at least this large are uploaded in parts. Packs (16 MiB by default) stay
/// below it, so each costs one PUT.
pub const MULTIPART_THRESHOLD: usize = 64 << 20;
/// The size of one part of a multipart upload.
pub const PART_SIZE: usize = 16 << 20;
/// Parts of one upload sent at once.
const PARTS_IN_FLIGHT: usize = 4;
/// Attempts of one whole call (each of which `object_store` retries internally too).
const ATTEMPTS: u32 = 5;
/// Time allowed for one request, body included: a 16 MiB pack must get through a slow
/// uplink (the client's default of 30 s needs ~18 Mbit/s with 4 uploads in flight).
const REQUEST_TIMEOUT: &str = "600s";
/// Objects a backup keeps in flight to a remote store.
const UPLOADS_IN_FLIGHT: usize = 4;
/// Ranged reads a restore keeps in flight from a remote store.
const READS_IN_FLIGHT: usize = 8;

/// Why an object-store URL could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ObjectBackendError {
    /// The text is not a URL.
    #[error("{0:?} is not a valid repository URL: {1}")]
    InvalidUrl(String, String),
    /// A scheme vmvault has no backend for.
    #[error("unsupported repository URL scheme {0:?} (supported: a directory path, file://, s3://, gs://, az://)")]
    UnsupportedScheme(String),
    /// The store's client could not be configured (missing region, bad credentials
    /// format, ...).
    #[error("cannot configure object storage for {location}: {message}")]
    Config {
        /// The URL without credentials.
        location: String,
        /// What the client library said, credentials removed.
        message: String,
    },
    /// The async runtime could not start.
    #[error("cannot start the I/O runtime: {0}")]
    Runtime(String),
}

/// A repository in an object store.
pub struct ObjectBackend {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    location: String,
    runtime: tokio::runtime::Runtime,
    counters: RequestCounters,
    /// Set once the store has answered that it does not support create-only writes.
    no_conditional_put: AtomicBool,
    secrets: Vec<String>,
}

/// Environment variables whose values must never appear in a message.
const SECRET_VARS: &[&str] = &[
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
];

fn secrets_from_env() -> Vec<String> {
    SECRET_VARS
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .filter(|s| s.len() >= 4)
        .collect()
}

/// Removes user information (`user:password@`) from a URL, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string().trim_end_matches('/').to_string()
        }
        Err(_) => url.to_string(),
    }
}

fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 6,
        retry_timeout: Duration::from_secs(120),
    }
}

impl ObjectBackend {
    /// Opens the store a URL names (`s3://bucket/prefix`, `gs://...`, `az://...`),
    /// configured from the environment as each client's `from_env` reads it (for S3:
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
    /// `AWS_ALLOW_HTTP`, ...).
    pub fn from_url(url_text: &str) -> Result<Self, ObjectBackendError> {
        let location = redact_url(url_text);
        // HTTPS through rustls needs a process-wide crypto provider; installing it twice
        // is harmless (the second attempt reports the first and is ignored).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = url::Url::parse(url_text)
            .map_err(|e| ObjectBackendError::InvalidUrl(location.clone(), e.to_string()))?;
        let (scheme, path) = ObjectStoreScheme::parse(&url)
            .map_err(|_| ObjectBackendError::UnsupportedScheme(url.scheme().to_string()))?;
        let secrets = secrets_from_env();
        let config_err = |e: object_store::Error| ObjectBackendError::Config {
            location: location.clone(),
            message: redact(&error_chain(&e), &secrets),
        };
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::AmazonS3 => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url.as_str())
                    .with_config(
                        object_store::aws::AmazonS3ConfigKey::Client(
                            object_store::ClientConfigKey::Timeout,
                        ),
                        REQUEST_TIMEOUT,
                    )
                    .with_retry(retry_config())
                    .build()
                    .map_err(config_err)?,
            ),
            ObjectStoreScheme::GoogleCloudStorage => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url.as_str())
                    .with_config(
                        object_store::gcp::GoogleConfigKey::Client(
                            object_store::ClientConfigKey::Timeout,
                        ),
                        REQUEST_TIMEOUT,
                    )
                    .with_retry(retry_config())
                    .build()
                    .map_err(config_err)?,
            ),
            ObjectStoreScheme::MicrosoftAzure => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url.as_str())
                    .with_config(
                        object_store::azure::AzureConfigKey::Client(
                            object_store::ClientConfigKey::Timeout,
                        ),
                        REQUEST_TIMEOUT,
                    )
                    .with_retry(retry_config())
                    .build()
                    .map_err(config_err)?,
            ),
            _ => {
                return Err(ObjectBackendError::UnsupportedScheme(
                    url.scheme().to_string(),
                ))
            }
        };
        let mut backend = Self::with_store(store, path.as_ref(), location)?;
        backend.secrets = secrets;
        Ok(backend)
    }

    /// A backend over any store, with keys under `prefix`. `location` is what messages
    /// call it.
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        location: String,
    ) -> Result<Self, ObjectBackendError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vmvault-io")
            .enable_all()
            .build()
            .map_err(|e| ObjectBackendError::Runtime(e.to_string()))?;
        Ok(ObjectBackend {
            store,
            prefix: StorePath::from(prefix.trim_matches('/')),
            location,
            runtime,
            counters: RequestCounters::default(),
            no_conditional_put: AtomicBool::new(false),
            secrets: Vec::new(),
        })
    }

    fn dir(&self, kind: FileKind) -> StorePath {
        let sub = match kind {
            FileKind::Config => return self.prefix.clone(),
            FileKind::Key => "keys",
            FileKind::Pack => "data",
            FileKind::Index => "index",
            FileKind::Snapshot => "snapshots",
            FileKind::Lock => "locks",
        };
        self.prefix.clone().join(sub)
    }

    fn key(&self, kind: FileKind, name: &str) -> io::Result<StorePath> {
        if kind == FileKind::Config {
            return Ok(self.prefix.clone().join("config"));
        }
        if !is_object_name(name) {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("invalid object name {name:?}"),
            ));
        }
        let dir = self.dir(kind);
        Ok(if kind == FileKind::Pack {
            dir.join(&name[..2]).join(name)
        } else {
            dir.join(name)
        })
    }

    fn io_error(&self, e: object_store::Error) -> io::Error {
        let kind = match &e {
            object_store::Error::NotFound { .. } => ErrorKind::NotFound,
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => ErrorKind::AlreadyExists,
            object_store::Error::NotImplemented { .. }
            | object_store::Error::NotSupported { .. } => ErrorKind::Unsupported,
            // Not worth retrying: the answer will not change.
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => ErrorKind::PermissionDenied,
            _ => ErrorKind::Other,
        };
        io::Error::new(kind, redact(&error_chain(&e), &self.secrets))
    }

    /// Runs `op` until it succeeds, fails for good, or [`ATTEMPTS`] are spent.
    fn with_retries<T>(&self, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        let mut delay = Duration::from_millis(250);
        let mut attempt = 1;
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(e) if attempt < ATTEMPTS && is_transient(&e) => {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(4));
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn put_once(&self, key: &StorePath, data: &bytes::Bytes, create_only: bool) -> io::Result<()> {
        if data.len() >= MULTIPART_THRESHOLD {
            return self.put_multipart(key, data);
        }
        // A cheap clone: the payload shares the caller's buffer.
        let payload = PutPayload::from(data.clone());
        let mode = if create_only && !self.no_conditional_put.load(Ordering::Relaxed) {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        let opts = PutOptions {
            mode: mode.clone(),
            ..Default::default()
        };
        self.counters.put(1, data.len() as u64);
        match self
            .runtime
            .block_on(self.store.put_opts(key, payload, opts))
        {
            Ok(_) => Ok(()),
            Err(
                object_store::Error::NotImplemented { .. }
                | object_store::Error::NotSupported { .. },
            ) if matches!(mode, PutMode::Create) => {
                // The store cannot write create-only; names are content hashes, so an
                // overwrite stores the same bytes.
                self.no_conditional_put.store(true, Ordering::Relaxed);
                self.put_once(key, data, false)
            }
            Err(e) => Err(self.io_error(e)),
        }
    }

    fn put_multipart(&self, key: &StorePath, data: &[u8]) -> io::Result<()> {
        self.runtime.block_on(async {
            let mut upload = self
                .store
                .put_multipart(key)
                .await
                .map_err(|e| self.io_error(e))?;
            self.counters.put(1, 0);
            let mut result = Ok(());
            for group in data.chunks(PART_SIZE * PARTS_IN_FLIGHT) {
                let parts: Vec<_> = group
                    .chunks(PART_SIZE)
                    .map(|p| {
                        self.counters.put(1, p.len() as u64);
                        upload.put_part(PutPayload::from(bytes::Bytes::copy_from_slice(p)))
                    })
                    .collect();
                if let Err(e) = futures::future::try_join_all(parts).await {
                    result = Err(self.io_error(e));
                    break;
                }
            }
            match result {
                Ok(()) => {
                    self.counters.put(1, 0);
                    upload.complete().await.map_err(|e| self.io_error(e))?;
                    Ok(())
                }
                Err(e) => {
                    let _ = upload.abort().await;
                    Err(e)
                }
            }
        })
    }

    /// Stores `data` under `kind`/`name` with the retry and create-only rules of the
    /// module documentation.
    fn put_bytes(&self, kind: FileKind, name: &str, data: &bytes::Bytes) -> io::Result<()> {
        let key = self.key(kind, name)?;
        let mut first_attempt = true;
        let result = self.with_retries(|| {
            let r = self.put_once(&key, data, true);
            // After a retry, "already exists" may be our own earlier attempt.
            let mine = !first_attempt;
            first_attempt = false;
            match r {
                Err(e) if e.kind() == ErrorKind::AlreadyExists && mine => {
                    if kind == FileKind::Config {
                        match self.get_once(&key) {
                            Ok(existing) if existing[..] == data[..] => Ok(()),
                            _ => Err(e),
                        }
                    } else {
                        Ok(())
                    }
                }
                other => other,
            }
        });
        match result {
            // Content-addressed: the same name holds the same bytes.
            Err(e) if e.kind() == ErrorKind::AlreadyExists && kind != FileKind::Config => Ok(()),
            other => other,
        }
    }

    fn get_once(&self, key: &StorePath) -> io::Result<Vec<u8>> {
        let bytes = self.runtime.block_on(async {
            let r = self.store.get(key).await?;
            r.bytes().await
        });
        let bytes = bytes.map_err(|e| self.io_error(e))?;
        self.counters.get(bytes.len() as u64);
        Ok(bytes.to_vec())
    }
}

fn is_transient(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        ErrorKind::NotFound
            | ErrorKind::AlreadyExists
            | ErrorKind::Unsupported
            | ErrorKind::InvalidInput
            | ErrorKind::InvalidData
            | ErrorKind::UnexpectedEof
            | ErrorKind::PermissionDenied
    )
}

/// An error's message followed by those of its causes that add something (the cause of
/// "error sending request" is where a TLS or DNS problem is named).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// `text` with every secret replaced by `***`.
fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        out = out.replace(s.as_str(), "***");
    }
    out
}

impl Backend for ObjectBackend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn counters(&self) -> &RequestCounters {
        &self.counters
    }

    fn upload_concurrency(&self) -> usize {
        UPLOADS_IN_FLIGHT
    }

    fn read_concurrency(&self) -> usize {
        READS_IN_FLIGHT
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn create(&self) -> io::Result<()> {
        let prefix = self.prefix.clone();
        let first = self.with_retries(|| {
            self.counters.list(1);
            self.runtime.block_on(async {
                let mut stream = self.store.list(Some(&prefix));
                match stream.next().await {
                    None => Ok(None),
                    Some(Ok(meta)) => Ok(Some(meta.location)),
                    Some(Err(e)) => Err(self.io_error(e)),
                }
            })
        })?;
        match first {
            None => Ok(()),
            Some(p) => Err(io::Error::new(
                ErrorKind::AlreadyExists,
                format!("{} is not empty (it holds {p})", self.location),
            )),
        }
    }

    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> io::Result<()> {
        self.put_bytes(kind, name, &bytes::Bytes::copy_from_slice(data))
    }

    fn put_owned(&self, kind: FileKind, name: &str, data: Vec<u8>) -> io::Result<Vec<u8>> {
        let bytes = bytes::Bytes::from(data);
        self.put_bytes(kind, name, &bytes)?;
        // Once the upload is done nothing else holds the buffer, so it goes back to the
        // caller for reuse (a fresh one if some clone were still alive).
        Ok(bytes.try_into_mut().map(Vec::from).unwrap_or_default())
    }

    fn get(&self, kind: FileKind, name: &str) -> io::Result<Vec<u8>> {
        let key = self.key(kind, name)?;
        self.with_retries(|| self.get_once(&key))
    }

    fn read_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> io::Result<()> {
        let key = self.key(kind, name)?;
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| io::Error::from(ErrorKind::InvalidInput))?;
        let wanted = buf.len();
        // The body is copied straight into `buf` as it arrives (no intermediate buffer).
        self.with_retries(|| {
            let got = self.runtime.block_on(async {
                let opts = GetOptions {
                    range: Some(GetRange::Bounded(offset..end)),
                    ..Default::default()
                };
                let mut stream = self.store.get_opts(&key, opts).await?.into_stream();
                let mut at = 0usize;
                while let Some(piece) = stream.next().await {
                    let piece = piece?;
                    let room = wanted - at;
                    let n = piece.len().min(room);
                    buf[at..at + n].copy_from_slice(&piece[..n]);
                    at += n;
                    if piece.len() > room {
                        at = wanted + 1;
                        break;
                    }
                }
                Ok::<usize, object_store::Error>(at)
            });
            let got = got.map_err(|e| self.io_error(e))?;
            self.counters.get(got.min(wanted) as u64);
            if got != wanted {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("{name}: asked for {wanted} bytes at offset {offset}, got {got}"),
                ));
            }
            Ok(())
        })
    }

    fn list(&self, kind: FileKind) -> io::Result<Vec<(String, u64)>> {
        if kind == FileKind::Config {
            return Ok(Vec::new());
        }
        let dir = self.dir(kind);
        let mut out = self.with_retries(|| {
            self.runtime.block_on(async {
                let mut out = Vec::new();
                let mut stream = self.store.list(Some(&dir));
                while let Some(item) = stream.next().await {
                    let meta = item.map_err(|e| self.io_error(e))?;
                    if let Some(name) = meta.location.filename() {
                        if is_object_name(name) {
                            out.push((name.to_string(), meta.size));
                        }
                    }
                }
                Ok(out)
            })
        })?;
        self.counters.list(out.len() as u64);
        out.sort();
        Ok(out)
    }

    fn remove(&self, kind: FileKind, name: &str) -> io::Result<()> {
        let key = self.key(kind, name)?;
        self.with_retries(|| {
            self.counters.delete();
            match self.runtime.block_on(self.store.delete(&key)) {
                Ok(()) => Ok(()),
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.io_error(e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    const NAME: &str = "00aa000000000000000000000000000000000000000000000000000000000000";

    fn backend() -> ObjectBackend {
        ObjectBackend::with_store(Arc::new(InMemory::new()), "some/prefix", "mem".into()).unwrap()
    }

    #[test]
    fn put_get_list_remove() {
        let b = backend();
        b.create().unwrap();
        b.put(FileKind::Pack, NAME, b"hello").unwrap();
        // Content-addressed: a second put of the same name is a no-op.
        b.put(FileKind::Pack, NAME, b"hello").unwrap();
        assert_eq!(b.get(FileKind::Pack, NAME).unwrap(), b"hello");
        assert_eq!(b.get_range(FileKind::Pack, NAME, 1, 3).unwrap(), b"ell");
        assert!(b.get_range(FileKind::Pack, NAME, 3, 3).is_err());
        assert_eq!(b.list(FileKind::Pack).unwrap(), vec![(NAME.to_string(), 5)]);
        assert!(b.list(FileKind::Index).unwrap().is_empty());
        b.remove(FileKind::Pack, NAME).unwrap();
        b.remove(FileKind::Pack, NAME).unwrap();
        assert_eq!(
            b.get(FileKind::Pack, NAME).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        let c = b.counters().snapshot();
        assert_eq!(c.put, 2);
        assert_eq!(c.bytes_up, 10);
    }

    #[test]
    fn config_is_create_only_and_create_needs_an_empty_prefix() {
        let b = backend();
        b.create().unwrap();
        b.put(FileKind::Config, "", b"one").unwrap();
        let e = b.put(FileKind::Config, "", b"two").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        assert_eq!(b.get(FileKind::Config, "").unwrap(), b"one");
        assert_eq!(b.create().unwrap_err().kind(), ErrorKind::AlreadyExists);
        assert!(b.put(FileKind::Index, "../escape", b"x").is_err());
    }

    #[test]
    fn large_objects_go_up_in_parts() {
        let b = backend();
        let data: Vec<u8> = (0..MULTIPART_THRESHOLD + 5)
            .map(|i| (i % 251) as u8)
            .collect();
        b.put(FileKind::Pack, NAME, &data).unwrap();
        assert_eq!(b.get(FileKind::Pack, NAME).unwrap(), data);
        // Start, five parts, completion.
        assert_eq!(b.counters().snapshot().put, 1 + 5 + 1);
    }

    #[test]
    fn urls_lose_their_credentials_and_secrets_are_redacted() {
        assert_eq!(
            redact_url("s3://AKIA:hunter2@bucket/pre"),
            "s3://bucket/pre"
        );
        assert_eq!(
            redact("denied for key hunter2!", &["hunter2".into()]),
            "denied for key ***!"
        );
        assert!(matches!(
            ObjectBackend::from_url("ftp://x/y"),
            Err(ObjectBackendError::UnsupportedScheme(_))
        ));
    }
}
