//! `[limits]`: over each limit the hub refuses with a reason, counts it, and keeps serving
//! what it already serves.

use crate::common;

use tokio::net::TcpStream;

use common::*;
use tunnelize::admin::client::AdminClient;
use tunnelize::admin::model;
use tunnelize::config::{HubConfig, Limits};
use tunnelize::protocol::ProxyOutcome;
use tunnelize::tunnel::{Tunnel, TunnelError};

struct Limited {
    _dir: tempfile::TempDir,
    hub: TestHub,
    admin: AdminClient,
}

async fn hub(limits: Limits) -> Limited {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hub.sock");
    let mut config: HubConfig = hub_config(vec![tcp_any("tcp"), tcp_any("other")]);
    config.limits = limits;
    config.admin = admin_on(&socket);
    let (hub, _) = start_hub_with_admin(config).await;
    Limited {
        _dir: dir,
        hub,
        admin: AdminClient::unix(&socket),
    }
}

impl Limited {
    /// Dials a tunnel with no proxies, as a third party would.
    async fn dial_a_tunnel(&self) -> Result<tunnelize::tunnel::Session, TunnelError> {
        Tunnel::new(tunnel_config(&self.hub, vec![]))
            .unwrap()
            .connect()
            .await
    }

    /// Waits, naming `what`, until the hub admits a tunnel.
    async fn admits_a_tunnel(&self, what: &str) {
        eventually(what, DEADLINE, || async { self.dial_a_tunnel().await.ok() }).await;
    }

    /// Waits, naming `what`, until a tunnel is refused and a limit refusal has been counted.
    async fn refuses_a_tunnel_and_counts_it(&self, what: &str) {
        eventually(what, DEADLINE, || async {
            let refused = self.dial_a_tunnel().await.is_err();
            (refused && limit_refusals(&self.admin).await >= 1.0).then_some(())
        })
        .await;
    }
}

async fn limit_refusals(admin: &AdminClient) -> f64 {
    let metrics = admin.get_text(model::METRICS).await.unwrap();
    metric(&metrics, "tunnelize_rejected_total{reason=\"limit\"}").unwrap()
}

#[tokio::test]
async fn a_tunnel_beyond_the_limit_is_refused_with_the_reason_and_may_come_once_one_leaves() {
    let live = hub(Limits {
        tunnels: 2,
        ..Limits::default()
    })
    .await;
    let first = start_tunnel(tunnel_config(&live.hub, vec![])).await;
    let _second = start_tunnel(tunnel_config(&live.hub, vec![])).await;
    match live.dial_a_tunnel().await {
        Err(e @ TunnelError::Refused(_)) => {
            assert!(e.to_string().contains("maximum of 2 tunnels"), "{e}");
            assert!(!e.is_permanent());
        }
        Err(other) => panic!("expected a limit refusal, got {other}"),
        Ok(_) => panic!("a third tunnel was admitted"),
    }
    assert_eq!(limit_refusals(&live.admin).await, 1.0);
    first.stop.cancel();
    live.admits_a_tunnel("a place for another tunnel").await;
}

#[tokio::test]
async fn proxies_beyond_the_per_tunnel_limit_are_rejected_and_the_rest_work() {
    let live = hub(Limits {
        proxies_per_tunnel: 2,
        ..Limits::default()
    })
    .await;
    let echo = start_echo().await;
    let proxies = vec![
        proxy("a", "tcp", echo, None),
        proxy("b", "tcp", echo, None),
        proxy("c", "tcp", echo, None),
    ];
    let tunnel = start_tunnel(tunnel_config(&live.hub, proxies)).await;
    match &tunnel.outcomes[2] {
        ProxyOutcome::Rejected { reason, .. } => {
            assert!(reason.contains("at most 2 proxies"), "{reason}")
        }
        other => panic!("the third proxy was accepted: {other:?}"),
    }
    assert_eq!(round_trip(tunnel.addr(0), b"a").await, b"a");
    assert_eq!(round_trip(tunnel.addr(1), b"b").await, b"b");
}

#[tokio::test]
async fn clients_beyond_the_tunnel_and_service_limits_are_closed_and_the_others_keep_flowing() {
    let live = hub(Limits {
        clients_per_tunnel: 2,
        clients_per_service: 3,
        ..Limits::default()
    })
    .await;
    let echo = start_echo().await;
    let one = start_tunnel(tunnel_config(
        &live.hub,
        vec![proxy("e", "tcp", echo, None)],
    ))
    .await;
    let two = start_tunnel(tunnel_config(
        &live.hub,
        vec![proxy("e", "tcp", echo, None)],
    ))
    .await;
    let mut a = connect(one.addr(0)).await;
    let mut b = connect(one.addr(0)).await;
    assert!(echoes(&mut a, b"a").await && echoes(&mut b, b"b").await);
    // A third client of the same tunnel is closed without reaching the target.
    let mut over_tunnel = connect(one.addr(0)).await;
    assert!(!echoes(&mut over_tunnel, b"x").await);
    // The other tunnel takes the service's third client, then the service is full.
    let mut c = connect(two.addr(0)).await;
    assert!(echoes(&mut c, b"c").await);
    let mut over_service = connect(two.addr(0)).await;
    assert!(!echoes(&mut over_service, b"y").await);
    assert!(limit_refusals(&live.admin).await >= 2.0);
    // Those admitted still flow; one leaving makes room.
    assert!(echoes(&mut a, b"still").await);
    drop(b);
    eventually("room for a new client", DEADLINE, || async {
        let mut again = connect(one.addr(0)).await;
        echoes(&mut again, b"z").await.then_some(())
    })
    .await;
}

#[tokio::test]
async fn handshakes_beyond_the_limit_are_refused_at_once_and_served_again_after() {
    let live = hub(Limits {
        handshakes: 1,
        ..Limits::default()
    })
    .await;
    // A connection that never starts its TLS handshake holds the only permit.
    let silent = TcpStream::connect(live.hub.addr).await.unwrap();
    live.refuses_a_tunnel_and_counts_it("the refusal to be counted")
        .await;
    drop(silent);
    live.admits_a_tunnel("the hub to take tunnels again").await;
}

#[tokio::test]
async fn link_connections_beyond_the_per_tunnel_limit_are_refused_and_the_tunnel_keeps_working() {
    let live = hub(Limits {
        links_per_tunnel: 1,
        ..Limits::default()
    })
    .await;
    let echo = start_echo().await;
    let mut config = tunnel_config(&live.hub, vec![proxy("a", "tcp", echo, None)]);
    config.links = 3;
    let tunnel = start_tunnel(config).await;
    // Two of the three link connections are refused (and redial later); each refusal counts.
    eventually("the extra link connections refused", DEADLINE, || async {
        (limit_refusals(&live.admin).await >= 2.0).then_some(())
    })
    .await;
    for i in 0..8u8 {
        assert_eq!(round_trip(tunnel.addr(0), &[i; 100]).await, [i; 100]);
    }
}

#[tokio::test]
async fn a_connection_that_sends_its_preamble_but_no_hello_still_holds_its_handshake_permit() {
    use tokio::io::AsyncWriteExt;
    use tunnelize::protocol::{Channel, Preamble};

    let live = hub(Limits {
        handshakes: 1,
        ..Limits::default()
    })
    .await;
    // TLS done and the preamble sent, then silence: still a handshake in progress.
    let mut stalled = tls_to(&live.hub).await;
    stalled
        .write_all(&Preamble::new(Channel::Control).encode())
        .await
        .unwrap();
    stalled.flush().await.unwrap();
    live.refuses_a_tunnel_and_counts_it("a tunnel refused while the hello is outstanding")
        .await;
    drop(stalled);
    live.admits_a_tunnel("the hub to take tunnels again").await;
}

/// Sends a hand-rolled hello declaring `proxies` and returns the hub's answer.
async fn answer_to_hello(
    hub: &TestHub,
    proxies: Vec<tunnelize::protocol::ProxyRequest>,
) -> tunnelize::protocol::HubMessage {
    use tunnelize::channel::FramedStream;
    use tunnelize::protocol::{Channel, Envelope, HubMessage, Preamble, TunnelMessage};
    let tls = tls_to(hub).await;
    let hello = Envelope {
        id: 1,
        msg: TunnelMessage::Hello {
            key: Some(tunnelize::secret::Secret::new(KEY)),
            name: "many".into(),
            proxies,
        },
    };
    // As small as a peer may write it: the optional fields of each proxy left out.
    let mut json = serde_json::to_value(&hello).unwrap();
    let list = json
        .pointer_mut("/msg/proxies")
        .and_then(|v| v.as_array_mut())
        .expect("the hello's proxies");
    for proxy in list {
        if let Some(fields) = proxy.as_object_mut() {
            fields.retain(|_, v| !v.is_null());
        }
    }
    let body = serde_json::to_vec(&json).unwrap();
    assert!(
        body.len() <= tunnelize::protocol::MAX_FRAME_LEN,
        "the hello fits a frame"
    );
    let mut bytes = Preamble::new(Channel::Control).encode().to_vec();
    bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&body);
    let mut tls = tls;
    tokio::io::AsyncWriteExt::write_all(&mut tls, &bytes)
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::flush(&mut tls).await.unwrap();
    let mut framed = FramedStream::new(tls);
    framed.read_hub_preamble(DEADLINE).await.unwrap();
    let answer: Envelope<HubMessage> = framed.read_message(DEADLINE, "answering").await.unwrap();
    answer.msg
}

#[tokio::test]
async fn a_hello_whose_answer_could_not_fit_a_frame_is_refused_and_a_large_one_that_fits_is_answered()
 {
    use tunnelize::protocol::{HubMessage, ProxyRequest, RefusalCode};
    let live = hub(Limits::default()).await;
    let many = |n: usize| -> Vec<ProxyRequest> {
        (0..n)
            .map(|i| ProxyRequest {
                name: format!("p{i}"),
                service: "tcp".into(),
                ..Default::default()
            })
            .collect()
    };
    // 1500 proxies fit in the hello's frame, but their outcomes would not fit the welcome's.
    match answer_to_hello(&live.hub, many(1500)).await {
        HubMessage::Refused { code, message, .. } => {
            assert_eq!(code, RefusalCode::Limit);
            assert!(message.contains("1500 proxies"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(limit_refusals(&live.admin).await >= 1.0);
    // 300 are answered: the first 64 ([limits] proxies_per_tunnel) accepted, the rest rejected.
    match answer_to_hello(&live.hub, many(300)).await {
        HubMessage::Welcome { proxies, .. } => {
            assert_eq!(proxies.len(), 300);
            let accepted = proxies
                .iter()
                .filter(|p| matches!(p, ProxyOutcome::Accepted { .. }))
                .count();
            assert_eq!(accepted, 64);
        }
        other => panic!("expected a welcome, got {other:?}"),
    }
}

/// A connection to `addr` from the source address `from` (any of 127.0.0.0/8).
async fn connect_from(from: [u8; 4], addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    tokio::time::timeout(DEADLINE, socket.connect(addr))
        .await
        .expect("the hub accepts in time")
        .unwrap()
}

/// Whether `socket` (an http client connection) gets any answer to a request.
async fn http_answers(socket: &mut TcpStream) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = b"GET / HTTP/1.1\r\nHost: nobody.test.local\r\nConnection: close\r\n\r\n";
    if socket.write_all(request).await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    matches!(
        tokio::time::timeout(DEADLINE, socket.read_to_end(&mut answer)).await,
        Ok(Ok(_))
    ) && answer.starts_with(b"HTTP/1.1 ")
}

#[tokio::test]
async fn connections_beyond_the_per_address_limit_are_closed_and_other_addresses_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hub.sock");
    let mut config = hub_config(vec![tcp_any("tcp"), http_any("web", "test.local")]);
    config.limits = Limits {
        connections_per_address: 2,
        ..Limits::default()
    };
    config.admin = admin_on(&socket);
    let (hub, _listeners) = start_hub_with_admin(config).await;
    let admin = AdminClient::unix(&socket);
    let echo = start_echo().await;
    let tunnel = start_tunnel(tunnel_config(&hub, vec![proxy("e", "tcp", echo, None)])).await;
    let (tcp, web) = (tunnel.addr(0), hub.services["web"]);

    // Two connections from 127.0.0.1, one to each service: its limit, across services.
    let mut first = connect_from([127, 0, 0, 1], tcp).await;
    assert!(echoes(&mut first, b"one").await);
    let mut second = connect_from([127, 0, 0, 1], web).await;
    assert!(http_answers(&mut second).await);
    // The http connection has closed (Connection: close); hold another in its place.
    let _held = eventually(
        "the answered http connection to be gone",
        DEADLINE,
        || async {
            let mut held = connect_from([127, 0, 0, 1], tcp).await;
            echoes(&mut held, b"two").await.then_some(held)
        },
    )
    .await;
    // A third from the same address is closed at accept, by either service.
    let mut over_tcp = connect_from([127, 0, 0, 1], tcp).await;
    assert!(!echoes(&mut over_tcp, b"x").await);
    let mut over_web = connect_from([127, 0, 0, 1], web).await;
    assert!(!http_answers(&mut over_web).await);
    assert!(limit_refusals(&admin).await >= 2.0);
    // Other addresses are counted apart.
    let mut other = connect_from([127, 0, 0, 2], tcp).await;
    assert!(echoes(&mut other, b"other").await);
    let mut other_web = connect_from([127, 0, 0, 3], web).await;
    assert!(http_answers(&mut other_web).await);
    // The connections held still flow; one closing makes room for the address.
    assert!(echoes(&mut first, b"still").await);
    drop(first);
    eventually("room for the address again", DEADLINE, || async {
        let mut again = connect_from([127, 0, 0, 1], tcp).await;
        echoes(&mut again, b"again").await.then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_keeps_its_place_under_the_per_address_limit() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let mut config = hub_config(vec![http_any("web", "test.local")]);
    config.limits = Limits {
        connections_per_address: 2,
        ..Limits::default()
    };
    let hub = start_hub_with(config).await;
    let app = common::web::start_app("ws").await;
    let mut site = proxy("ws", "web", app.addr, None);
    site.hostname = Some("ws".into());
    let _tunnel = start_tunnel(tunnel_config(&hub, vec![site])).await;
    let web = hub.services["web"];
    // Two WebSockets from 127.0.0.1: once upgraded, each still holds its place.
    let mut sockets = Vec::new();
    for i in 0..2u8 {
        let socket = connect_from([127, 0, 0, 1], web).await;
        let (mut ws, response) = tokio_tungstenite::client_async("ws://ws.test.local/ws", socket)
            .await
            .expect("websocket handshake through the hub");
        assert_eq!(response.status(), 101);
        ws.send(Message::binary(vec![i; 16])).await.unwrap();
        let echoed = tokio::time::timeout(DEADLINE, ws.next()).await.unwrap();
        assert_eq!(echoed.unwrap().unwrap().into_data().as_ref(), [i; 16]);
        sockets.push(ws);
    }
    let mut third = connect_from([127, 0, 0, 1], web).await;
    assert!(
        !http_answers(&mut third).await,
        "a third connection from the address is closed while two upgraded ones live"
    );
    // Closing one gives its place back.
    let mut first = sockets.remove(0);
    first.close(None).await.unwrap();
    drop(first);
    eventually("the closed websocket's place back", DEADLINE, || async {
        let mut again = connect_from([127, 0, 0, 1], web).await;
        http_answers(&mut again).await.then_some(())
    })
    .await;
}
