//! Arbitrary bytes as the opening of a connection, read through `channel::FramedStream` the way
//! the hub reads a tunnel (preamble, then the first frame) and the way a tunnel reads the hub
//! (the hub's preamble answer, then its first frame), with reads split at arbitrary points.
//!
//! Input: one seed byte for the read boundaries, then the stream. Invariants checked:
//! - nothing panics;
//! - the preamble parsers agree with `Preamble::decode` / `HubPreamble::decode` on the first six
//!   bytes, and a parsed preamble re-encodes to bytes that parse to the same value;
//! - the frame `FramedStream` reads is the one `decode_frame` finds in the same bytes, with the
//!   same error when there is none;
//! - it reads exactly the preamble and one frame: every later byte is still on the stream, and
//!   an announced length over the limit is refused after reading only the length.
#![no_main]

use std::fmt::Debug;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use tunnelize::channel::{ChannelError, FramedStream};
use tunnelize::protocol::{
    Envelope, FRAME_HEADER_LEN, FrameError, HubMessage, HubPreamble, PREAMBLE_LEN, Preamble,
    PreambleError, TunnelMessage, decode_frame,
};
use tunnelize_fuzz::{ChunkedReader, NO_DEADLINE, runtime, split};

/// Reads one message after a preamble the caller has already checked, and compares it with
/// `decode_frame` on the same bytes.
async fn check_first_frame<M>(mut framed: FramedStream<ChunkedReader>, after_preamble: &[u8])
where
    M: DeserializeOwned + PartialEq + Debug,
{
    let got = framed.read_message::<M>(NO_DEADLINE, "fuzzing").await;
    let mut buf = BytesMut::from(after_preamble);
    let expected = decode_frame::<M>(&mut buf);
    let announced = after_preamble
        .get(..FRAME_HEADER_LEN)
        .map(|h| u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize);
    // How much of the stream the frame reader may have consumed.
    let consumed = match (&got, &expected) {
        (Ok(msg), Ok(Some(want))) => {
            assert_eq!(msg, want);
            FRAME_HEADER_LEN + announced.expect("a frame has a header")
        }
        // The stream ended inside the frame: all of it was read.
        (Err(ChannelError::Closed), Ok(None)) => after_preamble.len(),
        (
            Err(ChannelError::Frame(FrameError::TooLarge { len: a, .. })),
            Err(FrameError::TooLarge { len: b, .. }),
        ) => {
            assert_eq!(a, b);
            FRAME_HEADER_LEN
        }
        (Err(ChannelError::Frame(FrameError::Malformed(_))), Err(FrameError::Malformed(_))) => {
            FRAME_HEADER_LEN + announced.expect("a frame has a header")
        }
        (got, expected) => panic!("FramedStream read {got:?}, decode_frame found {expected:?}"),
    };
    assert_eq!(
        framed.into_inner().remaining(),
        &after_preamble[consumed..],
        "read more than one frame"
    );
}

fn check_preamble(
    got: &Result<Preamble, ChannelError>,
    first: Option<&[u8; PREAMBLE_LEN]>,
) -> bool {
    match (got, first) {
        (Ok(p), Some(bytes)) => {
            assert_eq!(Preamble::decode(bytes).as_ref(), Ok(p));
            assert_eq!(
                &p.encode(),
                bytes,
                "a tunnel preamble re-encodes to its bytes"
            );
            true
        }
        (Err(ChannelError::Preamble(e)), Some(bytes)) => {
            assert_eq!(Preamble::decode(bytes).as_ref(), Err(e));
            false
        }
        (Err(ChannelError::Closed), None) => false,
        (got, first) => panic!("read_preamble gave {got:?} for {first:?}"),
    }
}

fn check_hub_preamble(
    got: &Result<HubPreamble, ChannelError>,
    first: Option<&[u8; PREAMBLE_LEN]>,
) -> bool {
    match (got, first) {
        (Ok(p), Some(bytes)) => {
            assert_eq!(HubPreamble::decode(bytes).as_ref(), Ok(p));
            assert_eq!(HubPreamble::decode(&p.encode()).as_ref(), Ok(p));
            true
        }
        (Err(ChannelError::Preamble(e)), Some(bytes)) => {
            assert_eq!(*e, PreambleError::BadMagic);
            assert_eq!(HubPreamble::decode(bytes).as_ref(), Err(e));
            false
        }
        (Err(ChannelError::Closed), None) => false,
        (got, first) => panic!("read_hub_preamble gave {got:?} for {first:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let chunks = split(seed, stream);
    let first: Option<&[u8; PREAMBLE_LEN]> =
        stream.get(..PREAMBLE_LEN).and_then(|b| b.try_into().ok());
    let after = stream.get(PREAMBLE_LEN..).unwrap_or_default();
    runtime().block_on(async {
        // As the hub reads a tunnel.
        let mut framed = FramedStream::new(ChunkedReader::new(&chunks));
        let preamble = framed.read_preamble(NO_DEADLINE).await;
        if check_preamble(&preamble, first) {
            check_first_frame::<Envelope<TunnelMessage>>(framed, after).await;
        }
        // As a tunnel reads the hub.
        let mut framed = FramedStream::new(ChunkedReader::new(&chunks));
        let preamble = framed.read_hub_preamble(NO_DEADLINE).await;
        if check_hub_preamble(&preamble, first) {
            check_first_frame::<Envelope<HubMessage>>(framed, after).await;
        }
    });
});
