//! HTTP/1.1 connections from the hub to a tunnel's target, over link streams, with a small
//! keep-alive pool per backend.
//!
//! A connection is one link stream (the tunnel splices it to a fresh TCP connection to its
//! target) running hyper's HTTP/1.1 client. After a response head arrives the connection is
//! parked until hyper says it is ready again (the response body was read), then kept idle for
//! at most [`IDLE_FOR`]. Upgrades (WebSocket) always get a connection of their own.
//!
//! An HTTP/1.1 client connection carries one request at a time, and its next request is most
//! often for the same backend, so it keeps the upstream connection it used last ([`Kept`])
//! instead of going through the pool: no pool lock and no parking task per request. The kept
//! connection goes to the pool when the client connection ends or moves to another backend.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as _, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::{Mutex, MutexGuard};
use thiserror::Error;
use tracing::debug;

use super::body::{Body, BoxError, Polled};
use super::routes::Backend;
use crate::hub::Shared;
use crate::hub::links::LinkError;
use crate::mux::LinkStream;
use crate::protocol::{LinkOpen, LinkRefusal, Transport};

/// How long an idle upstream connection is kept.
pub const IDLE_FOR: Duration = Duration::from_secs(60);
/// How long a client's kept connection may take to be ready for its next request.
const READY_WAIT: Duration = Duration::from_millis(500);
/// Most idle connections in a backend's pool: enough that clients opening a connection per
/// request, at the concurrency of a busy small site, do not churn upstream ones.
const MAX_IDLE: usize = 64;
/// Most upstream connections of one backend kept by client connections between their
/// requests; beyond it they go through the pool. With [`MAX_IDLE`] this bounds the idle
/// connections a target sees from the hub (a small target must not get one per browser).
const MAX_KEPT: usize = 64;

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
    /// The tunnel's session ended (it disconnected) before a link stream was opened.
    #[error("the tunnel disconnected")]
    Gone,
    /// HTTP/1.1 to the target failed.
    #[error("the target's HTTP connection failed: {0}")]
    Http(#[from] hyper::Error),
}

/// One idle connection; dropping it (taken, removed, or the pool gone) ends its parking task.
type Idle = (u64, SendRequest<Body>, tokio::sync::oneshot::Sender<()>);

/// Idle keep-alive connections of one backend.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    next_id: AtomicU64,
    /// Connections of this backend held in client connections' [`Kept`] slots.
    kept: AtomicUsize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.lock().len())
            .finish()
    }
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Vec<Idle>> {
        self.idle.lock()
    }

    /// An idle connection ready for a request, if any.
    fn take(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.lock();
        while let Some((_, sender, _parked)) = idle.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// Parks `sender`; the receiver resolves when the entry leaves the pool.
    fn put(&self, sender: SendRequest<Body>) -> Option<(u64, tokio::sync::oneshot::Receiver<()>)> {
        let mut idle = self.lock();
        if idle.len() >= MAX_IDLE {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (parked, gone) = tokio::sync::oneshot::channel();
        idle.push((id, sender, parked));
        Some((id, gone))
    }

    fn remove(&self, id: u64) {
        self.lock().retain(|(i, _, _)| *i != id);
    }
}

/// The upstream connection one HTTP/1.1 client connection used last, with its backend.
#[derive(Default)]
pub(crate) struct Kept {
    slot: Mutex<Option<(Arc<Backend>, SendRequest<Body>)>>,
}

impl Kept {
    fn lock(&self) -> MutexGuard<'_, Option<(Arc<Backend>, SendRequest<Body>)>> {
        self.slot.lock()
    }

    /// Empties `slot`, for its connection to be used or handed on.
    fn vacate(
        slot: &mut Option<(Arc<Backend>, SendRequest<Body>)>,
    ) -> Option<(Arc<Backend>, SendRequest<Body>)> {
        let taken = slot.take();
        if let Some((owner, _)) = &taken {
            owner.pool.kept.fetch_sub(1, Ordering::Relaxed);
        }
        taken
    }

    /// The kept connection if it is `backend`'s and open. One for another backend goes to
    /// its own pool (it joins the pool once it has finished its response). A kept connection
    /// is normally ready at once: the client only sends its next request after the previous
    /// response's body was relayed to its end. It may still be a moment from saying so (its
    /// task not having run since), so it gets [`READY_WAIT`] before it goes to the pool.
    async fn take_for(&self, shared: &Arc<Shared>, backend: &Backend) -> Option<SendRequest<Body>> {
        let (owner, mut sender) = Kept::vacate(&mut self.lock())?;
        if owner.id != backend.id {
            park(shared, &owner, sender);
            return None;
        }
        if sender.is_ready() {
            return Some(sender);
        }
        match tokio::time::timeout(READY_WAIT, sender.ready()).await {
            Ok(Ok(())) => Some(sender),
            // The target or the tunnel closed it.
            Ok(Err(_)) => None,
            Err(_) => {
                park(shared, &owner, sender);
                None
            }
        }
    }

    /// Keeps `sender` for the client's next request (or parks it in the pool when its
    /// backend has [`MAX_KEPT`] kept already); a connection kept before goes to its pool.
    fn keep(&self, shared: &Arc<Shared>, backend: &Arc<Backend>, sender: SendRequest<Body>) {
        let mut slot = self.lock();
        if let Some((owner, previous)) = Kept::vacate(&mut slot) {
            park(shared, &owner, previous);
        }
        if backend.pool.kept.fetch_add(1, Ordering::Relaxed) >= MAX_KEPT {
            backend.pool.kept.fetch_sub(1, Ordering::Relaxed);
            return park(shared, backend, sender);
        }
        *slot = Some((backend.clone(), sender));
    }

    /// Hands the kept connection to its backend's pool: the client connection has ended.
    pub(crate) fn release(&self, shared: &Arc<Shared>) {
        if let Some((owner, sender)) = Kept::vacate(&mut self.lock()) {
            park(shared, &owner, sender);
        }
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        // Not released (its client connection's task was dropped): closed, but counted out.
        Kept::vacate(&mut self.lock());
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
    // A session that ends stops waiting for a link connection at once, so a request can move
    // on to another backend rather than wait out `link_timeout` for a tunnel that left.
    let (response, send) = tokio::select! {
        opened = backend.session.links.open(&head, wait) => opened?,
        () = backend.session.cancel.cancelled() => return Err(UpstreamError::Gone),
    };
    let response = match tokio::time::timeout(wait, response).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(LinkError::Open(e).into()),
        Err(_) => return Err(UpstreamError::LinkTimeout),
    };
    shared.metrics.link_setup.observe(started.elapsed());
    LinkRefusal::check_response(response.status(), response.headers())
        .map_err(|refusal| UpstreamError::Refused(refusal.reason))?;
    let io = TokioIo::new(LinkStream::new(send, response.into_body()));
    let (sender, connection) = http1::Builder::new()
        .max_buf_size(UPSTREAM_BUFFER)
        .handshake(io)
        .await?;
    shared.tasks.spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Most an upstream connection reads ahead of what its client has taken (hyper's read
/// buffer; its default is 400 KiB): with the link stream's window, what a client that reads
/// slowly holds at the hub (docs/protocol.md, "Slow readers and fairness"). A target's
/// response head must fit (nginx's proxy_buffer_size is 4 or 8 KiB by default).
const UPSTREAM_BUFFER: usize = 16 * 1024;

/// A connection ready for one request: the one the client connection kept, else an idle
/// pooled one, else a new one. Upgrades always get a new connection. Failing here leaves the
/// request unsent, so the caller may try another backend.
pub(crate) async fn acquire(
    shared: &Arc<Shared>,
    backend: &Backend,
    kept: Option<&Kept>,
    client_id: u64,
    peer: SocketAddr,
    upgrade: bool,
) -> Result<SendRequest<Body>, UpstreamError> {
    if backend.session.cancel.is_cancelled() {
        return Err(UpstreamError::Gone);
    }
    if !upgrade {
        if let Some(kept) = kept
            && let Some(sender) = kept.take_for(shared, backend).await
        {
            return Ok(sender);
        }
        if let Some(sender) = backend.pool.take() {
            return Ok(sender);
        }
    }
    connect(shared, backend, client_id, peer).await
}

/// Why [`send`] got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The request never went out (its pooled connection had closed and no new one could be
    /// opened): its body was not read, and it may go to another backend.
    Unsent(UpstreamError),
    /// The request went out, at least in part, and no response head came back.
    Failed(UpstreamError),
}

/// Sends `request` on `sender`. If that was a pooled connection the target had closed before
/// the request went out, the request is retried once on a new connection to the same backend;
/// if none can be opened the request comes back [`SendError::Unsent`]. Afterwards the
/// connection is kept in `kept` for the client's next request, or parked in the pool.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn send(
    shared: &Arc<Shared>,
    backend: &Arc<Backend>,
    kept: Option<&Kept>,
    mut sender: SendRequest<Body>,
    request: Request<Body>,
    client_id: u64,
    peer: SocketAddr,
    upgrade: bool,
) -> Result<Response<Incoming>, SendError> {
    let response = match sender.try_send_request(request).await {
        Ok(response) => response,
        Err(mut e) => match e.take_message() {
            Some(unsent) => {
                debug!(error = %e.error(), "pooled upstream connection closed; opening another");
                sender = connect(shared, backend, client_id, peer)
                    .await
                    .map_err(SendError::Unsent)?;
                match sender.try_send_request(unsent).await {
                    Ok(response) => response,
                    Err(mut e) => {
                        let unsent = e.take_message().is_some();
                        let error = UpstreamError::Http(e.into_error());
                        return Err(if unsent {
                            SendError::Unsent(error)
                        } else {
                            SendError::Failed(error)
                        });
                    }
                }
            }
            None => return Err(SendError::Failed(e.into_error().into())),
        },
    };
    if !upgrade {
        match kept {
            Some(kept) => kept.keep(shared, backend, sender),
            None => park(shared, backend, sender),
        }
    }
    Ok(response)
}

/// A request body that can be taken back as long as nothing has read it, so that a request
/// that never went out can be sent to another backend with the client's body intact.
pub(crate) struct Handoff {
    slot: Arc<Mutex<Option<Body>>>,
}

impl Handoff {
    /// Splits `body` into a body to send (reading it takes it out of the handoff) and the
    /// handoff itself.
    pub(crate) fn new(body: Body) -> (HandoffBody, Handoff) {
        let hint = body.size_hint();
        let end = body.is_end_stream();
        let slot = Arc::new(Mutex::new(Some(body)));
        let sent = HandoffBody {
            slot: slot.clone(),
            body: None,
            hint,
            end,
        };
        (sent, Handoff { slot })
    }

    /// The body, if nothing has read any of it.
    pub(crate) fn reclaim(self) -> Option<Body> {
        self.slot.lock().take()
    }
}

/// The sending side of a [`Handoff`].
pub(crate) struct HandoffBody {
    slot: Arc<Mutex<Option<Body>>>,
    body: Option<Body>,
    hint: SizeHint,
    end: bool,
}

impl hyper::body::Body for HandoffBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        if self.body.is_none() {
            let taken = self.slot.lock().take();
            match taken {
                Some(body) => self.body = Some(body),
                None => return Poll::Ready(Some(Err("the request body went elsewhere".into()))),
            }
        }
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().map_or(self.end, |b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| self.hint, |b| b.size_hint())
    }
}

/// Returns a connection to the pool once its response body has been read, and drops it after
/// it has been idle for [`IDLE_FOR`]. The task ends as soon as the connection is taken again,
/// so there is one task per idle connection, not one per request of the last minute.
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
        let Some((id, gone)) = backend.pool.put(sender) else {
            return;
        };
        tokio::select! {
            _ = gone => return,
            () = tokio::time::sleep(IDLE_FOR) => {}
            () = stop.cancelled() => {}
        }
        backend.pool.remove(id);
    });
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::hub::http::body::full as body;

    #[tokio::test]
    async fn a_handed_off_body_comes_back_until_it_is_read() {
        let (sent, handoff) = Handoff::new(body("abc"));
        assert_eq!(
            sent.size_hint().exact(),
            Some(3),
            "framing is known before reading"
        );
        drop(sent);
        let back = handoff.reclaim().expect("nothing read it");
        assert_eq!(back.collect().await.unwrap().to_bytes(), "abc");

        let (sent, handoff) = Handoff::new(body("xyz"));
        assert_eq!(sent.collect().await.unwrap().to_bytes(), "xyz");
        assert!(handoff.reclaim().is_none(), "read bodies are gone");
    }
}
