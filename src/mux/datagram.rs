//! The receiving half of the datagram pump of `udp` proxies, for both sides: the datagrams of a
//! link stream's body, one at a time. (The sending half is a datagram framed by
//! [`DatagramBuffer`](crate::protocol::DatagramBuffer) handed to [`send_bytes`](super::send_bytes).)
//!
//! [`DatagramReader`] splits the body with a [`DatagramDecoder`] and gives a chunk's
//! flow-control window back only once the caller has taken every datagram in it and asks for
//! more, so a socket that stalls slows the sender instead of filling memory. It copies nothing
//! when a datagram lies inside one DATA chunk. It owns no socket, timeout or session end: the
//! hub's and the tunnel's udp modules do.

use std::io;

use bytes::Bytes;
use h2::RecvStream;

use super::h2_to_io;
use crate::protocol::DatagramDecoder;

/// The datagrams of a UDP link stream's body, in order.
pub struct DatagramReader {
    body: RecvStream,
    decoder: DatagramDecoder,
    /// Bytes of the chunk being split, whose window goes back once it is used up.
    unreleased: usize,
}

impl DatagramReader {
    /// Reads the datagrams of `body`.
    pub fn new(body: RecvStream) -> Self {
        Self {
            body,
            decoder: DatagramDecoder::new(),
            unreleased: 0,
        }
    }

    /// The next datagram, or `None` once the body ended. A malformed frame is `InvalidData`
    /// (the stream is unusable then). Waits on the peer: callers bound it by the session's own
    /// end (idle timeout, reset, cancellation).
    pub async fn next(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if let Some(datagram) = self
                .decoder
                .next_datagram()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            {
                return Ok(Some(datagram));
            }
            // Every datagram of the chunk was taken (and sent on): its window may go back.
            if self.unreleased > 0 {
                let len = std::mem::take(&mut self.unreleased);
                self.body
                    .flow_control()
                    .release_capacity(len)
                    .map_err(h2_to_io)?;
            }
            let Some(chunk) = self.body.data().await else {
                return Ok(None);
            };
            let chunk = chunk.map_err(h2_to_io)?;
            self.unreleased = chunk.len();
            self.decoder.push(chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::BytesMut;
    use h2::SendStream;

    use super::*;
    use crate::mux::{hub_builder, send_bytes, tunnel_builder};
    use crate::protocol::{DatagramBuffer, MAX_DATAGRAM_LEN, encode_datagram};

    /// Bounds every wait of these tests; none should come near it.
    const DEADLINE: Duration = Duration::from_secs(10);

    /// One link stream over an in-memory HTTP/2 link: the hub's send half, the tunnel's body.
    async fn stream() -> (SendStream<Bytes>, RecvStream) {
        let (hub_io, tunnel_io) = tokio::io::duplex(1 << 20);
        let tunnel = tokio::spawn(async move {
            let mut connection = tunnel_builder()
                .handshake::<_, Bytes>(tunnel_io)
                .await
                .unwrap();
            let (request, _respond) = connection.accept().await.unwrap().unwrap();
            tokio::spawn(async move { while connection.accept().await.is_some() {} });
            request.into_body()
        });
        let (mut send_request, connection) =
            hub_builder().handshake::<_, Bytes>(hub_io).await.unwrap();
        tokio::spawn(connection);
        let request = http::Request::post("/").body(()).unwrap();
        let (_response, send) = send_request.send_request(request, false).unwrap();
        (send, tunnel.await.unwrap())
    }

    #[tokio::test]
    async fn datagrams_framed_on_one_side_come_out_whole_and_in_order_on_the_other() {
        let (mut send, body) = stream().await;
        let datagrams: Vec<Vec<u8>> = vec![
            b"query".to_vec(),
            Vec::new(),
            vec![0x5a; MAX_DATAGRAM_LEN],
            b"last".to_vec(),
        ];
        let mut buffer = DatagramBuffer::new();
        for datagram in &datagrams {
            buffer.payload()[..datagram.len()].copy_from_slice(datagram);
            let frame = buffer.frame(datagram.len()).unwrap();
            send_bytes(&mut send, frame).await.unwrap();
        }
        send.send_data(Bytes::new(), true).unwrap();
        let mut reader = DatagramReader::new(body);
        let mut got = Vec::new();
        while let Some(datagram) = tokio::time::timeout(DEADLINE, reader.next())
            .await
            .unwrap()
            .unwrap()
        {
            got.push(datagram.to_vec());
        }
        assert_eq!(got, datagrams);
    }

    #[tokio::test]
    async fn a_frame_announcing_too_much_ends_the_reader_with_invalid_data() {
        let (mut send, body) = stream().await;
        let mut wire = BytesMut::new();
        encode_datagram(b"fine", &mut wire).unwrap();
        wire.extend_from_slice(&[0xff, 0xff, 1, 2, 3]);
        send.send_data(wire.freeze(), true).unwrap();
        let mut reader = DatagramReader::new(body);
        let first = tokio::time::timeout(DEADLINE, reader.next()).await.unwrap();
        assert_eq!(first.unwrap(), Some(Bytes::from_static(b"fine")));
        let second = tokio::time::timeout(DEADLINE, reader.next()).await.unwrap();
        assert_eq!(second.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
