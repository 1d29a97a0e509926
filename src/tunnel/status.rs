//! A tunnel daemon's own view of itself, for its admin socket: whether it is connected (or
//! locked out by the hub, and until when), the hub's answer for each proxy, and whether each proxy's target accepted its last connection.
//!
//! The reconnect loop and the link workers write here; the admin API reads snapshots. One
//! `parking_lot::Mutex`, held only to copy or update a few fields. It holds one entry per
//! configured proxy, so nothing a peer sends can grow it.

use parking_lot::{Mutex, MutexGuard};
use std::time::SystemTime;

use uuid::Uuid;

use crate::admin::model::{TunnelProxyStatus, TunnelStatus};
use crate::admin::prometheus::{Exposition, Kind};
use crate::config::TunnelConfig;
use crate::hub::inspect::rfc3339;
use crate::protocol::ProxyOutcome;

#[derive(Debug)]
struct Board {
    hub: String,
    connected: bool,
    tunnel_id: Option<Uuid>,
    since: SystemTime,
    last_error: Option<String>,
    /// While the hub has this address locked out: when the next attempt is due.
    retry_at: Option<SystemTime>,
    proxies: Vec<TunnelProxyStatus>,
    reconnects: u64,
}

impl Board {
    /// The session is down (or not up yet), for `error`; every proxy is pending again.
    fn down(&mut self, error: Option<String>) {
        if self.connected {
            self.reconnects += 1;
            self.since = SystemTime::now();
        }
        self.connected = false;
        self.tunnel_id = None;
        self.last_error = error;
        self.retry_at = None;
        for p in &mut self.proxies {
            p.state = "pending".into();
            p.public = None;
            p.reason = None;
        }
    }
}

/// The tunnel's state, shared by its tasks.
#[derive(Debug)]
pub struct StatusBoard {
    started: SystemTime,
    board: Mutex<Board>,
}

fn pending_proxies(config: &TunnelConfig) -> Vec<TunnelProxyStatus> {
    config
        .proxies
        .iter()
        .map(|p| TunnelProxyStatus {
            name: p.name.clone(),
            service: p.service.clone(),
            target: p.target.clone(),
            state: "pending".into(),
            public: None,
            reason: None,
            target_up: None,
        })
        .collect()
}

impl StatusBoard {
    /// A board for `config`'s proxies, all pending.
    pub fn new(config: &TunnelConfig) -> Self {
        let now = SystemTime::now();
        StatusBoard {
            started: now,
            board: Mutex::new(Board {
                hub: config.hub_address.clone(),
                connected: false,
                tunnel_id: None,
                since: now,
                last_error: None,
                retry_at: None,
                proxies: pending_proxies(config),
                reconnects: 0,
            }),
        }
    }

    /// A reload replaced the configuration: `config`'s proxies, all pending, and its hub, until
    /// the next session is up. A reload is not a lost session, so `reconnects` stays.
    pub fn reconfigured(&self, config: &TunnelConfig) {
        let mut b = self.lock();
        b.hub = config.hub_address.clone();
        b.connected = false;
        b.tunnel_id = None;
        b.since = SystemTime::now();
        b.last_error = None;
        b.retry_at = None;
        b.proxies = pending_proxies(config);
    }

    fn lock(&self) -> MutexGuard<'_, Board> {
        self.board.lock()
    }

    /// When the daemon started.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// The session is up; `outcomes` is the hub's answer per proxy.
    pub fn connected(&self, tunnel_id: Uuid, outcomes: &[ProxyOutcome]) {
        let mut b = self.lock();
        b.connected = true;
        b.tunnel_id = Some(tunnel_id);
        b.since = SystemTime::now();
        b.last_error = None;
        b.retry_at = None;
        for outcome in outcomes {
            let (name, state, public, reason) = match outcome {
                ProxyOutcome::Accepted {
                    name,
                    port,
                    hostname,
                } => {
                    let public = hostname.clone().or_else(|| port.map(|p| p.to_string()));
                    (name, "live", public, None)
                }
                ProxyOutcome::Rejected { name, reason } => {
                    (name, "rejected", None, Some(reason.clone()))
                }
            };
            if let Some(p) = b.proxies.iter_mut().find(|p| &p.name == name) {
                p.state = state.into();
                p.public = public;
                p.reason = reason;
            }
        }
    }

    /// The session is down (or not up yet); `error` says why.
    pub fn connecting(&self, error: Option<String>) {
        self.lock().down(error);
    }

    /// The hub refused the tunnel with `error` because this address is locked out; the next
    /// attempt is at `retry_at`.
    pub fn locked_out(&self, error: String, retry_at: SystemTime) {
        let mut b = self.lock();
        b.down(Some(error));
        b.retry_at = Some(retry_at);
    }

    /// Records whether `proxy`'s target accepted a connection.
    pub fn target(&self, proxy: &str, up: bool) {
        if let Some(p) = self.lock().proxies.iter_mut().find(|p| p.name == proxy) {
            p.target_up = Some(up);
        }
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> TunnelStatus {
        let b = self.lock();
        let state = match (b.connected, b.retry_at) {
            (true, _) => "connected",
            (false, Some(_)) => "locked_out",
            (false, None) => "connecting",
        };
        TunnelStatus {
            state: state.into(),
            hub: b.hub.clone(),
            tunnel_id: b.tunnel_id.map(|id| id.to_string()),
            since: rfc3339(b.since),
            last_error: b.last_error.clone(),
            retry_at: b.retry_at.map(rfc3339),
            proxies: b.proxies.clone(),
        }
    }

    /// The Prometheus text exposition of the tunnel's state.
    pub fn metrics(&self) -> String {
        let mut text = Exposition::new();
        {
            let b = self.lock();
            text.family(
                "tunnelize_hub_connected",
                Kind::Gauge,
                "Whether the tunnel has a session with its hub.",
            )
            .sample("tunnelize_hub_connected", &[], u8::from(b.connected))
            .family(
                "tunnelize_reconnects_total",
                Kind::Counter,
                "Sessions lost since the daemon started.",
            )
            .sample("tunnelize_reconnects_total", &[], b.reconnects)
            .family(
                "tunnelize_proxy_live",
                Kind::Gauge,
                "Whether the hub accepted the proxy.",
            );
            for p in &b.proxies {
                let live = u8::from(p.state == "live");
                text.sample("tunnelize_proxy_live", &[("proxy", &p.name)], live);
            }
            text.family(
                "tunnelize_target_up",
                Kind::Gauge,
                "Whether the proxy's target accepted its last connection.",
            );
            for p in &b.proxies {
                if let Some(up) = p.target_up {
                    text.sample("tunnelize_target_up", &[("proxy", &p.name)], u8::from(up));
                }
            }
        }
        text.process();
        text.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AdminConfig, HubTrust, ProxyConfig};
    use std::time::Duration;

    fn board() -> StatusBoard {
        StatusBoard::new(&TunnelConfig {
            hub_address: "hub.example:7000".into(),
            hub_server_name: "hub.example".into(),
            hub_trust: HubTrust::Fingerprint([7; 32]),
            key: None,
            links: 1,
            connect_timeout: Duration::from_secs(5),
            proxies: vec![ProxyConfig {
                name: "web".into(),
                service: "tcp".into(),
                target: "127.0.0.1:80".into(),
                ..ProxyConfig::default()
            }],
            admin: AdminConfig::disabled(),
            reconnect: Default::default(),
        })
    }

    #[test]
    fn a_lockout_shows_until_when_and_the_next_outcome_clears_it() {
        let status = board();
        let until = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        status.locked_out("locked out; retry in 30m".into(), until);
        let seen = status.snapshot();
        assert_eq!(seen.state, "locked_out");
        assert_eq!(seen.retry_at.as_deref(), Some("2027-01-15T08:00:00Z"));
        assert_eq!(seen.last_error.as_deref(), Some("locked out; retry in 30m"));

        status.connecting(Some("connection refused".into()));
        let seen = status.snapshot();
        assert_eq!((seen.state.as_str(), seen.retry_at), ("connecting", None));

        status.locked_out("locked".into(), until);
        status.connected(Uuid::nil(), &[]);
        let seen = status.snapshot();
        assert_eq!((seen.state.as_str(), seen.retry_at), ("connected", None));
    }
}
