//! Link multiplexing: HTTP/2 settings for link connections and the byte pump that joins a TCP
//! socket to a link stream.
//!
//! Every public client is one HTTP/2 stream on a link connection; the hub opens it, the tunnel
//! answers. [`splice`] copies bytes both ways until both sides have finished, honouring
//! half-close (an ended request body is a write shutdown on the far socket, and the other way
//! round) and applying backpressure through HTTP/2 flow control: a peer that stops reading stops
//! its stream's window from being released, which stops the sender. See docs/protocol.md for why
//! HTTP/2 (the `h2` crate) and for the measurements behind the window sizes.

mod stream;

pub use stream::LinkStream;

use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

/// Per-stream flow-control window: enough for one stream to reach full loopback speed.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection flow-control window, shared by every stream of a link connection. It also
/// bounds what slow readers can make the receiving side buffer per link connection.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
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
/// no byte in either direction for that long is closed the same way. Bytes read from the socket
/// count as "in" on `meter`, bytes written to it as "out".
pub async fn splice(
    socket: TcpStream,
    mut send: SendStream<Bytes>,
    recv: RecvStream,
    idle: Option<Duration>,
    meter: &Meter,
) -> io::Result<Traffic> {
    let (reader, writer) = socket.into_split();
    let activity = Activity::new();
    let transfer = async {
        tokio::try_join!(
            socket_to_stream(reader, &mut send, &activity, meter),
            stream_to_socket(recv, writer, &activity, meter)
        )
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

/// Sends everything in `buf`, waiting for flow-control capacity as needed. Reserves only what
/// was read, so an idle stream never holds a share of the connection window.
async fn send_all(send: &mut SendStream<Bytes>, buf: &mut BytesMut) -> io::Result<()> {
    while !buf.is_empty() {
        send.reserve_capacity(buf.len());
        let granted = poll_fn(|cx| poll_send_capacity(send, cx)).await?;
        let chunk = buf.split_to(granted.min(buf.len())).freeze();
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
    meter: &Meter,
) -> io::Result<u64> {
    let mut total = 0u64;
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.map_err(h2_to_io)?;
        writer.write_all(&chunk).await?;
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
