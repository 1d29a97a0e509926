//! Length-prefixed frames: a 4-byte big-endian body length, then a JSON body.
//!
//! [`decode_frame`] checks the announced length against [`MAX_FRAME_LEN`] before it looks at, or
//! reserves room for, the body, so a hostile length prefix costs nothing. It returns `Ok(None)`
//! while the buffer holds less than one whole frame.

use bytes::{Buf, BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use super::{FRAME_HEADER_LEN, MAX_FRAME_LEN};

/// Errors encoding or decoding a frame.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The announced or encoded body is larger than the protocol allows.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced or encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Appends one frame carrying `msg` to `out`.
pub fn encode_frame<T: Serialize>(msg: &T, out: &mut BytesMut) -> Result<(), FrameError> {
    let start = out.len();
    out.put_u32(0);
    serde_json::to_writer((&mut *out).writer(), msg)?;
    let len = out.len() - start - FRAME_HEADER_LEN;
    if len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    // The length fits: MAX_FRAME_LEN is far below u32::MAX.
    out[start..start + FRAME_HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Removes and decodes one whole frame from the front of `buf`, or returns `Ok(None)` when the
/// buffer does not hold one yet. On error the buffer is left as it was; the connection should be
/// closed.
pub fn decode_frame<T: DeserializeOwned>(buf: &mut BytesMut) -> Result<Option<T>, FrameError> {
    let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    let mut len_bytes = [0u8; FRAME_HEADER_LEN];
    len_bytes.copy_from_slice(header);
    let len = u32::from_be_bytes(len_bytes) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let Some(body) = buf.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
        // Make room for the rest of this frame only; it is bounded by MAX_FRAME_LEN.
        buf.reserve(FRAME_HEADER_LEN + len - buf.len());
        return Ok(None);
    };
    let msg = serde_json::from_slice(body)?;
    buf.advance(FRAME_HEADER_LEN + len);
    Ok(Some(msg))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::testing;
    use crate::protocol::{Envelope, HubMessage, TunnelMessage};

    fn ping(id: u64) -> Envelope<TunnelMessage> {
        Envelope {
            id,
            msg: TunnelMessage::Ping,
        }
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut whole = BytesMut::new();
        encode_frame(&ping(5), &mut whole).unwrap();
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            let got: Option<Envelope<TunnelMessage>> = decode_frame(&mut part).unwrap();
            assert!(
                got.is_none(),
                "decoded a frame from {cut} of {} bytes",
                whole.len()
            );
            assert_eq!(part.len(), cut, "a partial frame must not be consumed");
        }
    }

    #[test]
    fn two_frames_in_one_buffer_decode_in_order() {
        let mut buf = BytesMut::new();
        encode_frame(&ping(1), &mut buf).unwrap();
        encode_frame(&ping(2), &mut buf).unwrap();
        let a: Envelope<TunnelMessage> = decode_frame(&mut buf).unwrap().unwrap();
        let b: Envelope<TunnelMessage> = decode_frame(&mut buf).unwrap().unwrap();
        assert_eq!((a.id, b.id), (1, 2));
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_length_is_rejected_before_allocating() {
        let mut buf = BytesMut::with_capacity(8);
        buf.put_u32(u32::MAX);
        buf.put_slice(b"{}");
        let capacity_before = buf.capacity();
        let err = decode_frame::<Envelope<TunnelMessage>>(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len, .. } if len == u32::MAX as usize));
        assert_eq!(
            buf.capacity(),
            capacity_before,
            "no room may be reserved for a rejected frame"
        );
    }

    #[test]
    fn limit_is_inclusive() {
        let mut buf = BytesMut::new();
        buf.put_u32(MAX_FRAME_LEN as u32);
        assert!(
            decode_frame::<Envelope<TunnelMessage>>(&mut buf)
                .unwrap()
                .is_none()
        );
        let mut buf = BytesMut::new();
        buf.put_u32(MAX_FRAME_LEN as u32 + 1);
        assert!(decode_frame::<Envelope<TunnelMessage>>(&mut buf).is_err());
    }

    #[test]
    fn garbage_body_is_an_error_not_a_panic() {
        for body in [
            &b"\xff\xfe\x00"[..],
            b"{",
            b"[]",
            b"{\"id\":1}",
            b"{\"id\":1,\"msg\":{\"type\":\"nope\"}}",
        ] {
            let mut buf = BytesMut::new();
            buf.put_u32(body.len() as u32);
            buf.put_slice(body);
            assert!(matches!(
                decode_frame::<Envelope<TunnelMessage>>(&mut buf),
                Err(FrameError::Malformed(_))
            ));
        }
    }

    #[test]
    fn encoding_a_too_large_message_fails_and_leaves_the_buffer_unchanged() {
        let mut buf = BytesMut::from(&b"prefix"[..]);
        let huge = Envelope {
            id: 1,
            msg: TunnelMessage::Hello {
                key: None,
                name: "x".repeat(MAX_FRAME_LEN),
                proxies: vec![],
            },
        };
        assert!(matches!(
            encode_frame(&huge, &mut buf),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(&buf[..], b"prefix");
    }

    /// How decoding a stream ended, for comparing two decodings of the same bytes.
    #[derive(Debug, PartialEq)]
    enum Outcome<M> {
        Frame(M),
        TooLarge(usize),
        Malformed,
    }

    /// Feeds `chunks` into one buffer, decoding after each chunk, up to the first error. Returns
    /// the outcomes and how many bytes were left in the buffer.
    fn decode_chunks<M: DeserializeOwned>(chunks: &[&[u8]]) -> (Vec<Outcome<M>>, usize) {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match decode_frame::<M>(&mut buf) {
                    Ok(Some(msg)) => out.push(Outcome::Frame(msg)),
                    Ok(None) => break,
                    Err(FrameError::TooLarge { len, .. }) => {
                        out.push(Outcome::TooLarge(len));
                        return (out, buf.len());
                    }
                    Err(FrameError::Malformed(_)) => {
                        out.push(Outcome::Malformed);
                        return (out, buf.len());
                    }
                }
            }
        }
        (out, buf.len())
    }

    /// Bytes that look like the JSON of a message, so decoding gets past the first byte.
    fn json_like() -> impl Strategy<Value = Vec<u8>> {
        const TOKENS: &[&[u8]] = &[
            b"{",
            b"}",
            b"[",
            b"]",
            b":",
            b",",
            b"\"id\"",
            b"\"msg\"",
            b"\"type\"",
            b"\"ping\"",
            b"\"hello\"",
            b"\"proxies\"",
            b"\"name\"",
            b"null",
            b"7",
            b"-1",
            b"\"\\u0000\"",
        ];
        let token = proptest::sample::select(TOKENS);
        proptest::collection::vec(token, 0..40).prop_map(|tokens| tokens.concat())
    }

    proptest! {
        #![proptest_config(testing::config(256))]

        #[test]
        fn every_tunnel_envelope_round_trips(env in testing::envelope(testing::tunnel_message())) {
            let mut buf = BytesMut::new();
            encode_frame(&env, &mut buf).unwrap();
            let back: Option<Envelope<TunnelMessage>> = decode_frame(&mut buf).unwrap();
            prop_assert_eq!(back, Some(env));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn every_hub_envelope_round_trips(env in testing::envelope(testing::hub_message())) {
            let mut buf = BytesMut::new();
            encode_frame(&env, &mut buf).unwrap();
            let back: Option<Envelope<HubMessage>> = decode_frame(&mut buf).unwrap();
            prop_assert_eq!(back, Some(env));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn a_stream_decodes_the_same_however_it_is_split(
            envs in proptest::collection::vec(testing::envelope(testing::tunnel_message()), 0..4),
            tail in prop_oneof![json_like(), proptest::collection::vec(any::<u8>(), 0..16)],
            tail_len in any::<Option<u32>>(),
            cuts in testing::cuts(),
        ) {
            let mut wire = BytesMut::new();
            for env in &envs {
                encode_frame(env, &mut wire).unwrap();
            }
            if let Some(len) = tail_len {
                wire.put_u32(len % (2 * MAX_FRAME_LEN as u32));
            }
            wire.put_slice(&tail);
            let whole = decode_chunks::<Envelope<TunnelMessage>>(&[&wire]);
            let chunked = decode_chunks::<Envelope<TunnelMessage>>(&testing::pieces(&wire, &cuts));
            for (env, got) in envs.iter().zip(&whole.0) {
                prop_assert_eq!(&Outcome::Frame(env.clone()), got);
            }
            prop_assert_eq!(&whole.0, &chunked.0);
            let failed = matches!(whole.0.last(), Some(Outcome::TooLarge(_) | Outcome::Malformed));
            if !failed {
                // Without an error both read every byte, and keep the same partial frame.
                prop_assert_eq!(whole.1, chunked.1);
            }
        }

        #[test]
        fn arbitrary_bytes_are_a_frame_an_error_or_a_wait_within_the_limit(
            len in prop_oneof![0..=(MAX_FRAME_LEN as u32 + 1), any::<u32>()],
            body in prop_oneof![json_like(), proptest::collection::vec(any::<u8>(), 0..64)],
        ) {
            let mut buf = BytesMut::new();
            buf.put_u32(len);
            buf.put_slice(&body);
            let before = buf.clone();
            let capacity = buf.capacity();
            let len = len as usize;
            match decode_frame::<Envelope<HubMessage>>(&mut buf) {
                Ok(Some(_)) => {
                    prop_assert!(len <= MAX_FRAME_LEN && body.len() >= len);
                    prop_assert_eq!(&buf[..], &before[FRAME_HEADER_LEN + len..]);
                }
                Ok(None) => {
                    prop_assert!(len <= MAX_FRAME_LEN && body.len() < len);
                    prop_assert_eq!(&buf, &before);
                    // Room for this one frame at most, never for what a length beyond it claims.
                    prop_assert!(buf.capacity() <= 2 * (FRAME_HEADER_LEN + MAX_FRAME_LEN));
                }
                Err(FrameError::TooLarge { len: got, .. }) => {
                    prop_assert!(len > MAX_FRAME_LEN);
                    prop_assert_eq!(got, len);
                    prop_assert_eq!(buf.capacity(), capacity);
                    prop_assert_eq!(&buf, &before);
                }
                Err(FrameError::Malformed(_)) => {
                    prop_assert!(len <= MAX_FRAME_LEN && body.len() >= len);
                    prop_assert_eq!(&buf, &before);
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic sweep over byte patterns; the fuzz target covers the rest.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut bytes = Vec::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 64) as usize;
            for i in 0..len {
                bytes.push((state >> (i % 56)) as u8);
            }
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = decode_frame::<Envelope<TunnelMessage>>(&mut buf);
        }
    }
}
