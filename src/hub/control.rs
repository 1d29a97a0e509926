//! The hub side of a control channel: authenticate a tunnel, set up its proxies, then answer its
//! heartbeats until it leaves, stops answering, or is told to go.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::lockout::retry_in;
use super::metrics::Rejection;
use super::registry::{ExposedProxy, TunnelSession};
use super::{Shared, http, refuse, tcp, udp};
use crate::channel::{ChannelError, FramedStream};
use crate::protocol::{
    Envelope, HEARTBEAT_MISSES, HubMessage, HubPreamble, PROTOCOL_VERSION, ProxyOutcome,
    ProxyRequest, RefusalCode, TunnelMessage,
};
use crate::secret::Secret;

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
    if shared.registry.tunnel_count() >= limits.tunnels {
        if shared.metrics.reject_at_limit() {
            warn!(%peer, tunnel_name = %name, limit = limits.tunnels, "tunnel refused: the hub serves its maximum of tunnels");
        }
        let message = format!(
            "the hub serves its maximum of {} tunnels ([limits] tunnels); retry later",
            limits.tunnels
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
    let session = Arc::new(TunnelSession::new(name, key_name, peer, &shutdown));
    shared.registry.insert(session.clone());
    let span = info_span!("tunnel", tunnel_id = %session.id, tunnel_name = %session.name);
    async {
        let outcomes: Vec<ProxyOutcome> = proxies
            .iter()
            .enumerate()
            .map(|(i, p)| match i < limits.proxies_per_tunnel {
                true => expose(&shared, &session, p),
                false => ProxyOutcome::Rejected {
                    name: p.name.clone(),
                    reason: format!(
                        "a tunnel may declare at most {} proxies ([limits] proxies_per_tunnel)",
                        limits.proxies_per_tunnel
                    ),
                },
            })
            .collect();
        for (request, outcome) in proxies.iter().zip(&outcomes) {
            match outcome {
                ProxyOutcome::Accepted { name, port, hostname } => session.add_proxy(ExposedProxy {
                    service: request.service.clone(),
                    name: name.clone(),
                    port: *port,
                    hostname: hostname.clone(),
                }),
                ProxyOutcome::Rejected { .. } => shared.metrics.reject(Rejection::Proxy),
            }
        }
        info!(%peer, key = session.key_name.as_deref().unwrap_or("-"), proxies = outcomes.len(), "tunnel connected");
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
        shared.registry.remove(&session.id, &reason);
        shared.hosts.remove_tunnel(&session.id);
        info!(%reason, "tunnel disconnected");
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

/// Sets up one proxy, or says why not.
fn expose(shared: &Arc<Shared>, session: &Arc<TunnelSession>, req: &ProxyRequest) -> ProxyOutcome {
    let config = shared.current();
    let Some(service) = config.services.iter().find(|s| s.name == req.service) else {
        return ProxyOutcome::Rejected {
            name: req.name.clone(),
            reason: format!("the hub has no service `{}`", req.service),
        };
    };
    match &service.kind {
        crate::config::ServiceKind::Tcp(tcp_service) => {
            match tcp::expose(shared, session, &service.name, tcp_service, req) {
                Ok(port) => ProxyOutcome::Accepted {
                    name: req.name.clone(),
                    port: Some(port),
                    hostname: None,
                },
                Err(reason) => ProxyOutcome::Rejected {
                    name: req.name.clone(),
                    reason,
                },
            }
        }
        crate::config::ServiceKind::Udp(udp_service) => {
            match udp::expose(shared, session, &service.name, udp_service, req) {
                Ok(port) => ProxyOutcome::Accepted {
                    name: req.name.clone(),
                    port: Some(port),
                    hostname: None,
                },
                Err(reason) => ProxyOutcome::Rejected {
                    name: req.name.clone(),
                    reason,
                },
            }
        }
        crate::config::ServiceKind::Http(config) | crate::config::ServiceKind::Https(config) => {
            match http::expose(shared, session, &service.name, config, req) {
                Ok(host) => ProxyOutcome::Accepted {
                    name: req.name.clone(),
                    port: None,
                    hostname: Some(host),
                },
                Err(reason) => ProxyOutcome::Rejected {
                    name: req.name.clone(),
                    reason,
                },
            }
        }
    }
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
