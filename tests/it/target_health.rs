//! A tunnel reports each proxy's target health on its admin socket (`target_up` in its status,
//! `tunnelize_target_up` in its metrics), and the report follows the target: up while it
//! accepts, down once it stops (the next client is refused), up again once it is back.

use crate::common;

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use common::*;
use tunnelize::admin::client::AdminClient;
use tunnelize::admin::model::{self, TunnelStatus};
use tunnelize::tunnel::{Backoff, Tunnel, supervise};

/// The proxy's `target_up` in the status and its `tunnelize_target_up` sample in the metrics.
async fn health(admin: &AdminClient, proxy: &str) -> (Option<bool>, Option<f64>) {
    let status: TunnelStatus = admin.get(model::STATUS).await.unwrap();
    let up = status
        .proxies
        .iter()
        .find(|p| p.name == proxy)
        .expect("the proxy is listed")
        .target_up;
    let metrics = admin.get_text(model::METRICS).await.unwrap();
    let prefix = format!("tunnelize_target_up{{proxy=\"{proxy}\"}} ");
    let sample = metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|v| v.trim().parse().unwrap());
    (up, sample)
}

async fn reported(admin: &AdminClient, up: bool) {
    let want = (Some(up), Some(f64::from(u8::from(up))));
    eventually(
        &format!("the target reported up = {up}"),
        DEADLINE,
        || async { (health(admin, "web").await == want).then_some(()) },
    )
    .await;
}

/// A client whose tunnel cannot reach the target is closed without an answer.
async fn refused(public: SocketAddr) {
    let mut socket = connect(public).await;
    let _ = socket.write_all(b"anyone?").await;
    closed_by_peer(&mut socket, "a client of a stopped target").await;
}

#[tokio::test]
async fn target_health_goes_down_when_the_target_stops_and_up_when_it_is_back() {
    let hub = start_hub(vec![tcp_any("tcp")]).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    let mut serving = serve_echo(listener);

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tunnel.sock");
    let mut config = tunnel_config(&hub, vec![proxy("web", "tcp", target, None)]);
    config.admin = admin_on(&socket);
    let admin_config = config.admin.clone();
    let tunnel = Tunnel::new(config).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let _api = tunnelize::admin::serve_tunnel(tunnel.status().clone(), &admin_config, None, &stop)
        .await
        .unwrap();
    let running = tokio::spawn(supervise(tunnel, Backoff::default(), stop.clone()));
    let admin = AdminClient::unix(&socket);
    let status: TunnelStatus = eventually("the tunnel to connect", DEADLINE, || async {
        let s: TunnelStatus = admin.get(model::STATUS).await.ok()?;
        (s.state == "connected").then_some(s)
    })
    .await;
    let port: u16 = status.proxies[0]
        .public
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    let public = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(
        health(&admin, "web").await,
        (None, None),
        "nothing is known before the first client"
    );

    assert_eq!(round_trip(public, b"first").await, b"first");
    reported(&admin, true).await;

    // The target stops: the next client finds it down.
    serving.abort();
    let _ = serving.await;
    refused(public).await;
    reported(&admin, false).await;

    // Back on the same address: the next client finds it up.
    serving = serve_echo(TcpListener::bind(target).await.unwrap());
    let mut client = connect(public).await;
    assert!(echoes(&mut client, b"again").await);
    reported(&admin, true).await;

    serving.abort();
    stop.cancel();
    let _ = tokio::time::timeout(DEADLINE, running).await;
}
