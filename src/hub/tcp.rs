//! `tcp` services: public ports routed to tunnels by port number.
//!
//! A tunnel asks for a port in the service's range, or any free one. The hub claims the port in
//! the registry (so no other tunnel can take it) and binds it (`hub::ports`), then runs an
//! accept loop that lives exactly as long as the tunnel's session: when the session ends the
//! listener is dropped and the port closes at once. A range of `0` means "any port the operating system picks" (tests,
//! `tunnelize demo`).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, debug_span, info, info_span, warn};

use super::Shared;
use super::clients::ClientGuard;
use super::metrics::Rejection;
use super::per_address::AddressSlot;
use super::ports::ServicePorts;
use super::registry::TunnelSession;
use crate::config::TcpService;
use crate::mux;
use crate::protocol::{LinkOpen, LinkRefusal, ProxyRequest, Transport};

/// Claims and binds a public port for `req`, starts serving it, and returns the port.
/// The error is a reason fit to send to the tunnel.
pub(super) fn expose(
    shared: &Arc<Shared>,
    session: &Arc<TunnelSession>,
    service: &str,
    config: &TcpService,
    req: &ProxyRequest,
) -> Result<u16, String> {
    // A port this hub serves for another hub's tunnel (`hub::peer`) is taken over, socket and
    // all, when a tunnel claims it here: it never closes in between.
    let remote = req
        .port
        .and_then(|port| shared.peers.take_remote_port(&(config.listen, port)));
    let listener =
        match (remote, req.port) {
            (Some(listener), Some(port)) => {
                shared
                    .registry
                    .claim_port((config.listen, port), session.id)
                    .map_err(|_| format!("port {port} is taken by another tunnel"))?;
                listener
            }
            _ => Arc::new(
                ServicePorts::new(service, config.listen, config.ports)
                    .claim_and_bind::<TcpListener>(&shared.registry, session.id, req.port)?,
            ),
        };
    let port = listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())?;
    let shared2 = shared.clone();
    let session2 = session.clone();
    let service = service.to_owned();
    let proxy = req.name.clone();
    shared.tasks.spawn(async move {
        accept_clients(shared2, session2, listener, service, proxy).await;
    });
    Ok(port)
}

async fn accept_clients(
    shared: Arc<Shared>,
    session: Arc<TunnelSession>,
    listener: Arc<TcpListener>,
    service: String,
    proxy: String,
) {
    let local = listener.local_addr().ok();
    let listen = local.map_or_else(|| "an unknown address".to_owned(), |a| a.to_string());
    let span = info_span!("proxy", %service, tunnel_id = %session.id, %proxy);
    let service: Arc<str> = service.into();
    async {
        info!(%listen, "serving tcp proxy {proxy} on {listen}");
        loop {
            tokio::select! {
                () = session.cancel.cancelled() => break,
                // The hub is stopping: no new clients; live ones drain on their own tasks.
                () = shared.stop.cancelled() => break,
                accepted = shared.accept_client(&listener, "tcp proxy") => match accepted {
                    Ok((socket, peer, place)) => {
                        let limits = shared.current().limits;
                        let client = match shared.registry.try_open_client(&session, &service, &proxy, peer, &limits) {
                            Ok(client) => client,
                            Err(limit) => {
                                if shared.metrics.reject_at_limit() {
                                    warn!(%peer, %limit, "client refused (logged at most every 10s; counted in tunnelize_rejected_total)");
                                }
                                continue;
                            }
                        };
                        let client_id = client.entry().id;
                        let task = serve_client(shared.clone(), session.clone(), service.clone(), proxy.clone(), socket, (client, place));
                        // A debug span only: an info span per client cost 4% of the hub's CPU
                        // at 6,000 new connections a second. Warnings make theirs when they
                        // log (`client_span`).
                        let span = debug_span!("client", %service, tunnel_id = %session.id, client_id, %peer);
                        shared.tasks.spawn(task.instrument(span));
                    }
                    Err(e) => {
                        warn!(error = %e, "accepting a client failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        }
        if let Some(addr) = local {
            shared.registry.release_port(&(addr.ip(), addr.port()), session.id);
        }
        info!(%listen, "tcp proxy {proxy} closed on {listen}");
    }
    .instrument(span)
    .await;
}

async fn serve_client(
    shared: Arc<Shared>,
    session: Arc<TunnelSession>,
    service: Arc<str>,
    proxy: String,
    socket: TcpStream,
    (client, _place): (ClientGuard, AddressSlot),
) {
    tokio::select! {
        () = relay(&shared, &session, &service, proxy, socket, &client) => {}
        () = client.cancelled() => debug!("client disconnected by the hub"),
    }
}

/// The span of a warning about one client: made when there is one to log, not per client.
fn client_span(
    service: &str,
    tunnel_id: &uuid::Uuid,
    proxy: &str,
    client_id: u64,
    peer: SocketAddr,
) -> tracing::Span {
    info_span!("client", %service, %tunnel_id, %proxy, client_id, %peer)
}

async fn relay(
    shared: &Shared,
    session: &TunnelSession,
    service: &str,
    proxy: String,
    socket: TcpStream,
    client: &ClientGuard,
) {
    let (peer, client_id) = (client.entry().peer, client.entry().id);
    crate::mux::tune_socket(&socket);
    let wait = shared.config.link_timeout;
    let head = LinkOpen {
        proxy,
        client_id,
        peer,
        transport: Transport::Tcp,
    };
    let warn_span = || client_span(service, &session.id, &head.proxy, client_id, peer);
    let started = std::time::Instant::now();
    let (response, send) = match session.links.open(&head, wait).await {
        Ok(pair) => pair,
        Err(e) => {
            warn_span().in_scope(|| warn!(error = %e, "client dropped: no link to the tunnel"));
            shared.metrics.reject(Rejection::NoLink);
            return;
        }
    };
    // The client's bytes go out while the tunnel connects to its target; its answer decides
    // whether the splice goes on (see `mux::splice_early`).
    let answer = tunnel_answer(shared, response, started, warn_span);
    match mux::splice_early(
        socket,
        send,
        answer,
        Some(shared.config.idle_timeout),
        &shared.registry.meter(client, session),
    )
    .await
    {
        Ok(t) => debug!(sent = t.sent, received = t.received, "client closed"),
        Err(e) => debug!(error = %e, "client connection ended with an error"),
    }
}

/// Waits up to `link_timeout` for the tunnel's answer to a client's link stream: its body if
/// the tunnel reached its target, or an error that ends the splice (logged and counted here).
async fn tunnel_answer(
    shared: &Shared,
    response: h2::client::ResponseFuture,
    started: std::time::Instant,
    warn_span: impl Fn() -> tracing::Span,
) -> std::io::Result<h2::RecvStream> {
    let wait = shared.config.link_timeout;
    let refused = |e: &str| std::io::Error::new(std::io::ErrorKind::ConnectionRefused, e);
    let response = match tokio::time::timeout(wait, response).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            warn_span().in_scope(|| warn!(error = %e, "client dropped: the link stream failed"));
            shared.metrics.reject(Rejection::NoLink);
            return Err(refused("link stream failed"));
        }
        Err(_) => {
            warn_span().in_scope(|| {
                warn!("client dropped: the tunnel did not reach its target within {wait:?}");
            });
            shared.metrics.reject(Rejection::TargetUnreachable);
            return Err(refused("no answer from the tunnel"));
        }
    };
    shared.metrics.link_setup.observe(started.elapsed());
    if let Err(refusal) = LinkRefusal::check_response(response.status(), response.headers()) {
        warn_span().in_scope(|| {
            warn!(reason = %refusal.reason, "client closed: the tunnel could not reach its target");
        });
        shared.metrics.reject(Rejection::TargetUnreachable);
        return Err(refused("the tunnel could not reach its target"));
    }
    debug!("client connected");
    Ok(response.into_body())
}
