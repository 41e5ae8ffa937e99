//! Locks (FORMAT.md section 10): sealed JSON.

use super::DecodeError;
use serde::{Deserialize, Serialize};

/// A lock held by a running operation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockInfo {
    /// Format version, 1.
    pub version: u32,
    /// Exclusive or shared.
    pub exclusive: bool,
    /// What the holder is doing.
    pub operation: String,
    /// Holder's host.
    pub host: String,
    /// Holder's process id.
    pub pid: u32,
    /// When the lock was taken.
    pub time: String,
}

impl LockInfo {
    /// Parses a decrypted lock.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let l: LockInfo = serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::new(format!("bad lock: {e}")))?;
        if l.version != 1 {
            return Err(DecodeError::new(format!(
                "unsupported lock version {}",
                l.version
            )));
        }
        Ok(l)
    }

    /// Serialises as JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}
