//! Setting up a tunnel's proxies (the *claim* step of a control session): claiming a port (tcp,
//! udp) or a hostname (http, https) for each, as the service kind's `expose` does, plus what
//! reconnecting needs. [`claim_all`] takes one hello's proxies in order, up to `[limits]
//! proxies_per_tunnel`; it sends nothing itself (the welcome carries its outcomes).
//!
//! A tunnel that lets the hub choose gets back what its key's lost session held for the same
//! proxy. A claim held for another key is refused with the key name and the time left. A claim
//! a live session of the same key holds may be a dead connection the hub has not noticed yet
//! (the tunnel's network changed and it came back first): that session is asked to prove it
//! is alive ([`TunnelSession::ended_after_probe`]); if it does not answer, it is taken as lost
//! and the new session gets the claim. Every wait of one hello is bounded ([`Waits`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{HttpService, Limits, ServiceKind};
use crate::hub::metrics::Rejection;
use crate::hub::registry::{ExposedProxy, TunnelSession};
use crate::hub::{Shared, http, tcp, udp};
use crate::protocol::{ProxyOutcome, ProxyRequest, Transport};

/// How long a hello may wait for a lost session's listeners to close so that their held
/// ports can be bound again.
const RECLAIM_WAIT: Duration = Duration::from_millis(500);
/// How often a held port is retried meanwhile.
const RECLAIM_POLL: Duration = Duration::from_millis(20);
/// How long one hello may wait, in all, for liveness checks of sessions of its own key.
const PROBE_WAIT: Duration = Duration::from_secs(4);

/// What one hello may still spend waiting for the claims it asks for.
struct Waits {
    /// For a lost session's listeners to close.
    reclaim_until: Instant,
    /// For sessions of the same key to prove they are alive.
    probe_until: Instant,
}

impl Waits {
    fn new() -> Self {
        let now = Instant::now();
        Waits {
            reclaim_until: now + RECLAIM_WAIT,
            probe_until: now + PROBE_WAIT,
        }
    }

    /// Whether `holder`, a live session of the same key as the asking one, ended on a
    /// liveness check (its connection was dead; its claims are now held for the key). Ending
    /// one grants a fresh wait for its listeners to close.
    async fn ended(&mut self, holder: &TunnelSession) -> bool {
        let ended = holder.ended_after_probe(self.probe_until).await;
        if ended {
            self.reclaim_until = Instant::now() + RECLAIM_WAIT;
        }
        ended
    }

    /// Checks a [`twin`] of `session` serving `proxy` on `service`, if there is one: a tunnel
    /// that lets the hub choose does, so that a dead twin's claims come back to it.
    async fn check_twin(
        &mut self,
        shared: &Shared,
        session: &TunnelSession,
        service: &str,
        proxy: &str,
    ) {
        if let Some(twin) = twin(shared, session, service, proxy) {
            self.ended(&twin).await;
        }
    }
}

/// A live session of `session`'s key (not itself) serving a proxy named `proxy` on `service`:
/// perhaps the same tunnel, back before the hub noticed that its old session died.
fn twin(
    shared: &Shared,
    session: &TunnelSession,
    service: &str,
    proxy: &str,
) -> Option<Arc<TunnelSession>> {
    session.key_name.as_ref()?;
    shared.registry.tunnels().into_iter().find(|other| {
        same_key(session, other).is_some()
            && other
                .proxies()
                .iter()
                .any(|p| p.service == service && p.name == proxy)
    })
}

/// `holder`, a session of `session`'s key other than itself, if `holder` is one.
fn same_key<'a>(session: &TunnelSession, holder: &'a TunnelSession) -> Option<&'a TunnelSession> {
    let same =
        holder.id != session.id && holder.key_name.is_some() && holder.key_name == session.key_name;
    same.then_some(holder)
}

/// Sets up the proxies of one hello, in its order: the first `[limits] proxies_per_tunnel` of
/// them as [`expose`] does, the rest refused. Every refusal is counted.
pub(super) async fn claim_all(
    shared: &Arc<Shared>,
    session: &Arc<TunnelSession>,
    proxies: &[ProxyRequest],
    limits: Limits,
) -> Vec<ProxyOutcome> {
    let mut waits = Waits::new();
    let mut outcomes = Vec::with_capacity(proxies.len());
    for (i, request) in proxies.iter().enumerate() {
        let outcome = if i < limits.proxies_per_tunnel {
            expose(shared, session, request, &mut waits).await
        } else {
            ProxyOutcome::Rejected {
                name: request.name.clone(),
                reason: format!(
                    "a tunnel may declare at most {} proxies ([limits] proxies_per_tunnel)",
                    limits.proxies_per_tunnel
                ),
            }
        };
        if let ProxyOutcome::Rejected { .. } = outcome {
            shared.metrics.reject(Rejection::Proxy);
        }
        outcomes.push(outcome);
    }
    outcomes
}

/// Sets up one proxy, or says why not; an accepted one is recorded in the session.
async fn expose(
    shared: &Arc<Shared>,
    session: &Arc<TunnelSession>,
    req: &ProxyRequest,
    waits: &mut Waits,
) -> ProxyOutcome {
    let config = shared.current();
    let Some(service) = config.services.iter().find(|s| s.name == req.service) else {
        return ProxyOutcome::Rejected {
            name: req.name.clone(),
            reason: format!("the hub has no service `{}`", req.service),
        };
    };
    // In a cluster the port or hostname is settled across it first; the request goes on
    // as though the tunnel had asked for what it got.
    let clustered;
    let req = match &shared.cluster {
        Some(cluster) => {
            match super::cluster_claim::claim(shared, cluster, session, service, req).await {
                Ok(settled) => {
                    clustered = settled;
                    &clustered
                }
                Err(reason) => {
                    return ProxyOutcome::Rejected {
                        name: req.name.clone(),
                        reason,
                    };
                }
            }
        }
        None => req,
    };
    let name = &service.name;
    let exposed = match &service.kind {
        ServiceKind::Tcp(tcp_service) => {
            let bind = |req: &ProxyRequest| tcp::expose(shared, session, name, tcp_service, req);
            let at = (Transport::Tcp, tcp_service.listen);
            port_proxy(shared, session, name, at, req, bind, waits).await
        }
        ServiceKind::Udp(udp_service) => {
            let bind = |req: &ProxyRequest| udp::expose(shared, session, name, udp_service, req);
            let at = (Transport::Udp, udp_service.listen);
            port_proxy(shared, session, name, at, req, bind, waits).await
        }
        ServiceKind::Http(http_service) | ServiceKind::Https(http_service) => {
            host_proxy(shared, session, name, http_service, req, waits).await
        }
    };
    match exposed {
        Ok(proxy) => {
            let outcome = ProxyOutcome::Accepted {
                name: req.name.clone(),
                port: proxy.port,
                hostname: proxy.hostname.clone(),
            };
            session.add_proxy(proxy);
            outcome
        }
        Err(reason) => ProxyOutcome::Rejected {
            name: req.name.clone(),
            reason,
        },
    }
}

/// Sets up a tcp or udp proxy with `bind` (the service kind's `expose`), on service `service`
/// whose ports are claimed for `transport` on `listen`.
///
/// A tunnel that lets the hub choose gets back the port its key's lost session held for the
/// same proxy, if it is still held; a held port is retried briefly while the lost session's
/// listener closes. A port a live session of the same key holds is checked: if that session
/// does not answer, it is taken as lost and the port is reclaimed. A port held for another key
/// is refused with who holds it and until when.
async fn port_proxy(
    shared: &Shared,
    session: &TunnelSession,
    service: &str,
    (transport, listen): (Transport, IpAddr),
    req: &ProxyRequest,
    bind: impl Fn(&ProxyRequest) -> Result<u16, String>,
    waits: &mut Waits,
) -> Result<ExposedProxy, String> {
    if req.port.is_none() {
        waits.check_twin(shared, session, service, &req.name).await;
    }
    let held_before = match (req.port, session.key_name.as_deref()) {
        (None, Some(key_name)) => shared
            .registry
            .held_port_of(key_name, service, &req.name, transport)
            .filter(|(ip, _)| *ip == listen)
            .map(|(_, port)| port),
        _ => None,
    };
    let first = ProxyRequest {
        port: held_before.or(req.port),
        ..req.clone()
    };
    let at = (transport, listen);
    let (mut bound, alive_holder) =
        bind_reclaiming(shared, session, at, &first, &bind, waits).await;
    if bound.is_err() && held_before.is_some() {
        // The held port cannot be had after all: let the hub choose, as the tunnel asked.
        bound = bind(req);
    }
    match bound {
        Ok(port) => Ok(ExposedProxy {
            service: service.to_owned(),
            name: req.name.clone(),
            port: Some(port),
            hostname: None,
            claim: Some((transport, (listen, port))),
        }),
        Err(reason) => Err(port_refusal(shared, session, at, req, alive_holder, reason)),
    }
}

/// Binds `req` with `bind`, and tries again while its port is taken by a session of the same
/// key that turns out to be dead, or held for this key by a lost session whose listener is
/// still closing (both within `waits`). Returns the last attempt, and whether a live session
/// of the same key holds the port (it answered its liveness check).
async fn bind_reclaiming(
    shared: &Shared,
    session: &TunnelSession,
    (transport, listen): (Transport, IpAddr),
    req: &ProxyRequest,
    bind: &impl Fn(&ProxyRequest) -> Result<u16, String>,
    waits: &mut Waits,
) -> (Result<u16, String>, bool) {
    let registry = &shared.registry;
    let mut bound = bind(req);
    while bound.is_err()
        && let Some(port) = req.port
    {
        let key = (listen, port);
        match registry.owner(transport, &key) {
            Some(owner) => {
                let Some(holder) = registry.tunnel(&owner) else {
                    break;
                };
                let Some(holder) = same_key(session, &holder) else {
                    break;
                };
                if !waits.ended(holder).await {
                    return (bound, true);
                }
            }
            None => {
                let held_for_us = registry.held(transport, &key).is_some_and(|held| {
                    Some(held.key_name.as_str()) == session.key_name.as_deref()
                });
                if !held_for_us || Instant::now() >= waits.reclaim_until {
                    break;
                }
                tokio::time::sleep(RECLAIM_POLL).await;
            }
        }
        bound = bind(req);
    }
    (bound, false)
}

/// Why a tcp or udp proxy is refused: its port is held for another key (who, and until
/// when), or taken by a live session of the same key (`alive_holder`), or else what binding
/// said (`reason`).
fn port_refusal(
    shared: &Shared,
    session: &TunnelSession,
    (transport, listen): (Transport, IpAddr),
    req: &ProxyRequest,
    alive_holder: bool,
    reason: String,
) -> String {
    let key_name = session.key_name.as_deref();
    let held = req
        .port
        .and_then(|port| Some((port, shared.registry.held(transport, &(listen, port))?)));
    let what = |port: u16| match transport {
        Transport::Tcp => format!("port {port}"),
        Transport::Udp => format!("udp port {port}"),
    };
    match (held, req.port) {
        (Some((port, held)), _) if Some(held.key_name.as_str()) != key_name => {
            held.refusal(&what(port), Instant::now())
        }
        (_, Some(port)) if alive_holder => {
            still_connected(&format!("{} is taken by", what(port)), key_name)
        }
        _ => reason,
    }
}

/// Why a claim is refused when a live session of the same key holds it and answered; `taken`
/// is "port 5000 is taken by" or the like.
fn still_connected(taken: &str, key_name: Option<&str>) -> String {
    format!(
        "{taken} another tunnel of key `{}` that is still connected (it answered a liveness \
         check); run one tunnel per key and proxy, or ask for another",
        key_name.unwrap_or("-")
    )
}

/// Sets up an http/https proxy. A tunnel that lets the hub pick its hostname gets back the one
/// its key's lost session held for the same proxy, if it is still held. A hostname live
/// sessions of the same key hold is checked as for ports: if none of them answers, they are
/// taken as lost and the hostname is claimed again.
async fn host_proxy(
    shared: &Arc<Shared>,
    session: &Arc<TunnelSession>,
    service: &str,
    config: &HttpService,
    req: &ProxyRequest,
    waits: &mut Waits,
) -> Result<ExposedProxy, String> {
    if req.hostname.is_none() {
        waits.check_twin(shared, session, service, &req.name).await;
    }
    let held = match (&req.hostname, session.key_name.as_deref()) {
        (None, Some(key_name)) => shared.hosts.held_hostname_of(key_name, service, &req.name),
        _ => None,
    };
    let wanted = held
        .clone()
        .or_else(|| Some(full_hostname(req.hostname.as_deref()?, &config.domain)));
    let first = ProxyRequest {
        hostname: wanted.clone(),
        ..req.clone()
    };
    let mut claimed = http::expose(shared, session, service, config, &first);
    if claimed.is_err()
        && let Some(host) = &wanted
        && let Some(all_ended) = same_key_holders_ended(shared, session, service, host, waits).await
    {
        claimed = match all_ended {
            true => http::expose(shared, session, service, config, &first),
            false => Err(still_connected(
                &format!("hostname {host} is in use by"),
                session.key_name.as_deref(),
            )),
        };
    }
    if claimed.is_err() && held.is_some() {
        // The held hostname cannot be had after all: let the hub pick, as the tunnel asked.
        claimed = http::expose(shared, session, service, config, req);
    }
    claimed.map(|host| ExposedProxy {
        service: service.to_owned(),
        name: req.name.clone(),
        port: None,
        hostname: Some(host),
        claim: None,
    })
}

/// The hostname a tunnel asks for, in lower case: `name` under the service's `domain`, or
/// `name` itself when it has a dot (a full hostname, where the service allows it).
fn full_hostname(name: &str, domain: &str) -> String {
    let name = name.to_ascii_lowercase();
    match name.contains('.') {
        true => name,
        false => format!("{name}.{domain}"),
    }
}

/// Whether the sessions holding `host` on `service`, all of `session`'s key, ended on their
/// liveness checks (each of them did). `None` when nobody holds it, or some session of
/// another key does: then there is nothing to check.
async fn same_key_holders_ended(
    shared: &Shared,
    session: &TunnelSession,
    service: &str,
    host: &str,
    waits: &mut Waits,
) -> Option<bool> {
    let holders = shared.hosts.sessions(service, host);
    let ours: Vec<_> = holders
        .iter()
        .filter_map(|h| same_key(session, h))
        .collect();
    if ours.is_empty() || ours.len() != holders.len() {
        return None;
    }
    let mut all_ended = true;
    for holder in ours {
        all_ended &= waits.ended(holder).await;
    }
    Some(all_ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_hostname_goes_under_the_services_domain_and_a_full_one_stays() {
        let domain = "tunnel.example.com";
        assert_eq!(full_hostname("MyApp", domain), "myapp.tunnel.example.com");
        assert_eq!(full_hostname("App.Example.org", domain), "app.example.org");
    }
}
