//! A link stream seen as a plain byte stream (`AsyncRead + AsyncWrite`), for protocol code that
//! wants one: the hub's HTTP client runs HTTP/1.1 over it to reach a tunnel's target.
//!
//! Reads release flow-control window as the bytes are handed out, so a reader that stops
//! reading stops the sender. Writes wait for window before sending, and `shutdown` ends the
//! stream's body (a half-close). Dropping it resets the stream if it has not ended.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::h2_to_io;

/// Largest single write handed to HTTP/2 at once.
const MAX_WRITE: usize = 256 * 1024;

/// One link stream as a byte stream.
pub struct LinkStream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received bytes not yet handed to the reader.
    pending: Bytes,
    /// Window to release once `pending` is consumed.
    unreleased: usize,
    write_closed: bool,
}

impl LinkStream {
    /// Wraps the two halves of an open link stream.
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        LinkStream {
            send,
            recv,
            pending: Bytes::new(),
            unreleased: 0,
            write_closed: false,
        }
    }

    fn release(&mut self) -> io::Result<()> {
        if self.unreleased > 0 {
            let n = std::mem::take(&mut self.unreleased);
            self.recv
                .flow_control()
                .release_capacity(n)
                .map_err(h2_to_io)?;
        }
        Ok(())
    }
}

impl AsyncRead for LinkStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pending.is_empty() {
            this.release()?;
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    this.unreleased = data.len();
                    this.pending = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                // End of the body: end of file.
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        if this.pending.is_empty() {
            this.release()?;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for LinkStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        let want = buf.len().min(MAX_WRITE);
        this.send.reserve_capacity(want);
        let granted = ready!(super::poll_send_capacity(&mut this.send, cx))?;
        let n = granted.min(want);
        this.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 writes queued data as soon as the connection task runs; there is nothing to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.write_closed {
            self.write_closed = true;
            self.send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}
