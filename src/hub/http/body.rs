//! The bodies the http service relays: one boxed type for every request and response body
//! ([`Body`]), and [`Watched`], a body that shows each frame to a [`Watch`] as it passes.
//! Metering ([`super::metered`]) and h2 request activity ([`super::activity`]) are watches.
//!
//! A watch sees frames; it must not hold them back or buffer them, and it adds no task and
//! no lock of its own: a watched body costs one poll of the body it wraps.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Frame, SizeHint};

/// Errors carried by request and response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type the hub sends upstream and back to clients.
pub type Body = BoxBody<Bytes, BoxError>;
/// What one poll of a [`Body`] gives.
pub type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

/// A body with no bytes.
pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A body holding `text`.
pub fn full(text: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// What a [`Watched`] body does around each poll of the body it wraps.
pub trait Watch: Unpin {
    /// Runs before the wrapped body is polled; an answer here is given instead of polling it.
    fn before(&mut self, _cx: &mut Context<'_>) -> Option<Polled> {
        None
    }

    /// Sees what the wrapped body gave.
    fn after(&mut self, polled: &Polled);
}

/// `inner`, with every poll shown to `watch`; framing (end of stream, size) is `inner`'s.
pub struct Watched<W> {
    inner: Body,
    watch: W,
}

impl<W: Watch> Watched<W> {
    /// Wraps `inner`.
    pub fn new(inner: Body, watch: W) -> Self {
        Watched { inner, watch }
    }
}

impl<W: Watch> hyper::body::Body for Watched<W> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = self.get_mut();
        if let Some(answer) = this.watch.before(cx) {
            return answer;
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        this.watch.after(&polled);
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

    /// Counts data bytes; refuses to poll once `stop` is set.
    #[derive(Default)]
    struct Counting {
        bytes: usize,
        ends: usize,
        stop: bool,
    }

    impl Watch for &mut Counting {
        fn before(&mut self, _cx: &mut Context<'_>) -> Option<Polled> {
            self.stop.then(|| Poll::Ready(Some(Err("stopped".into()))))
        }

        fn after(&mut self, polled: &Polled) {
            match polled {
                Poll::Ready(Some(Ok(frame))) => {
                    self.bytes += frame.data_ref().map_or(0, Bytes::len);
                }
                Poll::Ready(None) => self.ends += 1,
                _ => {}
            }
        }
    }

    #[tokio::test]
    async fn a_watch_sees_every_frame_and_the_end_and_keeps_the_framing() {
        let mut counting = Counting::default();
        let watched = Watched::new(full("hello"), &mut counting);
        assert_eq!(hyper::body::Body::size_hint(&watched).exact(), Some(5));
        let bytes = watched.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "hello");
        assert_eq!((counting.bytes, counting.ends), (5, 1));
    }

    #[tokio::test]
    async fn a_watch_can_end_the_body_before_it_is_polled() {
        let mut counting = Counting {
            stop: true,
            ..Counting::default()
        };
        let watched = Watched::new(full("hello"), &mut counting);
        assert!(watched.collect().await.is_err());
        assert_eq!(counting.bytes, 0, "the inner body was never polled");
    }
}
