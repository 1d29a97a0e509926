//! The hub's login lockout: failed logins from one address (tunnel keys and monitoring keys
//! alike) lock that address out, even with the right key, with a time to retry; other
//! addresses are unaffected; a lockout ends after its duration or when an operator lifts it.
//! A tunnel refused for a lockout waits until it ends (the refusal says when), shows it in its
//! status meanwhile, and makes at most one attempt per announced retry time.

use crate::common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use common::*;
use tunnelize::admin::client::AdminClient;
use tunnelize::admin::model::{self, LockoutInfo, Message, TunnelStatus};
use tunnelize::config::{AdminConfig, TunnelConfig};
use tunnelize::secret::Secret;
use tunnelize::tunnel::{Backoff, Tunnel, TunnelError, supervise};

const MONITOR_KEY: &str = "monitoring-key-0123456789abcdef";

struct Locked {
    _dir: tempfile::TempDir,
    hub: TestHub,
    socket: std::path::PathBuf,
    tls: SocketAddr,
    view: tunnelize::hub::inspect::HubView,
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
    let (hub, listeners, view) = start_hub_full(config).await;
    Locked {
        _dir: dir,
        hub,
        socket,
        tls: listeners.tls.unwrap(),
        view,
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
    // Counted: the tunnel's login and the admin request refused for the lockout.
    assert!(
        metrics.contains("tunnelize_lockout_refusals_total 2\n"),
        "{metrics}"
    );
    let out = ctl(&live.socket, &["list-lockouts"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("127.0.0.1"));
    let out = ctl(&live.socket, &["unlock", "127.0.0.1"]).await;
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

/// Lockout refusals the hub has counted (`tunnelize_lockout_refusals_total`).
async fn lockout_refusals(admin: &AdminClient) -> u64 {
    let metrics = admin.get_text(model::METRICS).await.unwrap();
    metric(&metrics, "tunnelize_lockout_refusals_total").expect("the counter is exported")
}

/// A tunnel daemon (the reconnect loop, with its status socket) with the right key, and a
/// backoff so short that a tunnel ignoring the lockout would retry dozens of times a second.
struct Supervised {
    _dir: tempfile::TempDir,
    admin: AdminClient,
    socket: std::path::PathBuf,
    stop: tokio_util::sync::CancellationToken,
    running: tokio::task::JoinHandle<Result<(), TunnelError>>,
}

async fn supervised(hub: &TestHub) -> Supervised {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tunnel.sock");
    let mut config = with_key(hub, KEY);
    config.admin = admin_on(&socket);
    let admin_config = config.admin.clone();
    let tunnel = Tunnel::new(config).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tunnelize::admin::serve_tunnel(tunnel.status().clone(), &admin_config, None, &stop)
        .await
        .unwrap();
    let hammering = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(50),
    };
    let running = tokio::spawn(supervise(tunnel, hammering, stop.clone()));
    Supervised {
        _dir: dir,
        admin: AdminClient::unix(&socket),
        socket,
        stop,
        running,
    }
}

#[tokio::test]
async fn a_locked_out_tunnel_makes_one_attempt_per_announced_retry_time_then_connects() {
    const LOCKOUT: Duration = Duration::from_secs(3);
    let live = hub(1, LOCKOUT).await;
    let hub_admin = AdminClient::unix(&live.socket);
    assert!(matches!(
        login(&live.hub, "wrong-key-0123456789").await,
        Err(TunnelError::AuthFailed(_))
    ));
    let started = std::time::Instant::now();
    let tunnel = supervised(&live.hub).await;

    // The first attempt is refused; the tunnel says it is locked out, and until when.
    eventually("the first refusal", DEADLINE, || async {
        (lockout_refusals(&hub_admin).await >= 1).then_some(())
    })
    .await;
    let status: TunnelStatus = eventually("the tunnel to show the lockout", DEADLINE, || async {
        let s: TunnelStatus = tunnel.admin.get(model::STATUS).await.ok()?;
        (s.state == "locked_out").then_some(s)
    })
    .await;
    let retry_at = status.retry_at.as_deref().expect("locked out until when");
    humantime::parse_rfc3339(retry_at).expect("an RFC 3339 time");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("locked out")),
        "{status:?}"
    );
    let out = ctl(&tunnel.socket, &["status"]).await;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(&format!("locked out by the hub until {retry_at}")),
        "{shown}"
    );

    // Halfway through the tunnel's wait, the address is locked again (an operator's unlock,
    // then another wrong key), until after the tunnel's next attempt: that attempt is refused
    // too, and the tunnel waits the new lockout out as well.
    eventually("the lockout to be half over", DEADLINE, || async {
        let left = live.view.locked_out(local(1)).err()?;
        (left <= LOCKOUT / 2).then_some(())
    })
    .await;
    assert_eq!(lockout_refusals(&hub_admin).await, 1, "one attempt so far");
    let _: Message = hub_admin
        .delete(&model::lockout("127.0.0.1"))
        .await
        .unwrap();
    assert!(matches!(
        login(&live.hub, "wrong-key-0123456789").await,
        Err(TunnelError::AuthFailed(_))
    ));

    eventually(
        "the tunnel to connect once the lockout ends",
        DEADLINE,
        || async {
            let s: TunnelStatus = tunnel.admin.get(model::STATUS).await.ok()?;
            (s.state == "connected").then_some(())
        },
    )
    .await;
    let window = started.elapsed();
    let refused = lockout_refusals(&hub_admin).await;
    let most = window.as_secs() / LOCKOUT.as_secs() + 1;
    assert!(
        (2..=most).contains(&refused),
        "{refused} attempts refused in {window:?}, at most one per {LOCKOUT:?} expected, and \
         one per lockout"
    );
    let status: TunnelStatus = tunnel.admin.get(model::STATUS).await.unwrap();
    assert_eq!(status.retry_at, None, "{status:?}");

    tunnel.stop.cancel();
    assert!(tunnel.running.await.unwrap().is_ok());
}
