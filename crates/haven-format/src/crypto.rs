//! Encryption at rest (FORMAT.md, "Encryption"): AES-256-GCM everywhere.
//!
//! A random 256-bit data key per segment encrypts that segment's chunks; the data key is
//! stored in the segment's index wrapped (encrypted) by the repository's master key, next to
//! the master key's id, so master keys can be rotated without rewriting data.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use sha2::{Digest as _, Sha256};

use crate::FormatError;

/// The id of a master key: the first 8 bytes of SHA-256("haven-key-id\0" || key), in hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyId(pub String);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A repository master key (32 bytes).
#[derive(Clone)]
pub struct MasterKey {
    key: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id())
    }
}

/// A data key encrypted under a master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub key_id: KeyId,
    pub nonce: [u8; 12],
    /// 32 bytes of key + 16 bytes of GCM tag.
    pub ciphertext: Vec<u8>,
}

impl MasterKey {
    pub fn from_bytes(key: [u8; 32]) -> Self {
        MasterKey { key }
    }

    /// Parses 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, FormatError> {
        let bytes = hex::decode(text.trim())
            .map_err(|e| FormatError::invalid("key", format!("not hex: {e}")))?;
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            FormatError::invalid(
                "key",
                format!(
                    "a key is 32 bytes (64 hex digits), this one is {} bytes",
                    b.len()
                ),
            )
        })?;
        Ok(MasterKey { key })
    }

    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        MasterKey { key }
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.key)
    }

    pub fn id(&self) -> KeyId {
        let mut h = Sha256::new();
        h.update(b"haven-key-id\0");
        h.update(self.key);
        KeyId(hex::encode(&h.finalize()[..8]))
    }

    pub fn wrap(&self, data_key: &[u8; 32]) -> WrappedKey {
        self.wrap_with(data_key, b"haven-data-key")
    }

    /// AES-256-GCM of a data key under this key, random nonce, additional data `aad`.
    fn wrap_with(&self, data_key: &[u8; 32], aad: &[u8]) -> WrappedKey {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let cipher = Aes256Gcm::new((&self.key).into());
        let ciphertext = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: data_key, aad })
            .expect("AES-GCM encryption of 32 bytes cannot fail");
        WrappedKey {
            key_id: self.id(),
            nonce,
            ciphertext,
        }
    }

    /// Opens a wrapping made by [`MasterKey::wrap_with`] with the same `aad`; `what`
    /// names it in errors.
    fn unwrap_with(
        &self,
        wrapped: &WrappedKey,
        aad: &[u8],
        what: &str,
    ) -> Result<[u8; 32], FormatError> {
        if wrapped.key_id != self.id() {
            return Err(FormatError::WrongKey {
                expected: wrapped.key_id.0.clone(),
                given: self.id().0,
            });
        }
        let cipher = Aes256Gcm::new((&self.key).into());
        let plain = cipher
            .decrypt(
                Nonce::from_slice(&wrapped.nonce),
                Payload {
                    msg: &wrapped.ciphertext,
                    aad,
                },
            )
            .map_err(|_| FormatError::Tampered { what: what.into() })?;
        plain
            .try_into()
            .map_err(|_| FormatError::invalid("wrapped data key", "not 32 bytes"))
    }

    pub fn unwrap_key(&self, wrapped: &WrappedKey) -> Result<[u8; 32], FormatError> {
        self.unwrap_with(wrapped, b"haven-data-key", "wrapped data key")
    }
}

impl MasterKey {
    /// Wraps a segment's data key again under this key, for a key rotation (FORMAT.md,
    /// "Key rotation"). The wrapping is bound to the segment: additional data
    /// `haven-rewrap\0` || seq (big-endian u64) || the segment's digest.
    pub fn rewrap(&self, data_key: &[u8; 32], seq: u64, digest: &[u8; 32]) -> WrappedKey {
        self.wrap_with(data_key, &rewrap_aad(seq, digest))
    }

    /// Opens a wrapping made by [`MasterKey::rewrap`] for segment `seq` with `digest`.
    pub fn unwrap_rewrapped(
        &self,
        wrapped: &WrappedKey,
        seq: u64,
        digest: &[u8; 32],
    ) -> Result<[u8; 32], FormatError> {
        self.unwrap_with(
            wrapped,
            &rewrap_aad(seq, digest),
            &format!("re-wrapped data key of segment {seq}"),
        )
    }
}

fn rewrap_aad(seq: u64, digest: &[u8; 32]) -> [u8; 53] {
    let mut aad = [0u8; 53];
    aad[..13].copy_from_slice(b"haven-rewrap\0");
    aad[13..21].copy_from_slice(&seq.to_be_bytes());
    aad[21..].copy_from_slice(digest);
    aad
}

/// A data subject's key (crypto-shredding, FORMAT.md "Erasure"): seals the key, value and
/// headers of that subject's records; destroying it erases them.
#[derive(Clone)]
pub struct SubjectKey {
    key: [u8; 32],
}

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SubjectKey({})", hex::encode(self.id()))
    }
}

impl SubjectKey {
    pub fn generate() -> Self {
        SubjectKey {
            key: random_data_key(),
        }
    }

    pub fn from_bytes(key: [u8; 32]) -> Self {
        SubjectKey { key }
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.key
    }

    /// First 8 bytes of SHA-256("haven-subject-key\0" || key): tells a destroyed key from
    /// one made later for the same subject.
    pub fn id(&self) -> [u8; 8] {
        let mut h = Sha256::new();
        h.update(b"haven-subject-key\0");
        h.update(self.key);
        let d = h.finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        id
    }

    /// Seals `plain` for `subject` (AES-256-GCM, random nonce, additional data
    /// `HAVENSUB` || subject). Returns (nonce, ciphertext).
    pub fn seal(&self, subject: &[u8; 32], plain: &[u8]) -> ([u8; 12], Vec<u8>) {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let cipher = Aes256Gcm::new((&self.key).into());
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &subject_aad(subject),
                },
            )
            .expect("AES-GCM encryption cannot fail for record-sized input");
        (nonce, ct)
    }

    pub fn open(
        &self,
        subject: &[u8],
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, FormatError> {
        let subject: &[u8; 32] = subject
            .try_into()
            .map_err(|_| FormatError::invalid("sealed record", "subject is not 32 bytes"))?;
        if nonce.len() != 12 {
            return Err(FormatError::invalid(
                "sealed record",
                "nonce is not 12 bytes",
            ));
        }
        let cipher = Aes256Gcm::new((&self.key).into());
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &subject_aad(subject),
                },
            )
            .map_err(|_| FormatError::Tampered {
                what: "sealed record".into(),
            })
    }
}

fn subject_aad(subject: &[u8; 32]) -> [u8; 40] {
    let mut aad = [0u8; 40];
    aad[..8].copy_from_slice(b"HAVENSUB");
    aad[8..].copy_from_slice(subject);
    aad
}

/// HMAC-SHA256 (RFC 2104) of a subject id under the repository's subject-hash key: the
/// only form in which a subject id is stored.
pub fn subject_hash(secret: &[u8], subject: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if secret.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(secret));
    } else {
        k[..secret.len()].copy_from_slice(secret);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(subject);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

pub(crate) fn random_data_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut k);
    k
}

fn chunk_nonce(ordinal: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[8..].copy_from_slice(&ordinal.to_be_bytes());
    n
}

fn chunk_aad(seq: u64, ordinal: u32) -> [u8; 20] {
    let mut aad = [0u8; 20];
    aad[..8].copy_from_slice(b"HAVENCHK");
    aad[8..16].copy_from_slice(&seq.to_be_bytes());
    aad[16..].copy_from_slice(&ordinal.to_be_bytes());
    aad
}

/// Encrypts one chunk. The nonce is the chunk's ordinal in its segment (data keys are never
/// reused across segments); the segment sequence and ordinal are authenticated, so a chunk
/// moved to another place does not decrypt.
pub(crate) fn seal_chunk(data_key: &[u8; 32], seq: u64, ordinal: u32, plain: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(data_key.into());
    cipher
        .encrypt(
            Nonce::from_slice(&chunk_nonce(ordinal)),
            Payload {
                msg: plain,
                aad: &chunk_aad(seq, ordinal),
            },
        )
        .expect("AES-GCM encryption cannot fail for chunk-sized input")
}

pub(crate) fn open_chunk(
    data_key: &[u8; 32],
    seq: u64,
    ordinal: u32,
    sealed: &[u8],
) -> Result<Vec<u8>, FormatError> {
    let cipher = Aes256Gcm::new(data_key.into());
    cipher
        .decrypt(
            Nonce::from_slice(&chunk_nonce(ordinal)),
            Payload {
                msg: sealed,
                aad: &chunk_aad(seq, ordinal),
            },
        )
        .map_err(|_| FormatError::Tampered {
            what: format!("chunk {ordinal} of segment {seq}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_and_wrong_key() {
        let k = MasterKey::generate();
        let dk = random_data_key();
        let w = k.wrap(&dk);
        assert_eq!(k.unwrap_key(&w).unwrap(), dk);
        let other = MasterKey::generate();
        assert!(matches!(
            other.unwrap_key(&w),
            Err(FormatError::WrongKey { .. })
        ));
        let mut bad = w.clone();
        bad.ciphertext[3] ^= 1;
        assert!(matches!(
            k.unwrap_key(&bad),
            Err(FormatError::Tampered { .. })
        ));
    }

    #[test]
    fn sealed_chunk_is_bound_to_its_place() {
        let dk = random_data_key();
        let s = seal_chunk(&dk, 7, 2, b"hello");
        assert_eq!(open_chunk(&dk, 7, 2, &s).unwrap(), b"hello");
        assert!(open_chunk(&dk, 7, 3, &s).is_err());
        assert!(open_chunk(&dk, 8, 2, &s).is_err());
    }

    #[test]
    fn rewrap_is_bound_to_its_segment() {
        let old = MasterKey::generate();
        let new = MasterKey::generate();
        let dk = random_data_key();
        let d = [7u8; 32];
        let w = new.rewrap(&dk, 3, &d);
        assert_eq!(new.unwrap_rewrapped(&w, 3, &d).unwrap(), dk);
        assert!(matches!(
            new.unwrap_rewrapped(&w, 4, &d),
            Err(FormatError::Tampered { .. })
        ));
        assert!(new.unwrap_rewrapped(&w, 3, &[8u8; 32]).is_err());
        assert!(matches!(
            old.unwrap_rewrapped(&w, 3, &d),
            Err(FormatError::WrongKey { .. })
        ));
        // A rewrap is not a segment's own wrapping, nor the reverse.
        assert!(new.unwrap_key(&w).is_err());
        assert!(new.unwrap_rewrapped(&new.wrap(&dk), 3, &d).is_err());
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        let h = subject_hash(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(h),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        let h = subject_hash(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex::encode(h),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn sealed_records_open_only_with_their_key_and_subject() {
        let k = SubjectKey::generate();
        let s = [1u8; 32];
        let (n, ct) = k.seal(&s, b"alice");
        assert_eq!(k.open(&s, &n, &ct).unwrap(), b"alice");
        assert!(k.open(&[2u8; 32], &n, &ct).is_err());
        assert!(SubjectKey::generate().open(&s, &n, &ct).is_err());
        assert_ne!(k.id(), SubjectKey::generate().id());
    }

    #[test]
    fn hex_keys() {
        let k = MasterKey::generate();
        assert_eq!(MasterKey::from_hex(&k.to_hex()).unwrap().id(), k.id());
        assert!(MasterKey::from_hex("abcd").is_err());
        assert!(MasterKey::from_hex("zz").is_err());
    }
}
