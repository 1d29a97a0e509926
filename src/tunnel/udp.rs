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

use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use tokio::net::UdpSocket;
use tracing::{debug, warn};

use crate::mux;
use crate::protocol::{
    DATAGRAM_HEADER_LEN, DatagramDecoder, LinkRefusal, MAX_DATAGRAM_LEN, datagram_header,
};

/// Receive buffer of a session socket: room for the frame header, then more than the largest
/// UDP payload, so an oversized datagram is seen whole and refused.
const RECV_BUFFER: usize = DATAGRAM_HEADER_LEN + 64 * 1024;
const _: () = assert!(RECV_BUFFER - DATAGRAM_HEADER_LEN > 65_527);

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
            let refusal = LinkRefusal {
                reason: format!("cannot reach udp target {target}: {e}"),
            };
            let _ = respond.send_response(refusal.to_response(), true);
            return;
        }
        Err(_) => {
            warn!(%target, "udp target not resolved within {connect_timeout:?}; session refused");
            let refusal = LinkRefusal {
                reason: format!("udp target {target} could not be resolved in time"),
            };
            let _ = respond.send_response(refusal.to_response(), true);
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
    let mut buf = vec![0u8; RECV_BUFFER].into_boxed_slice();
    loop {
        let len = match socket.recv(&mut buf[DATAGRAM_HEADER_LEN..]).await {
            Ok(len) => len,
            // An ICMP "port unreachable" for an earlier datagram: the target is not listening
            // (yet). UDP carries on; so does the session.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                debug!("the udp target refused a datagram");
                continue;
            }
            Err(e) => return Err(e),
        };
        let Ok(header) = datagram_header(len) else {
            debug!(
                len,
                "dropping a datagram larger than {MAX_DATAGRAM_LEN} bytes"
            );
            continue;
        };
        buf[..DATAGRAM_HEADER_LEN].copy_from_slice(&header);
        let mut frame = Bytes::copy_from_slice(&buf[..DATAGRAM_HEADER_LEN + len]);
        while !frame.is_empty() {
            send.reserve_capacity(frame.len());
            let granted = poll_fn(|cx| mux::poll_send_capacity(send, cx)).await?;
            let chunk = frame.split_to(granted.min(frame.len()));
            send.send_data(chunk, false).map_err(mux::h2_to_io)?;
        }
    }
}

/// Sends the datagrams of the stream's body to the target. Returns when the body ends.
async fn stream_to_socket(mut body: RecvStream, socket: &UdpSocket) -> io::Result<()> {
    let mut decoder = DatagramDecoder::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(mux::h2_to_io)?;
        let len = chunk.len();
        decoder.push(chunk);
        while let Some(datagram) = decoder
            .next_datagram()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            if let Err(e) = socket.send(&datagram).await {
                // One lost datagram (target not listening, buffer full): UDP semantics.
                debug!(error = %e, len = datagram.len(), "a datagram did not reach the target");
            }
        }
        body.flow_control()
            .release_capacity(len)
            .map_err(mux::h2_to_io)?;
    }
    Ok(())
}
