//! One client connection after its start ([`super::serve`](mod@super::serve)): hyper's
//! HTTP/1.1 or h2 server on it, each request handed to [`super::request::handle`] inside this
//! connection's task, and the connection's end (a stopping hub, a removed service, an idle h2
//! connection).
//!
//! HTTP/1.1 bytes are shown to a [`HeadInspector`] as they are read ([`HeadGate`], which also
//! hands hyper each request head whole), so each request arrives with the strict parser's
//! [`Verdict`]. An HTTP/1.1 connection keeps its
//! upstream connection between requests ([`Kept`]); h2 requests run at once and use the pool.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Frontend;
use super::activity::{Activity, Tracked};
use super::body::Watched;
use super::framing::{HeadInspector, Verdict};
use super::gate::HeadGate;
use super::request::handle;
use super::upstream::Kept;
use crate::hub::metrics::Rejection;
use crate::hub::per_address::AddressSlot;

/// A client connection as the servers take it: the socket, or TLS over it.
pub(super) trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> ClientIo for S {}

/// How often an idle h2 client connection is pinged, and how long a ping may go unanswered
/// (shorter when `idle_timeout` is).
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves HTTP/1.1 on one client connection. When `stop` fires (the hub is stopping, or a
/// reload removed the service) an idle keep-alive connection is closed at once and a busy one
/// after its current response, which says `Connection: close`.
///
/// hyper starts only once the first request head is whole: until then the connection holds
/// its socket, this small task and the bytes sent so far (an idle or slowloris client costs
/// little more than a TCP one). The first head gets `header_timeout`, as hyper gives the next.
pub(super) async fn serve_http1(
    front: Arc<Frontend>,
    io: impl ClientIo,
    peer: SocketAddr,
    stop: CancellationToken,
    place: Arc<AddressSlot>,
) {
    let inspector = Arc::new(Mutex::new(HeadInspector::new(front.config.max_head_size)));
    let mut io = HeadGate::new(io, inspector.clone());
    let limit = front.config.header_timeout;
    let first = tokio::select! {
        first = tokio::time::timeout(limit, io.first_head()) => first,
        () = stop.cancelled() => return,
    };
    match first {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return,
        Ok(Err(e)) => return debug!(error = %e, "http connection ended before a request"),
        Err(_) => return debug!(timeout = ?limit, "no whole request head in time; closing"),
    }
    // Boxed: the waiting above holds none of hyper's state.
    Box::pin(run_http1(front, io, peer, inspector, stop, place)).await;
}

/// hyper's HTTP/1.1 server on a connection whose first head is held in its [`HeadGate`].
async fn run_http1(
    front: Arc<Frontend>,
    io: HeadGate<impl ClientIo>,
    peer: SocketAddr,
    inspector: Arc<Mutex<HeadInspector>>,
    stop: CancellationToken,
    place: Arc<AddressSlot>,
) {
    let handler = front.clone();
    let kept = Arc::new(Kept::default());
    let requests_kept = kept.clone();
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        // An upgraded connection outlives this task: its splice holds the client address's
        // place from here (`request::Upgrade`).
        req.extensions_mut().insert(place.clone());
        let verdict = inspector.lock().next_verdict();
        handle(
            handler.clone(),
            req,
            peer,
            verdict,
            Some(requests_kept.clone()),
        )
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(front.config.header_timeout)
        // A hard limit on the head: the buffer limit alone lets one read overshoot it.
        .max_header_size(front.config.max_head_size)
        .max_buf_size(front.config.max_head_size);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    kept.release(&front.shared);
    if let Err(e) = ended {
        // hyper answered 400 or 431 itself (unparsable request, head over max_head_size).
        if e.is_parse() {
            front.shared.metrics.reject(Rejection::BadRequest);
        }
        debug!(error = %e, "http connection ended with an error");
    }
}

/// Serves h2 on one client connection. It is closed (GOAWAY, then the open streams finish) when
/// it has carried no request for `idle_timeout`, or when `stop` fires.
pub(super) async fn serve_h2(
    front: Arc<Frontend>,
    io: impl ClientIo,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    let idle_timeout = front.shared.config.idle_timeout;
    let activity = Activity::new();
    let handler = front.clone();
    let requests = activity.clone();
    let service = service_fn(move |req| {
        let busy = requests.begin();
        // Requests of one h2 connection run at once: they share the pool, not a kept connection.
        let handled = handle(handler.clone(), req, peer, Verdict::Clean, None);
        async move {
            let response = handled.await?;
            Ok::<_, Infallible>(response.map(|body| Watched::new(body, Tracked::new(busy)).boxed()))
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(front.config.max_head_size as u32)
        .max_concurrent_streams(256)
        // A client that stops answering pings is gone.
        .keep_alive_interval(Some(H2_PING_INTERVAL.min(idle_timeout / 2)))
        .keep_alive_timeout(H2_PING_TIMEOUT.min(idle_timeout / 2));
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut closing = false;
    let ended = loop {
        // While a request is in flight there is nothing to check until one ends; looking again
        // after idle_timeout is soon enough.
        let check = activity
            .idle_deadline(idle_timeout)
            .unwrap_or_else(|| tokio::time::Instant::now() + idle_timeout);
        tokio::select! {
            ended = conn.as_mut() => break ended,
            () = stop.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(check), if !closing => {
                if is_idle(&activity, idle_timeout) {
                    debug!(timeout = ?idle_timeout, "h2 connection idle; closing it");
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    };
    if let Err(e) = ended {
        debug!(error = %e, "h2 connection ended with an error");
    }
}

/// Whether an h2 connection has carried no request for `limit` by now.
fn is_idle(activity: &Activity, limit: Duration) -> bool {
    activity
        .idle_deadline(limit)
        .is_some_and(|at| at <= tokio::time::Instant::now())
}
