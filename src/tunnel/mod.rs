//! The tunnel daemon: connects out to a hub, registers its proxies, and forwards every client the
//! hub hands it to a local target.
//!
//! [`Tunnel::connect`] performs the control handshake and returns a [`Session`] holding the
//! hub's answer (which proxies are live, on which ports); [`Session::run`] then keeps the
//! session alive with heartbeats while link connections ([`forward`]) serve streams.
//! [`supervise`] wraps both in the reconnect loop the daemon uses: every attempt registers all
//! the configured proxies again, and the waits between attempts follow [`Backoff`] (the
//! `[reconnect]` table), except after a lockout the hub announced, which is waited out whole
//! ([`lockout_wait`]).

pub mod bootstrap;
pub(crate) mod forward;
pub mod reload;
pub(crate) mod status;
pub(crate) mod udp;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::channel::{ChannelError, FramedStream};
use crate::config::{Reconnect, TunnelConfig};
use crate::protocol::{
    Channel, Envelope, HANDSHAKE_TIMEOUT, HEARTBEAT_MISSES, HubMessage, PROTOCOL_VERSION, Preamble,
    ProxyOutcome, ProxyRequest, RefusalCode, TunnelMessage,
};
use crate::secret::Secret;
use crate::tls::{self, TlsError};

/// Errors of a tunnel.
#[derive(Debug, Error)]
pub enum TunnelError {
    /// TLS configuration is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The hub could not be reached.
    #[error("cannot connect to the hub at {addr}: {source}")]
    Connect {
        /// The hub address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS handshake with the hub failed (certificate not trusted, pin mismatch, ...).
    #[error("TLS handshake with the hub at {addr} failed: {detail}")]
    Handshake {
        /// The hub address.
        addr: String,
        /// What went wrong, for people.
        detail: String,
        /// Whether TLS itself refused (an untrusted certificate stays untrusted), as opposed
        /// to the connection breaking mid-handshake.
        rejected: bool,
    },
    /// The hub rejected the key.
    #[error("{0}; check the tunnel's key (key, key_file or key_env)")]
    AuthFailed(String),
    /// The hub speaks another protocol version.
    #[error(
        "the hub speaks protocol version {hub}, this tunnel speaks {ours}; install matching versions"
    )]
    VersionMismatch {
        /// The hub's version.
        hub: u8,
        /// Ours.
        ours: u8,
    },
    /// The hub refused for another reason.
    #[error("the hub refused the tunnel: {0}")]
    Refused(String),
    /// The hub refused because this address is locked out after repeated failed logins.
    #[error("the hub refused the tunnel: {message}")]
    LockedOut {
        /// The hub's explanation, safe to print.
        message: String,
        /// How long until the lockout ends, as the hub announced it (`None` from hubs that
        /// announce none: then the usual backoff applies).
        retry_after: Option<Duration>,
    },
    /// The control channel failed.
    #[error("control channel: {0}")]
    Channel(#[from] ChannelError),
    /// The hub ended the session.
    #[error("the hub closed the session: {0}")]
    Goodbye(String),
    /// The hub answered out of protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl TunnelError {
    /// Whether retrying cannot help (wrong key, incompatible versions, untrusted certificate).
    pub fn is_permanent(&self) -> bool {
        match self {
            TunnelError::AuthFailed(_)
            | TunnelError::VersionMismatch { .. }
            | TunnelError::Tls(_) => true,
            // A certificate the tunnel does not trust stays untrusted; a reset mid-handshake
            // (hub restarting) is worth a retry.
            TunnelError::Handshake { rejected, .. } => *rejected,
            _ => false,
        }
    }

    /// How long the hub said to wait before trying again, if it did (a lockout).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TunnelError::LockedOut { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A configured tunnel. Cheap to clone: clones share the configuration.
#[derive(Clone)]
pub struct Tunnel {
    config: Arc<TunnelConfig>,
    connector: TlsConnector,
    name: Arc<str>,
    status: Arc<status::StatusBoard>,
}

impl Tunnel {
    /// Prepares a tunnel: builds its TLS client configuration.
    pub fn new(config: TunnelConfig) -> Result<Self, TunnelError> {
        let status = Arc::new(status::StatusBoard::new(&config));
        Self::with_status(config, status)
    }

    /// The same daemon with a new configuration (a reload): the status board stays, so the
    /// admin socket serving it goes on serving the new tunnel. Fails, changing nothing, when
    /// the new TLS settings are unusable.
    pub fn reconfigured(&self, config: TunnelConfig) -> Result<Self, TunnelError> {
        Self::with_status(config, self.status.clone())
    }

    fn with_status(
        config: TunnelConfig,
        status: Arc<status::StatusBoard>,
    ) -> Result<Self, TunnelError> {
        let connector = TlsConnector::from(tls::client_config(&config.hub_trust)?);
        // Validate the server name now rather than at the first connection.
        tls::server_name(&config.hub_server_name)?;
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "tunnel".into());
        Ok(Tunnel {
            status,
            config: Arc::new(config),
            connector,
            name: name.into(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TunnelConfig {
        &self.config
    }

    /// The tunnel's own view of its state, for its admin socket.
    pub fn status(&self) -> &Arc<status::StatusBoard> {
        &self.status
    }

    /// The reconnect policy its configuration asks for (`[reconnect]`).
    pub fn backoff(&self) -> Backoff {
        self.config.reconnect.into()
    }

    /// Opens a TLS connection to the hub.
    async fn dial(&self) -> Result<TlsStream<TcpStream>, TunnelError> {
        let addr = &self.config.hub_address;
        let socket = match tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(TunnelError::Connect {
                    addr: addr.clone(),
                    source,
                });
            }
            Err(_) => {
                let source = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
                return Err(TunnelError::Connect {
                    addr: addr.clone(),
                    source,
                });
            }
        };
        crate::mux::tune_socket(&socket);
        let server_name = tls::server_name(&self.config.hub_server_name)?;
        match tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            self.connector.connect(server_name, socket),
        )
        .await
        {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(e)) => {
                let (detail, rejected) = tls::describe_handshake_error(&e);
                Err(TunnelError::Handshake {
                    addr: addr.clone(),
                    detail,
                    rejected,
                })
            }
            Err(_) => Err(TunnelError::Handshake {
                addr: addr.clone(),
                detail: "the handshake timed out".into(),
                rejected: false,
            }),
        }
    }

    /// Sends the preamble and first message, and reads the hub's answer.
    pub(crate) async fn handshake(
        &self,
        channel: Channel,
        first: TunnelMessage,
    ) -> Result<(FramedStream<TlsStream<TcpStream>>, HubMessage), TunnelError> {
        let mut framed = FramedStream::new(self.dial().await?);
        let hello = Envelope { id: 1, msg: first };
        framed
            .write_preamble_and(&Preamble::new(channel).encode(), &[&hello])
            .await?;
        let answer = framed.read_hub_preamble(HANDSHAKE_TIMEOUT).await?;
        if !answer.accepted || answer.version != PROTOCOL_VERSION {
            return Err(TunnelError::VersionMismatch {
                hub: answer.version,
                ours: PROTOCOL_VERSION,
            });
        }
        let reply: Envelope<HubMessage> = framed
            .read_message(HANDSHAKE_TIMEOUT, "answering our hello")
            .await?;
        match reply.msg {
            HubMessage::Refused {
                code: RefusalCode::AuthFailed,
                message,
                ..
            } => Err(TunnelError::AuthFailed(message)),
            HubMessage::Refused {
                code: RefusalCode::LockedOut,
                message,
                retry_after_secs,
            } => Err(TunnelError::LockedOut {
                message,
                retry_after: retry_after_secs.map(Duration::from_secs),
            }),
            HubMessage::Refused { message, .. } => Err(TunnelError::Refused(message)),
            msg => Ok((framed, msg)),
        }
    }

    /// Authenticates and registers the proxies.
    pub async fn connect(&self) -> Result<Session, TunnelError> {
        let proxies = self
            .config
            .proxies
            .iter()
            .map(|p| ProxyRequest {
                name: p.name.clone(),
                service: p.service.clone(),
                port: p.port,
                hostname: p.hostname.clone(),
                group: p.group.clone(),
                basic_auth: p.basic_auth.clone(),
                max_body: p.max_body,
            })
            .collect();
        let hello = TunnelMessage::Hello {
            key: self.config.key.clone(),
            name: self.name.to_string(),
            proxies,
        };
        let (framed, reply) = self.handshake(Channel::Control, hello).await?;
        let HubMessage::Welcome {
            tunnel_id,
            link_token,
            heartbeat_secs,
            proxies,
        } = reply
        else {
            return Err(TunnelError::Protocol(format!(
                "expected a welcome, got {reply:?}"
            )));
        };
        Ok(Session {
            tunnel_id,
            link_token,
            heartbeat: Duration::from_secs(heartbeat_secs.clamp(1, 3600)),
            proxies,
            framed,
        })
    }
}

/// An authenticated session with a hub.
pub struct Session {
    tunnel_id: Uuid,
    link_token: Secret,
    heartbeat: Duration,
    proxies: Vec<ProxyOutcome>,
    framed: FramedStream<TlsStream<TcpStream>>,
}

impl Session {
    /// The heartbeat interval the hub asked for.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// The hub-assigned tunnel id.
    pub fn tunnel_id(&self) -> Uuid {
        self.tunnel_id
    }

    /// The hub's answer for each proxy, in configuration order.
    pub fn proxies(&self) -> &[ProxyOutcome] {
        &self.proxies
    }

    /// Logs each proxy's outcome: live ones at info, rejected ones at warn with the reason.
    pub fn log_proxies(&self) {
        for outcome in &self.proxies {
            match outcome {
                ProxyOutcome::Accepted {
                    name,
                    port,
                    hostname,
                } => match (port, hostname) {
                    (Some(port), _) => {
                        info!(proxy = %name, port, "proxy is live on the hub: {name} on port {port}")
                    }
                    (None, Some(host)) => {
                        info!(proxy = %name, hostname = %host, "proxy is live on the hub: {name} at {host}")
                    }
                    (None, None) => info!(proxy = %name, "proxy is live on the hub: {name}"),
                },
                ProxyOutcome::Rejected { name, reason } => {
                    warn!(proxy = %name, %reason, "proxy rejected by the hub")
                }
            }
        }
    }

    /// Serves the session until the hub goes away (an error) or `shutdown` is cancelled (`Ok`).
    pub async fn run(
        self,
        tunnel: &Tunnel,
        shutdown: CancellationToken,
    ) -> Result<(), TunnelError> {
        let session_stop = shutdown.child_token();
        let targets: Arc<HashMap<String, String>> = Arc::new(
            tunnel
                .config
                .proxies
                .iter()
                .map(|p| (p.name.clone(), p.target.clone()))
                .collect(),
        );
        let mut links = tokio::task::JoinSet::new();
        for _ in 0..tunnel.config.links.max(1) {
            let link = forward::LinkWorker {
                tunnel: tunnel.clone(),
                tunnel_id: self.tunnel_id,
                token: self.link_token.clone(),
                targets: targets.clone(),
                stop: session_stop.clone(),
                heartbeat: self.heartbeat,
            };
            links.spawn(link.run());
        }
        let result = self.heartbeats(&shutdown).await;
        session_stop.cancel();
        while links.join_next().await.is_some() {}
        result
    }

    async fn heartbeats(self, shutdown: &CancellationToken) -> Result<(), TunnelError> {
        let silence = self.heartbeat * HEARTBEAT_MISSES;
        let (reader, writer) = tokio::io::split(self.framed.into_inner());
        let mut writer = FramedStream::new(writer);
        let mut ticker = tokio::time::interval(self.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_id: u64 = 2;
        // One read in flight at a time, kept across loop turns: a timer tick must never cancel a
        // half-read frame.
        let mut pending = Box::pin(read_one(FramedStream::new(reader), silence));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = ticker.tick() => {
                    writer.write_message(&Envelope { id: next_id, msg: TunnelMessage::Ping }).await?;
                    next_id += 1;
                }
                (reader, msg) = &mut pending => {
                    let Envelope { id, msg } = msg?;
                    match msg {
                        HubMessage::Pong => {}
                        // The hub checks we are still here: answer at once, with its id.
                        HubMessage::Ping => {
                            writer.write_message(&Envelope { id, msg: TunnelMessage::Pong }).await?;
                        }
                        HubMessage::Goodbye { reason } => return Err(TunnelError::Goodbye(reason)),
                        other => return Err(TunnelError::Protocol(format!("unexpected message {other:?}"))),
                    }
                    pending = Box::pin(read_one(reader, silence));
                }
            }
        }
    }
}

type ControlReader = FramedStream<tokio::io::ReadHalf<TlsStream<TcpStream>>>;

async fn read_one(
    mut reader: ControlReader,
    silence: Duration,
) -> (ControlReader, Result<Envelope<HubMessage>, ChannelError>) {
    let msg = reader.read_message(silence, "answering heartbeats").await;
    (reader, msg)
}

/// Reconnect policy of [`supervise`]: exponential backoff with full jitter. The default is
/// the `[reconnect]` table's (200 ms first, 30 s cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Bound of the first delay.
    pub initial: Duration,
    /// Largest bound.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Reconnect::default().into()
    }
}

impl From<Reconnect> for Backoff {
    fn from(reconnect: Reconnect) -> Self {
        Backoff {
            initial: reconnect.initial,
            max: reconnect.max,
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (0-based): exponential with full jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.bound(attempt).mul_f64(random_unit())
    }

    /// The largest delay before retry number `attempt`: `initial * 2^attempt`, at most `max`.
    pub fn bound(&self, attempt: u32) -> Duration {
        self.initial
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max)
    }
}

/// A random number in `[0, 1)`.
fn random_unit() -> f64 {
    let mut seed = [0u8; 8];
    let _ = getrandom::fill(&mut seed);
    (u64::from_le_bytes(seed) >> 11) as f64 / (1u64 << 53) as f64
}

/// The longest lockout a tunnel waits out: the longest `lockout_duration` a hub takes. A
/// longer announcement (a hub of a later version, or a broken one) is taken as this.
pub const MAX_LOCKOUT_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// Jitter added to a lockout's wait is at most a tenth of it, within these bounds: enough that
/// the tunnels behind one address do not all come back in the same instant, small next to
/// the lockout itself.
const LOCKOUT_JITTER: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(30));

/// The wait before the next attempt after the hub announced a lockout ending in `announced`:
/// never less than announced (up to [`MAX_LOCKOUT_WAIT`]), plus a jitter of at most a tenth of
/// it (within [`LOCKOUT_JITTER`]).
pub fn lockout_wait(announced: Duration) -> Duration {
    lockout_wait_with(announced, random_unit())
}

/// [`lockout_wait`] with the jitter's random number `unit` (in `[0, 1)`) given.
fn lockout_wait_with(announced: Duration, unit: f64) -> Duration {
    let announced = announced.min(MAX_LOCKOUT_WAIT);
    let (least, most) = LOCKOUT_JITTER;
    let bound = (announced / 10).clamp(least, most);
    announced + bound.mul_f64(unit.clamp(0.0, 1.0))
}

/// Where [`supervise`] is in its backoff sequence.
#[derive(Debug, Default)]
struct Retries {
    attempt: u32,
}

impl Retries {
    /// A session ended after `lasted`. One that stayed up for a heartbeat interval (the hub
    /// answered it) starts the sequence over; one the hub dropped at once does not, so a hub
    /// that accepts and drops tunnels is not hammered at the first delay.
    fn session_ended(&mut self, lasted: Duration, heartbeat: Duration) {
        if lasted >= heartbeat {
            self.attempt = 0;
        }
    }

    /// The wait before the next attempt; each wait makes the next one's bound longer.
    fn next_delay(&mut self, backoff: &Backoff) -> Duration {
        let delay = backoff.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }
}

/// Runs a tunnel until `shutdown`, reconnecting after transient failures. Returns the error that
/// made retrying pointless (wrong key, version mismatch, untrusted hub certificate).
pub async fn supervise(
    tunnel: Tunnel,
    backoff: Backoff,
    shutdown: CancellationToken,
) -> Result<(), TunnelError> {
    let mut retries = Retries::default();
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = tunnel.connect() => r,
        };
        let error = match result {
            Ok(session) => {
                let (started, heartbeat) = (Instant::now(), session.heartbeat());
                let (tunnel_id, hub) = (session.tunnel_id(), &tunnel.config.hub_address);
                info!(%tunnel_id, %hub, "connected to the hub at {hub} as tunnel {tunnel_id}");
                session.log_proxies();
                crate::daemon::pages::session_up();
                tunnel
                    .status
                    .connected(session.tunnel_id(), session.proxies());
                let live = session
                    .proxies()
                    .iter()
                    .filter(|p| matches!(p, ProxyOutcome::Accepted { .. }))
                    .count();
                crate::daemon::notify::status(&format!(
                    "connected to {} as {}; {live} of {} proxies live",
                    tunnel.config.hub_address,
                    session.tunnel_id(),
                    session.proxies().len()
                ));
                let ended = session.run(&tunnel, shutdown.clone()).await;
                retries.session_ended(started.elapsed(), heartbeat);
                match ended {
                    Ok(()) => return Ok(()),
                    Err(e) => e,
                }
            }
            Err(e) if e.is_permanent() => {
                tunnel.status.connecting(Some(e.to_string()));
                return Err(e);
            }
            Err(e) => e,
        };
        let delay = plan_retry(&tunnel, &mut retries, &backoff, &error);
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
        debug!(attempt = retries.attempt, "reconnecting");
    }
}

/// Records why the last attempt failed (status board, service manager, log) and returns how
/// long to wait before the next one. A lockout the hub announced is waited out whole, and
/// logged once with the time of the next attempt; anything else waits the next backoff delay.
fn plan_retry(
    tunnel: &Tunnel,
    retries: &mut Retries,
    backoff: &Backoff,
    error: &TunnelError,
) -> Duration {
    let hub = &tunnel.config.hub_address;
    if let Some(announced) = error.retry_after() {
        let wait = lockout_wait(announced);
        let now = SystemTime::now();
        let until = now.checked_add(wait).unwrap_or(now);
        let retry_at = crate::hub::inspect::rfc3339(until);
        tunnel.status.locked_out(error.to_string(), until);
        crate::daemon::notify::status(&format!(
            "locked out by the hub at {hub} until {retry_at}: {error}"
        ));
        warn!(error = %error, %retry_at, "the hub locked this address out; the next attempt waits until the lockout ends");
        return wait;
    }
    tunnel.status.connecting(Some(error.to_string()));
    crate::daemon::notify::status(&format!("reconnecting to {hub}: {error}"));
    let delay = retries.next_delay(backoff);
    let retry_in = humantime::format_duration(delay);
    warn!(error = %error, %retry_in, "lost the hub ({error}); reconnecting in {retry_in}");
    delay
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Backoff = Backoff {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(30),
    };

    #[test]
    fn delays_double_up_to_the_cap_with_full_jitter() {
        let bounds: Vec<u128> = (0..10).map(|n| POLICY.bound(n).as_millis()).collect();
        assert_eq!(
            bounds,
            [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
        assert_eq!(POLICY.bound(u32::MAX), POLICY.max, "no overflow");
        for attempt in [0, 3, 20] {
            let delays: Vec<Duration> = (0..200).map(|_| POLICY.delay(attempt)).collect();
            assert!(delays.iter().all(|d| *d <= POLICY.bound(attempt)));
            // Full jitter: spread over the whole range, not clustered at the bound.
            let low = delays
                .iter()
                .filter(|d| **d < POLICY.bound(attempt) / 2)
                .count();
            assert!((20..=180).contains(&low), "{low} of 200 in the lower half");
        }
    }

    #[test]
    fn a_lockout_wait_is_never_shorter_than_announced_and_its_jitter_is_bounded() {
        for secs in [1, 3, 60, 1800, 86_400] {
            let announced = Duration::from_secs(secs);
            let most = (announced / 10).clamp(LOCKOUT_JITTER.0, LOCKOUT_JITTER.1);
            assert_eq!(lockout_wait_with(announced, 0.0), announced);
            assert!(lockout_wait_with(announced, 0.999_999) <= announced + most);
            for _ in 0..200 {
                let wait = lockout_wait(announced);
                assert!(wait >= announced, "{wait:?} < {announced:?}");
                assert!(wait <= announced + most, "{wait:?} for {announced:?}");
            }
        }
        // A tenth, within the bounds: 300 ms for 3 s, 30 s at most for 30 minutes.
        let three = Duration::from_secs(3);
        assert_eq!(
            lockout_wait_with(three, 1.0),
            three + Duration::from_millis(300)
        );
        let half_hour = Duration::from_secs(1800);
        assert_eq!(
            lockout_wait_with(half_hour, 1.0),
            half_hour + Duration::from_secs(30)
        );
        // Jitter spreads the tunnels of one address: not all at the same instant.
        let waits: std::collections::HashSet<Duration> =
            (0..20).map(|_| lockout_wait(three)).collect();
        assert!(waits.len() > 1, "{waits:?}");
    }

    #[test]
    fn an_announcement_past_the_longest_lockout_is_taken_as_the_longest() {
        let wait = lockout_wait_with(Duration::from_secs(u64::MAX), 0.5);
        assert!(wait >= MAX_LOCKOUT_WAIT && wait <= MAX_LOCKOUT_WAIT + LOCKOUT_JITTER.1);
    }

    #[test]
    fn only_a_lockout_with_an_announced_time_asks_for_a_wait() {
        let locked = TunnelError::LockedOut {
            message: "locked".into(),
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(locked.retry_after(), Some(Duration::from_secs(3)));
        assert!(!locked.is_permanent(), "a lockout ends: worth waiting for");
        let old_hub = TunnelError::LockedOut {
            message: "locked".into(),
            retry_after: None,
        };
        assert_eq!(old_hub.retry_after(), None, "the usual backoff applies");
        assert_eq!(TunnelError::Refused("full".into()).retry_after(), None);
        assert_eq!(TunnelError::AuthFailed("no".into()).retry_after(), None);
    }

    #[test]
    fn the_default_policy_is_the_reconnect_tables() {
        assert_eq!(Backoff::default(), POLICY);
        let custom = Reconnect {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
        };
        assert_eq!(
            Backoff::from(custom),
            Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_secs(2)
            }
        );
    }

    #[test]
    fn a_session_that_stayed_up_starts_the_backoff_over_and_a_dropped_one_does_not() {
        let heartbeat = Duration::from_secs(10);
        let mut retries = Retries::default();
        for _ in 0..5 {
            retries.next_delay(&POLICY);
        }
        assert_eq!(retries.attempt, 5);
        retries.session_ended(Duration::from_secs(1), heartbeat);
        assert_eq!(retries.attempt, 5, "dropped at once: keep backing off");
        retries.next_delay(&POLICY);
        retries.session_ended(Duration::from_secs(10), heartbeat);
        assert_eq!(retries.attempt, 0, "stayed up: start over");
        assert!(retries.next_delay(&POLICY) <= POLICY.initial);
    }
}
