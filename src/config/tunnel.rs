//! The tunnel daemon's configuration (`/etc/tunnelize/tunnel.toml`).
//!
//! The file is deserialized into private `Raw*` structs that keep every value's span, then
//! checked and converted into [`TunnelConfig`]. This module does not resolve host names, connect
//! or read certificates: it only says where the tunnel should connect and what it forwards.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::ServerName;
use serde::Deserialize;

use crate::protocol::BasicAuth;
use toml::{Spanned, Value};

use super::admin::{AdminConfig, RawAdmin, check_admin};
use super::error::ConfigError;
use super::file::{self, ConfigFile};
use super::secret_source::{SecretFields, SecretNames, resolve_secret};
use super::source::Source;
use super::values::{
    check_name, count_in, is_hostname, parse_duration, parse_host_port, port_from_i64,
};
use crate::secret::Secret;
use crate::tls::Fingerprint;

const DEFAULT_LINKS: usize = 2;
const MAX_LINKS: usize = 16;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_RECONNECT_INITIAL: Duration = Duration::from_millis(200);
const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);

/// The tunnel's configuration, checked: every value is valid and the rules between keys hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// `hub_address` (required): the hub's control address as `host:port`, not yet resolved.
    pub hub_address: String,
    /// `hub_server_name` (default: the host part of `hub_address`): the name the hub's
    /// certificate must carry.
    pub hub_server_name: String,
    /// How the hub's certificate is verified: `hub_ca_file`, `hub_cert_sha256`, or neither for
    /// the system's root certificates.
    pub hub_trust: HubTrust,
    /// The tunnel key, from `key`, `key_file` or `key_env`; `None` for a hub in no-auth mode.
    pub key: Option<Secret>,
    /// `links` (default 2, 1 to 16): how many multiplexed link connections to keep open.
    pub links: usize,
    /// `connect_timeout` (default `5s`): how long to wait when connecting to a local target.
    pub connect_timeout: Duration,
    /// `[[proxies]]`: what to forward; at least one, names unique.
    pub proxies: Vec<ProxyConfig>,
    /// `[admin]`: the tunnel's own status API on a Unix socket.
    pub admin: AdminConfig,
    /// `[reconnect]`: how the tunnel waits before retrying the hub.
    pub reconnect: Reconnect,
}

/// `[reconnect]`: the tunnel retries the hub forever after losing it (or failing to reach
/// it), except after a wrong key, a version mismatch or an untrusted certificate. Before retry
/// `n` (from 0) it waits a random time between zero and `min(initial * 2^n, max)`: exponential
/// backoff with full jitter. A session that stayed up starts the sequence over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// `initial` (default `200ms`): the bound of the first wait.
    pub initial: Duration,
    /// `max` (default `30s`, at least `initial`): the largest bound.
    pub max: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial: DEFAULT_RECONNECT_INITIAL,
            max: DEFAULT_RECONNECT_MAX,
        }
    }
}

/// How the tunnel verifies the hub's TLS certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubTrust {
    /// Neither `hub_ca_file` nor `hub_cert_sha256`: the operating system's root certificates.
    SystemRoots,
    /// `hub_ca_file`: a PEM file of CA certificates. Relative to the config file's directory.
    CaFile(PathBuf),
    /// `hub_cert_sha256`: the SHA-256 of the hub's certificate (DER), pinned.
    Fingerprint([u8; 32]),
}

/// `[[proxies]]`: one local target exposed through a hub service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyConfig {
    /// `name`: unique among the proxies; 1 to 64 of `a-z`, `0-9`, `_`, `-`.
    pub name: String,
    /// `service`: the name of the hub service (`[services.NAME]` on the hub) to attach to.
    pub service: String,
    /// `target`: the local `host:port` to forward to, not yet resolved.
    pub target: String,
    /// `port` (optional): the public port to ask for within the service's range; `None` lets
    /// the hub choose.
    pub port: Option<u16>,
    /// `hostname` (optional, http/https services): a name under the service's domain
    /// (`myapp`) or a full hostname the hub allows; `None` lets the hub pick a random name.
    pub hostname: Option<String>,
    /// `group` (optional, http/https services): tunnels naming the same group share the
    /// hostname, round-robin.
    pub group: Option<String>,
    /// `[proxies.basic_auth]` (optional, http/https services): `user` and `password_hash`
    /// (from `tunnelize hash-password`); the hub asks clients for these credentials.
    pub basic_auth: Option<BasicAuth>,
    /// `max_body` (optional, http/https services): largest request body in bytes; larger
    /// requests get 413.
    pub max_body: Option<u64>,
}

impl TunnelConfig {
    /// Reads and checks the tunnel config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        file::load(path)
    }

    /// Checks tunnel config `text`. `origin` names the file in errors and anchors relative
    /// paths; a `key_file` is read and a `key_env` variable looked up.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        file::parse(text, origin)
    }
}

/// Default admin socket of the tunnel daemon (for `/etc/tunnelize/tunnel.toml`).
pub const DEFAULT_TUNNEL_SOCKET: &str = "/run/tunnelize/tunnel.sock";

/// The default socket for a tunnel configured by `origin`: named after the file, so the
/// instances of `tunnelize-tunnel@NAME` (`tunnel-NAME.toml`) each get their own
/// (`/run/tunnelize/tunnel-NAME.sock`); `tunnel.toml` gets [`DEFAULT_TUNNEL_SOCKET`].
pub fn default_tunnel_socket(origin: &std::path::Path) -> String {
    let stem = origin
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| s.starts_with("tunnel") && super::values::check_name(s).is_ok());
    match stem {
        Some(stem) => format!("/run/tunnelize/{stem}.sock"),
        None => DEFAULT_TUNNEL_SOCKET.to_owned(),
    }
}

/// The tunnel's file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTunnel {
    hub_address: Spanned<String>,
    hub_server_name: Option<Spanned<String>>,
    hub_ca_file: Option<Spanned<String>>,
    hub_cert_sha256: Option<Spanned<String>>,
    key: Option<Spanned<Value>>,
    key_file: Option<Spanned<String>>,
    key_env: Option<Spanned<String>>,
    links: Option<Spanned<i64>>,
    connect_timeout: Option<Spanned<Value>>,
    #[serde(default)]
    proxies: Vec<RawProxy>,
    admin: Option<RawAdmin>,
    reconnect: Option<RawReconnect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReconnect {
    initial: Option<Spanned<Value>>,
    max: Option<Spanned<Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    name: Spanned<String>,
    service: Spanned<String>,
    target: Spanned<String>,
    port: Option<Spanned<i64>>,
    hostname: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    basic_auth: Option<RawBasicAuth>,
    max_body: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasicAuth {
    user: Spanned<String>,
    password_hash: Spanned<String>,
}

impl ConfigFile for TunnelConfig {
    type Raw = RawTunnel;

    fn check(raw: RawTunnel, src: &Source<'_>) -> Result<Self, ConfigError> {
        let hub = src.check(&raw.hub_address, "`hub_address`", |address| {
            parse_host_port(address, "hub.example.com:7700")
        })?;
        let hub_server_name = match &raw.hub_server_name {
            Some(name) => src.check(name, "`hub_server_name`", |name| check_server_name(name))?,
            None => check_server_name(&hub.host).map_err(|problem| {
                src.error_at(
                    raw.hub_address.span(),
                    format!("`hub_address`: {problem}; or set `hub_server_name`"),
                )
            })?,
        };
        let hub_trust = raw.check_trust(src)?;
        let fields = SecretFields {
            names: SecretNames::KEY,
            key: raw.key.as_ref(),
            key_file: raw.key_file.as_ref(),
            key_env: raw.key_env.as_ref(),
            key_hash: None,
        };
        // Any non-empty key may be sent; only the hub decides which keys are strong enough.
        let key = resolve_secret(src, &fields, "", 1)?;
        let links = src.check_or(raw.links.as_ref(), "`links`", DEFAULT_LINKS, |n| {
            count_in(*n, 1..=MAX_LINKS)
                .map_err(|problem| format!("{problem} (default {DEFAULT_LINKS})"))
        })?;
        let connect_timeout = src.check_or(
            raw.connect_timeout.as_ref(),
            "`connect_timeout`",
            DEFAULT_CONNECT_TIMEOUT,
            parse_duration,
        )?;
        let proxies = check_proxies(src, &raw.proxies)?;
        let reconnect = match &raw.reconnect {
            Some(reconnect) => check_reconnect(src, reconnect)?,
            None => Reconnect::default(),
        };
        let default_socket = default_tunnel_socket(src.origin());
        Ok(TunnelConfig {
            hub_address: raw.hub_address.into_inner(),
            hub_server_name,
            hub_trust,
            key,
            links,
            connect_timeout,
            proxies,
            admin: check_admin(src, raw.admin.as_ref(), &default_socket, false)?,
            reconnect,
        })
    }
}

impl RawTunnel {
    fn check_trust(&self, src: &Source<'_>) -> Result<HubTrust, ConfigError> {
        match (&self.hub_ca_file, &self.hub_cert_sha256) {
            (Some(_), Some(fingerprint)) => Err(src.error_at(
                fingerprint.span(),
                "`hub_ca_file` and `hub_cert_sha256` are both set; keep one: `hub_ca_file` to \
                 trust a CA, or `hub_cert_sha256` to pin the hub's certificate",
            )),
            (Some(file), None) => src
                .non_empty_path(file, "`hub_ca_file`")
                .map(HubTrust::CaFile),
            (None, Some(fingerprint)) => src.check(fingerprint, "`hub_cert_sha256`", |text| {
                text.parse::<Fingerprint>()
                    .map(|pin| HubTrust::Fingerprint(pin.0))
            }),
            (None, None) => Ok(HubTrust::SystemRoots),
        }
    }
}

/// Checks `[reconnect]`: two durations, `initial` no longer than `max`.
fn check_reconnect(src: &Source<'_>, raw: &RawReconnect) -> Result<Reconnect, ConfigError> {
    let duration = |value: &Option<Spanned<Value>>, key: &str, default| {
        let what = format!("`{key}` in [reconnect]");
        src.check_or(value.as_ref(), &what, default, parse_duration)
    };
    let initial = duration(&raw.initial, "initial", DEFAULT_RECONNECT_INITIAL)?;
    let max = duration(&raw.max, "max", DEFAULT_RECONNECT_MAX)?;
    if initial > max {
        let written = |value: &Option<Spanned<Value>>, default: &str| match value {
            Some(value) => value.get_ref().to_string(),
            None => format!("{default:?} (the default)"),
        };
        let span = raw.max.as_ref().or(raw.initial.as_ref()).map(Spanned::span);
        let message = format!(
            "[reconnect] `initial` {} is longer than `max` {}; the first wait must not exceed \
             the largest",
            written(&raw.initial, "200ms"),
            written(&raw.max, "30s"),
        );
        return Err(match span {
            Some(span) => src.error_at(span, message),
            None => src.error_in_file(message),
        });
    }
    Ok(Reconnect { initial, max })
}

/// Checks a TLS server name (DNS name or IP address) the way the TLS client will parse it.
fn check_server_name(name: &str) -> Result<String, String> {
    ServerName::try_from(name)
        .map(|_| name.to_string())
        .map_err(|_| {
            format!(
                "{name:?} is not a valid DNS name or IP address for TLS; use the name in the hub's \
             certificate"
            )
        })
}

fn check_proxies(src: &Source<'_>, raw: &[RawProxy]) -> Result<Vec<ProxyConfig>, ConfigError> {
    if raw.is_empty() {
        return Err(src.error_in_file(
            "no [[proxies]] entries, so the tunnel would forward nothing; add at least one \
             [[proxies]] entry with `name`, `service` and `target`",
        ));
    }
    let mut proxies: Vec<ProxyConfig> = Vec::with_capacity(raw.len());
    for proxy in raw {
        let checked = check_proxy(src, proxy, &proxies)?;
        proxies.push(checked);
    }
    Ok(proxies)
}

/// One `[[proxies]]` entry; its name, and its port within its service, must differ from those
/// of the `earlier` entries.
fn check_proxy(
    src: &Source<'_>,
    proxy: &RawProxy,
    earlier: &[ProxyConfig],
) -> Result<ProxyConfig, ConfigError> {
    let name = proxy.name.get_ref();
    src.check(&proxy.name, "`name` in [[proxies]]", |name| {
        check_name(name)
    })?;
    if earlier.iter().any(|other| other.name == *name) {
        return Err(src.error_at(
            proxy.name.span(),
            format!("[[proxies]] name `{name}` is used twice; give each proxy its own name"),
        ));
    }
    let table = format!("[[proxies]] `{name}`");
    src.check(
        &proxy.service,
        &format!("`service` in {table}"),
        |service| {
            check_name(service)
                .map_err(|problem| format!("{problem}; it must match a [services.NAME] on the hub"))
        },
    )?;
    src.check(&proxy.target, &format!("`target` in {table}"), |target| {
        parse_host_port(target, "127.0.0.1:22")
    })?;
    let port = check_proxy_port(src, proxy, &table, earlier)?;
    let what = format!("`hostname` in {table}");
    let hostname = src.check_opt(proxy.hostname.as_ref(), &what, |host| check_hostname(host))?;
    let what = format!("`group` in {table}");
    let group = src.check_opt(proxy.group.as_ref(), &what, |group| {
        check_name(group).map(|()| group.clone())
    })?;
    let basic_auth = proxy
        .basic_auth
        .as_ref()
        .map(|auth| check_basic_auth(src, auth, &table))
        .transpose()?;
    let what = format!("`max_body` in {table}");
    let max_body = src.check_opt(proxy.max_body.as_ref(), &what, |max| {
        u64::try_from(*max)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| "must be a positive number of bytes".to_owned())
    })?;
    Ok(ProxyConfig {
        name: name.clone(),
        service: proxy.service.get_ref().clone(),
        target: proxy.target.get_ref().clone(),
        port,
        hostname,
        group,
        basic_auth,
        max_body,
    })
}

/// `port` of a proxy: a port number no `earlier` proxy of the same service asks for.
fn check_proxy_port(
    src: &Source<'_>,
    proxy: &RawProxy,
    table: &str,
    earlier: &[ProxyConfig],
) -> Result<Option<u16>, ConfigError> {
    let Some(raw_port) = &proxy.port else {
        return Ok(None);
    };
    let port = src.check(raw_port, &format!("`port` in {table}"), |port| {
        port_from_i64(*port)
            .map_err(|problem| format!("{problem}, or remove it to let the hub choose"))
    })?;
    let service = proxy.service.get_ref();
    if let Some(other) = earlier
        .iter()
        .find(|other| other.service == *service && other.port == Some(port))
    {
        return Err(src.error_at(
            raw_port.span(),
            format!(
                "`port` in {table}: proxy `{}` already asks for port {port} of service `{}`; \
                 choose another port",
                other.name, other.service
            ),
        ));
    }
    Ok(Some(port))
}

/// A hostname label (`myapp`) or a full hostname (`app.example.org`), lowercased.
fn check_hostname(text: &str) -> Result<String, String> {
    let host = text.to_ascii_lowercase();
    if !is_hostname(&host) {
        return Err(format!(
            "{text:?} is not a valid hostname; use letters, digits and `-` in dot-separated labels, \
             like \"myapp\" or \"app.example.org\""
        ));
    }
    Ok(host)
}

fn check_basic_auth(
    src: &Source<'_>,
    raw: &RawBasicAuth,
    table: &str,
) -> Result<BasicAuth, ConfigError> {
    let user = raw.user.get_ref();
    if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
        return Err(src.error_at(
            raw.user.span(),
            format!(
                "`basic_auth.user` in {table}: must be non-empty, without `:` or control characters"
            ),
        ));
    }
    let hash = raw.password_hash.get_ref();
    if argon2::PasswordHash::new(hash).is_err() {
        // The value is a hash, but say nothing of it: someone may have pasted a password here.
        return Err(src.error_at(
            raw.password_hash.span(),
            format!(
                "`basic_auth.password_hash` in {table}: not a password hash; create one with \
                 `tunnelize hash-password` and paste its output"
            ),
        ));
    }
    Ok(BasicAuth {
        user: user.clone(),
        password_hash: hash.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::env::VarError;

    use super::*;

    const ORIGIN: &str = "/etc/tunnelize/tunnel.toml";
    const PROXY: &str =
        "[[proxies]]\nname = \"ssh\"\nservice = \"ssh\"\ntarget = \"127.0.0.1:22\"\n";
    const FINGERPRINT: &str = "AB:CD:EF:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:ab:cd:ef:01:23:45:67:89";

    fn parse(text: &str) -> Result<TunnelConfig, ConfigError> {
        let env = |name: &str| match name {
            "TUNNELIZE_TEST_TUNNEL_KEY" => Ok("tunnel-0123456789abcdef".to_string()),
            _ => Err(VarError::NotPresent),
        };
        file::parse_with_env::<TunnelConfig>(text, Path::new(ORIGIN), &env)
    }

    /// A config with `top` at the top level (starting at line 1) and one proxy.
    fn with_proxy(top: &str) -> String {
        format!("{top}\n{PROXY}")
    }

    fn error(text: &str) -> String {
        match parse(text) {
            Ok(config) => panic!("expected an error, parsed {config:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn each_tunnel_config_file_gets_a_socket_of_its_own_by_default() {
        use std::path::Path;
        assert_eq!(
            default_tunnel_socket(Path::new("/etc/tunnelize/tunnel.toml")),
            "/run/tunnelize/tunnel.sock"
        );
        assert_eq!(
            default_tunnel_socket(Path::new("/etc/tunnelize/tunnel-office.toml")),
            "/run/tunnelize/tunnel-office.sock"
        );
        assert_eq!(
            default_tunnel_socket(Path::new("/tmp/other.toml")),
            DEFAULT_TUNNEL_SOCKET,
            "files not named tunnel* keep the plain default"
        );
        assert_eq!(
            default_tunnel_socket(Path::new("/tmp/tunnel with space.toml")),
            DEFAULT_TUNNEL_SOCKET
        );
    }

    #[test]
    fn a_minimal_file_gets_every_default() {
        let config = parse(&with_proxy("hub_address = \"hub.example.com:7700\"")).unwrap();
        assert_eq!(
            config,
            TunnelConfig {
                hub_address: "hub.example.com:7700".into(),
                hub_server_name: "hub.example.com".into(),
                hub_trust: HubTrust::SystemRoots,
                key: None,
                links: 2,
                connect_timeout: Duration::from_secs(5),
                proxies: vec![ProxyConfig {
                    name: "ssh".into(),
                    service: "ssh".into(),
                    target: "127.0.0.1:22".into(),
                    port: None,
                    ..Default::default()
                }],
                admin: AdminConfig {
                    socket: Some(PathBuf::from(DEFAULT_TUNNEL_SOCKET)),
                    ..AdminConfig::default()
                },
                reconnect: Reconnect {
                    initial: Duration::from_millis(200),
                    max: Duration::from_secs(30),
                },
            }
        );
    }

    #[test]
    fn every_key_can_be_set() {
        let text = format!(
            "hub_address = \"203.0.113.7:7700\"\nhub_server_name = \"hub.example.com\"\n\
             hub_ca_file = \"ca.pem\"\nkey_env = \"TUNNELIZE_TEST_TUNNEL_KEY\"\nlinks = 16\n\
             connect_timeout = \"250ms\"\n{PROXY}port = 2222\n\
             [[proxies]]\nname = \"web\"\nservice = \"http-1\"\ntarget = \"[::1]:8080\"\n"
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.hub_server_name, "hub.example.com");
        assert_eq!(
            config.hub_trust,
            HubTrust::CaFile(PathBuf::from("/etc/tunnelize/ca.pem"))
        );
        assert_eq!(config.key, Some(Secret::new("tunnel-0123456789abcdef")));
        assert_eq!(config.links, 16);
        assert_eq!(config.connect_timeout, Duration::from_millis(250));
        assert_eq!(config.proxies[0].port, Some(2222));
        assert_eq!(config.proxies[1].target, "[::1]:8080");
    }

    #[test]
    fn the_server_name_defaults_to_the_hub_host_without_brackets() {
        let config = parse(&with_proxy("hub_address = \"[2001:db8::1]:7700\"")).unwrap();
        assert_eq!(config.hub_server_name, "2001:db8::1");
        let config = parse(&with_proxy("hub_address = \"10.1.2.3:7700\"")).unwrap();
        assert_eq!(config.hub_server_name, "10.1.2.3");
    }

    #[test]
    fn bad_hub_addresses_and_server_names_name_the_key_and_line() {
        let err = error(&with_proxy("hub_address = \"hub.example.com\""));
        assert!(
            err.starts_with(
                "/etc/tunnelize/tunnel.toml:1:15: `hub_address`: \"hub.example.com\" has no port"
            ),
            "{err}"
        );
        let err = error(&with_proxy("hub_address = \"h:1\"\nhub_server_name = \"\""));
        assert!(
            err.starts_with(
                "/etc/tunnelize/tunnel.toml:2:19: `hub_server_name`: \"\" is not a valid DNS name"
            ),
            "{err}"
        );
        let err = error(&with_proxy("hub_address = \"bad_host-.:1\""));
        assert!(err.contains("or set `hub_server_name`"), "{err}");
    }

    #[test]
    fn a_missing_hub_address_is_reported_without_a_line() {
        let err = error(PROXY);
        assert_eq!(
            err,
            "/etc/tunnelize/tunnel.toml: missing required key `hub_address` at the top level; add it"
        );
    }

    #[test]
    fn hub_trust_is_a_ca_file_or_a_fingerprint_but_not_both() {
        let config = parse(&with_proxy(&format!(
            "hub_address = \"h:1\"\nhub_cert_sha256 = \"{FINGERPRINT}\""
        )))
        .unwrap();
        let HubTrust::Fingerprint(bytes) = config.hub_trust else {
            panic!("{config:?}")
        };
        assert_eq!(&bytes[..4], &[0xab, 0xcd, 0xef, 0x01]);
        let err = error(&with_proxy(&format!(
            "hub_address = \"h:1\"\nhub_ca_file = \"ca.pem\"\nhub_cert_sha256 = \"{FINGERPRINT}\""
        )));
        assert!(
            err.starts_with(
                "/etc/tunnelize/tunnel.toml:3:19: `hub_ca_file` and `hub_cert_sha256` are both set"
            ),
            "{err}"
        );
        let err = error(&with_proxy(
            "hub_address = \"h:1\"\nhub_cert_sha256 = \"abcd\"",
        ));
        assert!(err.starts_with("/etc/tunnelize/tunnel.toml:2:19: `hub_cert_sha256`: found 4 hex digits instead of 64"), "{err}");
    }

    #[test]
    fn links_must_be_between_1_and_16() {
        for bad in ["0", "17", "-1"] {
            let err = error(&with_proxy(&format!(
                "hub_address = \"h:1\"\nlinks = {bad}"
            )));
            assert!(
                err.starts_with(&format!(
                    "/etc/tunnelize/tunnel.toml:2:9: `links`: {bad} is out of range; use 1 to 16"
                )),
                "{err}"
            );
        }
        let err = error(&with_proxy("hub_address = \"h:1\"\nlinks = \"2\""));
        assert!(
            err.starts_with("/etc/tunnelize/tunnel.toml:2:9: `links`: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn bad_connect_timeouts_are_refused() {
        let err = error(&with_proxy(
            "hub_address = \"h:1\"\nconnect_timeout = \"5\"",
        ));
        assert!(
            err.starts_with(
                "/etc/tunnelize/tunnel.toml:2:19: `connect_timeout`: \"5\" has no unit"
            ),
            "{err}"
        );
    }

    #[test]
    fn reconnect_takes_two_durations_the_first_no_longer_than_the_second() {
        let config = parse(&with_proxy(
            "hub_address = \"h:1\"\n[reconnect]\ninitial = \"50ms\"\nmax = \"2m\"",
        ))
        .unwrap();
        assert_eq!(
            config.reconnect,
            Reconnect {
                initial: Duration::from_millis(50),
                max: Duration::from_secs(120),
            }
        );
        let config = parse(&with_proxy(
            "hub_address = \"h:1\"\n[reconnect]\nmax = \"200ms\"",
        ))
        .unwrap();
        assert_eq!(
            config.reconnect.max, config.reconnect.initial,
            "equal is fine"
        );
        let err = error(&with_proxy(
            "hub_address = \"h:1\"\n[reconnect]\nmax = \"100ms\"",
        ));
        assert!(
            err.starts_with(
                "/etc/tunnelize/tunnel.toml:3:7: [reconnect] `initial` \"200ms\" (the default) is \
                 longer than `max` \"100ms\""
            ),
            "{err}"
        );
        let err = error(&with_proxy(
            "hub_address = \"h:1\"\n[reconnect]\ninitial = \"soon\"",
        ));
        assert!(
            err.starts_with(
                "/etc/tunnelize/tunnel.toml:3:11: `initial` in [reconnect]: \"soon\" is not a duration"
            ),
            "{err}"
        );
    }

    #[test]
    fn at_least_one_proxy_is_required() {
        let err = error("hub_address = \"h:1\"\n");
        assert!(
            err.starts_with("/etc/tunnelize/tunnel.toml: no [[proxies]] entries"),
            "{err}"
        );
    }

    #[test]
    fn proxies_are_checked_entry_by_entry() {
        let base = "hub_address = \"h:1\"\n";
        let proxy = |name: &str, service: &str, target: &str, extra: &str| {
            format!(
                "[[proxies]]\nname = \"{name}\"\nservice = \"{service}\"\ntarget = \"{target}\"\n{extra}"
            )
        };
        let err = error(&format!(
            "{base}{}{}",
            proxy("a", "s", "h:1", ""),
            proxy("a", "s", "h:2", "")
        ));
        assert!(
            err.starts_with("/etc/tunnelize/tunnel.toml:7:8: [[proxies]] name `a` is used twice"),
            "{err}"
        );
        let err = error(&format!("{base}{}", proxy("a", "S", "h:1", "")));
        assert!(err.starts_with("/etc/tunnelize/tunnel.toml:4:11: `service` in [[proxies]] `a`: \"S\" is not a valid name"), "{err}");
        let err = error(&format!("{base}{}", proxy("a", "s", "localhost", "")));
        assert!(err.starts_with("/etc/tunnelize/tunnel.toml:5:10: `target` in [[proxies]] `a`: \"localhost\" has no port; write it as host:port, like \"127.0.0.1:22\""), "{err}");
        let err = error(&format!("{base}{}", proxy("a", "s", "h:1", "port = 0\n")));
        assert!(err.starts_with("/etc/tunnelize/tunnel.toml:6:8: `port` in [[proxies]] `a`: 0 is not a port number; use 1 to 65535, or remove it"), "{err}");
        let err = error(&format!(
            "{base}{}{}",
            proxy("a", "s", "h:1", "port = 5\n"),
            proxy("b", "s", "h:2", "port = 5\n")
        ));
        assert!(err.starts_with("/etc/tunnelize/tunnel.toml:11:8: `port` in [[proxies]] `b`: proxy `a` already asks for port 5 of service `s`"), "{err}");
        assert!(
            parse(&format!(
                "{base}{}{}",
                proxy("a", "s", "h:1", "port = 5\n"),
                proxy("b", "t", "h:2", "port = 5\n")
            ))
            .is_ok()
        );
        let err = error(&format!(
            "{base}{}{}",
            proxy("a", "s", "h:1", ""),
            proxy("b", "s", "h:2", "prt = 5\n")
        ));
        assert!(err.starts_with("/etc/tunnelize/tunnel.toml:10:1: unknown key `prt` in [[proxies]] entry 2; expected one of `name`, `service`, `target`, `port`"), "{err}");
    }

    #[test]
    fn a_short_tunnel_key_is_sent_as_is_for_the_hub_to_judge() {
        let config = parse(&with_proxy("hub_address = \"h:1\"\nkey = \"wrong-key\"")).unwrap();
        assert_eq!(config.key, Some(Secret::new("wrong-key")));
        let err = error(&with_proxy("hub_address = \"h:1\"\nkey = \"\""));
        assert!(
            err.starts_with("/etc/tunnelize/tunnel.toml:2:7: `key`: the key is empty"),
            "{err}"
        );
    }

    #[test]
    fn the_key_is_optional_but_never_printed() {
        let secret = "tunnel-secret-never-printed";
        let config = parse(&with_proxy(&format!(
            "hub_address = \"h:1\"\nkey = \"{secret}\""
        )))
        .unwrap();
        assert_eq!(config.key.as_ref().map(Secret::expose), Some(secret));
        assert!(!format!("{config:?}").contains(secret));
        let err = parse(&with_proxy(&format!(
            "hub_address = \"h:1\"\nkey = \"{secret}\"\nkey_env = \"X\""
        )))
        .unwrap_err();
        assert!(!err.to_string().contains(secret) && !format!("{err:?}").contains(secret));
    }
}
