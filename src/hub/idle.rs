//! An I/O adapter that fails a connection which moves no byte, in either direction, for a
//! given time, or whose peer takes no byte written to it for that time ([`IdleIo`]): the deadline for every read and write that waits on a peer of the
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
                write_stall: None,
            },
        )
    }
}

/// The [`IoWatch`] of an [`IdleIo`]: the time without progress it allows, and when it ends;
/// and the write deadline: a peer that takes no byte written to it for that time fails the
/// write even while it keeps sending (its bytes keep the connection from being idle), so a
/// client that never reads cannot hold what the hub would send it for longer.
pub struct IdleDeadline {
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
    /// Since when a write has waited for room, armed by the first write that had to wait and
    /// dropped by the next that wrote: only a connection with a full socket holds one.
    write_stall: Option<Pin<Box<Sleep>>>,
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
        match &polled {
            Poll::Ready(Ok(n)) if *n > 0 => self.write_stall = None,
            Poll::Pending => {
                let limit = self.limit;
                let stall = self
                    .write_stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if stall.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the peer took no byte for {limit:?}"),
                    )));
                }
            }
            _ => {}
        }
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

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_takes_nothing_fails_the_write_after_the_limit_though_it_sends() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut io = IdleIo::new(near, Duration::from_secs(10));
        // Fill the pipe: the peer takes nothing from here on.
        io.write_all(&[b'w'; 64]).await.unwrap();
        let mut write = std::pin::pin!(io.write_all(b"more"));
        // The peer keeps sending; each of its bytes would keep an idle deadline alive.
        for _ in 0..3 {
            let waited = tokio::time::timeout(Duration::from_secs(3), &mut write).await;
            assert!(waited.is_err(), "the write ended early: {waited:?}");
            far.write_all(b"x").await.unwrap();
        }
        // 9 s waited; the write fails once 10 s have passed since it first had to wait.
        let err = write.await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("took no byte"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_takes_bytes_in_time_keeps_its_writes_going() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut io = IdleIo::new(near, Duration::from_secs(10));
        let mut buf = [0u8; 64];
        // Each write waits 6 s for room, under the limit each time, for 30 s in all.
        for _ in 0..5 {
            io.write_all(&[b'w'; 64]).await.unwrap();
            let mut write = std::pin::pin!(io.write_all(b"m"));
            let waited = tokio::time::timeout(Duration::from_secs(6), &mut write).await;
            assert!(waited.is_err(), "the pipe was not full: {waited:?}");
            far.read_exact(&mut buf).await.unwrap();
            write.await.unwrap();
            far.read_exact(&mut buf[..1]).await.unwrap();
        }
    }
}
