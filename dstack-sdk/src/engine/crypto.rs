//! Encryption at rest and token hashing, in dstack's formats.
//!
//! Ciphertext is stored as `enc:<key_type>:<key_name>:<payload>`. An AES key's payload is
//! `base64(12-byte nonce ‖ AES-256-GCM ciphertext)`; the identity key stores
//! `enc:identity:noname:<plaintext>`. The first configured key encrypts; decryption tries every
//! key of the matching type and name; the identity key is always appended as a fallback, so a
//! server can start encrypting an existing plaintext database.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

/// Errors of the encryption layer. Messages never include plaintext or key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// An AES key's secret is not base64 of exactly 32 bytes.
    #[error("encryption key {name:?}: secret must be base64 of 32 bytes")]
    BadKey {
        /// The key's name.
        name: String,
    },
    /// No configured key can decrypt the value.
    #[error(
        "cannot decrypt a value encrypted with key {key_type}:{key_name}: that key is not in config.yml's encryption.keys"
    )]
    UnknownKey {
        /// `aes` or `identity`.
        key_type: String,
        /// The key name stored with the value.
        key_name: String,
    },
    /// The stored value is not in `enc:...` form or its payload is damaged.
    #[error("stored encrypted value is malformed or was tampered with")]
    Malformed,
}

/// One configured key.
#[derive(Clone)]
pub enum EncryptionKey {
    /// AES-256-GCM with a name (the name is stored with every value it encrypts).
    Aes {
        /// The key's name.
        name: String,
        /// The 256-bit key.
        cipher: Box<Aes256Gcm>,
    },
    /// No encryption: values are stored as `enc:identity:noname:<plain>`.
    Identity,
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncryptionKey::Aes { name, .. } => {
                write!(f, "EncryptionKey::Aes({name:?}, <redacted>)")
            }
            EncryptionKey::Identity => f.write_str("EncryptionKey::Identity"),
        }
    }
}

impl EncryptionKey {
    /// An AES key from its name and base64 secret (32 bytes decoded).
    pub fn aes(name: &str, secret_b64: &str) -> Result<Self, CryptoError> {
        let bytes = B64
            .decode(secret_b64.trim())
            .map_err(|_| CryptoError::BadKey {
                name: name.to_string(),
            })?;
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey {
                name: name.to_string(),
            });
        }
        let key = Key::<Aes256Gcm>::from_slice(&bytes);
        Ok(EncryptionKey::Aes {
            name: name.to_string(),
            cipher: Box::new(Aes256Gcm::new(key)),
        })
    }
}

/// The configured keys, in order. The first one encrypts.
#[derive(Debug, Clone)]
pub struct Crypto {
    keys: Vec<EncryptionKey>,
}

impl Default for Crypto {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl Crypto {
    /// Keys in config order; the identity key is appended as a fallback.
    pub fn new(mut keys: Vec<EncryptionKey>) -> Self {
        if !keys.iter().any(|k| matches!(k, EncryptionKey::Identity)) {
            keys.push(EncryptionKey::Identity);
        }
        Self { keys }
    }

    /// Encrypts `plain` with the first key.
    pub fn encrypt(&self, plain: &str) -> String {
        match self.keys.first() {
            Some(EncryptionKey::Aes { name, cipher }) => {
                let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
                match cipher.encrypt(&nonce, plain.as_bytes()) {
                    Ok(ct) => {
                        let mut payload = nonce.to_vec();
                        payload.extend_from_slice(&ct);
                        format!("enc:aes:{name}:{}", B64.encode(payload))
                    }
                    // AES-GCM encryption only fails for plaintexts over 64 GiB.
                    Err(_) => format!("enc:identity:noname:{plain}"),
                }
            }
            _ => format!("enc:identity:noname:{plain}"),
        }
    }

    /// Decrypts a value written by [`Crypto::encrypt`] (with any configured key). A value
    /// without the `enc:` prefix is returned as is (plaintext from older databases).
    pub fn decrypt(&self, stored: &str) -> Result<String, CryptoError> {
        let Some(rest) = stored.strip_prefix("enc:") else {
            return Ok(stored.to_string());
        };
        let mut parts = rest.splitn(3, ':');
        let (Some(key_type), Some(key_name), Some(payload)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(CryptoError::Malformed);
        };
        match key_type {
            "identity" => Ok(payload.to_string()),
            "aes" => {
                let raw = B64.decode(payload).map_err(|_| CryptoError::Malformed)?;
                if raw.len() < 12 {
                    return Err(CryptoError::Malformed);
                }
                let (nonce, ct) = raw.split_at(12);
                for key in &self.keys {
                    if let EncryptionKey::Aes { name, cipher } = key
                        && name == key_name
                        && let Ok(plain) = cipher.decrypt(Nonce::from_slice(nonce), ct)
                    {
                        return String::from_utf8(plain).map_err(|_| CryptoError::Malformed);
                    }
                }
                Err(CryptoError::UnknownKey {
                    key_type: key_type.into(),
                    key_name: key_name.into(),
                })
            }
            other => Err(CryptoError::UnknownKey {
                key_type: other.into(),
                key_name: key_name.into(),
            }),
        }
    }
}

/// `sha256(token)` as lowercase hex: how tokens are looked up.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "E5yzN6V3XvBq/f085ISWFCdgnOGED0kuFaAkASlmmO4=";

    #[test]
    fn aes_round_trip_and_format() {
        let c = Crypto::new(vec![EncryptionKey::aes("key1", SECRET).unwrap()]);
        let enc = c.encrypt("s3cr3t");
        assert!(enc.starts_with("enc:aes:key1:"));
        assert!(!enc.contains("s3cr3t"));
        assert_eq!(c.decrypt(&enc).unwrap(), "s3cr3t");
        // Two encryptions differ (random nonce).
        assert_ne!(enc, c.encrypt("s3cr3t"));
    }

    #[test]
    fn identity_fallback_and_key_rotation() {
        let plain = Crypto::default();
        let old = plain.encrypt("v");
        assert_eq!(old, "enc:identity:noname:v");
        let c = Crypto::new(vec![EncryptionKey::aes("k", SECRET).unwrap()]);
        assert_eq!(c.decrypt(&old).unwrap(), "v");
        assert_eq!(c.decrypt("legacy-plain").unwrap(), "legacy-plain");
        let enc = c.encrypt("v");
        assert!(matches!(
            plain.decrypt(&enc),
            Err(CryptoError::UnknownKey { .. })
        ));
    }

    #[test]
    fn bad_keys_and_tampering_are_errors() {
        assert!(EncryptionKey::aes("k", "c2hvcnQ=").is_err());
        let c = Crypto::new(vec![EncryptionKey::aes("k", SECRET).unwrap()]);
        let mut enc = c.encrypt("value");
        enc.pop();
        enc.push('A');
        assert!(c.decrypt(&enc).is_err());
        assert!(c.decrypt("enc:aes:k").is_err());
    }

    #[test]
    fn token_hash_is_sha256_hex() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
