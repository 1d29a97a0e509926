//! Secrets (tunnel keys, link tokens, monitoring keys).
//!
//! A [`Secret`] never prints its value: `Debug` and `Display` show `***`, so a secret that ends up
//! in a log line, an error or a `{:?}` dump leaks nothing. Comparison is constant-time.

use std::fmt;

use serde::{Deserialize, Serialize};
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

#[cfg(test)]
mod tests {
    use super::*;

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
