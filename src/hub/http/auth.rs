//! HTTP basic authentication in front of a proxy, against an argon2 password hash.
//!
//! argon2 is deliberately slow, so verification runs on the blocking pool, never on the async
//! runtime, and a successful check is remembered (by a SHA-256 of the hash and the presented
//! header, never the password itself) for a few minutes in a bounded cache, so a browser's
//! every request does not pay for it again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Argon2, PasswordHash, PasswordVerifier};
use base64::Engine;
use parking_lot::{Mutex, MutexGuard};
use sha2::{Digest, Sha256};

use crate::protocol::BasicAuth;

/// How long a verified credential is remembered.
const REMEMBER_FOR: Duration = Duration::from_secs(300);
/// Most remembered credentials.
const MAX_REMEMBERED: usize = 4096;

/// Hashes a password for `basic_auth.password_hash` (argon2id, random salt, PHC string).
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt_bytes = [0u8; 16];
    getrandom::fill(&mut salt_bytes).map_err(|e| format!("no randomness for a salt: {e}"))?;
    let salt =
        SaltString::encode_b64(&salt_bytes).map_err(|e| format!("cannot encode the salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Checks presented credentials against a proxy's user and hash.
fn verify(auth: &BasicAuth, header: &str) -> bool {
    let Some(encoded) = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return false;
    };
    let Some((user, password)) = text.split_once(':') else {
        return false;
    };
    let Ok(hash) = PasswordHash::new(&auth.password_hash) else {
        return false;
    };
    // Verify the password even for a wrong user, so timing does not tell which was wrong.
    let password_ok = Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok();
    let user_ok: bool = subtle::ConstantTimeEq::ct_eq(user.as_bytes(), auth.user.as_bytes()).into();
    password_ok && user_ok
}

/// Remembers recently verified credentials.
#[derive(Default)]
pub struct AuthCache {
    seen: Mutex<HashMap<[u8; 32], Instant>>,
}

impl AuthCache {
    fn lock(&self) -> MutexGuard<'_, HashMap<[u8; 32], Instant>> {
        self.seen.lock()
    }

    /// Whether `header` (the `Authorization` value, if any) carries the proxy's credentials.
    pub async fn check(&self, auth: &BasicAuth, header: Option<&str>) -> bool {
        let Some(header) = header else { return false };
        let mut digest = Sha256::new();
        digest.update(auth.user.as_bytes());
        digest.update([0]);
        digest.update(auth.password_hash.as_bytes());
        digest.update([0]);
        digest.update(header.as_bytes());
        let key: [u8; 32] = digest.finalize().into();
        if self
            .lock()
            .get(&key)
            .is_some_and(|at| at.elapsed() < REMEMBER_FOR)
        {
            return true;
        }
        let (auth, header) = (auth.clone(), header.to_owned());
        let ok = tokio::task::spawn_blocking(move || verify(&auth, &header))
            .await
            .unwrap_or(false);
        if ok {
            let mut seen = self.lock();
            if seen.len() >= MAX_REMEMBERED {
                seen.retain(|_, at| at.elapsed() < REMEMBER_FOR);
                if seen.len() >= MAX_REMEMBERED {
                    seen.clear();
                }
            }
            seen.insert(key, Instant::now());
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    #[tokio::test]
    async fn only_the_right_user_and_password_pass() {
        let auth = BasicAuth {
            user: "ann".into(),
            password_hash: hash_password("s3cret").unwrap(),
        };
        let cache = AuthCache::default();
        assert!(cache.check(&auth, Some(&basic("ann", "s3cret"))).await);
        assert!(
            cache.check(&auth, Some(&basic("ann", "s3cret"))).await,
            "remembered"
        );
        assert!(!cache.check(&auth, Some(&basic("ann", "wrong"))).await);
        assert!(!cache.check(&auth, Some(&basic("bob", "s3cret"))).await);
        assert!(!cache.check(&auth, Some("Bearer x")).await);
        assert!(!cache.check(&auth, Some("Basic !!!")).await);
        assert!(!cache.check(&auth, None).await);
    }

    #[test]
    fn hashes_are_salted_phc_strings() {
        let a = hash_password("pw").unwrap();
        let b = hash_password("pw").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b);
        assert!(!a.contains("pw$"));
    }
}
