//! Peer links between the hubs of a cluster: a client that reaches a hub for a route that
//! another hub serves (the tunnel holding it is connected there) is forwarded to that hub.
//!
//! - **Which hub.** Every hub publishes the routes it serves with a live tunnel session in
//!   Redis (`hub::cluster`, at each renewal) and reads the others'. For a tcp route served
//!   elsewhere and not here, a hub binds the port itself on each tcp service that could hold
//!   it and forwards what it accepts there ([`sync_remote_ports`]); a tunnel that then claims
//!   the port here takes the bound listener over ([`Peers::take_remote_port`]), so the port
//!   never closes in between.
//! - **The link.** The forwarding hub dials the serving hub's `advertise` address: TCP, TLS
//!   pinned to the certificate SHA-256 that hub published with its membership, the preamble
//!   with the peer channel, and a `peer_hello` naming the hub, its fencing token and its peer
//!   token, which the serving hub checks against Redis (in constant time; a wrong one counts
//!   toward the address's lockout). HTTP/2 follows with the dialing hub as the client, one
//!   stream per client ([`PeerOpen`] head), answered and carried as a link stream is.
//! - **No loops.** A hub serves a forwarded stream only from its own tunnel sessions and never
//!   forwards it again; a route no local session serves is refused with the reason.
//!
//! Without `[cluster]` nothing here runs: [`Peers`] stays empty.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::Response;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, info, warn};

use super::Shared;
use super::cluster::{ClaimKey, Cluster};
use super::control::{accepted_preamble, first_frame};
use super::lockout;
use super::metrics::Rejection;
use super::ports::PublicSocket;
use super::registry::PortKey;
use crate::channel::FramedStream;
use crate::config::{HubTrust, ServiceKind};
use crate::mux::{self, Meter};
use crate::protocol::session::Refusal;
use crate::protocol::{
    Channel, Envelope, HEARTBEAT_MISSES, HubMessage, LinkOpen, LinkRefusal, PROTOCOL_VERSION,
    PeerOpen, Preamble, RefusalCode, Transport, TunnelMessage,
};

/// The peer links this hub dialed, and the ports it serves for routes other hubs hold.
#[derive(Default)]
pub(crate) struct Peers {
    /// Live peer links by hub name, each with an id (to take out only its own entry).
    links: Mutex<HashMap<String, (u64, SendRequest<Bytes>)>>,
    next_id: AtomicU64,
    /// One dial at a time, so a burst of clients makes one link, not one each.
    dialing: tokio::sync::Mutex<()>,
    /// Ports bound here for routes that other hubs serve.
    remote_ports: Mutex<HashMap<PortKey, RemotePort>>,
    /// Turns among the hubs serving a route.
    turn: AtomicUsize,
    /// Clients forwarded to another hub, and streams served for another hub.
    pub forwarded: AtomicU64,
    pub served: AtomicU64,
}

/// A port bound here for a route another hub serves.
struct RemotePort {
    listener: Arc<TcpListener>,
    stop: CancellationToken,
}

impl Peers {
    /// Takes the listener bound here for a route another hub served, for a tunnel that now
    /// claims the port here: its forwarding loop stops, the socket stays open.
    pub fn take_remote_port(&self, key: &PortKey) -> Option<Arc<TcpListener>> {
        let remote = self.remote_ports.lock().remove(key)?;
        remote.stop.cancel();
        Some(remote.listener)
    }

    /// Ports bound here for routes of other hubs, for the metrics and tests.
    pub fn remote_port_count(&self) -> usize {
        self.remote_ports.lock().len()
    }

    /// Opens a stream to hub `hub` for one client, dialing its peer link if there is none.
    async fn open(
        &self,
        shared: &Arc<Shared>,
        cluster: &Cluster,
        hub: &str,
        head: &PeerOpen,
    ) -> Result<(ResponseFuture, SendStream<Bytes>), String> {
        let request = || head.to_request().map_err(|e| e.to_string());
        let wait = shared.config.link_timeout;
        let existing = self.links.lock().get(hub).cloned();
        if let Some((id, handle)) = existing {
            match tokio::time::timeout(wait, handle.ready()).await {
                Ok(Ok(mut ready)) => match ready.send_request(request()?, false) {
                    Ok(pair) => return Ok(pair),
                    Err(e) => debug!(%hub, error = %e, "peer link lost; dialing again"),
                },
                Ok(Err(e)) => debug!(%hub, error = %e, "peer link lost; dialing again"),
                Err(_) => return Err(format!("the peer link to hub {hub} is saturated")),
            }
            self.forget(hub, id);
        }
        let handle = self.dial(shared, cluster, hub).await?;
        let mut ready = tokio::time::timeout(wait, handle.ready())
            .await
            .map_err(|_| format!("the new peer link to hub {hub} did not become ready"))?
            .map_err(|e| format!("the new peer link to hub {hub} failed: {e}"))?;
        ready
            .send_request(request()?, false)
            .map_err(|e| format!("cannot open a stream to hub {hub}: {e}"))
    }

    fn forget(&self, hub: &str, id: u64) {
        let mut links = self.links.lock();
        if links.get(hub).is_some_and(|(i, _)| *i == id) {
            links.remove(hub);
        }
    }

    /// Dials hub `hub`'s peer link (or returns the one a concurrent dial made) and drives it
    /// in a task of the hub until it fails or the hub stops.
    async fn dial(
        &self,
        shared: &Arc<Shared>,
        cluster: &Cluster,
        hub: &str,
    ) -> Result<SendRequest<Bytes>, String> {
        let _one = self.dialing.lock().await;
        if let Some((_, handle)) = self.links.lock().get(hub) {
            return Ok(handle.clone());
        }
        let address = cluster.peer_address(hub).await?;
        let limit = shared.config.handshake_timeout;
        let what = format!("hub {hub} at {}", address.advertise);
        let socket = tokio::time::timeout(limit, TcpStream::connect(&address.advertise))
            .await
            .map_err(|_| format!("{what}: no TCP connection within {limit:?}"))?
            .map_err(|e| format!("{what}: {e}"))?;
        mux::tune_socket(&socket);
        let tls = crate::tls::client_config(&HubTrust::Fingerprint(address.cert.0))
            .map_err(|e| format!("{what}: {e}"))?;
        let host = host_of(&address.advertise);
        let name = crate::tls::server_name(host).map_err(|e| format!("{what}: {e}"))?;
        let tls = tokio::time::timeout(
            limit,
            tokio_rustls::TlsConnector::from(tls).connect(name, socket),
        )
        .await
        .map_err(|_| format!("{what}: no TLS handshake within {limit:?}"))?
        .map_err(|e| format!("{what}: TLS: {e}"))?;
        let framed = say_hello(FramedStream::new(tls), cluster, &what, limit).await?;
        let (handle, mut connection) =
            tokio::time::timeout(limit, mux::hub_builder().handshake(framed.into_inner()))
                .await
                .map_err(|_| format!("{what}: no HTTP/2 handshake within {limit:?}"))?
                .map_err(|e| format!("{what}: HTTP/2: {e}"))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.links
            .lock()
            .insert(hub.to_owned(), (id, handle.clone()));
        info!(hub = %cluster.name(), peer_hub = %hub, "peer link to hub {hub} at {} up", address.advertise);
        let pings = connection.ping_pong();
        let interval = shared.config.heartbeat_interval;
        let (shared2, hub2) = (shared.clone(), hub.to_owned());
        shared.tasks.spawn(async move {
            tokio::select! {
                result = &mut connection => {
                    if let Err(e) = result {
                        debug!(peer_hub = %hub2, error = %e, "peer link ended");
                    }
                }
                reason = mux::keepalive(pings, interval, HEARTBEAT_MISSES) => {
                    warn!(peer_hub = %hub2, %reason, "dropping an unresponsive peer link to hub {hub2}");
                }
                () = shared2.sessions_root.cancelled() => {}
            }
            shared2.peers.forget(&hub2, id);
        });
        Ok(handle)
    }
}

/// Sends the peer preamble and hello on a new peer connection and reads the answer: the
/// connection, ready for HTTP/2, or why the other hub refused it.
async fn say_hello<S: AsyncRead + AsyncWrite + Unpin>(
    mut framed: FramedStream<S>,
    cluster: &Cluster,
    what: &str,
    limit: Duration,
) -> Result<FramedStream<S>, String> {
    let hello = Envelope {
        id: 1,
        msg: TunnelMessage::PeerHello {
            hub: cluster.name().to_owned(),
            epoch: cluster.epoch(),
            token: cluster.peer_token().clone(),
        },
    };
    framed
        .write_preamble_and(&Preamble::new(Channel::Peer).encode(), &[&hello])
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let answer = framed
        .read_hub_preamble(limit)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    if !answer.accepted || answer.version != PROTOCOL_VERSION {
        return Err(format!(
            "{what} speaks protocol version {}, this hub {PROTOCOL_VERSION}",
            answer.version
        ));
    }
    let reply: Envelope<HubMessage> = framed
        .read_message(limit, "answering our peer hello")
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    match reply.msg {
        HubMessage::LinkAccepted => {}
        HubMessage::Refused { message, .. } => {
            return Err(format!("{what} refused the peer link: {message}"));
        }
        other => return Err(format!("{what} answered {other:?} to the peer hello")),
    }
    Ok(framed)
}

/// The host part of `host:port` (brackets of an IPv6 address taken off).
fn host_of(advertise: &str) -> &str {
    let host = advertise
        .rsplit_once(':')
        .map_or(advertise, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Binds, on each tcp service that could hold it, every tcp port that another hub serves and
/// no tunnel here holds, and forwards its clients; closes those no hub serves any more.
pub(crate) fn sync_remote_ports(shared: &Arc<Shared>, cluster: &Arc<Cluster>) {
    let routes = cluster.routes();
    let current = shared.current();
    let mut wanted: HashMap<PortKey, (String, String)> = HashMap::new();
    for route in routes.keys() {
        let Some(ClaimKey::Port(Transport::Tcp, port)) = ClaimKey::from_route(route) else {
            continue;
        };
        for service in &current.services {
            let ServiceKind::Tcp(tcp) = &service.kind else {
                continue;
            };
            if !tcp.ports.is_os_assigned() && !tcp.ports.contains(port) {
                continue;
            }
            let key = (tcp.listen, port);
            if shared.registry.port_owner(&key).is_none() {
                wanted.insert(key, (service.name.clone(), route.clone()));
            }
        }
    }
    let mut remote = shared.peers.remote_ports.lock();
    remote.retain(|key, port| {
        let keep = wanted.contains_key(key);
        if !keep {
            port.stop.cancel();
            debug!(
                port = key.1,
                "no hub serves port {} any more: closed here", key.1
            );
        }
        keep
    });
    let taken: HashSet<PortKey> = remote.keys().copied().collect();
    for (key, (service, route)) in wanted {
        if taken.contains(&key) {
            continue;
        }
        let listener = match <TcpListener as PublicSocket>::bind(SocketAddr::from(key)) {
            Ok(listener) => Arc::new(listener),
            Err(e) => {
                debug!(port = key.1, error = %e, "cannot bind port {} for a route of another hub: {e}", key.1);
                continue;
            }
        };
        let stop = CancellationToken::new();
        remote.insert(
            key,
            RemotePort {
                listener: listener.clone(),
                stop: stop.clone(),
            },
        );
        info!(hub = %cluster.name(), %service, port = key.1, "serving port {} of service {service} for a tunnel on another hub", key.1);
        let (shared2, cluster2) = (shared.clone(), cluster.clone());
        shared.tasks.spawn(forward_clients(
            shared2, cluster2, listener, stop, service, route,
        ));
    }
}

/// Accepts clients on a port bound for another hub's route and forwards each.
async fn forward_clients(
    shared: Arc<Shared>,
    cluster: Arc<Cluster>,
    listener: Arc<TcpListener>,
    stop: CancellationToken,
    service: String,
    route: String,
) {
    let service: Arc<str> = service.into();
    let route: Arc<str> = route.into();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = shared.stop.cancelled() => break,
            accepted = shared.accept_client(&listener, "forwarded tcp port") => match accepted {
                Ok((socket, peer, place)) => {
                    let span = debug_span!("client", %service, %route, %peer);
                    let task = forward_client(shared.clone(), cluster.clone(), service.clone(), route.clone(), socket, peer);
                    shared.tasks.spawn(async move {
                        let _place = place;
                        task.await;
                    }.instrument(span));
                }
                Err(e) => {
                    warn!(error = %e, "accepting a client failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Forwards one client to a hub serving `route`, trying each in turn until one opens a
/// stream, then splices the client with it.
async fn forward_client(
    shared: Arc<Shared>,
    cluster: Arc<Cluster>,
    service: Arc<str>,
    route: Arc<str>,
    socket: TcpStream,
    peer: SocketAddr,
) {
    mux::tune_socket(&socket);
    let hubs = cluster.routes().get(&*route).cloned().unwrap_or_default();
    let head = PeerOpen {
        route: route.to_string(),
        peer,
        transport: Transport::Tcp,
    };
    let start = shared.peers.turn.fetch_add(1, Ordering::Relaxed);
    let mut opened = None;
    for i in 0..hubs.len() {
        let hub = &hubs[(start + i) % hubs.len()];
        match shared.peers.open(&shared, &cluster, hub, &head).await {
            Ok(pair) => {
                opened = Some((hub.clone(), pair));
                break;
            }
            Err(e) => {
                warn!(peer_hub = %hub, error = %e, "cannot forward a client of {route} to hub {hub}: {e}")
            }
        }
    }
    let Some((hub, (response, send))) = opened else {
        shared.metrics.reject(Rejection::NoLink);
        debug!("client dropped: no hub serving {route} could be reached");
        return;
    };
    shared.peers.forwarded.fetch_add(1, Ordering::Relaxed);
    let wait = shared.config.link_timeout;
    let answer = async {
        let refused = |e: String| io::Error::new(io::ErrorKind::ConnectionRefused, e);
        let response = tokio::time::timeout(wait, response)
            .await
            .map_err(|_| refused(format!("hub {hub} did not answer within {wait:?}")))?
            .map_err(|e| refused(format!("the stream to hub {hub} failed: {e}")))?;
        LinkRefusal::check_response(response.status(), response.headers())
            .map_err(|r| refused(format!("hub {hub}: {}", r.reason)))?;
        Ok(response.into_body())
    };
    let meter = Meter::new(vec![shared.registry.service_traffic(&service)]);
    match mux::splice_early(
        socket,
        send,
        answer,
        Some(shared.config.idle_timeout),
        &meter,
    )
    .await
    {
        Ok(t) => debug!(sent = t.sent, received = t.received, %hub, "forwarded client closed"),
        Err(e) => debug!(error = %e, %hub, "forwarded client ended"),
    }
}

/// Serves a peer link another hub of the cluster dialed: checks its hello against Redis, then
/// serves each stream it opens from this hub's own tunnel sessions.
pub(super) async fn serve_peer<S>(
    shared: Arc<Shared>,
    mut framed: FramedStream<S>,
    peer: SocketAddr,
    handshake: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let first = match first_frame(&shared, &mut framed, handshake, "sending its peer hello").await {
        Ok(first) => first,
        Err(e) => {
            shared.metrics.reject(Rejection::Handshake);
            debug!(%peer, error = %e, "peer connection dropped before its hello");
            return;
        }
    };
    let hello_id = first.id;
    let checked = check_hello(&shared, peer, first.msg).await;
    let from = match checked {
        Ok(from) => from,
        Err(refusal) => {
            let refused = refusal.answer(hello_id);
            let _ = framed
                .write_preamble_and(&accepted_preamble(), &[&refused])
                .await;
            return;
        }
    };
    let reply = Envelope {
        id: hello_id,
        msg: HubMessage::LinkAccepted,
    };
    if framed
        .write_preamble_and(&accepted_preamble(), &[&reply])
        .await
        .is_err()
    {
        return;
    }
    let limit = shared.config.handshake_timeout;
    let handshake = mux::tunnel_builder().handshake::<_, Bytes>(framed.into_inner());
    let mut connection = match tokio::time::timeout(limit, handshake).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            warn!(%peer, peer_hub = %from, error = %e, "peer link failed its HTTP/2 handshake");
            return;
        }
        Err(_) => {
            warn!(%peer, peer_hub = %from, "peer link timed out in its HTTP/2 handshake");
            return;
        }
    };
    info!(%peer, peer_hub = %from, "peer link from hub {from} ({peer}) up");
    let keepalive = mux::keepalive(
        connection.ping_pong(),
        shared.config.heartbeat_interval,
        HEARTBEAT_MISSES,
    );
    tokio::pin!(keepalive);
    loop {
        let next = tokio::select! {
            next = connection.accept() => next,
            reason = &mut keepalive => {
                warn!(peer_hub = %from, %reason, "dropping an unresponsive peer link from hub {from}");
                break;
            }
            () = shared.sessions_root.cancelled() => break,
        };
        let Some(Ok((request, respond))) = next else {
            break;
        };
        let head = PeerOpen::from_headers(request.headers());
        let span = debug_span!("forwarded", peer_hub = %from);
        let task = serve_forwarded(shared.clone(), head, request.into_body(), respond);
        shared.tasks.spawn(task.instrument(span));
    }
    debug!(peer_hub = %from, "peer link from hub {from} closed");
}

/// Whether the first frame of a peer connection is a hello of a member of this hub's
/// cluster: the hub's name, or the refusal to send.
async fn check_hello(
    shared: &Shared,
    peer: SocketAddr,
    msg: TunnelMessage,
) -> Result<String, Refusal> {
    let TunnelMessage::PeerHello { hub, epoch, token } = msg else {
        shared.metrics.reject(Rejection::Handshake);
        return Err(Refusal::new(
            RefusalCode::BadRequest,
            "expected a peer hello",
        ));
    };
    let Some(cluster) = &shared.cluster else {
        return Err(Refusal::new(
            RefusalCode::BadRequest,
            "this hub is in no cluster ([cluster] in hub.toml): it takes no peer links",
        ));
    };
    shared.pull_lockout(peer.ip()).await;
    if let Err(left) = shared.lockouts.check(peer.ip()) {
        return Err(lockout::refusal(left));
    }
    match cluster.check_peer(&hub, epoch, &token).await {
        Ok(true) => Ok(hub),
        Ok(false) => {
            shared.metrics.auth_failed();
            shared.login_failed(peer.ip());
            warn!(%peer, peer_hub = %hub, "peer link refused: not a member of the cluster, or a wrong peer token");
            Err(Refusal::new(
                RefusalCode::AuthFailed,
                "peer authentication failed: the hub is not a member of this cluster",
            ))
        }
        Err(e) => Err(Refusal::new(
            RefusalCode::Limit,
            format!("cannot check the peer hub in the cluster now: {e}; retry shortly"),
        )),
    }
}

/// Serves one stream another hub opened for a client of `head`'s route, from a local tunnel
/// session only (a forwarded stream is never forwarded again).
async fn serve_forwarded(
    shared: Arc<Shared>,
    head: Result<PeerOpen, crate::protocol::LinkHeaderError>,
    from_peer: RecvStream,
    mut respond: SendResponse<Bytes>,
) {
    let refuse = |respond: &mut SendResponse<Bytes>, reason: String| {
        debug!(%reason, "forwarded stream refused");
        let _ = respond.send_response(LinkRefusal { reason }.to_response(), true);
    };
    let head = match head {
        Ok(head) => head,
        Err(e) => return refuse(&mut respond, e.to_string()),
    };
    let Some(ClaimKey::Port(Transport::Tcp, port)) = ClaimKey::from_route(&head.route) else {
        let reason = format!("this hub forwards tcp routes only, not {}", head.route);
        return refuse(&mut respond, reason);
    };
    let Some((session, service, proxy)) = local_tcp_owner(&shared, port) else {
        let reason = format!("no tunnel on this hub serves port {port} now");
        return refuse(&mut respond, reason);
    };
    let limits = shared.current().limits;
    let client = match shared
        .registry
        .try_open_client(&session, &service, &proxy, head.peer, &limits)
    {
        Ok(client) => client,
        Err(limit) => return refuse(&mut respond, limit.to_string()),
    };
    shared.peers.served.fetch_add(1, Ordering::Relaxed);
    let link_head = LinkOpen {
        proxy,
        client_id: client.entry().id,
        peer: head.peer,
        transport: Transport::Tcp,
    };
    let wait = shared.config.link_timeout;
    let (response, mut to_tunnel) = match session.links.open(&link_head, wait).await {
        Ok(pair) => pair,
        Err(e) => return refuse(&mut respond, format!("no link to the tunnel: {e}")),
    };
    let response = match tokio::time::timeout(wait, response).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return refuse(&mut respond, format!("the link stream failed: {e}")),
        Err(_) => {
            let reason = format!("the tunnel did not reach its target within {wait:?}");
            return refuse(&mut respond, reason);
        }
    };
    // The tunnel's answer goes back as it is: a refusal with its reason, or the go-ahead.
    let refused = LinkRefusal::check_response(response.status(), response.headers()).is_err();
    let mut answer = Response::new(());
    *answer.status_mut() = response.status();
    *answer.headers_mut() = response.headers().clone();
    let Ok(mut to_peer) = respond.send_response(answer, refused) else {
        return;
    };
    if refused {
        return;
    }
    let meter = shared.registry.meter(&client, &session);
    let from_tunnel = response.into_body();
    let relay = async {
        tokio::try_join!(
            pipe(from_peer, &mut to_tunnel, &meter, true),
            pipe(from_tunnel, &mut to_peer, &meter, false),
        )
    };
    let ended = tokio::select! {
        r = relay => r.map(|_| ()),
        () = client.cancelled() => Err(io::Error::other("client disconnected by the hub")),
    };
    if let Err(e) = ended {
        debug!(error = %e, "forwarded client ended");
        to_tunnel.send_reset(h2::Reason::CANCEL);
        to_peer.send_reset(h2::Reason::CANCEL);
    }
}

/// The local session serving tcp `port` on one of this hub's tcp services, with the service
/// and proxy names.
fn local_tcp_owner(
    shared: &Shared,
    port: u16,
) -> Option<(Arc<super::registry::TunnelSession>, String, String)> {
    let current = shared.current();
    for service in &current.services {
        let ServiceKind::Tcp(tcp) = &service.kind else {
            continue;
        };
        let key = (tcp.listen, port);
        let Some(id) = shared.registry.port_owner(&key) else {
            continue;
        };
        let Some(session) = shared.registry.tunnel(&id) else {
            continue;
        };
        let proxy = session
            .proxies()
            .into_iter()
            .find(|p| p.claim == Some((Transport::Tcp, key)))?;
        return Some((session, service.name.clone(), proxy.name));
    }
    None
}

/// Copies one direction between two HTTP/2 streams, releasing window as bytes move on, and
/// ends `to` when `from` ends. Bytes count as "in" on `meter` when `inbound`.
async fn pipe(
    mut from: RecvStream,
    to: &mut SendStream<Bytes>,
    meter: &Meter,
    inbound: bool,
) -> io::Result<u64> {
    let mut total = 0u64;
    while let Some(chunk) = from.data().await {
        let chunk = chunk.map_err(mux::h2_to_io)?;
        let n = chunk.len();
        total += n as u64;
        match inbound {
            true => meter.add_in(n),
            false => meter.add_out(n),
        }
        mux::send_bytes(to, chunk).await?;
        from.flow_control()
            .release_capacity(n)
            .map_err(mux::h2_to_io)?;
    }
    to.send_data(Bytes::new(), true).map_err(mux::h2_to_io)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_an_advertise_address_is_what_tls_names() {
        assert_eq!(host_of("hub-a.example.com:7700"), "hub-a.example.com");
        assert_eq!(host_of("127.0.0.2:7700"), "127.0.0.2");
        assert_eq!(host_of("[::1]:7700"), "::1");
    }
}
