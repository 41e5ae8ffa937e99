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

/// A snapshot: one backup of one VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    /// Format version, 1.
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
}

impl Snapshot {
    /// Parses and checks a decrypted snapshot.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let s: Snapshot = serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::new(format!("snapshot is not valid JSON: {e}")))?;
        if s.version != 1 {
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
            let id = hex::decode(&d.manifest).ok().filter(|b| b.len() == 32);
            if id.is_none() {
                return Err(DecodeError::new(format!(
                    "disk {} has a malformed manifest id",
                    d.name
                )));
            }
        }
        Ok(s)
    }

    /// Serialises as JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}
