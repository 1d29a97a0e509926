//! The tunnel side of `udp` proxies: each link stream is one public client's session, relayed to
//! the target through a socket of its own.
//!
//! For every UDP link stream the tunnel binds an ephemeral port of the target's address family
//! and connects it to the target, so the target sees one source address per public client and
//! its replies can only go back to that client's stream. Datagrams cross the stream framed
//! ([`crate::protocol::DatagramDecoder`]); nothing is merged or truncated. The session ends when
//! the hub ends or resets the stream (the hub owns the idle timeout, as it does for `tcp`
//! clients; a dead hub drops the whole link connection) or when the socket fails. This module
//! never answers a datagram itself.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use tokio::net::UdpSocket;
use tracing::{debug, warn};

use super::forward::refuse;
use crate::mux::{self, DatagramReader};
use crate::protocol::{DatagramBuffer, LinkRefusal, MAX_DATAGRAM_LEN};

/// Serves one UDP link stream: connects a socket to `target`, answers 200 (or 502 with the
/// reason), then relays datagrams until the stream or the socket ends. Runs inside the
/// stream's span (proxy, tunnel id, client id).
pub(super) async fn serve_stream(
    body: RecvStream,
    mut respond: SendResponse<Bytes>,
    target: &str,
    connect_timeout: Duration,
) {
    let socket = match tokio::time::timeout(connect_timeout, connect(target)).await {
        Ok(Ok(socket)) => socket,
        Ok(Err(e)) => {
            warn!(%target, error = %e, "cannot reach the udp target; session refused");
            refuse(
                &mut respond,
                format!("cannot reach udp target {target}: {e}"),
            );
            return;
        }
        Err(_) => {
            warn!(%target, "udp target not resolved within {connect_timeout:?}; session refused");
            refuse(
                &mut respond,
                format!("udp target {target} could not be resolved in time"),
            );
            return;
        }
    };
    let mut send = match respond.send_response(LinkRefusal::accepted_response(), false) {
        Ok(send) => send,
        Err(e) => {
            debug!(error = %e, "client session ended before it started");
            return;
        }
    };
    debug!(%target, local = ?socket.local_addr().ok(), "relaying udp session");
    let result = tokio::select! {
        r = socket_to_stream(&socket, &mut send) => r,
        r = stream_to_socket(body, &socket) => r,
    };
    // Either way the session is over; a reset tells the hub at once.
    send.send_reset(h2::Reason::CANCEL);
    match result {
        Ok(()) => debug!("udp session ended"),
        Err(e) => debug!(error = %e, "udp session ended with an error"),
    }
}

/// A socket on an ephemeral port of the target's address family, connected to the target.
async fn connect(target: &str) -> io::Result<UdpSocket> {
    let addr = tokio::net::lookup_host(target)
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the name has no address"))?;
    let any = match addr {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
    socket.connect(addr).await?;
    Ok(socket)
}

/// Frames every datagram the target sends and puts it on the stream.
async fn socket_to_stream(socket: &UdpSocket, send: &mut SendStream<Bytes>) -> io::Result<()> {
    let mut buffer = DatagramBuffer::new();
    loop {
        let len = match socket.recv(buffer.payload()).await {
            Ok(len) => len,
            // An ICMP "port unreachable" for an earlier datagram: the target is not listening
            // (yet). UDP carries on; so does the session.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                debug!("the udp target refused a datagram");
                continue;
            }
            Err(e) => return Err(e),
        };
        let Ok(frame) = buffer.frame(len) else {
            debug!(
                len,
                "dropping a datagram larger than {MAX_DATAGRAM_LEN} bytes"
            );
            continue;
        };
        mux::send_bytes(send, frame).await?;
    }
}

/// Sends the datagrams of the stream's body to the target. Returns when the body ends.
async fn stream_to_socket(body: RecvStream, socket: &UdpSocket) -> io::Result<()> {
    let mut datagrams = DatagramReader::new(body);
    while let Some(datagram) = datagrams.next().await? {
        if let Err(e) = socket.send(&datagram).await {
            // One lost datagram (target not listening, buffer full): UDP semantics.
            debug!(error = %e, len = datagram.len(), "a datagram did not reach the target");
        }
    }
    Ok(())
}
