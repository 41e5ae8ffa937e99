//! Sealed-object header (FORMAT.md section 7).
//!
//! ```text
//! 0  4  magic "VMVS"
//! 4  1  version = 1
//! 5  1  kind
//! 6  1  compression
//! 7  1  reserved
//! 8  32 salt
//! ```

/// Length of the plaintext header that precedes every sealed object's ciphertext.
pub const SEALED_HEADER_LEN: usize = 40;
const MAGIC: &[u8; 4] = b"VMVS";

/// Kind byte of the repository config.
pub const KIND_CONFIG: u8 = 1;
/// Kind byte of index files.
pub const KIND_INDEX: u8 = 2;
/// Kind byte of snapshots.
pub const KIND_SNAPSHOT: u8 = 3;
/// Kind byte of locks.
pub const KIND_LOCK: u8 = 4;

/// The parsed header of a sealed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedHeader {
    /// What the object is.
    pub kind: u8,
    /// 0 none, 1 zstd.
    pub compression: u8,
    /// Random per-object salt for the subkey.
    pub salt: [u8; 32],
}

impl SealedHeader {
    /// The 40-byte encoding.
    pub fn encode(&self) -> [u8; SEALED_HEADER_LEN] {
        let mut b = [0u8; SEALED_HEADER_LEN];
        b[..4].copy_from_slice(MAGIC);
        b[4] = 1;
        b[5] = self.kind;
        b[6] = self.compression;
        b[8..].copy_from_slice(&self.salt);
        b
    }

    /// Parses the header at the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < SEALED_HEADER_LEN + 16 {
            return Err(format!(
                "too short for a sealed object ({} bytes)",
                bytes.len()
            ));
        }
        if &bytes[..4] != MAGIC {
            return Err("not a vmvault object (bad magic)".into());
        }
        if bytes[4] != 1 {
            return Err(format!("unsupported object version {}", bytes[4]));
        }
        let mut salt = [0u8; 32];
        salt.copy_from_slice(&bytes[8..40]);
        Ok(SealedHeader {
            kind: bytes[5],
            compression: bytes[6],
            salt,
        })
    }
}
