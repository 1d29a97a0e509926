//! Link connections on the hub side: binding them to sessions, and opening link streams.
//!
//! A tunnel dials a few link connections after its control handshake. Each is served in the
//! task the accept loop spawned for it, in steps ([`serve_link`]): the **link hello** (the first
//! frame, within `handshake_timeout`); the **token check** (the session's link token, the
//! lockout table for wrong ones, and `[limits] links_per_tunnel`), answered by `link_accepted`
//! or `refused`; the **HTTP/2 client** handshake (roles reversed: the tunnel dialed, the hub
//! opens the streams); and **registration**: the request handle joins the session's
//! [`LinkSet`], and the same task drives the HTTP/2 connection, with pings every heartbeat
//! interval, until it ends, stops answering, or the session ends. A public client then becomes
//! one stream, opened by the endpoint's own task on the next link connection in turn
//! ([`LinkSet::open`]). Because the hub opens every stream on a connection already bound to
//! the owning session, a stream cannot be attached to another tunnel's client, and it carries
//! exactly one client. This module spawns no task and never holds its lock across an `.await`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::SendStream;
use h2::client::{Connection, ResponseFuture, SendRequest};
use parking_lot::Mutex;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::control::{accepted_preamble, first_frame};
use super::metrics::Rejection;
use super::registry::TunnelSession;
use super::{Shared, lockout};
use crate::channel::FramedStream;
use crate::mux;
use crate::protocol::session::Refusal;
use crate::protocol::{
    Envelope, HEARTBEAT_MISSES, HubMessage, LinkOpen, RefusalCode, TunnelMessage,
};
use crate::secret::Secret;

/// Errors opening a link stream.
#[derive(Debug, Error)]
pub enum LinkError {
    /// No link connection came up in time.
    #[error("the tunnel has no link connection (waited {0:?})")]
    NoLink(Duration),
    /// The stream head could not be encoded.
    #[error(transparent)]
    Header(#[from] crate::protocol::LinkHeaderError),
    /// HTTP/2 refused to open the stream.
    #[error("cannot open a link stream: {0}")]
    Open(#[from] h2::Error),
}

/// The link connections of one session.
#[derive(Default)]
pub struct LinkSet {
    conns: Mutex<Vec<(u64, SendRequest<Bytes>)>>,
    /// Link connections admitted (from their hello on), including ones still in their HTTP/2
    /// handshake; bounded by `[limits] links_per_tunnel`.
    admitted: Arc<AtomicUsize>,
    next_id: AtomicU64,
    turn: AtomicUsize,
    added: Notify,
}

impl std::fmt::Debug for LinkSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSet")
            .field("connections", &self.len())
            .finish()
    }
}

impl LinkSet {
    /// Number of live link connections.
    pub fn len(&self) -> usize {
        self.conns.lock().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn add(&self, handle: SendRequest<Bytes>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.conns.lock().push((id, handle));
        self.added.notify_waiters();
        id
    }

    fn remove(&self, id: u64) {
        self.conns.lock().retain(|(i, _)| *i != id);
    }

    /// Admits one more link connection unless `limit` are admitted already; the slot is freed
    /// when the returned guard is dropped.
    fn admit(&self, limit: usize) -> Option<LinkSlot> {
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| LinkSlot(self.admitted.clone()))
    }

    /// The next connection in turn, if any.
    fn pick(&self) -> Option<SendRequest<Bytes>> {
        let conns = self.conns.lock();
        if conns.is_empty() {
            return None;
        }
        let i = self.turn.fetch_add(1, Ordering::Relaxed) % conns.len();
        Some(conns[i].1.clone())
    }

    /// Opens a stream for one client, waiting up to `wait` for a link connection to exist.
    pub async fn open(
        &self,
        head: &LinkOpen,
        wait: Duration,
    ) -> Result<(ResponseFuture, SendStream<Bytes>), LinkError> {
        let request = head.to_request()?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before looking, so an `add` between the two is not missed.
            let added = self.added.notified();
            if let Some(handle) = self.pick() {
                let mut ready = tokio::time::timeout_at(deadline, handle.ready())
                    .await
                    .map_err(|_| LinkError::NoLink(wait))??;
                return Ok(ready.send_request(request, false)?);
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return Err(LinkError::NoLink(wait));
            }
        }
    }
}

/// One admitted link connection; see [`LinkSet::admit`].
struct LinkSlot(Arc<AtomicUsize>);

impl Drop for LinkSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one link connection after its preamble: link hello, token check, HTTP/2 client,
/// registration; then runs HTTP/2 on it until the session or the connection ends.
pub(super) async fn serve_link<S>(
    shared: Arc<Shared>,
    mut framed: FramedStream<S>,
    peer: SocketAddr,
    handshake: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let first = match first_frame(&shared, &mut framed, handshake, "sending its link hello").await {
        Ok(first) => first,
        Err(e) => {
            shared.metrics.reject(Rejection::Handshake);
            debug!(%peer, error = %e, "link connection dropped before its hello");
            return;
        }
    };
    let hello_id = first.id;
    let checked = match first.msg {
        TunnelMessage::LinkHello { tunnel_id, token } => {
            check_token(&shared, peer, tunnel_id, &token)
        }
        _ => {
            shared.metrics.reject(Rejection::Handshake);
            Err(Refusal::new(
                RefusalCode::BadRequest,
                "expected a link hello",
            ))
        }
    };
    // The slot is held for as long as the connection is served.
    let (session, _slot) = match checked {
        Ok(admitted) => admitted,
        Err(refusal) => {
            let refused = refusal.answer(hello_id);
            let _ = framed
                .write_preamble_and(&accepted_preamble(), &[&refused])
                .await;
            return;
        }
    };
    let tunnel_id = session.id;
    let reply = Envelope {
        id: hello_id,
        msg: HubMessage::LinkAccepted,
    };
    if let Err(e) = framed
        .write_preamble_and(&accepted_preamble(), &[&reply])
        .await
    {
        debug!(%peer, %tunnel_id, error = %e, "link connection lost during handshake");
        return;
    }
    let Some((handle, connection)) =
        http2_client(&shared, framed.into_inner(), peer, tunnel_id).await
    else {
        return;
    };
    serve_registered(&shared, &session, peer, handle, connection).await;
}

/// Whether `token`, presented from `peer`, opens a link connection of session `tunnel_id`:
/// the session and the connection's slot among its links, or the refusal to send.
///
/// The right token of a live session is admitted even from a locked-out address (another
/// tunnel behind the same NAT may have failed); only wrong tokens are refused and counted.
fn check_token(
    shared: &Shared,
    peer: SocketAddr,
    tunnel_id: Uuid,
    token: &Secret,
) -> Result<(Arc<TunnelSession>, LinkSlot), Refusal> {
    let session = shared.registry.tunnel(&tunnel_id);
    let valid = session
        .as_ref()
        .is_some_and(|s| s.link_token.matches(token.expose()));
    if !valid && let Err(left) = shared.lockouts.check(peer.ip()) {
        if shared.metrics.refuse_locked_out() {
            warn!(%peer, %tunnel_id, "link connection refused: the address is locked out (logged at most every 10s)");
        }
        return Err(lockout::refusal(left));
    }
    // A wrong token for a live session is a failed login; an unknown session is not (a tunnel
    // whose session just ended redials with its old one).
    if session.is_some() && !valid {
        shared.metrics.auth_failed();
        shared.login_failed(peer.ip());
    }
    let Some(session) = session.filter(|_| valid) else {
        warn!(%peer, %tunnel_id, "link connection refused: unknown session or wrong link token");
        return Err(Refusal::new(
            RefusalCode::AuthFailed,
            "link authentication failed",
        ));
    };
    let limit = shared.current().limits.links_per_tunnel;
    let Some(slot) = session.links.admit(limit) else {
        if shared.metrics.reject_at_limit() {
            warn!(%peer, %tunnel_id, limit, "link connection refused: the tunnel has [limits] links_per_tunnel already (logged at most every 10s)");
        }
        let message =
            format!("this tunnel already has {limit} link connections ([limits] links_per_tunnel)");
        return Err(Refusal::new(RefusalCode::Limit, message));
    };
    Ok((session, slot))
}

/// Runs the HTTP/2 handshake on an accepted link connection, within `handshake_timeout`, as
/// the client: the roles are reversed, the tunnel dialed but the hub opens the streams.
async fn http2_client<S>(
    shared: &Shared,
    stream: S,
    peer: SocketAddr,
    tunnel_id: Uuid,
) -> Option<(SendRequest<Bytes>, Connection<S, Bytes>)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake = mux::hub_builder().handshake::<_, Bytes>(stream);
    match tokio::time::timeout(shared.config.handshake_timeout, handshake).await {
        Ok(Ok(pair)) => Some(pair),
        Ok(Err(e)) => {
            warn!(%peer, %tunnel_id, error = %e, "link connection failed its HTTP/2 handshake");
            None
        }
        Err(_) => {
            warn!(%peer, %tunnel_id, "link connection timed out in its HTTP/2 handshake");
            None
        }
    }
}

/// Adds the connection's request handle to its session's [`LinkSet`], and drives the
/// connection (in this task) until it ends, stops answering HTTP/2 pings, or the session ends;
/// then takes the handle out again.
async fn serve_registered<S>(
    shared: &Shared,
    session: &TunnelSession,
    peer: SocketAddr,
    handle: SendRequest<Bytes>,
    mut connection: Connection<S, Bytes>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tunnel_id = session.id;
    let link_id = session.links.add(handle);
    info!(%peer, %tunnel_id, link_id, "link connection {link_id} up from {peer}");
    let pings = connection.ping_pong();
    let interval = shared.config.heartbeat_interval;
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                debug!(%tunnel_id, link_id, error = %e, "link connection ended");
            }
        }
        reason = mux::keepalive(pings, interval, HEARTBEAT_MISSES) => {
            warn!(%tunnel_id, link_id, %reason, "dropping an unresponsive link connection");
        }
        () = session.cancel.cancelled() => {}
    }
    session.links.remove(link_id);
    debug!(%tunnel_id, link_id, "link connection closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_slots_are_bounded_and_freed_when_dropped() {
        let links = LinkSet::default();
        let a = links.admit(2).expect("first");
        let b = links.admit(2).expect("second");
        assert!(links.admit(2).is_none(), "a third is over the limit");
        drop(a);
        let c = links.admit(2).expect("a freed slot is reused");
        assert!(links.admit(2).is_none());
        drop((b, c));
        assert_eq!(links.admitted.load(Ordering::Acquire), 0);
    }
}
