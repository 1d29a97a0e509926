//! Datagram framing inside a UDP link stream.
//!
//! A `udp` proxy carries one client session per link stream. HTTP/2 DATA frames are a byte
//! stream whose chunk boundaries mean nothing, so every datagram travels as a frame: a 2-byte
//! big-endian length, then that many bytes. A length of 0 is a valid, empty datagram; a length
//! above [`MAX_DATAGRAM_LEN`] is a protocol error. [`DatagramDecoder`] reassembles frames split
//! across DATA chunks and splits chunks that hold several frames; it checks each length before
//! it reserves room for the body, and hands out whole frames without copying when a chunk holds
//! them. [`DatagramBuffer`] is the other way: a socket reads a datagram into it behind room for
//! its header, and it comes out framed with the one copy a datagram needs anyway. No I/O here.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Largest datagram a UDP link stream carries: the largest UDP payload over IPv4.
pub const MAX_DATAGRAM_LEN: usize = 65_507;

/// Size of the length prefix in front of every datagram.
pub const DATAGRAM_HEADER_LEN: usize = 2;

/// Errors framing or unframing datagrams.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DatagramError {
    /// A datagram, or an announced length, above [`MAX_DATAGRAM_LEN`].
    #[error("datagram of {0} bytes exceeds the {MAX_DATAGRAM_LEN}-byte limit")]
    TooLarge(usize),
}

/// The length prefix for a datagram of `len` bytes.
pub fn datagram_header(len: usize) -> Result<[u8; DATAGRAM_HEADER_LEN], DatagramError> {
    if len > MAX_DATAGRAM_LEN {
        return Err(DatagramError::TooLarge(len));
    }
    // Fits: MAX_DATAGRAM_LEN is below u16::MAX.
    Ok((len as u16).to_be_bytes())
}

/// Appends one framed datagram to `out`.
pub fn encode_datagram(datagram: &[u8], out: &mut BytesMut) -> Result<(), DatagramError> {
    let header = datagram_header(datagram.len())?;
    out.reserve(DATAGRAM_HEADER_LEN + datagram.len());
    out.put_slice(&header);
    out.put_slice(datagram);
    Ok(())
}

/// Room for one received UDP datagram behind its frame header, so that framing it costs no
/// more than the one copy out of the receive buffer.
///
/// A socket receives into [`payload`](Self::payload), which is larger than the largest UDP
/// payload (65,527 bytes over IPv6): an oversized datagram is seen whole and refused by
/// [`frame`](Self::frame), never silently truncated.
pub struct DatagramBuffer(Box<[u8]>);

/// Bytes of a [`DatagramBuffer`]: the header, then 64 KiB for the datagram.
const RECEIVE_BUFFER_LEN: usize = DATAGRAM_HEADER_LEN + 64 * 1024;
const _: () = assert!(RECEIVE_BUFFER_LEN - DATAGRAM_HEADER_LEN > 65_527);

impl DatagramBuffer {
    /// A zeroed buffer (one allocation, reused for every datagram of a socket).
    pub fn new() -> Self {
        Self(vec![0u8; RECEIVE_BUFFER_LEN].into_boxed_slice())
    }

    /// Where the socket writes the datagram it receives.
    pub fn payload(&mut self) -> &mut [u8] {
        &mut self.0[DATAGRAM_HEADER_LEN..]
    }

    /// The datagram of `len` bytes just received into [`payload`](Self::payload), framed
    /// (header, then the datagram) in bytes of its own; refused above [`MAX_DATAGRAM_LEN`].
    pub fn frame(&mut self, len: usize) -> Result<Bytes, DatagramError> {
        let header = datagram_header(len)?;
        self.0[..DATAGRAM_HEADER_LEN].copy_from_slice(&header);
        Ok(Bytes::copy_from_slice(&self.0[..DATAGRAM_HEADER_LEN + len]))
    }
}

impl Default for DatagramBuffer {
    fn default() -> Self {
        Self::new()
    }
}

/// Turns the DATA chunks of a UDP link stream back into datagrams.
///
/// Feed a chunk with [`push`](Self::push), then call [`next_datagram`](Self::next_datagram)
/// until it returns `Ok(None)`; only then push the next chunk. Memory is bounded by one
/// partial frame (at most [`MAX_DATAGRAM_LEN`] plus the header) plus the current chunk.
#[derive(Debug, Default)]
pub struct DatagramDecoder {
    /// The chunk being split.
    chunk: Bytes,
    /// A frame whose bytes arrived in more than one chunk, header included.
    partial: BytesMut,
}

impl DatagramDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next chunk of the stream. Call only once the previous chunk is used up
    /// ([`next_datagram`](Self::next_datagram) returned `Ok(None)`).
    pub fn push(&mut self, chunk: Bytes) {
        debug_assert!(
            self.chunk.is_empty(),
            "push before the last chunk was used up"
        );
        self.chunk = chunk;
    }

    /// Whether the stream ended in the middle of a frame (some bytes are still held).
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty() || !self.chunk.is_empty()
    }

    /// The next whole datagram, or `Ok(None)` once the current chunk is used up. After an
    /// error the stream is unusable and should be reset.
    pub fn next_datagram(&mut self) -> Result<Option<Bytes>, DatagramError> {
        if self.partial.is_empty() {
            // Fast path: a whole frame inside the chunk is handed out without copying.
            if let Some(len) = announced_len(&self.chunk)? {
                let end = DATAGRAM_HEADER_LEN + len;
                if self.chunk.len() >= end {
                    let datagram = self.chunk.slice(DATAGRAM_HEADER_LEN..end);
                    self.chunk.advance(end);
                    return Ok(Some(datagram));
                }
                self.partial.reserve(end);
            }
            if self.chunk.is_empty() {
                return Ok(None);
            }
        }
        // Slow path: collect the rest of a split frame into `partial`.
        if self.partial.len() < DATAGRAM_HEADER_LEN {
            let take = (DATAGRAM_HEADER_LEN - self.partial.len()).min(self.chunk.len());
            self.partial.put_slice(&self.chunk.split_to(take));
        }
        let Some(len) = announced_len(&self.partial)? else {
            return Ok(None);
        };
        let end = DATAGRAM_HEADER_LEN + len;
        self.partial.reserve(end - self.partial.len());
        let take = (end - self.partial.len()).min(self.chunk.len());
        self.partial.put_slice(&self.chunk.split_to(take));
        if self.partial.len() < end {
            return Ok(None);
        }
        let mut frame = self.partial.split().freeze();
        frame.advance(DATAGRAM_HEADER_LEN);
        Ok(Some(frame))
    }
}

/// The length a frame starting at `buf` announces, checked; `None` if the header is incomplete.
fn announced_len(buf: &[u8]) -> Result<Option<usize>, DatagramError> {
    let Some(header) = buf.get(..DATAGRAM_HEADER_LEN) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
    if len > MAX_DATAGRAM_LEN {
        return Err(DatagramError::TooLarge(len));
    }
    Ok(Some(len))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::testing;

    fn datagrams() -> Vec<Vec<u8>> {
        vec![
            b"hello".to_vec(),
            Vec::new(),
            (0..=255u8).cycle().take(3000).collect(),
            vec![7u8; 1],
            Vec::new(),
        ]
    }

    fn encode_all(list: &[Vec<u8>]) -> Bytes {
        let mut out = BytesMut::new();
        for d in list {
            encode_datagram(d, &mut out).unwrap();
        }
        out.freeze()
    }

    /// Feeds `chunks` one at a time and collects every datagram.
    fn decode_chunks(chunks: &[Bytes]) -> Result<Vec<Vec<u8>>, DatagramError> {
        let mut decoder = DatagramDecoder::new();
        let mut got = Vec::new();
        for chunk in chunks {
            decoder.push(chunk.clone());
            while let Some(d) = decoder.next_datagram()? {
                got.push(d.to_vec());
            }
        }
        assert!(!decoder.has_partial(), "bytes left over");
        Ok(got)
    }

    #[test]
    fn datagrams_round_trip_in_one_chunk() {
        let list = datagrams();
        assert_eq!(decode_chunks(&[encode_all(&list)]).unwrap(), list);
    }

    #[test]
    fn a_stream_split_at_every_offset_gives_the_same_datagrams() {
        let list = datagrams();
        let wire = encode_all(&list);
        for cut in 0..=wire.len() {
            let chunks = [wire.slice(..cut), wire.slice(cut..)];
            assert_eq!(decode_chunks(&chunks).unwrap(), list, "cut at {cut}");
        }
    }

    #[test]
    fn a_stream_fed_one_byte_at_a_time_gives_the_same_datagrams() {
        let list = datagrams();
        let wire = encode_all(&list);
        let chunks: Vec<Bytes> = (0..wire.len()).map(|i| wire.slice(i..i + 1)).collect();
        assert_eq!(decode_chunks(&chunks).unwrap(), list);
    }

    #[test]
    fn the_largest_datagram_round_trips_across_http2_sized_chunks() {
        let big: Vec<u8> = (0..MAX_DATAGRAM_LEN).map(|i| (i % 251) as u8).collect();
        let list = vec![big, b"after".to_vec()];
        let wire = encode_all(&list);
        let chunks: Vec<Bytes> = wire.chunks(16 * 1024).map(Bytes::copy_from_slice).collect();
        assert_eq!(decode_chunks(&chunks).unwrap(), list);
    }

    #[test]
    fn whole_frames_in_a_chunk_are_not_copied() {
        let wire = encode_all(&[b"abc".to_vec()]);
        let mut decoder = DatagramDecoder::new();
        decoder.push(wire.clone());
        let d = decoder.next_datagram().unwrap().unwrap();
        assert_eq!(d.as_ptr(), wire[DATAGRAM_HEADER_LEN..].as_ptr());
    }

    #[test]
    fn oversized_datagrams_are_refused_on_both_sides() {
        let mut out = BytesMut::new();
        assert_eq!(
            encode_datagram(&vec![0u8; MAX_DATAGRAM_LEN + 1], &mut out),
            Err(DatagramError::TooLarge(MAX_DATAGRAM_LEN + 1))
        );
        assert!(out.is_empty(), "nothing written on error");
        assert!(datagram_header(MAX_DATAGRAM_LEN).is_ok());

        let announced = (MAX_DATAGRAM_LEN as u16 + 1).to_be_bytes();
        let mut decoder = DatagramDecoder::new();
        decoder.push(Bytes::copy_from_slice(&announced));
        assert_eq!(
            decoder.next_datagram(),
            Err(DatagramError::TooLarge(MAX_DATAGRAM_LEN + 1))
        );
        // Refused before any room is reserved for the body, even when the header is split.
        let mut decoder = DatagramDecoder::new();
        decoder.push(Bytes::from_static(&[0xff]));
        assert_eq!(decoder.next_datagram(), Ok(None));
        decoder.push(Bytes::from_static(&[0xff]));
        assert_eq!(
            decoder.next_datagram(),
            Err(DatagramError::TooLarge(0xffff))
        );
        assert!(decoder.partial.capacity() < 1024);
    }

    /// The datagrams a whole stream holds, read the plain way, and how it ends.
    fn reference(mut stream: &[u8]) -> (Vec<Vec<u8>>, Result<bool, DatagramError>) {
        let mut out = Vec::new();
        loop {
            let Some(header) = stream.get(..DATAGRAM_HEADER_LEN) else {
                return (out, Ok(!stream.is_empty()));
            };
            let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
            if len > MAX_DATAGRAM_LEN {
                return (out, Err(DatagramError::TooLarge(len)));
            }
            let Some(body) = stream.get(DATAGRAM_HEADER_LEN..DATAGRAM_HEADER_LEN + len) else {
                return (out, Ok(true));
            };
            out.push(body.to_vec());
            stream = &stream[DATAGRAM_HEADER_LEN + len..];
        }
    }

    /// Feeds `chunks` and collects the datagrams, up to the first error; `Ok(partial)` at the end.
    /// Checks after every call that the decoder holds at most one frame's worth of memory.
    fn decode_all(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Result<bool, DatagramError>) {
        let mut decoder = DatagramDecoder::new();
        let mut out = Vec::new();
        for chunk in chunks {
            decoder.push(Bytes::copy_from_slice(chunk));
            loop {
                let result = decoder.next_datagram();
                assert!(
                    decoder.partial.capacity() <= 2 * (DATAGRAM_HEADER_LEN + MAX_DATAGRAM_LEN),
                    "holding {} bytes",
                    decoder.partial.capacity()
                );
                match result {
                    Ok(Some(d)) => out.push(d.to_vec()),
                    Ok(None) => break,
                    Err(e) => return (out, Err(e)),
                }
            }
        }
        (out, Ok(decoder.has_partial()))
    }

    fn datagram() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            8 => proptest::collection::vec(any::<u8>(), 0..64),
            1 => proptest::collection::vec(any::<u8>(), 0..4096),
            1 => (0..=MAX_DATAGRAM_LEN).prop_map(|len| vec![0xa5; len]),
        ]
    }

    proptest! {
        #![proptest_config(testing::config(128))]

        #[test]
        fn datagrams_round_trip_however_the_stream_is_split(
            list in proptest::collection::vec(datagram(), 0..8),
            cuts in testing::cuts(),
        ) {
            let wire = encode_all(&list);
            let (got, end) = decode_all(&testing::pieces(&wire, &cuts));
            prop_assert_eq!(got, list);
            prop_assert_eq!(end, Ok(false));
        }

        #[test]
        fn arbitrary_bytes_decode_as_the_plain_reading_says_at_any_split(
            stream in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..256),
                // Mostly short lengths, so that several frames follow one another.
                proptest::collection::vec(prop_oneof![4 => 0..8u8, 1 => any::<u8>()], 0..256),
            ],
            cuts in testing::cuts(),
        ) {
            let want = reference(&stream);
            prop_assert_eq!(&decode_all(&[&stream]), &want);
            prop_assert_eq!(&decode_all(&testing::pieces(&stream, &cuts)), &want);
        }
    }

    #[test]
    fn a_received_datagram_comes_out_framed_and_decodes_back() {
        let mut buffer = DatagramBuffer::new();
        buffer.payload()[..5].copy_from_slice(b"hello");
        let frame = buffer.frame(5).unwrap();
        assert_eq!(&frame[..], b"\x00\x05hello");
        // The buffer is reused: a shorter datagram frames only its own bytes.
        buffer.payload()[..2].copy_from_slice(b"hi");
        let second = buffer.frame(2).unwrap();
        assert_eq!(&second[..], b"\x00\x02hi");
        assert_eq!(
            &frame[..],
            b"\x00\x05hello",
            "the first frame owns its bytes"
        );
        assert_eq!(buffer.frame(0).unwrap(), Bytes::from_static(&[0, 0]));
        let mut decoder = DatagramDecoder::new();
        decoder.push(frame);
        assert_eq!(
            decoder.next_datagram(),
            Ok(Some(Bytes::from_static(b"hello")))
        );
    }

    #[test]
    fn a_received_datagram_too_large_to_forward_is_refused_not_truncated() {
        let mut buffer = DatagramBuffer::new();
        assert!(buffer.payload().len() > 65_527, "room for any UDP payload");
        assert_eq!(
            buffer.frame(MAX_DATAGRAM_LEN).unwrap().len(),
            2 + MAX_DATAGRAM_LEN
        );
        assert_eq!(
            buffer.frame(MAX_DATAGRAM_LEN + 1),
            Err(DatagramError::TooLarge(MAX_DATAGRAM_LEN + 1))
        );
    }

    #[test]
    fn a_truncated_stream_is_reported_as_partial() {
        let wire = encode_all(&[b"abcdef".to_vec()]);
        let mut decoder = DatagramDecoder::new();
        decoder.push(wire.slice(..5));
        assert_eq!(decoder.next_datagram(), Ok(None));
        assert!(decoder.has_partial());
    }
}
