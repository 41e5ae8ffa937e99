//! Repository config (FORMAT.md section 11): sealed JSON.

use super::DecodeError;
use serde::{Deserialize, Serialize};
use vmvault_chunker::ChunkerParams;

/// Chunker section of the config: the algorithm name and its parameters, flattened
/// into one JSON object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkerConfig {
    /// "fastcdc2020-keyed-gear".
    pub algorithm: String,
    /// Segment, FastCDC and zero-detection parameters.
    #[serde(flatten)]
    pub params: ChunkerParams,
}

/// Compression section of the config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CompressionConfig {
    /// "zstd".
    pub algorithm: String,
    /// zstd level.
    pub level: i32,
    /// Version 2: the most chunk plaintext one blob holds (FORMAT.md section 6). Absent
    /// (0) in version 1 configs, whose blobs hold one chunk each.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub blob_size: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The newest repository format version, written by `init`.
pub const CURRENT_VERSION: u32 = 2;

/// The blob size of new repositories: one segment of new chunks per blob
/// (ARCHITECTURE.md, "Compression units").
pub const DEFAULT_BLOB_SIZE: u32 = 4 << 20;

/// The largest blob plaintext a config may ask for (readers refuse larger blobs).
pub const MAX_BLOB_SIZE: u32 = 16 << 20;

/// The zstd level of new repositories (docs/PERFORMANCE.md, "Trade-offs").
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;
/// The lowest zstd level a config may name (zstd's fastest mode).
pub const MIN_COMPRESSION_LEVEL: i32 = -7;
/// The highest zstd level a config may name.
pub const MAX_COMPRESSION_LEVEL: i32 = 22;

/// The repository config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Config {
    /// Format version, 1 or 2 ([`CURRENT_VERSION`]).
    pub version: u32,
    /// Random repository id (hex).
    pub id: String,
    /// Creation time.
    pub created: String,
    /// Chunker parameters.
    pub chunker: ChunkerConfig,
    /// Compression parameters.
    pub compression: CompressionConfig,
    /// Target pack size in bytes.
    pub pack_size_target: u64,
    /// Bytes of disk described by one manifest page.
    pub manifest_page_size: u64,
}

impl Config {
    /// A new config of the current version with the default settings.
    pub fn new_current(id: String, created: String, chunker: &ChunkerParams) -> Self {
        Config {
            version: CURRENT_VERSION,
            id,
            created,
            chunker: ChunkerConfig {
                algorithm: "fastcdc2020-keyed-gear".into(),
                params: chunker.clone(),
            },
            compression: CompressionConfig {
                algorithm: "zstd".into(),
                level: DEFAULT_COMPRESSION_LEVEL,
                blob_size: DEFAULT_BLOB_SIZE,
            },
            pack_size_target: 16 << 20,
            manifest_page_size: 1 << 30,
        }
    }

    /// The pack and index format version writers use (FORMAT.md sections 6 and 7).
    pub fn pack_version(&self) -> u8 {
        if self.version >= 2 {
            2
        } else {
            1
        }
    }

    /// The most chunk plaintext a writer puts into one data blob; 0 means one chunk per
    /// blob (version 1).
    pub fn blob_size(&self) -> usize {
        if self.version >= 2 {
            self.compression.blob_size as usize
        } else {
            0
        }
    }

    /// The chunker parameters.
    pub fn chunker_params(&self) -> ChunkerParams {
        self.chunker.params.clone()
    }

    /// Parses and validates a decrypted config.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let c: Config = serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::new(format!("config is not valid JSON: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    /// Checks every invariant readers rely on.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if !(1..=CURRENT_VERSION).contains(&self.version) {
            return Err(DecodeError::new(format!(
                "unsupported repository version {} (this vmvault reads versions 1 and {CURRENT_VERSION})",
                self.version
            )));
        }
        let blob_ok = match self.version {
            1 => self.compression.blob_size == 0,
            _ => (1..=MAX_BLOB_SIZE).contains(&self.compression.blob_size),
        };
        if !blob_ok {
            return Err(DecodeError::new(format!(
                "compression.blob_size {} is not allowed in a version {} repository",
                self.compression.blob_size, self.version
            )));
        }
        if self.chunker.algorithm != "fastcdc2020-keyed-gear" {
            return Err(DecodeError::new(format!(
                "unknown chunker {}",
                self.chunker.algorithm
            )));
        }
        self.chunker_params()
            .validate()
            .map_err(|e| DecodeError::new(e.to_string()))?;
        if self.compression.algorithm != "zstd"
            || !(MIN_COMPRESSION_LEVEL..=MAX_COMPRESSION_LEVEL).contains(&self.compression.level)
        {
            return Err(DecodeError::new("unsupported compression settings"));
        }
        if !(1 << 20..=1 << 30).contains(&self.pack_size_target) {
            return Err(DecodeError::new("pack_size_target out of range"));
        }
        let seg = self.chunker.params.segment_size;
        if self.manifest_page_size < seg
            || !self.manifest_page_size.is_multiple_of(seg)
            || self.manifest_page_size > 64 << 30
        {
            return Err(DecodeError::new(
                "manifest_page_size must be a multiple of segment_size, at most 64 GiB",
            ));
        }
        Ok(())
    }

    /// Serialises as JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}
