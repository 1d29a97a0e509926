//! What the property tests of the protocol and of [`crate::channel`] share: their settings and
//! strategies for every message. Test builds only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use uuid::Uuid;

use super::{
    BasicAuth, Envelope, HubMessage, ProxyOutcome, ProxyRequest, RefusalCode, TunnelMessage,
};
use crate::secret::Secret;

/// Settings for a property test of `cases` cases, small enough that the whole set runs in a
/// few seconds in a debug build. `PROPTEST_CASES` overrides the count for a longer run.
///
/// Nothing is ever written to the source tree: `failure_persistence` is off, so a failure
/// prints its shrunk input and that input becomes a named regression unit test instead.
/// Shrinking is bounded too, so a failing test still ends promptly in CI.
pub(crate) fn config(cases: u32) -> Config {
    let defaults = Config::default();
    Config {
        cases: match std::env::var_os("PROPTEST_CASES") {
            Some(_) => defaults.cases,
            None => cases,
        },
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..defaults
    }
}

/// Any text up to `max` characters, control characters and non-ASCII included.
pub(crate) fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..=max).prop_map(String::from_iter)
}

/// Any socket address, IPv6 scope ids included (flow info is not part of an address's text).
pub(crate) fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))),
        (any::<u128>(), any::<u16>(), any::<u32>()).prop_map(|(ip, port, scope)| {
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, scope))
        }),
        // IPv4-mapped IPv6 addresses print in a form of their own.
        (any::<u32>(), any::<u16>()).prop_map(|(ip, port)| {
            SocketAddr::new(IpAddr::V6(Ipv4Addr::from(ip).to_ipv6_mapped()), port)
        }),
    ]
}

fn secret() -> impl Strategy<Value = Secret> {
    text(40).prop_map(Secret::new)
}

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

fn proxy_request() -> impl Strategy<Value = ProxyRequest> {
    (
        (text(16), text(16), any::<Option<u16>>()),
        (
            proptest::option::of(text(32)),
            proptest::option::of(text(16)),
            proptest::option::of((text(16), text(64))),
            any::<Option<u64>>(),
        ),
    )
        .prop_map(
            |((name, service, port), (hostname, group, auth, max_body))| ProxyRequest {
                name,
                service,
                port,
                hostname,
                group,
                basic_auth: auth.map(|(user, password_hash)| BasicAuth {
                    user,
                    password_hash,
                }),
                max_body,
            },
        )
}

fn proxy_outcome() -> impl Strategy<Value = ProxyOutcome> {
    prop_oneof![
        (
            text(16),
            any::<Option<u16>>(),
            proptest::option::of(text(40))
        )
            .prop_map(|(name, port, hostname)| ProxyOutcome::Accepted {
                name,
                port,
                hostname
            }),
        (text(16), text(80)).prop_map(|(name, reason)| ProxyOutcome::Rejected { name, reason }),
    ]
}

fn refusal_code() -> impl Strategy<Value = RefusalCode> {
    prop_oneof![
        Just(RefusalCode::AuthFailed),
        Just(RefusalCode::BadRequest),
        Just(RefusalCode::Limit),
        Just(RefusalCode::ShuttingDown),
        Just(RefusalCode::LockedOut),
    ]
}

/// Any message a tunnel sends.
pub(crate) fn tunnel_message() -> impl Strategy<Value = TunnelMessage> {
    prop_oneof![
        (
            proptest::option::of(secret()),
            text(24),
            proptest::collection::vec(proxy_request(), 0..6)
        )
            .prop_map(|(key, name, proxies)| TunnelMessage::Hello { key, name, proxies }),
        (uuid(), secret())
            .prop_map(|(tunnel_id, token)| TunnelMessage::LinkHello { tunnel_id, token }),
        Just(TunnelMessage::Ping),
        Just(TunnelMessage::Pong),
    ]
}

/// Any message a hub sends.
pub(crate) fn hub_message() -> impl Strategy<Value = HubMessage> {
    prop_oneof![
        (
            uuid(),
            secret(),
            any::<u64>(),
            proptest::collection::vec(proxy_outcome(), 0..6)
        )
            .prop_map(|(tunnel_id, link_token, heartbeat_secs, proxies)| {
                HubMessage::Welcome {
                    tunnel_id,
                    link_token,
                    heartbeat_secs,
                    proxies,
                }
            }),
        Just(HubMessage::LinkAccepted),
        (refusal_code(), text(80), any::<Option<u64>>()).prop_map(
            |(code, message, retry_after_secs)| HubMessage::Refused {
                code,
                message,
                retry_after_secs
            }
        ),
        Just(HubMessage::Pong),
        Just(HubMessage::Ping),
        text(80).prop_map(|reason| HubMessage::Goodbye { reason }),
    ]
}

/// Any envelope around a message from `msg`.
pub(crate) fn envelope<M: std::fmt::Debug>(
    msg: impl Strategy<Value = M>,
) -> impl Strategy<Value = Envelope<M>> {
    (any::<u64>(), msg).prop_map(|(id, msg)| Envelope { id, msg })
}

/// Where to cut a stream into chunks, whatever its length: see [`pieces`].
pub(crate) fn cuts() -> impl Strategy<Value = Vec<Index>> {
    proptest::collection::vec(any::<Index>(), 0..8)
}

/// `bytes` cut into chunks at `cuts` (each picks an offset in `0..=bytes.len()`); empty chunks
/// included, since a reader may be handed one.
pub(crate) fn pieces<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut offsets: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    offsets.sort_unstable();
    let mut out = Vec::with_capacity(offsets.len() + 1);
    let mut start = 0;
    for cut in offsets {
        out.push(&bytes[start..cut]);
        start = cut;
    }
    out.push(&bytes[start..]);
    out
}
