//! The start of a request body, read before anything goes upstream ([`read_ahead`]).
//!
//! With `body_read_ahead` set (default 8192; 0 turns it off), a request with a body opens its upstream
//! connection (a link stream to the tunnel and an HTTP/1.1 client on it) only once the body
//! is whole or that many bytes of it have arrived. A client that trickles its body in then holds the bytes it sent and its own
//! connection, not an upstream one (about 15 KiB more), and a target never waits on a slow
//! client for a small body (nginx buffers request bodies for the same reasons). Small pieces
//! are copied into one buffer of the size received, so what the client sent does not pin
//! hyper's 8 KiB read buffers while it waits. The read-ahead also checks a chunked body's
//! framing from its first chunk-size line before the target sees a byte.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Frame;

use super::body::{self, Body, BoxError};

/// What a read-ahead found: the body to forward (the bytes read ahead, then the rest), or
/// the error that ended it before it could be forwarded.
pub(super) type ReadAhead = Result<Body, BoxError>;

/// Reads `client` until it ends or `limit` bytes of it are in (at least one frame when
/// `first_frame`: a chunked body's first chunk-size line is then checked even with a limit of
/// 0). Each read waits no longer than the client socket's idle deadline.
pub(super) async fn read_ahead(mut client: Body, limit: usize, first_frame: bool) -> ReadAhead {
    let mut ahead = BytesMut::new();
    let mut frames = 0usize;
    while ahead.len() < limit || (first_frame && frames == 0) {
        frames += 1;
        let data = match client.frame().await {
            None => return Ok(finished(ahead.freeze(), None)),
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers come last: the body is whole.
                Err(trailers) => return Ok(finished(ahead.freeze(), Some(trailers))),
            },
        };
        if ahead.len() + data.len() > limit {
            // The piece that fills the read-ahead goes on as it is: at most `limit` bytes are
            // ever copied.
            let rest = body::prepend(Frame::data(data), client);
            return Ok(then(ahead.freeze(), rest));
        }
        ahead.extend_from_slice(&data);
    }
    Ok(then(ahead.freeze(), client))
}

/// `rest` after `data` (if there is any).
fn then(data: Bytes, rest: Body) -> Body {
    match data.is_empty() {
        true => rest,
        false => body::prepend(Frame::data(data), rest),
    }
}

/// A body read to its end: the bytes read ahead, then its trailers if it had any.
fn finished(data: Bytes, trailers: Option<Frame<Bytes>>) -> Body {
    let rest = match trailers {
        Some(trailers) => body::prepend(trailers, body::empty()),
        None => body::empty(),
    };
    then(data, rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A body of `pieces`, each a frame, counting the frames polled out of it; an error frame
    /// for `None`.
    fn body_of(pieces: &[Option<&'static [u8]>], polled: Arc<AtomicUsize>) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = pieces
            .iter()
            .map(|p| match p {
                Some(bytes) => Ok(Frame::data(Bytes::from_static(bytes))),
                None => Err("the client went away".into()),
            })
            .collect();
        let stream =
            futures_util::StreamExt::inspect(futures_util::stream::iter(frames), move |_| {
                polled.fetch_add(1, Ordering::SeqCst);
            });
        BodyExt::boxed(StreamBody::new(stream))
    }

    async fn collect(body: Body) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_short_body_is_read_whole_and_a_long_one_up_to_the_limit() {
        let polled = Arc::new(AtomicUsize::new(0));
        let short = body_of(&[Some(b"ab"), Some(b"cd")], polled.clone());
        let read = read_ahead(short, 8, false).await.unwrap();
        assert_eq!(polled.load(Ordering::SeqCst), 2, "both frames read ahead");
        assert_eq!(collect(read).await, b"abcd");

        let polled = Arc::new(AtomicUsize::new(0));
        let pieces = [Some(&b"abc"[..]), Some(b"def"), Some(b"ghi"), Some(b"jkl")];
        let long = body_of(&pieces, polled.clone());
        let read = read_ahead(long, 5, false).await.unwrap();
        assert_eq!(
            polled.load(Ordering::SeqCst),
            2,
            "stops once 5 bytes are in"
        );
        assert_eq!(
            collect(read).await,
            b"abcdefghijkl",
            "nothing lost or reordered"
        );
    }

    #[tokio::test]
    async fn a_limit_of_zero_reads_nothing_unless_the_first_frame_is_wanted() {
        let polled = Arc::new(AtomicUsize::new(0));
        let read = read_ahead(body_of(&[Some(b"ab")], polled.clone()), 0, false)
            .await
            .unwrap();
        assert_eq!(polled.load(Ordering::SeqCst), 0);
        assert_eq!(collect(read).await, b"ab");
        let polled = Arc::new(AtomicUsize::new(0));
        let read = read_ahead(body_of(&[Some(b"ab"), Some(b"c")], polled.clone()), 0, true)
            .await
            .unwrap();
        assert_eq!(polled.load(Ordering::SeqCst), 1, "only the first frame");
        assert_eq!(collect(read).await, b"abc");
    }

    #[tokio::test]
    async fn an_error_while_reading_ahead_is_returned_and_trailers_end_the_body() {
        let polled = Arc::new(AtomicUsize::new(0));
        let failing = body_of(&[Some(b"ab"), None], polled.clone());
        assert!(read_ahead(failing, 8, false).await.is_err());

        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-sum", "1".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let with_trailers = BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)));
        let read = read_ahead(with_trailers, 8, false).await.unwrap();
        let collected = read.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes().as_ref(), b"ab");
    }
}
