//! What the admin API may see and do of a running hub: snapshots of services, tunnels and
//! clients as [`model`](crate::admin::model) documents, the figures of its Prometheus text
//! (written by [`admin::prometheus`](crate::admin::prometheus)), and the two disconnects. [`HubView`] is the only door from the admin module into the hub's state; it
//! copies what it reports and never hands out the registry itself, and no key ever appears in
//! what it returns.

use std::sync::Arc;
use std::time::SystemTime;

use uuid::Uuid;

use super::Shared;
use super::clients::ClientEntry;
use super::registry::TunnelSession;
use crate::admin::model::{ClientInfo, ProxyInfo, ServiceInfo, TunnelInfo};
use crate::admin::prometheus::{Exposition, Kind};
use crate::config::{ServiceConfig, ServiceKind};

/// A handle on a running hub for its admin API. Cheap to clone.
#[derive(Clone)]
pub struct HubView {
    shared: Arc<Shared>,
}

/// RFC 3339 in UTC, to the second.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl HubView {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        HubView { shared }
    }

    /// The hub's accept state, for the admin API's TLS listener.
    pub(crate) fn acceptor(&self) -> Arc<crate::hub::accept::Acceptor> {
        self.shared.accepts.clone()
    }

    /// When the hub started.
    pub fn started(&self) -> SystemTime {
        self.shared.started
    }

    /// Whether `presented` is one of the configured tunnel keys (constant time per key).
    pub fn is_tunnel_key(&self, presented: &str) -> bool {
        let mut found = false;
        for candidate in &self.shared.current().keys {
            found |= candidate.key.matches(presented);
        }
        found
    }

    /// Counts a request from `ip` that presented a wrong key, toward its lockout.
    pub fn count_auth_failure(&self, ip: Option<std::net::IpAddr>) {
        self.shared.metrics.auth_failed();
        self.shared
            .metrics
            .reject(super::metrics::Rejection::AdminUnauthorized);
        if let Some(ip) = ip {
            self.shared.login_failed(ip);
        }
    }

    /// `Err(time left)` while `ip` is locked out.
    pub fn locked_out(&self, ip: std::net::IpAddr) -> Result<(), std::time::Duration> {
        self.shared.lockouts.check(ip)
    }

    /// Counts a request refused because its address is locked out
    /// (`tunnelize_lockout_refusals_total`).
    pub fn count_lockout_refusal(&self) {
        self.shared.metrics.refuse_locked_out();
    }

    /// A successful login from `ip`.
    pub fn login_succeeded(&self, ip: std::net::IpAddr) {
        self.shared.lockouts.succeed(ip);
    }

    /// This hub's standing in its cluster; `None` for a hub alone.
    pub fn cluster(&self) -> Option<crate::hub::cluster::Status> {
        self.shared.cluster.as_ref().map(|cluster| cluster.status())
    }

    /// The hubs of its cluster, as Redis lists them; `None` for a hub alone.
    pub async fn cluster_members(
        &self,
    ) -> Option<Result<Vec<crate::hub::cluster::Member>, String>> {
        Some(self.shared.cluster.as_ref()?.members().await)
    }

    /// The failed-login table.
    pub fn lockouts(&self) -> Vec<crate::admin::model::LockoutInfo> {
        self.shared
            .lockouts
            .list()
            .into_iter()
            .map(|e| crate::admin::model::LockoutInfo {
                address: e.address.to_string(),
                failures: e.failures,
                locked_until: e.locked_until.map(rfc3339),
            })
            .collect()
    }

    /// Forgets an address's failures and lockout. False if it is not in the table (or is not
    /// an address).
    pub fn unlock(&self, address: &str) -> bool {
        let Ok(ip) = address.parse() else {
            return false;
        };
        if let Some(cluster) = &self.shared.cluster {
            let cluster = cluster.clone();
            tokio::spawn(async move { cluster.login_succeeded(ip, true).await });
        }
        self.shared.lockouts.clear(ip)
    }

    fn service_config(&self, name: &str) -> Option<ServiceConfig> {
        let config = self.shared.current();
        config.services.iter().find(|s| s.name == name).cloned()
    }

    /// Applies a new configuration (see [`super::reload`]); returns a summary for people, or
    /// why nothing was changed.
    pub async fn reload(&self, new: crate::config::HubConfig) -> Result<String, String> {
        super::reload::reload(&self.shared, new).await
    }

    /// Every configured service, in configuration order.
    pub fn services(&self) -> Vec<ServiceInfo> {
        let tunnels = self.shared.registry.tunnels();
        let clients = self.shared.registry.clients.snapshot();
        self.shared
            .current()
            .services
            .iter()
            .map(|s| self.service_info(s, &tunnels, &clients))
            .collect()
    }

    /// One service, if it exists.
    pub fn service(&self, name: &str) -> Option<ServiceInfo> {
        let config = self.service_config(name)?;
        let tunnels = self.shared.registry.tunnels();
        let clients = self.shared.registry.clients.snapshot();
        Some(self.service_info(&config, &tunnels, &clients))
    }

    fn service_info(
        &self,
        config: &ServiceConfig,
        tunnels: &[Arc<TunnelSession>],
        clients: &[Arc<ClientEntry>],
    ) -> ServiceInfo {
        let (listen, domain) = match &config.kind {
            ServiceKind::Tcp(t) => (format!("{}:{}", t.listen, t.ports), None),
            ServiceKind::Udp(u) => (format!("{}:{}", u.listen, u.ports), None),
            ServiceKind::Http(h) | ServiceKind::Https(h) => {
                let bound = self.shared.service_addrs.get(&config.name);
                (
                    bound.unwrap_or(h.listen).to_string(),
                    Some(h.domain.clone()),
                )
            }
        };
        let traffic = self.shared.registry.service_traffic(&config.name);
        ServiceInfo {
            name: config.name.clone(),
            kind: config.kind.name().to_owned(),
            listen,
            domain,
            tunnels: tunnels
                .iter()
                .filter(|t| t.proxies().iter().any(|p| p.service == config.name))
                .count(),
            clients: clients.iter().filter(|c| c.service == config.name).count(),
            bytes_in: traffic.bytes_in(),
            bytes_out: traffic.bytes_out(),
        }
    }

    /// The tunnels with a proxy on `service`, oldest first; `None` if there is no such service.
    pub fn tunnels(&self, service: &str) -> Option<Vec<TunnelInfo>> {
        self.service_config(service)?;
        let mut sessions: Vec<_> = self
            .shared
            .registry
            .tunnels()
            .into_iter()
            .filter_map(|t| {
                let proxies: Vec<ProxyInfo> = t
                    .proxies()
                    .into_iter()
                    .filter(|p| p.service == service)
                    .map(|p| ProxyInfo {
                        name: p.name,
                        port: p.port,
                        hostname: p.hostname,
                    })
                    .collect();
                (!proxies.is_empty()).then_some((t, proxies))
            })
            .collect();
        sessions.sort_by_key(|(t, _)| t.since);
        Some(
            sessions
                .into_iter()
                .map(|(t, proxies)| TunnelInfo {
                    id: t.id.to_string(),
                    name: t.name.clone(),
                    key_name: t.key_name.clone(),
                    peer: t.peer.to_string(),
                    since: rfc3339(t.since),
                    proxies,
                })
                .collect(),
        )
    }

    /// The clients of `service`, by id; `None` if there is no such service.
    pub fn clients(&self, service: &str) -> Option<Vec<ClientInfo>> {
        self.service_config(service)?;
        let mut clients: Vec<_> = self
            .shared
            .registry
            .clients
            .snapshot()
            .into_iter()
            .filter(|c| c.service == service)
            .collect();
        clients.sort_by_key(|c| c.id);
        Some(clients.iter().map(|c| client_info(c)).collect())
    }

    /// Disconnects a tunnel: its clients close, its ports and hostnames are freed, and the
    /// tunnel is told why. False if no tunnel has that id.
    pub fn disconnect_tunnel(&self, id: &str) -> bool {
        let Ok(id) = id.parse::<Uuid>() else {
            return false;
        };
        if self.shared.registry.tunnel(&id).is_none() {
            return false;
        }
        self.shared.hosts.remove_tunnel(&id);
        self.shared
            .registry
            .remove(&id, "disconnected by an operator of the hub");
        true
    }

    /// Disconnects one client. False if no client has that id.
    pub fn disconnect_client(&self, id: &str) -> bool {
        let Some(client) = id
            .parse::<u64>()
            .ok()
            .and_then(|id| self.shared.registry.clients.get(id))
        else {
            return false;
        };
        client.cancel.cancel();
        true
    }

    /// The Prometheus text exposition of the hub's figures.
    pub fn metrics(&self) -> String {
        let mut text = Exposition::new();
        self.service_metrics(&mut text);
        self.tunnel_metrics(&mut text);
        self.counter_metrics(&mut text);
        self.cluster_metrics(&mut text);
        text.process();
        text.finish()
    }

    fn service_metrics(&self, text: &mut Exposition) {
        let services = self.services();
        let gauges = [
            ("tunnelize_tunnels", "Tunnels with a proxy on the service."),
            ("tunnelize_clients", "Clients connected to the service."),
        ];
        for (name, help) in gauges {
            text.family(name, Kind::Gauge, help);
            for s in &services {
                let value = if name == "tunnelize_tunnels" {
                    s.tunnels
                } else {
                    s.clients
                };
                text.sample(name, &[("service", &s.name)], value);
            }
        }
        let name = "tunnelize_service_bytes_total";
        text.family(
            name,
            Kind::Counter,
            "Bytes through the service; direction in is toward tunnels.",
        );
        for s in &services {
            text.sample(
                name,
                &[("service", &s.name), ("direction", "in")],
                s.bytes_in,
            )
            .sample(
                name,
                &[("service", &s.name), ("direction", "out")],
                s.bytes_out,
            );
        }
    }

    fn tunnel_metrics(&self, text: &mut Exposition) {
        let name = "tunnelize_tunnel_bytes_total";
        text.family(
            name,
            Kind::Counter,
            "Bytes through the tunnel; direction in is toward it.",
        );
        let mut tunnels = self.shared.registry.tunnels();
        tunnels.sort_by_key(|t| t.since);
        for t in tunnels {
            let id = t.id.to_string();
            let labels = |direction| {
                [
                    ("tunnel_id", id.as_str()),
                    ("tunnel_name", &t.name),
                    ("direction", direction),
                ]
            };
            text.sample(name, &labels("in"), t.traffic.bytes_in())
                .sample(name, &labels("out"), t.traffic.bytes_out());
        }
    }

    /// Its cluster connection's counters, labelled with the hub's name; nothing for a hub
    /// alone.
    fn cluster_metrics(&self, text: &mut Exposition) {
        let Some(cluster) = &self.shared.cluster else {
            return;
        };
        let m = &cluster.metrics;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let hub = [("hub", cluster.name())];
        let families = [
            (
                "tunnelize_cluster_member",
                Kind::Gauge,
                "1 while the hub is a member of its cluster (holds a fencing token).",
                u64::from(cluster.is_member()),
            ),
            (
                "tunnelize_cluster_redis_round_trips_total",
                Kind::Counter,
                "Round trips to the cluster's Redis.",
                load(&m.round_trips),
            ),
            (
                "tunnelize_cluster_redis_errors_total",
                Kind::Counter,
                "Round trips to the cluster's Redis that failed or passed their deadline.",
                load(&m.errors),
            ),
            (
                "tunnelize_cluster_claims_refused_total",
                Kind::Counter,
                "Claims refused because another owner holds them in the cluster.",
                load(&m.claims_refused),
            ),
            (
                "tunnelize_cluster_conflicts_total",
                Kind::Counter,
                "Claims found held by another owner when the hub renewed them.",
                load(&m.conflicts),
            ),
            (
                "tunnelize_cluster_forwarded_total",
                Kind::Counter,
                "Clients this hub forwarded to another hub of the cluster over a peer link.",
                load(&self.shared.peers.forwarded),
            ),
            (
                "tunnelize_cluster_forwarded_served_total",
                Kind::Counter,
                "Clients another hub forwarded here that this hub served from its tunnels.",
                load(&self.shared.peers.served),
            ),
            (
                "tunnelize_cluster_remote_ports",
                Kind::Gauge,
                "Ports this hub binds for tunnels connected to other hubs of the cluster.",
                self.shared.peers.remote_port_count() as u64,
            ),
        ];
        for (name, kind, help, value) in families {
            text.family(name, kind, help).sample(name, &hub, value);
        }
    }

    fn counter_metrics(&self, text: &mut Exposition) {
        let m = &self.shared.metrics;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        text.family(
            "tunnelize_auth_failures_total",
            Kind::Counter,
            "Logins and admin requests with a wrong key.",
        )
        .sample("tunnelize_auth_failures_total", &[], load(&m.auth_failures))
        .family(
            "tunnelize_lockouts_total",
            Kind::Counter,
            "Addresses locked out after repeated failures.",
        )
        .sample("tunnelize_lockouts_total", &[], load(&m.lockouts))
        .family(
            "tunnelize_lockout_refusals_total",
            Kind::Counter,
            "Logins and admin requests refused because their address is locked out.",
        )
        .sample(
            "tunnelize_lockout_refusals_total",
            &[],
            load(&m.lockout_refusals),
        )
        .family(
            "tunnelize_rejected_total",
            Kind::Counter,
            "Connections and requests refused, by reason.",
        );
        for (reason, count) in m.rejections() {
            text.sample(
                "tunnelize_rejected_total",
                &[("reason", reason.label())],
                count,
            );
        }
        let (buckets, count, sum) = m.link_setup.snapshot();
        text.histogram(
            "tunnelize_link_setup_seconds",
            "Time from a client's arrival to its tunnel's answer.",
            &buckets,
            count,
            sum,
        );
    }
}

fn client_info(c: &ClientEntry) -> ClientInfo {
    ClientInfo {
        id: c.id.to_string(),
        tunnel_id: c.tunnel_id.to_string(),
        proxy: c.proxy.clone(),
        peer: c.peer.to_string(),
        bytes_in: c.traffic.bytes_in(),
        bytes_out: c.traffic.bytes_out(),
        since: rfc3339(c.since),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_seconds() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400 + 61);
        assert_eq!(rfc3339(t), "1970-01-02T00:01:01Z");
    }
}
