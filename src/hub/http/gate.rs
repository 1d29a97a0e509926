//! [`HeadGate`]: what an HTTP/1.1 client sends reaches hyper a whole request head at a time.
//!
//! hyper reserves 8 KiB more in its read buffer for every read, so a head that arrives in
//! pieces (a slowloris client) grows the buffer to 16 KiB and more while it waits. The gate
//! reads the client itself while a head is incomplete, shows every byte to the connection's
//! [`HeadInspector`], and holds the bytes in a buffer the size of the partial head; once the
//! inspector has the head's end (or stops inspecting: the head is too long, or is refused),
//! hyper gets everything held in one read. Bodies and upgraded bytes pass straight through.
//! The waits are bounded outside the gate: the first head by `header_timeout` in
//! [`super::connection`] (hyper is not running yet), later heads by hyper's
//! `header_read_timeout`, and every read by the idle deadline below it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::framing::HeadInspector;

/// Bytes read from the client at a time while a head is incomplete (on the stack).
const CHUNK: usize = 2048;

/// A client connection whose incomplete request heads are held back from hyper.
pub struct HeadGate<S> {
    inner: S,
    inspector: Arc<Mutex<HeadInspector>>,
    /// Bytes read and inspected, not yet handed to hyper; `out` of them are handed already.
    held: Vec<u8>,
    out: usize,
    /// The held bytes may go to hyper (their head is complete, or inspection stopped).
    releasing: bool,
    /// The client ended its side while bytes were held: EOF once they are handed over.
    eof: bool,
}

impl<S> HeadGate<S> {
    /// Wraps `inner`; `inspector` sees every byte read from it.
    pub fn new(inner: S, inspector: Arc<Mutex<HeadInspector>>) -> Self {
        HeadGate {
            inner,
            inspector,
            held: Vec::new(),
            out: 0,
            releasing: false,
            eof: false,
        }
    }

    /// Hands held bytes to `buf`; frees the buffer once all are handed.
    fn release(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.held.len() - self.out);
        buf.put_slice(&self.held[self.out..self.out + n]);
        self.out += n;
        if self.out == self.held.len() {
            self.held = Vec::new();
            self.out = 0;
            self.releasing = false;
        }
    }
}

impl<S: AsyncRead + Unpin> HeadGate<S> {
    /// Reads while a head is incomplete: `Ready` once held bytes may go to hyper (or the
    /// client ended its side), `Pending` while the head is still incomplete.
    fn poll_hold(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut chunk = [0u8; CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read))?;
            let fresh = read.filled();
            if fresh.is_empty() {
                self.eof = true;
                return Poll::Ready(Ok(()));
            }
            let mut inspector = self.inspector.lock();
            let judged = inspector.judged();
            inspector.feed(fresh);
            let complete = inspector.judged() != judged || !inspector.awaiting_head();
            drop(inspector);
            self.held.extend_from_slice(fresh);
            if complete {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Waits until the first request head is whole (or inspection stopped, or the client
    /// ended its side): what the connection holds until then is the bytes sent so far. `false`
    /// when the client left without sending a byte.
    pub async fn first_head(&mut self) -> io::Result<bool> {
        std::future::poll_fn(|cx| self.poll_hold(cx)).await?;
        self.releasing = !self.held.is_empty();
        Ok(self.releasing)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadGate<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.releasing {
            this.release(buf);
            return Poll::Ready(Ok(()));
        }
        if this.eof {
            return Poll::Ready(Ok(()));
        }
        if this.inspector.lock().awaiting_head() {
            ready!(this.poll_hold(cx))?;
            if !this.held.is_empty() {
                this.releasing = true;
                this.release(buf);
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.inspector.lock().feed(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadGate<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn gated(client: tokio::io::DuplexStream) -> HeadGate<tokio::io::DuplexStream> {
        HeadGate::new(client, Arc::new(Mutex::new(HeadInspector::new(1024))))
    }

    /// What one poll of a read of `gate` gives: `None` if it waits (the duplex pipe has every
    /// byte written to it at once, so a read that could complete does on its first poll).
    async fn one_read(gate: &mut HeadGate<tokio::io::DuplexStream>) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 16 * 1024];
        let n = futures_util::FutureExt::now_or_never(gate.read(&mut buf))?;
        Some(buf[..n.unwrap()].to_vec())
    }

    #[tokio::test]
    async fn a_head_sent_in_pieces_comes_out_in_one_read_and_a_body_as_it_comes() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut gate = gated(server);
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\n";
        client.write_all(&head[..10]).await.unwrap();
        assert_eq!(one_read(&mut gate).await, None, "a partial head is held");
        client.write_all(&head[10..30]).await.unwrap();
        assert_eq!(one_read(&mut gate).await, None, "still partial");
        client.write_all(&head[30..]).await.unwrap();
        client.write_all(b"abc").await.unwrap();
        let mut whole = head.to_vec();
        whole.extend_from_slice(b"abc");
        assert_eq!(
            one_read(&mut gate).await.unwrap(),
            whole,
            "head and body so far at once"
        );
        client.write_all(b"def").await.unwrap();
        assert_eq!(
            one_read(&mut gate).await.unwrap(),
            b"def",
            "the body passes through"
        );
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(
            one_read(&mut gate).await,
            None,
            "the next head is held again"
        );
        drop(client);
        assert_eq!(
            one_read(&mut gate).await.unwrap(),
            b"GET / HTTP/1.1\r\n",
            "EOF releases it"
        );
        assert_eq!(one_read(&mut gate).await.unwrap(), b"", "then EOF");
    }

    #[tokio::test]
    async fn a_head_past_the_limit_or_refused_is_released_for_hyper_to_answer() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut gate = gated(server);
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(2000));
        client.write_all(long.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        while got.len() < long.len() {
            got.extend(one_read(&mut gate).await.expect("released past max_head"));
        }
        assert_eq!(got, long.as_bytes());
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut gate = gated(server);
        client.write_all(b"GET / HTTP/1.1\nHost").await.unwrap();
        assert_eq!(one_read(&mut gate).await.unwrap(), b"GET / HTTP/1.1\nHost");
    }
}
