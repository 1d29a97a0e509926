//! HTTP/1.1 connections from the hub to a tunnel's target, over link streams, with a small
//! keep-alive pool per backend.
//!
//! A connection is one link stream (the tunnel splices it to a fresh TCP connection to its
//! target) running hyper's HTTP/1.1 client. After a response head arrives the connection is
//! parked until hyper says it is ready again (the response body was read), then kept idle for
//! at most [`IDLE_FOR`]. Upgrades (WebSocket) always get a connection of their own.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tracing::debug;

use super::routes::Backend;
use crate::hub::Shared;
use crate::hub::links::LinkError;
use crate::mux::LinkStream;
use crate::protocol::{LinkOpen, LinkRefusal, Transport};

/// Errors carried by request and response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type the hub sends upstream and back to clients.
pub type Body = BoxBody<Bytes, BoxError>;

/// How long an idle upstream connection is kept.
pub const IDLE_FOR: Duration = Duration::from_secs(60);
/// Most idle connections kept per backend.
const MAX_IDLE: usize = 32;

/// Why a request could not be delivered upstream.
#[derive(Debug, Error)]
pub enum UpstreamError {
    /// No link stream could be opened to the tunnel.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The tunnel could not reach its target.
    #[error("the tunnel could not reach its target: {0}")]
    Refused(String),
    /// The tunnel did not answer the link stream in time.
    #[error("the tunnel did not answer in time")]
    LinkTimeout,
    /// HTTP/1.1 to the target failed.
    #[error("the target's HTTP connection failed: {0}")]
    Http(#[from] hyper::Error),
}

/// Idle keep-alive connections of one backend.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<(u64, SendRequest<Body>)>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.lock().len())
            .finish()
    }
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Vec<(u64, SendRequest<Body>)>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection ready for a request, if any.
    fn take(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.lock();
        while let Some((_, sender)) = idle.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    fn put(&self, sender: SendRequest<Body>) -> Option<u64> {
        let mut idle = self.lock();
        if idle.len() >= MAX_IDLE {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        idle.push((id, sender));
        Some(id)
    }

    fn remove(&self, id: u64) {
        self.lock().retain(|(i, _)| *i != id);
    }
}

/// Opens a new upstream connection to `backend`'s target.
async fn connect(
    shared: &Arc<Shared>,
    backend: &Backend,
    client_id: u64,
    peer: SocketAddr,
) -> Result<SendRequest<Body>, UpstreamError> {
    let wait = shared.config.link_timeout;
    let head = LinkOpen {
        proxy: backend.proxy.clone(),
        client_id,
        peer,
        transport: Transport::Tcp,
    };
    let started = std::time::Instant::now();
    let (response, send) = backend.session.links.open(&head, wait).await?;
    let response = match tokio::time::timeout(wait, response).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(LinkError::Open(e).into()),
        Err(_) => return Err(UpstreamError::LinkTimeout),
    };
    shared.metrics.link_setup.observe(started.elapsed());
    LinkRefusal::check_response(response.status(), response.headers())
        .map_err(|refusal| UpstreamError::Refused(refusal.reason))?;
    let io = TokioIo::new(LinkStream::new(send, response.into_body()));
    let (sender, connection) = http1::Builder::new().handshake(io).await?;
    shared.tasks.spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// A connection ready for one request: an idle pooled one when there is one, else a new one.
/// Upgrades always get a new connection. Failing here leaves the request unsent, so the caller
/// may try another backend.
pub(crate) async fn acquire(
    shared: &Arc<Shared>,
    backend: &Backend,
    client_id: u64,
    peer: SocketAddr,
    upgrade: bool,
) -> Result<SendRequest<Body>, UpstreamError> {
    if !upgrade && let Some(sender) = backend.pool.take() {
        return Ok(sender);
    }
    connect(shared, backend, client_id, peer).await
}

/// Sends `request` on `sender`. If that was a pooled connection the target had closed before
/// the request went out, the request is retried once on a new connection.
pub(crate) async fn send(
    shared: &Arc<Shared>,
    backend: &Arc<Backend>,
    mut sender: SendRequest<Body>,
    request: Request<Body>,
    client_id: u64,
    peer: SocketAddr,
    upgrade: bool,
) -> Result<Response<Incoming>, UpstreamError> {
    let response = match sender.try_send_request(request).await {
        Ok(response) => response,
        Err(mut e) => match e.take_message() {
            Some(unsent) => {
                sender = connect(shared, backend, client_id, peer).await?;
                sender.send_request(unsent).await?
            }
            None => return Err(e.into_error().into()),
        },
    };
    if !upgrade {
        park(shared, backend, sender);
    }
    Ok(response)
}

/// Returns a connection to the pool once its response body has been read, and drops it after
/// it has been idle for [`IDLE_FOR`].
fn park(shared: &Arc<Shared>, backend: &Arc<Backend>, mut sender: SendRequest<Body>) {
    let backend = backend.clone();
    let stop = backend.session.cancel.clone();
    shared.tasks.spawn(async move {
        let ready = tokio::select! {
            r = tokio::time::timeout(IDLE_FOR, sender.ready()) => matches!(r, Ok(Ok(()))),
            () = stop.cancelled() => false,
        };
        if !ready {
            return;
        }
        let Some(id) = backend.pool.put(sender) else {
            return;
        };
        tokio::select! {
            () = tokio::time::sleep(IDLE_FOR) => {}
            () = stop.cancelled() => {}
        }
        backend.pool.remove(id);
    });
}
