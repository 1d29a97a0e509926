//! `[admin]`: where a daemon serves its monitoring/control API.
//!
//! Both daemons serve it on a Unix socket (default `/run/tunnelize/hub.sock` or
//! `/run/tunnelize/tunnel.sock`; `socket = ""` turns it off). The hub can also serve it on a
//! TLS `listen` address, guarded by a monitoring key given like every secret (`key`,
//! `key_file` or `key_env`); without a key that listener does not start.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::{Spanned, Value};

use super::error::ConfigError;
use super::secret_source::{SecretFields, resolve_stored_key};
use super::source::Source;
use super::values::check_name;
use crate::secret::StoredKey;

/// Shortest monitoring key accepted.
const MIN_MONITORING_KEY_LEN: usize = 16;

/// Where the admin API is served.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AdminConfig {
    /// `socket`: Unix socket path; `None` when turned off with `socket = ""`.
    pub socket: Option<PathBuf>,
    /// Whether `socket` was written in the file (then failing to create it is an error;
    /// the default path is skipped with a warning when its directory does not exist).
    pub socket_explicit: bool,
    /// `socket_group` (default none): group that owns the socket (mode 0660), so its members
    /// may use the API.
    pub socket_group: Option<String>,
    /// `listen` (hub only, default none): TLS address of the API.
    pub listen: Option<SocketAddr>,
    /// The monitoring key (`key`, `key_file`, `key_env` or `key_hash`), required by the TLS
    /// listener.
    pub key: Option<StoredKey>,
}

impl AdminConfig {
    /// No socket, no listener: for tests and embedded use.
    pub fn disabled() -> Self {
        AdminConfig::default()
    }
}

/// `[admin]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    socket: Option<Spanned<String>>,
    socket_group: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    key: Option<Spanned<Value>>,
    key_file: Option<Spanned<String>>,
    key_env: Option<Spanned<String>>,
    key_hash: Option<Spanned<String>>,
}

/// Checks `[admin]`; `default_socket` applies when `socket` is absent, `allow_listen` is false
/// for the tunnel (which serves its API only on the socket).
pub(super) fn check_admin(
    src: &Source<'_>,
    raw: Option<&RawAdmin>,
    default_socket: &str,
    allow_listen: bool,
) -> Result<AdminConfig, ConfigError> {
    let empty = RawAdmin::default();
    let raw = raw.unwrap_or(&empty);
    let (socket, socket_explicit) = match &raw.socket {
        Some(path) if path.get_ref().is_empty() => (None, true),
        Some(path) => (Some(src.resolve_path(path.get_ref())), true),
        None => (Some(PathBuf::from(default_socket)), false),
    };
    let socket_group = match &raw.socket_group {
        Some(group) => {
            check_name(group.get_ref()).map_err(|problem| {
                src.error_at(
                    group.span(),
                    format!("`socket_group` in [admin]: {problem}"),
                )
            })?;
            Some(group.get_ref().clone())
        }
        None => None,
    };
    let listen = match &raw.listen {
        Some(_) if !allow_listen => {
            let span = raw.listen.as_ref().map(Spanned::span).unwrap_or_default();
            return Err(src.error_at(
                span,
                "`listen` in [admin]: a tunnel serves its API on its socket only; remove it",
            ));
        }
        Some(listen) => Some(listen.get_ref().parse::<SocketAddr>().map_err(|_| {
            src.error_at(
                listen.span(),
                format!(
                    "`listen` in [admin]: {:?} is not an IP address and port; write one like \
                     \"127.0.0.1:7701\"",
                    listen.get_ref()
                ),
            )
        })?),
        None => None,
    };
    if !allow_listen {
        let key_span = [
            &raw.key.as_ref().map(Spanned::span),
            &raw.key_file.as_ref().map(Spanned::span),
            &raw.key_env.as_ref().map(Spanned::span),
            &raw.key_hash.as_ref().map(Spanned::span),
        ]
        .into_iter()
        .find_map(|span| span.clone());
        if let Some(span) = key_span {
            return Err(src.error_at(
                span,
                "a monitoring key in [admin]: a tunnel serves its API on its socket only, \
                 which needs no key; remove it",
            ));
        }
    }
    let fields = SecretFields {
        key: raw.key.as_ref(),
        key_file: raw.key_file.as_ref(),
        key_env: raw.key_env.as_ref(),
    };
    let key = resolve_stored_key(
        src,
        &fields,
        raw.key_hash.as_ref(),
        " in [admin]",
        MIN_MONITORING_KEY_LEN,
    )?;
    Ok(AdminConfig {
        socket,
        socket_explicit,
        socket_group,
        listen,
        key,
    })
}
