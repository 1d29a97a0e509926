//! Link multiplexing: HTTP/2 settings for link connections and the byte pump that joins a TCP
//! socket to a link stream.
//!
//! Every public client is one HTTP/2 stream on a link connection; the hub opens it, the tunnel
//! answers. [`splice`] copies bytes both ways until both sides have finished, honouring
//! half-close (an ended request body is a write shutdown on the far socket, and the other way
//! round) and applying backpressure through HTTP/2 flow control: a peer that stops reading stops
//! its stream's window from being released, which stops the sender. See docs/protocol.md for why
//! HTTP/2 (the `h2` crate) and for the measurements behind the window sizes.

mod datagram;
mod stream;

pub use datagram::DatagramReader;
pub use stream::LinkStream;

use std::future::poll_fn;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

/// Per-stream flow-control window: the most a stream has in flight or held unread, so what a
/// client or target that does not read costs each daemon (issue 26, docs/protocol.md). 4 MiB
/// let four stalled readers take a link's 16 MiB connection window and stall every other
/// client of the tunnel. The cost: one stream moves at most 256 KiB per round trip (20 ms:
/// about 100 Mbit/s), and on loopback it measured a fifth to a third slower.
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// Per-connection flow-control window: larger than every stream's window together
/// ([`MAX_STREAMS_PER_LINK`] x [`STREAM_WINDOW`] is 4 GiB; 1 GiB is 4,096 stalled streams), so
/// streams that do not read never take the window the others need. Memory is bounded per
/// stream by [`STREAM_WINDOW`], not by this.
pub const CONNECTION_WINDOW: u32 = 1024 * 1024 * 1024;
/// Largest HTTP/2 frame either side accepts. h2 flushes the connection after every DATA frame,
/// so each frame is a write to the socket: 64 KiB frames (a whole socket read) cut those writes
/// by four against 16 KiB and measured 15-30% less CPU per GiB (docs/benchmarks.md).
pub const MAX_FRAME_SIZE: u32 = 64 * 1024;
/// How much a stream may queue for sending before it waits for the connection to drain
/// (h2's default; larger measured no faster).
pub const MAX_SEND_BUFFER: usize = 400 * 1024;
/// Streams one link connection may carry at once.
pub const MAX_STREAMS_PER_LINK: u32 = 16 * 1024;
/// Bytes read from a socket at a time.
const CHUNK: usize = 64 * 1024;

/// Most unsent bytes a socket's kernel send queue holds (`TCP_NOTSENT_LOWAT`). Without it the
/// kernel grows a send buffer to 4 MiB of bytes not even sent yet for a peer that reads slowly
/// (a client, a target, or a link in front of HTTP/2's scheduling); with it, writes wait here,
/// where flow control holds them back, and a slow peer costs the kernel little more than what
/// is in flight to it. Two of the daemons' 64 KiB reads: fast peers keep full speed.
pub const NOTSENT_LOWAT: u32 = 128 * 1024;

/// Sets up a TCP socket the daemons move bytes on: no Nagle delay, and at most
/// [`NOTSENT_LOWAT`] unsent bytes queued in the kernel. Best effort: a socket the kernel will
/// not tune still works.
pub fn tune_socket(socket: &TcpStream) {
    let _ = socket.set_nodelay(true);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let _ = socket2::SockRef::from(socket).set_tcp_notsent_lowat(NOTSENT_LOWAT);
    }
}

/// HTTP/2 client settings for the hub side of a link connection.
pub fn hub_builder() -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_reset_streams(1024)
        .enable_push(false);
    b
}

/// HTTP/2 server settings for the tunnel side of a link connection.
pub fn tunnel_builder() -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(MAX_STREAMS_PER_LINK)
        .max_concurrent_reset_streams(1024);
    b
}

/// Bytes moved by [`splice`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// From the socket into the stream.
    pub sent: u64,
    /// From the stream out to the socket.
    pub received: u64,
}

/// Live byte counts of one thing (a client, a tunnel, a service), updated as bytes move.
/// "In" is toward the tunnel's target, "out" toward the public client.
#[derive(Debug, Default)]
pub struct ByteCounters {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl ByteCounters {
    /// Bytes that went toward the target so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// Bytes that went toward the client so far.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }
}

/// The counters one connection's bytes are added to (its client's, its tunnel's, its
/// service's). Empty for connections nobody reports on.
#[derive(Debug, Clone, Default)]
pub struct Meter(Vec<Arc<ByteCounters>>);

impl Meter {
    /// A meter adding to each of `counters`.
    pub fn new(counters: Vec<Arc<ByteCounters>>) -> Self {
        Meter(counters)
    }

    /// Counts `n` bytes toward the target.
    pub fn add_in(&self, n: usize) {
        for c in &self.0 {
            c.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Counts `n` bytes toward the client.
    pub fn add_out(&self, n: usize) {
        for c in &self.0 {
            c.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Copies bytes between `socket` and a link stream until both directions have ended.
///
/// Returns when the socket's reader hit end-of-file and the stream's body ended; an error on
/// either side resets the stream and drops the socket. With `idle` set, a connection that moves
/// no byte in either direction for that long is closed the same way, and so is one whose peer
/// takes no byte written to it for that long (even while it sends). Bytes read from the socket
/// count as "in" on `meter`, bytes written to it as "out".
pub async fn splice(
    socket: TcpStream,
    send: SendStream<Bytes>,
    recv: RecvStream,
    idle: Option<Duration>,
    meter: &Meter,
) -> io::Result<Traffic> {
    splice_early(socket, send, async { Ok(recv) }, idle, meter).await
}

/// [`splice`] for a stream whose answer has not come yet: bytes from the socket start going
/// out at once, ahead of the answer, and the other direction starts once `recv` resolves. The
/// hub sends a client's first bytes with the stream open this way rather than a round trip to
/// the tunnel later. An error from `recv` (the tunnel refused, or did not answer in time) ends
/// the splice like any other: the stream is reset and the socket dropped. What the far side
/// must hold meanwhile is bounded by the stream's flow-control window.
pub async fn splice_early(
    socket: TcpStream,
    mut send: SendStream<Bytes>,
    recv: impl Future<Output = io::Result<RecvStream>>,
    idle: Option<Duration>,
    meter: &Meter,
) -> io::Result<Traffic> {
    let (reader, writer) = socket.into_split();
    let activity = Activity::new();
    let transfer = async {
        let mut up = pin!(socket_to_stream(reader, &mut send, &activity, meter));
        let mut recv = pin!(recv);
        // Until the answer, only the socket's bytes move. The answer is looked at first and
        // always awaited, so what it says (a refusal the caller logs) is not lost to a socket
        // error that raced it, such as the reset a refusing tunnel sends after its answer.
        let (recv, sent) = tokio::select! {
            biased;
            answer = &mut recv => (answer?, None),
            up_done = &mut up => {
                let answer = recv.await;
                let sent = up_done?;
                (answer?, Some(sent))
            }
        };
        match sent {
            Some(sent) => Ok((
                sent,
                stream_to_socket(recv, writer, &activity, idle, meter).await?,
            )),
            None => tokio::try_join!(up, stream_to_socket(recv, writer, &activity, idle, meter)),
        }
    };
    let result = match idle {
        Some(limit) => tokio::select! {
            r = transfer => r,
            e = activity.expired(limit) => Err(e),
        },
        None => transfer.await,
    };
    match result {
        Ok((sent, received)) => Ok(Traffic { sent, received }),
        Err(e) => {
            send.send_reset(h2::Reason::CANCEL);
            Err(e)
        }
    }
}

/// When a spliced connection last moved a byte, shared by its two directions.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `limit`.
    async fn expired(&self, limit: Duration) -> io::Error {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return io::Error::new(io::ErrorKind::TimedOut, format!("idle for {limit:?}"));
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

async fn socket_to_stream(
    reader: OwnedReadHalf,
    send: &mut SendStream<Bytes>,
    activity: &Activity,
    meter: &Meter,
) -> io::Result<u64> {
    let mut buf = BytesMut::new();
    let mut total = 0u64;
    loop {
        reader.readable().await?;
        if buf.capacity() < CHUNK / 4 {
            buf.reserve(CHUNK);
        }
        match reader.try_read_buf(&mut buf) {
            Ok(0) => {
                send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
                return Ok(total);
            }
            Ok(n) => {
                total += n as u64;
                activity.touch();
                meter.add_in(n);
                send_all(send, &mut buf).await?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // About to wait for the peer: hold no buffer while idle.
                if buf.is_empty() {
                    buf = BytesMut::new();
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sends everything in `buf`, waiting for flow-control capacity as needed; `buf` keeps its
/// spare capacity for the next read.
async fn send_all(send: &mut SendStream<Bytes>, buf: &mut BytesMut) -> io::Result<()> {
    send_bytes(send, buf.split().freeze()).await
}

/// Sends `data` (bytes read from a socket, or a framed datagram) into the stream, in as many
/// DATA frames as flow control allows, waiting for capacity as needed. Reserves only what it
/// has to send, so an idle stream never holds a share of the connection window.
pub(crate) async fn send_bytes(send: &mut SendStream<Bytes>, mut data: Bytes) -> io::Result<()> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = poll_fn(|cx| poll_send_capacity(send, cx)).await?;
        let chunk = data.split_to(granted.min(data.len()));
        send.send_data(chunk, false).map_err(h2_to_io)?;
    }
    Ok(())
}

/// Waits until the stream has send capacity (after `reserve_capacity`). `poll_capacity` only
/// reports increases, so capacity already assigned is checked first.
pub(crate) fn poll_send_capacity(
    send: &mut SendStream<Bytes>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<io::Result<usize>> {
    use std::task::Poll;
    loop {
        let available = send.capacity();
        if available > 0 {
            return Poll::Ready(Ok(available));
        }
        match std::task::ready!(send.poll_capacity(cx)) {
            Some(Ok(0)) => continue,
            Some(Ok(n)) => return Poll::Ready(Ok(n)),
            Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
            None => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "link stream closed",
                )));
            }
        }
    }
}

async fn stream_to_socket(
    mut recv: RecvStream,
    mut writer: OwnedWriteHalf,
    activity: &Activity,
    idle: Option<Duration>,
    meter: &Meter,
) -> io::Result<u64> {
    let mut total = 0u64;
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.map_err(h2_to_io)?;
        write_within(&writer, &chunk, idle).await?;
        activity.touch();
        meter.add_out(chunk.len());
        total += chunk.len() as u64;
        // Release the window only once the bytes are out: a slow reader slows the sender.
        recv.flow_control()
            .release_capacity(chunk.len())
            .map_err(h2_to_io)?;
    }
    writer.shutdown().await?;
    Ok(total)
}

/// Writes all of `data` to `writer`, failing with [`io::ErrorKind::TimedOut`] once the peer
/// has taken no byte for `limit`: the write deadline of a spliced socket. A peer that reads
/// nothing is closed after `limit` even while it keeps sending (which keeps the connection
/// from being idle), so it holds its stream's window no longer than that. The deadline's timer
/// is armed only when the socket is full.
async fn write_within(
    writer: &OwnedWriteHalf,
    mut data: &[u8],
    limit: Option<Duration>,
) -> io::Result<()> {
    while !data.is_empty() {
        match writer.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match limit {
                None => writer.writable().await?,
                Some(limit) => match tokio::time::timeout(limit, writer.writable()).await {
                    Ok(ready) => ready?,
                    Err(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("the peer took no byte for {limit:?}"),
                        ));
                    }
                },
            },
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Maps an HTTP/2 error to an I/O error, keeping "the peer reset the stream" recognisable.
pub fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("link connection failed"));
    }
    let kind = if e.is_reset() || e.is_go_away() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}

/// Pings the peer of a link connection every `interval` and resolves, with the reason, once a
/// ping goes unanswered for `misses` intervals or fails. Never resolves if pings are unavailable.
/// Must be polled alongside the connection itself (which carries the ping).
pub async fn keepalive(ping_pong: Option<h2::PingPong>, interval: Duration, misses: u32) -> String {
    let Some(mut ping_pong) = ping_pong else {
        return std::future::pending().await;
    };
    let silence = interval * misses;
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(silence, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => return format!("link ping failed: {e}"),
            Err(_) => return format!("link connection silent for {silence:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// Bounds every wait of these tests; none should come near it.
    const DEADLINE: Duration = Duration::from_secs(10);

    /// A connected pair of loopback sockets: (the client's end, the end the splice gets).
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (client, accepted)
    }

    /// An HTTP/2 link over an in-memory pipe, set up as hub and tunnel set theirs up.
    async fn link() -> (
        h2::client::SendRequest<Bytes>,
        h2::server::Connection<tokio::io::DuplexStream, Bytes>,
    ) {
        let (hub_io, tunnel_io) = tokio::io::duplex(1 << 20);
        let tunnel = tokio::spawn(tunnel_builder().handshake::<_, Bytes>(tunnel_io));
        let (send_request, connection) = hub_builder().handshake::<_, Bytes>(hub_io).await.unwrap();
        tokio::spawn(connection);
        let tunnel = tunnel.await.unwrap().unwrap();
        (send_request, tunnel)
    }

    #[tokio::test]
    async fn the_clients_bytes_go_out_before_the_answer_and_the_answer_opens_the_way_back() {
        let (mut send_request, mut tunnel) = link().await;
        let (mut client, hub_side) = socket_pair().await;
        let request = http::Request::post("/").body(()).unwrap();
        let (response, send) = send_request.send_request(request, false).unwrap();
        let (answer_tx, answer_rx) = tokio::sync::oneshot::channel::<()>();
        let answer = async move {
            // The answer is held back until the tunnel side has seen the client's bytes.
            answer_rx.await.map_err(io::Error::other)?;
            Ok(response.await.map_err(h2_to_io)?.into_body())
        };
        let splice = tokio::spawn(async move {
            splice_early(hub_side, send, answer, None, &Meter::default()).await
        });
        client.write_all(b"hello").await.unwrap();

        let accepted = tokio::time::timeout(DEADLINE, tunnel.accept()).await;
        let (request, mut respond) = accepted.unwrap().unwrap().unwrap();
        let mut body = request.into_body();
        let early = tokio::time::timeout(DEADLINE, body.data())
            .await
            .expect("the client's bytes must arrive before the answer is given");
        assert_eq!(&early.unwrap().unwrap()[..], b"hello");
        body.flow_control().release_capacity(5).unwrap();

        let mut back = respond
            .send_response(http::Response::new(()), false)
            .unwrap();
        answer_tx.send(()).unwrap();
        // The tunnel's connection task has to run for the answer to reach the hub.
        let driver = tokio::spawn(async move { while tunnel.accept().await.is_some() {} });
        back.send_data(Bytes::from_static(b"world"), true).unwrap();
        let mut got = [0u8; 5];
        tokio::time::timeout(DEADLINE, client.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"world");
        client.shutdown().await.unwrap();
        // The client's end of stream is the stream's (h2 may hand over an empty last frame).
        let mut rest = Vec::new();
        for _ in 0..4 {
            match tokio::time::timeout(DEADLINE, body.data()).await.unwrap() {
                Some(chunk) => rest.extend_from_slice(&chunk.unwrap()),
                None => break,
            }
        }
        assert!(body.is_end_stream(), "the stream must end with the client");
        assert!(rest.is_empty(), "no more bytes: {rest:?}");
        let traffic = tokio::time::timeout(DEADLINE, splice)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            traffic,
            Traffic {
                sent: 5,
                received: 5
            }
        );
        driver.abort();
    }

    #[tokio::test]
    async fn a_refusing_answer_ends_the_splice_with_its_error() {
        let (mut send_request, _tunnel) = link().await;
        let (mut client, hub_side) = socket_pair().await;
        let request = http::Request::post("/").body(()).unwrap();
        let (_response, send) = send_request.send_request(request, false).unwrap();
        let answer = async {
            Err::<RecvStream, _>(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"))
        };
        client.write_all(b"hello").await.unwrap();
        let result = tokio::time::timeout(
            DEADLINE,
            splice_early(hub_side, send, answer, None, &Meter::default()),
        )
        .await
        .unwrap();
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(DEADLINE, client.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}
