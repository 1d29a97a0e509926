//! Request activity of one h2 client connection, so the connection can be closed when it has
//! carried no request for `idle_timeout`.
//!
//! Byte-level idleness ([`crate::hub::idle::IdleIo`]) cannot tell this for h2: the hub's own
//! keep-alive pings move bytes, so an idle h2 connection would never look idle. Here a request
//! counts as active from the moment it arrives until its response body is finished or dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::body::{Polled, Watch};

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
        let since = *self.idle_since.lock();
        Some(since + limit)
    }
}

/// One request in flight; see [`Activity::begin`].
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        // Stamp before decrementing, so a reader that sees zero in flight sees this time.
        *self.0.idle_since.lock() = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The [`Watch`] that keeps a response's request counted as active until its body ends, fails
/// or is dropped.
pub(crate) struct Tracked(Option<Busy>);

impl Tracked {
    /// Holds `busy` until the watched body is done.
    pub(crate) fn new(busy: Busy) -> Self {
        Tracked(Some(busy))
    }
}

impl Watch for Tracked {
    fn after(&mut self, polled: &Polled) {
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.0 = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::http::body::{Watched, full};
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_while_no_response_is_in_flight() {
        let limit = Duration::from_secs(10);
        let activity = Activity::new();
        let start = Instant::now();
        assert_eq!(activity.idle_deadline(limit), Some(start + limit));

        let busy = activity.begin();
        let mut tracked = Watched::new(full("hello"), Tracked::new(busy));
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
        drop(Watched::new(full("x"), Tracked::new(busy)));
        assert!(activity.idle_deadline(limit).is_some());
    }
}
