//! Key files (FORMAT.md section 4): plaintext JSON.

use super::DecodeError;
use serde::{Deserialize, Serialize};

/// Argon2id parameters and salt, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KdfParams {
    /// Always "argon2id".
    pub algorithm: String,
    /// Argon2 version, 19 (0x13).
    pub version: u32,
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Time cost.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
    /// Hex salt.
    #[serde(default)]
    pub salt: String,
}

impl KdfParams {
    /// The parameters for new keys: 64 MiB, 3 passes, 4 lanes (RFC 9106's second
    /// recommended setting; the lanes are computed in parallel, so on several cores a
    /// derivation takes a fraction of the time of one lane at the same memory cost).
    pub fn default_v1() -> Self {
        KdfParams {
            algorithm: "argon2id".into(),
            version: 19,
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 4,
            salt: String::new(),
        }
    }

    /// Refuses parameters a hostile key file could use to exhaust memory or time.
    pub fn validate(&self) -> Result<(), String> {
        if self.algorithm != "argon2id" || self.version != 19 {
            return Err(format!(
                "unsupported KDF {} version {}",
                self.algorithm, self.version
            ));
        }
        if !(8..=4 * 1024 * 1024).contains(&self.memory_kib) {
            return Err(format!("memory_kib {} out of range", self.memory_kib));
        }
        if !(1..=64).contains(&self.iterations) {
            return Err(format!("iterations {} out of range", self.iterations));
        }
        if !(1..=64).contains(&self.parallelism) {
            return Err(format!("parallelism {} out of range", self.parallelism));
        }
        if self.memory_kib < 8 * self.parallelism {
            return Err("memory_kib must be at least 8 × parallelism".into());
        }
        Ok(())
    }
}

/// A key file: the master keys wrapped under a password.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyFile {
    /// Format version, 1.
    pub version: u32,
    /// When the key was added.
    pub created: String,
    /// Host that added it.
    pub host: String,
    /// Password derivation.
    pub kdf: KdfParams,
    /// Hex of nonce || ciphertext || tag.
    pub wrapped: String,
}

impl KeyFile {
    /// Parses and checks a key file.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let k: KeyFile = serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::new(format!("key file is not valid JSON: {e}")))?;
        if k.version != 1 {
            return Err(DecodeError::new(format!(
                "unsupported key file version {}",
                k.version
            )));
        }
        k.kdf.validate().map_err(DecodeError::new)?;
        Ok(k)
    }

    /// Serialises as pretty JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}
