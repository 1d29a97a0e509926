//! An I/O adapter that fails a connection which moves no byte, in either direction, for a
//! given time ([`IdleIo`]): the deadline for every read and write that waits on a peer of the
//! http/https services (request bodies, keep-alive connections, upgraded connections), on top
//! of the protocol's own deadlines (header read timeout, response timeout).
//!
//! It is one [`IoWatch`] of [`WatchedIo`], the adapter that shows each read and write of a
//! connection to a watch as it passes (the http service's request-head inspection is another).
//! A watch judges outcomes; it never reads or writes on its own.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What a [`WatchedIo`] does with the outcome of each read and write of the I/O it wraps.
pub trait IoWatch: Unpin {
    /// Sees a read's outcome (`fresh`: the bytes it added) and says what to report.
    fn read(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<()>>,
        fresh: &[u8],
    ) -> Poll<io::Result<()>>;

    /// Sees a write's outcome and says what to report: by default, the outcome as it is.
    fn wrote(
        &mut self,
        _cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        polled
    }
}

/// `inner`, with every read and write shown to `watch`; flush and shutdown pass through.
pub struct WatchedIo<S, W> {
    inner: S,
    watch: W,
}

impl<S, W: IoWatch> WatchedIo<S, W> {
    /// Wraps `inner`.
    pub fn watched(inner: S, watch: W) -> Self {
        WatchedIo { inner, watch }
    }
}

/// `inner`, closed with [`io::ErrorKind::TimedOut`] after `limit` without progress.
pub type IdleIo<S> = WatchedIo<S, IdleDeadline>;

impl<S> IdleIo<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, limit: Duration) -> Self {
        WatchedIo::watched(
            inner,
            IdleDeadline {
                limit,
                deadline: Box::pin(tokio::time::sleep(limit)),
            },
        )
    }
}

/// The [`IoWatch`] of an [`IdleIo`]: the time without progress it allows, and when it ends.
pub struct IdleDeadline {
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl IdleDeadline {
    /// Turns the inner I/O's answer into ours: progress (`moved` true) resets the deadline; a
    /// wait fails once the deadline passed (polling the deadline registers its wake-up).
    fn settle<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
        moved: impl FnOnce(&T) -> bool,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(Ok(value)) => {
                if moved(&value) {
                    self.deadline.as_mut().reset(Instant::now() + self.limit);
                }
                Poll::Ready(Ok(value))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no byte moved for {:?}", self.limit),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl IoWatch for IdleDeadline {
    fn read(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<()>>,
        fresh: &[u8],
    ) -> Poll<io::Result<()>> {
        self.settle(cx, polled, |()| !fresh.is_empty())
    }

    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        self.settle(cx, polled, |n| *n > 0)
    }
}

impl<S: AsyncRead + Unpin, W: IoWatch> AsyncRead for WatchedIo<S, W> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.watch.read(cx, polled, &buf.filled()[before..])
    }
}

impl<S: AsyncWrite + Unpin, W: IoWatch> AsyncWrite for WatchedIo<S, W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch.wrote(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch.wrote(cx, polled)
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_fails_the_read_after_the_limit_and_traffic_resets_it() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut io = IdleIo::new(near, Duration::from_secs(10));
        // Traffic keeps it alive past the limit, as long as each gap is shorter.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(6)).await;
            far.write_all(b"x").await.unwrap();
            let mut byte = [0u8; 1];
            io.read_exact(&mut byte).await.unwrap();
        }
        // Then silence: the read fails with TimedOut once the limit passes (paused clock).
        let mut byte = [0u8; 1];
        let err = io.read_exact(&mut byte).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
