//! Setting up a tunnel's proxies: claiming a port (tcp, udp) or a hostname (http, https) for
//! each, as the service kind's `expose` does, plus what reconnecting needs.
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

use crate::config::{HttpService, ServiceKind};
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
pub(super) struct Waits {
    /// For a lost session's listeners to close.
    reclaim_until: Instant,
    /// For sessions of the same key to prove they are alive.
    probe_until: Instant,
}

impl Waits {
    pub(super) fn new() -> Self {
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
}

/// A live session of `session`'s key (not itself) serving a proxy named `proxy` on `service`:
/// perhaps the same tunnel, back before the hub noticed that its old session died. A tunnel
/// that lets the hub choose checks it, so that a dead one's claims come back to it.
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

/// Sets up one proxy, or says why not; an accepted one is recorded in the session.
pub(super) async fn expose(
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
    let registry = &shared.registry;
    let key_name = session.key_name.as_deref();
    if req.port.is_none()
        && let Some(twin) = twin(shared, session, service, &req.name)
    {
        waits.ended(&twin).await;
    }
    let held_before = match (req.port, key_name) {
        (None, Some(key_name)) => registry
            .held_port_of(key_name, service, &req.name, transport)
            .filter(|(ip, _)| *ip == listen)
            .map(|(_, port)| port),
        _ => None,
    };
    let first = ProxyRequest {
        port: held_before.or(req.port),
        ..req.clone()
    };
    let mut bound = bind(&first);
    let mut alive_holder = false;
    while bound.is_err()
        && let Some(port) = first.port
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
                    alive_holder = true;
                    break;
                }
            }
            None => {
                let held_for_us = registry
                    .held(transport, &key)
                    .is_some_and(|held| Some(held.key_name.as_str()) == key_name);
                if !held_for_us || Instant::now() >= waits.reclaim_until {
                    break;
                }
                tokio::time::sleep(RECLAIM_POLL).await;
            }
        }
        bound = bind(&first);
    }
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
        Err(reason) => {
            let held = req
                .port
                .and_then(|port| Some((port, registry.held(transport, &(listen, port))?)));
            let what = |port: u16| match transport {
                Transport::Tcp => format!("port {port}"),
                Transport::Udp => format!("udp port {port}"),
            };
            Err(match (held, req.port) {
                (Some((port, held)), _) if Some(held.key_name.as_str()) != key_name => {
                    held.refusal(&what(port), Instant::now())
                }
                (_, Some(port)) if alive_holder => {
                    still_connected(&format!("{} is taken by", what(port)), key_name)
                }
                _ => reason,
            })
        }
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
    if req.hostname.is_none()
        && let Some(twin) = twin(shared, session, service, &req.name)
    {
        waits.ended(&twin).await;
    }
    let held = match (&req.hostname, session.key_name.as_deref()) {
        (None, Some(key_name)) => shared.hosts.held_hostname_of(key_name, service, &req.name),
        _ => None,
    };
    let wanted = held.clone().or_else(|| {
        let name = req.hostname.as_deref()?.to_ascii_lowercase();
        Some(match name.contains('.') {
            true => name,
            false => format!("{name}.{}", config.domain),
        })
    });
    let first = ProxyRequest {
        hostname: wanted.clone(),
        ..req.clone()
    };
    let mut claimed = http::expose(shared, session, service, config, &first);
    if claimed.is_err()
        && let Some(host) = &wanted
    {
        let holders = shared.hosts.sessions(service, host);
        let ours: Vec<_> = holders
            .iter()
            .filter_map(|h| same_key(session, h))
            .collect();
        if !ours.is_empty() && ours.len() == holders.len() {
            let mut all_ended = true;
            for holder in ours {
                all_ended &= waits.ended(holder).await;
            }
            claimed = match all_ended {
                true => http::expose(shared, session, service, config, &first),
                false => Err(still_connected(
                    &format!("hostname {host} is in use by"),
                    session.key_name.as_deref(),
                )),
            };
        }
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
