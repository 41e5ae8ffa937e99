//! Snapshots (FORMAT.md section 9): sealed JSON.

use super::DecodeError;
use serde::{Deserialize, Serialize};

/// One disk of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotDisk {
    /// Unique within the snapshot; no '/'.
    pub name: String,
    /// Logical size in bytes.
    pub size: u64,
    /// Where it was read from.
    pub source: String,
    /// Source format ("raw", "block device", "stream", ...).
    pub source_format: String,
    /// Hex chunk id of the manifest root.
    pub manifest: String,
    /// Bytes the source reported allocated (read).
    pub allocated_bytes: u64,
    /// Bytes found to be zero runs.
    pub zero_bytes: u64,
    /// Number of data chunks in the manifest.
    pub data_chunks: u64,
}

/// A configuration file stored with a snapshot (version 2): stored like a disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// File name: unique among the configs, non-empty, no '/', NUL or leading '.'.
    pub name: String,
    /// Length in bytes.
    pub size: u64,
    /// Hex chunk id of the manifest root of its bytes.
    pub manifest: String,
}

/// One guest volume found on a disk at backup time (version 3), with its file catalog
/// when its file system was walked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotCatalog {
    /// The disk's name (one of the snapshot's disks).
    pub disk: String,
    /// `p1`, `p5`, `fs`, `lvm/VG/LV`: unique per disk.
    pub volume: String,
    /// What the volume holds: "ext4", "ntfs", "vfat", "swap", "lvm2-pv", "unknown", ...
    pub content: String,
    /// Byte offset on the disk (none for LVM logical volumes).
    pub start: Option<u64>,
    /// Size in bytes.
    pub size: u64,
    /// The partition type or other description.
    pub description: String,
    /// Records in the catalog (0 without one).
    pub entries: u64,
    /// Length of the catalog stream in bytes (0 without one).
    pub catalog_size: u64,
    /// Hex chunk id of the manifest root of the catalog stream, if one was made.
    pub manifest: Option<String>,
    /// Why there is no catalog, or what the walk could not read.
    pub note: Option<String>,
}

impl SnapshotCatalog {
    /// The catalog stream seen as a disk (it is stored exactly like one), if there is one.
    pub fn as_disk(&self) -> Option<SnapshotDisk> {
        Some(SnapshotDisk {
            name: format!("{}/{}", self.disk, self.volume),
            size: self.catalog_size,
            source: String::new(),
            source_format: "catalog".into(),
            manifest: self.manifest.clone()?,
            allocated_bytes: self.catalog_size,
            zero_bytes: 0,
            data_chunks: 0,
        })
    }
}

/// A snapshot: one backup of one VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    /// Format version: 3 when `catalogs` is not empty, else 2 when `configs` is not
    /// empty, else 1.
    pub version: u32,
    /// VM name.
    pub vm: String,
    /// Host that ran the backup.
    pub host: String,
    /// RFC 3339 time of the backup's start.
    pub time: String,
    /// User tags.
    pub tags: Vec<String>,
    /// Previous snapshot of the VM, if any.
    pub parent: Option<String>,
    /// Program that wrote it.
    pub program: String,
    /// The VM's disks.
    pub disks: Vec<SnapshotDisk>,
    /// The VM's configuration files (version 2 only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<SnapshotConfig>,
    /// The guest volumes and their file catalogs (version 3 only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub catalogs: Vec<SnapshotCatalog>,
}

impl SnapshotConfig {
    /// The config file seen as a disk (its bytes are stored exactly like one), for the
    /// restore functions.
    pub fn as_disk(&self) -> SnapshotDisk {
        SnapshotDisk {
            name: self.name.clone(),
            size: self.size,
            source: String::new(),
            source_format: "config".into(),
            manifest: self.manifest.clone(),
            allocated_bytes: self.size,
            zero_bytes: 0,
            data_chunks: 0,
        }
    }
}

/// Whether `name` is acceptable as a config file name (FORMAT.md section 9).
pub fn valid_config_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\0'])
}

/// Whether `name` is acceptable as a volume name: `p<N>`, `fs`, or `lvm/<VG>/<LV>`.
pub fn valid_volume_name(name: &str) -> bool {
    if name == "fs" {
        return true;
    }
    if let Some(n) = name.strip_prefix('p') {
        return !n.is_empty() && n.len() <= 10 && n.bytes().all(|b| b.is_ascii_digit());
    }
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() == 3
        && parts[0] == "lvm"
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && *p != "." && *p != ".." && !p.contains('\0'))
}

fn valid_id(hex_id: &str) -> bool {
    hex::decode(hex_id).ok().is_some_and(|b| b.len() == 32)
}

impl Snapshot {
    /// Parses and checks a decrypted snapshot.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let s: Snapshot = serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::new(format!("snapshot is not valid JSON: {e}")))?;
        if !(1..=3).contains(&s.version) {
            return Err(DecodeError::new(format!(
                "unsupported snapshot version {}",
                s.version
            )));
        }
        humantime::parse_rfc3339(&s.time)
            .map_err(|e| DecodeError::new(format!("bad snapshot time {:?}: {e}", s.time)))?;
        let mut names = std::collections::HashSet::new();
        for d in &s.disks {
            if d.name.is_empty() || d.name.contains('/') || !names.insert(d.name.as_str()) {
                return Err(DecodeError::new(format!(
                    "bad or duplicate disk name {:?}",
                    d.name
                )));
            }
            if !valid_id(&d.manifest) {
                return Err(DecodeError::new(format!(
                    "disk {} has a malformed manifest id",
                    d.name
                )));
            }
        }
        if !s.configs.is_empty() && s.version < 2 {
            return Err(DecodeError::new(
                "snapshot version 1 lists config files (only version 2 may)".to_string(),
            ));
        }
        let mut config_names = std::collections::HashSet::new();
        for c in &s.configs {
            if !valid_config_name(&c.name) || !config_names.insert(c.name.as_str()) {
                return Err(DecodeError::new(format!(
                    "bad or duplicate config file name {:?}",
                    c.name
                )));
            }
            if !valid_id(&c.manifest) {
                return Err(DecodeError::new(format!(
                    "config file {} has a malformed manifest id",
                    c.name
                )));
            }
        }
        if !s.catalogs.is_empty() && s.version < 3 {
            return Err(DecodeError::new(format!(
                "snapshot version {} lists catalogs (only version 3 may)",
                s.version
            )));
        }
        let mut volumes = std::collections::HashSet::new();
        for c in &s.catalogs {
            if !names.contains(c.disk.as_str())
                || !valid_volume_name(&c.volume)
                || !volumes.insert((c.disk.as_str(), c.volume.as_str()))
            {
                return Err(DecodeError::new(format!(
                    "catalog for unknown disk, bad or duplicate volume {:?}/{:?}",
                    c.disk, c.volume
                )));
            }
            if c.manifest.as_deref().is_some_and(|m| !valid_id(m)) {
                return Err(DecodeError::new(format!(
                    "catalog of {}/{} has a malformed manifest id",
                    c.disk, c.volume
                )));
            }
        }
        Ok(s)
    }

    /// The version a snapshot with these contents is written as.
    pub fn version_for(configs: &[SnapshotConfig], catalogs: &[SnapshotCatalog]) -> u32 {
        if !catalogs.is_empty() {
            3
        } else if !configs.is_empty() {
            2
        } else {
            1
        }
    }

    /// Serialises as JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}
