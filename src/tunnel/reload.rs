//! Applying a new configuration to a running tunnel daemon (`SIGHUP`, `systemctl reload`,
//! `tunnelizectl reload` on its socket).
//!
//! The hub learns a tunnel's proxies once per session, from its hello, so a changed
//! configuration is applied by ending the session and opening a new one with it. Clients being
//! forwarded at that moment are cut; the hub holds the session's ports and hostnames for its key
//! (its `reconnect_grace`), so the proxies that stay get them back. A file that does not load,
//! or whose TLS settings cannot be used, is refused and the running configuration stays. One
//! that changes nothing keeps the session; `[admin]` (the socket) takes effect at the next
//! restart.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::{Tunnel, TunnelError, supervise};
use crate::admin::api::ReloadRequest;
use crate::config::TunnelConfig;
use crate::daemon::notify;

/// What applying a new configuration takes, and what to tell the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Whether the session must be replaced: anything but `[admin]` changed.
    pub reconnect: bool,
    /// What changed, for the log and `tunnelizectl reload`; names no secret.
    pub summary: String,
}

/// Compares the running configuration with a new one.
pub fn plan(old: &TunnelConfig, new: &TunnelConfig) -> Change {
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for proxy in &new.proxies {
        match old.proxies.iter().find(|p| p.name == proxy.name) {
            None => added.push(proxy.name.as_str()),
            Some(before) if before != proxy => changed.push(proxy.name.as_str()),
            Some(_) => {}
        }
    }
    let removed: Vec<&str> = old
        .proxies
        .iter()
        .filter(|p| !new.proxies.iter().any(|n| n.name == p.name))
        .map(|p| p.name.as_str())
        .collect();
    // Keys, never values: `key` is a secret.
    let settings: Vec<&str> = [
        ("hub_address", old.hub_address != new.hub_address),
        (
            "hub_server_name",
            old.hub_server_name != new.hub_server_name,
        ),
        ("hub trust", old.hub_trust != new.hub_trust),
        ("key", old.key != new.key),
        ("links", old.links != new.links),
        (
            "connect_timeout",
            old.connect_timeout != new.connect_timeout,
        ),
        ("[reconnect]", old.reconnect != new.reconnect),
    ]
    .into_iter()
    .filter_map(|(name, differs)| differs.then_some(name))
    .collect();
    // A reordering of the same proxies is a change too: the hub answers them in order.
    let reordered =
        added.is_empty() && removed.is_empty() && changed.is_empty() && old.proxies != new.proxies;
    let reconnect = !(added.is_empty()
        && removed.is_empty()
        && changed.is_empty()
        && settings.is_empty()
        && !reordered);
    let admin_later =
        (old.admin != new.admin).then_some("[admin] takes effect at the next restart");
    if !reconnect {
        let summary = match admin_later {
            Some(later) => format!("no change to the session; {later}"),
            None => "configuration unchanged".to_owned(),
        };
        return Change { reconnect, summary };
    }
    let list = |what: &str, names: &[&str]| {
        (!names.is_empty()).then(|| format!("{} {what} ({})", names.len(), names.join(", ")))
    };
    let proxies: Vec<String> = [
        list("added", &added),
        list("removed", &removed),
        list("changed", &changed),
        reordered.then(|| "reordered".to_owned()),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut parts = Vec::new();
    if !proxies.is_empty() {
        parts.push(format!("proxies {}", proxies.join(", ")));
    }
    if !settings.is_empty() {
        parts.push(format!("changed {}", settings.join(", ")));
    }
    parts.extend(admin_later.map(str::to_owned));
    Change {
        reconnect,
        summary: format!(
            "reconnecting to the hub with the new configuration: {}",
            parts.join("; ")
        ),
    }
}

/// What a reload request comes to.
enum Outcome {
    /// Nothing to do to the session; the summary says why.
    Stay(String),
    /// Replace the session with one of this tunnel.
    Replace(Tunnel, String),
}

fn prepare<L>(running: &Tunnel, load: &mut L) -> Result<Outcome, String>
where
    L: FnMut() -> Result<TunnelConfig, String>,
{
    let config = load()?;
    let change = plan(running.config(), &config);
    if !change.reconnect {
        return Ok(Outcome::Stay(change.summary));
    }
    let next = running
        .reconfigured(config)
        .map_err(|e| format!("the new configuration cannot be used: {e}"))?;
    Ok(Outcome::Replace(next, change.summary))
}

/// Runs the tunnel like [`supervise`] until `shutdown`, and applies a new configuration at each
/// request on `requests`: `load` reads it (the daemon re-reads its file), and the request is
/// answered with what changed or why the configuration was refused. A refused one leaves the
/// running session alone. Returns what `supervise` returns.
pub async fn supervise_reloading<L>(
    mut tunnel: Tunnel,
    shutdown: CancellationToken,
    mut requests: mpsc::Receiver<ReloadRequest>,
    mut load: L,
) -> Result<(), TunnelError>
where
    L: FnMut() -> Result<TunnelConfig, String>,
{
    loop {
        let session = shutdown.child_token();
        let running = supervise(tunnel.clone(), tunnel.backoff(), session.clone());
        tokio::pin!(running);
        let (next, summary, answer) = loop {
            tokio::select! {
                result = &mut running => return result,
                Some(answer) = requests.recv() => {
                    notify::reloading();
                    match prepare(&tunnel, &mut load) {
                        Ok(Outcome::Replace(next, summary)) => break (next, summary, answer),
                        Ok(Outcome::Stay(summary)) => {
                            info!(%summary, "configuration reloaded");
                            notify::ready(&summary);
                            let _ = answer.send(Ok(summary));
                        }
                        Err(e) => {
                            error!("reload refused, the running configuration stays: {e}");
                            notify::ready(&format!("reload refused: {e}"));
                            let _ = answer.send(Err(e));
                        }
                    }
                }
            }
        };
        // The old session ends (its links and clients with it) before the new one says hello,
        // so the hub sees the departure first and hands the key its ports back.
        session.cancel();
        running.await?;
        next.status().reconfigured(next.config());
        info!(%summary, "configuration reloaded");
        notify::ready(&summary);
        let _ = answer.send(Ok(summary));
        tunnel = next;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{AdminConfig, HubTrust, ProxyConfig};
    use crate::secret::Secret;

    fn proxy(name: &str, target: &str) -> ProxyConfig {
        ProxyConfig {
            name: name.into(),
            service: "tcp".into(),
            target: target.into(),
            ..ProxyConfig::default()
        }
    }

    fn config(proxies: Vec<ProxyConfig>) -> TunnelConfig {
        TunnelConfig {
            hub_address: "hub.example:7000".into(),
            hub_server_name: "hub.example".into(),
            hub_trust: HubTrust::Fingerprint([7; 32]),
            key: Some(Secret::new("a-tunnel-key-0123456789")),
            links: 2,
            connect_timeout: Duration::from_secs(5),
            proxies,
            admin: AdminConfig::disabled(),
            reconnect: Default::default(),
        }
    }

    #[test]
    fn the_same_configuration_keeps_the_session() {
        let c = config(vec![proxy("web", "127.0.0.1:80")]);
        let change = plan(&c, &c.clone());
        assert!(!change.reconnect);
        assert_eq!(change.summary, "configuration unchanged");
    }

    #[test]
    fn only_the_admin_socket_changed_keeps_the_session_and_says_when_it_applies() {
        let old = config(vec![proxy("web", "127.0.0.1:80")]);
        let mut new = old.clone();
        new.admin.socket = Some("/run/tunnelize/other.sock".into());
        let change = plan(&old, &new);
        assert!(!change.reconnect);
        assert!(
            change
                .summary
                .contains("[admin] takes effect at the next restart")
        );
    }

    #[test]
    fn proxies_added_removed_and_changed_are_each_named() {
        let old = config(vec![
            proxy("web", "127.0.0.1:80"),
            proxy("ssh", "127.0.0.1:22"),
        ]);
        let new = config(vec![
            proxy("web", "127.0.0.1:8080"),
            proxy("db", "127.0.0.1:5432"),
            proxy("mq", "127.0.0.1:5672"),
        ]);
        let change = plan(&old, &new);
        assert!(change.reconnect);
        assert_eq!(
            change.summary,
            "reconnecting to the hub with the new configuration: proxies 2 added (db, mq), \
             1 removed (ssh), 1 changed (web)"
        );
    }

    #[test]
    fn a_new_key_is_named_but_never_shown() {
        let old = config(vec![proxy("web", "127.0.0.1:80")]);
        let mut new = old.clone();
        new.key = Some(Secret::new("another-key-9876543210"));
        new.links = 4;
        let change = plan(&old, &new);
        assert!(change.reconnect);
        assert!(
            change.summary.ends_with("changed key, links"),
            "{}",
            change.summary
        );
        assert!(!change.summary.contains("another-key"));
        assert!(!change.summary.contains("a-tunnel-key"));
    }

    #[test]
    fn reordered_proxies_reconnect() {
        let a = proxy("a", "127.0.0.1:1");
        let b = proxy("b", "127.0.0.1:2");
        let change = plan(&config(vec![a.clone(), b.clone()]), &config(vec![b, a]));
        assert!(change.reconnect);
        assert!(
            change.summary.ends_with("proxies reordered"),
            "{}",
            change.summary
        );
    }

    #[test]
    fn a_configuration_that_does_not_load_is_refused_with_its_error() {
        let running = Tunnel::new(config(vec![proxy("web", "127.0.0.1:80")])).unwrap();
        let mut load = || Err("/etc/tunnelize/tunnel.toml:3:1: bad".to_owned());
        match prepare(&running, &mut load) {
            Err(e) => assert!(e.contains("tunnel.toml:3:1"), "{e}"),
            Ok(_) => panic!("a file that does not load was accepted"),
        }
    }

    #[test]
    fn unusable_tls_settings_are_refused_before_the_session_is_touched() {
        let running = Tunnel::new(config(vec![proxy("web", "127.0.0.1:80")])).unwrap();
        let mut next = running.config().clone();
        next.hub_trust = HubTrust::CaFile("/nonexistent/ca.pem".into());
        let mut load = || Ok(next.clone());
        match prepare(&running, &mut load) {
            Err(e) => assert!(e.contains("cannot be used"), "{e}"),
            Ok(_) => panic!("an unreadable CA file was accepted"),
        }
    }
}
