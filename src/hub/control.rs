//! The hub side of a control channel: authenticate a tunnel, set up its proxies ([`claims`]),
//! then answer its heartbeats until it leaves, stops answering, or is told to go. A session the
//! hub closes itself frees its claims at once; a lost one leaves them held for its key.

mod claims;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::lockout::retry_in;
use super::metrics::Rejection;
use super::registry::{TunnelLimit, TunnelSession};
use super::{Shared, refuse};
use crate::channel::{ChannelError, FramedStream};
use crate::protocol::{
    Envelope, HEARTBEAT_MISSES, HubMessage, HubPreamble, PROTOCOL_VERSION, ProxyOutcome,
    RefusalCode, TunnelMessage,
};
use crate::secret::Secret;

/// How long a tunnel has to answer a liveness check (a ping from the hub).
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Ids of the hub's own requests on a control connection (a tunnel counts up from 1).
const HUB_REQUEST_IDS: u64 = 1 << 63;

/// Serves one control channel after its preamble.
pub(super) async fn serve_control<S>(
    shared: Arc<Shared>,
    mut framed: FramedStream<S>,
    peer: SocketAddr,
    shutdown: CancellationToken,
    handshake: tokio::sync::OwnedSemaphorePermit,
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
            if shared.metrics.reject_handshake() {
                warn!(%peer, error = %e, "control connection dropped before its hello (logged at most every 10s)");
            }
            return;
        }
    };
    // The first message is in: the connection no longer counts against `[limits] handshakes`.
    drop(handshake);
    let TunnelMessage::Hello { key, name, proxies } = hello.msg else {
        shared.metrics.reject(Rejection::Handshake);
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
    // A reload that removed or changed this key after the check above swept the registry
    // before this session was in it: look again now that it is (a reload swaps the
    // configuration before it sweeps, so one of the two sees the other).
    if authenticate(&shared, key.as_ref()).ok() != Some(session.key_name.clone()) {
        shared
            .registry
            .remove(&session.id, "its key was removed or changed by a reload");
        warn!(%peer, tunnel_name = %session.name, "tunnel refused: a reload removed or changed its key during the handshake");
        refuse(
            &mut framed,
            &accepted,
            hello.id,
            RefusalCode::AuthFailed,
            "authentication failed: the hub's configuration no longer accepts this key",
        )
        .await;
        return;
    }
    let span = info_span!("tunnel", tunnel_id = %session.id, tunnel_name = %session.name);
    async {
        let mut waits = claims::Waits::new();
        let mut outcomes = Vec::with_capacity(proxies.len());
        for (i, request) in proxies.iter().enumerate() {
            let outcome = if i < limits.proxies_per_tunnel {
                claims::expose(&shared, &session, request, &mut waits).await
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
        // The welcome answers every requested proxy; one too large for a frame could never
        // be sent, so the hello is refused and what it claimed is freed (the session is
        // cancelled: nothing is held for a reconnect).
        let fits = crate::protocol::encode_frame(&welcome, &mut bytes::BytesMut::new()).is_ok();
        let reason = if !fits {
            session.cancel.cancel();
            shared.metrics.reject(Rejection::Limit);
            let message = format!(
                "the hello declares {} proxies, more than one answer can carry; declare fewer \
                 (the hub exposes at most {} of them: [limits] proxies_per_tunnel)",
                proxies.len(),
                limits.proxies_per_tunnel
            );
            refuse(&mut framed, &accepted, hello.id, RefusalCode::Limit, &message).await;
            "its hello declared more proxies than one answer can carry".to_owned()
        } else {
            match framed.write_preamble_and(&accepted, &[&welcome]).await {
                Ok(()) => {
                    crate::daemon::pages::session_up();
                    heartbeats(&shared, &session, framed, &shutdown).await
                }
                Err(e) => format!("lost during handshake: {e}"),
            }
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
