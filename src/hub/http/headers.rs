//! The request as the target sees it: origin-form URI, HTTP/1.1, hop-by-hop headers removed
//! (RFC 9110 section 7.6.1), `X-Forwarded-For/-Proto/-Host` replaced (extended for trusted
//! proxies), the credentials the hub checked removed, the body limited by the proxy's
//! `max_body`. Also the hop-by-hop clean-up of responses. Pure header work: no I/O.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version};
use http_body_util::{BodyExt, Limited};
use ipnet::IpNet;

use super::Frontend;
use super::body::Body;
use super::routes::Backend;

/// Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Gives `head` a buffer of its own: hyper's header values and URI are slices of the
/// connection's 8 KiB read buffer, which they would keep alive (and make hyper allocate
/// another) for as long as the request waits on its body or its target. One allocation the
/// size of the values; a value that will not re-parse (none should) keeps its old bytes.
pub(super) fn own_head(head: &mut http::request::Parts) {
    let uri = head.uri.path_and_query().map(|p| p.as_str());
    let total = uri.map_or(0, str::len) + head.headers.values().map(|v| v.len()).sum::<usize>();
    let mut own = bytes::BytesMut::with_capacity(total);
    for value in head.headers.values() {
        own.extend_from_slice(value.as_bytes());
    }
    let start_of_uri = own.len();
    if let Some(uri) = uri {
        own.extend_from_slice(uri.as_bytes());
    }
    let mut own = own.freeze();
    for value in head.headers.values_mut() {
        let bytes = own.split_to(value.len());
        if let Ok(mut copy) = HeaderValue::from_maybe_shared(bytes) {
            copy.set_sensitive(value.is_sensitive());
            *value = copy;
        }
    }
    debug_assert_eq!(own.len(), total - start_of_uri);
    // Only an origin-form URI (what HTTP/1.1 clients send) is rebuilt; h2's authority form
    // comes from hyper's own small allocations.
    if head.uri.scheme().is_none()
        && head.uri.authority().is_none()
        && let Ok(uri) = Uri::from_maybe_shared(own)
    {
        head.uri = uri;
    }
}

/// Removes hop-by-hop headers, including any the Connection header names.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The request as sent to the target (see the module docs); `Err` with the detail of a 400
/// when it names no host or its target is not a valid origin-form URI.
pub(super) fn upstream_request(
    front: &Frontend,
    req: Request<Body>,
    peer: SocketAddr,
    host: &str,
    backend: &Backend,
    upgrade: bool,
) -> Result<Request<Body>, String> {
    let (mut parts, body) = req.into_parts();
    if backend.auth.is_some() {
        // The hub checked these credentials; they are not the target's to see.
        parts.headers.remove(header::AUTHORIZATION);
    }
    let original_host = parts
        .headers
        .get(header::HOST)
        .cloned()
        .or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        })
        .ok_or("The request names no host.")?;
    let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    if upgrade && let Some(value) = upgrade_value {
        parts.headers.insert(header::UPGRADE, value);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    parts.headers.insert(header::HOST, original_host.clone());
    let trusted = &front.config.trusted_proxies;
    set_forwarded(&mut parts.headers, peer, &original_host, trusted, front.tls);
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = path
        .parse::<Uri>()
        .map_err(|_| format!("bad request target for {host}"))?;
    parts.version = Version::HTTP_11;
    let body = match backend.max_body {
        Some(limit) => Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).boxed(),
        None => body,
    };
    Ok(Request::from_parts(parts, body))
}

/// Sets `X-Forwarded-For/-Proto/-Host`: replaced, unless the direct peer is in `trusted`, in
/// which case its values are kept and the peer is appended to `X-Forwarded-For`.
fn set_forwarded(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    host: &HeaderValue,
    trusted: &[IpNet],
    tls: bool,
) {
    const XFF: &str = "x-forwarded-for";
    const XFP: &str = "x-forwarded-proto";
    const XFH: &str = "x-forwarded-host";
    let ip = peer.ip().to_canonical();
    let trusted = trusted.iter().any(|net| net.contains(&ip));
    let proto = if tls { "https" } else { "http" };
    let prior: Vec<String> = headers
        .get_all(XFF)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    let xff = if trusted && !prior.is_empty() {
        format!("{}, {ip}", prior.join(", "))
    } else {
        ip.to_string()
    };
    if let Ok(value) = HeaderValue::from_str(&xff) {
        headers.insert(XFF, value);
    }
    if !(trusted && headers.contains_key(XFP)) {
        headers.insert(XFP, HeaderValue::from_static(proto));
    }
    if !(trusted && headers.contains_key(XFH)) {
        headers.insert(XFH, host.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn forwarding_headers_are_replaced_for_a_stranger_and_extended_for_a_trusted_proxy() {
        let host = HeaderValue::from_static("app.example.com");
        let sent = [
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-host", "evil.example"),
        ];
        let stranger: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        let mut headers = map(&sent);
        set_forwarded(&mut headers, stranger, &host, &[], true);
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "app.example.com");

        let proxy: SocketAddr = "[::ffff:10.0.0.2]:5000".parse().unwrap();
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let mut headers = map(&sent);
        set_forwarded(&mut headers, proxy, &host, &trusted, false);
        assert_eq!(headers["x-forwarded-for"], "6.6.6.6, 10.0.0.2");
        assert_eq!(headers["x-forwarded-proto"], "gopher");
        assert_eq!(headers["x-forwarded-host"], "evil.example");

        let mut headers = HeaderMap::new();
        set_forwarded(&mut headers, proxy, &host, &trusted, false);
        assert_eq!(headers["x-forwarded-for"], "10.0.0.2");
        assert_eq!(headers["x-forwarded-proto"], "http");
    }
}
