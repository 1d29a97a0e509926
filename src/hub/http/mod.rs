//! `http` and `https` services: the hub as a reverse proxy, routing every request by its Host.
//!
//! The work runs as a tree of tasks:
//!
//! - **accept loop** ([`serve()`], one task per service, on a listener bound at start):
//!   accepts clients and spawns a task for each.
//! - **per-connection task** (`serve::serve_connection`, then [`connection`]): the client's
//!   idle deadline ([`crate::hub::idle`]); for `https`, the TLS handshake
//!   with a certificate chosen by SNI ([`sni`]) and ALPN's choice of h2 or http/1.1; then
//!   hyper's server on the connection. HTTP/1.1 bytes are also read by a strict second parser
//!   ([`framing`]) that flags ambiguous framing; an h2 connection is closed once no request
//!   has been in flight for `idle_timeout` ([`activity`]).
//! - **per-request handling**, inside the connection's task (hyper polls each request's
//!   future; no task per request): [`request`] validates it (400 ambiguous framing or several
//!   Host headers, 405 CONNECT, the redirect to https) and reads the first chunk of a chunked
//!   body ahead (400 for a chunk size that does not decode), [`route`] picks a backend of its
//!   hostname ([`routes`]) and admits the client (401 basic auth ([`auth`]), 413 declared body
//!   too large, 503 at the client limit), and [`forward`] sends it and retries: a request that
//!   never went out, or an idempotent one without a body whose connection was lost before a
//!   response head, moves on to another backend of the hostname's group.
//! - **upstream link streams** ([`upstream`]): each upstream connection is HTTP/1.1 over one
//!   link stream, driven by a task of its own; an idle one is parked in its backend's pool by
//!   a task that ends when it is taken again. An HTTP/1.1 client keeps the upstream connection
//!   it used last for its next request ([`upstream::Kept`]).
//! - **upgraded connections** ([`relay`]): a `101 Switching Protocols` (WebSocket) spawns a
//!   task that splices the client and the target until either closes.
//!
//! Hostnames join the routes when a tunnel's proxy registers ([`expose()`], from the tunnel's
//! control session), not on the request path.
//!
//! On the way the hub replaces `X-Forwarded-For/-Proto/-Host` (extends them for trusted
//! proxies), strips hop-by-hop headers and the credentials it checked ([`headers`]), streams
//! and meters bodies both ways ([`body`], [`metered`]), and answers itself with small pages
//! ([`pages`]): 404 unknown host, 502 unreachable target, 504 silent target, 413 body too
//! large while streaming before the target answered, 400 a later chunk that does not decode
//! before the target answered, 431 head too large (hyper). No span is
//! made per request at info level: a warning makes its own span when it logs.

mod activity;
mod ahead;
pub mod auth;
pub(crate) mod body;
mod connection;
mod expose;
mod forward;
pub mod framing;
mod gate;
mod headers;
pub(crate) mod metered;
pub(crate) mod pages;
mod relay;
mod request;
mod route;
pub(crate) mod routes;
mod serve;
pub(crate) mod sni;
pub(crate) mod upstream;

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use super::Shared;
use crate::config::HttpService;

pub(crate) use self::expose::{expose, outside_domain, random_hostname};
pub(crate) use self::serve::serve;

/// One http/https service, as its request handlers see it.
pub(crate) struct Frontend {
    shared: Arc<Shared>,
    name: String,
    config: HttpService,
    tls: bool,
    auth: auth::AuthCache,
}

/// The TLS acceptor of an https service (`None` for http), replaceable by a reload.
pub(crate) type SharedAcceptor = Arc<parking_lot::RwLock<Option<TlsAcceptor>>>;
