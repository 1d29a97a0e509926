//! A tunnel daemon's own view of itself, for its admin socket: whether it is connected, the
//! hub's answer for each proxy, and whether each proxy's target accepted its last connection.
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
    proxies: Vec<TunnelProxyStatus>,
    reconnects: u64,
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
        let mut b = self.lock();
        if b.connected {
            b.reconnects += 1;
            b.since = SystemTime::now();
        }
        b.connected = false;
        b.tunnel_id = None;
        b.last_error = error;
        for p in &mut b.proxies {
            p.state = "pending".into();
            p.public = None;
            p.reason = None;
        }
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
        TunnelStatus {
            state: if b.connected {
                "connected"
            } else {
                "connecting"
            }
            .into(),
            hub: b.hub.clone(),
            tunnel_id: b.tunnel_id.map(|id| id.to_string()),
            since: rfc3339(b.since),
            last_error: b.last_error.clone(),
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
