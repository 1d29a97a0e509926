//! The first bytes of every hub-tunnel connection, right after the TLS handshake.
//!
//! The tunnel sends `MAGIC`, its protocol version and the channel kind; the hub answers with
//! `MAGIC`, the version it speaks and whether it accepts. A hub never guesses at a version it does
//! not know: it answers "unsupported" and closes, and the tunnel reports both versions.

use thiserror::Error;

/// Identifies a tunnelize connection.
pub const MAGIC: [u8; 4] = *b"TNLZ";

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;

/// Length of a [`Preamble`] and of a [`HubPreamble`] on the wire.
pub const PREAMBLE_LEN: usize = 6;

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// The control channel: authentication, proxy registration, heartbeats.
    Control,
    /// A link connection: after its handshake it carries multiplexed link streams.
    Link,
    /// A hub-to-hub link of a cluster: another hub forwards the clients it got for a tunnel
    /// this hub holds, one stream each.
    Peer,
}

impl Channel {
    fn to_byte(self) -> u8 {
        match self {
            Channel::Control => 1,
            Channel::Link => 2,
            Channel::Peer => 3,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Channel::Control),
            2 => Some(Channel::Link),
            3 => Some(Channel::Peer),
            _ => None,
        }
    }
}

/// Errors reading a preamble.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PreambleError {
    /// The peer is not speaking tunnelize at all.
    #[error("not a tunnelize peer (bad magic bytes)")]
    BadMagic,
    /// The channel byte is unknown.
    #[error("unknown channel kind {0}")]
    UnknownChannel(u8),
}

/// The tunnel's opening bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    /// Protocol version the tunnel speaks.
    pub version: u8,
    /// What the connection is for.
    pub channel: Channel,
}

impl Preamble {
    /// A preamble for this build's protocol version.
    pub fn new(channel: Channel) -> Self {
        Preamble {
            version: PROTOCOL_VERSION,
            channel,
        }
    }

    /// Wire form.
    pub fn encode(&self) -> [u8; PREAMBLE_LEN] {
        let mut out = [0u8; PREAMBLE_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = self.version;
        out[5] = self.channel.to_byte();
        out
    }

    /// Parses the wire form. The version is returned as sent; the caller decides if it speaks it.
    pub fn decode(bytes: &[u8; PREAMBLE_LEN]) -> Result<Self, PreambleError> {
        if bytes[..4] != MAGIC {
            return Err(PreambleError::BadMagic);
        }
        let channel =
            Channel::from_byte(bytes[5]).ok_or(PreambleError::UnknownChannel(bytes[5]))?;
        Ok(Preamble {
            version: bytes[4],
            channel,
        })
    }
}

/// The hub's answer to a [`Preamble`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubPreamble {
    /// Protocol version the hub speaks.
    pub version: u8,
    /// Whether the hub accepts the tunnel's version; when false the hub closes next.
    pub accepted: bool,
}

impl HubPreamble {
    /// Wire form.
    pub fn encode(&self) -> [u8; PREAMBLE_LEN] {
        let mut out = [0u8; PREAMBLE_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = self.version;
        out[5] = u8::from(self.accepted);
        out
    }

    /// Parses the wire form.
    pub fn decode(bytes: &[u8; PREAMBLE_LEN]) -> Result<Self, PreambleError> {
        if bytes[..4] != MAGIC {
            return Err(PreambleError::BadMagic);
        }
        Ok(HubPreamble {
            version: bytes[4],
            accepted: bytes[5] == 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::testing;

    #[test]
    fn preamble_round_trips_for_both_channels() {
        for channel in [Channel::Control, Channel::Link, Channel::Peer] {
            let p = Preamble::new(channel);
            assert_eq!(Preamble::decode(&p.encode()), Ok(p));
        }
    }

    #[test]
    fn hub_preamble_round_trips() {
        for accepted in [true, false] {
            let p = HubPreamble {
                version: 7,
                accepted,
            };
            assert_eq!(HubPreamble::decode(&p.encode()), Ok(p));
        }
    }

    #[test]
    fn wrong_magic_is_rejected() {
        assert_eq!(Preamble::decode(b"GET / "), Err(PreambleError::BadMagic));
        assert_eq!(HubPreamble::decode(b"SSH-2."), Err(PreambleError::BadMagic));
    }

    #[test]
    fn unknown_channel_is_rejected() {
        let mut bytes = Preamble::new(Channel::Control).encode();
        bytes[5] = 9;
        assert_eq!(
            Preamble::decode(&bytes),
            Err(PreambleError::UnknownChannel(9))
        );
    }

    proptest! {
        #![proptest_config(testing::config(256))]

        #[test]
        fn any_six_bytes_parse_to_a_preamble_that_re_encodes_to_them_or_to_an_error(
            bytes in prop_oneof![
                any::<[u8; PREAMBLE_LEN]>(),
                (any::<u8>(), any::<u8>()).prop_map(|(v, c)| {
                    let mut b = [0u8; PREAMBLE_LEN];
                    b[..4].copy_from_slice(&MAGIC);
                    b[4] = v;
                    b[5] = c % 4;
                    b
                }),
            ],
        ) {
            match Preamble::decode(&bytes) {
                Ok(p) => prop_assert_eq!(p.encode(), bytes),
                Err(PreambleError::BadMagic) => prop_assert_ne!(&bytes[..4], &MAGIC[..]),
                Err(PreambleError::UnknownChannel(c)) => {
                    prop_assert_eq!(&bytes[..4], &MAGIC[..]);
                    prop_assert_eq!(c, bytes[5]);
                    prop_assert!(!matches!(c, 1 | 2));
                }
            }
            match HubPreamble::decode(&bytes) {
                Ok(p) => {
                    prop_assert_eq!(p.version, bytes[4]);
                    // Only 1 accepts; any other answer byte is a refusal.
                    prop_assert_eq!(p.accepted, bytes[5] == 1);
                    prop_assert_eq!(HubPreamble::decode(&p.encode()), Ok(p));
                }
                Err(e) => {
                    prop_assert_eq!(e, PreambleError::BadMagic);
                    prop_assert_ne!(&bytes[..4], &MAGIC[..]);
                }
            }
        }

        #[test]
        fn every_preamble_round_trips(
            version in any::<u8>(),
            link in any::<bool>(),
            accepted in any::<bool>(),
        ) {
            let channel = if link { Channel::Link } else { Channel::Control };
            let p = Preamble { version, channel };
            prop_assert_eq!(Preamble::decode(&p.encode()), Ok(p));
            let h = HubPreamble { version, accepted };
            prop_assert_eq!(HubPreamble::decode(&h.encode()), Ok(h));
        }
    }

    #[test]
    fn other_versions_are_reported_not_rejected_by_the_parser() {
        let mut bytes = Preamble::new(Channel::Link).encode();
        bytes[4] = 200;
        assert_eq!(Preamble::decode(&bytes).map(|p| p.version), Ok(200));
    }
}
