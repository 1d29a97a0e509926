//! The wire protocol between hub and tunnel, with no I/O.
//!
//! This module owns the byte layout of everything a hub and a tunnel say to each other: the
//! preamble that opens every connection (magic and version), the length-prefixed control frames,
//! the control messages, the headers that open a link stream, the framing of datagrams inside UDP
//! link streams, and the steps of a control session ([`session`], a state machine that the
//! I/O code drives). It never touches a socket: the I/O code in [`crate::channel`] calls it, and
//! its functions can be unit-tested and fuzzed on plain byte slices. `docs/protocol.md` is the
//! prose description of the same thing.

mod datagram;
mod frame;
mod link;
mod message;
mod preamble;
pub mod session;
#[cfg(test)]
pub(crate) mod testing;

pub use datagram::{
    DATAGRAM_HEADER_LEN, DatagramBuffer, DatagramDecoder, DatagramError, MAX_DATAGRAM_LEN,
    datagram_header, encode_datagram,
};
pub use frame::{FrameError, decode_frame, encode_frame};
pub use link::{LinkHeaderError, LinkOpen, LinkRefusal, PeerOpen, Transport};
pub use message::{
    BasicAuth, Envelope, HubMessage, ProxyOutcome, ProxyRequest, RefusalCode, TunnelMessage,
};
pub use preamble::{
    Channel, HubPreamble, MAGIC, PREAMBLE_LEN, PROTOCOL_VERSION, Preamble, PreambleError,
};

use std::time::Duration;

/// Largest control frame body, in bytes. Checked before any allocation.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Size of the length prefix in front of every frame.
pub const FRAME_HEADER_LEN: usize = 4;

/// How long either side waits for the peer's preamble and first message.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Heartbeat interval a hub announces when its configuration does not say otherwise.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// A peer that sends nothing for this many heartbeat intervals is considered dead.
pub const HEARTBEAT_MISSES: u32 = 3;
