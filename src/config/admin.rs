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
use super::secret_source::{SecretFields, SecretNames, resolve_stored_key};
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

impl RawAdmin {
    fn secret_fields(&self) -> SecretFields<'_> {
        SecretFields {
            names: SecretNames::KEY,
            key: self.key.as_ref(),
            key_file: self.key_file.as_ref(),
            key_env: self.key_env.as_ref(),
            key_hash: self.key_hash.as_ref(),
        }
    }
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
    let socket_group = src.check_opt(
        raw.socket_group.as_ref(),
        "`socket_group` in [admin]",
        |group| check_name(group).map(|()| group.clone()),
    )?;
    let listen = match &raw.listen {
        Some(listen) if !allow_listen => {
            return Err(src.error_at(
                listen.span(),
                "`listen` in [admin]: a tunnel serves its API on its socket only; remove it",
            ));
        }
        listen => src.check_opt(listen.as_ref(), "`listen` in [admin]", |text| {
            text.parse::<SocketAddr>().map_err(|_| {
                format!("{text:?} is not an IP address and port; write one like \"127.0.0.1:7701\"")
            })
        })?,
    };
    let fields = raw.secret_fields();
    if let Some((_, span)) = fields.given().next()
        && !allow_listen
    {
        return Err(src.error_at(
            span,
            "a monitoring key in [admin]: a tunnel serves its API on its socket only, which \
             needs no key; remove it",
        ));
    }
    let key = resolve_stored_key(src, &fields, " in [admin]", MIN_MONITORING_KEY_LEN)?;
    Ok(AdminConfig {
        socket,
        socket_explicit,
        socket_group,
        listen,
        key,
    })
}
