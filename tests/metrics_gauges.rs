//! The process gauges on both daemons' `/metrics` (`tunnelize_tasks`, `tunnelize_open_fds`,
//! `tunnelize_resident_memory_bytes`): present, plausible, up while clients are connected and
//! back down once they are gone. `bench/run.sh --soak` reads the same gauges for hours.
//!
//! Hub, tunnel and clients run in this one process and on one runtime, so both daemons report
//! the same process: the test checks that each gauge moves with the load, not per-daemon values.

mod common;

use std::net::SocketAddr;

use common::*;
use tunnelize::admin::client::AdminClient;
use tunnelize::admin::model::{self, TunnelStatus};
use tunnelize::tunnel::{Backoff, Tunnel, supervise};

/// Clients held open at once in the load step.
const CLIENTS: usize = 20;

/// The gauges of one `/metrics` scrape.
#[derive(Debug, Clone, Copy)]
struct Gauges {
    tasks: f64,
    fds: f64,
    rss: f64,
}

/// The value of the unlabelled sample `name`, which must be a gauge.
fn gauge(text: &str, name: &str) -> Option<f64> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse as Prometheus text");
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.is_empty())
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) => v,
            ref other => panic!("{name} is not a gauge: {other:?}"),
        })
}

async fn scrape(admin: &AdminClient, who: &str) -> Gauges {
    let text = admin.get_text(model::METRICS).await.unwrap();
    let get = |name: &str| gauge(&text, name).unwrap_or_else(|| panic!("{who}: no {name}\n{text}"));
    let g = Gauges {
        tasks: get("tunnelize_tasks"),
        fds: get("tunnelize_open_fds"),
        rss: get("tunnelize_resident_memory_bytes"),
    };
    assert!(g.tasks >= 1.0, "{who}: {g:?}");
    // stdin/stdout/stderr, the listeners, the link connections, the admin socket.
    assert!(g.fds >= 5.0, "{who}: {g:?}");
    assert!(
        g.rss > 1024.0 * 1024.0 && g.rss < 64.0 * 1024.0 * 1024.0 * 1024.0,
        "{who}: {g:?}"
    );
    g
}

#[tokio::test]
async fn both_daemons_export_task_fd_and_memory_gauges_that_follow_the_load() {
    let dir = tempfile::tempdir().unwrap();
    let hub_socket = dir.path().join("hub.sock");
    let tunnel_socket = dir.path().join("tunnel.sock");
    let mut config = hub_config(vec![tcp_any("tcp")]);
    config.admin = admin_on(&hub_socket);
    let (hub, _listeners, _view) = start_hub_full(config).await;

    let target = start_echo().await;
    let mut config = tunnel_config(&hub, vec![proxy("echo", "tcp", target, None)]);
    config.admin = admin_on(&tunnel_socket);
    let admin_config = config.admin.clone();
    let tunnel = Tunnel::new(config).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let _tunnel_listeners =
        tunnelize::admin::serve_tunnel(tunnel.status().clone(), &admin_config, None, &stop)
            .await
            .unwrap();
    let running = tokio::spawn(supervise(tunnel, Backoff::default(), stop.clone()));

    let hub_admin = AdminClient::unix(&hub_socket);
    let tunnel_admin = AdminClient::unix(&tunnel_socket);
    let status: TunnelStatus = eventually("the tunnel to connect", DEADLINE, || async {
        let s: TunnelStatus = tunnel_admin.get(model::STATUS).await.ok()?;
        let live = s.state == "connected" && s.proxies.iter().all(|p| p.state == "live");
        live.then_some(s)
    })
    .await;
    let port: u16 = status.proxies[0]
        .public
        .as_deref()
        .and_then(|p| p.parse().ok())
        .expect("the echo proxy has a public port");
    let echo = SocketAddr::from(([127, 0, 0, 1], port));

    // One client first, so whatever is set up on first use exists in the baseline.
    drop(echoing_client(echo, 100).await);
    let base = eventually("the warm-up client to be gone", DEADLINE, || async {
        let g = scrape(&hub_admin, "hub").await;
        scrape(&tunnel_admin, "tunnel").await;
        (hub_clients(&hub_admin).await == 0.0).then_some(g)
    })
    .await;

    // CLIENTS open clients: each is at least one more task and one more file (the client's
    // socket; the hub's, the tunnel's and the echo target's sockets come on top).
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(echoing_client(echo, 100 + i).await);
    }
    let held = scrape(&hub_admin, "hub").await;
    assert!(
        held.tasks >= base.tasks + CLIENTS as f64,
        "tasks with {CLIENTS} clients: {held:?}, before: {base:?}"
    );
    assert!(
        held.fds >= base.fds + CLIENTS as f64,
        "fds with {CLIENTS} clients: {held:?}, before: {base:?}"
    );
    let from_tunnel = scrape(&tunnel_admin, "tunnel").await;
    assert!(
        from_tunnel.tasks >= base.tasks + CLIENTS as f64,
        "{from_tunnel:?}"
    );

    // Gone again: tasks and files come back to the baseline (a few of slack for the admin
    // request being served and connections still closing).
    drop(clients);
    eventually("tasks and fds back to the baseline", DEADLINE, || async {
        let g = scrape(&hub_admin, "hub").await;
        let t = scrape(&tunnel_admin, "tunnel").await;
        let back = |x: &Gauges| x.tasks <= base.tasks + 3.0 && x.fds <= base.fds + 3.0;
        (back(&g) && back(&t)).then_some(())
    })
    .await;

    stop.cancel();
    let _ = tokio::time::timeout(DEADLINE, running).await;
    hub.stop.cancel();
    let _ = tokio::time::timeout(DEADLINE, hub.task).await;
}

/// Clients the hub counts on its `tcp` service.
async fn hub_clients(admin: &AdminClient) -> f64 {
    let text = admin.get_text(model::METRICS).await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse as Prometheus text");
    scrape
        .samples
        .iter()
        .find(|s| s.metric == "tunnelize_clients" && s.labels.get("service") == Some("tcp"))
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or(f64::NAN)
}
