//! Stopping a hub (SIGTERM in the daemon, the shutdown token here): it stops accepting
//! tunnels and clients, lets connected clients finish for up to `shutdown_timeout`, then
//! closes the rest and ends.

use crate::common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

#[tokio::test]
async fn a_stopping_hub_takes_no_new_clients_and_lets_connected_ones_finish() {
    let mut config = hub_config(vec![tcp_any("tcp")]);
    config.shutdown_timeout = DEADLINE * 2;
    let hub = start_hub_with(config).await;
    let echo = start_echo().await;
    let tunnel = start_tunnel(tunnel_config(&hub, vec![proxy("e", "tcp", echo, None)])).await;
    let mut live = connect(tunnel.addr(0)).await;
    assert!(echoes(&mut live, b"before").await);

    hub.stop.cancel();
    eventually("the public port to stop accepting", DEADLINE, || async {
        TcpStream::connect(tunnel.addr(0))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    eventually(
        "the tunnel listener to stop accepting",
        DEADLINE,
        || async { TcpStream::connect(hub.addr).await.is_err().then_some(()) },
    )
    .await;
    // The connected client still gets its bytes through, and the hub waits for it.
    assert!(echoes(&mut live, b"during the drain").await);
    assert!(!hub.task.is_finished());
    live.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, live.read_to_end(&mut rest)).await;
    drop(live);
    tokio::time::timeout(DEADLINE, hub.task)
        .await
        .expect("the hub ends once its clients are gone")
        .unwrap();
    tokio::time::timeout(DEADLINE, tunnel.task)
        .await
        .expect("the tunnel's session ends with the hub")
        .unwrap();
}

#[tokio::test]
async fn clients_left_after_shutdown_timeout_are_closed_and_the_hub_ends() {
    let mut config = hub_config(vec![tcp_any("tcp")]);
    config.shutdown_timeout = Duration::from_millis(300);
    let hub = start_hub_with(config).await;
    let echo = start_echo().await;
    let tunnel = start_tunnel(tunnel_config(&hub, vec![proxy("e", "tcp", echo, None)])).await;
    let mut stays = connect(tunnel.addr(0)).await;
    assert!(echoes(&mut stays, b"x").await);
    hub.stop.cancel();
    tokio::time::timeout(DEADLINE, hub.task)
        .await
        .expect("the hub ends after shutdown_timeout")
        .unwrap();
    closed_by_peer(&mut stays, "the client of the stopped hub").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_hub_closes_idle_keep_alive_connections_at_once() {
    let mut config = hub_config(vec![http_any("web", "stop.test"), tcp_any("tcp")]);
    // Long enough that only the stop itself can explain the connection closing.
    config.shutdown_timeout = DEADLINE * 3;
    config.idle_timeout = DEADLINE * 3;
    let hub = start_hub_with(config).await;
    let web = hub.services["web"];
    let app = common::web::start_app("a").await;
    let echo = start_echo().await;
    let mut p = proxy("a", "web", app.addr, None);
    p.hostname = Some("app".into());
    let tunnel = start_tunnel(tunnel_config(&hub, vec![p, proxy("e", "tcp", echo, None)])).await;
    // A TCP client that keeps the hub draining for shutdown_timeout while it stays connected.
    let mut held = connect(tunnel.addr(1)).await;
    assert!(echoes(&mut held, b"hold").await);

    // One keep-alive connection that has finished a request and now sits idle.
    let mut idle = TcpStream::connect(web).await.unwrap();
    idle.write_all(b"GET /one HTTP/1.1\r\nHost: app.stop.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = tokio::time::timeout(DEADLINE, idle.read(&mut buf))
        .await
        .expect("a response")
        .unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(
        !first.to_ascii_lowercase().contains("connection: close"),
        "{first}"
    );

    hub.stop.cancel();
    // The idle connection is closed during the drain, not at its end.
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, idle.read_to_end(&mut rest))
        .await
        .expect("the idle keep-alive connection is closed when the hub stops")
        .unwrap();
    assert!(
        rest.is_empty(),
        "nothing more was sent: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        !hub.task.is_finished(),
        "still draining for the held client"
    );
    assert!(echoes(&mut held, b"still served").await);
    drop(held);
    tokio::time::timeout(DEADLINE, hub.task)
        .await
        .expect("the hub ends without waiting for keep-alive connections")
        .unwrap();
}
