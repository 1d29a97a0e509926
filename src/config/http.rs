//! `kind = "http"` and `kind = "https"` services: public HTTP endpoints routed by hostname.
//!
//! Both kinds share [`HttpService`]; `https` adds certificates (chosen by SNI, wildcards
//! allowed) and `http` may redirect to an `https` service. Parsing lives here so that
//! `service.rs` only dispatches on `kind`.

use std::net::SocketAddr;
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
/// Default `body_read_ahead` in bytes: how much of a request body arrives before the hub
/// opens the upstream connection for it.
pub const DEFAULT_BODY_READ_AHEAD: usize = 8192;
/// The largest `body_read_ahead`: it is held per connection while a body trickles in.
const MAX_BODY_READ_AHEAD: usize = 1024 * 1024;
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
    /// `body_read_ahead` (default 8192, at most 1 MiB): bytes of a request body the hub reads
    /// before it opens the upstream connection (the whole body if shorter; 0 streams bodies
    /// to the target from their first byte, for clients that wait for an answer before they
    /// send the rest of a body).
    pub body_read_ahead: usize,
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
    pub body_read_ahead: Option<&'a Spanned<i64>>,
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
    let (listen, span) = check_listen(src, name, raw.listen, table, tls)?;
    let domain = check_domain(src, name, raw.domain, table)?;
    let what = format!("`trusted_proxies` in {table}");
    let trusted_proxies = src.check_opt(raw.trusted_proxies, &what, |list| {
        list.iter().map(|entry| parse_net(entry)).collect()
    })?;
    let what = format!("`max_head_size` in {table}");
    let max_head_size = src.check_opt(raw.max_head_size, &what, |size| head_size(*size))?;
    let what = format!("`body_read_ahead` in {table}");
    let body_read_ahead = src.check_opt(raw.body_read_ahead, &what, |size| read_ahead(*size))?;
    let redirect_https = check_redirect(src, raw.redirect_https, table, tls)?;
    let certificates = check_certificates(src, name, raw.certificates, table, tls)?;
    let duration = |value: Option<&Spanned<Value>>, key: &str, default| {
        src.check_or(
            value,
            &format!("`{key}` in {table}"),
            default,
            parse_duration,
        )
    };
    Ok((
        HttpService {
            listen,
            domain,
            trusted_proxies: trusted_proxies.unwrap_or_default(),
            header_timeout: duration(raw.header_timeout, "header_timeout", DEFAULT_HEADER_TIMEOUT)?,
            response_timeout: duration(
                raw.response_timeout,
                "response_timeout",
                DEFAULT_RESPONSE_TIMEOUT,
            )?,
            max_head_size: max_head_size.unwrap_or(DEFAULT_MAX_HEAD_SIZE),
            body_read_ahead: body_read_ahead.unwrap_or(DEFAULT_BODY_READ_AHEAD),
            redirect_https,
            certificates,
        },
        span,
    ))
}

/// `listen`, with the span conflicts point at: the value, or the table name when it is absent.
fn check_listen(
    src: &Source<'_>,
    name: &Spanned<String>,
    listen: Option<&Spanned<String>>,
    table: &str,
    tls: bool,
) -> Result<(SocketAddr, Span), ConfigError> {
    let default_port = if tls { 443 } else { 80 };
    let Some(listen) = listen else {
        return Ok((SocketAddr::from(([0, 0, 0, 0], default_port)), name.span()));
    };
    let addr = src.check(listen, &format!("`listen` in {table}"), |text| {
        text.parse::<SocketAddr>().map_err(|_| {
            format!(
                "{text:?} is not an IP address and port; write one like \
                 \"0.0.0.0:{default_port}\" or \"[::]:{default_port}\""
            )
        })
    })?;
    Ok((addr, listen.span()))
}

/// `domain` (required): a hostname, lowercased, without a leading dot.
fn check_domain(
    src: &Source<'_>,
    name: &Spanned<String>,
    domain: Option<&Spanned<String>>,
    table: &str,
) -> Result<String, ConfigError> {
    let Some(domain) = domain else {
        return Err(src.error_at(
            name.span(),
            format!(
                "{table} has no `domain`; add the base domain its hostnames live under, like \
                 domain = \"tunnel.example.com\""
            ),
        ));
    };
    src.check(domain, &format!("`domain` in {table}"), |written| {
        let domain = written.trim_start_matches('.').to_ascii_lowercase();
        if is_hostname(&domain) {
            Ok(domain)
        } else {
            Err(format!("{written:?} is not a valid domain name"))
        }
    })
}

/// `max_head_size`: at least what hyper can buffer, at most 1 MiB.
fn head_size(size: i64) -> Result<usize, String> {
    usize::try_from(size)
        .ok()
        .filter(|n| (MIN_HEAD_SIZE..=1024 * 1024).contains(n))
        .ok_or_else(|| {
            format!("use {MIN_HEAD_SIZE} to 1048576 bytes (default {DEFAULT_MAX_HEAD_SIZE})")
        })
}

/// `body_read_ahead`: 0 to [`MAX_BODY_READ_AHEAD`] bytes.
fn read_ahead(size: i64) -> Result<usize, String> {
    usize::try_from(size)
        .ok()
        .filter(|n| *n <= MAX_BODY_READ_AHEAD)
        .ok_or_else(|| {
            format!(
                "use 0 to {MAX_BODY_READ_AHEAD} bytes (default {DEFAULT_BODY_READ_AHEAD}; 0 \
                 sends a body on from its first byte)"
            )
        })
}

/// `redirect_https` (http only): the name of the https service to redirect to.
fn check_redirect(
    src: &Source<'_>,
    target: Option<&Spanned<String>>,
    table: &str,
    tls: bool,
) -> Result<Option<String>, ConfigError> {
    let what = format!("`redirect_https` in {table}");
    match target {
        Some(target) if tls => Err(src.error_at(
            target.span(),
            format!("{what}: only an http service can redirect; remove it"),
        )),
        target => src.check_opt(target, &what, |target| {
            check_name(target).map(|()| target.clone())
        }),
    }
}

/// `[[services.NAME.certificates]]`: at least one for https, none for http.
fn check_certificates(
    src: &Source<'_>,
    name: &Spanned<String>,
    certificates: Option<&Spanned<Vec<RawCertificate>>>,
    table: &str,
    tls: bool,
) -> Result<Vec<TlsFiles>, ConfigError> {
    let path = |value, key: &str| src.non_empty_path(value, &format!("`{key}` in {table}"));
    match (certificates, tls) {
        (Some(certs), true) if !certs.get_ref().is_empty() => certs
            .get_ref()
            .iter()
            .map(|c| {
                Ok(TlsFiles {
                    cert_file: path(&c.cert_file, "cert_file")?,
                    key_file: path(&c.key_file, "key_file")?,
                })
            })
            .collect(),
        (_, true) => Err(src.error_at(
            name.span(),
            format!(
                "{table} has kind = \"https\" but no certificates; add a \
                 [[services.{}.certificates]] entry with `cert_file` and `key_file`",
                name.get_ref()
            ),
        )),
        (Some(certs), false) => Err(src.error_at(
            certs.span(),
            format!("`certificates` in {table}: only https services serve certificates"),
        )),
        (None, false) => Ok(Vec::new()),
    }
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
