//! A hub's place in a cluster (`[cluster]` in hub.toml): its membership, the cluster-wide
//! claims of ports and hostnames, and lockouts, kept in one Redis that every hub of the
//! cluster shares. Redis holds leases, not truth that outlives its owner: every key has a TTL
//! that its holder renews, so what a dead hub held expires by itself.
//!
//! - **Membership.** Joining takes a fencing token (`INCR` of a counter) and writes
//!   `tunnelize:hub:NAME` with it, for one `lease`. A hub whose name another live hub holds
//!   is refused until that lease ends. Every write a hub makes checks its token first (in the
//!   same Lua script), so a hub that lost its lease (cut off longer than a lease) cannot write
//!   over anyone: it is *fenced*, joins again with a new token and re-publishes what it holds.
//! - **Claims.** `tunnelize:claim:tcp:PORT`, `…:udp:PORT` and `…:host:SERVICE:HOSTNAME`, each
//!   holding its owner: `key:NAME` (or `group:NAME` for a shared hostname, `session:ID` for a
//!   tunnel without a key). A claim is taken with `SET` only when the key is free or already
//!   the same owner's, so two keys racing for one port on two hubs get one winner. Several
//!   hubs may hold one claim for the same key: a tunnel connects to several hubs with the same
//!   proxies. Claims last one lease plus `reconnect_grace`, so a dead hub's claims stay its
//!   keys' while their tunnels reconnect elsewhere.
//! - **Renewal.** Every third of a lease, one script renews the hub's membership and every
//!   claim it holds (its live sessions' and the ones it holds for reconnecting keys), and
//!   writes back a claim Redis lost (a Redis restarted empty is repaired within a third of a
//!   lease). A claim that another owner took meanwhile is reported and logged.
//! - **Lockouts.** Failed logins from an address are counted in Redis too: the failures of
//!   every hub add up, and an address locked out on one is locked out on all.
//!
//! Every Redis call has a deadline ([`REDIS_TIMEOUT`]). When Redis cannot be reached the hub
//! keeps serving what it holds from its own memory and refuses new claims with the reason;
//! lockouts fall back to its own table. Nothing here runs for a hub without `[cluster]`.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, Script};
use thiserror::Error;
use tracing::{info, warn};

use crate::config::ClusterConfig;
use crate::protocol::Transport;
use crate::secret::Secret;
use crate::tls::Fingerprint;

/// The deadline of one Redis round trip.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Where every key of the cluster starts.
const PREFIX: &str = "tunnelize";
/// Claims renewed by one script call at most; more are renewed in several.
const RENEW_BATCH: usize = 512;

/// Errors setting up the cluster connection.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// The Redis URL or credentials cannot be used.
    #[error("[cluster] redis {url}: {source}")]
    Client {
        /// The URL (it holds no password).
        url: String,
        /// What the client said.
        source: redis::RedisError,
    },
    /// `ca_file` cannot be read.
    #[error("[cluster] ca_file {}: {source}; check the path and that the daemon's user may read it", path.display())]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why not.
        source: std::io::Error,
    },
}

/// What a claim is of: a port of a transport (the same number on every hub of the cluster),
/// or a hostname of an http/https service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClaimKey {
    /// A tcp or udp port.
    Port(Transport, u16),
    /// A hostname on a service.
    Host {
        /// The hub service.
        service: String,
        /// The hostname, in lower case.
        host: String,
    },
}

impl ClaimKey {
    fn redis_key(&self) -> String {
        format!("{PREFIX}:claim:{}", self.route())
    }

    /// The claim as a route of the peer links: `tcp:5000`, `udp:5353`,
    /// `host:web:app.example.com`.
    pub fn route(&self) -> String {
        match self {
            ClaimKey::Port(Transport::Tcp, port) => format!("tcp:{port}"),
            ClaimKey::Port(Transport::Udp, port) => format!("udp:{port}"),
            ClaimKey::Host { service, host } => format!("host:{service}:{host}"),
        }
    }

    /// Reads a route back; `None` for anything else.
    pub fn from_route(route: &str) -> Option<ClaimKey> {
        let (kind, rest) = route.split_once(':')?;
        match kind {
            "tcp" => Some(ClaimKey::Port(Transport::Tcp, rest.parse().ok()?)),
            "udp" => Some(ClaimKey::Port(Transport::Udp, rest.parse().ok()?)),
            "host" => {
                let (service, host) = rest.split_once(':')?;
                Some(ClaimKey::Host {
                    service: service.to_owned(),
                    host: host.to_owned(),
                })
            }
            _ => None,
        }
    }
}

impl fmt::Display for ClaimKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimKey::Port(Transport::Tcp, port) => write!(f, "port {port}"),
            ClaimKey::Port(Transport::Udp, port) => write!(f, "udp port {port}"),
            ClaimKey::Host { host, .. } => write!(f, "hostname {host}"),
        }
    }
}

/// Why the cluster refused a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Another owner holds it: the reason names who.
    Taken(String),
    /// The hub cannot make claims safely now (Redis does not answer, or the hub is not a
    /// member yet): the reason says so.
    Unavailable(String),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Taken(reason) | Refused::Unavailable(reason) => f.write_str(reason),
        }
    }
}

/// Who a claim belongs to across the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner(String);

impl Owner {
    /// The owner of a claim made by a session of `key_name` (or, keyless, session `id`), for
    /// hostname group `group` if it has one.
    pub fn of(key_name: Option<&str>, group: Option<&str>, id: uuid::Uuid) -> Self {
        match (group, key_name) {
            (Some(group), _) => Owner(format!("group:{group}")),
            (None, Some(key_name)) => Owner(format!("key:{key_name}")),
            (None, None) => Owner(format!("session:{id}")),
        }
    }

    /// The owner as a reason names it: "tunnel key `alice`".
    fn describe(text: &str) -> String {
        match text.split_once(':') {
            Some(("key", name)) => format!("tunnel key `{name}`"),
            Some(("group", name)) => format!("hostname group `{name}`"),
            Some(("session", _)) => "a tunnel without a key".to_owned(),
            _ => format!("`{text}`"),
        }
    }
}

/// A hub of the cluster, as Redis lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    /// Its `[cluster] name`.
    pub name: String,
    /// Where tunnels and hubs reach it.
    pub advertise: String,
    /// Its fencing token (grows with every join).
    pub epoch: u64,
    /// Milliseconds left of its lease.
    pub lease_left_ms: u64,
}

/// This hub's standing in its cluster, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// Its `[cluster] name`.
    pub name: String,
    /// The Redis URL (it holds no password).
    pub redis: String,
    /// Whether it is a member now (holds a fencing token).
    pub member: bool,
    /// Whether its last round trip reached Redis.
    pub reachable: bool,
}

/// Counters of the cluster connection, for the metrics.
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    /// Redis round trips made.
    pub round_trips: AtomicU64,
    /// Round trips that failed or passed their deadline.
    pub errors: AtomicU64,
    /// Claims refused because another owner held them in the cluster.
    pub claims_refused: AtomicU64,
    /// Claims found held by another owner at renewal.
    pub conflicts: AtomicU64,
}

/// This hub's membership of the cluster and its Redis connection.
pub struct Cluster {
    config: ClusterConfig,
    redis: ConnectionManager,
    /// This hub's fencing token; 0 while it is not a member.
    epoch: AtomicU64,
    /// Whether the last round trip reached Redis.
    reachable: AtomicBool,
    /// How long claims outlive a lease: the hub's `reconnect_grace`.
    grace: Duration,
    scripts: Scripts,
    /// The SHA-256 of this hub's certificate, published for other hubs to pin when they dial
    /// its peer link (a reload that changes the certificate changes it).
    cert: parking_lot::Mutex<Fingerprint>,
    /// The token other hubs' peer links show that they are members: random per run, published
    /// with the membership. Whoever can read the cluster's Redis can take every claim anyway,
    /// so Redis is the root of trust between hubs.
    peer_token: Secret,
    /// Where the routes (claims) other hubs serve are, as read at the last renewal.
    routes: parking_lot::RwLock<Arc<Routes>>,
    /// Round trips and errors.
    pub metrics: ClusterMetrics,
}

/// The routes served by other hubs of the cluster: for each claim (`tcp:5000`,
/// `host:web:app.example.com`), the hubs with a live tunnel session serving it.
pub type Routes = HashMap<String, Vec<String>>;

/// What a hub needs to dial another hub's peer link: where, and what certificate to expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddress {
    /// Its `advertise` address (`host:port`).
    pub advertise: String,
    /// The SHA-256 of its certificate.
    pub cert: Fingerprint,
}

struct Scripts {
    join: Script,
    leave: Script,
    claim: Script,
    renew: Script,
    fail: Script,
}

/// Joins unless another live hub holds the name (with another token than `ARGV[3]`), writing
/// its advertise address, its certificate's SHA-256 and its peer token. Returns {1, token} or
/// {0, its token, its lease left in ms}.
const JOIN: &str = r"
local cur = redis.call('HGET', KEYS[1], 'epoch')
if cur and cur ~= ARGV[3] then
  return {0, cur, redis.call('PTTL', KEYS[1])}
end
local epoch = redis.call('INCR', KEYS[2])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'epoch', epoch, 'advertise', ARGV[1], 'cert', ARGV[5], 'peer_token', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[4])
return {1, epoch}
";

/// Leaves if the membership is still this token's.
const LEAVE: &str = r"
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
end
return 1
";

/// Takes claim `KEYS[2]` for owner `ARGV[2]` for `ARGV[3]` ms if it is free or already that owner's,
/// and the hub (`KEYS[1]`) still holds token `ARGV[1]`. Returns {'ok'}, {'fenced'} or
/// {'taken', owner, ms left}.
const CLAIM: &str = r"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
  return {'fenced'}
end
local cur = redis.call('GET', KEYS[2])
if cur == false or cur == ARGV[2] then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  return {'ok'}
end
return {'taken', cur, tostring(redis.call('PTTL', KEYS[2]))}
";

/// Renews the hub's membership (`KEYS[1]`, token `ARGV[1]`, `ARGV[2]` ms, its certificate's
/// SHA-256 `ARGV[4]`, which a reload may have changed) and claims `KEYS[2..]` for owners
/// `ARGV[5..]` for `ARGV[3]` ms, writing back those Redis lost. Returns {'fenced'} or
/// {'ok', key, owner, …} listing the claims another owner holds.
const RENEW: &str = r"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
  return {'fenced'}
end
redis.call('HSET', KEYS[1], 'cert', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local out = {'ok'}
for i = 2, #KEYS do
  local owner = ARGV[i + 3]
  local cur = redis.call('GET', KEYS[i])
  if cur == false or cur == owner then
    redis.call('SET', KEYS[i], owner, 'PX', ARGV[3])
  else
    table.insert(out, KEYS[i])
    table.insert(out, cur)
  end
end
return out
";

/// Counts a failed login (`KEYS[1]`, for `ARGV[2]` ms); at `ARGV[1]` failures locks the address
/// (`KEYS[2]`) for `ARGV[2]` ms. Returns the ms of the lockout it set, or 0.
const FAIL: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
  redis.call('DEL', KEYS[1])
  return tonumber(ARGV[2])
end
return 0
";

/// Why a Redis round trip did not give an answer.
#[derive(Debug, Error)]
enum Trip {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("no answer within {}s", REDIS_TIMEOUT.as_secs())]
    Timeout,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The Redis key of an address's failed logins, and of its lockout. An IPv6 address counts
/// as itself (the local table does the same).
fn lockout_keys(ip: IpAddr) -> (String, String) {
    (format!("{PREFIX}:fail:{ip}"), format!("{PREFIX}:lock:{ip}"))
}

impl Cluster {
    /// Prepares the connection (made on first use, and again by itself after a loss);
    /// [`Cluster::join`] makes this hub a member. Reads `ca_file`, if set.
    pub async fn new(
        config: ClusterConfig,
        grace: Duration,
        cert: Fingerprint,
    ) -> Result<Arc<Self>, ClusterError> {
        let client_error = |source| ClusterError::Client {
            url: config.redis.clone(),
            source,
        };
        let mut info = config
            .redis
            .as_str()
            .into_connection_info()
            .map_err(client_error)?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &config.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &config.password {
            settings = settings.set_password(password.expose());
        }
        info = info.set_redis_settings(settings);
        let client = match &config.ca_file {
            Some(path) => {
                let root_cert =
                    tokio::fs::read(path)
                        .await
                        .map_err(|source| ClusterError::CaFile {
                            path: path.clone(),
                            source,
                        })?;
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                };
                redis::Client::build_with_tls(info, certificates).map_err(client_error)?
            }
            None => redis::Client::open(info).map_err(client_error)?,
        };
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(2);
        let redis =
            ConnectionManager::new_lazy_with_config(client, manager).map_err(client_error)?;
        Ok(Arc::new(Cluster {
            config,
            redis,
            epoch: AtomicU64::new(0),
            reachable: AtomicBool::new(false),
            grace,
            scripts: Scripts {
                join: Script::new(JOIN),
                leave: Script::new(LEAVE),
                claim: Script::new(CLAIM),
                renew: Script::new(RENEW),
                fail: Script::new(FAIL),
            },
            cert: parking_lot::Mutex::new(cert),
            peer_token: Secret::random(32),
            routes: parking_lot::RwLock::default(),
            metrics: ClusterMetrics::default(),
        }))
    }

    /// This hub's standing now.
    pub fn status(&self) -> Status {
        Status {
            name: self.config.name.clone(),
            redis: self.config.redis.clone(),
            member: self.is_member(),
            reachable: self.is_reachable(),
        }
    }

    /// This hub's name in the cluster.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The Redis URL (it holds no password).
    pub fn redis_url(&self) -> &str {
        &self.config.redis
    }

    /// The lease of memberships and claims.
    pub fn lease(&self) -> Duration {
        self.config.lease
    }

    /// Whether this hub is a member now (it holds a token).
    pub fn is_member(&self) -> bool {
        self.epoch.load(Ordering::Relaxed) != 0
    }

    /// Whether the last round trip reached Redis.
    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    fn hub_key(&self) -> String {
        format!("{PREFIX}:hub:{}", self.config.name)
    }

    fn members_key() -> String {
        format!("{PREFIX}:members")
    }

    fn claim_ttl(&self) -> u64 {
        millis(self.config.lease + self.grace)
    }

    /// One round trip, within [`REDIS_TIMEOUT`], counted.
    async fn trip<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, Trip> {
        self.metrics.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut redis = self.redis.clone();
        let result =
            match tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async(&mut redis)).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) => Err(Trip::Redis(e)),
                Err(_) => Err(Trip::Timeout),
            };
        self.note(result.is_ok());
        result
    }

    /// Makes this hub a member with a new token (or keeps its own, if Redis still has it).
    /// Returns whether it is one; says why not in the log.
    pub async fn join(&self) -> bool {
        let old = self.epoch.load(Ordering::Relaxed);
        let mut invocation = self.scripts.join.prepare_invoke();
        invocation
            .key(self.hub_key())
            .key(format!("{PREFIX}:epoch"))
            .key(Self::members_key())
            .arg(&self.config.advertise)
            .arg(millis(self.config.lease))
            .arg(old.to_string())
            .arg(&self.config.name)
            .arg(self.cert.lock().to_string())
            .arg(self.peer_token.expose());
        match self.trip::<Vec<redis::Value>>(&invocation).await {
            Ok(answer) => match parse_join(&answer) {
                Joined::Yes(epoch) => {
                    self.epoch.store(epoch, Ordering::Relaxed);
                    let redis = &self.config.redis;
                    info!(hub = %self.config.name, epoch, "hub {} joined the cluster at {redis} (token {epoch})", self.config.name);
                    true
                }
                Joined::NameTaken(left) => {
                    self.epoch.store(0, Ordering::Relaxed);
                    warn!(
                        hub = %self.config.name,
                        "cannot join the cluster: another live hub is named {} (its lease \
                         ends in {}s unless it renews it); give each hub its own [cluster] name",
                        self.config.name,
                        left.as_secs()
                    );
                    false
                }
                Joined::Garbled => {
                    warn!(hub = %self.config.name, "cannot join the cluster: Redis gave an unexpected answer");
                    false
                }
            },
            Err(e) => {
                let redis = &self.config.redis;
                warn!(hub = %self.config.name, error = %e, "cannot join the cluster: Redis at {redis}: {e}; retrying");
                false
            }
        }
    }

    /// Gives up the membership (a stopping hub). Its claims stay until they expire, so its
    /// tunnels' keys keep them while they reconnect to other hubs.
    pub async fn leave(&self) {
        let epoch = self.epoch.swap(0, Ordering::Relaxed);
        if epoch == 0 {
            return;
        }
        let mut invocation = self.scripts.leave.prepare_invoke();
        invocation
            .key(self.hub_key())
            .key(Self::members_key())
            .arg(epoch.to_string())
            .arg(&self.config.name);
        if let Err(e) = self.trip::<i64>(&invocation).await {
            warn!(hub = %self.config.name, error = %e, "could not leave the cluster cleanly: {e}; its lease expires by itself");
        }
    }

    /// Claims `what` for `owner` across the cluster. The error is a reason fit to send to the
    /// tunnel: another owner holds it, or the hub cannot make the claim safely now.
    pub async fn claim(&self, what: &ClaimKey, owner: &Owner) -> Result<(), Refused> {
        let epoch = self.epoch.load(Ordering::Relaxed);
        if epoch == 0 {
            return Err(Refused::Unavailable(format!(
                "the hub cannot claim {what} now: it is not a member of its cluster yet \
                 (Redis at {} unreachable, or another hub has its name); retry shortly",
                self.config.redis
            )));
        }
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(self.hub_key())
            .key(what.redis_key())
            .arg(epoch.to_string())
            .arg(&owner.0)
            .arg(self.claim_ttl());
        let answer: Vec<String> = self.trip(&invocation).await.map_err(|e| {
            Refused::Unavailable(format!(
                "the hub cannot claim {what} safely now: its cluster's Redis at {} does not \
                 answer ({e}); tunnels already connected are still served; retry shortly",
                self.config.redis
            ))
        })?;
        match answer.first().map(String::as_str) {
            Some("ok") => Ok(()),
            Some("taken") => {
                self.metrics.claims_refused.fetch_add(1, Ordering::Relaxed);
                let holder = answer.get(1).map_or("?", String::as_str);
                let left_ms: u64 = answer.get(2).and_then(|ms| ms.parse().ok()).unwrap_or(0);
                Err(Refused::Taken(format!(
                    "{what} is held in the cluster by {} (on this or another hub; unless a hub \
                     renews it, it frees up in {}s)",
                    Owner::describe(holder),
                    left_ms.div_ceil(1000).max(1)
                )))
            }
            Some("fenced") => {
                self.epoch.store(0, Ordering::Relaxed);
                Err(Refused::Unavailable(format!(
                    "the hub cannot claim {what} now: it lost its cluster membership and is \
                     joining again; retry shortly"
                )))
            }
            _ => Err(Refused::Unavailable(format!(
                "the hub cannot claim {what}: Redis gave an unexpected answer"
            ))),
        }
    }

    /// Renews this hub's membership and `claims`, joining again first when it lost its
    /// membership (and so writing back what a Redis that lost its data forgot). Logs each
    /// claim another owner holds.
    pub async fn renew(&self, claims: &HashMap<ClaimKey, Owner>) {
        if !self.is_member() && !self.join().await {
            return;
        }
        let entries: Vec<(&ClaimKey, &Owner)> = claims.iter().collect();
        // No claims still renews the membership, in one call.
        let batches: Vec<&[(&ClaimKey, &Owner)]> = match entries.is_empty() {
            true => vec![&[]],
            false => entries.chunks(RENEW_BATCH).collect(),
        };
        for batch in batches {
            if self.renew_batch(batch).await {
                continue;
            }
            // Fenced (not a Redis error): join again with a new token, then write it back.
            if self.is_member() || !self.join().await || !self.renew_batch(batch).await {
                return;
            }
        }
    }

    /// One renewal script call; false when the hub turned out fenced (or Redis failed).
    async fn renew_batch(&self, batch: &[(&ClaimKey, &Owner)]) -> bool {
        let epoch = self.epoch.load(Ordering::Relaxed);
        let mut invocation = self.scripts.renew.prepare_invoke();
        invocation.key(self.hub_key());
        for (what, _) in batch {
            invocation.key(what.redis_key());
        }
        invocation
            .arg(epoch.to_string())
            .arg(millis(self.config.lease))
            .arg(self.claim_ttl())
            .arg(self.cert.lock().to_string());
        for (_, owner) in batch {
            invocation.arg(&owner.0);
        }
        match self.trip::<Vec<String>>(&invocation).await {
            Ok(answer) if answer.first().map(String::as_str) == Some("ok") => {
                for pair in answer[1..].chunks(2) {
                    if let [key, holder] = pair {
                        self.metrics.conflicts.fetch_add(1, Ordering::Relaxed);
                        warn!(
                            hub = %self.config.name,
                            claim = %key,
                            "{key} is held in the cluster by {} while this hub serves it for \
                             another owner (it was cut off from Redis longer than a lease); \
                             the two hubs disagree until one of the tunnels leaves",
                            Owner::describe(holder)
                        );
                    }
                }
                true
            }
            Ok(_) => {
                warn!(hub = %self.config.name, "this hub lost its cluster membership (cut off from Redis longer than a lease, or Redis lost its data); joining again");
                self.epoch.store(0, Ordering::Relaxed);
                false
            }
            Err(e) => {
                warn!(hub = %self.config.name, error = %e, "cannot renew the cluster membership: Redis at {}: {e}", self.config.redis);
                false
            }
        }
    }

    /// How long `ip` is locked out across the cluster, if it is (`None` when Redis does not
    /// answer: the hub's own table still applies).
    pub async fn lockout_left(&self, ip: IpAddr) -> Option<Duration> {
        let (_, lock) = lockout_keys(ip);
        let mut cmd = redis::cmd("PTTL");
        cmd.arg(lock);
        let ms: i64 = self.command(&cmd).await.ok()?;
        (ms > 0).then(|| Duration::from_millis(ms.unsigned_abs()))
    }

    /// Counts a failed login from `ip` in the cluster; returns the lockout it earned there.
    pub async fn login_failed(&self, ip: IpAddr, max: u32, duration: Duration) -> Option<Duration> {
        let (fail, lock) = lockout_keys(ip);
        let mut invocation = self.scripts.fail.prepare_invoke();
        invocation
            .key(fail)
            .key(lock)
            .arg(max)
            .arg(millis(duration));
        let ms: u64 = self.trip(&invocation).await.ok()?;
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// Forgets `ip`'s failed logins in a row (it logged in), or its lockout (`unlock`).
    pub async fn login_succeeded(&self, ip: IpAddr, unlock: bool) {
        let (fail, lock) = lockout_keys(ip);
        let mut cmd = redis::cmd("DEL");
        cmd.arg(fail);
        if unlock {
            cmd.arg(lock);
        }
        let _: Result<i64, _> = self.command(&cmd).await;
    }

    /// The hubs of the cluster, by name.
    pub async fn members(&self) -> Result<Vec<Member>, String> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(Self::members_key());
        let names: Vec<String> = self
            .command(&cmd)
            .await
            .map_err(|e| format!("Redis at {}: {e}", self.config.redis))?;
        let mut members = Vec::with_capacity(names.len());
        for name in names {
            let key = format!("{PREFIX}:hub:{name}");
            let mut pipe = redis::pipe();
            pipe.cmd("HGET").arg(&key).arg("epoch");
            pipe.cmd("HGET").arg(&key).arg("advertise");
            pipe.cmd("PTTL").arg(&key);
            let (epoch, advertise, ttl): (Option<u64>, Option<String>, i64) = self
                .pipeline(&pipe)
                .await
                .map_err(|e| format!("Redis at {}: {e}", self.config.redis))?;
            match (epoch, advertise) {
                (Some(epoch), Some(advertise)) if ttl > 0 => members.push(Member {
                    name,
                    advertise,
                    epoch,
                    lease_left_ms: ttl.unsigned_abs(),
                }),
                _ => {
                    // Its lease ended: it is gone from the cluster.
                    let mut srem = redis::cmd("SREM");
                    srem.arg(Self::members_key()).arg(&name);
                    let _: Result<i64, _> = self.command(&srem).await;
                }
            }
        }
        members.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(members)
    }

    /// This hub's fencing token now; 0 while it is not a member.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// The token this hub's peer links present.
    pub fn peer_token(&self) -> &Secret {
        &self.peer_token
    }

    /// A reload changed this hub's certificate: published at the next renewal.
    pub fn set_cert(&self, cert: Fingerprint) {
        *self.cert.lock() = cert;
    }

    /// Where hub `name` takes peer links, and the certificate it showed the cluster.
    pub async fn peer_address(&self, name: &str) -> Result<PeerAddress, String> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(format!("{PREFIX}:hub:{name}"))
            .arg("advertise")
            .arg("cert");
        let (advertise, cert): (Option<String>, Option<String>) = self
            .command(&cmd)
            .await
            .map_err(|e| format!("Redis at {}: {e}", self.config.redis))?;
        match (advertise, cert.map(|c| c.parse::<Fingerprint>())) {
            (Some(advertise), Some(Ok(cert))) => Ok(PeerAddress { advertise, cert }),
            (None, _) | (_, None) => Err(format!("hub {name} is not a member of the cluster")),
            (_, Some(Err(e))) => Err(format!(
                "hub {name} published an unusable certificate hash ({e})"
            )),
        }
    }

    /// Whether `token` is the peer token of hub `name`'s membership `epoch`, as Redis holds
    /// it (compared in constant time). `Err` when Redis cannot say.
    pub async fn check_peer(&self, name: &str, epoch: u64, token: &Secret) -> Result<bool, String> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(format!("{PREFIX}:hub:{name}"))
            .arg("epoch")
            .arg("peer_token");
        let (held_epoch, held_token): (Option<u64>, Option<String>) = self
            .command(&cmd)
            .await
            .map_err(|e| format!("Redis at {}: {e}", self.config.redis))?;
        Ok(match (held_epoch, held_token) {
            (Some(held), Some(held_token)) => {
                // Both are compared whatever the first gives, so the time says nothing.
                let token_ok = Secret::new(held_token).matches(token.expose());
                token_ok & (held == epoch)
            }
            _ => false,
        })
    }

    /// Publishes the routes this hub serves with a live tunnel session (replacing what it
    /// published before), for one lease.
    pub async fn publish_routes(&self, served: &[String]) {
        if !self.is_member() {
            return;
        }
        let key = format!("{PREFIX}:routes:{}", self.config.name);
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("DEL").arg(&key).ignore();
        if !served.is_empty() {
            pipe.cmd("SADD").arg(&key).arg(served).ignore();
            pipe.cmd("PEXPIRE")
                .arg(&key)
                .arg(millis(self.config.lease))
                .ignore();
        }
        if let Err(e) = self.pipeline::<()>(&pipe).await {
            warn!(hub = %self.config.name, error = %e, "cannot publish this hub's routes: Redis at {}: {e}", self.config.redis);
        }
    }

    /// Reads where the other hubs' routes are (kept until the next read succeeds).
    pub async fn refresh_routes(&self) {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(Self::members_key());
        let Ok(names) = self.command::<Vec<String>>(&cmd).await else {
            return;
        };
        let others: Vec<String> = names
            .into_iter()
            .filter(|name| *name != self.config.name)
            .collect();
        let mut pipe = redis::pipe();
        for name in &others {
            pipe.cmd("SMEMBERS").arg(format!("{PREFIX}:routes:{name}"));
        }
        let sets: Vec<Vec<String>> = match others.is_empty() {
            true => Vec::new(),
            false => match self.pipeline(&pipe).await {
                Ok(sets) => sets,
                Err(_) => return,
            },
        };
        let mut routes = Routes::new();
        for (name, set) in others.iter().zip(sets) {
            for route in set {
                routes.entry(route).or_default().push(name.clone());
            }
        }
        *self.routes.write() = Arc::new(routes);
    }

    /// The routes other hubs serve, as last read.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.read().clone()
    }

    async fn command<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Trip> {
        self.metrics.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut redis = self.redis.clone();
        let result = match tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async(&mut redis)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Trip::Redis(e)),
            Err(_) => Err(Trip::Timeout),
        };
        self.note(result.is_ok());
        result
    }

    async fn pipeline<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, Trip> {
        self.metrics.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut redis = self.redis.clone();
        let result = match tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async(&mut redis)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Trip::Redis(e)),
            Err(_) => Err(Trip::Timeout),
        };
        self.note(result.is_ok());
        result
    }

    fn note(&self, ok: bool) {
        self.reachable.store(ok, Ordering::Relaxed);
        if !ok {
            self.metrics.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

enum Joined {
    Yes(u64),
    NameTaken(Duration),
    Garbled,
}

fn parse_join(answer: &[redis::Value]) -> Joined {
    let int = |v: &redis::Value| match v {
        redis::Value::Int(n) => Some(*n),
        redis::Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        _ => None,
    };
    match answer {
        [ok, epoch] if int(ok) == Some(1) => match int(epoch) {
            Some(epoch) if epoch > 0 => Joined::Yes(epoch.unsigned_abs()),
            _ => Joined::Garbled,
        },
        [zero, _, left] if int(zero) == Some(0) => Joined::NameTaken(Duration::from_millis(
            int(left).unwrap_or(0).max(0).unsigned_abs(),
        )),
        _ => Joined::Garbled,
    }
}

/// Keeps this hub a member and its claims alive until the hub stops: joins, then renews
/// every third of a lease (joining again whenever it finds itself fenced).
pub(crate) async fn keep_membership(shared: Arc<super::Shared>, cluster: Arc<Cluster>) {
    let mut tick = tokio::time::interval(cluster.lease() / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        cluster.renew(&held_claims(&shared)).await;
        cluster.publish_routes(&served_routes(&shared)).await;
        cluster.refresh_routes().await;
        super::peer::sync_remote_ports(&shared, &cluster);
    }
}

/// The routes this hub serves with a live tunnel session.
fn served_routes(shared: &super::Shared) -> Vec<String> {
    let mut routes = Vec::new();
    for session in shared.registry.tunnels() {
        for proxy in session.proxies() {
            if let Some((transport, (_, port))) = proxy.claim {
                routes.push(ClaimKey::Port(transport, port).route());
            }
            if let Some(host) = proxy.hostname {
                let service = proxy.service.clone();
                routes.push(ClaimKey::Host { service, host }.route());
            }
        }
    }
    routes.sort();
    routes.dedup();
    routes
}

/// Every claim this hub holds: its live sessions' ports and hostnames, and those it holds for
/// the keys of sessions it lost (`reconnect_grace`), with their owners.
fn held_claims(shared: &super::Shared) -> HashMap<ClaimKey, Owner> {
    let mut claims = HashMap::new();
    for ((transport, (_, port)), held) in shared.registry.holds_for_restart(Duration::ZERO) {
        let owner = Owner::of(Some(&held.key_name), None, held.tunnel_id);
        claims.insert(ClaimKey::Port(transport, port), owner);
    }
    for ((service, host), held) in shared.hosts.holds_for_restart(Duration::ZERO) {
        let owner = Owner::of(Some(&held.key_name), held.group.as_deref(), held.tunnel_id);
        claims.insert(ClaimKey::Host { service, host }, owner);
    }
    // Sessions without a key (a no-auth hub) are in neither list.
    for session in shared.registry.tunnels() {
        if session.key_name.is_some() {
            continue;
        }
        let owner = Owner::of(None, None, session.id);
        for proxy in session.proxies() {
            if let Some((transport, (_, port))) = proxy.claim {
                claims.insert(ClaimKey::Port(transport, port), owner.clone());
            }
            if let Some(host) = proxy.hostname {
                let service = proxy.service.clone();
                claims.insert(ClaimKey::Host { service, host }, owner.clone());
            }
        }
    }
    claims
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_of_each_kind_have_their_own_keys_and_names() {
        let tcp = ClaimKey::Port(Transport::Tcp, 5000);
        let udp = ClaimKey::Port(Transport::Udp, 5000);
        let host = ClaimKey::Host {
            service: "web".into(),
            host: "app.example.com".into(),
        };
        assert_eq!(tcp.redis_key(), "tunnelize:claim:tcp:5000");
        assert_eq!(udp.redis_key(), "tunnelize:claim:udp:5000");
        assert_eq!(host.redis_key(), "tunnelize:claim:host:web:app.example.com");
        assert_eq!(udp.to_string(), "udp port 5000");
        assert_eq!(host.to_string(), "hostname app.example.com");
    }

    #[test]
    fn an_owner_is_its_group_then_its_key_then_its_session() {
        let id = uuid::Uuid::nil();
        assert_eq!(Owner::of(Some("alice"), Some("blue"), id).0, "group:blue");
        assert_eq!(Owner::of(Some("alice"), None, id).0, "key:alice");
        assert!(Owner::of(None, None, id).0.starts_with("session:"));
        assert_eq!(Owner::describe("key:alice"), "tunnel key `alice`");
        assert_eq!(Owner::describe("group:blue"), "hostname group `blue`");
    }

    #[test]
    fn a_join_answer_is_read_whatever_shape_redis_gives_its_numbers() {
        use redis::Value::{BulkString, Int};
        assert!(matches!(parse_join(&[Int(1), Int(7)]), Joined::Yes(7)));
        let taken = parse_join(&[Int(0), BulkString(b"3".to_vec()), Int(4500)]);
        assert!(matches!(taken, Joined::NameTaken(d) if d == Duration::from_millis(4500)));
        assert!(matches!(parse_join(&[Int(1)]), Joined::Garbled));
        assert!(matches!(parse_join(&[Int(1), Int(0)]), Joined::Garbled));
    }
}
