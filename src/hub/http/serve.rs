//! The accept loop of one http/https service and the start of each client connection: the
//! idle deadline on the socket, the TLS handshake (https), and the choice of h2 or HTTP/1.1
//! by ALPN. What happens on the connection after that is [`super::connection`]'s.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::connection::{serve_h2, serve_http1};
use super::{Frontend, SharedAcceptor, auth};
use crate::config::HttpService;
use crate::hub::Shared;
use crate::hub::idle::IdleIo;
use crate::hub::per_address::AddressSlot;

/// Serves one http/https service on `listener` until `shutdown`.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    name: String,
    config: HttpService,
    listener: TcpListener,
    acceptor: SharedAcceptor,
    shutdown: CancellationToken,
) {
    let tls = acceptor.read().is_some();
    let front = Arc::new(Frontend {
        shared: shared.clone(),
        name: name.clone(),
        tls,
        config,
        auth: auth::AuthCache::default(),
    });
    let span = info_span!("service", service = %name);
    accept_loop(front, listener, acceptor, shutdown)
        .instrument(span)
        .await;
}

/// Accepts clients until `shutdown`, each served by a task of its own.
async fn accept_loop(
    front: Arc<Frontend>,
    listener: TcpListener,
    acceptor: SharedAcceptor,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        let scheme = if front.tls { "https" } else { "http" };
        info!(listen = %addr, tls = front.tls, "serving {scheme} on {addr}");
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = front.shared.accept_client(&listener, "http service") => match accepted {
                Ok((socket, peer, place)) => {
                    // The certificates in force now (a reload may have renewed them).
                    let acceptor = acceptor.read().clone();
                    // Held by the connection's task, and by an upgraded connection's splice
                    // for as long as that lives.
                    let place = Arc::new(place);
                    let serve = serve_connection(front.clone(), socket, peer, acceptor, shutdown.clone(), place);
                    front.shared.tasks.spawn(serve.instrument(info_span!("connection", %peer)));
                }
                Err(e) => {
                    warn!(error = %e, "accepting an http client failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// One client connection, from accept to close.
async fn serve_connection(
    front: Arc<Frontend>,
    socket: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    stop: CancellationToken,
    place: Arc<AddressSlot>,
) {
    crate::mux::tune_socket(&socket);
    // Every wait on the client (body, keep-alive, upgraded bytes) ends after idle_timeout.
    let socket = IdleIo::new(socket, front.shared.config.idle_timeout);
    match acceptor {
        None => serve_http1(front, socket, peer, stop, place).await,
        // Boxed: a plain connection's task holds none of the TLS and h2 state.
        Some(acceptor) => Box::pin(serve_tls(front, socket, peer, acceptor, stop, place)).await,
    }
}

/// An https client connection: the TLS handshake, then h2 or HTTP/1.1 by ALPN.
async fn serve_tls(
    front: Arc<Frontend>,
    socket: IdleIo<TcpStream>,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    stop: CancellationToken,
    place: Arc<AddressSlot>,
) {
    let limit = front.config.header_timeout;
    let tls = match tokio::time::timeout(limit, acceptor.accept(socket)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return debug!(error = %e, "TLS handshake failed"),
        Err(_) => return debug!("TLS handshake timed out"),
    };
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        // No upgrades in h2: the connection's task holds its place.
        serve_h2(front, tls, peer, stop).await;
        drop(place);
    } else {
        serve_http1(front, tls, peer, stop, place).await;
    }
}
