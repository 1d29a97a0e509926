//! `http` and `https` services: the hub as a reverse proxy, routing every request by its Host.
//!
//! One listener per service, bound at start. Each client connection runs hyper's server; every
//! request (including later ones on a keep-alive connection) is routed by its own Host to a
//! tunnel proxy ([`routes`]), and sent over a link stream as HTTP/1.1 ([`upstream`]). The hub
//! replaces `X-Forwarded-For/-Proto/-Host` (extends them for trusted proxies), strips hop-by-hop
//! headers, streams bodies both ways, relays upgrades (WebSocket), and answers itself with small
//! pages ([`pages`]): 404 unknown host, 502 unreachable target, 504 silent target, 400 ambiguous
//! framing ([`framing`]), 401 basic auth ([`auth`]), 413 body too large (declared, or found while
//! streaming before the target answered), 431 head too large. A request that never went out,
//! or an idempotent one without a body whose connection was lost before a response head, moves
//! on to another backend of its hostname's group. Credentials the hub checked (basic auth) are
//! not forwarded.
//! `https` terminates TLS with a certificate chosen by SNI ([`sni`]) and speaks h2 or http/1.1.

mod activity;
pub mod auth;
pub mod framing;
pub mod metered;
pub mod pages;
pub mod routes;
pub mod sni;
pub mod upstream;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, info, info_span, warn};

use self::framing::{HeadInspector, Verdict};
use self::metered::{Direction, Metered};
use self::upstream::{Body, UpstreamError};
use super::Shared;
use super::clients::ClientGuard;
use super::idle::IdleIo;
use super::metrics::{HubMetrics, Rejection};
use super::registry::TunnelSession;
use crate::config::HttpService;
use crate::protocol::ProxyRequest;

/// Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// One http/https service, as its request handlers see it.
pub(crate) struct Frontend {
    shared: Arc<Shared>,
    name: String,
    config: HttpService,
    tls: bool,
    auth: auth::AuthCache,
}

/// Registers a tunnel's proxy on an http/https service: picks its hostname and claims it.
/// Returns the public hostname, or a reason fit to send to the tunnel.
pub(crate) fn expose(
    shared: &Arc<Shared>,
    session: &Arc<TunnelSession>,
    service: &str,
    config: &HttpService,
    req: &ProxyRequest,
) -> Result<String, String> {
    let host = match req.hostname.as_deref().map(str::to_ascii_lowercase) {
        None => loop {
            let mut bytes = [0u8; 5];
            let _ = getrandom::fill(&mut bytes);
            let candidate = format!("{}.{}", hex::encode(bytes), config.domain);
            if !shared.hosts.is_taken(service, &candidate) {
                break candidate;
            }
        },
        Some(name) if !name.contains('.') => format!("{name}.{}", config.domain),
        Some(name) if name.ends_with(&format!(".{}", config.domain)) => name,
        Some(name) => {
            let current = shared.current();
            let allowed = session.key_name.as_ref().is_some_and(|key_name| {
                current
                    .keys
                    .iter()
                    .any(|k| &k.name == key_name && k.allows_hostname(&name))
            });
            if !allowed {
                return Err(format!(
                    "hostname {name} is not under service `{service}`'s domain {} and this \
                     tunnel's key may not claim it (see `hostnames` in the hub's [[keys]])",
                    config.domain
                ));
            }
            name
        }
    };
    if !crate::config::is_hostname(&host) {
        return Err(format!("{host:?} is not a valid hostname"));
    }
    shared
        .hosts
        .claim(
            service,
            &host,
            req.group.as_deref(),
            routes::BackendSpec {
                session: session.clone(),
                proxy: req.name.clone(),
                auth: req.basic_auth.clone(),
                max_body: req.max_body,
            },
        )
        .map(|_| host)
}

/// The TLS acceptor of an https service (`None` for http), replaceable by a reload.
pub(crate) type SharedAcceptor = Arc<std::sync::RwLock<Option<TlsAcceptor>>>;

/// Serves one http/https service on `listener` until `shutdown`.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    name: String,
    config: HttpService,
    listener: TcpListener,
    acceptor: SharedAcceptor,
    shutdown: CancellationToken,
) {
    let tls = acceptor.read().unwrap_or_else(|p| p.into_inner()).is_some();
    let front = Arc::new(Frontend {
        shared: shared.clone(),
        name: name.clone(),
        tls,
        config,
        auth: auth::AuthCache::default(),
    });
    let span = info_span!("service", service = %name);
    async {
        if let Ok(addr) = listener.local_addr() {
            info!(listen = %addr, tls = front.tls, "serving http");
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = super::accept::accept(&listener, "http service") => match accepted {
                    Ok((socket, peer)) => {
                        let front = front.clone();
                        // The certificates in force now (a reload may have renewed them).
                        let acceptor = acceptor.read().unwrap_or_else(|p| p.into_inner()).clone();
                        shared.tasks.spawn(
                            serve_connection(front, socket, peer, acceptor, shutdown.clone())
                                .instrument(info_span!("connection", %peer)),
                        );
                    }
                    Err(e) => {
                        warn!(error = %e, "accepting an http client failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }
    .instrument(span)
    .await;
}

async fn serve_connection(
    front: Arc<Frontend>,
    socket: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    let _ = socket.set_nodelay(true);
    // Every wait on the client (body, keep-alive, upgraded bytes) ends after idle_timeout.
    let socket = IdleIo::new(socket, front.shared.config.idle_timeout);
    match acceptor {
        None => serve_http1(front, socket, peer, stop).await,
        Some(acceptor) => {
            let limit = front.config.header_timeout;
            let tls = match tokio::time::timeout(limit, acceptor.accept(socket)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(error = %e, "TLS handshake failed"),
                Err(_) => return debug!("TLS handshake timed out"),
            };
            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                serve_h2(front, tls, peer, stop).await;
            } else {
                serve_http1(front, tls, peer, stop).await;
            }
        }
    }
}

/// Serves HTTP/1.1 on one client connection. When `stop` fires (the hub is stopping, or a
/// reload removed the service) an idle keep-alive connection is closed at once and a busy one
/// after its current response, which says `Connection: close`.
async fn serve_http1<S>(front: Arc<Frontend>, io: S, peer: SocketAddr, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let inspector = Arc::new(Mutex::new(HeadInspector::new(front.config.max_head_size)));
    let io = Inspected {
        inner: io,
        inspector: inspector.clone(),
    };
    let handler = front.clone();
    let kept = Arc::new(upstream::Kept::default());
    let requests_kept = kept.clone();
    let service = service_fn(move |req| {
        let verdict = inspector
            .lock()
            .map(|mut i| i.next_verdict())
            .unwrap_or(Verdict::Clean);
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

/// How often an idle h2 client connection is pinged, and how long a ping may go unanswered
/// (shorter when `idle_timeout` is).
const H2_PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
const H2_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Serves h2 on one client connection. It is closed (GOAWAY, then the open streams finish) when
/// it has carried no request for `idle_timeout`, or when `stop` fires.
async fn serve_h2<S>(front: Arc<Frontend>, io: S, peer: SocketAddr, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle_timeout = front.shared.config.idle_timeout;
    let activity = activity::Activity::new();
    let handler = front.clone();
    let requests = activity.clone();
    let service = service_fn(move |req| {
        let busy = requests.begin();
        // Requests of one h2 connection run at once: they share the pool, not a kept connection.
        let handled = handle(handler.clone(), req, peer, Verdict::Clean, None);
        async move {
            let response = handled.await?;
            Ok::<_, Infallible>(response.map(|body| activity::Tracked::new(body, busy).boxed()))
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
                if activity
                    .idle_deadline(idle_timeout)
                    .is_some_and(|at| at <= tokio::time::Instant::now())
                {
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

/// A client connection whose every received byte is also shown to a [`HeadInspector`].
struct Inspected<S> {
    inner: S,
    inspector: Arc<Mutex<HeadInspector>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Inspected<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result
            && let Ok(mut inspector) = self.inspector.lock()
        {
            inspector.feed(&buf.filled()[before..]);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inspected<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The hostname a request is for: Host header (HTTP/1.1) or authority (h2), without port,
/// lowercased, without a trailing dot.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    let raw = match req.headers().get(header::HOST) {
        Some(value) => value.to_str().ok()?.to_owned(),
        None => req.uri().authority()?.as_str().to_owned(),
    };
    let authority: http::uri::Authority = raw.parse().ok()?;
    let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

async fn handle(
    front: Arc<Frontend>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    verdict: Verdict,
    kept: Option<Arc<upstream::Kept>>,
) -> Result<Response<Body>, Infallible> {
    let bad = |detail: &str| {
        front.shared.metrics.reject(Rejection::BadRequest);
        Ok(pages::page(StatusCode::BAD_REQUEST, detail, true))
    };
    if let Verdict::Ambiguous(reason) = verdict {
        warn!(%peer, reason, "refused an ambiguous request");
        return bad("The request's framing is ambiguous.");
    }
    if req.headers().get_all(header::HOST).iter().count() > 1 {
        warn!(%peer, "refused a request with several Host headers");
        return bad("The request has more than one Host header.");
    }
    if req.method() == http::Method::CONNECT {
        return Ok(pages::page(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported.",
            true,
        ));
    }
    let Some(host) = request_host(&req) else {
        return bad("The request names no valid host.");
    };
    if let Some(target) = &front.config.redirect_https {
        return Ok(redirect_to_https(&front, target, &host, req.uri()));
    }
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut head, body) = req.into_parts();
    head.extensions = http::Extensions::new();
    let presented = head
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let declared = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // Without a body, a request can be sent again as it is.
    let bodyless = body.is_end_stream();
    let replayable = bodyless && !upgrade && head.method.is_idempotent();
    let mut body = Some(body.map_err(Into::into).boxed());
    // Try the hostname's backends in turn until one answers: a tunnel that is just leaving
    // must not fail a request another member of its group can serve. A request moves on to
    // another backend when it never went out, or when it is replayable (idempotent, no
    // body) and its connection was lost before a response came.
    let mut tried = Vec::new();
    let mut last_error = None;
    loop {
        let Some(backend) = front.shared.hosts.pick_untried(&front.name, &host, &tried) else {
            if tried.is_empty() {
                debug!(%peer, %host, "no tunnel for host");
                front.shared.metrics.reject(Rejection::UnknownHost);
                return Ok(pages::unknown_host(&host));
            }
            front.shared.metrics.reject(Rejection::TargetUnreachable);
            return Ok(bad_gateway(
                &host,
                &last_error.unwrap_or(UpstreamError::LinkTimeout),
            ));
        };
        tried.push(backend.id);
        if let Some(auth) = &backend.auth
            && !front.auth.check(auth, presented.as_deref()).await
        {
            return Ok(pages::auth_required());
        }
        if let Some(limit) = backend.max_body
            && declared.is_some_and(|n| n > limit)
        {
            return Ok(too_large(&front.shared.metrics));
        }
        // Only a request without a body is ever retried after its body was taken.
        let client_body = body.take().unwrap_or_else(empty_body);
        let limits = front.shared.current().limits;
        let client = match front.shared.registry.try_open_client(
            &backend.session,
            &front.name,
            &backend.proxy,
            peer,
            &limits,
        ) {
            Ok(client) => client,
            Err(limit) => {
                if front.shared.metrics.reject_at_limit() {
                    warn!(service = %front.name, tunnel_id = %backend.session.id, %peer, %host, %limit, "request refused (logged at most every 10s; counted in tunnelize_rejected_total)");
                }
                return Ok(pages::page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The service is at its limit of concurrent clients; try again shortly.",
                    true,
                ));
            }
        };
        let client_id = client.entry().id;
        // Debug events of the request run in this span; warnings in an info span of the same
        // fields made when there is one to log (see `client_span`).
        let span = debug_span!("client", service = %front.name, tunnel_id = %backend.session.id, client_id, %peer, %host);
        let tunnel_id = backend.session.id;
        let warn_span = || client_span(&front.name, &tunnel_id, client_id, peer, &host);
        let sender = match upstream::acquire(
            &front.shared,
            &backend,
            kept.as_deref(),
            client_id,
            peer,
            upgrade,
        )
        .instrument(span.clone())
        .await
        {
            Ok(sender) => sender,
            Err(e) => {
                warn_span().in_scope(|| warn!(error = %e, "backend unavailable"));
                body = Some(client_body);
                last_error = Some(e);
                continue;
            }
        };
        let attempt = Attempt {
            backend,
            kept: kept.clone(),
            sender,
            head: head.clone(),
            client,
            upgrade,
        };
        let (sent, handoff) = upstream::Handoff::new(client_body);
        match forward(&front, attempt, sent.boxed(), peer, &host)
            .instrument(span.clone())
            .await
        {
            Forwarded::Response(relay) => {
                return Ok(span.in_scope(|| finish(&front, relay, client_upgrade, upgrade)));
            }
            Forwarded::Page(page) => return Ok(page),
            Forwarded::Unsent(e) => {
                body = handoff.reclaim();
                if body.is_none() && !bodyless {
                    // Cannot happen for a request that never went out; fail safe regardless.
                    warn_span().in_scope(|| warn!(error = %e, "bad gateway"));
                    front.shared.metrics.reject(Rejection::TargetUnreachable);
                    return Ok(bad_gateway(&host, &e));
                }
                warn_span()
                    .in_scope(|| warn!(error = %e, "request not sent; trying another backend"));
                last_error = Some(e);
            }
            Forwarded::Lost(e) if replayable && connection_lost(&e) => {
                warn_span().in_scope(|| warn!(error = %e, "connection lost before a response; retrying the idempotent request elsewhere"));
                last_error = Some(e);
            }
            Forwarded::Lost(e) => {
                warn_span().in_scope(|| warn!(error = %e, "bad gateway"));
                front.shared.metrics.reject(Rejection::TargetUnreachable);
                return Ok(bad_gateway(&host, &e));
            }
        }
    }
}

/// The span of a warning about one request. Made only when there is one to log: at info level
/// a subscriber formats every span's fields when the span is made, and a span per request
/// cost about 4% of the hub's CPU through the `http` service.
fn client_span(
    service: &str,
    tunnel_id: &uuid::Uuid,
    client_id: u64,
    peer: SocketAddr,
    host: &str,
) -> tracing::Span {
    info_span!("client", service = %service, tunnel_id = %tunnel_id, client_id, %peer, %host)
}

fn empty_body() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// The 413 page, counted as a bad request.
fn too_large(metrics: &HubMetrics) -> Response<Body> {
    metrics.reject(Rejection::BadRequest);
    pages::page(
        StatusCode::PAYLOAD_TOO_LARGE,
        "The request body is too large.",
        true,
    )
}

/// Whether a send failed because the connection to the target went away (not because the
/// target answered badly or the client's body failed), so a replayable request may go to
/// another backend.
fn connection_lost(e: &UpstreamError) -> bool {
    match e {
        UpstreamError::Link(_) | UpstreamError::LinkTimeout | UpstreamError::Gone => true,
        UpstreamError::Refused(_) => false,
        UpstreamError::Http(e) => !(e.is_parse() || e.is_user() || e.is_timeout()),
    }
}

/// Whether the request body went over the proxy's `max_body` (the [`Limited`] in
/// [`upstream_request`] ended it).
fn body_limit_hit(e: &UpstreamError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

fn bad_gateway(host: &str, e: &UpstreamError) -> Response<Body> {
    let detail = match e {
        UpstreamError::Refused(_)
        | UpstreamError::LinkTimeout
        | UpstreamError::Link(_)
        | UpstreamError::Gone => {
            format!(
                "The tunnel for <code>{}</code> could not reach its service.",
                pages::escape(host)
            )
        }
        UpstreamError::Http(_) => {
            format!(
                "The service behind <code>{}</code> sent no valid response.",
                pages::escape(host)
            )
        }
    };
    pages::page(StatusCode::BAD_GATEWAY, &detail, false)
}

/// One try at a request on one backend.
struct Attempt {
    backend: Arc<routes::Backend>,
    /// The client connection's kept upstream connection (HTTP/1.1 clients).
    kept: Option<Arc<upstream::Kept>>,
    sender: hyper::client::conn::http1::SendRequest<Body>,
    /// The client's request head, as received.
    head: http::request::Parts,
    client: ClientGuard,
    upgrade: bool,
}

/// What came of an [`Attempt`].
enum Forwarded {
    /// The target's response head arrived; the response is ready to relay.
    Response(Relay),
    /// The hub answers the client itself (400, 413, 504).
    Page(Response<Body>),
    /// The request never went out; its body can be reclaimed.
    Unsent(UpstreamError),
    /// The request went out and no response head came back.
    Lost(UpstreamError),
}

/// A target's response with what relaying it needs.
struct Relay {
    response: Response<Incoming>,
    meter: crate::mux::Meter,
    client: Arc<ClientGuard>,
}

async fn forward(
    front: &Frontend,
    attempt: Attempt,
    body: Body,
    peer: SocketAddr,
    host: &str,
) -> Forwarded {
    let Attempt {
        backend,
        kept,
        sender,
        head,
        client,
        upgrade,
    } = attempt;
    let client_id = client.entry().id;
    let meter = front.shared.registry.meter(&client, &backend.session);
    let client = Arc::new(client);
    let upstream_req = match upstream_request(
        front,
        Request::from_parts(head, body),
        peer,
        host,
        &backend,
        upgrade,
    ) {
        Ok(r) => r,
        Err(detail) => {
            front.shared.metrics.reject(Rejection::BadRequest);
            return Forwarded::Page(pages::page(StatusCode::BAD_REQUEST, &detail, true));
        }
    };
    let upstream_req = upstream_req
        .map(|body| Metered::new(body, meter.clone(), Direction::In, client.clone()).boxed());
    let sent = upstream::send(
        &front.shared,
        &backend,
        kept.as_deref(),
        sender,
        upstream_req,
        client_id,
        peer,
        upgrade,
    );
    match tokio::time::timeout(front.config.response_timeout, sent).await {
        Ok(Ok(response)) => Forwarded::Response(Relay {
            response,
            meter,
            client,
        }),
        Ok(Err(upstream::SendError::Unsent(e))) => Forwarded::Unsent(e),
        Ok(Err(upstream::SendError::Failed(e))) if body_limit_hit(&e) => {
            // The target has not answered, so the client can still be told why.
            client_span(&front.name, &backend.session.id, client_id, peer, host)
                .in_scope(|| warn!(limit = backend.max_body, "request body over max_body"));
            Forwarded::Page(too_large(&front.shared.metrics))
        }
        Ok(Err(upstream::SendError::Failed(e))) => Forwarded::Lost(e),
        Err(_) => {
            client_span(&front.name, &backend.session.id, client_id, peer, host)
                .in_scope(|| warn!(timeout = ?front.config.response_timeout, "gateway timeout"));
            front.shared.metrics.reject(Rejection::TargetUnreachable);
            let detail = format!(
                "The service behind <code>{}</code> did not answer in time.",
                pages::escape(host)
            );
            Forwarded::Page(pages::page(StatusCode::GATEWAY_TIMEOUT, &detail, false))
        }
    }
}

/// Relays a target's response to the client: the upgraded connection, or the response with
/// its body metered.
fn finish(
    front: &Frontend,
    relay: Relay,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    upgrade: bool,
) -> Response<Body> {
    let Relay {
        mut response,
        meter,
        client,
    } = relay;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let listed = client.clone();
        front.shared.tasks.spawn(
            async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        tokio::select! {
                            copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match copied {
                                Ok((up, down)) => {
                                    meter.add_in(up as usize);
                                    meter.add_out(down as usize);
                                    debug!(up, down, "upgraded connection closed");
                                }
                                Err(e) => debug!(error = %e, "upgraded connection ended with an error"),
                            },
                            () = listed.cancelled() => debug!("upgraded connection disconnected by the hub"),
                        }
                    }
                    Err(e) => debug!(error = %e, "upgrade failed"),
                }
            }
            .in_current_span(),
        );
        let (parts, body) = response.into_parts();
        return Response::from_parts(parts, body.map_err(Into::into).boxed());
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if upgrade {
        // The upgrade was refused: whatever the client sends next was not inspected as HTTP.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let body = Metered::new(
        body.map_err(Into::into).boxed(),
        meter,
        Direction::Out,
        client,
    );
    Response::from_parts(parts, body.boxed())
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, including any the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The request as sent to the target: origin-form URI, HTTP/1.1, hop-by-hop headers removed,
/// forwarding headers set, the credentials the hub checked removed, body limited if the proxy
/// says so.
fn upstream_request(
    front: &Frontend,
    req: Request<Body>,
    peer: SocketAddr,
    host: &str,
    backend: &routes::Backend,
    upgrade: bool,
) -> Result<Request<Body>, String> {
    let (mut parts, body) = req.into_parts();
    if backend.auth.is_some() {
        // The hub checked these credentials; they are not the target's to see.
        parts.headers.remove(header::AUTHORIZATION);
    }
    let original_host = parts
        .headers
        .get(header::HOST)
        .cloned()
        .or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        })
        .ok_or("The request names no host.")?;
    let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    if upgrade && let Some(value) = upgrade_value {
        parts.headers.insert(header::UPGRADE, value);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    parts.headers.insert(header::HOST, original_host.clone());
    set_forwarded(front, &mut parts.headers, peer, &original_host);
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = path
        .parse::<Uri>()
        .map_err(|_| format!("bad request target for {host}"))?;
    parts.version = Version::HTTP_11;
    let body = match backend.max_body {
        Some(limit) => Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).boxed(),
        None => body,
    };
    Ok(Request::from_parts(parts, body))
}

/// Sets `X-Forwarded-For/-Proto/-Host`: replaced, unless the direct peer is a trusted proxy,
/// in which case its values are kept and the peer is appended to `X-Forwarded-For`.
fn set_forwarded(front: &Frontend, headers: &mut HeaderMap, peer: SocketAddr, host: &HeaderValue) {
    const XFF: &str = "x-forwarded-for";
    const XFP: &str = "x-forwarded-proto";
    const XFH: &str = "x-forwarded-host";
    let ip = peer.ip().to_canonical();
    let trusted = front
        .config
        .trusted_proxies
        .iter()
        .any(|net| net.contains(&ip));
    let proto = if front.tls { "https" } else { "http" };
    let prior: Vec<String> = headers
        .get_all(XFF)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    let xff = if trusted && !prior.is_empty() {
        format!("{}, {ip}", prior.join(", "))
    } else {
        ip.to_string()
    };
    if let Ok(value) = HeaderValue::from_str(&xff) {
        headers.insert(XFF, value);
    }
    if !(trusted && headers.contains_key(XFP)) {
        headers.insert(XFP, HeaderValue::from_static(proto));
    }
    if !(trusted && headers.contains_key(XFH)) {
        headers.insert(XFH, host.clone());
    }
}

fn redirect_to_https(front: &Frontend, target: &str, host: &str, uri: &Uri) -> Response<Body> {
    let port = front
        .shared
        .service_addrs
        .get(target)
        .map(|a| a.port())
        .unwrap_or(443);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    pages::redirect(&location)
}
