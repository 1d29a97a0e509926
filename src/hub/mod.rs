//! The hub daemon: accepts tunnels on its TLS listener and serves their public endpoints.
//!
//! [`Hub::run`] takes an already bound listener and a cancellation token, so the binary and the
//! tests start it the same way. Each accepted connection gets its own task: the TLS handshake
//! and the first read never run in the accept loop, and every one of them has a deadline. The
//! preamble decides whether the connection is a control channel ([`control`], which drives
//! [`crate::protocol::session`]) or a link connection ([`links`]).
//!
//! Where each part lives:
//! - sessions and what they hold: [`registry`] (sessions, claimed ports, ports held for lost
//!   sessions), [`clients`] (every connected client, with byte counters), [`control`] and its
//!   `claims` (a port or hostname per proxy), [`links`] (the HTTP/2 connections streams ride on);
//! - public endpoints, one module per service kind: [`tcp`] (one accept loop per proxy, a task
//!   per client), [`udp`] (one receive loop per proxy, a task per client address), [`http`]
//!   (`http`/`https` services: accept loop, a task per connection, requests validated, routed
//!   by Host and forwarded with retry); `ports` claims and binds the tcp and udp ports;
//! - shared concerns: [`accept`] (the hub's accept loops at the open-file limit), [`idle`] (the
//!   no-progress deadline of http connections), [`lockout`] (failed logins), [`metrics`]
//!   (counters), [`inspect`] (what the admin API sees: [`inspect::HubView`]), [`reload`]
//!   (plan, prepare, apply a new configuration).
//!
//! docs/architecture.md draws the task tree of each of them.

pub(crate) mod accept;
pub(crate) mod clients;
pub mod cluster;
pub(crate) mod control;
pub mod http;
pub(crate) mod idle;
pub mod inspect;
pub(crate) mod links;
pub(crate) mod lockout;
pub(crate) mod metrics;
pub(crate) mod peer;
pub(crate) mod per_address;
mod ports;
pub(crate) mod registry;
pub(crate) mod reload;
pub(crate) mod tcp;
pub mod udp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::channel::FramedStream;
use crate::config::{HubConfig, ServiceKind};
use crate::protocol::{Channel, HubPreamble, PROTOCOL_VERSION};
use crate::tls::{Fingerprint, Identity, TlsError};
pub use registry::Registry;

/// How long a stopping hub waits for its connection tasks to finish.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Errors starting or running a hub.
#[derive(Debug, Error)]
pub enum HubError {
    /// TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The configuration cannot be served.
    #[error("invalid hub configuration: {0}")]
    Config(String),
    /// A service's listen address cannot be bound.
    #[error(
        "service `{service}`: cannot listen on {addr}: {source}; pick another `listen` address"
    )]
    Bind {
        /// The service.
        service: String,
        /// Its address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// State shared by every task of a hub.
pub(crate) struct Shared {
    /// The configuration the hub started with: its listener, state directory and timeouts,
    /// which apply until a restart. What a reload changes is read through [`Shared::current`].
    pub config: HubConfig,
    /// The configuration in force now (keys, services): replaced whole by a reload.
    current: parking_lot::RwLock<Arc<HubConfig>>,
    /// The TLS acceptor of the tunnel listener (a reload can replace its certificate).
    tunnel_acceptor: parking_lot::RwLock<TlsAcceptor>,
    /// Cancelled when the hub starts stopping: every accept loop (http/https services, tcp
    /// proxies, new udp sessions) stops taking clients, while live ones drain.
    stop: CancellationToken,
    /// Parent of every tunnel session; cancelled once the clients drained (or
    /// `shutdown_timeout` passed), which tells the tunnels and closes what is left.
    sessions_root: CancellationToken,
    /// The running http/https accept loops, by service name.
    running: parking_lot::Mutex<HashMap<String, reload::RunningService>>,
    pub registry: Registry,
    pub tasks: TaskTracker,
    /// Hostname routes of the http/https services.
    pub hosts: http::routes::HostRoutes,
    /// Bound addresses of the running http/https services.
    pub service_addrs: reload::ServiceAddrs,
    /// Counters for the Prometheus endpoint.
    pub metrics: metrics::HubMetrics,
    /// Failed logins per source address.
    pub lockouts: lockout::LockoutTable,
    /// Permits for TLS handshakes in progress on the tunnel listener (`[limits] handshakes`).
    handshakes: Arc<tokio::sync::Semaphore>,
    /// The reserve descriptor and lock of every accept loop of this hub (`hub::accept`).
    pub accepts: Arc<accept::Acceptor>,
    /// Public connections open per client address (`[limits] connections_per_address`).
    pub addresses: Arc<per_address::PerAddress>,
    /// When the hub started.
    pub started: std::time::SystemTime,
    /// Its cluster membership and Redis connection (`[cluster]`); `None` for a hub alone.
    pub cluster: Option<Arc<cluster::Cluster>>,
    /// Its peer links to the other hubs of its cluster, and the ports it serves for them.
    pub(crate) peers: peer::Peers,
}

impl Shared {
    /// The configuration in force now.
    pub fn current(&self) -> Arc<HubConfig> {
        self.current.read().clone()
    }

    /// Counts a failed login from `ip` toward its lockout, here and (in a cluster) in Redis,
    /// where every hub's failures add up.
    pub fn login_failed(&self, ip: std::net::IpAddr) {
        if let Some(cluster) = &self.cluster {
            let cluster = cluster.clone();
            let (max, duration) = (self.config.lockout_failures, self.config.lockout_duration);
            tokio::spawn(async move {
                if cluster.login_failed(ip, max, duration).await.is_some() {
                    let hub = cluster.name();
                    warn!(address = %ip, %hub, "address {ip} locked out across the cluster after repeated failed logins");
                }
            });
        }
        if let Some(duration) = self.lockouts.fail(ip) {
            self.metrics
                .lockouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let duration = humantime::format_duration(duration);
            warn!(address = %ip, %duration, "address {ip} locked out for {duration} after repeated failed logins");
        }
    }

    /// Accepts the next public client connection on `listener` (`what` names it in logs)
    /// within `[limits] connections_per_address`: a connection from an address that has its
    /// maximum open already is closed at once, counted and logged (at most every 10 s), and
    /// the next one accepted. The slot is the connection's place; drop it when it closes.
    pub async fn accept_client(
        &self,
        listener: &TcpListener,
        what: &'static str,
    ) -> std::io::Result<(TcpStream, SocketAddr, per_address::AddressSlot)> {
        loop {
            let (socket, peer) = self.accepts.accept(listener, what).await?;
            let limit = self.current().limits.connections_per_address;
            match self.addresses.take(peer.ip(), limit) {
                Some(slot) => return Ok((socket, peer, slot)),
                None => {
                    if self.metrics.reject_at_limit() {
                        warn!(
                            %peer,
                            "client refused: its address has {limit} connections open \
                             ([limits] connections_per_address; logged at most every 10s, \
                             counted in tunnelize_rejected_total)"
                        );
                    }
                }
            }
        }
    }

    /// A successful login from `ip`: its failures in a row are forgotten, here and in the
    /// cluster.
    pub fn login_succeeded(&self, ip: std::net::IpAddr) {
        self.lockouts.succeed(ip);
        if let Some(cluster) = &self.cluster {
            let cluster = cluster.clone();
            tokio::spawn(async move { cluster.login_succeeded(ip, false).await });
        }
    }

    /// Brings a lockout of `ip` that another hub of the cluster set into this hub's table, so
    /// that the table's check sees it. Nothing without a cluster, or when Redis does not
    /// answer (the table alone decides then).
    pub async fn pull_lockout(&self, ip: std::net::IpAddr) {
        if let Some(cluster) = &self.cluster
            && let Some(left) = cluster.lockout_left(ip).await
        {
            self.lockouts.lock_for(ip, left);
        }
    }

    fn tunnel_acceptor(&self) -> TlsAcceptor {
        self.tunnel_acceptor.read().clone()
    }
}

/// A service listener bound at start, with what serving it needs.
struct BoundService {
    name: String,
    config: crate::config::HttpService,
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
}

/// A configured hub, ready to run.
pub struct Hub {
    shared: Arc<Shared>,
    fingerprint: Fingerprint,
    services: Vec<BoundService>,
    /// Whether the ports and hostnames held for keys are kept in `state_dir` across restarts.
    keep_holds: bool,
}

impl Hub {
    /// Prepares a hub with the certificate it presents to tunnels, and binds the listeners of
    /// its http/https services (so a port in use is an error now, not later).
    pub async fn new(config: HubConfig, identity: &Identity) -> Result<Self, HubError> {
        if config.keys.is_empty() && !(config.allow_no_auth && config.listen.ip().is_loopback()) {
            return Err(HubError::Config(
                "no tunnel key is configured; add a [[keys]] entry (or, for loopback-only \
                 testing, allow_no_auth = true)"
                    .into(),
            ));
        }
        let acceptor = TlsAcceptor::from(identity.server_config()?);
        let mut services = Vec::new();
        for service in &config.services {
            let (http, tls) = match &service.kind {
                ServiceKind::Http(http) => (http, None),
                ServiceKind::Https(http) => (http, Some(http::sni::acceptor(&http.certificates)?)),
                _ => continue,
            };
            let bind_error = |source| HubError::Bind {
                service: service.name.clone(),
                addr: http.listen,
                source,
            };
            let listener = TcpListener::bind(http.listen).await.map_err(bind_error)?;
            listener.local_addr().map_err(bind_error)?;
            services.push(BoundService {
                name: service.name.clone(),
                config: http.clone(),
                listener,
                acceptor: tls,
            });
        }
        let cluster = match &config.cluster {
            Some(cluster) => Some(
                cluster::Cluster::new(
                    (**cluster).clone(),
                    config.reconnect_grace,
                    identity.fingerprint(),
                )
                .await
                .map_err(|e| HubError::Config(e.to_string()))?,
            ),
            None => None,
        };
        let config_handshakes = config.limits.handshakes;
        let lockouts = lockout::LockoutTable::new(
            config.lockout_failures,
            config.lockout_duration,
            lockout::DEFAULT_CAPACITY,
        );
        let shared = Shared {
            current: parking_lot::RwLock::new(Arc::new(config.clone())),
            tunnel_acceptor: parking_lot::RwLock::new(acceptor),
            stop: CancellationToken::new(),
            sessions_root: CancellationToken::new(),
            running: parking_lot::Mutex::default(),
            config,
            registry: Registry::default(),
            tasks: TaskTracker::new(),
            hosts: http::routes::HostRoutes::default(),
            service_addrs: reload::ServiceAddrs::default(),
            metrics: metrics::HubMetrics::default(),
            lockouts,
            handshakes: Arc::new(tokio::sync::Semaphore::new(config_handshakes)),
            accepts: Arc::default(),
            addresses: Arc::default(),
            started: std::time::SystemTime::now(),
            cluster,
            peers: peer::Peers::default(),
        };
        Ok(Hub {
            shared: Arc::new(shared),
            fingerprint: identity.fingerprint(),
            services,
            keep_holds: false,
        })
    }

    /// Keeps the ports and hostnames held for tunnel keys across restarts, in `state_dir`
    /// (`registry::persist`): holds again what the last run left there, and writes the file
    /// when this run stops. The daemon does; hubs that share a temporary `state_dir` (tests,
    /// the demo) must not.
    pub async fn keep_holds_across_restarts(&mut self) {
        restore_holds(&self.shared).await;
        self.keep_holds = true;
    }

    /// The bound address of an http/https service.
    pub fn service_addr(&self, name: &str) -> Option<SocketAddr> {
        self.shared.service_addrs.get(name).or_else(|| {
            let service = self.services.iter().find(|s| s.name == name)?;
            service.listener.local_addr().ok()
        })
    }

    /// A handle for the admin API on this hub's state; valid while the hub runs.
    pub fn view(&self) -> inspect::HubView {
        inspect::HubView::new(self.shared.clone())
    }

    /// SHA-256 fingerprint of the certificate tunnels will see.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Serves tunnels on `listener` until `shutdown` is cancelled. Then it stops accepting
    /// (tunnels and clients), waits up to `shutdown_timeout` for live clients to finish, closes
    /// every session (tunnels are told why) and waits briefly for connection tasks to end.
    pub async fn run(self, listener: TcpListener, shutdown: CancellationToken) {
        match self.shared.cluster.clone() {
            Some(cluster) => {
                let span = tracing::info_span!("hub", hub = %cluster.name());
                let renewal = cluster::keep_membership(self.shared.clone(), cluster.clone());
                // Ends with this future, also when it is dropped before the hub stops.
                let renewing = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
                    tracing::Instrument::instrument(renewal, span.clone()),
                ));
                tracing::Instrument::instrument(self.serve(listener, shutdown), span).await;
                drop(renewing);
                cluster.leave().await;
            }
            None => self.serve(listener, shutdown).await,
        }
    }

    async fn serve(mut self, listener: TcpListener, shutdown: CancellationToken) {
        for service in std::mem::take(&mut self.services) {
            reload::start_service(
                &self.shared,
                service.name,
                service.config,
                service.listener,
                service.acceptor,
            );
        }

        match listener.local_addr() {
            Ok(addr) => {
                let fingerprint = self.fingerprint;
                info!(
                    listen = %addr, %fingerprint,
                    "hub listening for tunnels on {addr}, certificate SHA-256 {fingerprint}"
                )
            }
            Err(e) => warn!(error = %e, "hub listening for tunnels on an unknown address"),
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.shared.accepts.accept(&listener, "tunnel listener") => match accepted {
                    Ok((socket, peer)) => {
                        // Handshakes in progress are bounded; over the limit a connection is
                        // closed at once rather than queued.
                        let Ok(permit) = self.shared.handshakes.clone().try_acquire_owned() else {
                            if self.shared.metrics.reject_at_limit() {
                                warn!(%peer, "too many handshakes in progress; connection closed (logged at most every 10s)");
                            }
                            continue;
                        };
                        let shared = self.shared.clone();
                        let acceptor = self.shared.tunnel_acceptor();
                        let stop = self.shared.sessions_root.clone();
                        // In the hub's span (its cluster name, in a cluster), as are the
                        // sessions and links the connection becomes.
                        let connection = async move {
                            serve_connection(shared, acceptor, socket, peer, stop, permit).await;
                        };
                        self.shared
                            .tasks
                            .spawn(tracing::Instrument::in_current_span(connection));
                    }
                    Err(e) => {
                        // Out of descriptors is handled by `accept`; keep the listener, back off.
                        error!(error = %e, "accepting a tunnel connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(listener);
        self.shared.stop.cancel();
        self.drain().await;
        if self.keep_holds {
            save_holds(&self.shared).await;
        }
        self.shared.sessions_root.cancel();
        self.shared.tasks.close();
        if tokio::time::timeout(STOP_GRACE, self.shared.tasks.wait())
            .await
            .is_err()
        {
            warn!("some connections did not finish within {STOP_GRACE:?}; dropping them");
        }
        info!("hub stopped");
    }
}

/// Holds again the ports and hostnames the last run of the hub left held for keys
/// (`registry::persist`); a file it cannot use is logged and ignored.
async fn restore_holds(shared: &Shared) {
    match registry::persist::load(&shared.config.state_dir).await {
        Ok(holds) if holds.ports.is_empty() && holds.hosts.is_empty() => {}
        Ok(holds) => {
            let (ports, hosts) = (holds.ports.len(), holds.hosts.len());
            shared.registry.restore_holds(holds.ports);
            shared.hosts.restore_holds(holds.hosts);
            info!(
                ports,
                hostnames = hosts,
                "holding {ports} ports and {hosts} hostnames for the keys whose tunnels had them before the restart"
            );
        }
        Err(e) => warn!(error = %e, "the claims held before the restart are lost: {e}"),
    }
}

/// Writes what the hub holds for keys, and what its live tunnels hold, for the next start;
/// nothing when `reconnect_grace` is off.
async fn save_holds(shared: &Shared) {
    let grace = shared.current().reconnect_grace;
    if grace.is_zero() {
        return;
    }
    let holds = registry::persist::Holds {
        ports: shared.registry.holds_for_restart(grace),
        hosts: shared.hosts.holds_for_restart(grace),
    };
    match registry::persist::save(&shared.config.state_dir, &holds).await {
        Ok(0) => {}
        Ok(n) => info!(
            held = n,
            "kept {n} ports and hostnames for their keys' tunnels across the restart (state_dir)"
        ),
        Err(e) => {
            warn!(error = %e, "could not keep the tunnels' ports and hostnames for the next start: {e}")
        }
    }
}

impl Hub {
    /// Waits up to `shutdown_timeout` for the connected clients to finish.
    async fn drain(&self) {
        let limit = self.shared.config.shutdown_timeout;
        let clients = &self.shared.registry.clients;
        if clients.is_empty() {
            return;
        }
        let (connected, timeout) = (clients.len(), humantime::format_duration(limit));
        info!(
            clients = connected, %timeout,
            "stopping: no new clients; waiting up to {timeout} for the {connected} connected ones"
        );
        let deadline = tokio::time::Instant::now() + limit;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while !clients.is_empty() && tokio::time::Instant::now() < deadline {
            tick.tick().await;
        }
        if !clients.is_empty() {
            warn!(
                clients = clients.len(),
                "shutdown_timeout reached; closing the remaining clients"
            );
        }
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    socket: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
    handshake: tokio::sync::OwnedSemaphorePermit,
) {
    crate::mux::tune_socket(&socket);
    let limit = shared.config.handshake_timeout;
    let tls = match tokio::time::timeout(limit, acceptor.accept(socket)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TLS handshake failed");
            shared.metrics.reject(metrics::Rejection::Handshake);
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            shared.metrics.reject(metrics::Rejection::Handshake);
            return;
        }
    };
    let mut framed = FramedStream::new(tls);
    let preamble = match framed.read_preamble(limit).await {
        Ok(p) => p,
        Err(e) => {
            debug!(%peer, error = %e, "dropping connection with a bad preamble");
            shared.metrics.reject(metrics::Rejection::Handshake);
            return;
        }
    };
    if preamble.version != PROTOCOL_VERSION {
        if shared.metrics.reject_handshake() {
            warn!(%peer, theirs = preamble.version, ours = PROTOCOL_VERSION, "tunnel speaks another protocol version (logged at most every 10s)");
        }
        let answer = HubPreamble {
            version: PROTOCOL_VERSION,
            accepted: false,
        }
        .encode();
        let _ = framed.write_preamble_and::<()>(&answer, &[]).await;
        return;
    }
    // The permit goes with the connection until its first message is read.
    match preamble.channel {
        Channel::Control => control::serve_control(shared, framed, peer, shutdown, handshake).await,
        Channel::Link => links::serve_link(shared, framed, peer, handshake).await,
        Channel::Peer => peer::serve_peer(shared, framed, peer, handshake).await,
    }
}
