//! Applying a new configuration to a running hub (`SIGHUP`, `tunnelizectl reload`).
//!
//! What changes: tunnel keys, services (added, removed, changed), limits, and the
//! certificates of https services and of the tunnel listener (their files are re-read on
//! every reload, so a renewal at the same path takes effect). What survives: every live connection of what did not
//! change. Tunnels whose key was removed or changed, or that have a proxy on a removed or
//! changed service, are disconnected with the reason (they reconnect at once and get what the
//! new configuration allows). The hub's own `listen`, `state_dir`, timeouts and `[admin]` take
//! effect at the next start; the report says so when they differ.
//!
//! Everything that can fail (certificates, new listeners) is prepared before anything is
//! touched, so a reload that fails leaves the hub exactly as it was — except for a changed
//! http/https service that keeps its address, which has to be unbound before it can be bound
//! again; if binding it fails then, the report says so.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use super::{Shared, http};
use crate::config::{HttpService, HubConfig, ServiceConfig, ServiceKind};
use crate::tls::Identity;

/// An http/https service accept loop that is running.
pub(crate) struct RunningService {
    stop: tokio_util::sync::CancellationToken,
    done: tokio::task::JoinHandle<()>,
    /// Its certificates, replaced in place when a reload re-reads them.
    acceptor: http::SharedAcceptor,
}

/// Starts the accept loop of an http/https service and records it.
pub(crate) fn start_service(
    shared: &Arc<Shared>,
    name: String,
    config: HttpService,
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
) {
    if let Ok(addr) = listener.local_addr() {
        shared.service_addrs.insert(&name, addr);
    }
    let stop = shared.stop.child_token();
    let acceptor: http::SharedAcceptor = Arc::new(parking_lot::RwLock::new(acceptor));
    let done = shared.tasks.spawn(http::serve(
        shared.clone(),
        name.clone(),
        config,
        listener,
        acceptor.clone(),
        stop.clone(),
    ));
    shared
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            name,
            RunningService {
                stop,
                done,
                acceptor,
            },
        );
}

/// Stops a running http/https service's accept loop and waits until its port is unbound.
/// Connections it accepted go on.
async fn stop_service(shared: &Shared, name: &str) {
    let running = shared
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(name);
    shared.service_addrs.remove(name);
    if let Some(running) = running {
        running.stop.cancel();
        let _ = running.done.await;
    }
}

fn http_config(service: &ServiceConfig) -> Option<(&HttpService, bool)> {
    match &service.kind {
        ServiceKind::Http(h) => Some((h, false)),
        ServiceKind::Https(h) => Some((h, true)),
        _ => None,
    }
}

/// An http/https service of the new configuration, ready to start.
struct Prepared {
    name: String,
    config: HttpService,
    acceptor: Option<TlsAcceptor>,
    /// Bound already (new services); `None` for changed ones, bound once the old is gone.
    listener: Option<TcpListener>,
}

/// Applies `new` to the hub; returns a summary for people, or why nothing was changed.
pub(crate) async fn reload(shared: &Arc<Shared>, new: HubConfig) -> Result<String, String> {
    // Judged by the address the hub is bound to, which a reload does not move.
    let bound = shared.config.listen;
    if new.allow_no_auth && !bound.ip().is_loopback() {
        return Err(format!(
            "allow_no_auth needs a loopback listener, and the hub listens on {bound} until it \
             restarts"
        ));
    }
    if new.keys.is_empty() && !new.allow_no_auth {
        return Err("no tunnel key is configured; add a [[keys]] entry".into());
    }
    let old = shared.current();
    let old_services: HashMap<&str, &ServiceConfig> =
        old.services.iter().map(|s| (s.name.as_str(), s)).collect();
    let new_services: HashMap<&str, &ServiceConfig> =
        new.services.iter().map(|s| (s.name.as_str(), s)).collect();
    let removed: Vec<&str> = old_services
        .keys()
        .filter(|n| !new_services.contains_key(*n))
        .copied()
        .collect();
    let changed: Vec<&str> = new_services
        .iter()
        .filter(|(n, s)| old_services.get(*n).is_some_and(|o| o != *s))
        .map(|(n, _)| *n)
        .collect();
    let added: Vec<&str> = new_services
        .keys()
        .filter(|n| !old_services.contains_key(*n))
        .copied()
        .collect();

    // Prepare everything that can fail.
    // Certificate files are re-read on every reload: a renewal keeps their paths.
    let tunnel_acceptor = match &new.tls {
        Some(files) => Some(
            Identity::from_files(files)
                .and_then(|id| id.server_config())
                .map(TlsAcceptor::from)
                .map_err(|e| format!("[tls]: {e}"))?,
        ),
        _ => None,
    };
    // Unchanged https services get their certificate files re-read too, swapped in place.
    let mut renewed = Vec::new();
    for (name, service) in &new_services {
        if let Some((config, true)) = http_config(service)
            && !added.contains(name)
            && !changed.contains(name)
        {
            let acceptor = http::sni::acceptor(&config.certificates)
                .map_err(|e| format!("service `{name}`: {e}"))?;
            renewed.push(((*name).to_owned(), acceptor));
        }
    }
    let mut prepared = Vec::new();
    for name in added.iter().chain(&changed) {
        let Some((config, tls)) = new_services.get(name).and_then(|s| http_config(s)) else {
            continue;
        };
        let acceptor = match tls {
            true => Some(
                http::sni::acceptor(&config.certificates)
                    .map_err(|e| format!("service `{name}`: {e}"))?,
            ),
            false => None,
        };
        // A changed service that keeps its address can only be bound once the old loop let
        // go of it; every other one is bound now, so a port in use refuses the reload.
        let same_address = old_services
            .get(name)
            .and_then(|s| http_config(s))
            .is_some_and(|(old_config, _)| old_config.listen == config.listen);
        let listener = match !same_address {
            true => Some(TcpListener::bind(config.listen).await.map_err(|e| {
                format!(
                    "service `{name}`: cannot listen on {}: {e}; pick another `listen` address",
                    config.listen
                )
            })?),
            false => None,
        };
        prepared.push(Prepared {
            name: (*name).to_owned(),
            config: config.clone(),
            acceptor,
            listener,
        });
    }

    // From here on, apply.
    let mut notes = Vec::new();
    *shared.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new.clone());
    if let Some(acceptor) = tunnel_acceptor {
        *shared
            .tunnel_acceptor
            .write()
            .unwrap_or_else(|p| p.into_inner()) = acceptor;
        notes.push("certificates re-read".to_owned());
    }
    {
        let running = shared.running.lock().unwrap_or_else(|p| p.into_inner());
        for (name, acceptor) in renewed {
            if let Some(service) = running.get(&name) {
                *service.acceptor.write() = Some(acceptor);
            }
        }
    }
    let disconnected = disconnect_affected(shared, &old, &new, &removed, &changed);
    for name in removed.iter().chain(&changed) {
        if old_services
            .get(name)
            .and_then(|s| http_config(s))
            .is_some()
        {
            stop_service(shared, name).await;
        }
    }
    for p in prepared {
        let listener = match p.listener {
            Some(listener) => listener,
            None => match TcpListener::bind(p.config.listen).await {
                Ok(listener) => listener,
                Err(e) => {
                    let problem = format!(
                        "service `{}` could not be bound again on {}: {e}",
                        p.name, p.config.listen
                    );
                    warn!("{problem}");
                    notes.push(problem);
                    continue;
                }
            },
        };
        start_service(shared, p.name, p.config, listener, p.acceptor);
    }
    for (what, differs) in [
        ("listen", new.listen != old.listen),
        ("state_dir", new.state_dir != old.state_dir),
        ("[admin]", new.admin != old.admin),
        (
            "lockout settings",
            (new.lockout_failures, new.lockout_duration)
                != (old.lockout_failures, old.lockout_duration),
        ),
        (
            "[limits] handshakes",
            new.limits.handshakes != old.limits.handshakes,
        ),
        (
            "shutdown_timeout",
            new.shutdown_timeout != old.shutdown_timeout,
        ),
        ("removing [tls]", new.tls.is_none() && old.tls.is_some()),
        (
            "timeouts",
            (
                new.heartbeat_interval,
                new.handshake_timeout,
                new.link_timeout,
                new.idle_timeout,
            ) != (
                old.heartbeat_interval,
                old.handshake_timeout,
                old.link_timeout,
                old.idle_timeout,
            ),
        ),
    ] {
        if differs {
            notes.push(format!(
                "{what} changed: takes effect when the hub restarts"
            ));
        }
    }
    let summary = format!(
        "reloaded: {} services ({} added, {} removed, {} changed), {} keys, {} tunnels \
         disconnected{}",
        new.services.len(),
        added.len(),
        removed.len(),
        changed.len(),
        new.keys.len(),
        disconnected,
        if notes.is_empty() {
            String::new()
        } else {
            format!("; {}", notes.join("; "))
        }
    );
    info!("{summary}");
    Ok(summary)
}

/// Disconnects tunnels the new configuration no longer admits as they are; returns how many.
fn disconnect_affected(
    shared: &Shared,
    old: &HubConfig,
    new: &HubConfig,
    removed: &[&str],
    changed: &[&str],
) -> usize {
    let key_gone = |name: &Option<String>| match name {
        // Authenticated without a key: only allowed while allow_no_auth stays on.
        None => !new.allow_no_auth,
        Some(name) => {
            let before = old.keys.iter().find(|k| &k.name == name);
            let after = new.keys.iter().find(|k| &k.name == name);
            match (before, after) {
                (Some(b), Some(a)) => b.key != a.key || b.hostnames != a.hostnames,
                _ => true,
            }
        }
    };
    let mut count = 0;
    for tunnel in shared.registry.tunnels() {
        let reason =
            if key_gone(&tunnel.key_name) {
                Some("its key was removed or changed in the hub's configuration")
            } else if tunnel.proxies().iter().any(|p| {
                removed.contains(&p.service.as_str()) || changed.contains(&p.service.as_str())
            }) {
                Some("a service it uses was removed or changed in the hub's configuration")
            } else {
                None
            };
        if let Some(reason) = reason {
            shared.hosts.remove_tunnel(&tunnel.id);
            shared.registry.remove(&tunnel.id, reason);
            count += 1;
        }
    }
    count
}

/// Bound addresses of the running http/https services.
#[derive(Debug, Default)]
pub(crate) struct ServiceAddrs(std::sync::Mutex<HashMap<String, SocketAddr>>);

impl ServiceAddrs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SocketAddr>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The address service `name` listens on.
    pub fn get(&self, name: &str) -> Option<SocketAddr> {
        self.lock().get(name).copied()
    }

    fn insert(&self, name: &str, addr: SocketAddr) {
        self.lock().insert(name.to_owned(), addr);
    }

    fn remove(&self, name: &str) {
        self.lock().remove(name);
    }
}
