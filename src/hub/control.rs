//! The hub side of a control channel: authenticate a tunnel, set up its proxies, then answer its
//! heartbeats until it leaves, stops answering, or is told to go.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::lockout::retry_in;
use super::metrics::Rejection;
use super::registry::{ExposedProxy, TunnelLimit, TunnelSession};
use super::{Shared, http, refuse, tcp, udp};
use crate::channel::{ChannelError, FramedStream};
use crate::config::{HttpService, ServiceKind};
use crate::protocol::{
    Envelope, HEARTBEAT_MISSES, HubMessage, HubPreamble, PROTOCOL_VERSION, ProxyOutcome,
    ProxyRequest, RefusalCode, Transport, TunnelMessage,
};
use crate::secret::Secret;

/// How long one hello may wait, in all, for lost sessions' listeners to close so that their
/// held ports can be bound again.
const RECLAIM_WAIT: Duration = Duration::from_millis(500);
/// How often a held port is retried meanwhile.
const RECLAIM_POLL: Duration = Duration::from_millis(20);

/// Serves one control channel after its preamble.
pub(super) async fn serve_control<S>(
    shared: Arc<Shared>,
    mut framed: FramedStream<S>,
    peer: SocketAddr,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let accepted = HubPreamble {
        version: PROTOCOL_VERSION,
        accepted: true,
    }
    .encode();
    let hello: Envelope<TunnelMessage> = match framed
        .read_message(shared.config.handshake_timeout, "saying hello")
        .await
    {
        Ok(m) => m,
        Err(e) => {
            warn!(%peer, error = %e, "control connection dropped before its hello");
            return;
        }
    };
    let TunnelMessage::Hello { key, name, proxies } = hello.msg else {
        refuse(
            &mut framed,
            &accepted,
            hello.id,
            RefusalCode::BadRequest,
            "expected a hello",
        )
        .await;
        return;
    };
    if let Err(left) = shared.lockouts.check(peer.ip()) {
        let retry = retry_in(left);
        warn!(%peer, tunnel_name = %name, %retry, "refusing a locked-out address");
        let message =
            format!("this address is locked out after repeated failed logins; retry in {retry}");
        refuse(
            &mut framed,
            &accepted,
            hello.id,
            RefusalCode::LockedOut,
            &message,
        )
        .await;
        return;
    }
    let key_name = match authenticate(&shared, key.as_ref()) {
        Ok(name) => {
            shared.lockouts.succeed(peer.ip());
            name
        }
        Err(()) => {
            warn!(%peer, tunnel_name = %name, "tunnel authentication failed");
            shared.metrics.auth_failed();
            shared.login_failed(peer.ip());
            refuse(
                &mut framed,
                &accepted,
                hello.id,
                RefusalCode::AuthFailed,
                "authentication failed: the hub does not accept this key",
            )
            .await;
            return;
        }
    };

    let limits = shared.current().limits;
    let session = Arc::new(TunnelSession::new(name, key_name, peer, &shutdown));
    // Counted and inserted under one lock: tunnels racing for the last place cannot both win.
    if let Err(TunnelLimit(limit)) = shared
        .registry
        .insert_within(session.clone(), limits.tunnels)
    {
        if shared.metrics.reject_at_limit() {
            warn!(%peer, tunnel_name = %session.name, limit, "tunnel refused: the hub serves its maximum of tunnels");
        }
        let message = format!(
            "the hub serves its maximum of {limit} tunnels ([limits] tunnels); retry later"
        );
        refuse(
            &mut framed,
            &accepted,
            hello.id,
            RefusalCode::Limit,
            &message,
        )
        .await;
        return;
    }
    let span = info_span!("tunnel", tunnel_id = %session.id, tunnel_name = %session.name);
    async {
        // Reclaiming held ports may wait for the lost session's listeners to close, but the
        // whole hello waits at most this long for them.
        let reclaim_until = Instant::now() + RECLAIM_WAIT;
        let mut outcomes = Vec::with_capacity(proxies.len());
        for (i, request) in proxies.iter().enumerate() {
            let outcome = if i < limits.proxies_per_tunnel {
                expose(&shared, &session, request, reclaim_until).await
            } else {
                ProxyOutcome::Rejected {
                    name: request.name.clone(),
                    reason: format!(
                        "a tunnel may declare at most {} proxies ([limits] proxies_per_tunnel)",
                        limits.proxies_per_tunnel
                    ),
                }
            };
            if let ProxyOutcome::Rejected { .. } = outcome {
                shared.metrics.reject(Rejection::Proxy);
            }
            outcomes.push(outcome);
        }
        let key = session.key_name.as_deref().unwrap_or("-");
        info!(%peer, key, proxies = outcomes.len(), "tunnel connected");
        let welcome = Envelope {
            id: hello.id,
            msg: HubMessage::Welcome {
                tunnel_id: session.id,
                link_token: session.link_token.clone(),
                heartbeat_secs: announced_heartbeat_secs(&shared),
                proxies: outcomes,
            },
        };
        let reason = match framed.write_preamble_and(&accepted, &[&welcome]).await {
            Ok(()) => heartbeats(&shared, &session, &mut framed, &shutdown).await,
            Err(e) => format!("lost during handshake: {e}"),
        };
        // A session the hub closed itself (stop, operator, reload) was cancelled first and
        // frees its claims at once; a lost one leaves them held for its key for a while.
        let grace = if session.cancel.is_cancelled() {
            Duration::ZERO
        } else {
            shared.current().reconnect_grace
        };
        shared
            .hosts
            .depart(&session.id, session.key_name.as_deref(), grace);
        shared.registry.depart(&session, &reason, grace);
        if grace.is_zero() || session.key_name.is_none() {
            info!(%reason, key, "tunnel disconnected");
        } else {
            info!(%reason, key, ?grace, "tunnel lost; its ports and hostnames are held for its key");
        }
    }
    .instrument(span)
    .await;
}

/// Checks a tunnel's key against the configured keys, in constant time per key, without
/// stopping at the first match. Returns the matching key's name.
fn authenticate(shared: &Shared, key: Option<&Secret>) -> Result<Option<String>, ()> {
    let config = shared.current();
    let mut found = None;
    if let Some(key) = key {
        for candidate in &config.keys {
            if candidate.key.matches(key.expose()) && found.is_none() {
                found = Some(candidate.name.clone());
            }
        }
    }
    match found {
        Some(name) => Ok(Some(name)),
        None if config.allow_no_auth => Ok(None),
        None => Err(()),
    }
}

/// Sets up one proxy, or says why not; an accepted one is recorded in the session.
async fn expose(
    shared: &Arc<Shared>,
    session: &Arc<TunnelSession>,
    req: &ProxyRequest,
    reclaim_until: Instant,
) -> ProxyOutcome {
    let config = shared.current();
    let Some(service) = config.services.iter().find(|s| s.name == req.service) else {
        return ProxyOutcome::Rejected {
            name: req.name.clone(),
            reason: format!("the hub has no service `{}`", req.service),
        };
    };
    let name = &service.name;
    let exposed = match &service.kind {
        ServiceKind::Tcp(tcp_service) => {
            let bind = |req: &ProxyRequest| tcp::expose(shared, session, name, tcp_service, req);
            let at = (Transport::Tcp, tcp_service.listen);
            port_proxy(shared, session, name, at, req, bind, reclaim_until).await
        }
        ServiceKind::Udp(udp_service) => {
            let bind = |req: &ProxyRequest| udp::expose(shared, session, name, udp_service, req);
            let at = (Transport::Udp, udp_service.listen);
            port_proxy(shared, session, name, at, req, bind, reclaim_until).await
        }
        ServiceKind::Http(http_service) | ServiceKind::Https(http_service) => {
            host_proxy(shared, session, name, http_service, req)
        }
    };
    match exposed {
        Ok(proxy) => {
            let outcome = ProxyOutcome::Accepted {
                name: req.name.clone(),
                port: proxy.port,
                hostname: proxy.hostname.clone(),
            };
            session.add_proxy(proxy);
            outcome
        }
        Err(reason) => ProxyOutcome::Rejected {
            name: req.name.clone(),
            reason,
        },
    }
}

/// Sets up a tcp or udp proxy with `bind` (the service kind's `expose`), on service `service`
/// whose ports are claimed for `transport` on `listen`.
///
/// A tunnel that lets the hub choose gets back the port its key's lost session held for the
/// same proxy, if it is still held; a held port is retried briefly while the lost session's
/// listener closes. A port held for another key is refused with who holds it and until when.
async fn port_proxy(
    shared: &Shared,
    session: &TunnelSession,
    service: &str,
    (transport, listen): (Transport, IpAddr),
    req: &ProxyRequest,
    bind: impl Fn(&ProxyRequest) -> Result<u16, String>,
    reclaim_until: Instant,
) -> Result<ExposedProxy, String> {
    let registry = &shared.registry;
    let key_name = session.key_name.as_deref();
    let held_before = match (req.port, key_name) {
        (None, Some(key_name)) => registry
            .held_port_of(key_name, service, &req.name, transport)
            .filter(|(ip, _)| *ip == listen)
            .map(|(_, port)| port),
        _ => None,
    };
    let first = ProxyRequest {
        port: held_before.or(req.port),
        ..req.clone()
    };
    let mut bound = bind(&first);
    while let (Err(_), Some(port)) = (&bound, first.port) {
        let key = (listen, port);
        let held_for_us = registry
            .held(transport, &key)
            .is_some_and(|held| Some(held.key_name.as_str()) == key_name);
        if !held_for_us || registry.owner(transport, &key).is_some() {
            break;
        }
        if Instant::now() >= reclaim_until {
            break;
        }
        tokio::time::sleep(RECLAIM_POLL).await;
        bound = bind(&first);
    }
    if bound.is_err() && held_before.is_some() {
        // The held port cannot be had after all: let the hub choose, as the tunnel asked.
        bound = bind(req);
    }
    match bound {
        Ok(port) => Ok(ExposedProxy {
            service: service.to_owned(),
            name: req.name.clone(),
            port: Some(port),
            hostname: None,
            claim: Some((transport, (listen, port))),
        }),
        Err(reason) => {
            let held = req
                .port
                .and_then(|port| Some((port, registry.held(transport, &(listen, port))?)));
            Err(match held {
                Some((port, held)) if Some(held.key_name.as_str()) != key_name => {
                    let what = match transport {
                        Transport::Tcp => format!("port {port}"),
                        Transport::Udp => format!("udp port {port}"),
                    };
                    held.refusal(&what, Instant::now())
                }
                _ => reason,
            })
        }
    }
}

/// Sets up an http/https proxy. A tunnel that lets the hub pick its hostname gets back the one
/// its key's lost session held for the same proxy, if it is still held.
fn host_proxy(
    shared: &Arc<Shared>,
    session: &Arc<TunnelSession>,
    service: &str,
    config: &HttpService,
    req: &ProxyRequest,
) -> Result<ExposedProxy, String> {
    let held = match (&req.hostname, session.key_name.as_deref()) {
        (None, Some(key_name)) => shared.hosts.held_hostname_of(key_name, service, &req.name),
        _ => None,
    };
    let claimed = match held {
        Some(hostname) => {
            let again = ProxyRequest {
                hostname: Some(hostname),
                ..req.clone()
            };
            http::expose(shared, session, service, config, &again)
                .or_else(|_| http::expose(shared, session, service, config, req))
        }
        None => http::expose(shared, session, service, config, req),
    };
    claimed.map(|host| ExposedProxy {
        service: service.to_owned(),
        name: req.name.clone(),
        port: None,
        hostname: Some(host),
        claim: None,
    })
}

/// The heartbeat interval tunnels are told: the configured one in whole seconds, at least 1.
fn announced_heartbeat_secs(shared: &Shared) -> u64 {
    shared.config.heartbeat_interval.as_secs().max(1)
}

/// Answers heartbeats until the session ends; returns why it ended.
async fn heartbeats<S>(
    shared: &Shared,
    session: &TunnelSession,
    framed: &mut FramedStream<S>,
    shutdown: &CancellationToken,
) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The tunnel pings at the interval it was told (whole seconds), so judge it by that.
    let silence =
        std::time::Duration::from_secs(announced_heartbeat_secs(shared)) * HEARTBEAT_MISSES;
    loop {
        tokio::select! {
            () = session.cancel.cancelled() => {
                let reason = if shutdown.is_cancelled() {
                    "the hub is shutting down".to_owned()
                } else {
                    session.close_reason().unwrap_or_else(|| "closed by the hub".into())
                };
                let bye = Envelope { id: 0, msg: HubMessage::Goodbye { reason: reason.clone() } };
                let _ = framed.write_message(&bye).await;
                return reason;
            }
            msg = framed.read_message::<Envelope<TunnelMessage>>(silence, "sending heartbeats") => {
                match msg {
                    Ok(Envelope { id, msg: TunnelMessage::Ping }) => {
                        if let Err(e) = framed.write_message(&Envelope { id, msg: HubMessage::Pong }).await {
                            return format!("control connection failed: {e}");
                        }
                    }
                    Ok(Envelope { msg: TunnelMessage::Pong, .. }) => {}
                    Ok(other) => return format!("protocol error: unexpected message {:?}", other.msg),
                    Err(ChannelError::Closed) => return "the tunnel closed its control connection".into(),
                    Err(e) => return e.to_string(),
                }
            }
        }
    }
}
