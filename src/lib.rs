//! tunnelize: a self-hosted tunnel service.
//!
//! A **hub** on a public machine owns public endpoints (services); a **tunnel** behind NAT
//! connects out to the hub over TLS, authenticates with a key, declares the proxies it offers,
//! and forwards every public client the hub hands it to a local target.
//!
//! Layout, by responsibility:
//! - [`protocol`]: the wire format (preamble, frames, messages, link stream heads, datagram
//!   framing) and the control session's steps as a state machine ([`protocol::session`]); no
//!   I/O.
//! - [`channel`]: framed message I/O with deadlines, on top of [`protocol`].
//! - [`mux`]: HTTP/2 settings for link connections, the byte pump for link streams and the
//!   datagram reader of udp proxies.
//! - [`config`]: strict TOML configuration for both daemons.
//! - [`tls`]: certificates, fingerprints and hub verification.
//! - [`hub`]: the hub daemon: registry, control channels, link connections, and one module per
//!   service kind: [`hub::tcp`], [`hub::udp`], and [`hub::http`] (http/https: the reverse proxy
//!   that routes by Host, the largest part of the hub).
//! - [`tunnel`]: the tunnel daemon (control client, reconnects, link workers forwarding streams
//!   and udp sessions to targets, reload, `tunnelize init`'s bootstrap).
//! - [`admin`]: the monitoring/control API (model, server, client, Prometheus text).
//! - [`demo`]: `tunnelize demo`, everything on loopback with an embedded default.
//! - [`daemon`]: process concerns (logging, service-manager notifications, memory).
//! - [`secret`]: secrets that never print.
//!
//! docs/architecture.md has the task trees of both daemons, docs/protocol.md the wire format.

#![deny(unsafe_code)]
#![warn(missing_docs)]
// The module docs are the maintainers' map and link to crate-internal modules on purpose; they
// resolve in `cargo doc --document-private-items`, which is how to read them.
#![allow(rustdoc::private_intra_doc_links)]
// A std lock held across an await can deadlock the runtime; make the lint a hard error.
#![deny(clippy::await_holding_lock)]

pub mod admin;
pub mod channel;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod hub;
pub(crate) mod mux;
pub mod protocol;
pub mod secret;
pub mod tls;
pub mod tunnel;

/// Process exit codes shared by the binaries.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// A failure a restart may cure (a port in use, a lost hub, ...).
    pub const FAILURE: i32 = 1;
    /// Bad command-line usage.
    pub const USAGE: i32 = 2;
    /// The hub refused the tunnel's key.
    pub const AUTH_FAILED: i32 = 4;
    /// The configuration is at fault (`EX_CONFIG` of sysexits.h): the file, or a file it names,
    /// is missing, unreadable or invalid. Restarting cannot help, so the units say
    /// `RestartPreventExitStatus=78`.
    pub const CONFIG: i32 = 78;
}
