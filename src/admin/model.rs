//! The admin API's JSON documents and paths: the contract between the daemons' API servers
//! and `tunnelizectl`. Both sides use these types, so they cannot drift apart.
//!
//! Every path is under `/v1`. Times are RFC 3339 strings in UTC; byte counts are totals since
//! the thing began. Secrets never appear in any of these types.

use serde::{Deserialize, Serialize};

/// `GET /healthz`: liveness; `200 ok` when the daemon's runtime answers.
pub const HEALTHZ: &str = "/healthz";
/// `GET /metrics`: Prometheus text exposition.
pub const METRICS: &str = "/metrics";
/// `GET /v1/openapi.json`: an OpenAPI 3.1 document describing every endpoint.
pub const OPENAPI: &str = "/v1/openapi.json";
/// `GET /v1/system`: [`SystemInfo`].
pub const SYSTEM: &str = "/v1/system";
/// `GET /v1/services`: `Vec<`[`ServiceInfo`]`>`.
pub const SERVICES: &str = "/v1/services";
/// `POST /v1/reload`: re-read the configuration file ([`Message`]).
pub const RELOAD: &str = "/v1/reload";
/// `GET /v1/status`: a tunnel daemon's own view ([`TunnelStatus`]).
pub const STATUS: &str = "/v1/status";

/// `GET /v1/lockouts`: `Vec<`[`LockoutInfo`]`>`, the hub's failed-login table.
pub const LOCKOUTS: &str = "/v1/lockouts";

/// `GET /v1/cluster`: the hub's cluster ([`ClusterInfo`]); 404 for a hub alone.
pub const CLUSTER: &str = "/v1/cluster";

/// `DELETE /v1/lockouts/{address}`: forget an address's failures and lockout ([`Message`]).
pub fn lockout(address: &str) -> String {
    format!("/v1/lockouts/{address}")
}

/// `GET /v1/services/{name}`: [`ServiceInfo`].
pub fn service(name: &str) -> String {
    format!("/v1/services/{name}")
}

/// `GET /v1/services/{name}/tunnels`: `Vec<`[`TunnelInfo`]`>`.
pub fn service_tunnels(name: &str) -> String {
    format!("/v1/services/{name}/tunnels")
}

/// `GET /v1/services/{name}/clients`: `Vec<`[`ClientInfo`]`>`.
pub fn service_clients(name: &str) -> String {
    format!("/v1/services/{name}/clients")
}

/// `DELETE /v1/tunnels/{id}`: disconnect a tunnel ([`Message`]); 404 if unknown.
pub fn tunnel(id: &str) -> String {
    format!("/v1/tunnels/{id}")
}

/// `DELETE /v1/clients/{id}`: disconnect one client ([`Message`]); 404 if unknown.
pub fn client(id: &str) -> String {
    format!("/v1/clients/{id}")
}

/// Host and process figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemInfo {
    /// `hub` or `tunnel`.
    pub role: String,
    /// tunnelize version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// Process id.
    pub pid: u32,
    /// The daemon's CPU use, percent of one core, over the last sampling interval.
    pub process_cpu_percent: f32,
    /// The daemon's resident memory in bytes.
    pub process_memory_bytes: u64,
    /// Host CPU use, percent over all cores.
    pub cpu_percent: f32,
    /// Number of CPUs.
    pub cpus: usize,
    /// Host memory in bytes.
    pub memory_total_bytes: u64,
    /// Host memory in use in bytes.
    pub memory_used_bytes: u64,
    /// 1, 5 and 15 minute load averages.
    pub load_average: [f64; 3],
}

/// One hub service with its figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Service name (`[services.NAME]`).
    pub name: String,
    /// `tcp`, `udp`, `http` or `https`.
    pub kind: String,
    /// Where it listens: an address and port range (tcp/udp) or address (http/https).
    pub listen: String,
    /// Base domain (http/https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Tunnels with at least one proxy on the service.
    pub tunnels: usize,
    /// Clients connected now.
    pub clients: usize,
    /// Bytes from clients toward tunnels.
    pub bytes_in: u64,
    /// Bytes from tunnels toward clients.
    pub bytes_out: u64,
}

/// A proxy of a tunnel on a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyInfo {
    /// The tunnel's proxy name.
    pub name: String,
    /// Public port (tcp/udp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Public hostname (http/https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// A connected tunnel, as seen from one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelInfo {
    /// Session id.
    pub id: String,
    /// The name the tunnel gave (its host name).
    pub name: String,
    /// Which configured key it used, if any (the name, never the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// Its address.
    pub peer: String,
    /// When it connected (RFC 3339).
    pub since: String,
    /// Its proxies on this service.
    pub proxies: Vec<ProxyInfo>,
}

/// A connected client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Client id (decimal).
    pub id: String,
    /// The tunnel serving it.
    pub tunnel_id: String,
    /// The tunnel's proxy.
    pub proxy: String,
    /// The client's address.
    pub peer: String,
    /// Bytes from the client.
    pub bytes_in: u64,
    /// Bytes to the client.
    pub bytes_out: u64,
    /// When it connected (RFC 3339).
    pub since: String,
}

/// A tunnel daemon's own view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunnelStatus {
    /// `connected`, `connecting`, or `locked_out` (the hub refuses this address after
    /// repeated failed logins until `retry_at`).
    pub state: String,
    /// The hub address.
    pub hub: String,
    /// Session id while connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_id: Option<String>,
    /// Since when in this state (RFC 3339).
    pub since: String,
    /// The last error, when connecting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When `locked_out`: when the next attempt is due (RFC 3339), once the lockout is over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<String>,
    /// Each proxy's state.
    pub proxies: Vec<TunnelProxyStatus>,
}

/// One proxy of a tunnel daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelProxyStatus {
    /// Proxy name.
    pub name: String,
    /// Hub service.
    pub service: String,
    /// Local target.
    pub target: String,
    /// `live`, `rejected` or `pending`.
    pub state: String,
    /// Public port or hostname when live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<String>,
    /// Why the hub rejected it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether the target accepted the last connection (`null` before any).
    #[serde(default)]
    pub target_up: Option<bool>,
}

/// An address in the hub's failed-login table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockoutInfo {
    /// The source address.
    pub address: String,
    /// Failed logins in a row.
    pub failures: u32,
    /// When its lockout ends (RFC 3339), if it is locked out now.
    #[serde(default)]
    pub locked_until: Option<String>,
}

/// `GET /v1/cluster`: this hub's standing in its cluster and the cluster's hubs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// This hub's `[cluster] name`.
    pub name: String,
    /// The cluster's Redis (the URL holds no password).
    pub redis: String,
    /// Whether this hub is a member now (holds a fencing token).
    pub member: bool,
    /// Whether its last round trip reached Redis.
    pub reachable: bool,
    /// The hubs Redis lists, by name (empty when Redis does not answer).
    pub members: Vec<MemberInfo>,
    /// Why the members could not be read, if they could not.
    #[serde(default)]
    pub members_error: Option<String>,
}

/// One hub of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Its `[cluster] name`.
    pub name: String,
    /// Where tunnels and hubs reach it.
    pub advertise: String,
    /// Its fencing token (grows with every join).
    pub epoch: u64,
    /// Milliseconds left of its lease.
    pub lease_left_ms: u64,
}

/// A plain answer: what happened, or what went wrong (errors use the HTTP status too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Human-readable.
    pub message: String,
}
