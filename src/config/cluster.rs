//! `[cluster]`: several hubs sharing their claims, membership and lockouts in one Redis
//! (`hub::cluster`). Without the table a hub is alone and talks to no Redis at all.

use std::path::PathBuf;
use std::time::Duration;

use redis::IntoConnectionInfo;
use serde::Deserialize;
use toml::{Spanned, Value};

use super::error::ConfigError;
use super::secret_source::{SecretFields, SecretNames, resolve_secret};
use super::source::Source;
use super::values::{check_name, parse_duration, parse_host_port};
use crate::secret::Secret;

const DEFAULT_LEASE: Duration = Duration::from_secs(10);
const MIN_LEASE: Duration = Duration::from_secs(1);
const MAX_LEASE: Duration = Duration::from_secs(600);

/// `[cluster]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis`: where the cluster's state lives: `redis://host:port[/db]`, `rediss://…` (TLS,
    /// the system's roots), or `unix:///path/to/redis.sock`. Never holds the password.
    pub redis: String,
    /// `ca_file` (optional, `rediss://` only): PEM certificates of the CA that signed the
    /// Redis server's certificate, instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// `username` (optional): the Redis ACL user.
    pub username: Option<String>,
    /// `password`, `password_file` or `password_env` (optional): the Redis password.
    pub password: Option<Secret>,
    /// `name`: this hub's name in the cluster, unique among its hubs (letters, digits, `-`,
    /// `_`, `.`); in logs, `tunnelizectl cluster` and every claim it makes.
    pub name: String,
    /// `advertise`: where other hubs and tunnels reach this hub's tunnel listener
    /// (`host:port`).
    pub advertise: String,
    /// `lease` (default `10s`, 1s to 10m): how long this hub's membership and claims last in
    /// Redis without being renewed; they are renewed every third of it. A hub that dies is
    /// gone from the cluster after one lease; the claims it held stay for one lease plus
    /// `reconnect_grace`, so no other key takes them while its tunnels reconnect elsewhere.
    pub lease: Duration,
}

/// `[cluster]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    redis: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<Value>>,
    password_file: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
    advertise: Option<Spanned<String>>,
    lease: Option<Spanned<Value>>,
}

/// Checks `[cluster]`, if it is there.
pub(super) fn check_cluster(
    src: &Source<'_>,
    raw: Option<&Spanned<RawCluster>>,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let Some(table) = raw else {
        return Ok(None);
    };
    let raw = table.get_ref();
    let required = |value: &Option<Spanned<String>>, key: &str, example: &str| {
        value.clone().ok_or_else(|| {
            src.error_at(
                table.span(),
                format!("[cluster] needs `{key}`, like `{key} = {example}`"),
            )
        })
    };
    let redis = required(&raw.redis, "redis", "\"redis://127.0.0.1:6379\"")?;
    let name = required(&raw.name, "name", "\"hub-1\"")?;
    let advertise = required(&raw.advertise, "advertise", "\"hub-1.example.com:7700\"")?;
    let fields = SecretFields {
        names: SecretNames::PASSWORD,
        key: raw.password.as_ref(),
        key_file: raw.password_file.as_ref(),
        key_env: raw.password_env.as_ref(),
        key_hash: None,
    };
    let lease = src.check_or(
        raw.lease.as_ref(),
        "`lease` in [cluster]",
        DEFAULT_LEASE,
        |v| {
            let lease = parse_duration(v)?;
            if (MIN_LEASE..=MAX_LEASE).contains(&lease) {
                Ok(lease)
            } else {
                Err(format!(
                    "a lease lasts from 1s to 10m, not {}",
                    humantime::format_duration(lease)
                ))
            }
        },
    )?;
    let ca_file = match &raw.ca_file {
        Some(file) if !redis.get_ref().starts_with("rediss://") => {
            return Err(src.error_at(
                file.span(),
                "`ca_file` in [cluster] is for a Redis reached over TLS: write `redis` as \
                 rediss://HOST:PORT, or remove `ca_file`",
            ));
        }
        Some(file) => Some(src.non_empty_path(file, "`ca_file` in [cluster]")?),
        None => None,
    };
    Ok(Some(ClusterConfig {
        redis: src.check(&redis, "`redis` in [cluster]", |url| check_redis_url(url))?,
        ca_file,
        username: raw.username.as_ref().map(|u| u.get_ref().clone()),
        password: resolve_secret(src, &fields, " in [cluster]", 1)?,
        name: src.check(&name, "`name` in [cluster]", |name| {
            check_name(name).map(|()| name.clone())
        })?,
        advertise: src.check(&advertise, "`advertise` in [cluster]", |text| {
            parse_host_port(text, "hub-1.example.com:7700").map(|_| text.clone())
        })?,
        lease,
    }))
}

/// A Redis URL the client accepts, without a password in it (the password has its own keys,
/// so it never shows where the URL does: logs, `tunnelizectl cluster`).
fn check_redis_url(url: &str) -> Result<String, String> {
    let scheme_ok = ["redis://", "rediss://", "unix://", "redis+unix://"]
        .iter()
        .any(|scheme| url.starts_with(scheme));
    if !scheme_ok {
        return Err(format!(
            "{url:?} is not a Redis URL; write redis://HOST:PORT, rediss://HOST:PORT (TLS) or \
             unix:///PATH/TO/redis.sock"
        ));
    }
    let info = url
        .into_connection_info()
        .map_err(|e| format!("{url:?} is not a Redis URL the client accepts: {e}"))?;
    if info.redis_settings().password().is_some() {
        return Err(
            "the URL holds a password; remove it from the URL and give it with `password_file` \
             or `password_env` (or `password`), so it never shows in logs"
                .into(),
        );
    }
    Ok(url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_of_every_kind_pass_and_others_are_refused() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://redis.internal:6380/2",
            "rediss://redis.internal:6380",
            "unix:///run/redis/redis.sock",
        ] {
            assert_eq!(check_redis_url(url).as_deref(), Ok(url), "{url}");
        }
        assert!(check_redis_url("http://127.0.0.1:6379").is_err());
        assert!(check_redis_url("127.0.0.1:6379").is_err());
        let with_password = check_redis_url("redis://:hunter22@127.0.0.1:6379");
        let message = with_password.expect_err("a password in the URL is refused");
        assert!(message.contains("password_file"), "{message}");
        assert!(!message.contains("hunter22"), "{message}");
    }
}
