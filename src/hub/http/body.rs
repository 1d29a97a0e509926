//! The bodies the http service relays: one boxed type for every request and response body
//! ([`Body`]), and [`Watched`], a body that shows each frame to a [`Watch`] as it passes.
//! Metering ([`super::metered`]) and h2 request activity ([`super::activity`]) are watches.
//! [`prepend`] puts back a frame read ahead (the first chunk of a chunked request, read before
//! forwarding so bad framing is refused at the edge), and [`MalformedBody`] marks the error of
//! a client body whose framing hyper could not decode.
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

/// `rest`, after `first`: a frame read ahead goes out first, then the body it came from.
pub fn prepend(first: Frame<Bytes>, rest: Body) -> Body {
    Prepended {
        first: Some(first),
        rest,
    }
    .boxed()
}

struct Prepended {
    first: Option<Frame<Bytes>>,
    rest: Body,
}

impl hyper::body::Body for Prepended {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = self.get_mut();
        match this.first.take() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => Pin::new(&mut this.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let ahead = self
            .first
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |d| d.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(ahead));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(ahead));
        }
        hint
    }
}

/// A client's request body whose framing did not decode (a chunk size that overflows or does
/// not parse, a chunk without its CRLF): the client's fault, answered with 400.
#[derive(Debug, thiserror::Error)]
#[error("the request body's framing is invalid: {0}")]
pub struct MalformedBody(#[source] hyper::Error);

/// The error of a client body, marked [`MalformedBody`] when its framing is at fault (hyper
/// reports a decoding failure as an I/O error of kind `InvalidData` or `InvalidInput`; the
/// client going away or timing out is not one).
pub fn client_body_error(e: hyper::Error) -> BoxError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            )
        {
            return Box::new(MalformedBody(e));
        }
        cause = c.source();
    }
    e.into()
}

/// Whether `e`, or anything that caused it, is an `E`.
pub fn caused_by<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<E>() {
            return true;
        }
        cause = c.source();
    }
    false
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
    async fn a_prepended_frame_goes_out_first_and_counts_in_the_size() {
        let body = prepend(Frame::data(Bytes::from_static(b"ab")), full("cde"));
        assert!(!hyper::body::Body::is_end_stream(&body));
        assert_eq!(hyper::body::Body::size_hint(&body).exact(), Some(5));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcde");
    }

    /// The error reading the body of `request` gives a hyper server, through
    /// [`client_body_error`]; `hang_up` closes the client's side after the request.
    async fn body_error_of(request: &'static [u8], hang_up: bool) -> BoxError {
        let (mut client, server) = tokio::io::duplex(4096);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = parking_lot::Mutex::new(Some(tx));
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let tx = tx.lock().take();
                async move {
                    let read = req.into_body().map_err(client_body_error).collect().await;
                    if let (Some(tx), Err(e)) = (tx, read) {
                        let _ = tx.send(e);
                    }
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(empty()))
                }
            });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(server), service);
        tokio::spawn(conn);
        tokio::io::AsyncWriteExt::write_all(&mut client, request)
            .await
            .unwrap();
        if hang_up {
            tokio::io::AsyncWriteExt::shutdown(&mut client)
                .await
                .unwrap();
        }
        let error = rx.await.unwrap();
        drop(client);
        error
    }

    #[tokio::test]
    async fn a_chunk_size_that_overflows_or_does_not_parse_is_a_malformed_body() {
        let head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        for chunks in ["1FFFFFFFFFFFFFFFF\r\nx\r\n", "zz\r\n", "2\r\nabc\r\n"] {
            let request: &'static str = format!("{head}{chunks}").leak();
            let error = body_error_of(request.as_bytes(), false).await;
            assert!(caused_by::<MalformedBody>(&*error), "{chunks:?}: {error}");
        }
    }

    #[tokio::test]
    async fn a_client_that_goes_away_mid_body_is_not_a_malformed_body() {
        let request = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc";
        let error = body_error_of(request, true).await;
        assert!(!caused_by::<MalformedBody>(&*error), "{error}");
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
