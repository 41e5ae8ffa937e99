//! An open repository: backend, master keys and config.

use crate::backend::{Backend, FileKind};
use crate::crypto::{CryptoError, MasterKeys};
use crate::error::{RepoError, Result};
use crate::format::config::Config;
use crate::format::keyfile::{KdfParams, KeyFile};
use crate::format::sealed::{KIND_CONFIG, KIND_SNAPSHOT};
use crate::format::snapshot::Snapshot;
use std::io::ErrorKind;
use std::sync::Arc;
use vmvault_chunker::ChunkerParams;

/// An opened (authenticated) repository. Holding one proves the password was right and
/// the config authentic.
pub struct Repository {
    backend: Arc<dyn Backend>,
    keys: MasterKeys,
    config: Config,
    /// The key file the password opened.
    key_name: String,
}

/// A snapshot with its name (id).
pub type NamedSnapshot = (String, Snapshot);

/// Readable snapshots, oldest first, and the errors of the unreadable ones.
pub type SnapshotListing = (Vec<NamedSnapshot>, Vec<RepoError>);

/// The current time in FORMAT.md's RFC 3339 form.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

/// A new random repository id (32 hex digits).
fn new_repository_id() -> Result<String> {
    let mut id = [0u8; 16];
    crate::crypto::random_bytes(&mut id).map_err(|e| RepoError::Invalid(e.to_string()))?;
    Ok(hex::encode(id))
}

/// This machine's host name.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// `hex(BLAKE3(bytes))`: the name of a stored object.
pub fn object_name(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Maps a backend error for `kind`/`name` to a [`RepoError`], keeping "missing" apart.
pub(crate) fn io_err(kind: FileKind, name: &str, e: std::io::Error) -> RepoError {
    if e.kind() == ErrorKind::NotFound {
        RepoError::NotFound {
            kind,
            name: name.to_string(),
        }
    } else {
        RepoError::Io {
            kind,
            name: name.to_string(),
            source: e,
        }
    }
}

fn crypto_err(kind: FileKind, name: &str, e: CryptoError) -> RepoError {
    RepoError::corrupt(kind, name, e.to_string())
}

pub use crate::format::config::{
    DEFAULT_COMPRESSION_LEVEL, MAX_COMPRESSION_LEVEL, MIN_COMPRESSION_LEVEL,
};

impl Repository {
    /// Creates a new repository at an empty location, with the default zstd level
    /// ([`DEFAULT_COMPRESSION_LEVEL`]), and returns it opened.
    pub fn init(
        backend: Arc<dyn Backend>,
        password: &[u8],
        kdf: KdfParams,
        chunker: ChunkerParams,
    ) -> Result<Self> {
        Self::init_with_level(backend, password, kdf, chunker, DEFAULT_COMPRESSION_LEVEL)
    }

    /// [`Repository::init`] with a zstd level other than the default (FORMAT.md allows
    /// -7..=22; negative levels are zstd's fast modes). The level changes only how hard
    /// new chunks are compressed, never their ids, so deduplication is unaffected.
    pub fn init_with_level(
        backend: Arc<dyn Backend>,
        password: &[u8],
        kdf: KdfParams,
        chunker: ChunkerParams,
        level: i32,
    ) -> Result<Self> {
        chunker
            .validate()
            .map_err(|e| RepoError::Invalid(e.to_string()))?;
        if !(MIN_COMPRESSION_LEVEL..=MAX_COMPRESSION_LEVEL).contains(&level) {
            return Err(RepoError::Invalid(format!(
                "compression level {level} is outside {MIN_COMPRESSION_LEVEL}..={MAX_COMPRESSION_LEVEL}"
            )));
        }
        let keys = MasterKeys::generate().map_err(|e| RepoError::Invalid(e.to_string()))?;
        let mut config = Config::new_current(new_repository_id()?, now_rfc3339(), &chunker);
        config.compression.level = level;
        Self::create(backend, password, kdf, keys, config)
    }

    /// Creates a mirror of `source` at an empty location: the same master keys, chunker
    /// and pack parameters (so packs copy verbatim and chunk ids agree), a new repository
    /// id, and a key file for `password`.
    pub fn init_mirror(
        backend: Arc<dyn Backend>,
        password: &[u8],
        kdf: KdfParams,
        source: &Repository,
    ) -> Result<Self> {
        let config = Config {
            id: new_repository_id()?,
            created: now_rfc3339(),
            ..source.config.clone()
        };
        Self::create(backend, password, kdf, source.keys.clone(), config)
    }

    fn create(
        backend: Arc<dyn Backend>,
        password: &[u8],
        kdf: KdfParams,
        keys: MasterKeys,
        config: Config,
    ) -> Result<Self> {
        if backend.get(FileKind::Config, "").is_ok() {
            return Err(RepoError::AlreadyExists(backend.location()));
        }
        backend.create().map_err(|e| {
            if e.kind() == ErrorKind::AlreadyExists {
                RepoError::AlreadyExists(backend.location())
            } else {
                io_err(FileKind::Config, "file", e)
            }
        })?;
        let key_file = keys
            .wrap(password, kdf, now_rfc3339(), hostname())
            .map_err(|e| RepoError::Invalid(e.to_string()))?;
        let key_bytes = key_file.encode();
        let key_name = object_name(&key_bytes);
        backend
            .put(FileKind::Key, &key_name, &key_bytes)
            .map_err(|e| io_err(FileKind::Key, &key_name, e))?;
        let sealed = keys
            .seal(KIND_CONFIG, &config.encode(), false)
            .map_err(|e| RepoError::Invalid(e.to_string()))?;
        backend
            .put(FileKind::Config, "", &sealed)
            .map_err(|e| io_err(FileKind::Config, "file", e))?;
        Ok(Repository {
            backend,
            keys,
            config,
            key_name,
        })
    }

    /// Opens a repository with a password: tries every key file, then authenticates and
    /// validates the config.
    pub fn open(backend: Arc<dyn Backend>, password: &[u8]) -> Result<Self> {
        let config_bytes = match backend.get(FileKind::Config, "") {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // Key files without a config: a damaged repository, not a missing one.
                let has_keys = backend.list(FileKind::Key).is_ok_and(|k| !k.is_empty());
                return Err(if has_keys {
                    RepoError::NotFound {
                        kind: FileKind::Config,
                        name: "file".into(),
                    }
                } else {
                    RepoError::NoRepository(backend.location())
                });
            }
            Err(e) => return Err(io_err(FileKind::Config, "file", e)),
        };
        let key_names = backend
            .list(FileKind::Key)
            .map_err(|e| io_err(FileKind::Key, "", e))?;
        if key_names.is_empty() {
            return Err(RepoError::NotFound {
                kind: FileKind::Key,
                name: "(any: keys/ is empty)".into(),
            });
        }
        let mut damaged = Vec::new();
        let mut keys = None;
        for (name, _) in &key_names {
            let bytes = backend
                .get(FileKind::Key, name)
                .map_err(|e| io_err(FileKind::Key, name, e))?;
            if object_name(&bytes) != *name {
                damaged.push(format!("{name} (content does not match its name)"));
                continue;
            }
            let kf = match KeyFile::decode(&bytes) {
                Ok(kf) => kf,
                Err(e) => {
                    damaged.push(format!("{name} ({e})"));
                    continue;
                }
            };
            match MasterKeys::unwrap(&kf, password) {
                Ok(k) => {
                    keys = Some((k, name.clone()));
                    break;
                }
                Err(CryptoError::Authentication) => {}
                Err(e) => damaged.push(format!("{name} ({e})")),
            }
        }
        let Some((keys, key_name)) = keys else {
            if damaged.len() == key_names.len() {
                return Err(RepoError::corrupt(
                    FileKind::Key,
                    &damaged.join(", "),
                    "no usable key file",
                ));
            }
            return Err(RepoError::WrongPassword {
                tried: key_names.len(),
            });
        };
        let plain = keys
            .open_sealed(KIND_CONFIG, &config_bytes)
            .map_err(|e| crypto_err(FileKind::Config, "file", e))?;
        let config = Config::decode(&plain)
            .map_err(|e| RepoError::corrupt(FileKind::Config, "file", e.to_string()))?;
        Ok(Repository {
            backend,
            keys,
            config,
            key_name,
        })
    }

    /// The storage backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The master keys.
    pub fn keys(&self) -> &MasterKeys {
        &self.keys
    }

    /// The name of the key file the password opened.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// Every key file, decoded (damaged ones are reported as errors beside the good).
    pub fn list_keys(&self) -> Result<Vec<(String, std::result::Result<KeyFile, String>)>> {
        let names = self
            .backend
            .list(FileKind::Key)
            .map_err(|e| io_err(FileKind::Key, "", e))?;
        let mut out = Vec::new();
        for (name, _) in names {
            let decoded = self
                .backend
                .get(FileKind::Key, &name)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    if object_name(&b) != name {
                        return Err("content does not match its name".to_string());
                    }
                    KeyFile::decode(&b).map_err(|e| e.to_string())
                });
            out.push((name, decoded));
        }
        Ok(out)
    }

    /// Adds a key file wrapping the master keys under `password`; returns its name.
    /// Only the new key file is written.
    pub fn add_key(&self, password: &[u8], kdf: KdfParams) -> Result<String> {
        let key_file = self
            .keys
            .wrap(password, kdf, now_rfc3339(), hostname())
            .map_err(|e| RepoError::Invalid(e.to_string()))?;
        let bytes = key_file.encode();
        let name = object_name(&bytes);
        self.backend
            .put(FileKind::Key, &name, &bytes)
            .map_err(|e| io_err(FileKind::Key, &name, e))?;
        Ok(name)
    }

    /// Removes a key file, which must not be the last one.
    pub fn remove_key(&self, name: &str) -> Result<()> {
        let names = self
            .backend
            .list(FileKind::Key)
            .map_err(|e| io_err(FileKind::Key, "", e))?;
        if !names.iter().any(|(n, _)| n == name) {
            return Err(RepoError::NotFound {
                kind: FileKind::Key,
                name: name.to_string(),
            });
        }
        if names.len() < 2 {
            return Err(RepoError::Invalid(
                "refusing to remove the only key file: the repository could never be opened again (add another key first)".into(),
            ));
        }
        self.backend
            .remove(FileKind::Key, name)
            .map_err(|e| io_err(FileKind::Key, name, e))
    }

    /// The validated config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Seals and stores an object of `kind`; returns its name.
    pub(crate) fn put_sealed(&self, kind: FileKind, kind_byte: u8, plain: &[u8]) -> Result<String> {
        let sealed = self
            .keys
            .seal(kind_byte, plain, true)
            .map_err(|e| RepoError::Invalid(e.to_string()))?;
        let name = object_name(&sealed);
        self.backend
            .put(kind, &name, &sealed)
            .map_err(|e| io_err(kind, &name, e))?;
        Ok(name)
    }

    /// Fetches, verifies the name of, and decrypts a sealed object.
    pub(crate) fn get_sealed(&self, kind: FileKind, kind_byte: u8, name: &str) -> Result<Vec<u8>> {
        let bytes = self
            .backend
            .get(kind, name)
            .map_err(|e| io_err(kind, name, e))?;
        if object_name(&bytes) != name {
            return Err(RepoError::corrupt(
                kind,
                name,
                "content does not match its name",
            ));
        }
        self.keys
            .open_sealed(kind_byte, &bytes)
            .map_err(|e| crypto_err(kind, name, e))
    }

    /// Loads one snapshot by full name.
    pub fn load_snapshot(&self, name: &str) -> Result<Snapshot> {
        let plain = self.get_sealed(FileKind::Snapshot, KIND_SNAPSHOT, name)?;
        Snapshot::decode(&plain)
            .map_err(|e| RepoError::corrupt(FileKind::Snapshot, name, e.to_string()))
    }

    /// Stores a snapshot: the commit point of a backup.
    pub(crate) fn put_snapshot(&self, s: &Snapshot) -> Result<String> {
        self.put_sealed(FileKind::Snapshot, KIND_SNAPSHOT, &s.encode())
    }

    /// All snapshots, oldest first. Damaged snapshots are returned as errors beside the
    /// good ones so one bad file does not hide the rest.
    pub fn list_snapshots(&self) -> Result<SnapshotListing> {
        let names = self
            .backend
            .list(FileKind::Snapshot)
            .map_err(|e| io_err(FileKind::Snapshot, "", e))?;
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for (name, _) in names {
            match self.load_snapshot(&name) {
                Ok(s) => good.push((name, s)),
                Err(e) => bad.push(e),
            }
        }
        good.sort_by(|a, b| a.1.time.cmp(&b.1.time).then_with(|| a.0.cmp(&b.0)));
        Ok((good, bad))
    }

    /// The newest readable snapshot (of `vm` if given), or `None` when there is none.
    pub fn latest_snapshot(&self, vm: Option<&str>) -> Result<Option<NamedSnapshot>> {
        let (snaps, _) = self.list_snapshots()?;
        Ok(snaps
            .into_iter()
            .rfind(|(_, s)| vm.is_none_or(|v| s.vm == v)))
    }

    /// Resolves a user's snapshot reference: `latest` (newest, of `vm` if given) or a
    /// unique prefix of a snapshot name.
    pub fn resolve_snapshot(&self, spec: &str, vm: Option<&str>) -> Result<NamedSnapshot> {
        if spec == "latest" {
            return self.latest_snapshot(vm)?.ok_or_else(|| {
                RepoError::SnapshotSelection(match vm {
                    Some(v) => format!("no snapshot of VM {v:?}"),
                    None => "the repository has no snapshots".into(),
                })
            });
        }
        if spec.is_empty() || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RepoError::SnapshotSelection(format!(
                "{spec:?} is not a snapshot id (hex prefix) or 'latest'"
            )));
        }
        let spec = spec.to_ascii_lowercase();
        // Match against the file names, so that a damaged snapshot is reported as
        // damaged rather than as missing.
        let names = self
            .backend
            .list(FileKind::Snapshot)
            .map_err(|e| io_err(FileKind::Snapshot, "", e))?;
        let hits: Vec<String> = names
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.starts_with(&spec))
            .collect();
        let name = match hits.len() {
            1 => &hits[0],
            0 => {
                return Err(RepoError::SnapshotSelection(format!(
                    "no snapshot matches {spec:?}"
                )))
            }
            n => {
                return Err(RepoError::SnapshotSelection(format!(
                    "{spec:?} matches {n} snapshots; give more digits"
                )))
            }
        };
        let snap = self.load_snapshot(name)?;
        if let Some(v) = vm.filter(|v| *v != snap.vm) {
            return Err(RepoError::SnapshotSelection(format!(
                "snapshot {} belongs to VM {:?}, not {v:?}",
                &name[..12],
                snap.vm
            )));
        }
        Ok((name.clone(), snap))
    }
}
