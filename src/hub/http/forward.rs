//! Forwarding a validated request, with retries across its hostname's backends: each try
//! routes it ([`super::route`]), gets an upstream connection ([`upstream::acquire`]), sends
//! the rewritten request ([`super::headers`]) and waits at most `response_timeout` for the
//! response head, which [`super::relay`] then relays.
//!
//! A tunnel that is just leaving must not fail a request another member of its group can
//! serve, so a request moves on to another backend when it never went out (its body is taken
//! back untouched, [`upstream::Handoff`]), or when it is replayable (idempotent, no body) and
//! its connection was lost before a response head came. Anything else is answered by the hub
//! (502, 504, 413). Debug events of a try run in a debug span; a warning makes its own info
//! span when it logs ([`client_span`]).

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError};
use tracing::{Instrument, Span, debug_span, info_span, warn};
use uuid::Uuid;

use super::body::{self, Body, MalformedBody, Watched};
use super::headers::upstream_request;
use super::metered::{Direction, Metered};
use super::relay::{Relay, finish};
use super::request::ClientRequest;
use super::route::{Routed, route};
use super::routes::Backend;
use super::upstream::{self, Handoff, Kept, SendError, UpstreamError};
use super::{Frontend, pages};
use crate::hub::clients::ClientGuard;
use crate::hub::metrics::Rejection;

/// Tries the hostname's backends in turn until one answers (see the module docs).
pub(super) async fn forward_with_retry(
    front: &Frontend,
    mut request: ClientRequest,
    kept: Option<&Kept>,
) -> Response<Body> {
    let mut tried = Vec::new();
    let mut last_error = None;
    loop {
        let routed = match route(front, &request, &mut tried, last_error.take()).await {
            Ok(routed) => routed,
            Err(page) => return page,
        };
        match try_backend(front, &mut request, routed, kept).await {
            Tried::Answered(response) => return response,
            Tried::Failed(e) => last_error = Some(e),
        }
    }
}

/// What came of one try.
enum Tried {
    /// The response for the client, the target's or the hub's own.
    Answered(Response<Body>),
    /// The request may go to another backend; this is why it did not go to this one.
    Failed(UpstreamError),
}

/// One try of `request` on the routed backend.
async fn try_backend(
    front: &Frontend,
    request: &mut ClientRequest,
    routed: Routed,
    kept: Option<&Kept>,
) -> Tried {
    let Routed { backend, client } = routed;
    let (client_id, tunnel_id, peer) = (client.entry().id, backend.session.id, request.peer);
    let span = debug_span!("client", service = %front.name, %tunnel_id, client_id, %peer, host = %request.host);
    let warn_span = || client_span(&front.name, &tunnel_id, client_id, peer, &request.host);
    // Only a request without a body is ever retried after its body was taken.
    let client_body = request.body.take().unwrap_or_else(body::empty);
    let upgrade = request.upgrade;
    let acquired = upstream::acquire(&front.shared, &backend, kept, client_id, peer, upgrade)
        .instrument(span.clone())
        .await;
    let sender = match acquired {
        Ok(sender) => sender,
        Err(e) => {
            warn_span().in_scope(|| warn!(error = %e, "backend unavailable"));
            request.body = Some(client_body);
            return Tried::Failed(e);
        }
    };
    let attempt = Attempt {
        backend,
        kept,
        sender,
        head: request.head.clone(),
        client,
        upgrade,
    };
    let (sent, handoff) = Handoff::new(client_body);
    let forwarded = forward(front, attempt, sent.boxed(), peer, &request.host)
        .instrument(span.clone())
        .await;
    let lost = |e: &UpstreamError| -> Tried {
        warn_span().in_scope(|| warn!(error = %e, "bad gateway"));
        front.shared.metrics.reject(Rejection::TargetUnreachable);
        Tried::Answered(pages::bad_gateway(&request.host, e))
    };
    match forwarded {
        Forwarded::Response(relay) => {
            let client_upgrade = request.client_upgrade.take();
            Tried::Answered(span.in_scope(|| finish(front, relay, client_upgrade, upgrade)))
        }
        Forwarded::Page(page) => Tried::Answered(page),
        Forwarded::Unsent(e) => {
            request.body = handoff.reclaim();
            if request.body.is_none() && !request.bodyless {
                // Cannot happen for a request that never went out; fail safe regardless.
                return lost(&e);
            }
            warn_span().in_scope(|| warn!(error = %e, "request not sent; trying another backend"));
            Tried::Failed(e)
        }
        Forwarded::Lost(e) if request.replayable && connection_lost(&e) => {
            warn_span().in_scope(|| warn!(error = %e, "connection lost before a response; retrying the idempotent request elsewhere"));
            Tried::Failed(e)
        }
        Forwarded::Lost(e) => lost(&e),
    }
}

/// The span of a warning about one request. Made only when there is one to log: at info level
/// a subscriber formats every span's fields when the span is made, and a span per request
/// cost about 4% of the hub's CPU through the `http` service.
fn client_span(
    service: &str,
    tunnel_id: &Uuid,
    client_id: u64,
    peer: SocketAddr,
    host: &str,
) -> Span {
    info_span!("client", service = %service, tunnel_id = %tunnel_id, client_id, %peer, %host)
}

/// One try at a request on one backend.
struct Attempt<'k> {
    backend: Arc<Backend>,
    /// The client connection's kept upstream connection (HTTP/1.1 clients).
    kept: Option<&'k Kept>,
    sender: hyper::client::conn::http1::SendRequest<Body>,
    /// The client's request head, as received.
    head: http::request::Parts,
    client: ClientGuard,
    upgrade: bool,
}

/// What came of an [`Attempt`].
enum Forwarded {
    /// The target's response head arrived; the response is ready to relay.
    Response(Relay),
    /// The hub answers the client itself (400, 413, 504).
    Page(Response<Body>),
    /// The request never went out; its body can be reclaimed.
    Unsent(UpstreamError),
    /// The request went out and no response head came back.
    Lost(UpstreamError),
}

/// Sends the attempt's request, `body` its body, and waits for the response head.
async fn forward(
    front: &Frontend,
    attempt: Attempt<'_>,
    body: Body,
    peer: SocketAddr,
    host: &str,
) -> Forwarded {
    let Attempt {
        backend,
        kept,
        sender,
        head,
        client,
        upgrade,
    } = attempt;
    let client_id = client.entry().id;
    let meter = front.shared.registry.meter(&client, &backend.session);
    let client = Arc::new(client);
    let request = Request::from_parts(head, body);
    let upstream_req = match upstream_request(front, request, peer, host, &backend, upgrade) {
        Ok(r) => r.map(|body| {
            let metered = Metered::new(meter.clone(), Direction::In, client.clone());
            Watched::new(body, metered).boxed()
        }),
        Err(detail) => {
            front.shared.metrics.reject(Rejection::BadRequest);
            return Forwarded::Page(pages::page(StatusCode::BAD_REQUEST, &detail, true));
        }
    };
    let shared = &front.shared;
    let sent = upstream::send(
        shared,
        &backend,
        kept,
        sender,
        upstream_req,
        client_id,
        peer,
        upgrade,
    );
    let warn_span = || client_span(&front.name, &backend.session.id, client_id, peer, host);
    match tokio::time::timeout(front.config.response_timeout, sent).await {
        Ok(Ok(response)) => Forwarded::Response(Relay {
            response,
            meter,
            client,
        }),
        Ok(Err(SendError::Unsent(e))) => Forwarded::Unsent(e),
        Ok(Err(SendError::Failed(e))) if body::caused_by::<MalformedBody>(&e) => {
            // A chunk after the first did not decode; the target has not answered.
            warn_span().in_scope(|| warn!(error = %e, "refused a request with bad body framing"));
            front.shared.metrics.reject(Rejection::BadRequest);
            let detail = "The request body's chunked framing is invalid.";
            Forwarded::Page(pages::page(StatusCode::BAD_REQUEST, detail, true))
        }
        Ok(Err(SendError::Failed(e))) if body::caused_by::<LengthLimitError>(&e) => {
            // The target has not answered, so the client can still be told why.
            warn_span().in_scope(|| warn!(limit = backend.max_body, "request body over max_body"));
            Forwarded::Page(pages::too_large(&front.shared.metrics))
        }
        Ok(Err(SendError::Failed(e))) => Forwarded::Lost(e),
        Err(_) => {
            let timeout = humantime::format_duration(front.config.response_timeout);
            warn_span().in_scope(|| {
                warn!(%timeout, "gateway timeout: the target sent no response head within {timeout}")
            });
            front.shared.metrics.reject(Rejection::TargetUnreachable);
            Forwarded::Page(pages::gateway_timeout(host))
        }
    }
}

/// Whether a send failed because the connection to the target went away (not because the
/// target answered badly or the client's body failed), so a replayable request may go to
/// another backend.
fn connection_lost(e: &UpstreamError) -> bool {
    match e {
        UpstreamError::Link(_) | UpstreamError::LinkTimeout | UpstreamError::Gone => true,
        UpstreamError::Refused(_) => false,
        UpstreamError::Http(e) => !(e.is_parse() || e.is_user() || e.is_timeout()),
    }
}
