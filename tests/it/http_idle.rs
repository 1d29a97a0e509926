//! Every wait of the http service on a client is bounded: a client that stops sending in the
//! middle of a request body is dropped after `idle_timeout`, and a well-behaved client on the
//! same hub is served meanwhile.

use crate::common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::web::start_app;
use common::*;

#[tokio::test]
async fn a_client_stalling_in_its_request_body_is_dropped_after_the_idle_timeout() {
    let mut config = hub_config(vec![http_any("web", "idle.test")]);
    config.idle_timeout = Duration::from_millis(500);
    let hub = start_hub_with(config).await;
    let web = hub.services["web"];
    let app = start_app("app").await;
    let mut p = proxy("app", "web", app.addr, None);
    p.hostname = Some("app".into());
    let _tunnel = start_tunnel(tunnel_config(&hub, vec![p])).await;

    let mut stalled = connect(web).await;
    stalled
        .write_all(b"POST /upload HTTP/1.1\r\nHost: app.idle.test\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    // A normal request meanwhile is served.
    let mut normal = connect(web).await;
    normal
        .write_all(b"GET / HTTP/1.1\r\nHost: app.idle.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(DEADLINE, normal.read_to_string(&mut answer))
        .await
        .expect("the normal client is answered")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The stalled one is closed, not kept until the 30 s response timeout (which is longer
    // than DEADLINE): its read ends, with EOF or a reset, and no response was sent.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stalled.read_to_end(&mut rest))
        .await
        .expect("the stalled client is dropped after idle_timeout");
    let text = String::from_utf8_lossy(&rest);
    assert!(!text.contains("200 OK"), "{text}");
}
