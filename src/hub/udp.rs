//! `udp` services: public UDP ports routed to tunnels by port number, one link stream per client
//! address.
//!
//! A tunnel asks for a port as with `tcp` services; the hub claims it in the registry (for UDP:
//! a TCP proxy may hold the same number) and binds it. One task per proxy owns the socket's
//! receive loop and a map of *sessions* by client address. A new address opens a session: a
//! link stream whose bodies carry that client's datagrams, framed so their boundaries survive
//! ([`crate::protocol::DatagramDecoder`]). Sessions per proxy are bounded by `max_sessions`
//! (a new client evicts the session idle longest), and each has a bounded queue toward the
//! tunnel: a datagram that does not fit is dropped and counted, as a congested network would.
//! Replies from a stream go back to that session's client address only. A session ends after
//! `session_timeout` without a datagram either way, when its stream fails, or with the tunnel's
//! session, which also closes the port. The hub never answers a client itself: a client only
//! ever receives what the tunnel's target sent, so a public UDP port cannot be used to amplify
//! traffic. Drops are logged at most once per [`DROP_LOG_INTERVAL`] per port.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::Shared;
use super::clients::{ClientGuard, ClientLimit};
use super::metrics::Rejection;
use super::ports::ServicePorts;
use super::registry::TunnelSession;
use crate::config::UdpService;
use crate::mux::{self, DatagramReader, Meter};
use crate::protocol::{
    DATAGRAM_HEADER_LEN, DatagramBuffer, LinkOpen, LinkRefusal, ProxyRequest, Transport,
};

/// Datagrams one session may have queued toward the tunnel.
const SESSION_QUEUE_DATAGRAMS: usize = 256;
/// Bytes one session may have queued toward the tunnel; with `max_sessions` this bounds what
/// clients can make a proxy buffer.
const SESSION_QUEUE_BYTES: usize = 256 * 1024;
/// Drops on one port are logged at most this often.
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How long a closing proxy waits for its sessions to reset their streams.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Claims and binds a public UDP port for `req`, starts serving it, and returns the port.
/// The error is a reason fit to send to the tunnel.
pub(super) fn expose(
    shared: &Arc<Shared>,
    session: &Arc<TunnelSession>,
    service: &str,
    config: &UdpService,
    req: &ProxyRequest,
) -> Result<u16, String> {
    let socket: UdpSocket = ServicePorts::new(service, config.listen, config.ports)
        .claim_and_bind(&shared.registry, session.id, req.port)?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    let proxy = Arc::new(Proxy {
        shared: shared.clone(),
        session: session.clone(),
        service: service.to_owned(),
        name: req.name.clone(),
        socket,
        local,
        session_timeout: config.session_timeout,
        max_sessions: config.max_sessions.max(1),
        epoch: Instant::now(),
        dropped: AtomicU64::new(0),
        drop_log: Mutex::new(DropLog::default()),
    });
    shared.tasks.spawn(serve_proxy(proxy));
    Ok(local.port())
}

/// One served UDP proxy port.
struct Proxy {
    shared: Arc<Shared>,
    session: Arc<TunnelSession>,
    service: String,
    /// The tunnel's proxy name.
    name: String,
    socket: UdpSocket,
    local: SocketAddr,
    session_timeout: Duration,
    max_sessions: usize,
    /// Zero of the sessions' activity clocks, so they compare.
    epoch: Instant,
    /// Datagrams dropped on this port, in either direction.
    dropped: AtomicU64,
    drop_log: Mutex<DropLog>,
}

impl Proxy {
    /// Counts a dropped datagram and logs why, at most once per [`DROP_LOG_INTERVAL`].
    fn drop_datagram(&self, reason: &str) {
        self.drop_datagrams(1, reason);
    }

    /// Counts `count` dropped datagrams and logs why, at most once per [`DROP_LOG_INTERVAL`].
    fn drop_datagrams(&self, count: usize, reason: &str) {
        self.dropped.fetch_add(count as u64, Ordering::Relaxed);
        let suppressed = self.drop_log.lock().due();
        if let Some(suppressed) = suppressed {
            warn!(
                service = %self.service,
                tunnel_id = %self.session.id,
                proxy = %self.name,
                port = self.local.port(),
                %reason,
                count,
                similar_drops_not_logged = suppressed,
                "dropping udp datagrams"
            );
        }
    }
}

/// Rate limit for drop logs on one port.
#[derive(Default)]
struct DropLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl DropLog {
    /// `Some(drops suppressed since the last log)` when a log line is due now.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < DROP_LOG_INTERVAL)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

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
struct ClientSession {
    client_id: u64,
    queue: mpsc::Sender<Bytes>,
    state: Arc<SessionState>,
    stop: CancellationToken,
}

impl ClientSession {
    /// Queues a framed datagram toward the tunnel without waiting, or says why it was dropped.
    fn offer(&self, frame: Bytes) -> Result<(), &'static str> {
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

/// Serves one proxy port until the tunnel's session ends, then closes it.
async fn serve_proxy(proxy: Arc<Proxy>) {
    let span = info_span!("proxy", service = %proxy.service, tunnel_id = %proxy.session.id, proxy = %proxy.name);
    async {
        info!(listen = %proxy.local, "serving udp proxy");
        let mut tasks: JoinSet<(SocketAddr, u64)> = JoinSet::new();
        receive(&proxy, &mut tasks).await;
        close(proxy, tasks).await;
    }
    .instrument(span)
    .await;
}

/// The receive loop: routes every datagram to its client's session and forgets sessions that
/// ended, until the tunnel's session ends.
async fn receive(proxy: &Arc<Proxy>, tasks: &mut JoinSet<(SocketAddr, u64)>) {
    let mut buffer = DatagramBuffer::new();
    let mut sessions: HashMap<SocketAddr, ClientSession> = HashMap::new();
    loop {
        tokio::select! {
            () = proxy.session.cancel.cancelled() => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok((peer, client_id)) = done
                    && sessions.get(&peer).is_some_and(|s| s.client_id == client_id)
                {
                    sessions.remove(&peer);
                }
            }
            received = proxy.socket.recv_from(buffer.payload()) => match received {
                Ok((len, peer)) => route(proxy, &mut sessions, tasks, &mut buffer, len, peer),
                // Unconnected UDP sockets report no ICMP errors, so this is unusual (such as
                // ENOBUFS): note it, give the host a moment, go on.
                Err(e) => {
                    warn!(error = %e, "receiving a datagram failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    // Returning drops the sessions' queues; their stop tokens are children of the tunnel
    // session's, so they are all stopping already.
}

/// Waits (up to [`CLOSE_GRACE`]) for the sessions to end, closes the port and only then gives
/// its claim back.
async fn close(proxy: Arc<Proxy>, mut tasks: JoinSet<(SocketAddr, u64)>) {
    if tokio::time::timeout(CLOSE_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        warn!("some udp sessions did not stop within {CLOSE_GRACE:?}; aborting them");
        tasks.shutdown().await;
    }
    let local = proxy.local;
    let dropped = proxy.dropped.load(Ordering::Relaxed);
    // The sessions have ended, so this is the last handle on the socket: the port closes
    // here, and only then is it free for another tunnel.
    let (shared, tunnel_id) = (proxy.shared.clone(), proxy.session.id);
    drop(proxy);
    shared
        .registry
        .release(Transport::Udp, &(local.ip(), local.port()), tunnel_id);
    info!(listen = %local, dropped, "udp proxy closed");
}

/// Hands the datagram of `len` bytes just received into `buffer` to its client's session,
/// opening one if needed. Never waits.
fn route(
    proxy: &Arc<Proxy>,
    sessions: &mut HashMap<SocketAddr, ClientSession>,
    tasks: &mut JoinSet<(SocketAddr, u64)>,
    buffer: &mut DatagramBuffer,
    len: usize,
    peer: SocketAddr,
) {
    let Ok(frame) = buffer.frame(len) else {
        proxy.drop_datagram("larger than 65,507 bytes");
        return;
    };
    let live = sessions.get(&peer).is_some_and(|s| !s.queue.is_closed());
    if !live && proxy.shared.stop.is_cancelled() {
        proxy.drop_datagram("the hub is stopping and takes no new clients");
        return;
    }
    if !live {
        sessions.remove(&peer);
        if sessions.len() >= proxy.max_sessions {
            evict_idlest(sessions);
        }
        match open_session(proxy, tasks, peer) {
            Ok(session) => {
                sessions.insert(peer, session);
            }
            Err(limit) => {
                // Counted here; logged through the port's rate-limited drop log.
                proxy.shared.metrics.reject(Rejection::Limit);
                proxy.drop_datagram(&format!("client refused: {limit}"));
                return;
            }
        }
    }
    // Just inserted if it was not there.
    let Some(session) = sessions.get(&peer) else {
        return;
    };
    session.state.touch();
    if let Err(reason) = session.offer(frame) {
        proxy.drop_datagram(reason);
    }
}

/// Removes the session idle longest and stops it.
fn evict_idlest(sessions: &mut HashMap<SocketAddr, ClientSession>) {
    let Some(peer) = sessions
        .iter()
        .min_by_key(|(_, s)| s.state.last_active())
        .map(|(peer, _)| *peer)
    else {
        return;
    };
    if let Some(evicted) = sessions.remove(&peer) {
        debug!(client_id = evicted.client_id, %peer, "evicting the udp session idle longest");
        evicted.stop.cancel();
    }
}

fn open_session(
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
    fn drop_logs_are_rate_limited_and_count_what_they_skipped() {
        let mut log = DropLog::default();
        assert_eq!(log.due(), Some(0));
        assert_eq!(log.due(), None);
        assert_eq!(log.due(), None);
        log.last = Some(Instant::now() - DROP_LOG_INTERVAL);
        assert_eq!(log.due(), Some(2));
    }

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
