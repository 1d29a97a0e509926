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
//!
//! This file owns the port (claimed and bound by `hub::ports`) and its receive loop;
//! `session` owns one client's session and its link stream.

mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use super::Shared;
use super::metrics::Rejection;
use super::ports::ServicePorts;
use super::registry::TunnelSession;
use crate::config::UdpService;
use crate::protocol::{DatagramBuffer, ProxyRequest, Transport};
use session::{ClientSession, open_session};

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

/// Serves one proxy port until the tunnel's session ends, then closes it.
async fn serve_proxy(proxy: Arc<Proxy>) {
    let span = info_span!("proxy", service = %proxy.service, tunnel_id = %proxy.session.id, proxy = %proxy.name);
    async {
        let listen = proxy.local;
        info!(%listen, "serving udp proxy {} on {listen}", proxy.name);
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
    info!(listen = %local, dropped, "udp proxy closed on {local} ({dropped} datagrams dropped)");
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
    let live = sessions.get(&peer).is_some_and(ClientSession::is_live);
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
    session.touch();
    if let Err(reason) = session.offer(frame) {
        proxy.drop_datagram(reason);
    }
}

/// Removes the session idle longest and stops it.
fn evict_idlest(sessions: &mut HashMap<SocketAddr, ClientSession>) {
    let Some(peer) = sessions
        .iter()
        .min_by_key(|(_, s)| s.last_active())
        .map(|(peer, _)| *peer)
    else {
        return;
    };
    if let Some(evicted) = sessions.remove(&peer) {
        debug!(client_id = evicted.client_id, %peer, "evicting the udp session idle longest");
        evicted.stop.cancel();
    }
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
}
