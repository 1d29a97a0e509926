//! Arbitrary bytes as the body of a UDP link stream, into `DatagramDecoder`, in chunks split at
//! arbitrary points (HTTP/2 DATA frame boundaries mean nothing).
//!
//! Input: one seed byte for the chunk boundaries, then the stream. Invariants checked:
//! - nothing panics;
//! - the datagrams and the error are those a plain reading of the whole stream finds, however
//!   it is chunked, and `has_partial` says whether a frame was left unfinished;
//! - an announced length over `MAX_DATAGRAM_LEN` is an error, and no call holds more heap than
//!   one largest frame (plus the allocator's doubling) beyond the chunk it was given;
//! - the datagrams re-encode to exactly the bytes they were decoded from.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tunnelize::protocol::{
    DATAGRAM_HEADER_LEN, DatagramDecoder, DatagramError, MAX_DATAGRAM_LEN, encode_datagram,
};
use tunnelize_fuzz::{measure_peak, split};

/// What the stream holds, read the obvious way: its datagrams, then how it ends.
#[derive(Debug, PartialEq)]
enum End {
    /// Every byte was part of a whole frame.
    Clean,
    /// The stream stopped inside a frame.
    Partial,
    /// A frame announced this length, over the limit.
    TooLarge(usize),
}

fn reference(mut stream: &[u8]) -> (Vec<&[u8]>, End, usize) {
    let mut datagrams = Vec::new();
    let mut used = 0;
    loop {
        let Some(header) = stream.get(..DATAGRAM_HEADER_LEN) else {
            let end = if stream.is_empty() {
                End::Clean
            } else {
                End::Partial
            };
            return (datagrams, end, used);
        };
        let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
        if len > MAX_DATAGRAM_LEN {
            return (datagrams, End::TooLarge(len), used);
        }
        let Some(body) = stream.get(DATAGRAM_HEADER_LEN..DATAGRAM_HEADER_LEN + len) else {
            return (datagrams, End::Partial, used);
        };
        datagrams.push(body);
        used += DATAGRAM_HEADER_LEN + len;
        stream = &stream[DATAGRAM_HEADER_LEN + len..];
    }
}

fn decode(chunks: &[&[u8]]) -> (Vec<Bytes>, End) {
    let mut decoder = DatagramDecoder::new();
    let mut got = Vec::new();
    for chunk in chunks {
        decoder.push(Bytes::copy_from_slice(chunk));
        loop {
            let (result, peak) = measure_peak(|| decoder.next_datagram());
            assert!(
                peak <= 2 * (DATAGRAM_HEADER_LEN + MAX_DATAGRAM_LEN) + 64,
                "one call held {peak} bytes of heap"
            );
            match result {
                Ok(Some(datagram)) => {
                    assert!(datagram.len() <= MAX_DATAGRAM_LEN);
                    got.push(datagram);
                }
                Ok(None) => break,
                Err(DatagramError::TooLarge(len)) => {
                    assert!(len > MAX_DATAGRAM_LEN);
                    return (got, End::TooLarge(len));
                }
            }
        }
    }
    let end = if decoder.has_partial() {
        End::Partial
    } else {
        End::Clean
    };
    (got, end)
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let (want, want_end, used) = reference(stream);
    for chunks in [vec![stream], split(seed, stream)] {
        let (got, end) = decode(&chunks);
        assert_eq!(end, want_end);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(&g[..], *w);
        }
        let mut wire = BytesMut::new();
        for datagram in &got {
            encode_datagram(datagram, &mut wire).expect("a decoded datagram is within the limit");
        }
        assert_eq!(
            &wire[..],
            &stream[..used],
            "datagrams re-encode to their bytes"
        );
    }
});
