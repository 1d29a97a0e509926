//! The hub's login lockout: failed logins from one address (tunnel keys and monitoring keys
//! alike) lock that address out, even with the right key, with a time to retry; other
//! addresses are unaffected; a lockout ends after its duration or when an operator lifts it.

use crate::common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use common::*;
use tunnelize::admin::client::AdminClient;
use tunnelize::admin::model::{self, LockoutInfo, Message};
use tunnelize::config::{AdminConfig, TunnelConfig};
use tunnelize::secret::Secret;
use tunnelize::tunnel::{Tunnel, TunnelError};

const MONITOR_KEY: &str = "monitoring-key-0123456789abcdef";

struct Locked {
    _dir: tempfile::TempDir,
    hub: TestHub,
    socket: std::path::PathBuf,
    tls: SocketAddr,
}

async fn hub(failures: u32, duration: Duration) -> Locked {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hub.sock");
    let mut config = hub_config(vec![tcp_any("tcp")]);
    config.lockout_failures = failures;
    config.lockout_duration = duration;
    config.admin = AdminConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        key: Some(MONITOR_KEY.into()),
        ..admin_on(&socket)
    };
    let (hub, listeners) = start_hub_with_admin(config).await;
    Locked {
        _dir: dir,
        hub,
        socket,
        tls: listeners.tls.unwrap(),
    }
}

fn with_key(hub: &TestHub, key: &str) -> TunnelConfig {
    let mut config = tunnel_config(hub, vec![]);
    config.key = Some(Secret::new(key));
    config
}

async fn login(hub: &TestHub, key: &str) -> Result<(), TunnelError> {
    Tunnel::new(with_key(hub, key))
        .unwrap()
        .connect()
        .await
        .map(drop)
}

/// `GET /v1/system` on the TLS admin listener from `source`; returns the status line and body.
async fn admin_get(live: &Locked, source: IpAddr, key: &str) -> String {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let stream = socket.connect(live.tls).await.unwrap();
    let mut tls = tls_over(stream, &live.hub.fingerprint).await;
    let request = format!(
        "GET /v1/system HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\n\
         Connection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

fn local(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

#[tokio::test]
async fn sixth_login_from_the_same_address_is_refused_even_with_the_right_key() {
    let live = hub(5, Duration::from_secs(1800)).await;
    // Failures of both kinds count: three wrong tunnel keys, two wrong monitoring keys.
    for _ in 0..3 {
        assert!(matches!(
            login(&live.hub, "wrong-key-0123456789").await,
            Err(TunnelError::AuthFailed(_))
        ));
    }
    for _ in 0..2 {
        let answer = admin_get(&live, local(1), "wrong-monitoring-key").await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }
    match login(&live.hub, KEY).await {
        Err(TunnelError::LockedOut {
            message,
            retry_after,
        }) => {
            assert!(message.contains("locked out"), "{message}");
            assert!(message.contains("retry in 29m"), "{message}");
            let announced = retry_after.expect("the refusal announces when the lockout ends");
            assert!(
                announced > Duration::from_secs(1790) && announced <= Duration::from_secs(1800),
                "{announced:?}"
            );
        }
        Err(other) => panic!("expected a lockout refusal, got {other}"),
        Ok(()) => panic!("a locked-out address logged in"),
    }
    let answer = admin_get(&live, local(1), MONITOR_KEY).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: "),
        "{answer}"
    );
    // Another address is unaffected.
    let answer = admin_get(&live, local(2), MONITOR_KEY).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The operator sees the entry and lifts it.
    let admin = AdminClient::unix(&live.socket);
    let entries: Vec<LockoutInfo> = admin.get(model::LOCKOUTS).await.unwrap();
    let entry = entries.iter().find(|e| e.address == "127.0.0.1").unwrap();
    assert_eq!(entry.failures, 5);
    assert!(entry.locked_until.is_some());
    let metrics = admin.get_text(model::METRICS).await.unwrap();
    assert!(
        metrics.contains("tunnelize_lockouts_total 1\n"),
        "{metrics}"
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tunnelizectl"))
        .args(["--socket", live.socket.to_str().unwrap(), "list-lockouts"])
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("127.0.0.1"));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tunnelizectl"))
        .args([
            "--socket",
            live.socket.to_str().unwrap(),
            "unlock",
            "127.0.0.1",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    login(&live.hub, KEY)
        .await
        .expect("unlocked: the right key works again");
    match admin.delete::<Message>(&model::lockout("127.0.0.1")).await {
        Err(tunnelize::admin::client::AdminError::NotFound { .. }) => {}
        other => panic!("a success cleared the entry, expected 404, got {other:?}"),
    }
}

#[tokio::test]
async fn a_lockout_ends_after_its_configured_duration() {
    let live = hub(2, Duration::from_secs(1)).await;
    for _ in 0..2 {
        assert!(login(&live.hub, "wrong-key-0123456789").await.is_err());
    }
    assert!(matches!(
        login(&live.hub, KEY).await,
        Err(TunnelError::LockedOut { .. })
    ));
    eventually("the lockout to end", DEADLINE, || async {
        login(&live.hub, KEY).await.ok()
    })
    .await;
}

#[tokio::test]
async fn a_lockout_is_a_refusal_the_tunnel_retries_not_a_permanent_failure() {
    let live = hub(1, Duration::from_secs(1)).await;
    assert!(login(&live.hub, "wrong-key-0123456789").await.is_err());
    let refusal = login(&live.hub, KEY).await.unwrap_err();
    assert!(
        !refusal.is_permanent(),
        "a lockout is worth retrying: {refusal}"
    );
}
