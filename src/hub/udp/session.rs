//! One client session of a udp proxy: the link stream that carries one client address's
//! datagrams, and what it shares with the proxy's receive loop.
//!
//! The receive loop ([`super`]) hands a session framed datagrams through a queue bounded in
//! datagrams and in bytes ([`ClientSession::offer`], which never waits); the session's task
//! opens its link stream, then relays both ways until it is idle for `session_timeout`, is
//! stopped (evicted, or the proxy closes), or its stream ends. Replies go to the session's own
//! client address and nowhere else. This module never reads the proxy socket.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

use super::Proxy;
use crate::hub::clients::{ClientGuard, ClientLimit};
use crate::hub::metrics::Rejection;
use crate::mux::{self, DatagramReader, Meter};
use crate::protocol::{DATAGRAM_HEADER_LEN, LinkOpen, LinkRefusal, Transport};

/// Datagrams one session may have queued toward the tunnel.
const SESSION_QUEUE_DATAGRAMS: usize = 256;
/// Bytes one session may have queued toward the tunnel; with `max_sessions` this bounds what
/// clients can make a proxy buffer.
const SESSION_QUEUE_BYTES: usize = 256 * 1024;
/// What a session shares with the proxy's receive loop.
struct SessionState {
    epoch: Instant,
    /// Microseconds after `epoch` of the last datagram in either direction (fine enough to
    /// order clients that take turns).
    last_active_us: AtomicU64,
    /// Bytes in the session's queue toward the tunnel.
    queued_bytes: AtomicUsize,
    /// Counts the session's datagram payloads (for the admin API and metrics).
    meter: Meter,
}

impl SessionState {
    fn new(epoch: Instant, meter: Meter) -> Self {
        let state = SessionState {
            epoch,
            last_active_us: AtomicU64::new(0),
            queued_bytes: AtomicUsize::new(0),
            meter,
        };
        state.touch();
        state
    }

    fn touch(&self) {
        let us = self.epoch.elapsed().as_micros() as u64;
        self.last_active_us.store(us, Ordering::Relaxed);
    }

    fn last_active(&self) -> u64 {
        self.last_active_us.load(Ordering::Relaxed)
    }

    /// Resolves once nothing has moved for `limit`.
    async fn idle(&self, limit: Duration) {
        loop {
            let deadline = self.epoch + Duration::from_micros(self.last_active()) + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A session as the receive loop sees it.
pub(super) struct ClientSession {
    /// The client's id, so that a session that ended is told from its successor.
    pub client_id: u64,
    queue: mpsc::Sender<Bytes>,
    state: Arc<SessionState>,
    /// Cancelled to evict the session.
    pub stop: CancellationToken,
}

impl ClientSession {
    /// Whether its task still takes datagrams.
    pub fn is_live(&self) -> bool {
        !self.queue.is_closed()
    }

    /// Marks the session active now (a datagram from its client).
    pub fn touch(&self) {
        self.state.touch();
    }

    /// When it was last active, to find the session idle longest.
    pub fn last_active(&self) -> u64 {
        self.state.last_active()
    }

    /// Queues a framed datagram toward the tunnel without waiting, or says why it was dropped.
    pub fn offer(&self, frame: Bytes) -> Result<(), &'static str> {
        const FULL: &str = "the client's queue toward the tunnel is full";
        let size = frame.len();
        let queued = &self.state.queued_bytes;
        if queued.fetch_add(size, Ordering::Relaxed) + size > SESSION_QUEUE_BYTES {
            queued.fetch_sub(size, Ordering::Relaxed);
            return Err(FULL);
        }
        self.queue.try_send(frame).map_err(|e| {
            queued.fetch_sub(size, Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => FULL,
                TrySendError::Closed(_) => "the client's session just ended",
            }
        })
    }
}

/// Why a session ended.
#[derive(Debug)]
enum Ended {
    Idle,
    /// Evicted for a new client, or the proxy is closing.
    Stopped,
    /// The tunnel ended the stream (its socket toward the target failed).
    TunnelClosed,
}

/// Opens a session for a new client address: admits the client (limits), spawns its task on
/// `tasks`, and returns the receive loop's side of it.
pub(super) fn open_session(
    proxy: &Arc<Proxy>,
    tasks: &mut JoinSet<(SocketAddr, u64)>,
    peer: SocketAddr,
) -> Result<ClientSession, ClientLimit> {
    let limits = proxy.shared.current().limits;
    let client = proxy.shared.registry.try_open_client(
        &proxy.session,
        &proxy.service,
        &proxy.name,
        peer,
        &limits,
    )?;
    let client_id = client.entry().id;
    let (queue, receiver) = mpsc::channel(SESSION_QUEUE_DATAGRAMS);
    let meter = proxy.shared.registry.meter(&client, &proxy.session);
    let state = Arc::new(SessionState::new(proxy.epoch, meter));
    // A child of the tunnel session's token; an operator's disconnect cancels it too.
    let stop = client.entry().cancel.clone();
    let span = info_span!("client", service = %proxy.service, tunnel_id = %proxy.session.id, client_id, %peer);
    let task = serve_session(
        proxy.clone(),
        peer,
        client,
        receiver,
        state.clone(),
        stop.clone(),
    );
    tasks.spawn(task.instrument(span));
    Ok(ClientSession {
        client_id,
        queue,
        state,
        stop,
    })
}

/// Runs one client session: opens its link stream, then relays datagrams both ways until it
/// ends. Returns who it was, so the receive loop can forget it.
async fn serve_session(
    proxy: Arc<Proxy>,
    peer: SocketAddr,
    client: ClientGuard,
    queue: mpsc::Receiver<Bytes>,
    state: Arc<SessionState>,
    stop: CancellationToken,
) -> (SocketAddr, u64) {
    let client_id = client.entry().id;
    let opened = tokio::select! {
        () = stop.cancelled() => return (peer, client_id),
        opened = open_stream(&proxy, peer, client_id) => opened,
    };
    let (send, recv) = match opened {
        Ok(pair) => pair,
        Err(reason) => {
            // What the client sent meanwhile is lost (at least the datagram that opened it).
            proxy.drop_datagrams(queue.len().max(1), &reason);
            return (peer, client_id);
        }
    };
    debug!("udp session opened");
    match relay(&proxy, peer, queue, send, recv, &state, &stop).await {
        Ok(ended) => debug!(?ended, "udp session ended"),
        Err(e) => debug!(error = %e, "udp session ended with an error"),
    }
    (peer, client_id)
}

/// Opens the session's link stream and waits for the tunnel's answer, or says why not.
async fn open_stream(
    proxy: &Proxy,
    peer: SocketAddr,
    client_id: u64,
) -> Result<(SendStream<Bytes>, RecvStream), String> {
    let wait = proxy.shared.config.link_timeout;
    let head = LinkOpen {
        proxy: proxy.name.clone(),
        client_id,
        peer,
        transport: Transport::Udp,
    };
    let metrics = &proxy.shared.metrics;
    let started = Instant::now();
    let (response, send) = match proxy.session.links.open(&head, wait).await {
        Ok(pair) => pair,
        Err(e) => {
            metrics.reject(Rejection::NoLink);
            return Err(format!("no link to the tunnel: {e}"));
        }
    };
    let response = match tokio::time::timeout(wait, response).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            metrics.reject(Rejection::NoLink);
            return Err(format!("the link stream failed: {e}"));
        }
        Err(_) => {
            metrics.reject(Rejection::TargetUnreachable);
            return Err(format!("the tunnel did not answer within {wait:?}"));
        }
    };
    metrics.link_setup.observe(started.elapsed());
    if let Err(refusal) = LinkRefusal::check_response(response.status(), response.headers()) {
        metrics.reject(Rejection::TargetUnreachable);
        return Err(format!(
            "the tunnel cannot reach its target: {}",
            refusal.reason
        ));
    }
    Ok((send, response.into_body()))
}

async fn relay(
    proxy: &Proxy,
    peer: SocketAddr,
    mut queue: mpsc::Receiver<Bytes>,
    mut send: SendStream<Bytes>,
    recv: RecvStream,
    state: &SessionState,
    stop: &CancellationToken,
) -> io::Result<Ended> {
    let result = tokio::select! {
        r = to_tunnel(&mut queue, &mut send, state) => r,
        r = to_client(recv, proxy, peer, state) => r,
        () = state.idle(proxy.session_timeout) => Ok(Ended::Idle),
        () = stop.cancelled() => Ok(Ended::Stopped),
    };
    // A UDP session has no graceful end: the tunnel drops its socket when the stream resets.
    send.send_reset(h2::Reason::CANCEL);
    result
}

/// Sends queued datagrams (already framed) into the stream.
async fn to_tunnel(
    queue: &mut mpsc::Receiver<Bytes>,
    send: &mut SendStream<Bytes>,
    state: &SessionState,
) -> io::Result<Ended> {
    while let Some(frame) = queue.recv().await {
        state.queued_bytes.fetch_sub(frame.len(), Ordering::Relaxed);
        state
            .meter
            .add_in(frame.len().saturating_sub(DATAGRAM_HEADER_LEN));
        mux::send_bytes(send, frame).await?;
    }
    // The receive loop let go of the session.
    Ok(Ended::Stopped)
}

/// Sends the datagrams of the stream's body to the session's client, and to nobody else.
/// The window of the stream goes back only once the datagrams are out ([`DatagramReader`]):
/// a stalled socket slows the sender.
async fn to_client(
    recv: RecvStream,
    proxy: &Proxy,
    peer: SocketAddr,
    state: &SessionState,
) -> io::Result<Ended> {
    let mut datagrams = DatagramReader::new(recv);
    while let Some(datagram) = datagrams.next().await? {
        state.touch();
        match proxy.socket.send_to(&datagram, peer).await {
            Ok(sent) => state.meter.add_out(sent),
            Err(e) => proxy.drop_datagram(&format!("cannot send a reply to the client: {e}")),
        }
    }
    Ok(Ended::TunnelClosed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_queue_is_bounded_in_bytes_and_datagrams() {
        let (queue, mut receiver) = mpsc::channel(SESSION_QUEUE_DATAGRAMS);
        let session = ClientSession {
            client_id: 1,
            queue,
            state: Arc::new(SessionState::new(Instant::now(), Meter::default())),
            stop: CancellationToken::new(),
        };
        let largest = Bytes::from(vec![0u8; DATAGRAM_HEADER_LEN + 65_507]);
        let fit = SESSION_QUEUE_BYTES / largest.len();
        for _ in 0..fit {
            assert_eq!(session.offer(largest.clone()), Ok(()));
        }
        assert!(
            session.offer(largest.clone()).is_err(),
            "over the byte budget"
        );
        // Taking a datagram out (as `to_tunnel` does) makes room again.
        let taken = receiver.try_recv().unwrap();
        session
            .state
            .queued_bytes
            .fetch_sub(taken.len(), Ordering::Relaxed);
        assert_eq!(session.offer(largest), Ok(()));
        // Small datagrams hit the count limit instead.
        while receiver.try_recv().is_ok() {}
        session.state.queued_bytes.store(0, Ordering::Relaxed);
        let small = Bytes::from_static(&[0, 1, 7]);
        for _ in 0..SESSION_QUEUE_DATAGRAMS {
            assert_eq!(session.offer(small.clone()), Ok(()));
        }
        assert!(
            session.offer(small.clone()).is_err(),
            "over the datagram count"
        );
        drop(receiver);
        assert_eq!(session.offer(small), Err("the client's session just ended"));
    }
}
