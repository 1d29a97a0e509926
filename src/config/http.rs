//! `kind = "http"` and `kind = "https"` services: public HTTP endpoints routed by hostname.
//!
//! Both kinds share [`HttpService`]; `https` adds certificates (chosen by SNI, wildcards
//! allowed) and `http` may redirect to an `https` service. Parsing lives here so that
//! `service.rs` only dispatches on `kind`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::{Spanned, Value};

use super::error::ConfigError;
use super::source::{Source, Span};
use super::values::{TlsFiles, check_name, is_hostname, parse_duration};

/// Default `header_timeout`: a client must send a whole request head within this.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `response_timeout`: a target silent this long gets the client a 504.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `max_head_size` in bytes; larger request heads get 431.
pub const DEFAULT_MAX_HEAD_SIZE: usize = 64 * 1024;
/// hyper cannot buffer less than this.
const MIN_HEAD_SIZE: usize = 8 * 1024;

/// Settings of an `http` or `https` service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpService {
    /// `listen` (default `0.0.0.0:80` for http, `0.0.0.0:443` for https): address and port.
    pub listen: SocketAddr,
    /// `domain` (required): base domain; a proxy asking for `myapp` gets `myapp.<domain>`.
    pub domain: String,
    /// `trusted_proxies` (default none): addresses or networks whose `X-Forwarded-*` headers
    /// are kept and extended rather than replaced.
    pub trusted_proxies: Vec<IpNet>,
    /// `header_timeout` (default `10s`): deadline for a whole request head.
    pub header_timeout: Duration,
    /// `response_timeout` (default `60s`): a target that sends no response head within this
    /// gets the client a 504.
    pub response_timeout: Duration,
    /// `max_head_size` (default 65536): largest request head in bytes (431 beyond).
    pub max_head_size: usize,
    /// `redirect_https` (http only): name of an `https` service to redirect every request to.
    pub redirect_https: Option<String>,
    /// `[[services.NAME.certificates]]` (https only, at least one): certificate chains, each
    /// served for the names it covers (SNI), wildcards included.
    pub certificates: Vec<TlsFiles>,
}

/// `[[services.NAME.certificates]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificate {
    cert_file: Spanned<String>,
    key_file: Spanned<String>,
}

/// The http/https keys of a service table.
#[derive(Default)]
pub(super) struct RawHttpKeys<'a> {
    pub listen: Option<&'a Spanned<String>>,
    pub domain: Option<&'a Spanned<String>>,
    pub trusted_proxies: Option<&'a Spanned<Vec<String>>>,
    pub header_timeout: Option<&'a Spanned<Value>>,
    pub response_timeout: Option<&'a Spanned<Value>>,
    pub max_head_size: Option<&'a Spanned<i64>>,
    pub redirect_https: Option<&'a Spanned<String>>,
    pub certificates: Option<&'a Spanned<Vec<RawCertificate>>>,
}

/// Checks the keys of an `http` (`tls == false`) or `https` service. Returns the settings and
/// the span to point at for conflicts with other services (the `listen` value, or the table).
pub(super) fn http_service(
    src: &Source<'_>,
    name: &Spanned<String>,
    raw: &RawHttpKeys<'_>,
    table: &str,
    tls: bool,
) -> Result<(HttpService, Span), ConfigError> {
    let default_port = if tls { 443 } else { 80 };
    let (listen, span) = match raw.listen {
        Some(listen) => {
            let addr = listen.get_ref().parse::<SocketAddr>().map_err(|_| {
                src.error_at(
                    listen.span(),
                    format!(
                        "`listen` in {table}: {:?} is not an IP address and port; write one like \
                         \"0.0.0.0:{default_port}\" or \"[::]:{default_port}\"",
                        listen.get_ref()
                    ),
                )
            })?;
            (addr, listen.span())
        }
        None => (SocketAddr::from(([0, 0, 0, 0], default_port)), name.span()),
    };
    let Some(domain) = raw.domain else {
        return Err(src.error_at(
            name.span(),
            format!(
                "{table} has no `domain`; add the base domain its hostnames live under, like \
                 domain = \"tunnel.example.com\""
            ),
        ));
    };
    let domain_text = domain
        .get_ref()
        .trim_start_matches('.')
        .to_ascii_lowercase();
    if !is_hostname(&domain_text) {
        return Err(src.error_at(
            domain.span(),
            format!(
                "`domain` in {table}: {:?} is not a valid domain name",
                domain.get_ref()
            ),
        ));
    }
    let trusted_proxies = match raw.trusted_proxies {
        Some(list) => list
            .get_ref()
            .iter()
            .map(|entry| parse_net(entry))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|problem| {
                src.error_at(
                    list.span(),
                    format!("`trusted_proxies` in {table}: {problem}"),
                )
            })?,
        None => Vec::new(),
    };
    let duration = |value: Option<&Spanned<Value>>, key: &str, default| match value {
        Some(value) => parse_duration(value.get_ref()).map_err(|problem| {
            src.error_at(value.span(), format!("`{key}` in {table}: {problem}"))
        }),
        None => Ok(default),
    };
    let max_head_size = match raw.max_head_size {
        Some(size) => usize::try_from(*size.get_ref())
            .ok()
            .filter(|n| (MIN_HEAD_SIZE..=1024 * 1024).contains(n))
            .ok_or_else(|| {
                src.error_at(
                    size.span(),
                    format!(
                        "`max_head_size` in {table}: use {MIN_HEAD_SIZE} to 1048576 bytes \
                         (default {DEFAULT_MAX_HEAD_SIZE})"
                    ),
                )
            })?,
        None => DEFAULT_MAX_HEAD_SIZE,
    };
    let redirect_https = match raw.redirect_https {
        Some(target) if tls => {
            return Err(src.error_at(
                target.span(),
                format!(
                    "`redirect_https` in {table}: only an http service can redirect; remove it"
                ),
            ));
        }
        Some(target) => {
            check_name(target.get_ref()).map_err(|problem| {
                src.error_at(
                    target.span(),
                    format!("`redirect_https` in {table}: {problem}"),
                )
            })?;
            Some(target.get_ref().clone())
        }
        None => None,
    };
    let certificates = match (raw.certificates, tls) {
        (Some(certs), true) if !certs.get_ref().is_empty() => certs
            .get_ref()
            .iter()
            .map(|c| {
                Ok(TlsFiles {
                    cert_file: path(src, &c.cert_file, table, "cert_file")?,
                    key_file: path(src, &c.key_file, table, "key_file")?,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?,
        (_, true) => {
            return Err(src.error_at(
                name.span(),
                format!(
                    "{table} has kind = \"https\" but no certificates; add a \
                     [[services.{}.certificates]] entry with `cert_file` and `key_file`",
                    name.get_ref()
                ),
            ));
        }
        (Some(certs), false) => {
            return Err(src.error_at(
                certs.span(),
                format!("`certificates` in {table}: only https services serve certificates"),
            ));
        }
        (None, false) => Vec::new(),
    };
    Ok((
        HttpService {
            listen,
            domain: domain_text,
            trusted_proxies,
            header_timeout: duration(raw.header_timeout, "header_timeout", DEFAULT_HEADER_TIMEOUT)?,
            response_timeout: duration(
                raw.response_timeout,
                "response_timeout",
                DEFAULT_RESPONSE_TIMEOUT,
            )?,
            max_head_size,
            redirect_https,
            certificates,
        },
        span,
    ))
}

fn path(
    src: &Source<'_>,
    value: &Spanned<String>,
    table: &str,
    key: &str,
) -> Result<PathBuf, ConfigError> {
    if value.get_ref().is_empty() {
        return Err(src.error_at(
            value.span(),
            format!("`{key}` in {table} is empty; give a path"),
        ));
    }
    Ok(src.resolve_path(value.get_ref()))
}

fn parse_net(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    text.parse::<std::net::IpAddr>().map(IpNet::from).map_err(|_| {
        format!("{text:?} is not an IP address or network; write one like \"10.0.0.0/8\" or \"192.0.2.7\"")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_and_single_addresses_parse() {
        assert_eq!(parse_net("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(parse_net("::1").unwrap().to_string(), "::1/128");
        assert!(
            parse_net("ten.zero")
                .unwrap_err()
                .contains("not an IP address")
        );
    }
}
