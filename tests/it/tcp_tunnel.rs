//! TCP forwarding through real in-process hubs and tunnels on 127.0.0.1.

use crate::common;

use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tunnelize::config::{HubTrust, PortRange, ServiceConfig, ServiceKind, TcpService};
use tunnelize::protocol::ProxyOutcome;
use tunnelize::secret::Secret;
use tunnelize::tunnel::{Tunnel, TunnelError};

#[tokio::test]
async fn echo_through_a_tunnel() {
    let hub = start_hub(vec![tcp_any("tcp")]).await;
    let echo = start_echo().await;
    let tunnel = start_tunnel(tunnel_config(&hub, vec![proxy("echo", "tcp", echo, None)])).await;
    let back = round_trip(tunnel.addr(0), b"hello through the tunnel").await;
    assert_eq!(back, b"hello through the tunnel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_arrive_intact() {
    const LEN: usize = 64 * 1024 * 1024;
    let hub = start_hub(vec![tcp_any("tcp")]).await;
    let echo = start_echo().await;
    let tunnel = start_tunnel(tunnel_config(&hub, vec![proxy("echo", "tcp", echo, None)])).await;

    let socket = connect(tunnel.addr(0)).await;
    let (mut r, mut w) = socket.into_split();
    let writer = tokio::spawn(async move {
        let mut hash = Sha256::new();
        let mut sent = 0usize;
        let mut seed = 1;
        while sent < LEN {
            let chunk = payload(seed, 256 * 1024);
            seed += 1;
            hash.update(&chunk);
            w.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
        w.shutdown().await.unwrap();
        (sent, <[u8; 32]>::from(hash.finalize()))
    });
    let reader = tokio::spawn(async move {
        let mut hash = Sha256::new();
        let mut got = 0usize;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            got += n;
        }
        (got, <[u8; 32]>::from(hash.finalize()))
    });
    let (sent, sent_hash) = tokio::time::timeout(Duration::from_secs(120), writer)
        .await
        .unwrap()
        .unwrap();
    let (got, got_hash) = tokio::time::timeout(Duration::from_secs(120), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sent, LEN);
    assert_eq!(got, LEN, "every byte sent must come back");
    assert_eq!(got_hash, sent_hash, "the echoed bytes must be identical");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_clients_each_get_their_own_data() {
    let hub = start_hub(vec![tcp_any("tcp")]).await;
    let echo = start_echo().await;
    let tunnel = start_tunnel(tunnel_config(&hub, vec![proxy("echo", "tcp", echo, None)])).await;
    let addr = tunnel.addr(0);
    let clients: Vec<_> = (0..200u64)
        .map(|i| {
            tokio::spawn(async move {
                let data = payload(1000 + i, 32 * 1024 + i as usize);
                let back = round_trip(addr, &data).await;
                (sha256(&data), sha256(&back), back.len(), data.len())
            })
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        let (want, got, got_len, want_len) = client.await.unwrap();
        assert_eq!(got_len, want_len, "client {i} length");
        assert_eq!(got, want, "client {i} got someone else's or damaged data");
    }
}

#[tokio::test]
async fn a_client_that_half_closes_still_gets_the_answer() {
    // The target reads until EOF, then answers: only works if the client's FIN crosses the tunnel
    // while the way back stays open.
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = target.accept().await.unwrap();
        let mut req = Vec::new();
        s.read_to_end(&mut req).await.unwrap();
        let answer = format!("got {} bytes", req.len());
        s.write_all(answer.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
    });
    let hub = start_hub(vec![tcp_any("tcp")]).await;
    let tunnel = start_tunnel(tunnel_config(
        &hub,
        vec![proxy("t", "tcp", target_addr, None)],
    ))
    .await;
    let back = round_trip(tunnel.addr(0), &[7u8; 5000]).await;
    assert_eq!(back, b"got 5000 bytes");
}

#[tokio::test]
async fn a_target_that_half_closes_still_receives_the_client() {
    // The target greets and half-closes at once, then keeps reading what the client sends.
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (s, _) = target.accept().await.unwrap();
        let (mut r, mut w) = s.into_split();
        w.write_all(b"greeting").await.unwrap();
        w.shutdown().await.unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        let _ = tx.send(got);
    });
    let hub = start_hub(vec![tcp_any("tcp")]).await;
    let tunnel = start_tunnel(tunnel_config(
        &hub,
        vec![proxy("t", "tcp", target_addr, None)],
    ))
    .await;
    let socket = connect(tunnel.addr(0)).await;
    let (mut r, mut w) = socket.into_split();
    let mut greeting = Vec::new();
    tokio::time::timeout(DEADLINE, r.read_to_end(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(greeting, b"greeting", "the client sees the target's EOF");
    w.write_all(b"still talking after your FIN").await.unwrap();
    w.shutdown().await.unwrap();
    let got = tokio::time::timeout(DEADLINE, rx).await.unwrap().unwrap();
    assert_eq!(got, b"still talking after your FIN");
}

#[tokio::test]
async fn several_tunnels_with_several_proxies_each_route_to_their_own_targets() {
    let hub = start_hub(vec![tcp_any("a"), tcp_any("b")]).await;
    let mut targets = Vec::new();
    for tag in ["one", "two", "three", "four"] {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        targets.push(l.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let _ = s.write_all(tag.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
    }
    let t1 = start_tunnel(tunnel_config(
        &hub,
        vec![
            proxy("one", "a", targets[0], None),
            proxy("two", "b", targets[1], None),
        ],
    ))
    .await;
    let t2 = start_tunnel(tunnel_config(
        &hub,
        vec![
            proxy("three", "a", targets[2], None),
            proxy("four", "b", targets[3], None),
        ],
    ))
    .await;
    for (tunnel, index, want) in [
        (&t1, 0, "one"),
        (&t1, 1, "two"),
        (&t2, 0, "three"),
        (&t2, 1, "four"),
    ] {
        assert_eq!(round_trip(tunnel.addr(index), b"").await, want.as_bytes());
    }
}

#[tokio::test]
async fn a_taken_port_is_rejected_with_the_reason_and_other_proxies_still_work() {
    let hub = start_hub(vec![tcp_any("tcp")]).await;
    let echo = start_echo().await;
    let first = start_tunnel(tunnel_config(&hub, vec![proxy("first", "tcp", echo, None)])).await;
    let taken = first.port(0);
    let second = start_tunnel(tunnel_config(
        &hub,
        vec![
            proxy("grab", "tcp", echo, Some(taken)),
            proxy("fine", "tcp", echo, None),
            proxy("nope", "missing", echo, None),
        ],
    ))
    .await;
    match &second.outcomes[0] {
        ProxyOutcome::Rejected { name, reason } => {
            assert_eq!(name, "grab");
            assert!(
                reason.contains(&format!("port {taken} is taken by another tunnel")),
                "{reason}"
            );
        }
        other => panic!("a taken port must be rejected, got {other:?}"),
    }
    match &second.outcomes[2] {
        ProxyOutcome::Rejected { reason, .. } => {
            assert!(reason.contains("no service `missing`"), "{reason}")
        }
        other => panic!("an unknown service must be rejected, got {other:?}"),
    }
    assert_eq!(round_trip(second.addr(1), b"ok").await, b"ok");
    assert_eq!(
        round_trip(first.addr(0), b"first still mine").await,
        b"first still mine"
    );
}

#[tokio::test]
async fn out_of_range_and_os_taken_ports_are_rejected_with_reasons() {
    // A port some other program holds, inside the service's range.
    let squatter = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let held = squatter.local_addr().unwrap().port();
    let ranged = ServiceConfig {
        name: "ranged".into(),
        kind: ServiceKind::Tcp(TcpService {
            listen: [127, 0, 0, 1].into(),
            ports: PortRange {
                start: held,
                end: held,
            },
        }),
    };
    let hub = start_hub(vec![ranged]).await;
    let echo = start_echo().await;
    let outside = if held > 1024 { held - 1 } else { held + 1 };
    let tunnel = start_tunnel(tunnel_config(
        &hub,
        vec![
            proxy("out", "ranged", echo, Some(outside)),
            proxy("held", "ranged", echo, Some(held)),
            proxy("any", "ranged", echo, None),
        ],
    ))
    .await;
    let reasons: Vec<String> = tunnel
        .outcomes
        .iter()
        .map(|o| match o {
            ProxyOutcome::Rejected { reason, .. } => reason.clone(),
            other => panic!("expected a rejection, got {other:?}"),
        })
        .collect();
    assert!(
        reasons[0].contains(&format!(
            "port {outside} is outside service `ranged`'s range {held}-{held}"
        )),
        "{}",
        reasons[0]
    );
    assert!(
        reasons[1].contains("in use by another program"),
        "{}",
        reasons[1]
    );
    assert!(reasons[2].contains("no free port left"), "{}", reasons[2]);
    drop(squatter);
}

#[tokio::test]
async fn a_wrong_key_is_refused_as_an_authentication_failure() {
    let hub = start_hub(vec![tcp_any("tcp")]).await;
    let echo = start_echo().await;
    let mut config = tunnel_config(&hub, vec![proxy("echo", "tcp", echo, None)]);
    config.key = Some(Secret::new("not-the-key"));
    let err = Tunnel::new(config)
        .unwrap()
        .connect()
        .await
        .err()
        .expect("a wrong key must fail");
    assert!(matches!(err, TunnelError::AuthFailed(_)), "{err}");
    assert!(err.is_permanent());
    assert!(err.to_string().contains("authentication failed"), "{err}");
    assert!(!err.to_string().contains("not-the-key"));
}

#[tokio::test]
async fn a_pinned_fingerprint_connects_and_a_wrong_pin_is_refused() {
    let hub = start_hub(vec![tcp_any("tcp")]).await;
    let echo = start_echo().await;
    let good = tunnel_config(&hub, vec![proxy("echo", "tcp", echo, None)]);
    assert!(Tunnel::new(good.clone()).unwrap().connect().await.is_ok());

    let mut bad = good;
    let mut pin = hub.fingerprint.0;
    pin[0] ^= 0xff;
    bad.hub_trust = HubTrust::Fingerprint(pin);
    let err = Tunnel::new(bad)
        .unwrap()
        .connect()
        .await
        .err()
        .expect("a wrong pin must fail");
    assert!(matches!(err, TunnelError::Handshake { .. }), "{err}");
    assert!(
        err.is_permanent(),
        "an untrusted certificate is not retried: {err}"
    );
    let text = err.to_string();
    assert!(text.contains("does not match hub_cert_sha256"), "{text}");
    assert!(
        text.contains(&hub.fingerprint.to_string()),
        "the error shows the presented fingerprint: {text}"
    );
}

#[tokio::test]
async fn a_refusing_target_closes_the_client_promptly() {
    // The hub's link timeout is far beyond the test's deadline, so only the tunnel's refusal
    // can close the client in time.
    let mut config = hub_config(vec![tcp_any("tcp")]);
    config.link_timeout = Duration::from_secs(600);
    let hub = start_hub_with(config).await;
    let dead = closed_port().await;
    let tunnel = start_tunnel(tunnel_config(&hub, vec![proxy("dead", "tcp", dead, None)])).await;
    let mut socket = connect(tunnel.addr(0)).await;
    closed_by_peer(&mut socket, "a client of a refusing target").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_sending_at_once_to_a_refusing_target_are_each_closed_and_counted() {
    // A client's bytes go out ahead of the tunnel's answer; the refusal that answer carries
    // (and the reset that follows it) must still close every client and be counted.
    let mut config = hub_config(vec![tcp_any("tcp")]);
    config.link_timeout = Duration::from_secs(600);
    let (hub, _admin, view) = start_hub_full(config).await;
    let dead = closed_port().await;
    let tunnel = start_tunnel(tunnel_config(&hub, vec![proxy("dead", "tcp", dead, None)])).await;
    const CLIENTS: u64 = 20;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let addr = tunnel.addr(0);
        clients.push(tokio::spawn(async move {
            let mut socket = connect(addr).await;
            // The hub may already have closed the socket: a failed write is fine.
            let _ = socket.write_all(&payload(1, 64 * 1024)).await;
            closed_by_peer(&mut socket, "a client of a refusing target").await;
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let counted = |metrics: &str| -> Option<u64> {
        metric(
            metrics,
            "tunnelize_rejected_total{reason=\"target_unreachable\"}",
        )
    };
    eventually("every refused client is counted", DEADLINE, || async {
        counted(&view.metrics()).filter(|&n| n >= CLIENTS)
    })
    .await;
    assert_eq!(counted(&view.metrics()), Some(CLIENTS));
}

#[tokio::test]
async fn stopping_a_tunnel_closes_its_port_and_frees_it_for_another() {
    let hub = start_hub(vec![tcp_any("tcp")]).await;
    let echo = start_echo().await;
    let tunnel = start_tunnel(tunnel_config(&hub, vec![proxy("echo", "tcp", echo, None)])).await;
    let addr = tunnel.addr(0);
    assert_eq!(round_trip(addr, b"x").await, b"x");
    tunnel.stop.cancel();
    tunnel.task.await.unwrap();
    wait_until_refused(addr, Duration::from_secs(1)).await;
    let again = start_tunnel(tunnel_config(
        &hub,
        vec![proxy("echo", "tcp", echo, Some(addr.port()))],
    ))
    .await;
    assert_eq!(again.port(0), addr.port(), "the port is free again");
    assert_eq!(round_trip(addr, b"y").await, b"y");
}

async fn wait_until_refused(addr: std::net::SocketAddr, within: Duration) {
    eventually(&format!("port {addr} to close"), within, || async {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => Err("it still accepts connections"),
            Err(_) => Ok(()),
        }
    })
    .await;
}

#[tokio::test]
async fn an_idle_client_is_closed_after_the_idle_timeout() {
    let mut config = hub_config(vec![tcp_any("tcp")]);
    config.idle_timeout = Duration::from_millis(300);
    let hub = start_hub_with(config).await;
    let echo = start_echo().await;
    let tunnel = start_tunnel(tunnel_config(&hub, vec![proxy("echo", "tcp", echo, None)])).await;
    let mut socket = connect(tunnel.addr(0)).await;
    socket.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    socket.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    // Now say nothing: the hub must close the connection on its own.
    closed_by_peer(&mut socket, "the idle client").await;
    // The proxy itself keeps working for new clients.
    assert_eq!(round_trip(tunnel.addr(0), b"fresh").await, b"fresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_no_byte_is_closed_after_the_idle_timeout_though_it_keeps_sending() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let mut config = hub_config(vec![tcp_any("tcp")]);
    config.idle_timeout = Duration::from_millis(500);
    let hub = start_hub_with(config).await;
    // A target that sends without end, and notes when its client is gone.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    let gone = Arc::new(AtomicBool::new(false));
    let gone_target = gone.clone();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let block = vec![b'd'; 64 * 1024];
        // Bounded: the client goes (or the test fails) long before 1 TiB.
        for _ in 0..(1u64 << 24) {
            if socket.write_all(&block).await.is_err() {
                break;
            }
        }
        gone_target.store(true, Ordering::Relaxed);
    });
    let tunnel = start_tunnel(tunnel_config(&hub, vec![proxy("d", "tcp", target, None)])).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(tunnel.addr(0)).await.unwrap();
    // The client reads nothing, but sends a byte every 100 ms: never idle, yet it takes no
    // byte, so the hub must close it once its socket has been full for the idle timeout.
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !gone.load(Ordering::Relaxed) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client that takes nothing was not closed within {DEADLINE:?}"
        );
        pace.tick().await;
        if client.write_all(b"k").await.is_err() {
            // The hub reset it; the target learns of it next.
            break;
        }
    }
    eventually(
        "the target to learn its client is gone",
        DEADLINE,
        || async { gone.load(Ordering::Relaxed).then_some(()) },
    )
    .await;
    // Other clients of the proxy are served.
    assert!(
        tokio::time::timeout(DEADLINE, connect(tunnel.addr(0)))
            .await
            .is_ok()
    );
}
