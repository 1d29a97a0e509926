//! Link connections on the hub side: binding them to sessions, and opening link streams.
//!
//! A tunnel dials a few link connections after its control handshake. Each presents the
//! session's link token; once accepted, the hub runs the HTTP/2 *client* on it (roles reversed)
//! and adds its request handle to the session's [`LinkSet`]. A public client then becomes one
//! stream, opened on the next link connection in turn. Because the hub opens every stream on a
//! connection already bound to the owning session, a stream cannot be attached to another
//! tunnel's client, and it carries exactly one client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::SendStream;
use h2::client::{ResponseFuture, SendRequest};
use thiserror::Error;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::{Shared, refuse};
use crate::channel::FramedStream;
use crate::mux;
use crate::protocol::{
    Envelope, HEARTBEAT_MISSES, HubMessage, HubPreamble, LinkOpen, PROTOCOL_VERSION, RefusalCode,
    TunnelMessage,
};

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
        self.lock().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, SendRequest<Bytes>)>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, handle: SendRequest<Bytes>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().push((id, handle));
        self.added.notify_waiters();
        id
    }

    fn remove(&self, id: u64) {
        self.lock().retain(|(i, _)| *i != id);
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
        let conns = self.lock();
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

/// Serves one link connection after its preamble: authorise it, then run HTTP/2 on it until the
/// session or the connection ends.
pub(super) async fn serve_link<S>(
    shared: Arc<Shared>,
    mut framed: FramedStream<S>,
    peer: SocketAddr,
    handshake: tokio::sync::OwnedSemaphorePermit,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let accepted = HubPreamble {
        version: PROTOCOL_VERSION,
        accepted: true,
    }
    .encode();
    let hello: Envelope<TunnelMessage> = match framed
        .read_message(shared.config.handshake_timeout, "sending its link hello")
        .await
    {
        Ok(m) => m,
        Err(e) => {
            shared.metrics.reject(super::metrics::Rejection::Handshake);
            debug!(%peer, error = %e, "link connection dropped before its hello");
            return;
        }
    };
    // The first message is in: the connection no longer counts against `[limits] handshakes`.
    drop(handshake);
    let TunnelMessage::LinkHello { tunnel_id, token } = hello.msg else {
        shared.metrics.reject(super::metrics::Rejection::Handshake);
        refuse(
            &mut framed,
            &accepted,
            hello.id,
            RefusalCode::BadRequest,
            "expected a link hello",
        )
        .await;
        return;
    };
    let session = shared.registry.tunnel(&tunnel_id);
    let valid = session
        .as_ref()
        .is_some_and(|s| s.link_token.matches(token.expose()));
    // The right token of a live session is admitted even from a locked-out address (another
    // tunnel behind the same NAT may have failed); only wrong tokens are refused and counted.
    if !valid && shared.lockouts.check(peer.ip()).is_err() {
        warn!(%peer, %tunnel_id, "link connection refused: the address is locked out");
        refuse(
            &mut framed,
            &accepted,
            hello.id,
            RefusalCode::LockedOut,
            "this address is locked out after repeated failed logins",
        )
        .await;
        return;
    }
    // A wrong token for a live session is a failed login; an unknown session is not (a tunnel
    // whose session just ended redials with its old one).
    if session.is_some() && !valid {
        shared.metrics.auth_failed();
        shared.login_failed(peer.ip());
    }
    let Some(session) = session.filter(|_| valid) else {
        warn!(%peer, %tunnel_id, "link connection refused: unknown session or wrong link token");
        refuse(
            &mut framed,
            &accepted,
            hello.id,
            RefusalCode::AuthFailed,
            "link authentication failed",
        )
        .await;
        return;
    };
    let limit = shared.current().limits.links_per_tunnel;
    let Some(_slot) = session.links.admit(limit) else {
        if shared.metrics.reject_at_limit() {
            warn!(%peer, %tunnel_id, limit, "link connection refused: the tunnel has [limits] links_per_tunnel already (logged at most every 10s)");
        }
        refuse(
            &mut framed,
            &accepted,
            hello.id,
            RefusalCode::Limit,
            &format!(
                "this tunnel already has {limit} link connections ([limits] links_per_tunnel)"
            ),
        )
        .await;
        return;
    };
    let reply = Envelope {
        id: hello.id,
        msg: HubMessage::LinkAccepted,
    };
    if let Err(e) = framed.write_preamble_and(&accepted, &[&reply]).await {
        debug!(%peer, %tunnel_id, error = %e, "link connection lost during handshake");
        return;
    }
    let handshake = mux::hub_builder().handshake::<_, Bytes>(framed.into_inner());
    let (handle, mut connection) =
        match tokio::time::timeout(shared.config.handshake_timeout, handshake).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                warn!(%peer, %tunnel_id, error = %e, "link connection failed its HTTP/2 handshake");
                return;
            }
            Err(_) => {
                warn!(%peer, %tunnel_id, "link connection timed out in its HTTP/2 handshake");
                return;
            }
        };
    let link_id = session.links.add(handle);
    info!(%peer, %tunnel_id, link_id, "link connection up");
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
