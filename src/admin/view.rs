//! How `tunnelizectl` shows each admin document to people: which columns, in which order, and
//! how each figure reads. Pure functions from [`model`](super::model) types to text; no I/O.
//!
//! Byte columns follow the model: `IN` is bytes from clients (toward tunnels), `OUT` bytes to
//! clients. Times are shown as the daemon gave them (RFC 3339, UTC).

use super::model::{
    ClientInfo, LockoutInfo, ProxyInfo, ServiceInfo, SystemInfo, TunnelInfo, TunnelStatus,
};
use super::table::{Align, Table, bytes, duration, fields, or_dash};

/// `sys-info`.
pub fn system(info: &SystemInfo) -> String {
    let [one, five, fifteen] = info.load_average;
    fields(&[
        ("role", info.role.clone()),
        ("version", info.version.clone()),
        ("pid", info.pid.to_string()),
        ("uptime", duration(info.uptime_secs)),
        (
            "process",
            format!(
                "{:.1}% cpu, {} resident",
                info.process_cpu_percent,
                bytes(info.process_memory_bytes)
            ),
        ),
        (
            "host cpu",
            format!("{:.1}% of {} cpus", info.cpu_percent, info.cpus),
        ),
        (
            "host memory",
            format!(
                "{} used of {}",
                bytes(info.memory_used_bytes),
                bytes(info.memory_total_bytes)
            ),
        ),
        ("load", format!("{one:.2} {five:.2} {fifteen:.2}")),
    ])
}

/// `list-services`.
pub fn services(services: &[ServiceInfo]) -> String {
    if services.is_empty() {
        return "no services\n".into();
    }
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("KIND", Align::Left),
        ("LISTEN", Align::Left),
        ("DOMAIN", Align::Left),
        ("TUNNELS", Align::Right),
        ("CLIENTS", Align::Right),
        ("IN", Align::Right),
        ("OUT", Align::Right),
    ]);
    for s in services {
        table.push(vec![
            s.name.clone(),
            s.kind.clone(),
            s.listen.clone(),
            or_dash(s.domain.as_ref()),
            s.tunnels.to_string(),
            s.clients.to_string(),
            bytes(s.bytes_in),
            bytes(s.bytes_out),
        ]);
    }
    table.render()
}

/// `get-service NAME`.
pub fn service(s: &ServiceInfo) -> String {
    fields(&[
        ("name", s.name.clone()),
        ("kind", s.kind.clone()),
        ("listen", s.listen.clone()),
        ("domain", or_dash(s.domain.as_ref())),
        ("tunnels", s.tunnels.to_string()),
        ("clients", s.clients.to_string()),
        ("bytes in", bytes(s.bytes_in)),
        ("bytes out", bytes(s.bytes_out)),
    ])
}

/// `list-tunnels SERVICE`.
pub fn tunnels(service: &str, tunnels: &[TunnelInfo]) -> String {
    if tunnels.is_empty() {
        return format!("no tunnels on service `{service}`\n");
    }
    let mut table = Table::new(&TUNNEL_COLUMNS);
    for t in tunnels {
        table.push(tunnel_row(t));
    }
    table.render()
}

/// `list-tunnels` without a service: every service's tunnels, with a SERVICE column (a tunnel
/// with proxies on two services is listed under each).
pub fn every_service_tunnels(by_service: &[(String, Vec<TunnelInfo>)]) -> String {
    if by_service.iter().all(|(_, tunnels)| tunnels.is_empty()) {
        return "no tunnels on any service\n".into();
    }
    by_service_table(&TUNNEL_COLUMNS, by_service, tunnel_row)
}

const TUNNEL_COLUMNS: [(&str, Align); 6] = [
    ("ID", Align::Left),
    ("NAME", Align::Left),
    ("KEY", Align::Left),
    ("PEER", Align::Left),
    ("SINCE", Align::Left),
    ("PROXIES", Align::Left),
];

fn tunnel_row(t: &TunnelInfo) -> Vec<String> {
    vec![
        t.id.clone(),
        t.name.clone(),
        or_dash(t.key_name.as_ref()),
        t.peer.clone(),
        t.since.clone(),
        proxies(&t.proxies),
    ]
}

/// A table of `columns` with a SERVICE column first: one row per item of each service.
fn by_service_table<T>(
    columns: &[(&'static str, Align)],
    by_service: &[(String, Vec<T>)],
    row: fn(&T) -> Vec<String>,
) -> String {
    let mut all = vec![("SERVICE", Align::Left)];
    all.extend_from_slice(columns);
    let mut table = Table::new(&all);
    for (service, items) in by_service {
        for item in items {
            let mut cells = vec![service.clone()];
            cells.extend(row(item));
            table.push(cells);
        }
    }
    table.render()
}

/// A tunnel's proxies on one service: `name=PORT` or `name=HOSTNAME`, comma-separated.
fn proxies(proxies: &[ProxyInfo]) -> String {
    if proxies.is_empty() {
        return "-".into();
    }
    proxies
        .iter()
        .map(|p| match (&p.hostname, p.port) {
            (Some(host), _) => format!("{}={host}", p.name),
            (None, Some(port)) => format!("{}={port}", p.name),
            (None, None) => p.name.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `list-clients SERVICE`.
pub fn clients(service: &str, clients: &[ClientInfo]) -> String {
    if clients.is_empty() {
        return format!("no clients on service `{service}`\n");
    }
    let mut table = Table::new(&CLIENT_COLUMNS);
    for c in clients {
        table.push(client_row(c));
    }
    table.render()
}

/// `list-clients` without a service: every service's clients, with a SERVICE column.
pub fn every_service_clients(by_service: &[(String, Vec<ClientInfo>)]) -> String {
    if by_service.iter().all(|(_, clients)| clients.is_empty()) {
        return "no clients on any service\n".into();
    }
    by_service_table(&CLIENT_COLUMNS, by_service, client_row)
}

const CLIENT_COLUMNS: [(&str, Align); 7] = [
    ("ID", Align::Right),
    ("TUNNEL", Align::Left),
    ("PROXY", Align::Left),
    ("PEER", Align::Left),
    ("IN", Align::Right),
    ("OUT", Align::Right),
    ("SINCE", Align::Left),
];

fn client_row(c: &ClientInfo) -> Vec<String> {
    vec![
        c.id.clone(),
        c.tunnel_id.clone(),
        c.proxy.clone(),
        c.peer.clone(),
        bytes(c.bytes_in),
        bytes(c.bytes_out),
        c.since.clone(),
    ]
}

/// `list-lockouts`.
pub fn lockouts(entries: &[LockoutInfo]) -> String {
    if entries.is_empty() {
        return "no failed logins recorded\n".into();
    }
    let mut table = Table::new(&[
        ("ADDRESS", Align::Left),
        ("FAILURES", Align::Right),
        ("LOCKED UNTIL", Align::Left),
    ]);
    for e in entries {
        table.push(vec![
            e.address.clone(),
            e.failures.to_string(),
            or_dash(e.locked_until.as_ref()),
        ]);
    }
    table.render()
}

/// `cluster`: this hub's standing, then one line per hub of the cluster.
pub fn cluster(info: &crate::admin::model::ClusterInfo) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
    let mut out = fields(&[
        ("hub", info.name.clone()),
        ("redis", info.redis.clone()),
        ("member", yes_no(info.member)),
        ("redis reachable", yes_no(info.reachable)),
    ]);
    if let Some(error) = &info.members_error {
        out.push_str(&format!("members: cannot be read: {error}\n"));
        return out;
    }
    let mut table = Table::new(&[
        ("HUB", Align::Left),
        ("ADVERTISE", Align::Left),
        ("TOKEN", Align::Right),
        ("LEASE LEFT", Align::Right),
    ]);
    for m in &info.members {
        table.push(vec![
            m.name.clone(),
            m.advertise.clone(),
            m.epoch.to_string(),
            format!("{:.1}s", m.lease_left_ms as f64 / 1000.0),
        ]);
    }
    out.push('\n');
    out.push_str(&table.render());
    out
}

/// `status`: the tunnel daemon's state, then one line per proxy.
pub fn status(status: &TunnelStatus) -> String {
    let state = match (status.state.as_str(), &status.retry_at) {
        ("locked_out", Some(at)) => format!("locked out by the hub until {at}"),
        _ => status.state.clone(),
    };
    let mut out = fields(&[
        ("state", state),
        ("hub", status.hub.clone()),
        ("tunnel id", or_dash(status.tunnel_id.as_ref())),
        ("since", status.since.clone()),
        ("last error", or_dash(status.last_error.as_ref())),
    ]);
    out.push('\n');
    if status.proxies.is_empty() {
        out.push_str("no proxies\n");
        return out;
    }
    let mut table = Table::new(&[
        ("PROXY", Align::Left),
        ("SERVICE", Align::Left),
        ("TARGET", Align::Left),
        ("STATE", Align::Left),
        ("PUBLIC", Align::Left),
        ("TARGET UP", Align::Left),
        ("REASON", Align::Left),
    ]);
    for p in &status.proxies {
        let target_up = match p.target_up {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        table.push(vec![
            p.name.clone(),
            p.service.clone(),
            p.target.clone(),
            p.state.clone(),
            or_dash(p.public.as_ref()),
            target_up.into(),
            or_dash(p.reason.as_ref()),
        ]);
    }
    out.push_str(&table.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_show_one_aligned_row_each_with_readable_bytes() {
        let text = services(&[ServiceInfo {
            name: "web".into(),
            kind: "http".into(),
            listen: "0.0.0.0:80".into(),
            domain: Some("example.com".into()),
            tunnels: 2,
            clients: 7,
            bytes_in: 2048,
            bytes_out: 1_258_291,
        }]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("NAME"), "{text}");
        assert!(lines[1].contains("example.com"), "{text}");
        assert!(lines[1].ends_with("2.0 KiB  1.2 MiB"), "{text}");
    }

    #[test]
    fn a_locked_out_tunnel_says_until_when() {
        let status = TunnelStatus {
            state: "locked_out".into(),
            hub: "hub.example:7000".into(),
            tunnel_id: None,
            since: "2027-01-15T07:30:00Z".into(),
            last_error: Some("the hub refused the tunnel: locked out".into()),
            retry_at: Some("2027-01-15T08:00:00Z".into()),
            proxies: vec![],
        };
        let text = super::status(&status);
        assert!(
            text.lines()
                .next()
                .is_some_and(|l| l.ends_with("locked out by the hub until 2027-01-15T08:00:00Z")),
            "{text}"
        );
        let connecting = super::status(&TunnelStatus {
            state: "connecting".into(),
            retry_at: None,
            ..status
        });
        assert!(
            connecting
                .lines()
                .next()
                .is_some_and(|l| l.ends_with("connecting"))
        );
    }

    #[test]
    fn proxies_show_their_port_or_hostname() {
        let shown = proxies(&[
            ProxyInfo {
                name: "ssh".into(),
                port: Some(20022),
                hostname: None,
            },
            ProxyInfo {
                name: "site".into(),
                port: None,
                hostname: Some("app.example.com".into()),
            },
        ]);
        assert_eq!(shown, "ssh=20022, site=app.example.com");
    }

    #[test]
    fn empty_lists_say_so() {
        assert_eq!(tunnels("web", &[]), "no tunnels on service `web`\n");
        assert_eq!(clients("web", &[]), "no clients on service `web`\n");
        assert_eq!(services(&[]), "no services\n");
    }
}
