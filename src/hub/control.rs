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

/// How long a hello may wait for a lost session's listeners to close so that their held
/// ports can be bound again.
const RECLAIM_WAIT: Duration = Duration::from_millis(500);
/// How often a held port is retried meanwhile.
const RECLAIM_POLL: Duration = Duration::from_millis(20);
/// How long a tunnel has to answer a liveness check (a ping from the hub).
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one hello may wait, in all, for liveness checks of sessions of its own key.
const PROBE_WAIT: Duration = Duration::from_secs(4);
/// Ids of the hub's own requests on a control connection (a tunnel counts up from 1).
const HUB_REQUEST_IDS: u64 = 1 << 63;

/// What one hello may still spend waiting for the claims it asks for.
struct Waits {
    /// For a lost session's listeners to close.
    reclaim_until: Instant,
    /// For sessions of the same key to prove they are alive.
    probe_until: Instant,
}

impl Waits {
    fn new() -> Self {
        let now = Instant::now();
        Waits {
            reclaim_until: now + RECLAIM_WAIT,
            probe_until: now + PROBE_WAIT,
        }
    }

    /// Whether `holder`, a live session of the same key as the asking one, ended on a
    /// liveness check (its connection was dead; its claims are now held for the key). Ending
    /// one grants a fresh wait for its listeners to close.
    async fn ended(&mut self, holder: &TunnelSession) -> bool {
        let ended = holder.ended_after_probe(self.probe_until).await;
        if ended {
            self.reclaim_until = Instant::now() + RECLAIM_WAIT;
        }
        ended
    }
}

/// A live session of `session`'s key (not itself) serving a proxy named `proxy` on `service`:
/// perhaps the same tunnel, back before the hub noticed that its old session died. A tunnel
/// that lets the hub choose checks it, so that a dead one's claims come back to it.
fn twin(
    shared: &Shared,
    session: &TunnelSession,
    service: &str,
    proxy: &str,
) -> Option<Arc<TunnelSession>> {
    session.key_name.as_ref()?;
    shared.registry.tunnels().into_iter().find(|other| {
        same_key(session, other).is_some()
            && other
                .proxies()
                .iter()
                .any(|p| p.service == service && p.name == proxy)
    })
}

/// `holder`, a session of `session`'s key other than itself, if `holder` is one.
fn same_key<'a>(session: &TunnelSession, holder: &'a TunnelSession) -> Option<&'a TunnelSession> {
    let same =
        holder.id != session.id && holder.key_name.is_some() && holder.key_name == session.key_name;
    same.then_some(holder)
}

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
        let mut waits = Waits::new();
        let mut outcomes = Vec::with_capacity(proxies.len());
        for (i, request) in proxies.iter().enumerate() {
            let outcome = if i < limits.proxies_per_tunnel {
                expose(&shared, &session, request, &mut waits).await
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
            Ok(()) => heartbeats(&shared, &session, framed, &shutdown).await,
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
    waits: &mut Waits,
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
            port_proxy(shared, session, name, at, req, bind, waits).await
        }
        ServiceKind::Udp(udp_service) => {
            let bind = |req: &ProxyRequest| udp::expose(shared, session, name, udp_service, req);
            let at = (Transport::Udp, udp_service.listen);
            port_proxy(shared, session, name, at, req, bind, waits).await
        }
        ServiceKind::Http(http_service) | ServiceKind::Https(http_service) => {
            host_proxy(shared, session, name, http_service, req, waits).await
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
/// listener closes. A port a live session of the same key holds is checked: if that session
/// does not answer, it is taken as lost and the port is reclaimed. A port held for another key
/// is refused with who holds it and until when.
async fn port_proxy(
    shared: &Shared,
    session: &TunnelSession,
    service: &str,
    (transport, listen): (Transport, IpAddr),
    req: &ProxyRequest,
    bind: impl Fn(&ProxyRequest) -> Result<u16, String>,
    waits: &mut Waits,
) -> Result<ExposedProxy, String> {
    let registry = &shared.registry;
    let key_name = session.key_name.as_deref();
    if req.port.is_none()
        && let Some(twin) = twin(shared, session, service, &req.name)
    {
        waits.ended(&twin).await;
    }
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
    let mut alive_holder = false;
    while bound.is_err()
        && let Some(port) = first.port
    {
        let key = (listen, port);
        match registry.owner(transport, &key) {
            Some(owner) => {
                let Some(holder) = registry.tunnel(&owner) else {
                    break;
                };
                let Some(holder) = same_key(session, &holder) else {
                    break;
                };
                if !waits.ended(holder).await {
                    alive_holder = true;
                    break;
                }
            }
            None => {
                let held_for_us = registry
                    .held(transport, &key)
                    .is_some_and(|held| Some(held.key_name.as_str()) == key_name);
                if !held_for_us || Instant::now() >= waits.reclaim_until {
                    break;
                }
                tokio::time::sleep(RECLAIM_POLL).await;
            }
        }
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
            let what = |port: u16| match transport {
                Transport::Tcp => format!("port {port}"),
                Transport::Udp => format!("udp port {port}"),
            };
            Err(match (held, req.port) {
                (Some((port, held)), _) if Some(held.key_name.as_str()) != key_name => {
                    held.refusal(&what(port), Instant::now())
                }
                (_, Some(port)) if alive_holder => {
                    still_connected(&format!("{} is taken by", what(port)), key_name)
                }
                _ => reason,
            })
        }
    }
}

/// Why a claim is refused when a live session of the same key holds it and answered; `taken`
/// is "port 5000 is taken by" or the like.
fn still_connected(taken: &str, key_name: Option<&str>) -> String {
    format!(
        "{taken} another tunnel of key `{}` that is still connected (it answered a liveness \
         check); run one tunnel per key and proxy, or ask for another",
        key_name.unwrap_or("-")
    )
}

/// Sets up an http/https proxy. A tunnel that lets the hub pick its hostname gets back the one
/// its key's lost session held for the same proxy, if it is still held. A hostname live
/// sessions of the same key hold is checked as for ports: if none of them answers, they are
/// taken as lost and the hostname is claimed again.
async fn host_proxy(
    shared: &Arc<Shared>,
    session: &Arc<TunnelSession>,
    service: &str,
    config: &HttpService,
    req: &ProxyRequest,
    waits: &mut Waits,
) -> Result<ExposedProxy, String> {
    if req.hostname.is_none()
        && let Some(twin) = twin(shared, session, service, &req.name)
    {
        waits.ended(&twin).await;
    }
    let held = match (&req.hostname, session.key_name.as_deref()) {
        (None, Some(key_name)) => shared.hosts.held_hostname_of(key_name, service, &req.name),
        _ => None,
    };
    let wanted = held.clone().or_else(|| {
        let name = req.hostname.as_deref()?.to_ascii_lowercase();
        Some(match name.contains('.') {
            true => name,
            false => format!("{name}.{}", config.domain),
        })
    });
    let first = ProxyRequest {
        hostname: wanted.clone(),
        ..req.clone()
    };
    let mut claimed = http::expose(shared, session, service, config, &first);
    if claimed.is_err()
        && let Some(host) = &wanted
    {
        let holders = shared.hosts.sessions(service, host);
        let ours: Vec<_> = holders
            .iter()
            .filter_map(|h| same_key(session, h))
            .collect();
        if !ours.is_empty() && ours.len() == holders.len() {
            let mut all_ended = true;
            for holder in ours {
                all_ended &= waits.ended(holder).await;
            }
            claimed = match all_ended {
                true => http::expose(shared, session, service, config, &first),
                false => Err(still_connected(
                    &format!("hostname {host} is in use by"),
                    session.key_name.as_deref(),
                )),
            };
        }
    }
    if claimed.is_err() && held.is_some() {
        // The held hostname cannot be had after all: let the hub pick, as the tunnel asked.
        claimed = http::expose(shared, session, service, config, req);
    }
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

/// Answers heartbeats until the session ends; returns why it ended. A liveness check asked for
/// by another session of the same key sends the tunnel a ping it must answer within
/// [`PROBE_TIMEOUT`], or the session is taken as lost.
async fn heartbeats<S>(
    shared: &Shared,
    session: &TunnelSession,
    framed: FramedStream<S>,
    shutdown: &CancellationToken,
) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The tunnel pings at the interval it was told (whole seconds), so judge it by that.
    let silence = Duration::from_secs(announced_heartbeat_secs(shared)) * HEARTBEAT_MISSES;
    let (reader, writer) = tokio::io::split(framed.into_inner());
    let mut writer = FramedStream::new(writer);
    // One read in flight at a time, kept across loop turns: a liveness check must never
    // cancel a half-read frame.
    let mut pending = Box::pin(read_one(FramedStream::new(reader), silence));
    let mut probe: Option<tokio::time::Instant> = None;
    let mut next_id = HUB_REQUEST_IDS;
    loop {
        let probe_timer = tokio::time::sleep_until(
            probe.unwrap_or_else(|| tokio::time::Instant::now() + silence),
        );
        tokio::select! {
            () = session.cancel.cancelled() => {
                let reason = if shutdown.is_cancelled() {
                    "the hub is shutting down".to_owned()
                } else {
                    session.close_reason().unwrap_or_else(|| "closed by the hub".into())
                };
                let bye = Envelope { id: 0, msg: HubMessage::Goodbye { reason: reason.clone() } };
                let _ = writer.write_message(&bye).await;
                return reason;
            }
            () = session.probe_requested(), if probe.is_none() => {
                let ping = Envelope { id: next_id, msg: HubMessage::Ping };
                next_id = next_id.wrapping_add(1);
                if let Err(e) = writer.write_message(&ping).await {
                    return format!("control connection failed: {e}");
                }
                probe = Some(tokio::time::Instant::now() + PROBE_TIMEOUT);
            }
            () = probe_timer, if probe.is_some() => {
                return format!(
                    "the tunnel did not answer a liveness check within {PROBE_TIMEOUT:?} (another \
                     tunnel of its key asked for its ports or hostnames)"
                );
            }
            (reader, msg) = &mut pending => {
                match msg {
                    Ok(Envelope { id, msg: TunnelMessage::Ping }) => {
                        if let Err(e) = writer.write_message(&Envelope { id, msg: HubMessage::Pong }).await {
                            return format!("control connection failed: {e}");
                        }
                    }
                    Ok(Envelope { msg: TunnelMessage::Pong, .. }) => {
                        if probe.take().is_some() {
                            session.probe_answered();
                        }
                    }
                    Ok(other) => return format!("protocol error: unexpected message {:?}", other.msg),
                    Err(ChannelError::Closed) => return "the tunnel closed its control connection".into(),
                    Err(e) => return e.to_string(),
                }
                pending = Box::pin(read_one(reader, silence));
            }
        }
    }
}

/// Reads the next message, handing the reader back with it.
async fn read_one<R: AsyncRead + Unpin>(
    mut reader: FramedStream<R>,
    silence: Duration,
) -> (
    FramedStream<R>,
    Result<Envelope<TunnelMessage>, ChannelError>,
) {
    let msg = reader.read_message(silence, "sending heartbeats").await;
    (reader, msg)
}
