//! How a link stream is opened and answered.
//!
//! Link connections carry HTTP/2 with reversed roles: the tunnel dialed the TCP+TLS connection
//! and serves HTTP/2 on it, the hub opens one stream per public client. The stream's request head
//! says which proxy and which client the stream is for ([`LinkOpen`]); the response head says
//! whether the tunnel reached its target (200) or not (502 with a [`LinkRefusal`] reason). The
//! bodies are then the client's bytes in each direction, and ending a body is a half-close.
//! A stream for a `udp` proxy says so ([`Transport::Udp`]); its bodies then carry datagrams
//! framed by [`super::datagram`].

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
/// Header naming the transport the stream's bodies carry; absent means TCP.
pub const TRANSPORT_HEADER: &str = "tunnelize-transport";

/// Header of a hub-to-hub stream naming the route (the cluster claim) its client came for:
/// `tcp:PORT`, `udp:PORT` or `host:SERVICE:HOSTNAME`.
pub const ROUTE_HEADER: &str = "tunnelize-route";

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

/// What a link stream's bodies carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A byte stream (`tcp`, `http` services). The default: no header is sent.
    #[default]
    Tcp,
    /// Length-prefixed datagrams of one UDP client session (`tunnelize-transport: udp`).
    Udp,
}

impl Transport {
    /// The name used in the header and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
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
    /// What the stream's bodies carry.
    pub transport: Transport,
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
        // `from_str` also takes bytes above 0x7f, which `from_headers` cannot read back as text:
        // refuse here what the tunnel would refuse as a malformed head.
        let proxy = HeaderValue::from_str(&self.proxy)
            .ok()
            .filter(|v| v.to_str().is_ok())
            .ok_or(LinkHeaderError::Invalid(PROXY_HEADER))?;
        headers.insert(PROXY_HEADER, proxy);
        headers.insert(CLIENT_HEADER, HeaderValue::from(self.client_id));
        headers.insert(
            PEER_HEADER,
            HeaderValue::from_str(&self.peer.to_string())
                .map_err(|_| LinkHeaderError::Invalid(PEER_HEADER))?,
        );
        if self.transport != Transport::Tcp {
            headers.insert(
                TRANSPORT_HEADER,
                HeaderValue::from_static(self.transport.name()),
            );
        }
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
        let transport = match headers.get(TRANSPORT_HEADER).map(|v| v.to_str()) {
            None => Transport::Tcp,
            Some(Ok("tcp")) => Transport::Tcp,
            Some(Ok("udp")) => Transport::Udp,
            Some(_) => return Err(LinkHeaderError::Invalid(TRANSPORT_HEADER)),
        };
        Ok(LinkOpen {
            proxy,
            client_id,
            peer,
            transport,
        })
    }
}

/// The head of a hub-to-hub stream (a cluster's peer link): a client that reached another hub
/// for a route this hub serves. The answer and the bodies are a link stream's (the serving
/// hub relays its tunnel's answer), so a refusal travels back as a [`LinkRefusal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerOpen {
    /// The claim the client came for (`tcp:5000`).
    pub route: String,
    /// The public client's address, as the first hub saw it.
    pub peer: SocketAddr,
    /// What the stream's bodies carry.
    pub transport: Transport,
}

impl PeerOpen {
    /// The HTTP/2 request head that opens the stream.
    pub fn to_request(&self) -> Result<Request<()>, LinkHeaderError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(LINK_URI)
            .body(())
            .map_err(|_| LinkHeaderError::Invalid("uri"))?;
        let headers = req.headers_mut();
        let route = HeaderValue::from_str(&self.route)
            .ok()
            .filter(|v| v.to_str().is_ok())
            .ok_or(LinkHeaderError::Invalid(ROUTE_HEADER))?;
        headers.insert(ROUTE_HEADER, route);
        headers.insert(
            PEER_HEADER,
            HeaderValue::from_str(&self.peer.to_string())
                .map_err(|_| LinkHeaderError::Invalid(PEER_HEADER))?,
        );
        headers.insert(
            TRANSPORT_HEADER,
            HeaderValue::from_static(self.transport.name()),
        );
        Ok(req)
    }

    /// Reads a stream's request head.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, LinkHeaderError> {
        let route = text(headers, ROUTE_HEADER)?.to_owned();
        let peer = text(headers, PEER_HEADER)?
            .parse()
            .map_err(|_| LinkHeaderError::Invalid(PEER_HEADER))?;
        let transport = match text(headers, TRANSPORT_HEADER)? {
            "tcp" => Transport::Tcp,
            "udp" => Transport::Udp,
            _ => return Err(LinkHeaderError::Invalid(TRANSPORT_HEADER)),
        };
        Ok(PeerOpen {
            route,
            peer,
            transport,
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
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::testing;

    #[test]
    fn link_open_round_trips_through_headers() {
        let open = LinkOpen {
            proxy: "ssh".into(),
            client_id: 12345678901,
            peer: "[::1]:5555".parse().unwrap(),
            transport: Transport::Tcp,
        };
        let req = open.to_request().unwrap();
        assert_eq!(req.method(), Method::POST);
        assert_eq!(LinkOpen::from_headers(req.headers()), Ok(open));
        assert!(
            req.headers().get(TRANSPORT_HEADER).is_none(),
            "tcp streams send no transport header"
        );
    }

    #[test]
    fn a_peer_open_round_trips_and_needs_its_route() {
        let open = PeerOpen {
            route: "tcp:5000".into(),
            peer: "203.0.113.9:40000".parse().unwrap(),
            transport: Transport::Tcp,
        };
        let req = open.to_request().unwrap();
        assert_eq!(PeerOpen::from_headers(req.headers()), Ok(open));
        let mut headers = req.headers().clone();
        headers.remove(ROUTE_HEADER);
        assert_eq!(
            PeerOpen::from_headers(&headers),
            Err(LinkHeaderError::Missing(ROUTE_HEADER))
        );
        let bad = PeerOpen {
            route: "tcp:5000\n".into(),
            ..PeerOpen::from_headers(req.headers()).unwrap()
        };
        assert_eq!(
            bad.to_request().map(|_| ()),
            Err(LinkHeaderError::Invalid(ROUTE_HEADER))
        );
    }

    #[test]
    fn udp_streams_say_so_and_unknown_transports_are_refused() {
        let open = LinkOpen {
            proxy: "dns".into(),
            client_id: 9,
            peer: "10.0.0.1:53000".parse().unwrap(),
            transport: Transport::Udp,
        };
        let req = open.to_request().unwrap();
        assert_eq!(req.headers()[TRANSPORT_HEADER], "udp");
        assert_eq!(LinkOpen::from_headers(req.headers()), Ok(open));
        let mut headers = req.headers().clone();
        headers.insert(TRANSPORT_HEADER, HeaderValue::from_static("sctp"));
        assert_eq!(
            LinkOpen::from_headers(&headers),
            Err(LinkHeaderError::Invalid(TRANSPORT_HEADER))
        );
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
            transport: Transport::Tcp,
        };
        assert_eq!(
            open.to_request().unwrap_err(),
            LinkHeaderError::Invalid(PROXY_HEADER)
        );
    }

    #[test]
    fn a_non_ascii_proxy_name_is_refused_when_writing_not_when_reading() {
        // Found by a_link_open_that_encodes_reads_back_the_same: "¡" became a header the
        // tunnel could not read (`Missing`), so every stream for it failed at the far end.
        let open = LinkOpen {
            proxy: "¡".into(),
            client_id: 0,
            peer: "0.0.0.0:0".parse().unwrap(),
            transport: Transport::Tcp,
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

    /// Header values as a peer may send them: printable text, or any bytes a value may hold.
    fn header_value() -> impl Strategy<Value = HeaderValue> {
        prop_oneof![
            "[ -~]{0,24}".prop_map(|v| HeaderValue::from_str(&v).unwrap()),
            "[0-9]{1,21}".prop_map(|v| HeaderValue::from_str(&v).unwrap()),
            testing::socket_addr().prop_map(|a| HeaderValue::from_str(&a.to_string()).unwrap()),
            Just(HeaderValue::from_static("udp")),
            proptest::collection::vec(any::<u8>(), 0..24)
                .prop_filter_map("not a header value", |b| HeaderValue::from_bytes(&b).ok()),
        ]
    }

    fn head() -> impl Strategy<Value = HeaderMap> {
        let name = prop_oneof![
            Just(PROXY_HEADER),
            Just(CLIENT_HEADER),
            Just(PEER_HEADER),
            Just(TRANSPORT_HEADER),
            Just(ERROR_HEADER),
            Just("x-other"),
        ];
        proptest::collection::vec((name, header_value()), 0..8).prop_map(|pairs| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(name, value);
            }
            headers
        })
    }

    proptest! {
        #![proptest_config(testing::config(256))]

        #[test]
        fn a_link_open_that_encodes_reads_back_the_same(
            proxy in prop_oneof![testing::text(16), "[a-z0-9_-]{1,64}"],
            client_id in any::<u64>(),
            peer in testing::socket_addr(),
            udp in any::<bool>(),
        ) {
            let transport = if udp { Transport::Udp } else { Transport::Tcp };
            let open = LinkOpen { proxy, client_id, peer, transport };
            match open.to_request() {
                Ok(req) => prop_assert_eq!(LinkOpen::from_headers(req.headers()), Ok(open)),
                Err(e) => {
                    prop_assert_eq!(e, LinkHeaderError::Invalid(PROXY_HEADER));
                    prop_assert!(!open.proxy.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)));
                }
            }
        }

        #[test]
        fn any_head_a_tunnel_accepts_is_written_back_the_same(headers in head()) {
            if let Ok(open) = LinkOpen::from_headers(&headers) {
                let req = open.to_request().unwrap();
                prop_assert_eq!(LinkOpen::from_headers(req.headers()), Ok(open));
            }
        }

        #[test]
        fn only_200_accepts_a_stream(status in 100u16..1000, headers in head()) {
            let status = StatusCode::from_u16(status).unwrap();
            let result = LinkRefusal::check_response(status, &headers);
            prop_assert_eq!(result.is_ok(), status == StatusCode::OK);
        }

        #[test]
        fn a_refusal_reads_back_with_what_a_header_can_carry(reason in testing::text(64)) {
            let resp = LinkRefusal { reason: reason.clone() }.to_response();
            let got = LinkRefusal::check_response(resp.status(), resp.headers()).unwrap_err();
            let printable: String =
                reason.chars().filter(|c| c.is_ascii() && !c.is_ascii_control()).collect();
            prop_assert_eq!(got.reason, printable);
        }
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
