//! One client request, from hyper handing it over to the response: [`handle`] validates it
//! here, then [`forward_with_retry`] routes and sends it. Validation refuses what the hub will
//! not forward (ambiguous framing, several Host headers, CONNECT, no valid host), answers the
//! redirect of an http service to https, and takes the request apart into a [`ClientRequest`].
//! It opens nothing upstream; it reads the start of the body ([`read_ahead`]: the whole body
//! when it is short, and at least the first chunk of a chunked one, so a chunk size that
//! overflows or does not parse is refused with 400 before the target sees a byte). A later
//! chunk that fails is answered with 400 as well, if the target has not answered yet:
//! [`super::forward`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::upgrade::OnUpgrade;

use crate::hub::per_address::AddressSlot;
use tracing::warn;

use super::ahead;
use super::body::{self, Body, MalformedBody};
use super::forward::forward_with_retry;
use super::framing::Verdict;
use super::headers;
use super::upstream::Kept;
use super::{Frontend, pages};
use crate::hub::metrics::Rejection;

/// A valid request, taken apart for forwarding.
pub(super) struct ClientRequest {
    /// The hostname it is for ([`request_host`]).
    pub host: String,
    pub peer: SocketAddr,
    /// The head as received, without hyper's extensions.
    pub head: http::request::Parts,
    /// The body, while nothing has read it (`None` once a try has taken it).
    pub body: Option<Body>,
    /// The `Authorization` value, for a backend that asks for basic credentials.
    pub presented: Option<String>,
    /// The `Content-Length`, for a backend with a body limit.
    pub declared: Option<u64>,
    /// Whether it asks for an upgrade (WebSocket), and the client side of that upgrade.
    pub upgrade: bool,
    pub client_upgrade: Option<Upgrade>,
    /// Without a body, a request can be sent again as it is.
    pub bodyless: bool,
    /// Idempotent, bodyless and no upgrade: safe to send again after a lost connection.
    pub replayable: bool,
}

/// The client's side of an upgrade it asked for: its connection once switched, and its
/// address's place (`[limits] connections_per_address`), which the upgraded connection holds
/// for as long as it lives.
pub(crate) struct Upgrade {
    pub on: OnUpgrade,
    pub place: Option<Arc<AddressSlot>>,
}

/// Answers one request: validated, then routed and forwarded.
pub(super) async fn handle(
    front: Arc<Frontend>,
    req: Request<Incoming>,
    peer: SocketAddr,
    verdict: Verdict,
    kept: Option<Arc<Kept>>,
) -> Result<Response<Body>, Infallible> {
    let request = match validate(&front, req, peer, verdict) {
        Ok(request) => request,
        Err(page) => return Ok(page),
    };
    match read_ahead(&front, request).await {
        // Boxed: hyper holds this future for the connection's life, and a body that trickles
        // in waits above with no forwarding state.
        Ok(request) => Ok(Box::pin(forward_with_retry(&front, request, kept.as_deref())).await),
        Err(page) => Ok(page),
    }
}

/// Reads the start of the body before anything goes upstream ([`ahead`](mod@super::ahead)):
/// the whole body if it is shorter than `body_read_ahead`, and for a chunked HTTP/1.1 body at
/// least its first chunk (so a chunk size that overflows or does not parse is refused here).
/// 400 and a close when the body fails meanwhile (bad framing, or a client that never sends
/// it: the client socket's `idle_timeout` bounds every wait). Upgrades pass as they are.
async fn read_ahead(
    front: &Frontend,
    mut request: ClientRequest,
) -> Result<ClientRequest, Response<Body>> {
    if request.upgrade || request.bodyless {
        return Ok(request);
    }
    let Some(client_body) = request.body.take() else {
        return Ok(request);
    };
    let chunked = request.head.version < http::Version::HTTP_2
        && request.head.headers.contains_key(header::TRANSFER_ENCODING);
    let limit = front.config.body_read_ahead;
    match ahead::read_ahead(client_body, limit, chunked).await {
        Ok(read) => {
            request.body = Some(read);
            Ok(request)
        }
        Err(e) => {
            let malformed = body::caused_by::<MalformedBody>(&*e);
            if malformed {
                front.shared.metrics.reject(Rejection::BadRequest);
            }
            warn!(peer = %request.peer, error = %e, "refused a request whose body could not be read");
            let detail = match malformed {
                true => "The request body's chunked framing is invalid.",
                false => "The request body could not be read.",
            };
            Err(pages::page(StatusCode::BAD_REQUEST, detail, true))
        }
    }
}

/// The request taken apart, or the page the hub answers instead.
#[expect(
    clippy::result_large_err,
    reason = "either side is moved once, at once; boxing would allocate for every request"
)]
fn validate(
    front: &Frontend,
    req: Request<Incoming>,
    peer: SocketAddr,
    verdict: Verdict,
) -> Result<ClientRequest, Response<Body>> {
    let bad = |detail: &str| {
        front.shared.metrics.reject(Rejection::BadRequest);
        pages::page(StatusCode::BAD_REQUEST, detail, true)
    };
    if let Verdict::Ambiguous(reason) = verdict {
        warn!(%peer, reason, "refused an ambiguous request");
        return Err(bad("The request's framing is ambiguous."));
    }
    if req.headers().get_all(header::HOST).iter().count() > 1 {
        warn!(%peer, "refused a request with several Host headers");
        return Err(bad("The request has more than one Host header."));
    }
    if req.method() == http::Method::CONNECT {
        let detail = "CONNECT is not supported.";
        return Err(pages::page(StatusCode::METHOD_NOT_ALLOWED, detail, true));
    }
    let Some(host) = request_host(&req) else {
        return Err(bad("The request names no valid host."));
    };
    if let Some(target) = &front.config.redirect_https {
        return Err(redirect_to_https(front, target, &host, req.uri()));
    }
    Ok(take_apart(req, host, peer))
}

/// Splits a valid request into what forwarding it needs.
fn take_apart(mut req: Request<Incoming>, host: String, peer: SocketAddr) -> ClientRequest {
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| Upgrade {
        place: req.extensions().get::<Arc<AddressSlot>>().cloned(),
        on: hyper::upgrade::on(&mut req),
    });
    let (mut head, body) = req.into_parts();
    head.extensions = http::Extensions::new();
    headers::own_head(&mut head);
    let presented = head
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let declared = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let bodyless = body.is_end_stream();
    ClientRequest {
        replayable: bodyless && !upgrade && head.method.is_idempotent(),
        host,
        peer,
        head,
        body: Some(body.map_err(body::client_body_error).boxed()),
        presented,
        declared,
        upgrade,
        client_upgrade,
        bodyless,
    }
}

/// The hostname a request is for: Host header (HTTP/1.1) or authority (h2), without port,
/// lowercased, without a trailing dot.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = match req.headers().get(header::HOST) {
        Some(value) => value.to_str().ok()?.to_owned(),
        None => req.uri().authority()?.as_str().to_owned(),
    };
    let authority: http::uri::Authority = raw.parse().ok()?;
    let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

/// Whether a request asks to upgrade its connection (`Upgrade`, and `upgrade` in `Connection`).
pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// The 308 to the same host and path on the https service `target`.
fn redirect_to_https(front: &Frontend, target: &str, host: &str, uri: &Uri) -> Response<Body> {
    let port = front
        .shared
        .service_addrs
        .get(target)
        .map(|a| a.port())
        .unwrap_or(443);
    pages::redirect(&https_location(host, port, uri))
}

/// `https://host[:port]/path?query`, the port left out when it is 443.
fn https_location(host: &str, port: u16, uri: &Uri) -> String {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(host: Option<&str>, uri: &str) -> Request<()> {
        let mut builder = Request::builder().uri(uri);
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn the_host_comes_from_the_header_or_the_authority_without_port_case_or_final_dot() {
        let host = |h, uri| request_host(&request(h, uri));
        assert_eq!(
            host(Some("App.Example.COM:8080"), "/"),
            Some("app.example.com".into())
        );
        assert_eq!(
            host(Some("app.example.com."), "/"),
            Some("app.example.com".into())
        );
        assert_eq!(
            host(None, "https://h2.example.com/x"),
            Some("h2.example.com".into())
        );
        assert_eq!(
            host(Some("header.example"), "https://authority.example/"),
            Some("header.example".into()),
            "the Host header wins"
        );
        assert_eq!(host(None, "/"), None);
        assert_eq!(host(Some("bad host"), "/"), None);
        assert_eq!(host(Some("."), "/"), None);
    }

    #[test]
    fn an_upgrade_needs_both_the_header_and_the_connection_token() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(
                    header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    value.parse().unwrap(),
                );
            }
            map
        };
        let ws = ("upgrade", "websocket");
        assert!(is_upgrade(&headers(&[
            ws,
            ("connection", "keep-alive, Upgrade")
        ])));
        assert!(is_upgrade(&headers(&[
            ws,
            ("connection", "x"),
            ("connection", "upgrade")
        ])));
        assert!(!is_upgrade(&headers(&[ws, ("connection", "keep-alive")])));
        assert!(!is_upgrade(&headers(&[("connection", "upgrade")])));
    }

    #[test]
    fn the_https_location_keeps_path_and_query_and_omits_port_443() {
        let uri: Uri = "/a/b?c=d".parse().unwrap();
        assert_eq!(https_location("h.x", 443, &uri), "https://h.x/a/b?c=d");
        assert_eq!(
            https_location("h.x", 8443, &uri),
            "https://h.x:8443/a/b?c=d"
        );
    }
}
