//! Public services of the hub: `[services.NAME]` tables.
//!
//! A service table is deserialized as one flat struct holding the keys of every kind, so that
//! `toml` can report unknown keys with their line (serde's tagged enums lose spans). The `kind`
//! key then picks a builder, which rejects the keys its kind does not use. Adding a kind means:
//! a [`ServiceKind`] variant, its optional keys in [`RawService`], and a match arm in
//! `build_service` (plus `port_binding` if it binds ports). Rules between services, such as
//! overlapping ports, live here too.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;
use toml::{Spanned, Value};

use super::error::ConfigError;
use super::http::{HttpService, RawCertificate, RawHttpKeys, http_service};
use super::source::{Source, Span};
use super::values::{PortRange, check_name, count_in, parse_duration, parse_port_range};
use crate::protocol::Transport;

const DEFAULT_SERVICE_LISTEN: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
const DEFAULT_UDP_SESSION_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_UDP_MAX_SESSIONS: usize = 1024;
/// Every UDP session holds a socket on the tunnel host and a stream on a link connection.
const MAX_UDP_MAX_SESSIONS: usize = 16 * 1024;

/// `[services.NAME]`: one public service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// The table name: 1 to 64 of `a-z`, `0-9`, `_`, `-`.
    pub name: String,
    /// `kind` and the settings of that kind.
    pub kind: ServiceKind,
}

/// What a service forwards, chosen by its `kind` key, with that kind's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceKind {
    /// `kind = "tcp"`: raw TCP on a range of public ports.
    Tcp(TcpService),
    /// `kind = "http"`: HTTP/1.1 on one public port, routed by the Host of each request.
    Http(HttpService),
    /// `kind = "https"`: like `http`, with TLS terminated at the hub (certificate by SNI).
    Https(HttpService),
    /// `kind = "udp"`: UDP datagrams on a range of public ports, one session per client address.
    Udp(UdpService),
}

impl ServiceKind {
    /// The value of `kind` that selects this variant.
    pub fn name(&self) -> &'static str {
        match self {
            ServiceKind::Tcp(_) => "tcp",
            ServiceKind::Http(_) => "http",
            ServiceKind::Https(_) => "https",
            ServiceKind::Udp(_) => "udp",
        }
    }
}

/// Settings of a `kind = "tcp"` service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpService {
    /// `listen` (default `0.0.0.0`): address the public ports are bound on.
    pub listen: IpAddr,
    /// `ports` (required): the public ports, `"20000-20100"`, `"2222"` or `2222`.
    pub ports: PortRange,
}

/// Settings of a `kind = "udp"` service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpService {
    /// `listen` (default `0.0.0.0`): address the public ports are bound on.
    pub listen: IpAddr,
    /// `ports` (required): the public ports, `"20000-20100"`, `"2222"` or `2222`.
    pub ports: PortRange,
    /// `session_timeout` (default `60s`): a client address that exchanges no datagram for this
    /// long loses its session (and the tunnel its socket for it).
    pub session_timeout: Duration,
    /// `max_sessions` (default 1024): client sessions one proxy keeps at once; a new client
    /// beyond it evicts the session idle longest.
    pub max_sessions: usize,
}

/// A service table with the keys of every kind; [`build_service`] rejects the keys its kind
/// does not use. (A serde-tagged enum would lose the spans of unknown keys.)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    kind: Spanned<String>,
    listen: Option<Spanned<String>>,
    ports: Option<Spanned<Value>>,
    domain: Option<Spanned<String>>,
    trusted_proxies: Option<Spanned<Vec<String>>>,
    header_timeout: Option<Spanned<Value>>,
    response_timeout: Option<Spanned<Value>>,
    max_head_size: Option<Spanned<i64>>,
    body_read_ahead: Option<Spanned<i64>>,
    redirect_https: Option<Spanned<String>>,
    certificates: Option<Spanned<Vec<RawCertificate>>>,
    session_timeout: Option<Spanned<Value>>,
    max_sessions: Option<Spanned<i64>>,
}

impl RawService {
    /// Every optional key with its span when present.
    fn optional_keys(&self) -> Vec<(&'static str, Option<Span>)> {
        vec![
            ("listen", self.listen.as_ref().map(Spanned::span)),
            ("ports", self.ports.as_ref().map(Spanned::span)),
            ("domain", self.domain.as_ref().map(Spanned::span)),
            (
                "trusted_proxies",
                self.trusted_proxies.as_ref().map(Spanned::span),
            ),
            (
                "header_timeout",
                self.header_timeout.as_ref().map(Spanned::span),
            ),
            (
                "response_timeout",
                self.response_timeout.as_ref().map(Spanned::span),
            ),
            (
                "max_head_size",
                self.max_head_size.as_ref().map(Spanned::span),
            ),
            (
                "body_read_ahead",
                self.body_read_ahead.as_ref().map(Spanned::span),
            ),
            (
                "redirect_https",
                self.redirect_https.as_ref().map(Spanned::span),
            ),
            (
                "certificates",
                self.certificates.as_ref().map(Spanned::span),
            ),
            (
                "session_timeout",
                self.session_timeout.as_ref().map(Spanned::span),
            ),
            (
                "max_sessions",
                self.max_sessions.as_ref().map(Spanned::span),
            ),
        ]
    }

    fn http_keys(&self) -> RawHttpKeys<'_> {
        RawHttpKeys {
            listen: self.listen.as_ref(),
            domain: self.domain.as_ref(),
            trusted_proxies: self.trusted_proxies.as_ref(),
            header_timeout: self.header_timeout.as_ref(),
            response_timeout: self.response_timeout.as_ref(),
            max_head_size: self.max_head_size.as_ref(),
            body_read_ahead: self.body_read_ahead.as_ref(),
            redirect_https: self.redirect_https.as_ref(),
            certificates: self.certificates.as_ref(),
        }
    }
}

/// The optional keys a `kind = "tcp"` service may set.
const TCP_KEYS: &[&str] = &["listen", "ports"];

/// The optional keys a `kind = "udp"` service may set.
const UDP_KEYS: &[&str] = &["listen", "ports", "session_timeout", "max_sessions"];

/// The optional keys an `http` or `https` service may set.
const HTTP_KEYS: &[&str] = &[
    "listen",
    "domain",
    "trusted_proxies",
    "header_timeout",
    "response_timeout",
    "max_head_size",
    "body_read_ahead",
    "redirect_https",
    "certificates",
];

/// The `kind`s a service may have, for error messages.
const SERVICE_KINDS: &str = "\"tcp\", \"udp\", \"http\", \"https\"";

/// A checked service with the spans needed to report conflicts between services.
struct PlacedService {
    config: ServiceConfig,
    ports_span: Span,
}

pub(super) fn check_services(
    src: &Source<'_>,
    raw_services: &BTreeMap<Spanned<String>, RawService>,
    hub_listen: SocketAddr,
) -> Result<Vec<ServiceConfig>, ConfigError> {
    let mut placed: Vec<PlacedService> = Vec::with_capacity(raw_services.len());
    for (name, raw) in raw_services {
        let service = build_service(src, name, raw)?;
        let name = &service.config.name;
        if let Some((Transport::Tcp, ip, ports)) = port_binding(&service.config.kind)
            && hub_listen.port() != 0
            && !ports.is_os_assigned()
            && shares_address(ip, hub_listen.ip())
            && ports.contains(hub_listen.port())
        {
            return Err(src.error_at(
                service.ports_span.clone(),
                format!(
                    "`ports` in [services.{name}]: {ports} includes {}, the hub's own `listen` \
                     port; choose ports that exclude it",
                    hub_listen.port(),
                ),
            ));
        }
        for other in &placed {
            if let (Some((transport, ip, ports)), Some((other_transport, other_ip, other_ports))) = (
                port_binding(&service.config.kind),
                port_binding(&other.config.kind),
            ) && transport == other_transport
                && shares_address(ip, other_ip)
                && ports.overlaps(&other_ports)
            {
                return Err(src.error_at(
                    service.ports_span.clone(),
                    format!(
                        "`ports` in [services.{name}]: {ports} overlaps ports {other_ports} of \
                         [services.{}] on the same address; give each service its own ports",
                        other.config.name
                    ),
                ));
            }
        }
        placed.push(service);
    }
    Ok(placed.into_iter().map(|service| service.config).collect())
}

/// The transport, address and ports a service binds, if it binds ports. A TCP and a UDP
/// service may share a port number.
fn port_binding(kind: &ServiceKind) -> Option<(Transport, IpAddr, PortRange)> {
    match kind {
        ServiceKind::Tcp(tcp) => Some((Transport::Tcp, tcp.listen, tcp.ports)),
        ServiceKind::Udp(udp) => Some((Transport::Udp, udp.listen, udp.ports)),
        ServiceKind::Http(http) | ServiceKind::Https(http) => Some((
            Transport::Tcp,
            http.listen.ip(),
            PortRange::single(http.listen.port()),
        )),
    }
}

/// Whether listening on both addresses with the same port would conflict: the same address, or
/// the wildcard address of the same family as the other.
fn shares_address(a: IpAddr, b: IpAddr) -> bool {
    a == b || (a.is_ipv4() == b.is_ipv4() && (a.is_unspecified() || b.is_unspecified()))
}

fn build_service(
    src: &Source<'_>,
    name: &Spanned<String>,
    raw: &RawService,
) -> Result<PlacedService, ConfigError> {
    src.check(name, "service name in [services.NAME]", |name| {
        check_name(name)
    })?;
    let table = format!("[services.{}]", name.get_ref());
    let reject_keys_outside = |allowed| reject_keys_outside(src, raw, &table, allowed);
    let (kind, ports_span) = match raw.kind.get_ref().as_str() {
        "tcp" => {
            reject_keys_outside(TCP_KEYS)?;
            let (tcp, ports_span) = tcp_service(src, name, raw, &table)?;
            (ServiceKind::Tcp(tcp), ports_span)
        }
        "udp" => {
            reject_keys_outside(UDP_KEYS)?;
            let (udp, ports_span) = udp_service(src, name, raw, &table)?;
            (ServiceKind::Udp(udp), ports_span)
        }
        "http" | "https" => {
            reject_keys_outside(HTTP_KEYS)?;
            let tls = raw.kind.get_ref() == "https";
            let (http, span) = http_service(src, name, &raw.http_keys(), &table, tls)?;
            if tls {
                (ServiceKind::Https(http), span)
            } else {
                (ServiceKind::Http(http), span)
            }
        }
        other => {
            return Err(src.error_at(
                raw.kind.span(),
                format!(
                    "`kind` in {table}: unknown kind {other:?}; supported kinds: {SERVICE_KINDS}"
                ),
            ));
        }
    };
    Ok(PlacedService {
        config: ServiceConfig {
            name: name.get_ref().clone(),
            kind,
        },
        ports_span,
    })
}

/// Refuses the optional keys of `raw` that its kind does not use (not in `allowed`).
fn reject_keys_outside(
    src: &Source<'_>,
    raw: &RawService,
    table: &str,
    allowed: &[&str],
) -> Result<(), ConfigError> {
    for (key, span) in raw.optional_keys() {
        if let Some(span) = span
            && !allowed.contains(&key)
        {
            return Err(src.error_at(
                span,
                format!(
                    "`{key}` in {table} is not used by kind = {:?}; remove it",
                    raw.kind.get_ref()
                ),
            ));
        }
    }
    Ok(())
}

fn tcp_service(
    src: &Source<'_>,
    name: &Spanned<String>,
    raw: &RawService,
    table: &str,
) -> Result<(TcpService, Span), ConfigError> {
    let listen = src.check_opt(
        raw.listen.as_ref(),
        &format!("`listen` in {table}"),
        |text| {
            text.parse::<IpAddr>().map_err(|_| {
                format!(
                    "{text:?} is not an IP address; write one like \"0.0.0.0\" (every IPv4 \
                 address), \"::\" or \"127.0.0.1\", and put the ports in `ports`"
                )
            })
        },
    )?;
    let Some(ports) = &raw.ports else {
        return Err(src.error_at(
            name.span(),
            format!(
                "{table} has kind = {:?} but no `ports`; add one, like ports = \"20000-20100\"",
                raw.kind.get_ref()
            ),
        ));
    };
    let range = src.check(ports, &format!("`ports` in {table}"), parse_port_range)?;
    Ok((
        TcpService {
            listen: listen.unwrap_or(DEFAULT_SERVICE_LISTEN),
            ports: range,
        },
        ports.span(),
    ))
}

fn udp_service(
    src: &Source<'_>,
    name: &Spanned<String>,
    raw: &RawService,
    table: &str,
) -> Result<(UdpService, Span), ConfigError> {
    let (TcpService { listen, ports }, ports_span) = tcp_service(src, name, raw, table)?;
    let what = format!("`session_timeout` in {table}");
    let session_timeout = src.check_or(
        raw.session_timeout.as_ref(),
        &what,
        DEFAULT_UDP_SESSION_TIMEOUT,
        parse_duration,
    )?;
    let what = format!("`max_sessions` in {table}");
    let max_sessions = src.check_or(
        raw.max_sessions.as_ref(),
        &what,
        DEFAULT_UDP_MAX_SESSIONS,
        |n| {
            count_in(*n, 1..=MAX_UDP_MAX_SESSIONS).map_err(|problem| {
                format!(
                    "{problem} (default {DEFAULT_UDP_MAX_SESSIONS}); each session holds a socket \
                     on the tunnel host"
                )
            })
        },
    )?;
    Ok((
        UdpService {
            listen,
            ports,
            session_timeout,
            max_sessions,
        },
        ports_span,
    ))
}

#[cfg(test)]
mod tests {
    use std::env::VarError;
    use std::path::Path;

    use super::*;
    use crate::config::HubConfig;

    const KEYS: &str = "[[keys]]\nname = \"alice\"\nkey = \"alice-0123456789abcdef\"\n";

    fn parse(text: &str) -> Result<HubConfig, ConfigError> {
        let no_env = |_: &str| Err(VarError::NotPresent);
        crate::config::file::parse_with_env::<HubConfig>(
            text,
            Path::new("/etc/tunnelize/hub.toml"),
            &no_env,
        )
    }

    fn error(text: &str) -> String {
        match parse(text) {
            Ok(config) => panic!("expected an error, parsed {config:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn tcp_services_default_to_every_ipv4_address() {
        let config = parse(&format!(
            "{KEYS}[services.ssh]\nkind = \"tcp\"\nports = \"22\"\n"
        ))
        .unwrap();
        let expected = ServiceKind::Tcp(TcpService {
            listen: DEFAULT_SERVICE_LISTEN,
            ports: PortRange { start: 22, end: 22 },
        });
        assert_eq!(
            config.services,
            vec![ServiceConfig {
                name: "ssh".into(),
                kind: expected
            }]
        );
    }

    #[test]
    fn service_names_and_kinds_are_checked() {
        let err = error(&format!(
            "{KEYS}[services.SSH]\nkind = \"tcp\"\nports = 22\n"
        ));
        assert!(err.starts_with("/etc/tunnelize/hub.toml:4:11: service name in [services.NAME]: \"SSH\" is not a valid name"), "{err}");
        let err = error(&format!(
            "{KEYS}[services.ssh]\nkind = \"sctp\"\nports = 22\n"
        ));
        assert!(err.starts_with("/etc/tunnelize/hub.toml:5:8: `kind` in [services.ssh]: unknown kind \"sctp\"; supported kinds: \"tcp\", \"udp\""), "{err}");
        let err = error(&format!("{KEYS}[services.ssh]\nkind = \"tcp\"\n"));
        assert!(
            err.starts_with(
                "/etc/tunnelize/hub.toml:4:11: [services.ssh] has kind = \"tcp\" but no `ports`"
            ),
            "{err}"
        );
    }

    #[test]
    fn bad_service_values_name_the_key_and_line() {
        let err = error(&format!(
            "{KEYS}[services.ssh]\nkind = \"tcp\"\nports = \"22-21\"\n"
        ));
        assert!(err.starts_with("/etc/tunnelize/hub.toml:6:9: `ports` in [services.ssh]: range 22-21 starts after it ends"), "{err}");
        let err = error(&format!(
            "{KEYS}[services.ssh]\nkind = \"tcp\"\nlisten = \"0.0.0.0:22\"\nports = 22\n"
        ));
        assert!(err.starts_with("/etc/tunnelize/hub.toml:6:10: `listen` in [services.ssh]: \"0.0.0.0:22\" is not an IP address"), "{err}");
    }

    #[test]
    fn overlapping_ports_on_the_same_address_are_refused() {
        let service = |name: &str, listen: &str, ports: &str| {
            format!(
                "[services.{name}]\nkind = \"tcp\"\nlisten = \"{listen}\"\nports = \"{ports}\"\n"
            )
        };
        let text = format!(
            "{KEYS}{}{}",
            service("a", "0.0.0.0", "100-200"),
            service("b", "0.0.0.0", "200-300")
        );
        let err = error(&text);
        assert!(err.starts_with("/etc/tunnelize/hub.toml:11:9: `ports` in [services.b]: 200-300 overlaps ports 100-200 of [services.a]"), "{err}");
        // The wildcard address conflicts with a specific address of its family.
        let text = format!(
            "{KEYS}{}{}",
            service("a", "10.0.0.1", "150"),
            service("b", "0.0.0.0", "100-200")
        );
        assert!(error(&text).contains("overlaps ports 150 of [services.a]"));
        // Different addresses, or different families, do not conflict.
        let text = format!(
            "{KEYS}{}{}",
            service("a", "10.0.0.1", "100"),
            service("b", "10.0.0.2", "100")
        );
        assert!(parse(&text).is_ok());
        let text = format!(
            "{KEYS}{}{}",
            service("a", "::", "100"),
            service("b", "10.0.0.2", "100")
        );
        assert!(parse(&text).is_ok());
        let text = format!(
            "{KEYS}{}{}",
            service("a", "0.0.0.0", "100-199"),
            service("b", "0.0.0.0", "200")
        );
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn services_may_not_take_the_hub_listen_port() {
        let text = format!("{KEYS}[services.web]\nkind = \"tcp\"\nports = \"7000-8000\"\n");
        let err = error(&text);
        assert!(err.starts_with("/etc/tunnelize/hub.toml:6:9: `ports` in [services.web]: 7000-8000 includes 7700, the hub's own `listen` port"), "{err}");
        let text = format!(
            "listen = \"127.0.0.1:7700\"\n{KEYS}[services.web]\nkind = \"tcp\"\nlisten = \"10.0.0.1\"\nports = \"7000-8000\"\n"
        );
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn os_assigned_ports_never_conflict() {
        let service = |name: &str| format!("[services.{name}]\nkind = \"tcp\"\nports = \"0\"\n");
        let text = format!(
            "listen = \"127.0.0.1:0\"\n{KEYS}{}{}",
            service("a"),
            service("b")
        );
        let config = parse(&text).unwrap();
        let ServiceKind::Tcp(tcp) = &config.services[0].kind else {
            panic!("expected a tcp service, got {:?}", config.services[0].kind);
        };
        assert!(tcp.ports.is_os_assigned());
    }

    #[test]
    fn udp_services_get_defaults_and_every_key_can_be_set() {
        let config = parse(&format!(
            "{KEYS}[services.dns]\nkind = \"udp\"\nports = \"5300-5310\"\n"
        ))
        .unwrap();
        let expected = ServiceKind::Udp(UdpService {
            listen: DEFAULT_SERVICE_LISTEN,
            ports: PortRange {
                start: 5300,
                end: 5310,
            },
            session_timeout: Duration::from_secs(60),
            max_sessions: 1024,
        });
        assert_eq!(config.services[0].kind, expected);
        assert_eq!(config.services[0].kind.name(), "udp");
        let config = parse(&format!(
            "{KEYS}[services.dns]\nkind = \"udp\"\nlisten = \"::\"\nports = \"0\"\n\
             session_timeout = \"5s\"\nmax_sessions = 10\n"
        ))
        .unwrap();
        let ServiceKind::Udp(udp) = &config.services[0].kind else {
            panic!("expected a udp service: {config:?}");
        };
        assert_eq!(udp.listen, "::".parse::<IpAddr>().unwrap());
        assert!(udp.ports.is_os_assigned());
        assert_eq!(udp.session_timeout, Duration::from_secs(5));
        assert_eq!(udp.max_sessions, 10);
    }

    #[test]
    fn bad_udp_values_name_the_key_and_line() {
        let udp =
            |extra: &str| format!("{KEYS}[services.dns]\nkind = \"udp\"\nports = 53\n{extra}\n");
        let err = error(&udp("session_timeout = \"0s\""));
        assert!(
            err.starts_with(
                "/etc/tunnelize/hub.toml:7:19: `session_timeout` in [services.dns]: \"0s\" is zero"
            ),
            "{err}"
        );
        let err = error(&udp("max_sessions = 0"));
        assert!(err.starts_with("/etc/tunnelize/hub.toml:7:16: `max_sessions` in [services.dns]: 0 is out of range; use 1 to 16384"), "{err}");
        assert!(error(&udp("max_sessions = 100000")).contains("out of range"));
        let err = error(&format!("{KEYS}[services.dns]\nkind = \"udp\"\n"));
        assert!(
            err.contains("[services.dns] has kind = \"udp\" but no `ports`"),
            "{err}"
        );
        let err = error(&format!(
            "{KEYS}[services.ssh]\nkind = \"tcp\"\nports = 22\nmax_sessions = 5\n"
        ));
        assert!(
            err.contains("`max_sessions` in [services.ssh] is not used by kind = \"tcp\""),
            "{err}"
        );
    }

    #[test]
    fn a_udp_and_a_tcp_service_may_share_ports_but_two_udp_services_may_not() {
        let service = |name: &str, kind: &str, ports: &str| {
            format!("[services.{name}]\nkind = \"{kind}\"\nports = \"{ports}\"\n")
        };
        let text = format!(
            "{KEYS}{}{}",
            service("a", "tcp", "5000-5010"),
            service("b", "udp", "5000-5010")
        );
        assert!(parse(&text).is_ok());
        let text = format!(
            "{KEYS}{}{}",
            service("a", "udp", "5000-5010"),
            service("b", "udp", "5010")
        );
        assert!(error(&text).contains("5010 overlaps ports 5000-5010 of [services.a]"));
        // UDP ports do not collide with the hub's own (TCP) listen port.
        let text = format!("{KEYS}{}", service("dns", "udp", "7000-8000"));
        assert!(parse(&text).is_ok());
    }
}
