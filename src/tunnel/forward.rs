//! Link connections on the tunnel side, and forwarding each link stream to its local target.
//!
//! A [`LinkWorker`] keeps one link connection to the hub up for as long as its session lives:
//! it dials, presents the session's link token, then serves HTTP/2 (roles reversed: the hub opens
//! streams). Every stream names a proxy and a client; the worker connects to that proxy's target
//! and splices bytes until both sides are done. A target that refuses is reported back to the
//! hub (which closes the client) and logged with the proxy, tunnel id and client id. Streams of
//! `udp` proxies carry datagrams and are relayed by [`super::udp`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, info_span, warn};
use uuid::Uuid;

use super::status::StatusBoard;
use super::{Backoff, Tunnel, TunnelError};
use crate::mux;
use crate::protocol::{
    Channel, HANDSHAKE_TIMEOUT, HEARTBEAT_MISSES, HubMessage, LinkOpen, LinkRefusal, Transport,
    TunnelMessage,
};
use crate::secret::Secret;

/// Keeps one link connection of a session up.
pub struct LinkWorker {
    /// The tunnel (for dialing).
    pub tunnel: Tunnel,
    /// The session the link belongs to.
    pub tunnel_id: Uuid,
    /// The session's link token.
    pub token: Secret,
    /// Proxy name to target address.
    pub targets: Arc<HashMap<String, String>>,
    /// Cancelled when the session ends.
    pub stop: CancellationToken,
    /// The session's heartbeat interval; link connections are pinged as often.
    pub heartbeat: Duration,
}

impl LinkWorker {
    /// Dials and serves link connections until the session stops, redialing with backoff
    /// when one fails.
    pub async fn run(self) {
        let backoff = Backoff::default();
        let mut attempt = 0u32;
        loop {
            let outcome = tokio::select! {
                () = self.stop.cancelled() => return,
                r = self.serve_one() => r,
            };
            let mut delay = Duration::ZERO;
            match outcome {
                Ok(()) => attempt = 0,
                Err(e) => {
                    debug!(tunnel_id = %self.tunnel_id, error = %e, "link connection failed");
                    attempt = attempt.saturating_add(1);
                    // A lockout the hub announced is waited out whole.
                    delay = e.retry_after().map_or(Duration::ZERO, super::lockout_wait);
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(delay.max(backoff.delay(attempt))) => {}
            }
        }
    }

    async fn serve_one(&self) -> Result<(), TunnelError> {
        let hello = TunnelMessage::LinkHello {
            tunnel_id: self.tunnel_id,
            token: self.token.clone(),
        };
        let (framed, reply) = self.tunnel.handshake(Channel::Link, hello).await?;
        if reply != HubMessage::LinkAccepted {
            return Err(TunnelError::Protocol(format!(
                "expected link accepted, got {reply:?}"
            )));
        }
        let handshake = mux::tunnel_builder().handshake::<_, Bytes>(framed.into_inner());
        let mut connection = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| TunnelError::Protocol("link HTTP/2 handshake timed out".into()))?
            .map_err(|e| TunnelError::Protocol(format!("link HTTP/2 handshake failed: {e}")))?;
        debug!(tunnel_id = %self.tunnel_id, "link connection up");
        let keepalive = mux::keepalive(connection.ping_pong(), self.heartbeat, HEARTBEAT_MISSES);
        tokio::pin!(keepalive);
        loop {
            let next = tokio::select! {
                next = connection.accept() => next,
                reason = &mut keepalive => return Err(TunnelError::Protocol(reason)),
            };
            let Some(next) = next else { break };
            let (request, mut respond) =
                next.map_err(|e| TunnelError::Protocol(format!("link connection failed: {e}")))?;
            let head = match LinkOpen::from_headers(request.headers()) {
                Ok(head) => head,
                Err(e) => {
                    warn!(tunnel_id = %self.tunnel_id, error = %e, "hub opened a malformed link stream");
                    refuse(&mut respond, e.to_string());
                    continue;
                }
            };
            // A debug span only (an info span per client is a measurable share of the CPU of a
            // new connection); warnings make theirs when they log.
            let span = debug_span!("client", proxy = %head.proxy, tunnel_id = %self.tunnel_id, client_id = head.client_id, peer = %head.peer);
            let stream = Stream {
                tunnel_id: self.tunnel_id,
                connect_timeout: self.tunnel.config().connect_timeout,
                status: self.tunnel.status().clone(),
                targets: self.targets.clone(),
            };
            // The task is the forwarding future itself, made from owned parts: the request
            // (its headers) is gone before the client's long wait, and nothing is held twice.
            tokio::spawn(forward(head, request.into_body(), respond, stream).instrument(span));
        }
        Ok(())
    }
}

/// What serving one stream needs besides the stream.
struct Stream {
    tunnel_id: Uuid,
    connect_timeout: Duration,
    status: Arc<StatusBoard>,
    /// Targets by proxy name.
    targets: Arc<HashMap<String, String>>,
}

/// Answers a link stream with a refusal: the hub closes its client with `reason`.
pub(super) fn refuse(respond: &mut SendResponse<Bytes>, reason: String) {
    let _ = respond.send_response(LinkRefusal { reason }.to_response(), true);
}

/// Forwards one client, named by `head`, to its proxy's target.
async fn forward(
    head: LinkOpen,
    body: RecvStream,
    mut respond: SendResponse<Bytes>,
    stream: Stream,
) {
    let warn_span = || info_span!("client", proxy = %head.proxy, tunnel_id = %stream.tunnel_id, client_id = head.client_id, peer = %head.peer);
    let Some(target) = stream.targets.get(&head.proxy) else {
        warn_span().in_scope(|| warn!("hub asked for an unknown proxy"));
        refuse(
            &mut respond,
            format!("this tunnel has no proxy `{}`", head.proxy),
        );
        return;
    };
    if head.transport == Transport::Udp {
        super::udp::serve_stream(body, respond, target, stream.connect_timeout).await;
        return;
    }
    let connected = connect(target, stream.connect_timeout).await;
    stream.status.target(&head.proxy, connected.is_ok());
    let socket = match connected {
        Ok(socket) => socket,
        Err(refusal) => {
            warn_span().in_scope(|| match &refusal {
                Unreachable::Failed(e) => {
                    warn!(%target, error = %e, "cannot reach the target; client closed");
                }
                Unreachable::TimedOut(limit) => {
                    warn!(%target, "target did not accept within {limit:?}; client closed");
                }
            });
            refuse(&mut respond, refusal.reason(target));
            return;
        }
    };
    splice(socket, body, respond, target).await;
}

/// Why the target could not be reached.
enum Unreachable {
    Failed(std::io::Error),
    TimedOut(Duration),
}

impl Unreachable {
    /// What the hub is told.
    fn reason(&self, target: &str) -> String {
        match self {
            Unreachable::Failed(e) => format!("cannot reach target {target}: {e}"),
            Unreachable::TimedOut(_) => format!("target {target} did not answer in time"),
        }
    }
}

/// Connects to a tcp target within `limit`.
async fn connect(target: &str, limit: Duration) -> Result<TcpStream, Unreachable> {
    match tokio::time::timeout(limit, TcpStream::connect(target)).await {
        Ok(Ok(socket)) => Ok(socket),
        Ok(Err(e)) => Err(Unreachable::Failed(e)),
        Err(_) => Err(Unreachable::TimedOut(limit)),
    }
}

/// Accepts the stream and splices it with the connected target until both sides are done.
async fn splice(
    socket: TcpStream,
    body: RecvStream,
    mut respond: SendResponse<Bytes>,
    target: &str,
) {
    crate::mux::tune_socket(&socket);
    let send = match respond.send_response(LinkRefusal::accepted_response(), false) {
        Ok(send) => send,
        Err(e) => {
            debug!(error = %e, "client left before its target answered");
            return;
        }
    };
    debug!(%target, "forwarding");
    // The hub enforces the idle timeout and resets the stream, which ends this splice too.
    match mux::splice(socket, send, body, None, &mux::Meter::default()).await {
        Ok(t) => debug!(sent = t.sent, received = t.received, "client closed"),
        Err(e) => debug!(error = %e, "client connection ended with an error"),
    }
}
