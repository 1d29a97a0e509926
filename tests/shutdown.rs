//! Stopping a hub (SIGTERM in the daemon, the shutdown token here): it stops accepting
//! tunnels and clients, lets connected clients finish for up to `shutdown_timeout`, then
//! closes the rest and ends.

mod common;

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
    eventually("the public port to stop accepting", || async {
        TcpStream::connect(tunnel.addr(0))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    eventually("the tunnel listener to stop accepting", || async {
        TcpStream::connect(hub.addr).await.is_err().then_some(())
    })
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
    let mut buf = [0u8; 8];
    let closed = tokio::time::timeout(DEADLINE, stays.read(&mut buf))
        .await
        .expect("the client is closed");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
}
