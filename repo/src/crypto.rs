//! Key material and every use of it (FORMAT.md sections 3, 4, 6, 7).
//!
//! Keys never leave this module as bytes: callers get ciphers, chunkers and sealed
//! objects. Key types are neither `Debug` nor `Clone`, and are wiped on drop.

use crate::format::keyfile::{KdfParams, KeyFile};
use crate::format::sealed::{SealedHeader, SEALED_HEADER_LEN};
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::Aes256Gcm;
use vmvault_chunker::{ChunkId, Chunker, ChunkerParams};
use zeroize::{Zeroize, Zeroizing};

/// Length of an AES-GCM tag.
pub const TAG_LEN: usize = 16;
const WRAPPED_LEN: usize = 1 + 32 * 3;
const KEY_AAD: &[u8] = b"vmvault v1 key";

/// Errors from cryptographic operations. Deliberately uninformative: a failed tag says
/// only that the bytes are not authentic.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// Authentication failed: wrong key or tampered bytes.
    #[error("authentication failed (wrong key or tampered data)")]
    Authentication,
    /// The operating system's random source failed.
    #[error("random source failed: {0}")]
    Random(String),
    /// The key file's KDF parameters are out of the accepted range.
    #[error("key derivation parameters refused: {0}")]
    KdfParams(String),
    /// A structure around the ciphertext is malformed.
    #[error("malformed: {0}")]
    Malformed(String),
}

/// Fills `buf` from the operating system's random source.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|e| CryptoError::Random(e.to_string()))
}

/// A fresh random 32-byte salt.
pub fn random_salt() -> Result<[u8; 32], CryptoError> {
    let mut s = [0u8; 32];
    random_bytes(&mut s)?;
    Ok(s)
}

/// The repository's master keys (wiped from memory when dropped).
#[derive(Clone)]
pub struct MasterKeys {
    data_key: Zeroizing<[u8; 32]>,
    id_key: Zeroizing<[u8; 32]>,
    chunker_key: Zeroizing<[u8; 32]>,
}

fn cipher(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(&(*key).into())
}

fn nonce(bytes: [u8; 12]) -> aes_gcm::aead::Nonce<Aes256Gcm> {
    bytes.into()
}

/// Encrypts `buf` in place and returns the tag.
fn seal_in_place(c: &Aes256Gcm, n: [u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
    // Encryption only fails for messages beyond GCM's 64 GiB limit, which no caller
    // comes near (chunks are at most 16 MiB, sealed objects at most 256 MiB).
    match c.encrypt_inout_detached(&nonce(n), aad, buf.into()) {
        Ok(tag) => {
            let mut t = [0u8; TAG_LEN];
            t.copy_from_slice(tag.as_slice());
            t
        }
        Err(_) => [0u8; TAG_LEN],
    }
}

/// Decrypts `buf` (ciphertext followed by its tag) in place; returns the plaintext length.
fn open_in_place(
    c: &Aes256Gcm,
    n: [u8; 12],
    aad: &[u8],
    buf: &mut [u8],
) -> Result<usize, CryptoError> {
    let body = buf
        .len()
        .checked_sub(TAG_LEN)
        .ok_or_else(|| CryptoError::Malformed("shorter than an authentication tag".into()))?;
    let (msg, tag) = buf.split_at_mut(body);
    let tag = aes_gcm::aead::Tag::<Aes256Gcm>::try_from(&*tag)
        .map_err(|_| CryptoError::Malformed("bad tag length".into()))?;
    c.decrypt_inout_detached(&nonce(n), aad, msg.into(), &tag)
        .map_err(|_| CryptoError::Authentication)?;
    Ok(body)
}

fn kek(password: &[u8], kdf: &KdfParams, salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    kdf.validate().map_err(CryptoError::KdfParams)?;
    let params = argon2::Params::new(kdf.memory_kib, kdf.iterations, kdf.parallelism, Some(32))
        .map_err(|e| CryptoError::KdfParams(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(password, salt, &mut out[..])
        .map_err(|e| CryptoError::KdfParams(e.to_string()))?;
    Ok(out)
}

impl MasterKeys {
    /// Creates new random master keys.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut k = MasterKeys {
            data_key: Zeroizing::new([0; 32]),
            id_key: Zeroizing::new([0; 32]),
            chunker_key: Zeroizing::new([0; 32]),
        };
        random_bytes(&mut k.data_key[..])?;
        random_bytes(&mut k.id_key[..])?;
        random_bytes(&mut k.chunker_key[..])?;
        Ok(k)
    }

    /// Wraps the keys under `password` into a new key file (FORMAT.md section 4).
    pub fn wrap(
        &self,
        password: &[u8],
        kdf: KdfParams,
        created: String,
        host: String,
    ) -> Result<KeyFile, CryptoError> {
        let salt = random_salt()?;
        let kek = kek(password, &kdf, &salt)?;
        let mut n = [0u8; 12];
        random_bytes(&mut n)?;
        let mut plain = Zeroizing::new(Vec::with_capacity(WRAPPED_LEN + TAG_LEN));
        plain.push(1u8);
        plain.extend_from_slice(&self.data_key[..]);
        plain.extend_from_slice(&self.id_key[..]);
        plain.extend_from_slice(&self.chunker_key[..]);
        let tag = seal_in_place(&cipher(&kek), n, KEY_AAD, &mut plain);
        let mut wrapped = n.to_vec();
        wrapped.extend_from_slice(&plain);
        wrapped.extend_from_slice(&tag);
        Ok(KeyFile {
            version: 1,
            created,
            host,
            kdf: KdfParams {
                salt: hex::encode(salt),
                ..kdf
            },
            wrapped: hex::encode(wrapped),
        })
    }

    /// Unwraps the master keys from a key file with `password`.
    pub fn unwrap(key_file: &KeyFile, password: &[u8]) -> Result<Self, CryptoError> {
        let salt = hex::decode(&key_file.kdf.salt)
            .map_err(|_| CryptoError::Malformed("salt is not hex".into()))?;
        if salt.len() < 16 || salt.len() > 64 {
            return Err(CryptoError::Malformed("salt length".into()));
        }
        let mut wrapped = Zeroizing::new(
            hex::decode(&key_file.wrapped)
                .map_err(|_| CryptoError::Malformed("wrapped keys are not hex".into()))?,
        );
        if wrapped.len() != 12 + WRAPPED_LEN + TAG_LEN {
            return Err(CryptoError::Malformed(
                "wrapped keys have the wrong length".into(),
            ));
        }
        let kek = kek(password, &key_file.kdf, &salt)?;
        let mut n = [0u8; 12];
        n.copy_from_slice(&wrapped[..12]);
        let len = open_in_place(&cipher(&kek), n, KEY_AAD, &mut wrapped[12..])?;
        let plain = &wrapped[12..12 + len];
        if plain[0] != 1 {
            return Err(CryptoError::Malformed("unknown key format version".into()));
        }
        let take = |i: usize| {
            let mut k = Zeroizing::new([0u8; 32]);
            k.copy_from_slice(&plain[1 + 32 * i..1 + 32 * (i + 1)]);
            k
        };
        Ok(MasterKeys {
            data_key: take(0),
            id_key: take(1),
            chunker_key: take(2),
        })
    }

    /// A chunker keyed with this repository's gear and id keys.
    pub fn chunker(&self, params: ChunkerParams) -> Chunker {
        Chunker::new(params, &self.chunker_key, &self.id_key)
    }

    /// A public fingerprint of all three master keys: equal fingerprints mean the keys are
    /// equal (BLAKE3 is collision resistant) while revealing nothing about them. Mirrors
    /// made with `init --mirror-of` share their source's fingerprint.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut material = Zeroizing::new(Vec::with_capacity(96));
        material.extend_from_slice(&self.data_key[..]);
        material.extend_from_slice(&self.id_key[..]);
        material.extend_from_slice(&self.chunker_key[..]);
        blake3::derive_key("vmvault v1 key fingerprint", &material)
    }

    /// The chunk id of `bytes` under this repository's id key.
    pub fn chunk_id(&self, bytes: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.id_key, bytes).as_bytes())
    }

    /// The cipher of the pack with this salt.
    pub fn pack_cipher(&self, salt: &[u8; 32]) -> PackCipher {
        let mut material = Zeroizing::new([0u8; 64]);
        material[..32].copy_from_slice(&self.data_key[..]);
        material[32..].copy_from_slice(salt);
        let mut sub = blake3::derive_key("vmvault v1 pack subkey", &material[..]);
        let c = cipher(&sub);
        sub.zeroize();
        PackCipher(c)
    }

    fn object_cipher(&self, salt: &[u8; 32]) -> Aes256Gcm {
        let mut material = Zeroizing::new([0u8; 64]);
        material[..32].copy_from_slice(&self.data_key[..]);
        material[32..].copy_from_slice(salt);
        let mut sub = blake3::derive_key("vmvault v1 object subkey", &material[..]);
        let c = cipher(&sub);
        sub.zeroize();
        c
    }

    /// Encrypts a sealed object of `kind` (FORMAT.md section 7); zstd-compresses the
    /// plaintext first when `compress` is set.
    pub fn seal(&self, kind: u8, plaintext: &[u8], compress: bool) -> Result<Vec<u8>, CryptoError> {
        let salt = random_salt()?;
        let header = SealedHeader {
            kind,
            compression: u8::from(compress),
            salt,
        };
        let mut out = header.encode().to_vec();
        if compress {
            let z = zstd::bulk::compress(plaintext, 3)
                .map_err(|e| CryptoError::Malformed(format!("zstd: {e}")))?;
            out.extend_from_slice(&z);
        } else {
            out.extend_from_slice(plaintext);
        }
        let (aad, body) = out.split_at_mut(SEALED_HEADER_LEN);
        let tag = seal_in_place(&self.object_cipher(&salt), [0u8; 12], aad, body);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Decrypts a sealed object, checking that it is of `kind`; the plaintext is capped
    /// at 256 MiB after decompression.
    pub fn open_sealed(&self, kind: u8, bytes: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let header = SealedHeader::decode(bytes).map_err(CryptoError::Malformed)?;
        if header.kind != kind {
            return Err(CryptoError::Malformed(format!(
                "object kind {} where kind {kind} was expected",
                header.kind
            )));
        }
        let mut body = bytes[SEALED_HEADER_LEN..].to_vec();
        let len = open_in_place(
            &self.object_cipher(&header.salt),
            [0u8; 12],
            &bytes[..SEALED_HEADER_LEN],
            &mut body,
        )?;
        body.truncate(len);
        match header.compression {
            0 => Ok(body),
            1 => decompress_capped(&body, 256 << 20),
            c => Err(CryptoError::Malformed(format!("unknown compression {c}"))),
        }
    }
}

/// zstd-decompresses a single frame, refusing output larger than `cap`.
pub fn decompress_capped(data: &[u8], cap: usize) -> Result<Vec<u8>, CryptoError> {
    use std::io::Read;
    let mut dec = zstd::stream::read::Decoder::new(data)
        .map_err(|e| CryptoError::Malformed(format!("zstd: {e}")))?;
    let mut out = Vec::new();
    (&mut dec)
        .take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| CryptoError::Malformed(format!("zstd: {e}")))?;
    if out.len() > cap {
        return Err(CryptoError::Malformed(format!(
            "decompresses to more than {cap} bytes"
        )));
    }
    Ok(out)
}

/// The AES-256-GCM cipher of one pack. Nonces are derived from blob offsets, so a blob
/// can only be encrypted for the offset it will occupy.
pub struct PackCipher(Aes256Gcm);

fn blob_nonce(offset: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&offset.to_le_bytes());
    n
}

const HEADER_NONCE: [u8; 12] = [0xff; 12];

impl PackCipher {
    /// Encrypts a blob destined for `offset` in place, bound to `aad` (the chunk id of a
    /// one-chunk blob, [`crate::format::pack::PackEntry::aad`]); returns the tag to append.
    pub fn encrypt_blob(&self, offset: u64, aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        seal_in_place(&self.0, blob_nonce(offset), aad, buf)
    }

    /// Decrypts a blob (`ciphertext || tag`) read from `offset` in place; returns the
    /// plaintext length.
    pub fn decrypt_blob(
        &self,
        offset: u64,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, CryptoError> {
        open_in_place(&self.0, blob_nonce(offset), aad, buf)
    }

    /// Encrypts the pack header in place; `prefix` is the pack's first 40 bytes.
    pub fn encrypt_header(&self, prefix: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        seal_in_place(&self.0, HEADER_NONCE, prefix, buf)
    }

    /// Decrypts the pack header in place; returns the plaintext length.
    pub fn decrypt_header(&self, prefix: &[u8], buf: &mut [u8]) -> Result<usize, CryptoError> {
        open_in_place(&self.0, HEADER_NONCE, prefix, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast_kdf() -> KdfParams {
        KdfParams {
            algorithm: "argon2id".into(),
            version: 19,
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            salt: String::new(),
        }
    }

    #[test]
    fn wrap_and_unwrap() {
        let k = MasterKeys::generate().unwrap();
        let kf = k
            .wrap(b"secret", fast_kdf(), "t".into(), "h".into())
            .unwrap();
        let k2 = MasterKeys::unwrap(&kf, b"secret").unwrap();
        assert_eq!(k.chunk_id(b"abc"), k2.chunk_id(b"abc"));
        assert!(matches!(
            MasterKeys::unwrap(&kf, b"wrong"),
            Err(CryptoError::Authentication)
        ));
    }

    #[test]
    fn hostile_kdf_params_are_refused_before_work() {
        let k = MasterKeys::generate().unwrap();
        let mut kf = k.wrap(b"pw", fast_kdf(), "t".into(), "h".into()).unwrap();
        kf.kdf.memory_kib = u32::MAX;
        assert!(matches!(
            MasterKeys::unwrap(&kf, b"pw"),
            Err(CryptoError::KdfParams(_))
        ));
    }

    #[test]
    fn sealed_objects_round_trip_and_detect_tampering() {
        let k = MasterKeys::generate().unwrap();
        let sealed = k.seal(3, b"hello snapshot", true).unwrap();
        assert_eq!(k.open_sealed(3, &sealed).unwrap(), b"hello snapshot");
        assert!(k.open_sealed(2, &sealed).is_err(), "kind must match");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(k.open_sealed(3, &bad).is_err(), "flip at {i} undetected");
        }
        let other = MasterKeys::generate().unwrap();
        assert_eq!(
            other.open_sealed(3, &sealed),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn blobs_are_bound_to_offset_and_id() {
        let k = MasterKeys::generate().unwrap();
        let c = k.pack_cipher(&[1; 32]);
        let id = k.chunk_id(b"data");
        let mut buf = b"data".to_vec();
        let tag = c.encrypt_blob(40, &id.0, &mut buf);
        buf.extend_from_slice(&tag);
        let mut moved = buf.clone();
        assert!(c.decrypt_blob(41, &id.0, &mut moved).is_err());
        let mut wrong_id = buf.clone();
        assert!(c
            .decrypt_blob(40, &k.chunk_id(b"x").0, &mut wrong_id)
            .is_err());
        let n = c.decrypt_blob(40, &id.0, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"data");
        let other_pack = k.pack_cipher(&[2; 32]);
        let mut again = b"data".to_vec();
        let tag2 = other_pack.encrypt_blob(40, &id.0, &mut again);
        assert_ne!(tag, tag2, "each pack must have its own key");
    }

    #[test]
    fn decompression_is_capped() {
        let z = zstd::bulk::compress(&vec![0u8; 1 << 20], 3).unwrap();
        assert!(decompress_capped(&z, 1000).is_err());
        assert_eq!(decompress_capped(&z, 1 << 20).unwrap().len(), 1 << 20);
    }
}
