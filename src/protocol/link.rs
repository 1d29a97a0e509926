//! How a link stream is opened and answered.
//!
//! Link connections carry HTTP/2 with reversed roles: the tunnel dialed the TCP+TLS connection
//! and serves HTTP/2 on it, the hub opens one stream per public client. The stream's request head
//! says which proxy and which client the stream is for ([`LinkOpen`]); the response head says
//! whether the tunnel reached its target (200) or not (502 with a [`LinkRefusal`] reason). The
//! bodies are then the client's bytes in each direction, and ending a body is a half-close.

use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use thiserror::Error;

/// Header naming the proxy a stream is for.
pub const PROXY_HEADER: &str = "tunnelize-proxy";
/// Header carrying the hub-assigned client id.
pub const CLIENT_HEADER: &str = "tunnelize-client";
/// Header carrying the public client's address.
pub const PEER_HEADER: &str = "tunnelize-peer";
/// Header carrying why a tunnel could not serve a stream.
pub const ERROR_HEADER: &str = "tunnelize-error";

const LINK_URI: &str = "https://tunnelize.link/v1/stream";

/// Errors parsing link stream heads.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LinkHeaderError {
    /// A required header is absent or not valid text.
    #[error("link stream header `{0}` is missing or malformed")]
    Missing(&'static str),
    /// A header value does not parse.
    #[error("link stream header `{0}` has an invalid value")]
    Invalid(&'static str),
}

/// The head of a link stream: which proxy, which client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkOpen {
    /// Name of the tunnel's proxy the client arrived for.
    pub proxy: String,
    /// Hub-assigned client id, unique for the hub's lifetime.
    pub client_id: u64,
    /// The public client's address.
    pub peer: SocketAddr,
}

impl LinkOpen {
    /// The HTTP/2 request head that opens the stream.
    pub fn to_request(&self) -> Result<Request<()>, LinkHeaderError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(LINK_URI)
            .body(())
            .map_err(|_| LinkHeaderError::Invalid("uri"))?;
        let headers = req.headers_mut();
        headers.insert(
            PROXY_HEADER,
            HeaderValue::from_str(&self.proxy)
                .map_err(|_| LinkHeaderError::Invalid(PROXY_HEADER))?,
        );
        headers.insert(CLIENT_HEADER, HeaderValue::from(self.client_id));
        headers.insert(
            PEER_HEADER,
            HeaderValue::from_str(&self.peer.to_string())
                .map_err(|_| LinkHeaderError::Invalid(PEER_HEADER))?,
        );
        Ok(req)
    }

    /// Reads a stream's request head.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, LinkHeaderError> {
        let proxy = text(headers, PROXY_HEADER)?.to_owned();
        let client_id = text(headers, CLIENT_HEADER)?
            .parse()
            .map_err(|_| LinkHeaderError::Invalid(CLIENT_HEADER))?;
        let peer = text(headers, PEER_HEADER)?
            .parse()
            .map_err(|_| LinkHeaderError::Invalid(PEER_HEADER))?;
        Ok(LinkOpen {
            proxy,
            client_id,
            peer,
        })
    }
}

/// Why a tunnel could not serve a link stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRefusal {
    /// Human-readable reason, safe to log ("connection refused by 127.0.0.1:3000").
    pub reason: String,
}

impl LinkRefusal {
    /// The response head for a refused stream.
    pub fn to_response(&self) -> Response<()> {
        let mut resp = Response::new(());
        *resp.status_mut() = StatusCode::BAD_GATEWAY;
        // Reasons come from our own error messages; anything a header cannot carry is dropped.
        let clean: String = self
            .reason
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control())
            .collect();
        if let Ok(value) = HeaderValue::from_str(&clean) {
            resp.headers_mut().insert(ERROR_HEADER, value);
        }
        resp
    }

    /// Reads a response head: `Ok(())` when the tunnel reached its target.
    pub fn check_response(status: StatusCode, headers: &HeaderMap) -> Result<(), LinkRefusal> {
        if status == StatusCode::OK {
            return Ok(());
        }
        let reason = headers
            .get(ERROR_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("tunnel answered {status}"));
        Err(LinkRefusal { reason })
    }

    /// The response head for an accepted stream.
    pub fn accepted_response() -> Response<()> {
        Response::new(())
    }
}

fn text<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, LinkHeaderError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or(LinkHeaderError::Missing(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_open_round_trips_through_headers() {
        let open = LinkOpen {
            proxy: "ssh".into(),
            client_id: 12345678901,
            peer: "[::1]:5555".parse().unwrap(),
        };
        let req = open.to_request().unwrap();
        assert_eq!(req.method(), Method::POST);
        assert_eq!(LinkOpen::from_headers(req.headers()), Ok(open));
    }

    #[test]
    fn missing_and_invalid_headers_are_errors() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            LinkOpen::from_headers(&headers),
            Err(LinkHeaderError::Missing(PROXY_HEADER))
        );
        headers.insert(PROXY_HEADER, HeaderValue::from_static("web"));
        headers.insert(CLIENT_HEADER, HeaderValue::from_static("not-a-number"));
        headers.insert(PEER_HEADER, HeaderValue::from_static("1.2.3.4:5"));
        assert_eq!(
            LinkOpen::from_headers(&headers),
            Err(LinkHeaderError::Invalid(CLIENT_HEADER))
        );
        headers.insert(CLIENT_HEADER, HeaderValue::from_static("7"));
        headers.insert(PEER_HEADER, HeaderValue::from_static("nowhere"));
        assert_eq!(
            LinkOpen::from_headers(&headers),
            Err(LinkHeaderError::Invalid(PEER_HEADER))
        );
    }

    #[test]
    fn a_proxy_name_that_cannot_be_a_header_is_an_error() {
        let open = LinkOpen {
            proxy: "bad\nname".into(),
            client_id: 1,
            peer: "1.2.3.4:5".parse().unwrap(),
        };
        assert_eq!(
            open.to_request().unwrap_err(),
            LinkHeaderError::Invalid(PROXY_HEADER)
        );
    }

    #[test]
    fn refusal_round_trips_and_ok_is_accepted() {
        let refusal = LinkRefusal {
            reason: "connection refused by 127.0.0.1:3000".into(),
        };
        let resp = refusal.to_response();
        assert_eq!(
            LinkRefusal::check_response(resp.status(), resp.headers()),
            Err(refusal)
        );
        let ok = LinkRefusal::accepted_response();
        assert_eq!(
            LinkRefusal::check_response(ok.status(), ok.headers()),
            Ok(())
        );
    }

    #[test]
    fn refusal_with_unprintable_reason_still_encodes() {
        let resp = LinkRefusal {
            reason: "bad\r\nheader\u{7f}é".into(),
        }
        .to_response();
        let got = LinkRefusal::check_response(resp.status(), resp.headers()).unwrap_err();
        assert_eq!(got.reason, "badheader");
    }
}
