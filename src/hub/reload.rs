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
//! A reload runs in three steps. `plan` compares the two configurations and nothing else
//! (unit-tested without sockets): which services are added, removed or changed, which accept
//! loops stop and start, which keys keep their tunnels. `prepare` does everything that can
//! fail — loads certificates, binds new listeners — before anything is touched, so a reload
//! that fails leaves the hub exactly as it was. `apply` swaps the configuration in, then
//! certificates, disconnects the tunnels the plan no longer admits and stops and starts
//! services; it cannot fail, except for a changed http/https service that keeps its address,
//! which has to be unbound before it can be bound again: if binding it fails then, the report
//! says so.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
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
    let running = RunningService {
        stop,
        done,
        acceptor,
    };
    shared.running.lock().insert(name, running);
}

/// Stops a running http/https service's accept loop and waits until its port is unbound.
/// Connections it accepted go on.
async fn stop_service(shared: &Shared, name: &str) {
    let running = shared.running.lock().remove(name);
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

/// Applies `new` to the hub; returns a summary for people, or why nothing was changed.
pub(crate) async fn reload(shared: &Arc<Shared>, new: HubConfig) -> Result<String, String> {
    // Judged by the address the hub is bound to, which a reload does not move.
    admissible(&new, shared.config.listen)?;
    let old = shared.current();
    let new = Arc::new(new);
    let plan = plan(&old, &new);
    let prepared = prepare(&plan, &new).await?;
    let summary = apply(shared, &new, &plan, prepared).await;
    info!("{summary}");
    Ok(summary)
}

/// Refuses a configuration the running hub cannot take at all.
fn admissible(new: &HubConfig, bound: SocketAddr) -> Result<(), String> {
    if new.allow_no_auth && !bound.ip().is_loopback() {
        return Err(format!(
            "allow_no_auth needs a loopback listener, and the hub listens on {bound} until it \
             restarts"
        ));
    }
    if new.keys.is_empty() && !new.allow_no_auth {
        return Err("no tunnel key is configured; add a [[keys]] entry".into());
    }
    Ok(())
}

/// What a new configuration changes, worked out from the old and the new one alone: no socket,
/// no file, no live tunnel.
#[derive(Debug, PartialEq, Eq)]
struct Plan<'a> {
    /// Services only the new configuration has, in its order.
    added: Vec<&'a str>,
    /// Services only the old configuration had.
    removed: Vec<&'a str>,
    /// Services in both whose settings differ.
    changed: Vec<&'a str>,
    /// Running http/https accept loops to stop: of removed or changed services.
    stop: Vec<&'a str>,
    /// http/https services to start: added or changed ones.
    start: Vec<Start<'a>>,
    /// Unchanged https services, whose certificate files are re-read (a renewal keeps paths).
    renew: Vec<(&'a str, &'a HttpService)>,
    /// Keys whose tunnels stay: the same key and hostnames before and after.
    keys_kept: Vec<&'a str>,
    /// Whether tunnels that presented no key stay (`allow_no_auth` is still on).
    keyless_kept: bool,
    /// Settings that differ but take effect only when the hub restarts.
    at_restart: Vec<&'static str>,
}

/// An http/https service of the new configuration to start.
#[derive(Debug, PartialEq, Eq)]
struct Start<'a> {
    name: &'a str,
    config: &'a HttpService,
    /// `https`: its certificates are loaded first.
    tls: bool,
    /// Bound before anything changes, so a port in use refuses the reload. Not for a changed
    /// service that keeps its address: that one is bound once its old loop let go of it.
    bind_first: bool,
}

/// Compares the running configuration with a new one.
fn plan<'a>(old: &'a HubConfig, new: &'a HubConfig) -> Plan<'a> {
    let changed: Vec<&str> = new
        .services
        .iter()
        .filter(|s| service(old, &s.name).is_some_and(|before| before != *s))
        .map(|s| s.name.as_str())
        .collect();
    let (added, removed) = (only_in(new, old), only_in(old, new));
    let old_http = |name: &str| service(old, name).and_then(http_config);
    let stop = removed.iter().chain(&changed).copied();
    let stop = stop.filter(|name| old_http(name).is_some());
    let start = added.iter().chain(&changed).filter_map(|&name| {
        let (config, tls) = service(new, name).and_then(http_config)?;
        let same_address = old_http(name).is_some_and(|(before, _)| before.listen == config.listen);
        let bind_first = !same_address;
        Some(Start {
            name,
            config,
            tls,
            bind_first,
        })
    });
    let unchanged = new
        .services
        .iter()
        .filter(|s| service(old, &s.name) == Some(*s));
    let renew = unchanged.filter_map(|s| match http_config(s) {
        Some((config, true)) => Some((s.name.as_str(), config)),
        _ => None,
    });
    Plan {
        stop: stop.collect(),
        start: start.collect(),
        renew: renew.collect(),
        keys_kept: keys_kept(old, new),
        keyless_kept: new.allow_no_auth,
        at_restart: at_restart(old, new),
        added,
        removed,
        changed,
    }
}

/// Service `name` of `config`.
fn service<'a>(config: &'a HubConfig, name: &str) -> Option<&'a ServiceConfig> {
    config.services.iter().find(|s| s.name == name)
}

/// Names of the services `config` has and `other` has not, in `config`'s order.
fn only_in<'a>(config: &'a HubConfig, other: &HubConfig) -> Vec<&'a str> {
    let names = config.services.iter().map(|s| s.name.as_str());
    names
        .filter(|name| service(other, name).is_none())
        .collect()
}

/// Names of the keys a tunnel may keep its session with: in both, with the same key and
/// hostnames.
fn keys_kept<'a>(old: &'a HubConfig, new: &HubConfig) -> Vec<&'a str> {
    old.keys
        .iter()
        .filter(|before| {
            new.keys.iter().any(|after| {
                after.name == before.name
                    && after.key == before.key
                    && after.hostnames == before.hostnames
            })
        })
        .map(|k| k.name.as_str())
        .collect()
}

/// The settings a reload does not apply that differ, named as the report names them.
fn at_restart(old: &HubConfig, new: &HubConfig) -> Vec<&'static str> {
    let timeouts = |c: &HubConfig| {
        let t = (c.heartbeat_interval, c.handshake_timeout);
        (t, c.link_timeout, c.idle_timeout)
    };
    [
        ("listen", new.listen != old.listen),
        ("state_dir", new.state_dir != old.state_dir),
        ("[cluster]", new.cluster != old.cluster),
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
        ("timeouts", timeouts(new) != timeouts(old)),
    ]
    .into_iter()
    .filter_map(|(what, differs)| differs.then_some(what))
    .collect()
}

impl Plan<'_> {
    /// Why a live tunnel must go under the new configuration, if it must: it authenticated
    /// with `key_name` (`None`: no key) and has proxies on `services`.
    fn disconnect_reason<'s>(
        &self,
        key_name: Option<&str>,
        mut services: impl Iterator<Item = &'s str>,
    ) -> Option<&'static str> {
        let key_kept = match key_name {
            None => self.keyless_kept,
            Some(name) => self.keys_kept.contains(&name),
        };
        if !key_kept {
            Some("its key was removed or changed in the hub's configuration")
        } else if services.any(|s| self.removed.contains(&s) || self.changed.contains(&s)) {
            Some("a service it uses was removed or changed in the hub's configuration")
        } else {
            None
        }
    }

    /// The report of the reload: counts, then `notes` (what happened while applying), then
    /// the settings that wait for a restart.
    fn summary(&self, new: &HubConfig, disconnected: usize, notes: Vec<String>) -> String {
        let later = self
            .at_restart
            .iter()
            .map(|what| format!("{what} changed: takes effect when the hub restarts"));
        let notes: Vec<String> = notes.into_iter().chain(later).collect();
        format!(
            "reloaded: {} services ({} added, {} removed, {} changed), {} keys, {} tunnels \
             disconnected{}",
            new.services.len(),
            self.added.len(),
            self.removed.len(),
            self.changed.len(),
            new.keys.len(),
            disconnected,
            if notes.is_empty() {
                String::new()
            } else {
                format!("; {}", notes.join("; "))
            }
        )
    }
}

/// Everything a plan needs that can fail, made before anything changes.
struct Prepared {
    /// The tunnel listener's certificate, re-read when `[tls]` names files, and its SHA-256
    /// (published to the cluster, whose hubs pin it on their peer links).
    tunnel_acceptor: Option<(TlsAcceptor, crate::tls::Fingerprint)>,
    /// New certificates of unchanged https services, by service.
    renewed: Vec<(String, TlsAcceptor)>,
    /// The http/https services to start, in the plan's order.
    services: Vec<PreparedService>,
}

/// An http/https service of the new configuration, ready to start.
struct PreparedService {
    name: String,
    config: HttpService,
    acceptor: Option<TlsAcceptor>,
    /// Bound already; `None` for a changed service keeping its address, bound once the old is
    /// gone.
    listener: Option<TcpListener>,
}

/// Loads every certificate and binds every new address the plan needs; the first failure
/// refuses the reload with nothing changed.
async fn prepare(plan: &Plan<'_>, new: &HubConfig) -> Result<Prepared, String> {
    let tunnel_acceptor = match &new.tls {
        Some(files) => Some(
            Identity::from_files(files)
                .and_then(|id| Ok((TlsAcceptor::from(id.server_config()?), id.fingerprint())))
                .map_err(|e| format!("[tls]: {e}"))?,
        ),
        None => None,
    };
    let service_acceptor = |name: &str, config: &HttpService| {
        http::sni::acceptor(&config.certificates).map_err(|e| format!("service `{name}`: {e}"))
    };
    let mut renewed = Vec::new();
    for &(name, config) in &plan.renew {
        renewed.push((name.to_owned(), service_acceptor(name, config)?));
    }
    let mut services = Vec::new();
    for start in &plan.start {
        let acceptor = match start.tls {
            true => Some(service_acceptor(start.name, start.config)?),
            false => None,
        };
        let listener = match start.bind_first {
            true => Some(bind_service(start.name, start.config).await?),
            false => None,
        };
        services.push(PreparedService {
            name: start.name.to_owned(),
            config: start.config.clone(),
            acceptor,
            listener,
        });
    }
    Ok(Prepared {
        tunnel_acceptor,
        renewed,
        services,
    })
}

async fn bind_service(name: &str, config: &HttpService) -> Result<TcpListener, String> {
    TcpListener::bind(config.listen).await.map_err(|e| {
        format!(
            "service `{name}`: cannot listen on {}: {e}; pick another `listen` address",
            config.listen
        )
    })
}

/// Puts the new configuration in force: certificates, tunnels it no longer admits, services.
/// Returns the summary.
async fn apply(
    shared: &Arc<Shared>,
    new: &Arc<HubConfig>,
    plan: &Plan<'_>,
    prepared: Prepared,
) -> String {
    let mut notes = Vec::new();
    *shared.current.write() = new.clone();
    if let Some((acceptor, fingerprint)) = prepared.tunnel_acceptor {
        *shared.tunnel_acceptor.write() = acceptor;
        if let Some(cluster) = &shared.cluster {
            cluster.set_cert(fingerprint);
        }
        notes.push("certificates re-read".to_owned());
    }
    renew_certificates(shared, prepared.renewed);
    let disconnected = disconnect_affected(shared, plan);
    for name in &plan.stop {
        stop_service(shared, name).await;
    }
    for service in prepared.services {
        if let Err(problem) = start_prepared(shared, service).await {
            warn!("{problem}");
            notes.push(problem);
        }
    }
    plan.summary(new, disconnected, notes)
}

/// Swaps the certificates of running https services in place; their connections go on.
fn renew_certificates(shared: &Shared, renewed: Vec<(String, TlsAcceptor)>) {
    let running = shared.running.lock();
    for (name, acceptor) in renewed {
        if let Some(service) = running.get(&name) {
            *service.acceptor.write() = Some(acceptor);
        }
    }
}

/// Starts a prepared service, binding its address now if it had to wait for the old loop.
async fn start_prepared(shared: &Arc<Shared>, service: PreparedService) -> Result<(), String> {
    let listener = match service.listener {
        Some(listener) => listener,
        None => TcpListener::bind(service.config.listen)
            .await
            .map_err(|e| {
                format!(
                    "service `{}` could not be bound again on {}: {e}",
                    service.name, service.config.listen
                )
            })?,
    };
    start_service(
        shared,
        service.name,
        service.config,
        listener,
        service.acceptor,
    );
    Ok(())
}

/// Disconnects tunnels the new configuration no longer admits as they are; returns how many.
fn disconnect_affected(shared: &Shared, plan: &Plan<'_>) -> usize {
    let mut count = 0;
    for tunnel in shared.registry.tunnels() {
        let proxies = tunnel.proxies();
        let services = proxies.iter().map(|p| p.service.as_str());
        if let Some(reason) = plan.disconnect_reason(tunnel.key_name.as_deref(), services) {
            shared.hosts.remove_tunnel(&tunnel.id);
            shared.registry.remove(&tunnel.id, reason);
            count += 1;
        }
    }
    count
}

/// Bound addresses of the running http/https services.
#[derive(Debug, Default)]
pub(crate) struct ServiceAddrs(Mutex<HashMap<String, SocketAddr>>);

impl ServiceAddrs {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, SocketAddr>> {
        self.0.lock()
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const KEYS: &str = r#"
        [[keys]]
        name = "alice"
        key = "alice-0123456789abcdef"
        [[keys]]
        name = "bob"
        key = "bob-0123456789abcdefgh"
        hostnames = ["bob.example.org"]
    "#;

    /// A hub configuration of `KEYS` plus `rest`.
    fn config(rest: &str) -> HubConfig {
        let text = format!("listen = \"127.0.0.1:7700\"\n{rest}\n{KEYS}");
        HubConfig::parse(&text, Path::new("/etc/tunnelize/hub.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    const SERVICES: &str = r#"
        [services.ssh]
        kind = "tcp"
        ports = "2200-2299"
        [services.web]
        kind = "http"
        listen = "127.0.0.1:8080"
        domain = "tunnel.example.org"
        [services.secure]
        kind = "https"
        listen = "127.0.0.1:8443"
        domain = "tunnel.example.org"
        [[services.secure.certificates]]
        cert_file = "/etc/tunnelize/secure.crt"
        key_file = "/etc/tunnelize/secure.key"
    "#;

    fn names<'a>(starts: &[Start<'a>]) -> Vec<(&'a str, bool)> {
        starts.iter().map(|s| (s.name, s.bind_first)).collect()
    }

    #[test]
    fn the_same_configuration_changes_nothing_and_only_re_reads_https_certificates() {
        let old = config(SERVICES);
        let same = old.clone();
        let plan = plan(&old, &same);
        assert!(plan.added.is_empty() && plan.removed.is_empty() && plan.changed.is_empty());
        assert!(plan.stop.is_empty() && plan.start.is_empty());
        assert_eq!(
            plan.renew.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["secure"]
        );
        assert_eq!(plan.keys_kept, ["alice", "bob"]);
        assert!(plan.at_restart.is_empty());
        assert_eq!(
            plan.summary(&old, 0, Vec::new()),
            "reloaded: 3 services (0 added, 0 removed, 0 changed), 2 keys, 0 tunnels disconnected"
        );
    }

    #[test]
    fn services_added_removed_and_changed_stop_and_start_only_their_http_loops() {
        let old = config(SERVICES);
        let blog = r#"
            [services.blog]
            kind = "http"
            listen = "127.0.0.1:9090"
            domain = "blog.example.org"
        "#;
        let moved = SERVICES
            .replace("2200-2299", "2300-2399")
            .replace("127.0.0.1:8080", "127.0.0.1:8081");
        let new = config(&format!("{moved}{blog}"));
        let changes = plan(&old, &new);
        assert_eq!(changes.added, ["blog"]);
        assert!(changes.removed.is_empty());
        assert_eq!(changes.changed, ["ssh", "web"]);
        // tcp services have no accept loop of their own; web moved, so it binds first.
        assert_eq!(changes.stop, ["web"]);
        assert_eq!(names(&changes.start), [("blog", true), ("web", true)]);

        let renamed = config(&SERVICES.replace("[services.web]", "[services.www]"));
        let changes = plan(&old, &renamed);
        assert_eq!(changes.added, ["www"]);
        assert_eq!(changes.removed, ["web"]);
        assert_eq!(changes.stop, ["web"]);
        assert_eq!(names(&changes.start), [("www", true)]);
    }

    #[test]
    fn a_changed_http_service_that_keeps_its_address_is_bound_only_after_its_old_loop_stopped() {
        let old = config(SERVICES);
        let new = config(&SERVICES.replace(
            "listen = \"127.0.0.1:8443\"",
            "listen = \"127.0.0.1:8443\"\n        header_timeout = \"3s\"",
        ));
        let plan = plan(&old, &new);
        assert_eq!(plan.changed, ["secure"]);
        assert_eq!(plan.stop, ["secure"]);
        assert_eq!(names(&plan.start), [("secure", false)]);
        assert!(plan.start[0].tls);
        assert!(
            plan.renew.is_empty(),
            "a changed service loads its certificates anew"
        );
    }

    #[test]
    fn tunnels_go_when_their_key_or_a_service_they_use_is_removed_or_changed() {
        let old = config(SERVICES);
        let new_keys = KEYS
            .replace("bob.example.org", "other.example.org")
            .replace("alice", "carol");
        let text = format!("{SERVICES}\n{new_keys}");
        let mut new = HubConfig::parse(&text, Path::new("/etc/tunnelize/hub.toml")).unwrap();
        new.services.retain(|s| s.name != "ssh");
        new.keys.push(old.keys[0].clone());
        let plan = plan(&old, &new);
        assert_eq!(plan.keys_kept, ["alice"], "bob's hostnames changed");
        let key_gone = Some("its key was removed or changed in the hub's configuration");
        let service_gone =
            Some("a service it uses was removed or changed in the hub's configuration");
        assert_eq!(
            plan.disconnect_reason(Some("bob"), ["web"].into_iter()),
            key_gone
        );
        assert_eq!(
            plan.disconnect_reason(Some("dave"), [].into_iter()),
            key_gone
        );
        assert_eq!(plan.disconnect_reason(None, [].into_iter()), key_gone);
        assert_eq!(
            plan.disconnect_reason(Some("alice"), ["web", "ssh"].into_iter()),
            service_gone
        );
        assert_eq!(
            plan.disconnect_reason(Some("alice"), ["web"].into_iter()),
            None
        );
    }

    #[test]
    fn keyless_tunnels_stay_only_while_allow_no_auth_stays_on() {
        let old = config("allow_no_auth = true");
        assert_eq!(
            plan(&old, &old).disconnect_reason(None, [].into_iter()),
            None
        );
        let new = config("");
        assert!(
            plan(&old, &new)
                .disconnect_reason(None, [].into_iter())
                .is_some()
        );
    }

    #[test]
    fn settings_that_wait_for_a_restart_are_named_after_what_happened_while_applying() {
        let old = config("");
        let new = config("shutdown_timeout = \"5s\"\nidle_timeout = \"1h\"");
        let plan = plan(&old, &new);
        assert_eq!(plan.at_restart, ["shutdown_timeout", "timeouts"]);
        let summary = plan.summary(&new, 2, vec!["certificates re-read".into()]);
        assert_eq!(
            summary,
            "reloaded: 0 services (0 added, 0 removed, 0 changed), 2 keys, 2 tunnels \
             disconnected; certificates re-read; shutdown_timeout changed: takes effect when \
             the hub restarts; timeouts changed: takes effect when the hub restarts"
        );
    }

    #[test]
    fn a_configuration_the_running_hub_cannot_take_is_refused() {
        let public: SocketAddr = "0.0.0.0:7700".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:7700".parse().unwrap();
        let keyless = config("allow_no_auth = true");
        let refused = admissible(&keyless, public).unwrap_err();
        assert!(
            refused.contains("allow_no_auth needs a loopback listener"),
            "{refused}"
        );
        assert_eq!(admissible(&keyless, loopback), Ok(()));
        let mut no_keys = config("");
        no_keys.keys.clear();
        assert_eq!(
            admissible(&no_keys, loopback),
            Err("no tunnel key is configured; add a [[keys]] entry".into())
        );
    }
}
