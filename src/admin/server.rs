//! Serving the admin API: on a Unix socket (both daemons) and, for the hub, on a TLS listener.
//!
//! The socket is created mode 0660, optionally owned by a group whose members may then use it.
//! A socket file left by a daemon that died is replaced; one a live daemon still answers on is
//! not stolen. The TLS listener does its handshakes in per-connection tasks, each under a
//! deadline, bounds the connections it serves at once, and reads request heads under a
//! deadline too.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use tracing::{debug, info, warn};

use crate::hub::accept::Acceptor;

/// Connections the TLS listener serves at once; more wait in the kernel's backlog.
const MAX_TLS_CONNECTIONS: usize = 128;
/// Deadline for a TLS handshake and for each request head on the TLS listener.
pub const TLS_DEADLINE: Duration = Duration::from_secs(10);
/// How long to try a socket file to see whether a live daemon answers on it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Errors setting up an admin listener.
#[derive(Debug, Error)]
pub enum ServeError {
    /// Another live process serves on the socket.
    #[error(
        "admin socket {0}: another daemon is answering on it; stop that daemon or set another \
         `socket` in [admin]"
    )]
    SocketInUse(PathBuf),
    /// The socket could not be created.
    #[error("admin socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The TLS listener's address cannot be bound.
    #[error("admin listener {addr}: {source}; change `listen` in [admin]")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// The hub's certificate cannot be served.
    #[error("admin listener: {0}")]
    Tls(crate::tls::TlsError),
    /// The configured group does not exist.
    #[error(
        "admin socket {path}: no group `{group}` on this host; create it (the packages do) or \
         change `socket_group` in [admin]"
    )]
    NoSuchGroup {
        /// The socket path.
        path: PathBuf,
        /// The group.
        group: String,
    },
}

/// Creates the API socket at `path`, mode 0660, owned by `group` when given.
pub async fn bind_socket(path: &Path, group: Option<&str>) -> Result<UnixListener, ServeError> {
    let fail = |source| ServeError::Socket {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        let live = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(path)).await,
            Ok(Ok(_))
        );
        if live {
            return Err(ServeError::SocketInUse(path.to_owned()));
        }
        debug!(socket = %path.display(), "replacing a stale admin socket");
        std::fs::remove_file(path).map_err(fail)?;
    }
    let listener = UnixListener::bind(path).map_err(fail)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(fail)?;
    if let Some(group) = group {
        let gid = group_id(group)
            .map_err(fail)?
            .ok_or_else(|| ServeError::NoSuchGroup {
                path: path.to_owned(),
                group: group.to_owned(),
            })?;
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(fail)?;
    }
    Ok(listener)
}

/// Looks a group up in `/etc/group`.
fn group_id(name: &str) -> io::Result<Option<u32>> {
    let text = std::fs::read_to_string("/etc/group")?;
    Ok(parse_group(&text, name))
}

fn parse_group(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let group = fields.next()?;
        let _password = fields.next()?;
        let gid = fields.next()?;
        (group == name).then(|| gid.parse().ok()).flatten()
    })
}

/// Serves `router` on the socket until `shutdown`, then removes the socket file.
pub async fn serve_socket(
    listener: UnixListener,
    path: PathBuf,
    router: Router,
    shutdown: CancellationToken,
) {
    info!(socket = %path.display(), "admin API listening on {}", path.display());
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let socket = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(e) => {
                    warn!(socket = %path.display(), error = %e, "accepting on the admin socket failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // The kernel's word for who connected: every action is logged with it.
        let caller = match socket.peer_cred() {
            Ok(cred) => super::api::Caller::socket(&cred),
            Err(e) => {
                debug!(error = %e, "no credentials for an admin socket connection; closed");
                continue;
            }
        };
        connections.spawn(serve_connection(
            socket,
            caller,
            router.clone(),
            shutdown.clone(),
        ));
    }
    connections.close();
    // Requests in flight finish (a reload's answer, say); bounded by their own deadlines.
    let _ = tokio::time::timeout(TLS_DEADLINE, connections.wait()).await;
    let _ = std::fs::remove_file(&path);
}

/// Serves HTTP/1.1 requests from `caller` on `io` with `router` (each request carries the
/// caller in its extensions), heads under [`TLS_DEADLINE`], until the peer closes or `stop`
/// (then the request in flight is finished).
async fn serve_connection<IO>(
    io: IO,
    caller: super::api::Caller,
    router: Router,
    stop: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let who = caller.to_string();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(caller.clone());
        let mut router = router.clone();
        async move { router.call(req).await }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(TLS_DEADLINE)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = ended {
        debug!(caller = %who, error = %e, "admin connection ended with an error");
    }
}

/// Serves `router` over TLS on `listener` until `shutdown`.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    accepts: Arc<Acceptor>,
    router: Router,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(listen = %addr, "admin API listening (TLS, monitoring key required) on {addr}");
    }
    let slots = Arc::new(Semaphore::new(MAX_TLS_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (socket, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = accepts.accept(&listener, "admin listener") => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "accepting an admin connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (acceptor, router, stop) = (acceptor.clone(), router.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(TLS_DEADLINE, acceptor.accept(socket)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(%peer, error = %e, "admin TLS handshake failed"),
                Err(_) => return debug!(%peer, "admin TLS handshake timed out"),
            };
            serve_connection(tls, super::api::Caller::Tls(peer), router, stop).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_found_by_name() {
        let text = "root:x:0:\ntunnelize:x:998:ann,bob\nbad-line\nother:x:notanumber:\n";
        assert_eq!(parse_group(text, "tunnelize"), Some(998));
        assert_eq!(parse_group(text, "root"), Some(0));
        assert_eq!(parse_group(text, "other"), None);
        assert_eq!(parse_group(text, "missing"), None);
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_is_not_stolen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        // A socket file nobody listens on: what a killed daemon leaves.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let live = bind_socket(&path, None)
            .await
            .expect("stale socket replaced");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        match bind_socket(&path, None).await {
            Err(ServeError::SocketInUse(p)) => assert_eq!(p, path),
            other => panic!("expected SocketInUse, got {other:?}"),
        }
        drop(live);
    }

    #[tokio::test]
    async fn the_socket_is_given_to_the_configured_group() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let own = std::fs::metadata(dir.path()).unwrap();
        let groups: Vec<(String, u32)> = std::fs::read_to_string("/etc/group")
            .unwrap()
            .lines()
            .filter_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?.to_owned();
                Some((name, f.nth(1)?.parse().ok()?))
            })
            .collect();
        // As root (CI), a group other than the file's own, so the chown must happen; as
        // another user, its own group, the only one it may give files to.
        let (name, gid) = groups
            .into_iter()
            .find(|(_, gid)| (own.uid() == 0) == (*gid != own.gid()))
            .expect("a usable group in /etc/group");
        let path = dir.path().join("api.sock");
        let _listener = bind_socket(&path, Some(&name)).await.unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.gid(), gid, "owned by group {name}");
        assert_eq!(meta.mode() & 0o777, 0o660);
    }

    #[tokio::test]
    async fn an_unknown_group_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let err = bind_socket(&path, Some("no-such-group-tunnelize-test"))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("no group `no-such-group-tunnelize-test`")
        );
    }
}
