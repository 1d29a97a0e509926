//! Secrets (tunnel keys, link tokens, monitoring keys).
//!
//! A [`Secret`] never prints its value: `Debug` and `Display` show `***`, so a secret that ends up
//! in a log line, an error or a `{:?}` dump leaks nothing. Comparison is constant-time.
//!
//! A [`StoredKey`] is what a hub checks presented keys against: the key itself or only its
//! SHA-256 digest (`key_hash = "sha256:…"`, printed by `tunnelize hash-key`), so a config file
//! or a backup of it need not hold a usable key.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A secret string whose value is only reachable through [`Secret::expose`].
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// Generates a random secret of `bytes` random bytes, hex-encoded.
    pub fn random(bytes: usize) -> Self {
        let mut buf = vec![0u8; bytes];
        // getrandom only fails when the OS has no entropy source at all; a tunnel service cannot
        // run safely on such a system, so treat it as fatal.
        getrandom::fill(&mut buf).expect("the operating system's random number generator failed");
        Secret(hex::encode(buf))
    }

    /// The secret value. Call sites are the few places that must send or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Constant-time comparison with a candidate value.
    pub fn matches(&self, candidate: &str) -> bool {
        // ct_eq on slices of different lengths returns false without comparing contents; the
        // length of a key is not considered secret.
        bool::from(self.0.as_bytes().ct_eq(candidate.as_bytes()))
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.matches(&other.0)
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Prefix of a stored key hash: `sha256:` followed by 64 lowercase hex digits.
pub const KEY_HASH_PREFIX: &str = "sha256:";

/// A key the hub accepts: the key itself, or only its SHA-256 digest.
///
/// Keys are long random strings (the config demands at least 16 characters), so a plain SHA-256
/// is enough to make a leaked hash useless, and unlike a password hash it costs nothing per
/// login: an attacker cannot turn login attempts into CPU load. Both forms compare digests in
/// constant time.
#[derive(Clone)]
pub struct StoredKey {
    digest: [u8; 32],
}

/// Why a `key_hash` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyHashError {
    /// The value does not start with `sha256:`.
    #[error("expected \"sha256:\" followed by 64 hex digits, as printed by `tunnelize hash-key`")]
    Prefix,
    /// The digest part is not 64 hex digits.
    #[error(
        "the digest after \"sha256:\" must be 64 hex digits; copy the whole line that `tunnelize hash-key` printed"
    )]
    Digest,
}

impl StoredKey {
    /// Parses `sha256:<64 hex digits>` (upper or lower case hex).
    pub fn from_hash(text: &str) -> Result<Self, KeyHashError> {
        let hex_digits = text
            .strip_prefix(KEY_HASH_PREFIX)
            .ok_or(KeyHashError::Prefix)?;
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut digest).map_err(|_| KeyHashError::Digest)?;
        Ok(StoredKey { digest })
    }

    /// A new random key: 32 bytes from the operating system's generator, as 64 hex digits
    /// (what `tunnelize gen-key` writes).
    pub fn generate() -> Result<Secret, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(Secret::new(hex::encode(bytes)))
    }

    /// The `key_hash` line for `key`: `sha256:` and the hex digest.
    pub fn hash_line(key: &Secret) -> String {
        format!("{KEY_HASH_PREFIX}{}", hex::encode(digest(key.expose())))
    }

    /// Constant-time check of a presented key.
    pub fn matches(&self, candidate: &str) -> bool {
        bool::from(self.digest.ct_eq(&digest(candidate)))
    }
}

fn digest(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

impl From<Secret> for StoredKey {
    fn from(secret: Secret) -> Self {
        StoredKey {
            digest: digest(secret.expose()),
        }
    }
}

impl From<&str> for StoredKey {
    fn from(key: &str) -> Self {
        StoredKey {
            digest: digest(key),
        }
    }
}

impl PartialEq for StoredKey {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.digest.ct_eq(&other.digest))
    }
}

impl Eq for StoredKey {}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoredKey(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_key_matches_whether_given_plain_or_hashed() {
        let key = Secret::new("alice-0123456789abcdef");
        let line = StoredKey::hash_line(&key);
        assert!(
            line.starts_with("sha256:") && line.len() == 7 + 64,
            "{line}"
        );
        let hashed = StoredKey::from_hash(&line).unwrap();
        let plain = StoredKey::from(key.clone());
        for stored in [&hashed, &plain] {
            assert!(stored.matches("alice-0123456789abcdef"));
            assert!(!stored.matches("alice-0123456789abcdeF"));
            assert!(!stored.matches(""));
        }
        assert_eq!(hashed, plain);
        assert!(StoredKey::from_hash(&line.to_uppercase().replace("SHA256:", "sha256:")).is_ok());
        assert!(!format!("{hashed:?}").contains(&line[7..]));
    }

    #[test]
    fn malformed_hashes_are_refused() {
        assert_eq!(StoredKey::from_hash("md5:abcd"), Err(KeyHashError::Prefix));
        assert_eq!(
            StoredKey::from_hash("sha256:abcd"),
            Err(KeyHashError::Digest)
        );
        let long = format!("sha256:{}", "0".repeat(66));
        assert_eq!(StoredKey::from_hash(&long), Err(KeyHashError::Digest));
        let bad = format!("sha256:{}", "g".repeat(64));
        assert_eq!(StoredKey::from_hash(&bad), Err(KeyHashError::Digest));
    }

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2-very-secret");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
    }

    #[test]
    fn matches_only_the_exact_value() {
        let s = Secret::new("abc");
        assert!(s.matches("abc"));
        assert!(!s.matches("abd"));
        assert!(!s.matches("ab"));
        assert!(!s.matches("abcd"));
    }

    #[test]
    fn random_secrets_differ_and_have_requested_length() {
        let a = Secret::random(32);
        let b = Secret::random(32);
        assert_eq!(a.expose().len(), 64);
        assert_ne!(a, b);
    }
}
