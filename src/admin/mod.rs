//! The monitoring and control API of both daemons (axum, JSON under `/v1`), and its client.
//!
//! [`model`] is the contract: paths and documents shared by the servers and `tunnelizectl`.
//! [`api`] holds the routes, [`server`] the transports (Unix socket, TLS), [`openapi`] the
//! document describing it all, [`system`] the host figures, [`prometheus`] the metrics text; [`client`], [`table`] and [`view`]
//! are `tunnelizectl`'s side. [`serve_hub`] and [`serve_tunnel`] start what a daemon's
//! `[admin]` section asks for.

pub mod api;
pub mod client;
pub mod model;
pub mod openapi;
pub mod prometheus;
pub mod server;
pub mod system;
pub mod table;
pub mod view;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::config::AdminConfig;
use crate::hub::inspect::HubView;
use crate::tls::Identity;
use crate::tunnel::status::StatusBoard;
pub use server::ServeError;

/// Where a daemon's admin API ended up listening.
#[derive(Debug, Clone, Default)]
pub struct AdminListeners {
    /// The Unix socket, when one is served.
    pub socket: Option<PathBuf>,
    /// The TLS address, when one is served.
    pub tls: Option<SocketAddr>,
    tasks: TaskTracker,
}

impl AdminListeners {
    /// Waits, at most `limit`, for the listeners to finish after their shutdown token was
    /// cancelled (the socket file is removed then).
    pub async fn stopped(&self, limit: std::time::Duration) {
        self.tasks.close();
        let _ = tokio::time::timeout(limit, self.tasks.wait()).await;
    }
}

/// Binds the socket `config` asks for. The default path is skipped (with a warning) when its
/// directory does not exist, such as outside a service manager that creates /run/tunnelize.
async fn socket(
    config: &AdminConfig,
    router: &axum::Router,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<Option<PathBuf>, ServeError> {
    let Some(path) = &config.socket else {
        return Ok(None);
    };
    let parent_missing = path
        .parent()
        .is_some_and(|p| !p.as_os_str().is_empty() && !p.is_dir());
    if parent_missing && !config.socket_explicit {
        warn!(
            socket = %path.display(),
            "admin socket not served: its directory does not exist (set `socket` in [admin])"
        );
        return Ok(None);
    }
    let listener = server::bind_socket(path, config.socket_group.as_deref()).await?;
    tasks.spawn(server::serve_socket(
        listener,
        path.clone(),
        router.clone(),
        shutdown.clone(),
    ));
    Ok(Some(path.clone()))
}

/// Starts a hub's admin API as `config` asks: the socket, and the TLS listener when both
/// `listen` and a monitoring key are set (without a key it does not start: fail closed). Both
/// stop with `shutdown`. `POST /v1/reload` requests go to `reload`.
pub async fn serve_hub(
    view: HubView,
    config: &AdminConfig,
    identity: &Identity,
    reload: Option<tokio::sync::mpsc::Sender<api::ReloadRequest>>,
    shutdown: &CancellationToken,
) -> Result<AdminListeners, ServeError> {
    let router = api::router(api::Daemon::Hub(view.clone()), reload);
    let tasks = TaskTracker::new();
    let socket = socket(config, &router, shutdown, &tasks).await?;
    let tls = match (config.listen, &config.key) {
        (Some(addr), Some(key)) => {
            let fail = |source| ServeError::Bind { addr, source };
            let listener = TcpListener::bind(addr).await.map_err(fail)?;
            let bound = listener.local_addr().map_err(fail)?;
            let server_config = identity.server_config().map_err(ServeError::Tls)?;
            let accepts = view.acceptor();
            let keyed = api::with_key(router, view, key.clone());
            tasks.spawn(server::serve_tls(
                listener,
                TlsAcceptor::from(server_config),
                accepts,
                keyed,
                shutdown.clone(),
            ));
            Some(bound)
        }
        (Some(addr), None) => {
            warn!(listen = %addr, "TLS admin listener not started: [admin] has no monitoring key");
            None
        }
        (None, _) => None,
    };
    Ok(AdminListeners { socket, tls, tasks })
}

/// Starts a tunnel daemon's status API on its socket. `POST /v1/reload` requests go to
/// `reload`.
pub async fn serve_tunnel(
    board: Arc<StatusBoard>,
    config: &AdminConfig,
    reload: Option<tokio::sync::mpsc::Sender<api::ReloadRequest>>,
    shutdown: &CancellationToken,
) -> Result<AdminListeners, ServeError> {
    let router = api::router(api::Daemon::Tunnel(board), reload);
    let tasks = TaskTracker::new();
    let socket = socket(config, &router, shutdown, &tasks).await?;
    Ok(AdminListeners {
        socket,
        tls: None,
        tasks,
    })
}
