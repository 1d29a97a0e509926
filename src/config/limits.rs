//! `[limits]`: how much of the hub tunnels and clients may take. Over a limit the hub refuses
//! with a reason (a tunnel is told; a client is closed, or for http answered 503) and counts it
//! in its metrics; nothing it already serves is affected.

use serde::Deserialize;
use toml::Spanned;

use super::error::ConfigError;
use super::source::Source;
use super::values::count_in;

/// The hub's limits, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `tunnels` (default 1000): tunnels connected at once.
    pub tunnels: usize,
    /// `proxies_per_tunnel` (default 64): proxies one tunnel may declare; the rest are
    /// rejected.
    pub proxies_per_tunnel: usize,
    /// `clients_per_tunnel` (default 10000): clients one tunnel serves at once.
    pub clients_per_tunnel: usize,
    /// `clients_per_service` (default 16000): clients one service serves at once.
    pub clients_per_service: usize,
    /// `handshakes` (default 256): TLS handshakes in progress at once on the tunnel listener;
    /// more connections are closed at once.
    pub handshakes: usize,
    /// `links_per_tunnel` (default 16, the most a tunnel's `links` asks for): link connections
    /// one tunnel may hold, counted from its link hello; more are refused.
    pub links_per_tunnel: usize,
    /// `connections_per_address` (default 256): public connections (tcp proxies, http/https
    /// services) open at once from one client address (an IPv6 client by its /64); more are
    /// closed at accept.
    pub connections_per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tunnels: 1000,
            proxies_per_tunnel: 64,
            clients_per_tunnel: 10_000,
            clients_per_service: 16_000,
            handshakes: 256,
            links_per_tunnel: 16,
            connections_per_address: 256,
        }
    }
}

/// `[limits]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    tunnels: Option<Spanned<i64>>,
    proxies_per_tunnel: Option<Spanned<i64>>,
    clients_per_tunnel: Option<Spanned<i64>>,
    clients_per_service: Option<Spanned<i64>>,
    handshakes: Option<Spanned<i64>>,
    links_per_tunnel: Option<Spanned<i64>>,
    connections_per_address: Option<Spanned<i64>>,
}

/// Checks `[limits]`: every value a whole number from 1 to 1,000,000.
pub(super) fn check_limits(
    src: &Source<'_>,
    raw: Option<&RawLimits>,
) -> Result<Limits, ConfigError> {
    let defaults = Limits::default();
    let Some(raw) = raw else {
        return Ok(defaults);
    };
    let value = |field: &Option<Spanned<i64>>, key: &str, default: usize| {
        let what = format!("`{key}` in [limits]");
        src.check_or(field.as_ref(), &what, default, |n| {
            count_in(*n, 1..=1_000_000)
        })
    };
    Ok(Limits {
        tunnels: value(&raw.tunnels, "tunnels", defaults.tunnels)?,
        proxies_per_tunnel: value(
            &raw.proxies_per_tunnel,
            "proxies_per_tunnel",
            defaults.proxies_per_tunnel,
        )?,
        clients_per_tunnel: value(
            &raw.clients_per_tunnel,
            "clients_per_tunnel",
            defaults.clients_per_tunnel,
        )?,
        clients_per_service: value(
            &raw.clients_per_service,
            "clients_per_service",
            defaults.clients_per_service,
        )?,
        handshakes: value(&raw.handshakes, "handshakes", defaults.handshakes)?,
        links_per_tunnel: value(
            &raw.links_per_tunnel,
            "links_per_tunnel",
            defaults.links_per_tunnel,
        )?,
        connections_per_address: value(
            &raw.connections_per_address,
            "connections_per_address",
            defaults.connections_per_address,
        )?,
    })
}
