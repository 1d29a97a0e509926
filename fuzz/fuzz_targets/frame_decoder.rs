//! Arbitrary bytes into the control-frame decoder, as the hub reads a tunnel and as a tunnel
//! reads the hub.
//!
//! Input: one seed byte that picks the chunk boundaries (see `tunnelize_fuzz::split`), then the
//! byte stream. Invariants checked:
//! - decoding never panics, and gives the same frames and the same error whether the stream
//!   arrives whole or in chunks;
//! - an announced length over `MAX_FRAME_LEN` is `TooLarge`, reserves nothing, and a length
//!   within it never makes the decoder reserve room beyond one frame;
//! - a frame is consumed exactly (header plus announced body), a partial one not at all;
//! - a decoded message re-encodes, and decodes back to the same value;
//! - decoding one frame holds at most a bounded multiple of the frame's size in heap
//!   (`PEAK_PER_FRAME_BYTE`).
#![no_main]

use std::fmt::Debug;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tunnelize::protocol::{
    Envelope, FRAME_HEADER_LEN, FrameError, HubMessage, MAX_FRAME_LEN, TunnelMessage, decode_frame,
    encode_frame,
};
use tunnelize_fuzz::{measure_peak, split};

/// Most heap one `decode_frame` call may hold at once, per byte of the frame it decodes, plus a
/// constant for small frames. Decoding is synchronous, so this transient is per runtime worker
/// thread, not per connection. Measured worst cases for a 64 KiB frame (serde buffers the fields
/// of an internally tagged message, unknown ones included, before it knows the type): about
/// 24x for `[0,0,...]` in an unknown field, 45x for `[{"":0},...]`, 19x for a `hello` with
/// 2,600 empty proxies. The bound catches anything worse than that, e.g. a quadratic.
const PEAK_PER_FRAME_BYTE: usize = 64;
const PEAK_SLACK: usize = 16 * 1024;

#[derive(Debug, PartialEq)]
enum Outcome<M> {
    Frame(M),
    TooLarge(usize),
    Malformed,
}

fn announced(buf: &[u8]) -> Option<usize> {
    let header: [u8; FRAME_HEADER_LEN] = buf.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
    Some(u32::from_be_bytes(header) as usize)
}

/// Feeds `chunks` into one buffer, decoding after each, until the end or the first error.
fn decode_stream<M>(chunks: &[&[u8]]) -> Vec<Outcome<M>>
where
    M: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let mut buf = BytesMut::new();
    let mut outcomes = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let len_before = buf.len();
            let cap_before = buf.capacity();
            let announced = announced(&buf);
            let (result, peak) = measure_peak(|| decode_frame::<M>(&mut buf));
            let frame_len = announced.map_or(0, |len| FRAME_HEADER_LEN + len.min(MAX_FRAME_LEN));
            assert!(
                peak <= PEAK_PER_FRAME_BYTE * frame_len + PEAK_SLACK,
                "decoding a {frame_len}-byte frame held {peak} bytes of heap"
            );
            match result {
                Ok(Some(msg)) => {
                    let len = announced.expect("a decoded frame had a header");
                    assert!(len <= MAX_FRAME_LEN);
                    assert_eq!(len_before - buf.len(), FRAME_HEADER_LEN + len);
                    outcomes.push(Outcome::Frame(msg));
                }
                Ok(None) => {
                    assert_eq!(
                        buf.len(),
                        len_before,
                        "a partial frame must not be consumed"
                    );
                    if let Some(len) = announced {
                        assert!(len <= MAX_FRAME_LEN);
                        assert!(
                            len_before < FRAME_HEADER_LEN + len,
                            "a whole frame was left"
                        );
                        if buf.capacity() > cap_before {
                            assert!(
                                buf.capacity() <= 2 * (FRAME_HEADER_LEN + MAX_FRAME_LEN),
                                "reserved {} bytes for a frame of {len}",
                                buf.capacity()
                            );
                        }
                    } else {
                        assert!(len_before < FRAME_HEADER_LEN);
                    }
                    break;
                }
                Err(FrameError::TooLarge { len, max }) => {
                    assert_eq!(max, MAX_FRAME_LEN);
                    assert_eq!(Some(len), announced);
                    assert!(len > MAX_FRAME_LEN);
                    assert_eq!(
                        buf.capacity(),
                        cap_before,
                        "room reserved for a refused frame"
                    );
                    assert_eq!(buf.len(), len_before);
                    outcomes.push(Outcome::TooLarge(len));
                    return outcomes;
                }
                Err(FrameError::Malformed(_)) => {
                    let len = announced.expect("a malformed frame had a header");
                    assert!(
                        len_before >= FRAME_HEADER_LEN + len,
                        "judged before complete"
                    );
                    assert_eq!(
                        buf.len(),
                        len_before,
                        "an error must leave the buffer as it was"
                    );
                    outcomes.push(Outcome::Malformed);
                    return outcomes;
                }
            }
        }
    }
    outcomes
}

/// A decoded message serializes again, and that decodes to the same value, through serde_json
/// and through a frame.
fn re_encodes<M>(msg: &M)
where
    M: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let json = serde_json::to_vec(msg).expect("a decoded message serializes");
    let back: M = serde_json::from_slice(&json).expect("a re-encoded message decodes");
    assert_eq!(&back, msg);
    let mut buf = BytesMut::new();
    match encode_frame(msg, &mut buf) {
        Ok(()) => {
            assert_eq!(buf.len(), FRAME_HEADER_LEN + json.len());
            let again = decode_frame::<M>(&mut buf).expect("re-encoded frame decodes");
            assert_eq!(again.as_ref(), Some(msg));
            assert!(buf.is_empty());
        }
        // Re-encoding may grow a message (omitted optional fields come back as `null`).
        Err(FrameError::TooLarge { len, .. }) => {
            assert_eq!(len, json.len());
            assert!(len > MAX_FRAME_LEN);
            assert!(
                buf.is_empty(),
                "a refused frame must not be left half-written"
            );
        }
        Err(e) => panic!("re-encoding a decoded message failed: {e}"),
    }
}

fn check<M>(seed: u8, stream: &[u8])
where
    M: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let whole = decode_stream::<M>(&[stream]);
    let chunked = decode_stream::<M>(&split(seed, stream));
    assert_eq!(whole, chunked, "the chunk boundaries changed the outcome");
    for outcome in &whole {
        if let Outcome::Frame(msg) = outcome {
            re_encodes(msg);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    check::<Envelope<TunnelMessage>>(seed, stream);
    check::<Envelope<HubMessage>>(seed, stream);
});
