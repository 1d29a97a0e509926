//! The admin API's routes (axum): what each path answers for a hub and for a tunnel daemon, and
//! the bearer-key check of the hub's TLS listener. Transport (socket, TLS) is in
//! [`server`](super::server); the documents are in [`model`].
//!
//! Every answer is JSON except `/metrics` (Prometheus text) and `/healthz` (`ok`). Errors are a
//! [`Message`] with the HTTP status saying what kind of error it is.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, middleware};

use tracing::info;

use super::model::{self, Message};
use super::openapi;
use super::system::SystemSampler;
use crate::hub::inspect::HubView;
use crate::secret::StoredKey;
use crate::tunnel::status::StatusBoard;

/// Which daemon the API describes.
#[derive(Clone)]
pub enum Daemon {
    /// A hub.
    Hub(HubView),
    /// A tunnel daemon.
    Tunnel(Arc<StatusBoard>),
}

/// A request to re-read the daemon's configuration; the answer is a summary or why the new
/// configuration was refused.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<String, String>>;

/// How long `POST /v1/reload` waits for the daemon to apply a configuration.
const RELOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Clone)]
struct Api {
    daemon: Daemon,
    system: Arc<SystemSampler>,
    reload: Option<tokio::sync::mpsc::Sender<ReloadRequest>>,
}

fn message(status: StatusCode, text: impl Into<String>) -> Response {
    (
        status,
        Json(Message {
            message: text.into(),
        }),
    )
        .into_response()
}

fn not_found(what: &str, hint: &str) -> Response {
    message(StatusCode::NOT_FOUND, format!("{what}; {hint}"))
}

/// The routes of `daemon`'s API, without authentication (the Unix socket's file mode guards
/// it). `reload` is where `POST /v1/reload` sends its requests; without it reload answers 501.
pub fn router(daemon: Daemon, reload: Option<tokio::sync::mpsc::Sender<ReloadRequest>>) -> Router {
    let (role, started) = match &daemon {
        Daemon::Hub(hub) => ("hub", hub.started()),
        Daemon::Tunnel(board) => ("tunnel", board.started()),
    };
    let api = Api {
        system: SystemSampler::new(role, started),
        daemon: daemon.clone(),
        reload,
    };
    let common = Router::new()
        .route(model::HEALTHZ, get(|| async { "ok\n" }))
        .route(model::METRICS, get(metrics))
        .route(
            model::OPENAPI,
            get(move || async move { Json(openapi::document(role)) }),
        )
        .route(model::SYSTEM, get(system))
        .route(model::RELOAD, post(reload_config));
    let specific = match daemon {
        Daemon::Hub(_) => Router::new()
            .route(model::SERVICES, get(services))
            .route("/v1/services/{name}", get(service))
            .route("/v1/services/{name}/tunnels", get(tunnels))
            .route("/v1/services/{name}/clients", get(clients))
            .route("/v1/tunnels/{id}", delete(disconnect_tunnel))
            .route("/v1/clients/{id}", delete(disconnect_client))
            .route(model::LOCKOUTS, get(lockouts))
            .route(model::CLUSTER, get(cluster))
            .route("/v1/lockouts/{address}", delete(unlock)),
        Daemon::Tunnel(_) => Router::new().route(model::STATUS, get(status)),
    };
    common
        .merge(specific)
        .fallback(|| async { not_found("no such endpoint", "see GET /v1/openapi.json") })
        .with_state(api)
}

/// `router` behind the monitoring key: every request needs `Authorization: Bearer <key>`,
/// except `GET /v1/services`, which a tunnel key also opens (for `tunnelize tunnel
/// --init-from`). Failures answer 401 with `WWW-Authenticate` and are counted.
pub fn with_key(router: Router, hub: HubView, key: StoredKey) -> Router {
    let guard = Arc::new(KeyGuard { hub, key });
    router
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let guard = guard.clone();
            async move { guard.check(req, next).await }
        }))
        // Outermost, so the guard's own refusals carry the headers too.
        .layer(middleware::from_fn(secure_headers))
}

/// What every answer of the TLS listener says to a browser that reaches it: HTTPS only from
/// now on, take the content type as given, never in a frame, load nothing, keep nothing.
const SECURE_HEADERS: [(header::HeaderName, &str); 5] = [
    (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'",
    ),
    (header::CACHE_CONTROL, "no-store"),
];

async fn secure_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    for (name, value) in SECURE_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Who sent a request, put in each request's extensions by the server: the process on the
/// admin socket (by its credentials, which the kernel vouches for) or the peer of a TLS
/// connection. Every action (disconnect, unlock, reload) is logged with it.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A process on the Unix socket.
    Socket {
        /// Its user id.
        uid: u32,
        /// Its user's name (the id when it has none).
        user: String,
        /// Its process id, when the kernel says.
        pid: Option<i32>,
    },
    /// A client of the TLS listener (which presented the monitoring key).
    Tls(std::net::SocketAddr),
}

impl Caller {
    /// The caller on the admin socket whose credentials are `cred`.
    pub fn socket(cred: &tokio::net::unix::UCred) -> Caller {
        let uid = cred.uid();
        Caller::Socket {
            uid,
            user: crate::daemon::account::user_name(uid),
            pid: cred.pid(),
        }
    }

    /// The TLS peer's address, for lockouts.
    fn tls_peer(&self) -> Option<std::net::SocketAddr> {
        match self {
            Caller::Tls(peer) => Some(*peer),
            Caller::Socket { .. } => None,
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Socket { uid, user, pid } => {
                write!(f, "user {user} (uid {uid}")?;
                if let Some(pid) = pid {
                    write!(f, ", pid {pid}")?;
                }
                write!(f, ") on the admin socket")
            }
            Caller::Tls(peer) => write!(f, "{peer} over TLS with the monitoring key"),
        }
    }
}

/// The caller of a request, or "an unknown caller" (a router served without one, as in tests).
fn caller_of(caller: Option<&Extension<Caller>>) -> String {
    caller.map_or_else(|| "an unknown caller".to_owned(), |c| c.0.to_string())
}

struct KeyGuard {
    hub: HubView,
    key: StoredKey,
}

impl KeyGuard {
    async fn check(&self, req: Request, next: Next) -> Response {
        let ip = req
            .extensions()
            .get::<Caller>()
            .and_then(Caller::tls_peer)
            .map(|p| p.ip());
        if let Some(ip) = ip
            && let Err(left) = self.hub.locked_out(ip)
        {
            self.hub.count_lockout_refusal();
            let mut response = message(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this address is locked out after repeated failed logins; retry in {}",
                    crate::hub::lockout::retry_in(left)
                ),
            );
            if let Ok(value) = HeaderValue::from_str(&left.as_secs().max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let monitoring = presented.is_some_and(|key| self.key.matches(key));
        let listing_with_tunnel_key = !monitoring
            && req.method() == Method::GET
            && req.uri().path() == model::SERVICES
            && presented.is_some_and(|key| self.hub.is_tunnel_key(key));
        if monitoring || listing_with_tunnel_key {
            // Only the monitoring key clears the address's failures: a tunnel key must not
            // let its holder reset the count between guesses of the monitoring key.
            if monitoring && let Some(ip) = ip {
                self.hub.login_succeeded(ip);
            }
            return next.run(req).await;
        }
        // A request without a key (a health checker, a scraper) is refused but is no guess.
        self.hub
            .count_auth_failure(if presented.is_some() { ip } else { None });
        let text = if presented.is_some() {
            "the key is not valid for this request"
        } else {
            "this API needs `Authorization: Bearer <monitoring key>`"
        };
        let mut response = message(StatusCode::UNAUTHORIZED, text);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"tunnelize\""),
        );
        response
    }
}

async fn metrics(State(api): State<Api>) -> Response {
    let text = match &api.daemon {
        Daemon::Hub(hub) => hub.metrics(),
        Daemon::Tunnel(board) => board.metrics(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn system(State(api): State<Api>) -> Response {
    match api.system.sample().await {
        Ok(info) => Json(info).into_response(),
        Err(e) => message(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn reload_config(State(api): State<Api>, caller: Option<Extension<Caller>>) -> Response {
    let caller = caller_of(caller.as_ref());
    info!(%caller, "reload requested by {caller}");
    let Some(requests) = &api.reload else {
        return message(
            StatusCode::NOT_IMPLEMENTED,
            "this daemon cannot reload its configuration yet; restart it to apply a new one",
        );
    };
    let (answer, answered) = tokio::sync::oneshot::channel();
    if requests.send(answer).await.is_err() {
        return message(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping");
    }
    match tokio::time::timeout(RELOAD_WAIT, answered).await {
        Ok(Ok(Ok(summary))) => message(StatusCode::OK, summary),
        Ok(Ok(Err(refused))) => message(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the new configuration was refused, the old one keeps running: {refused}"),
        ),
        Ok(Err(_)) => message(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping"),
        Err(_) => message(
            StatusCode::GATEWAY_TIMEOUT,
            "the daemon did not finish reloading in time; see its log",
        ),
    }
}

fn hub(api: &Api) -> Option<&HubView> {
    match &api.daemon {
        Daemon::Hub(hub) => Some(hub),
        Daemon::Tunnel(_) => None,
    }
}

const SERVICE_HINT: &str = "list them with `tunnelizectl list-services`";

async fn services(State(api): State<Api>) -> Response {
    match hub(&api) {
        Some(hub) => Json(hub.services()).into_response(),
        None => not_found("a tunnel has no services", "ask the hub"),
    }
}

async fn service(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match hub(&api).and_then(|hub| hub.service(&name)) {
        Some(info) => Json(info).into_response(),
        None => not_found(&format!("no service `{name}`"), SERVICE_HINT),
    }
}

async fn tunnels(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match hub(&api).and_then(|hub| hub.tunnels(&name)) {
        Some(list) => Json(list).into_response(),
        None => not_found(&format!("no service `{name}`"), SERVICE_HINT),
    }
}

async fn clients(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match hub(&api).and_then(|hub| hub.clients(&name)) {
        Some(list) => Json(list).into_response(),
        None => not_found(&format!("no service `{name}`"), SERVICE_HINT),
    }
}

async fn disconnect_tunnel(
    State(api): State<Api>,
    Path(id): Path<String>,
    caller: Option<Extension<Caller>>,
) -> Response {
    match hub(&api) {
        Some(hub) if hub.disconnect_tunnel(&id) => {
            let caller = caller_of(caller.as_ref());
            info!(tunnel_id = %id, %caller, "tunnel {id} disconnected at the request of {caller}");
            message(StatusCode::OK, format!("tunnel {id} disconnected"))
        }
        _ => not_found(
            &format!("no tunnel `{id}`"),
            "list them with `tunnelizectl list-tunnels SERVICE`",
        ),
    }
}

async fn disconnect_client(
    State(api): State<Api>,
    Path(id): Path<String>,
    caller: Option<Extension<Caller>>,
) -> Response {
    match hub(&api) {
        Some(hub) if hub.disconnect_client(&id) => {
            let caller = caller_of(caller.as_ref());
            info!(client_id = %id, %caller, "client {id} disconnected at the request of {caller}");
            message(StatusCode::OK, format!("client {id} disconnected"))
        }
        _ => not_found(
            &format!("no client `{id}`"),
            "list them with `tunnelizectl list-clients SERVICE`",
        ),
    }
}

async fn lockouts(State(api): State<Api>) -> Response {
    match hub(&api) {
        Some(hub) => Json(hub.lockouts()).into_response(),
        None => not_found("a tunnel has no lockout table", "ask the hub"),
    }
}

async fn cluster(State(api): State<Api>) -> Response {
    let Some(hub) = hub(&api) else {
        return not_found("a tunnel is in no cluster", "ask a hub");
    };
    let Some(status) = hub.cluster() else {
        return not_found(
            "this hub is in no cluster",
            "add a [cluster] table to hub.toml to share a Redis with other hubs",
        );
    };
    let (members, members_error) = match hub.cluster_members().await {
        Some(Ok(members)) => (members, None),
        Some(Err(e)) => (Vec::new(), Some(e)),
        None => (Vec::new(), None),
    };
    Json(model::ClusterInfo {
        name: status.name,
        redis: status.redis,
        member: status.member,
        reachable: status.reachable,
        members: members
            .into_iter()
            .map(|m| model::MemberInfo {
                name: m.name,
                advertise: m.advertise,
                epoch: m.epoch,
                lease_left_ms: m.lease_left_ms,
            })
            .collect(),
        members_error,
    })
    .into_response()
}

async fn unlock(
    State(api): State<Api>,
    Path(address): Path<String>,
    caller: Option<Extension<Caller>>,
) -> Response {
    match hub(&api) {
        Some(hub) if hub.unlock(&address) => {
            let caller = caller_of(caller.as_ref());
            info!(%address, %caller, "lockout of {address} lifted at the request of {caller}");
            message(StatusCode::OK, format!("{address} unlocked"))
        }
        _ => not_found(
            &format!("no lockout entry for `{address}`"),
            "list them with `tunnelizectl list-lockouts`",
        ),
    }
}

async fn status(State(api): State<Api>) -> Response {
    match &api.daemon {
        Daemon::Tunnel(board) => Json(board.snapshot()).into_response(),
        Daemon::Hub(_) => not_found("a hub has no tunnel status", "ask the tunnel daemon"),
    }
}
