//! Framed message I/O over any byte stream, with a deadline on every read.
//!
//! [`FramedStream`] owns a connection and reads exactly one frame at a time (length prefix, then
//! body), never more, so a link connection can hand its stream to the HTTP/2 layer right after its
//! handshake messages without losing bytes. Each frame is written with a single write.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::{
    FRAME_HEADER_LEN, FrameError, HubPreamble, MAX_FRAME_LEN, PREAMBLE_LEN, Preamble,
    PreambleError, decode_frame, encode_frame,
};

/// Errors on a framed connection.
#[derive(Debug, Error)]
pub enum ChannelError {
    /// The socket failed.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// The peer sent nothing in time.
    #[error("the peer sent nothing for {0:?} while {1}")]
    Timeout(Duration, &'static str),
    /// A frame was oversized or malformed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The opening bytes were wrong.
    #[error(transparent)]
    Preamble(#[from] PreambleError),
}

/// Most room reserved at once while a frame body arrives.
const READ_STEP: usize = 8 * 1024;

/// Buffer capacity kept between frames; a larger buffer is released before the next frame.
const RETAINED_CAPACITY: usize = 16 * 1024;

/// A connection that speaks length-prefixed frames.
pub struct FramedStream<S> {
    stream: S,
    buf: BytesMut,
}

impl<S> FramedStream<S> {
    /// Wraps a connection (or one half of it).
    pub fn new(stream: S) -> Self {
        FramedStream {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// The connection, for handing over to another protocol layer. Nothing is buffered past
    /// the last frame read.
    pub fn into_inner(self) -> S {
        self.stream
    }
}

impl<S: AsyncRead + Unpin> FramedStream<S> {
    /// Reads the tunnel's preamble.
    pub async fn read_preamble(&mut self, limit: Duration) -> Result<Preamble, ChannelError> {
        let bytes = self.read_exact_array(limit, "sending its preamble").await?;
        Ok(Preamble::decode(&bytes)?)
    }

    /// Reads the hub's preamble.
    pub async fn read_hub_preamble(
        &mut self,
        limit: Duration,
    ) -> Result<HubPreamble, ChannelError> {
        let bytes = self
            .read_exact_array(limit, "answering our preamble")
            .await?;
        Ok(HubPreamble::decode(&bytes)?)
    }

    async fn read_exact_array(
        &mut self,
        limit: Duration,
        doing: &'static str,
    ) -> Result<[u8; PREAMBLE_LEN], ChannelError> {
        let mut bytes = [0u8; PREAMBLE_LEN];
        match tokio::time::timeout(limit, self.stream.read_exact(&mut bytes)).await {
            Err(_) => Err(ChannelError::Timeout(limit, doing)),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ChannelError::Closed),
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(_)) => Ok(bytes),
        }
    }

    /// Reads one message, waiting at most `limit` for all of it.
    pub async fn read_message<M: DeserializeOwned>(
        &mut self,
        limit: Duration,
        doing: &'static str,
    ) -> Result<M, ChannelError> {
        match tokio::time::timeout(limit, self.read_frame()).await {
            Err(_) => Err(ChannelError::Timeout(limit, doing)),
            Ok(result) => result,
        }
    }

    async fn read_frame<M: DeserializeOwned>(&mut self) -> Result<M, ChannelError> {
        if self.buf.capacity() > RETAINED_CAPACITY {
            // Do not keep the room of one large frame for the life of the connection.
            self.buf = BytesMut::new();
        }
        self.buf.clear();
        self.buf.resize(FRAME_HEADER_LEN, 0);
        self.read_into(0).await?;
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge {
                len,
                max: MAX_FRAME_LEN,
            }
            .into());
        }
        // Room grows with the bytes that arrive, not with the length the peer announced: a peer
        // that announces a large frame and sends nothing more costs next to nothing.
        let end = FRAME_HEADER_LEN + len;
        while self.buf.len() < end {
            let want = end - self.buf.len();
            if self.buf.capacity() == self.buf.len() {
                self.buf.reserve(want.min(READ_STEP));
            }
            // `take`: never read past this frame; the bytes after it belong to the next layer.
            let n = (&mut self.stream)
                .take(want as u64)
                .read_buf(&mut self.buf)
                .await?;
            if n == 0 {
                return Err(ChannelError::Closed);
            }
        }
        match decode_frame(&mut self.buf)? {
            Some(msg) => Ok(msg),
            // The buffer holds exactly one whole frame, so decoding cannot ask for more.
            None => Err(ChannelError::Closed),
        }
    }

    async fn read_into(&mut self, from: usize) -> Result<(), ChannelError> {
        match self.stream.read_exact(&mut self.buf[from..]).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ChannelError::Closed),
            Err(e) => Err(e.into()),
        }
    }
}

impl<S: AsyncWrite + Unpin> FramedStream<S> {
    /// Writes raw opening bytes followed by zero or more messages, in one write.
    pub async fn write_preamble_and<M: Serialize>(
        &mut self,
        preamble: &[u8],
        messages: &[&M],
    ) -> Result<(), ChannelError> {
        let mut out = BytesMut::with_capacity(preamble.len() + 256);
        out.extend_from_slice(preamble);
        for msg in messages {
            encode_frame(msg, &mut out)?;
        }
        self.write_all(&out).await
    }

    /// Writes one message in one write.
    pub async fn write_message<M: Serialize>(&mut self, msg: &M) -> Result<(), ChannelError> {
        let mut out = BytesMut::with_capacity(256);
        encode_frame(msg, &mut out)?;
        self.write_all(&out).await
    }

    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), ChannelError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::{Channel, Envelope, HubMessage, TunnelMessage, testing};

    #[tokio::test]
    async fn reads_exactly_one_frame_and_leaves_the_rest_on_the_stream() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut writer = FramedStream::new(a);
        writer
            .write_preamble_and(
                &Preamble::new(Channel::Link).encode(),
                &[&Envelope {
                    id: 1,
                    msg: TunnelMessage::Ping,
                }],
            )
            .await
            .unwrap();
        let mut raw = writer.into_inner();
        raw.write_all(b"after").await.unwrap();
        drop(raw);

        let mut preamble = [0u8; PREAMBLE_LEN];
        b.read_exact(&mut preamble).await.unwrap();
        let mut reader = FramedStream::new(b);
        let msg: Envelope<TunnelMessage> = reader
            .read_message(Duration::from_secs(5), "test")
            .await
            .unwrap();
        assert_eq!(msg.id, 1);
        let mut rest = Vec::new();
        reader.into_inner().read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"after");
    }

    #[tokio::test]
    async fn oversized_length_prefix_is_refused_without_reading_the_body() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let mut reader = FramedStream::new(b);
        let err = reader
            .read_message::<Envelope<TunnelMessage>>(Duration::from_secs(5), "test")
            .await
            .unwrap_err();
        assert!(
            matches!(err, ChannelError::Frame(FrameError::TooLarge { .. })),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out() {
        let (_a, b) = tokio::io::duplex(64);
        let mut reader = FramedStream::new(b);
        let err = reader
            .read_message::<Envelope<TunnelMessage>>(Duration::from_secs(3), "saying hello")
            .await
            .unwrap_err();
        assert!(
            matches!(err, ChannelError::Timeout(_, "saying hello")),
            "{err}"
        );
    }

    /// Hands out `chunks` one per read, never waiting; the end of the chunks is end of stream.
    struct ChunkedReader(std::collections::VecDeque<Vec<u8>>);

    impl ChunkedReader {
        fn new(chunks: &[&[u8]]) -> Self {
            // An empty read means end of stream, so empty chunks are left out.
            ChunkedReader(
                chunks
                    .iter()
                    .filter(|c| !c.is_empty())
                    .map(|c| c.to_vec())
                    .collect(),
            )
        }

        fn remaining(&self) -> Vec<u8> {
            self.0.iter().flatten().copied().collect()
        }
    }

    impl AsyncRead for ChunkedReader {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            if let Some(mut chunk) = self.0.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    chunk.drain(..n);
                    self.0.push_front(chunk);
                }
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(f)
    }

    const NO_DEADLINE: Duration = Duration::from_secs(3600);

    proptest! {
        #![proptest_config(testing::config(128))]

        #[test]
        fn the_opening_reads_the_same_however_the_bytes_arrive(
            channel in prop_oneof![Just(Channel::Control), Just(Channel::Link)],
            env in testing::envelope(testing::tunnel_message()),
            after in proptest::collection::vec(any::<u8>(), 0..32),
            cuts in testing::cuts(),
        ) {
            let mut wire = BytesMut::new();
            wire.extend_from_slice(&Preamble::new(channel).encode());
            encode_frame(&env, &mut wire).unwrap();
            wire.extend_from_slice(&after);
            let mut reader = FramedStream::new(ChunkedReader::new(&testing::pieces(&wire, &cuts)));
            let (preamble, msg) = block_on(async {
                let preamble = reader.read_preamble(NO_DEADLINE).await.unwrap();
                let msg: Envelope<TunnelMessage> =
                    reader.read_message(NO_DEADLINE, "test").await.unwrap();
                (preamble, msg)
            });
            prop_assert_eq!(preamble, Preamble::new(channel));
            prop_assert_eq!(msg, env);
            prop_assert_eq!(reader.into_inner().remaining(), after, "read past the frame");
        }

        #[test]
        fn a_frame_read_from_a_stream_is_the_one_decode_frame_finds(
            len in prop_oneof![0..64u32, any::<u32>()],
            body in proptest::collection::vec(any::<u8>(), 0..80),
            cuts in testing::cuts(),
        ) {
            let mut wire = BytesMut::new();
            wire.put_u32(len);
            wire.extend_from_slice(&body);
            let mut reader = FramedStream::new(ChunkedReader::new(&testing::pieces(&wire, &cuts)));
            let got = block_on(reader.read_message::<Envelope<HubMessage>>(NO_DEADLINE, "test"));
            let left = reader.into_inner().remaining();
            let len = len as usize;
            match (got, decode_frame::<Envelope<HubMessage>>(&mut wire.clone())) {
                (Ok(msg), Ok(Some(want))) => {
                    prop_assert_eq!(msg, want);
                    prop_assert_eq!(&left[..], &body[len..]);
                }
                (Err(ChannelError::Closed), Ok(None)) => prop_assert!(left.is_empty()),
                (Err(ChannelError::Frame(FrameError::TooLarge { .. })), Err(FrameError::TooLarge { .. })) => {
                    prop_assert_eq!(&left[..], &body[..], "read the body of a refused frame");
                }
                (Err(ChannelError::Frame(FrameError::Malformed(_))), Err(FrameError::Malformed(_))) => {
                    prop_assert_eq!(&left[..], &body[len..]);
                }
                (got, want) => prop_assert!(false, "read {got:?}, decode_frame gives {want:?}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_announced_frame_costs_only_the_bytes_that_arrived() {
        // A peer announces the largest frame, sends ten bytes of it and goes quiet: the reader
        // used to reserve all 64 KiB at once, for every such connection, until the deadline.
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(&(MAX_FRAME_LEN as u32).to_be_bytes())
            .await
            .unwrap();
        a.write_all(b"{\"id\":1,\"ms").await.unwrap();
        let mut reader = FramedStream::new(b);
        let err = reader
            .read_message::<Envelope<TunnelMessage>>(Duration::from_secs(3), "saying hello")
            .await
            .unwrap_err();
        assert!(matches!(err, ChannelError::Timeout(..)), "{err}");
        assert!(
            reader.buf.capacity() < MAX_FRAME_LEN / 4,
            "holding {} bytes for 14 received",
            reader.buf.capacity()
        );
    }

    #[tokio::test]
    async fn a_large_frame_is_read_whole_and_its_room_released_after() {
        let big = Envelope {
            id: 1,
            msg: TunnelMessage::Hello {
                key: None,
                name: "n".repeat(MAX_FRAME_LEN - 100),
                proxies: vec![],
            },
        };
        let (a, b) = tokio::io::duplex(4096);
        let mut writer = FramedStream::new(a);
        let mut reader = FramedStream::new(b);
        let write = async {
            writer.write_message(&big).await.unwrap();
            writer
                .write_message(&Envelope {
                    id: 2,
                    msg: TunnelMessage::Ping,
                })
                .await
                .unwrap();
        };
        let read = async {
            let first: Envelope<TunnelMessage> = reader
                .read_message(Duration::from_secs(5), "test")
                .await
                .unwrap();
            let second: Envelope<TunnelMessage> = reader
                .read_message(Duration::from_secs(5), "test")
                .await
                .unwrap();
            (first, second)
        };
        let ((), (first, second)) = tokio::join!(write, read);
        assert_eq!(first, big);
        assert_eq!(second.id, 2);
        assert!(reader.buf.capacity() <= RETAINED_CAPACITY);
    }

    #[tokio::test]
    async fn eof_mid_frame_is_closed() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 10, b'{']).await.unwrap();
        drop(a);
        let mut reader = FramedStream::new(b);
        let err = reader
            .read_message::<Envelope<TunnelMessage>>(Duration::from_secs(5), "test")
            .await
            .unwrap_err();
        assert!(matches!(err, ChannelError::Closed), "{err}");
    }
}
