//! The hub daemon's configuration (`/etc/tunnelize/hub.toml`).
//!
//! The file is deserialized into private `Raw*` structs that keep every value's span, then
//! checked and converted into [`HubConfig`]. Rules that involve several keys (auth, TLS file
//! pairs, unique keys) live here; `[services.NAME]` tables live in `service`, value syntaxes in
//! `values`. This module does not open sockets or read certificates: it only says what the hub
//! should do.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::{Spanned, Value};

use super::admin::{AdminConfig, RawAdmin, check_admin};
use super::cluster::{ClusterConfig, RawCluster, check_cluster};
use super::error::ConfigError;
use super::file::{self, ConfigFile};
use super::limits::{Limits, RawLimits, check_limits};
use super::secret_source::{SecretFields, SecretNames, resolve_stored_key};
use super::service::{RawService, ServiceConfig, check_services};
use super::source::Source;
use super::values::{MIN_HUB_KEY_LEN, TlsFiles, check_name, count_in, is_hostname, parse_duration};
use crate::secret::StoredKey;

const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7700);
const DEFAULT_STATE_DIR: &str = "/var/lib/tunnelize";
const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_LINK_TIMEOUT: Duration = Duration::from_secs(10);
/// Default admin socket of the hub.
pub const DEFAULT_HUB_SOCKET: &str = "/run/tunnelize/hub.sock";
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(2 * 60 * 60);
const DEFAULT_LOCKOUT_FAILURES: u32 = 5;
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_LOCKOUT_DURATION: Duration = Duration::from_secs(30 * 60);
const DEFAULT_RECONNECT_GRACE: Duration = Duration::from_secs(60);

/// The hub's configuration, checked: every value is valid and the rules between keys hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// `listen` (default `0.0.0.0:7700`): address of the TLS listener for control and link
    /// connections from tunnels. Port 0 lets the operating system pick one (for tests).
    pub listen: SocketAddr,
    /// `state_dir` (default `/var/lib/tunnelize`): where the hub keeps state such as its
    /// generated certificate. Relative paths are resolved against the config file's directory.
    pub state_dir: PathBuf,
    /// `allow_no_auth` (default false): accept tunnels that present no key. Only allowed when
    /// `listen` is a loopback address.
    pub allow_no_auth: bool,
    /// `[tls]`: the certificate and key to serve; `None` means a generated self-signed
    /// certificate in `state_dir`.
    pub tls: Option<TlsFiles>,
    /// `[[keys]]`: the tunnel keys the hub accepts. Names and key values are unique.
    pub keys: Vec<TunnelKey>,
    /// `[services.NAME]`: the public services, sorted by name.
    pub services: Vec<ServiceConfig>,
    /// `heartbeat_interval` (default `10s`): how often tunnels send a heartbeat; the hub drops a
    /// tunnel that stays silent for several intervals.
    pub heartbeat_interval: Duration,
    /// `handshake_timeout` (default `10s`): how long a new connection may take to finish its
    /// TLS handshake and send its first message.
    pub handshake_timeout: Duration,
    /// `link_timeout` (default `10s`): how long the hub waits for a tunnel to reach its target.
    pub link_timeout: Duration,
    /// `idle_timeout` (default `2h`): a client connection with no bytes in either direction for
    /// this long is closed.
    pub idle_timeout: Duration,
    /// `[admin]`: the monitoring/control API (socket, optional TLS listener and key).
    pub admin: AdminConfig,
    /// `lockout_failures` (default 5, 1 to 1000): failed logins in a row from one address
    /// (tunnel key, link token, monitoring key) that lock it out.
    pub lockout_failures: u32,
    /// `lockout_duration` (default `30m`): how long a locked-out address is refused, even with
    /// the right key.
    pub lockout_duration: Duration,
    /// `[limits]`: tunnels, proxies and clients the hub serves at most.
    pub limits: Limits,
    /// `shutdown_timeout` (default `30s`): on SIGTERM the hub stops accepting and waits this
    /// long for its clients to finish before it closes the rest.
    pub shutdown_timeout: Duration,
    /// `reconnect_grace` (default `60s`; `"0s"` turns it off): how long the ports and
    /// hostnames of a tunnel the hub lost stay held for its key name, so that its tunnel gets
    /// them back when it reconnects and no other key takes them meanwhile. A daemon that stops
    /// holds its live tunnels' claims the same way across its restart (`state_dir/held.json`,
    /// `hub::registry::persist`).
    pub reconnect_grace: Duration,
    /// `[cluster]` (optional): the Redis this hub shares its claims, membership and lockouts
    /// in with the cluster's other hubs. `None`: a hub on its own, with no Redis anywhere.
    pub cluster: Option<Box<ClusterConfig>>,
}

/// `[[keys]]`: one tunnel key the hub accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelKey {
    /// `name`: who the key belongs to; shown in logs, never secret.
    pub name: String,
    /// The key, from `key`, `key_file`, `key_env` or `key_hash` (kept as its digest).
    pub key: StoredKey,
    /// `hostnames` (default none): full hostnames outside the http services' domains that
    /// tunnels using this key may claim; `*.example.org` allows every name under example.org.
    pub hostnames: Vec<String>,
}

impl TunnelKey {
    /// Whether this key may claim `host` as a custom hostname.
    pub fn allows_hostname(&self, host: &str) -> bool {
        self.hostnames
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => {
                    host.len() > parent.len() + 1
                        && host.ends_with(parent)
                        && host[..host.len() - parent.len()].ends_with('.')
                }
                None => pattern == host,
            })
    }
}

impl HubConfig {
    /// Reads and checks the hub config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        file::load(path)
    }

    /// Checks hub config `text`. `origin` names the file in errors and anchors relative paths;
    /// `key_file`s are read and `key_env` variables looked up.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        file::parse(text, origin)
    }
}

/// The hub's file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHub {
    listen: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    allow_no_auth: Option<Spanned<bool>>,
    tls: Option<Spanned<RawTls>>,
    #[serde(default)]
    keys: Vec<RawKey>,
    #[serde(default)]
    services: BTreeMap<Spanned<String>, RawService>,
    heartbeat_interval: Option<Spanned<Value>>,
    handshake_timeout: Option<Spanned<Value>>,
    link_timeout: Option<Spanned<Value>>,
    idle_timeout: Option<Spanned<Value>>,
    admin: Option<RawAdmin>,
    lockout_failures: Option<Spanned<i64>>,
    lockout_duration: Option<Spanned<Value>>,
    limits: Option<RawLimits>,
    shutdown_timeout: Option<Spanned<Value>>,
    reconnect_grace: Option<Spanned<Value>>,
    cluster: Option<Spanned<RawCluster>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: Spanned<String>,
    key: Option<Spanned<Value>>,
    key_file: Option<Spanned<String>>,
    key_env: Option<Spanned<String>>,
    key_hash: Option<Spanned<String>>,
    hostnames: Option<Spanned<Vec<String>>>,
}

impl RawKey {
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

impl ConfigFile for HubConfig {
    type Raw = RawHub;

    fn check(raw: RawHub, src: &Source<'_>) -> Result<Self, ConfigError> {
        let listen = src.check_or(raw.listen.as_ref(), "`listen`", DEFAULT_LISTEN, |text| {
            parse_listen(text)
        })?;
        let state_dir = match &raw.state_dir {
            Some(dir) => src.non_empty_path(dir, "`state_dir`")?,
            None => PathBuf::from(DEFAULT_STATE_DIR),
        };
        let allow_no_auth = check_allow_no_auth(src, raw.allow_no_auth.as_ref(), listen)?;
        let tls = raw
            .tls
            .as_ref()
            .map(|tls| check_tls(src, tls))
            .transpose()?;
        let keys = check_keys(src, &raw.keys, allow_no_auth)?;
        let services = check_services(src, &raw.services, listen)?;
        let duration = |value: &Option<Spanned<Value>>, key: &str, default| {
            src.check_or(value.as_ref(), &format!("`{key}`"), default, parse_duration)
        };
        Ok(HubConfig {
            listen,
            state_dir,
            allow_no_auth,
            tls,
            keys,
            services,
            heartbeat_interval: duration(
                &raw.heartbeat_interval,
                "heartbeat_interval",
                DEFAULT_HEARTBEAT_INTERVAL,
            )?,
            handshake_timeout: duration(
                &raw.handshake_timeout,
                "handshake_timeout",
                DEFAULT_HANDSHAKE_TIMEOUT,
            )?,
            link_timeout: duration(&raw.link_timeout, "link_timeout", DEFAULT_LINK_TIMEOUT)?,
            idle_timeout: duration(&raw.idle_timeout, "idle_timeout", DEFAULT_IDLE_TIMEOUT)?,
            admin: check_admin(src, raw.admin.as_ref(), DEFAULT_HUB_SOCKET, true)?,
            lockout_failures: check_lockout_failures(src, raw.lockout_failures.as_ref())?,
            lockout_duration: duration(
                &raw.lockout_duration,
                "lockout_duration",
                DEFAULT_LOCKOUT_DURATION,
            )?,
            limits: check_limits(src, raw.limits.as_ref())?,
            shutdown_timeout: duration(
                &raw.shutdown_timeout,
                "shutdown_timeout",
                DEFAULT_SHUTDOWN_TIMEOUT,
            )?,
            reconnect_grace: src.check_or(
                raw.reconnect_grace.as_ref(),
                "`reconnect_grace`",
                DEFAULT_RECONNECT_GRACE,
                parse_grace,
            )?,
            cluster: check_cluster(src, raw.cluster.as_ref())?.map(Box::new),
        })
    }
}

/// `allow_no_auth`: only on a loopback `listen` address, where no one else can connect.
fn check_allow_no_auth(
    src: &Source<'_>,
    allow: Option<&Spanned<bool>>,
    listen: SocketAddr,
) -> Result<bool, ConfigError> {
    match allow {
        Some(allow) if *allow.get_ref() && !listen.ip().is_loopback() => Err(src.error_at(
            allow.span(),
            format!(
                "`allow_no_auth = true` is only allowed when `listen` is a loopback address, \
                 but listen is {listen}; add a [[keys]] entry instead, or listen on \
                 127.0.0.1 for local testing"
            ),
        )),
        Some(allow) => Ok(*allow.get_ref()),
        None => Ok(false),
    }
}

/// `lockout_failures`: 1 to 1000 failed logins in a row.
fn check_lockout_failures(
    src: &Source<'_>,
    value: Option<&Spanned<i64>>,
) -> Result<u32, ConfigError> {
    src.check_or(value, "`lockout_failures`", DEFAULT_LOCKOUT_FAILURES, |n| {
        // At most 1000, so it fits.
        count_in(*n, 1..=1000).map(|n| n as u32)
    })
}

/// A duration, or zero written with a unit (`"0s"`) to turn the grace off.
fn parse_grace(value: &Value) -> Result<Duration, String> {
    if let Value::String(text) = value {
        let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = &text[digits.len()..];
        let zero = !digits.is_empty() && digits.bytes().all(|b| b == b'0');
        if zero && ["ms", "s", "m", "h"].contains(&unit) {
            return Ok(Duration::ZERO);
        }
    }
    parse_duration(value).map_err(|problem| format!("{problem}; or \"0s\" to turn it off"))
}

/// The hub's `listen`: an IP address and port, no host name.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!(
            "{text:?} is not an IP address and port; write one like \"0.0.0.0:7700\" or \
             \"[::]:7700\" (host names are not allowed here)"
        )
    })
}

fn check_tls(src: &Source<'_>, tls: &Spanned<RawTls>) -> Result<TlsFiles, ConfigError> {
    let raw = tls.get_ref();
    match (&raw.cert_file, &raw.key_file) {
        (Some(cert), Some(key)) => Ok(TlsFiles {
            cert_file: src.non_empty_path(cert, "`cert_file` in [tls]")?,
            key_file: src.non_empty_path(key, "`key_file` in [tls]")?,
        }),
        (Some(_), None) | (None, Some(_)) | (None, None) => Err(src.error_at(
            tls.span(),
            "[tls] needs both `cert_file` and `key_file`; set both, or remove [tls] to use a \
             generated self-signed certificate",
        )),
    }
}

/// `[[keys]]`: at least one unless `allow_no_auth`, each with its own name and key.
fn check_keys(
    src: &Source<'_>,
    raw_keys: &[RawKey],
    allow_no_auth: bool,
) -> Result<Vec<TunnelKey>, ConfigError> {
    let mut keys: Vec<TunnelKey> = Vec::with_capacity(raw_keys.len());
    for raw in raw_keys {
        let key = check_key(src, raw, &keys)?;
        keys.push(key);
    }
    if keys.is_empty() && !allow_no_auth {
        return Err(src.error_in_file(
            "no tunnel keys are configured, so no tunnel could connect; add a [[keys]] entry \
             or, for loopback-only testing, allow_no_auth = true",
        ));
    }
    Ok(keys)
}

/// One `[[keys]]` entry; its name and its key must differ from those of the `earlier` entries.
fn check_key(
    src: &Source<'_>,
    raw: &RawKey,
    earlier: &[TunnelKey],
) -> Result<TunnelKey, ConfigError> {
    let name = raw.name.get_ref();
    src.check(&raw.name, "`name` in [[keys]]", |name| check_name(name))?;
    if earlier.iter().any(|key| key.name == *name) {
        return Err(src.error_at(
            raw.name.span(),
            format!("[[keys]] name `{name}` is used twice; give each key its own name"),
        ));
    }
    let fields = raw.secret_fields();
    let place = format!(" in [[keys]] `{name}`");
    let Some(secret) = resolve_stored_key(src, &fields, &place, MIN_HUB_KEY_LEN)? else {
        return Err(src.error_at(
            raw.name.span(),
            format!(
                "[[keys]] `{name}` has no key; set `key_file` (a file holding the key), \
                 `key_env` (an environment variable holding it), `key_hash` (its digest, \
                 from `tunnelize hash-key`) or `key`"
            ),
        ));
    };
    if let Some(twin) = earlier.iter().find(|key| key.key == secret) {
        let span = fields
            .given()
            .next()
            .map_or_else(|| raw.name.span(), |(_, span)| span);
        return Err(src.error_at(
            span,
            format!(
                "[[keys]] `{name}` has the same key as `{}`; every tunnel needs its own key \
                 (generate one with `tunnelize gen-key`)",
                twin.name
            ),
        ));
    }
    let what = format!("`hostnames` in [[keys]] `{name}`");
    let hostnames = src.check_opt(raw.hostnames.as_ref(), &what, |patterns| {
        patterns
            .iter()
            .map(|pattern| hostname_pattern(pattern))
            .collect()
    })?;
    Ok(TunnelKey {
        name: name.clone(),
        key: secret,
        hostnames: hostnames.unwrap_or_default(),
    })
}

/// A `hostnames` entry: a full hostname (`app.example.org`) or every name under one
/// (`*.example.org`), lowercased.
fn hostname_pattern(pattern: &str) -> Result<String, String> {
    let lower = pattern.to_ascii_lowercase();
    let bare = lower.strip_prefix("*.").unwrap_or(&lower);
    if is_hostname(bare) && bare.contains('.') {
        Ok(lower)
    } else {
        Err(format!(
            "{pattern:?} is not a hostname like \"app.example.org\" or a pattern like \
             \"*.example.org\""
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::env::VarError;
    use std::io::Write;

    use super::*;
    use crate::config::{PortRange, ServiceKind, TcpService};

    const ORIGIN: &str = "/etc/tunnelize/hub.toml";
    const ALICE_KEY: &str = "alice-0123456789abcdef";
    const KEYS: &str = "[[keys]]\nname = \"alice\"\nkey = \"alice-0123456789abcdef\"\n";

    fn no_env(_: &str) -> Result<String, VarError> {
        Err(VarError::NotPresent)
    }

    fn parse(text: &str) -> Result<HubConfig, ConfigError> {
        file::parse_with_env::<HubConfig>(text, Path::new(ORIGIN), &no_env)
    }

    /// The error for `text`, as the operator sees it.
    fn error(text: &str) -> String {
        match parse(text) {
            Ok(config) => panic!("expected an error, parsed {config:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn a_file_with_only_a_key_gets_every_default() {
        let config = parse(KEYS).unwrap();
        assert_eq!(
            config,
            HubConfig {
                listen: "0.0.0.0:7700".parse().unwrap(),
                state_dir: PathBuf::from("/var/lib/tunnelize"),
                allow_no_auth: false,
                tls: None,
                keys: vec![TunnelKey {
                    name: "alice".into(),
                    key: StoredKey::from(ALICE_KEY),
                    hostnames: vec![],
                }],
                services: vec![],
                heartbeat_interval: Duration::from_secs(10),
                handshake_timeout: Duration::from_secs(10),
                link_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(7200),
                admin: AdminConfig {
                    socket: Some(PathBuf::from(DEFAULT_HUB_SOCKET)),
                    ..AdminConfig::default()
                },
                lockout_failures: 5,
                lockout_duration: Duration::from_secs(1800),
                limits: Limits::default(),
                shutdown_timeout: Duration::from_secs(30),
                reconnect_grace: Duration::from_secs(60),
                cluster: None,
            }
        );
    }

    #[test]
    fn a_cluster_table_is_checked_and_its_password_comes_from_a_secret_source() {
        let text = format!(
            "{KEYS}\n[cluster]\nredis = \"redis://10.0.0.5:6379\"\nname = \"hub-a\"\n\
             advertise = \"hub-a.example.com:7700\"\npassword = \"s3cret-redis\"\n"
        );
        let cluster = parse(&text).unwrap().cluster.expect("[cluster] is read");
        assert_eq!(cluster.redis, "redis://10.0.0.5:6379");
        assert_eq!(cluster.name, "hub-a");
        assert_eq!(cluster.advertise, "hub-a.example.com:7700");
        assert_eq!(cluster.lease, Duration::from_secs(10));
        assert_eq!(
            cluster.password,
            Some(crate::secret::Secret::new("s3cret-redis"))
        );
        assert!(!format!("{cluster:?}").contains("s3cret-redis"));

        let missing = parse(&format!("{KEYS}\n[cluster]\nredis = \"redis://h:1\"\n"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("needs `name`"), "{missing}");
        let both = format!(
            "{KEYS}\n[cluster]\nredis = \"redis://h:1\"\nname = \"a\"\nadvertise = \"a:1\"\n\
             password = \"x\"\npassword_env = \"X\"\n"
        );
        let both = parse(&both).unwrap_err().to_string();
        assert!(
            both.contains("`password` and `password_env` are both set"),
            "{both}"
        );
        let short = format!(
            "{KEYS}\n[cluster]\nredis = \"redis://h:1\"\nname = \"a\"\nadvertise = \"a:1\"\n\
             lease = \"100ms\"\n"
        );
        let short = parse(&short).unwrap_err().to_string();
        assert!(short.contains("from 1s to 10m"), "{short}");
        let plain_with_ca = format!(
            "{KEYS}\n[cluster]\nredis = \"redis://h:1\"\nname = \"a\"\nadvertise = \"a:1\"\n\
             ca_file = \"/etc/tunnelize/redis-ca.pem\"\n"
        );
        let plain_with_ca = parse(&plain_with_ca).unwrap_err().to_string();
        assert!(
            plain_with_ca.contains("hub.toml:9:") && plain_with_ca.contains("rediss://"),
            "{plain_with_ca}"
        );
        let tls_with_ca = format!(
            "{KEYS}\n[cluster]\nredis = \"rediss://h:1\"\nname = \"a\"\nadvertise = \"a:1\"\n\
             ca_file = \"/etc/tunnelize/redis-ca.pem\"\n"
        );
        let tls = parse(&tls_with_ca).unwrap().cluster.unwrap();
        assert_eq!(
            tls.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/tunnelize/redis-ca.pem"))
        );
    }

    #[test]
    fn key_hostnames_are_full_names_or_wildcards_under_one() {
        assert_eq!(
            hostname_pattern("App.Example.org"),
            Ok("app.example.org".into())
        );
        assert_eq!(
            hostname_pattern("*.Example.org"),
            Ok("*.example.org".into())
        );
        for bad in [
            "app",
            "*.org",
            "*",
            "a..b",
            "*.*.example.org",
            "bad_name.example",
        ] {
            let err = hostname_pattern(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("{bad:?} is not a hostname")),
                "{err}"
            );
        }
    }

    #[test]
    fn reconnect_grace_is_a_duration_or_zero_to_turn_it_off() {
        let grace = |text: &str| parse(&format!("reconnect_grace = {text}\n{KEYS}"));
        assert_eq!(
            grace("\"90s\"").unwrap().reconnect_grace,
            Duration::from_secs(90)
        );
        for zero in ["\"0s\"", "\"0ms\"", "\"00m\"", "\"0h\""] {
            assert_eq!(
                grace(zero).unwrap().reconnect_grace,
                Duration::ZERO,
                "{zero}"
            );
        }
        for (bad, problem) in [
            ("\"0\"", "\"0\" has no unit"),
            ("\"1d\"", "\"1d\" has an unknown unit"),
            ("0", "expected a string, found integer"),
            ("\"25h\"", "\"25h\" is longer than the maximum of 24h"),
        ] {
            let err = grace(bad).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!(
                    "/etc/tunnelize/hub.toml:1:19: `reconnect_grace`: {problem}"
                )),
                "{err}"
            );
        }
        let err = grace("\"s\"").unwrap_err().to_string();
        assert!(err.ends_with("; or \"0s\" to turn it off"), "{err}");
    }

    #[test]
    fn every_key_can_be_set() {
        let text = format!(
            "listen = \"[::]:8443\"\nstate_dir = \"state\"\nheartbeat_interval = \"500ms\"\n\
             handshake_timeout = \"2m\"\nlink_timeout = \"1h\"\nidle_timeout = \"5m\"\n\
             [tls]\ncert_file = \"/etc/ssl/hub.pem\"\nkey_file = \"hub.key\"\n{KEYS}\
             [services.web]\nkind = \"tcp\"\nlisten = \"127.0.0.1\"\nports = 8080\n\
             [services.ssh]\nkind = \"tcp\"\nports = \"20000-20100\"\n"
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.listen, "[::]:8443".parse().unwrap());
        assert_eq!(config.state_dir, PathBuf::from("/etc/tunnelize/state"));
        assert_eq!(
            config.tls,
            Some(TlsFiles {
                cert_file: PathBuf::from("/etc/ssl/hub.pem"),
                key_file: PathBuf::from("/etc/tunnelize/hub.key"),
            })
        );
        assert_eq!(config.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(config.handshake_timeout, Duration::from_secs(120));
        assert_eq!(config.link_timeout, Duration::from_secs(3600));
        assert_eq!(config.idle_timeout, Duration::from_secs(300));
        // Sorted by name, whatever the order in the file.
        assert_eq!(
            config.services,
            vec![
                ServiceConfig {
                    name: "ssh".into(),
                    kind: ServiceKind::Tcp(TcpService {
                        listen: "0.0.0.0".parse().unwrap(),
                        ports: PortRange {
                            start: 20000,
                            end: 20100
                        },
                    }),
                },
                ServiceConfig {
                    name: "web".into(),
                    kind: ServiceKind::Tcp(TcpService {
                        listen: "127.0.0.1".parse().unwrap(),
                        ports: PortRange {
                            start: 8080,
                            end: 8080
                        },
                    }),
                },
            ]
        );
        assert_eq!(config.services[0].kind.name(), "tcp");
    }

    #[test]
    fn unknown_key_in_a_service_names_file_line_table_and_expected_keys() {
        let text =
            format!("{KEYS}\n[services.ssh]\nkind = \"tcp\"\nports = \"2222\"\n    foo = 1\n");
        let err = error(&text);
        assert!(
            err.starts_with(
                "/etc/tunnelize/hub.toml:8:5: unknown key `foo` in [services.ssh]; expected one \
                 of `kind`, `listen`, `ports`"
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_in_an_inline_service_table_is_found_too() {
        let text = format!("services.ssh = {{ kind = \"tcp\", port = 22 }}\n{KEYS}");
        let err = error(&text);
        assert!(err.starts_with("/etc/tunnelize/hub.toml:1:32: "), "{err}");
        assert!(
            err.contains("unknown key `port` in [services.ssh]"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_at_the_top_level_and_in_keys_entries_are_refused() {
        let err = error(&format!("lisen = \"0.0.0.0:1\"\n{KEYS}"));
        assert!(
            err.starts_with(
                "/etc/tunnelize/hub.toml:1:1: unknown key `lisen` at the top level; expected one of"
            ),
            "{err}"
        );
        let err = error(&format!("{KEYS}[[keys]]\nname = \"bob\"\nsecret = \"x\"\n"));
        assert!(
            err.starts_with(
                "/etc/tunnelize/hub.toml:6:1: unknown key `secret` in [[keys]] entry 2; expected"
            ),
            "{err}"
        );
        let err = error(&format!("{KEYS}[tls]\ncert = \"a\"\n"));
        assert!(
            err.contains(":5:1: unknown key `cert` in [tls]; expected `cert_file` or `key_file`"),
            "{err}"
        );
    }

    #[test]
    fn wrong_types_name_the_key_and_line() {
        let err = error(&format!("\n\n\nlisten = 7700\n{KEYS}"));
        assert_eq!(
            err,
            "/etc/tunnelize/hub.toml:4:10: `listen`: invalid type: integer `7700`, expected a string"
        );
        let err = error(&format!("allow_no_auth = \"yes\"\n{KEYS}"));
        assert!(
            err.starts_with("/etc/tunnelize/hub.toml:1:17: `allow_no_auth`"),
            "{err}"
        );
        let err = error(&format!("{KEYS}[services]\nssh = 3\n"));
        assert!(
            err.starts_with("/etc/tunnelize/hub.toml:5:7: `ssh` in [services]"),
            "{err}"
        );
    }

    #[test]
    fn toml_syntax_errors_have_a_line() {
        let err = error(&format!("listen = \n{KEYS}"));
        assert!(err.starts_with("/etc/tunnelize/hub.toml:1:10: "), "{err}");
        assert!(err.contains("invalid TOML"), "{err}");
        let err = error(&format!(
            "listen = \"0.0.0.0:1\"\nlisten = \"0.0.0.0:2\"\n{KEYS}"
        ));
        assert!(
            err.starts_with("/etc/tunnelize/hub.toml:2:1: duplicate key `listen`"),
            "{err}"
        );
    }

    #[test]
    fn missing_required_keys_name_their_table() {
        let err = error(&format!("{KEYS}[services.ssh]\nports = 22\n"));
        assert_eq!(
            err,
            "/etc/tunnelize/hub.toml:4:1: missing required key `kind` in [services.ssh]; add it"
        );
        let err = error("[[keys]]\nkey = \"alice-0123456789abcdef\"\n");
        assert!(
            err.starts_with(
                "/etc/tunnelize/hub.toml:1:1: missing required key `name` in [[keys]] entry 1"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_hub_without_keys_is_refused_with_the_fix() {
        let err = error("listen = \"0.0.0.0:7700\"\n");
        assert_eq!(
            err,
            "/etc/tunnelize/hub.toml: no tunnel keys are configured, so no tunnel could connect; \
             add a [[keys]] entry or, for loopback-only testing, allow_no_auth = true"
        );
    }

    #[test]
    fn allow_no_auth_only_on_loopback() {
        let config = parse("listen = \"127.0.0.1:7700\"\nallow_no_auth = true\n").unwrap();
        assert!(config.allow_no_auth && config.keys.is_empty());
        let config = parse("listen = \"[::1]:7700\"\nallow_no_auth = true\n").unwrap();
        assert!(config.allow_no_auth);
        let err = error("\nallow_no_auth = true\n");
        assert!(err.starts_with("/etc/tunnelize/hub.toml:2:17: `allow_no_auth = true` is only allowed when `listen` is a loopback address, but listen is 0.0.0.0:7700"), "{err}");
        let err = error("listen = \"10.0.0.1:7700\"\nallow_no_auth = true\n");
        assert!(err.contains("add a [[keys]] entry instead"), "{err}");
        assert!(parse("allow_no_auth = false\nlisten = \"127.0.0.1:1\"\n").is_err());
    }

    #[test]
    fn bad_listen_addresses_are_refused() {
        let err = error(&format!("listen = \"hub.example.com:7700\"\n{KEYS}"));
        assert!(err.starts_with("/etc/tunnelize/hub.toml:1:10: `listen`: \"hub.example.com:7700\" is not an IP address and port"), "{err}");
        // Port 0 lets the operating system pick one, for tests.
        assert!(parse(&format!("listen = \"127.0.0.1:0\"\n{KEYS}")).is_ok());
        let err = error(&format!("state_dir = \"\"\n{KEYS}"));
        assert!(err.contains(":1:13: `state_dir` is empty"), "{err}");
    }

    #[test]
    fn tls_needs_both_files() {
        let err = error(&format!("{KEYS}[tls]\ncert_file = \"hub.pem\"\n"));
        assert!(
            err.starts_with(
                "/etc/tunnelize/hub.toml:4:1: [tls] needs both `cert_file` and `key_file`"
            ),
            "{err}"
        );
        let err = error(&format!("{KEYS}[tls]\nkey_file = \"hub.key\"\n"));
        assert!(err.contains("[tls] needs both"), "{err}");
    }

    #[test]
    fn key_names_must_be_valid_and_unique() {
        let err = error("[[keys]]\nname = \"Alice Smith\"\nkey = \"alice-0123456789abcdef\"\n");
        assert!(err.starts_with("/etc/tunnelize/hub.toml:2:8: `name` in [[keys]]: \"Alice Smith\" is not a valid name"), "{err}");
        let err = error(&format!(
            "{KEYS}[[keys]]\nname = \"alice\"\nkey = \"other-0123456789abcdef\"\n"
        ));
        assert!(
            err.starts_with("/etc/tunnelize/hub.toml:5:8: [[keys]] name `alice` is used twice"),
            "{err}"
        );
    }

    #[test]
    fn every_key_entry_needs_exactly_one_distinct_secret() {
        let err = error("[[keys]]\nname = \"alice\"\n");
        assert!(
            err.starts_with(
                "/etc/tunnelize/hub.toml:2:8: [[keys]] `alice` has no key; set `key_file`"
            ),
            "{err}"
        );
        let err = error(&format!(
            "{KEYS}[[keys]]\nname = \"bob\"\nkey = \"{ALICE_KEY}\"\n"
        ));
        assert!(
            err.starts_with(
                "/etc/tunnelize/hub.toml:6:7: [[keys]] `bob` has the same key as `alice`"
            ),
            "{err}"
        );
        assert!(!err.contains(ALICE_KEY), "{err}");
        let err = error(
            "[[keys]]\nname = \"alice\"\nkey = \"alice-0123456789abcdef\"\nkey_env = \"X\"\n",
        );
        assert!(err.starts_with("/etc/tunnelize/hub.toml:4:11: `key` and `key_env` are both set in [[keys]] `alice`; keep exactly one"), "{err}");
    }

    #[test]
    fn keys_come_from_files_relative_to_the_config_and_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = std::fs::File::create(dir.path().join("bob.key")).unwrap();
        writeln!(file, "bob-0123456789abcdef  ").unwrap();
        let origin = dir.path().join("hub.toml");
        let env = |name: &str| match name {
            "TUNNELIZE_TEST_CAROL_KEY" => Ok("carol-0123456789abcdef".to_string()),
            _ => Err(VarError::NotPresent),
        };
        let text = "[[keys]]\nname = \"bob\"\nkey_file = \"bob.key\"\n\
                    [[keys]]\nname = \"carol\"\nkey_env = \"TUNNELIZE_TEST_CAROL_KEY\"\n";
        let config = file::parse_with_env::<HubConfig>(text, &origin, &env).unwrap();
        assert!(config.keys[0].key.matches("bob-0123456789abcdef"));
        assert!(config.keys[1].key.matches("carol-0123456789abcdef"));
    }

    #[test]
    fn keys_may_be_stored_as_hashes() {
        let alice = StoredKey::hash_line(&crate::secret::Secret::new(ALICE_KEY));
        let text = format!(
            "[[keys]]\nname = \"alice\"\nkey_hash = \"{alice}\"\n\
             [admin]\nlisten = \"127.0.0.1:7701\"\nkey_hash = \"{}\"\n",
            StoredKey::hash_line(&crate::secret::Secret::new("monitor-0123456789abcdef"))
        );
        let config = parse(&text).unwrap();
        assert!(config.keys[0].key.matches(ALICE_KEY));
        assert!(!config.keys[0].key.matches("alice-0123456789abcdeX"));
        let monitoring = config.admin.key.expect("the monitoring key hash");
        assert!(monitoring.matches("monitor-0123456789abcdef"));
        assert!(!format!("{:?}", config.keys[0]).contains(&alice[7..]));

        // A hashed key and the same key inline are still the same key.
        let err = error(&format!(
            "{KEYS}[[keys]]\nname = \"bob\"\nkey_hash = \"{alice}\"\n"
        ));
        assert!(
            err.starts_with(
                "/etc/tunnelize/hub.toml:6:12: [[keys]] `bob` has the same key as `alice`"
            ),
            "{err}"
        );
        let err = error(&format!("{KEYS}key_hash = \"{alice}\"\n"));
        assert!(
            err.starts_with("/etc/tunnelize/hub.toml:4:12: `key` and `key_hash` are both set in [[keys]] `alice`"),
            "{err}"
        );
        let err = error("[[keys]]\nname = \"alice\"\nkey_hash = \"sha256:0123\"\n");
        assert!(
            err.starts_with(
                "/etc/tunnelize/hub.toml:3:12: `key_hash` in [[keys]] `alice`: the digest"
            ),
            "{err}"
        );
        let err = error(&format!("{KEYS}[admin]\nkey_hash = \"md5:00\"\n"));
        assert!(
            err.starts_with(
                "/etc/tunnelize/hub.toml:5:12: `key_hash` in [admin]: expected \"sha256:\""
            ),
            "{err}"
        );
    }

    #[test]
    fn bad_durations_name_the_key_and_line() {
        let err = error(&format!("heartbeat_interval = \"0s\"\n{KEYS}"));
        assert!(
            err.starts_with("/etc/tunnelize/hub.toml:1:22: `heartbeat_interval`: \"0s\" is zero"),
            "{err}"
        );
        let err = error(&format!("link_timeout = 10\n{KEYS}"));
        assert!(
            err.starts_with(
                "/etc/tunnelize/hub.toml:1:16: `link_timeout`: expected a string, found integer"
            ),
            "{err}"
        );
        let err = error(&format!("handshake_timeout = \"10 seconds\"\n{KEYS}"));
        assert!(
            err.contains("`handshake_timeout`: \"10 seconds\" has an unknown unit"),
            "{err}"
        );
    }

    #[test]
    fn secrets_never_appear_in_errors_or_debug_output() {
        let secret = "s3cr3t-value-that-must-not-leak";
        let config = parse(&format!("[[keys]]\nname = \"alice\"\nkey = \"{secret}\"\n")).unwrap();
        assert!(!format!("{config:?}").contains(secret));
        for text in [
            format!("[[keys]]\nname = \"alice\"\nkey = \"{secret}\"\nkey_file = \"x\"\n"),
            format!(
                "[[keys]]\nname = \"alice\"\nkey = \"{secret}\"\n[[keys]]\nname = \"bob\"\nkey = \"{secret}\"\n"
            ),
            format!("[[keys]]\nname = \"alice\"\nkey = \"{secret} \"\n"),
            format!("[[keys]]\nname = \"alice\"\nkey = \"{secret}\"\nfoo = 1\n"),
            format!("[[keys]]\nname = \"alice\"\nkey = \"{secret}\n"),
            "[[keys]]\nname = \"alice\"\nkey = 1234567890123456789\n".to_string(),
            "[[keys]]\nname = \"alice\"\nkey = \"short\"\n".to_string(),
        ] {
            let err = parse(&text).unwrap_err();
            for shown in [err.to_string(), format!("{err:?}")] {
                assert!(!shown.contains(secret), "{shown}");
                assert!(!shown.contains("1234567890123456789"), "{shown}");
                assert!(!shown.contains("\"short\""), "{shown}");
            }
        }
    }

    #[test]
    fn keys_may_allow_custom_hostnames_by_name_or_wildcard() {
        let text = "[[keys]]\nname = \"bob\"\nkey = \"bob-0123456789abcdef\"\n\
                    hostnames = [\"App.Example.org\", \"*.bob.example.net\"]\n";
        let config = parse(text).unwrap();
        let key = &config.keys[0];
        assert!(key.allows_hostname("app.example.org"));
        assert!(key.allows_hostname("x.bob.example.net"));
        assert!(key.allows_hostname("a.b.bob.example.net"));
        assert!(
            !key.allows_hostname("bob.example.net"),
            "a wildcard needs a label before it"
        );
        assert!(!key.allows_hostname("xbob.example.net"));
        assert!(!key.allows_hostname("other.example.org"));
        let err = error(
            "[[keys]]\nname = \"bob\"\nkey = \"bob-0123456789abcdef\"\nhostnames = [\"not a host\"]\n",
        );
        assert!(
            err.contains(":4:") && err.contains("is not a hostname"),
            "{err}"
        );
    }
}
