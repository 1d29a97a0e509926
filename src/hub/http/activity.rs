//! Request activity of one h2 client connection, so the connection can be closed when it has
//! carried no request for `idle_timeout`.
//!
//! Byte-level idleness ([`crate::hub::idle::IdleIo`]) cannot tell this for h2: the hub's own
//! keep-alive pings move bytes, so an idle h2 connection would never look idle. Here a request
//! counts as active from the moment it arrives until its response body is finished or dropped.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::upstream::{Body as ProxyBody, BoxError};

/// Requests in flight on one connection, and when the last one ended.
#[derive(Debug)]
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Activity {
    /// A connection that has just been accepted: idle since now.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        })
    }

    /// Marks a request as started; it ends when the returned guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// When the connection will have been idle for `limit`, if nothing starts meanwhile: `None`
    /// while a request is in flight.
    pub(crate) fn idle_deadline(&self, limit: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        Some(since + limit)
    }
}

/// One request in flight; see [`Activity::begin`].
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        // Stamp before decrementing, so a reader that sees zero in flight sees this time.
        *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as active until it ends or is dropped.
pub(crate) struct Tracked {
    inner: ProxyBody,
    busy: Option<Busy>,
}

impl Tracked {
    /// Wraps `inner`, holding `busy` until the body is done.
    pub(crate) fn new(inner: ProxyBody, busy: Busy) -> Self {
        Tracked {
            inner,
            busy: Some(busy),
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.busy = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_while_no_response_is_in_flight() {
        let limit = Duration::from_secs(10);
        let activity = Activity::new();
        let start = Instant::now();
        assert_eq!(activity.idle_deadline(limit), Some(start + limit));

        let busy = activity.begin();
        let body = Full::new(Bytes::from_static(b"hello"))
            .map_err(|never| match never {})
            .boxed();
        let mut tracked = Tracked::new(body, busy);
        assert_eq!(activity.idle_deadline(limit), None);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(
            activity.idle_deadline(limit),
            None,
            "a long response is not idle"
        );

        while let Some(frame) = tracked.frame().await {
            frame.unwrap();
        }
        let ended = Instant::now();
        assert_eq!(activity.idle_deadline(limit), Some(ended + limit));

        // A body dropped unfinished (the client reset the stream) ends the request too.
        let busy = activity.begin();
        let body = Full::new(Bytes::from_static(b"x"))
            .map_err(|never| match never {})
            .boxed();
        drop(Tracked::new(body, busy));
        assert!(activity.idle_deadline(limit).is_some());
    }
}
