//! The hub side of a control channel: the I/O that drives the hub's half of
//! [`crate::protocol::session`].
//!
//! Each control connection is served in the task the accept loop spawned for it (this module
//! spawns none), one step after another, each a function below:
//!
//! 1. **hello** ([`read_hello`]): the first frame, within `handshake_timeout`, must be a
//!    `hello`; once it is in, the connection stops counting against `[limits] handshakes`.
//! 2. **authenticate** ([`authenticate`]): the lockout table first (a locked-out address is
//!    refused even with a valid key, with `retry_after_secs`, and counted; nothing else is
//!    done for it), then the key, compared in constant time.
//! 3. **admit** ([`admit`]): the registry takes the session within `[limits] tunnels`; then the
//!    key is checked once more, against a reload that raced the handshake.
//! 4. **claim** ([`claims`]): a port or hostname per proxy, up to `[limits] proxies_per_tunnel`.
//! 5. **welcome** ([`welcome`]): one frame answering every proxy, after the preamble.
//! 6. **heartbeats** ([`heartbeats`]): the control stream is split into a reader and a writer;
//!    the loop answers the tunnel's pings, sends the liveness checks other sessions of its key
//!    ask for, and ends when the tunnel leaves or goes silent, or with a goodbye when the hub
//!    ends the session (stop, operator, reload).
//! 7. **depart** ([`depart`]): a session the hub closed itself frees its claims at once; a lost
//!    one leaves them held for its key for `reconnect_grace`.
//!
//! A refusal in steps 1 to 5 is one `refused` frame after the preamble, then the connection
//! closes. What to answer, with which id, and when silence ends a session is decided by the
//! protocol's state machine, never here; this module must not hold a registry lock across an
//! `.await`, and never logs a key.

mod claims;
mod cluster_claim;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::Shared;
use super::lockout::{self, retry_in};
use super::metrics::Rejection;
use super::registry::{TunnelLimit, TunnelSession};
use crate::channel::{ChannelError, FramedStream};
use crate::config::Limits;
use crate::protocol::session::{
    Admission, Hello, HubHeartbeats, HubStep, Refusal, Welcome, admit_hello,
};
use crate::protocol::{
    Envelope, HubPreamble, PREAMBLE_LEN, PROTOCOL_VERSION, RefusalCode, TunnelMessage,
};
use crate::secret::Secret;

/// Serves one control channel after its preamble.
pub(super) async fn serve_control<S>(
    shared: Arc<Shared>,
    mut framed: FramedStream<S>,
    peer: SocketAddr,
    shutdown: CancellationToken,
    handshake: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Some((admission, hello)) = read_hello(&shared, &mut framed, peer, handshake).await else {
        return;
    };
    let Hello { key, name, proxies } = hello;
    let limits = shared.current().limits;
    // A lockout another hub of the cluster set holds here too.
    shared.pull_lockout(peer.ip()).await;
    let admitted = authenticate(&shared, peer, &name, key.as_ref()).and_then(|key_name| {
        admit(
            &shared,
            peer,
            (name, key_name),
            key.as_ref(),
            limits,
            &shutdown,
        )
    });
    let session = match admitted {
        Ok(session) => session,
        Err(refusal) => return send_refusal(&mut framed, admission, refusal).await,
    };
    let span = info_span!("tunnel", tunnel_id = %session.id, tunnel_name = %session.name);
    async {
        let outcomes = claims::claim_all(&shared, &session, &proxies, limits).await;
        let key = session.key_name.as_deref().unwrap_or("-");
        let proxies = outcomes.len();
        info!(%peer, key, proxies, "tunnel connected from {peer} with key {key}, {proxies} proxies");
        let welcome_frame = Welcome {
            tunnel_id: session.id,
            link_token: session.link_token.clone(),
            heartbeat_secs: announced_heartbeat_secs(&shared),
            proxies: outcomes,
        };
        let max = limits.proxies_per_tunnel;
        let reason = match welcome(&shared, &session, framed, admission, welcome_frame, max).await {
            Welcomed::Up(framed, protocol) => {
                heartbeats(&session, framed, protocol, &shutdown).await
            }
            Welcomed::Not(reason) => reason,
        };
        depart(&shared, &session, &reason);
    }
    .instrument(span)
    .await;
}

/// The preamble that opens the hub's answer when it speaks the tunnel's version.
pub(super) fn accepted_preamble() -> [u8; PREAMBLE_LEN] {
    HubPreamble {
        version: PROTOCOL_VERSION,
        accepted: true,
    }
    .encode()
}

/// Reads a connection's first frame (within `handshake_timeout`; `doing` names the wait in
/// its error), then frees the connection's place among the handshakes in progress. For link
/// connections too.
pub(super) async fn first_frame<S: AsyncRead + Unpin>(
    shared: &Shared,
    framed: &mut FramedStream<S>,
    handshake: OwnedSemaphorePermit,
    doing: &'static str,
) -> Result<Envelope<TunnelMessage>, ChannelError> {
    let first = framed
        .read_message(shared.config.handshake_timeout, doing)
        .await;
    // The first message is in (or never will be): the connection no longer counts against
    // `[limits] handshakes`.
    drop(handshake);
    first
}

/// Step 1: reads the hello. Anything else first is refused; a connection that sends nothing in
/// time is dropped without an answer.
async fn read_hello<S>(
    shared: &Shared,
    framed: &mut FramedStream<S>,
    peer: SocketAddr,
    handshake: OwnedSemaphorePermit,
) -> Option<(Admission, Hello)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let first = match first_frame(shared, framed, handshake, "saying hello").await {
        Ok(first) => first,
        Err(e) => {
            if shared.metrics.reject_handshake() {
                warn!(%peer, error = %e, "control connection dropped before its hello (logged at most every 10s)");
            }
            return None;
        }
    };
    match admit_hello(first) {
        Ok(hello) => Some(hello),
        Err(refused) => {
            shared.metrics.reject(Rejection::Handshake);
            let _ = framed
                .write_preamble_and(&accepted_preamble(), &[&refused])
                .await;
            None
        }
    }
}

/// Sends the refusal of a hello; the connection closes next.
async fn send_refusal<S>(framed: &mut FramedStream<S>, admission: Admission, refusal: Refusal)
where
    S: AsyncWrite + Unpin,
{
    let refused = admission.refuse(refusal);
    let _ = framed
        .write_preamble_and(&accepted_preamble(), &[&refused])
        .await;
}

/// Step 2: whether `peer` may log in with `key`: not while its address is locked out, and only
/// with a configured key (or none, on a no-auth hub). Returns the key's name. A wrong key
/// counts toward the address's lockout; a right one clears it.
fn authenticate(
    shared: &Shared,
    peer: SocketAddr,
    name: &str,
    key: Option<&Secret>,
) -> Result<Option<String>, Refusal> {
    if let Err(left) = shared.lockouts.check(peer.ip()) {
        if shared.metrics.refuse_locked_out() {
            let retry = retry_in(left);
            warn!(%peer, tunnel_name = %name, %retry, "refusing a locked-out address (logged at most every 10s)");
        }
        return Err(lockout::refusal(left));
    }
    match match_key(shared, key) {
        Ok(key_name) => {
            shared.login_succeeded(peer.ip());
            Ok(key_name)
        }
        Err(()) => {
            warn!(%peer, tunnel_name = %name, "tunnel authentication failed");
            shared.metrics.auth_failed();
            shared.login_failed(peer.ip());
            Err(Refusal::new(
                RefusalCode::AuthFailed,
                "authentication failed: the hub does not accept this key",
            ))
        }
    }
}

/// Checks a tunnel's key against the configured keys, in constant time per key, without
/// stopping at the first match. Returns the matching key's name.
fn match_key(shared: &Shared, key: Option<&Secret>) -> Result<Option<String>, ()> {
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

/// Step 3: registers the session of tunnel `name` logged in with key `key_name`, unless the
/// hub serves `[limits] tunnels` already or a reload removed or changed its key meanwhile.
fn admit(
    shared: &Shared,
    peer: SocketAddr,
    (name, key_name): (String, Option<String>),
    key: Option<&Secret>,
    limits: Limits,
    shutdown: &CancellationToken,
) -> Result<Arc<TunnelSession>, Refusal> {
    let session = Arc::new(TunnelSession::new(name, key_name, peer, shutdown));
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
        return Err(Refusal::new(RefusalCode::Limit, message));
    }
    // A reload that removed or changed this key after the check above swept the registry
    // before this session was in it: look again now that it is (a reload swaps the
    // configuration before it sweeps, so one of the two sees the other).
    if match_key(shared, key).ok() != Some(session.key_name.clone()) {
        shared
            .registry
            .remove(&session.id, "its key was removed or changed by a reload");
        warn!(%peer, tunnel_name = %session.name, "tunnel refused: a reload removed or changed its key during the handshake");
        return Err(Refusal::new(
            RefusalCode::AuthFailed,
            "authentication failed: the hub's configuration no longer accepts this key",
        ));
    }
    Ok(session)
}

/// The heartbeat interval tunnels are told: the configured one in whole seconds, at least 1.
fn announced_heartbeat_secs(shared: &Shared) -> u64 {
    shared.config.heartbeat_interval.as_secs().max(1)
}

/// How step 5 went.
enum Welcomed<S> {
    /// The welcome is sent: heartbeats follow on the connection.
    Up(FramedStream<S>, HubHeartbeats),
    /// The session ended before it began, for this reason.
    Not(String),
}

/// Step 5: sends the preamble and the welcome. A welcome too large for one frame could never
/// be sent, so then the hello is refused and what it claimed is freed (the session is
/// cancelled: nothing is held for a reconnect).
async fn welcome<S>(
    shared: &Shared,
    session: &TunnelSession,
    mut framed: FramedStream<S>,
    admission: Admission,
    welcome: Welcome,
    max_proxies: usize,
) -> Welcomed<S>
where
    S: AsyncWrite + Unpin,
{
    let declared = welcome.proxies.len();
    match admission.welcome(Instant::now(), welcome) {
        Ok((frame, protocol)) => {
            match framed
                .write_preamble_and(&accepted_preamble(), &[&frame])
                .await
            {
                Ok(()) => {
                    crate::daemon::pages::session_up();
                    Welcomed::Up(framed, protocol)
                }
                Err(e) => Welcomed::Not(format!("lost during handshake: {e}")),
            }
        }
        Err(admission) => {
            session.cancel.cancel();
            shared.metrics.reject(Rejection::Limit);
            let message = format!(
                "the hello declares {declared} proxies, more than one answer can carry; declare \
                 fewer (the hub exposes at most {max_proxies} of them: [limits] proxies_per_tunnel)"
            );
            let refusal = Refusal::new(RefusalCode::Limit, message);
            send_refusal(&mut framed, admission, refusal).await;
            Welcomed::Not("its hello declared more proxies than one answer can carry".to_owned())
        }
    }
}

/// Step 6: runs the heartbeats until the session ends; returns why it ended. The state
/// machine decides each answer; this loop only waits for the next event and carries out
/// what it says.
async fn heartbeats<S>(
    session: &TunnelSession,
    framed: FramedStream<S>,
    mut protocol: HubHeartbeats,
    shutdown: &CancellationToken,
) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let silence = protocol.silence();
    let (reader, writer) = tokio::io::split(framed.into_inner());
    let mut writer = FramedStream::new(writer);
    // One read in flight at a time, kept across loop turns: a liveness check must never
    // cancel a half-read frame. Its own deadline is a backstop to the machine's.
    let mut pending = Box::pin(read_one(FramedStream::new(reader), silence));
    loop {
        let deadline = tokio::time::Instant::from_std(protocol.deadline());
        let step = tokio::select! {
            () = session.cancel.cancelled() => {
                let reason = closing_reason(session, shutdown);
                let _ = writer.write_message(&protocol.goodbye(&reason)).await;
                return reason;
            }
            () = session.probe_requested(), if !protocol.is_probing() => {
                protocol.probe(Instant::now())
            }
            () = tokio::time::sleep_until(deadline) => protocol.handle_timeout(Instant::now()),
            (reader, read) = &mut pending => {
                pending = Box::pin(read_one(reader, silence));
                match read {
                    Ok(frame) => protocol.handle_message(Instant::now(), frame),
                    Err(ChannelError::Timeout(..)) => protocol.handle_timeout(Instant::now()),
                    Err(ChannelError::Closed) => {
                        return "the tunnel closed its control connection".into();
                    }
                    Err(e) => return e.to_string(),
                }
            }
        };
        match step {
            HubStep::Wait => {}
            HubStep::Send(frame) => {
                if let Err(e) = writer.write_message(&frame).await {
                    return format!("control connection failed: {e}");
                }
            }
            HubStep::ProbeAnswered => session.probe_answered(),
            HubStep::End(end) => return end.to_string(),
        }
    }
}

/// Why the hub ends a session it cancelled: what its goodbye says.
fn closing_reason(session: &TunnelSession, shutdown: &CancellationToken) -> String {
    if shutdown.is_cancelled() {
        "the hub is shutting down".to_owned()
    } else {
        session
            .close_reason()
            .unwrap_or_else(|| "closed by the hub".into())
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

/// Step 7: takes the session out of the registry and the host routes. One the hub closed
/// itself (stop, operator, reload) was cancelled first and frees its claims at once; a lost one
/// leaves them held for its key for `reconnect_grace`.
fn depart(shared: &Shared, session: &TunnelSession, reason: &str) {
    let grace = if session.cancel.is_cancelled() {
        Duration::ZERO
    } else {
        shared.current().reconnect_grace
    };
    shared
        .hosts
        .depart(&session.id, session.key_name.as_deref(), grace);
    shared.registry.depart(session, reason, grace);
    let key = session.key_name.as_deref().unwrap_or("-");
    if grace.is_zero() || session.key_name.is_none() {
        info!(%reason, key, "tunnel disconnected (key {key}): {reason}");
    } else {
        let grace = humantime::format_duration(grace);
        info!(
            %reason, key, %grace,
            "tunnel lost ({reason}); its ports and hostnames are held for key {key} for {grace}"
        );
    }
}
