//! Hub-to-hub forwarding in a cluster: a client that reaches any hub reaches a tunnel that is
//! connected to only one of them. Hub B holds the tunnel; hubs A and C bind its port on their
//! own tcp services and forward each client over a peer link to B, which serves it from its
//! tunnel session (and never forwards it again). When the tunnel goes, the other hubs close
//! the port; when a tunnel of the same key connects to A, A takes the bound port over.
//!
//! Each hub listens for tunnels (and peer links) on its own 127.0.0.x address at a port the
//! kernel picks, which it advertises to the cluster. Needs `redis-server`.

use crate::cluster::{ALICE, SETTLES, member, start_member, tunnel_of};
use crate::common;

use std::net::SocketAddr;

use common::redis::Redis;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunnelize::config::HubConfig;

const IPS: [[u8; 4]; 3] = [[127, 0, 0, 2], [127, 0, 0, 3], [127, 0, 0, 4]];

/// A member whose tunnel listener (and so its peer links) is on `ip`, at a port the kernel
/// picks, advertised as such.
fn advertised(redis: &Redis, name: &str, ip: [u8; 4]) -> HubConfig {
    let mut config = member(redis, name, ip);
    config.listen = SocketAddr::from((ip, 0));
    config.cluster.as_mut().unwrap().advertise = String::new();
    config
}

/// Whether `data` sent to `addr` comes back whole (the echo target behind the tunnel).
async fn echoes_through(addr: SocketAddr, data: &[u8]) -> Result<(), String> {
    let socket = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let (mut r, mut w) = socket.into_split();
    let sent = data.to_vec();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&sent).await;
        let _ = w.shutdown().await;
    });
    let mut back = Vec::new();
    let read = tokio::time::timeout(DEADLINE, r.read_to_end(&mut back)).await;
    let _ = writer.await;
    match read {
        Ok(Ok(_)) if back == data => Ok(()),
        Ok(Ok(n)) => Err(format!(
            "{addr}: {n} bytes came back, not the {} sent",
            data.len()
        )),
        Ok(Err(e)) => Err(format!("{addr}: {e}")),
        Err(_) => Err(format!("{addr}: no answer within {DEADLINE:?}")),
    }
}

#[tokio::test]
#[ignore = "needs redis-server (Debian package redis-server)"]
async fn a_client_at_any_of_three_hubs_reaches_a_tunnel_on_one_and_the_port_follows_the_tunnel() {
    let redis = Redis::start().await;
    let (a, _) = start_member(advertised(&redis, "hub-a", IPS[0])).await;
    let (b, view_b) = start_member(advertised(&redis, "hub-b", IPS[1])).await;
    let (_c, _) = start_member(advertised(&redis, "hub-c", IPS[2])).await;
    let target = start_echo().await;
    let on_b = start_tunnel(tunnel_of(&b, ALICE, proxy("ssh", "tcp", target, None))).await;
    let port = on_b.port(0);

    // The same port number on every hub's own address, each client's bytes intact (1 MiB
    // each way, more than one flow-control window of a stream).
    let data = payload(u64::from(port), 1 << 20);
    for ip in IPS {
        let addr = SocketAddr::from((ip, port));
        let data = data.clone();
        eventually(
            &format!("{addr} to reach the tunnel on hub-b"),
            SETTLES,
            || {
                let data = data.clone();
                async move { echoes_through(addr, &data).await }
            },
        )
        .await;
    }
    // Hub B served the forwarded clients as its own: they were its tunnel's clients.
    let metrics = view_b.metrics();
    let served: u64 = metric(
        &metrics,
        "tunnelize_cluster_forwarded_served_total{hub=\"hub-b\"}",
    )
    .unwrap_or(0);
    assert!(
        served >= 2,
        "hub-b served the clients of hub-a and hub-c: {served}"
    );

    // A tunnel of the same key on hub A takes the port over there (the socket stays bound:
    // no refusal, no other port); both hubs then serve it from their own tunnels.
    let on_a = start_tunnel(tunnel_of(
        &a,
        ALICE,
        proxy("ssh", "tcp", target, Some(port)),
    ))
    .await;
    assert_eq!(on_a.port(0), port, "{:?}", on_a.outcomes);
    echoes_through(SocketAddr::from((IPS[0], port)), b"hello from A")
        .await
        .unwrap();

    // The tunnels go: no hub serves the port any more, and each closes it.
    on_a.stop.cancel();
    on_b.stop.cancel();
    let (_, _) = (on_a.task.await, on_b.task.await);
    let addr_c = SocketAddr::from((IPS[2], port));
    eventually(
        &format!("{addr_c} to close once no hub serves port {port}"),
        SETTLES,
        || async move {
            match TcpStream::connect(addr_c).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

#[tokio::test]
#[ignore = "needs redis-server (Debian package redis-server)"]
async fn a_peer_hello_with_a_wrong_token_is_refused_and_counts_toward_a_lockout() {
    use tunnelize::channel::FramedStream;
    use tunnelize::protocol::TunnelMessage;
    use tunnelize::protocol::{Channel, Envelope, HubMessage, Preamble, RefusalCode};
    use tunnelize::secret::Secret;

    let redis = Redis::start().await;
    let (a, view_a) = start_member(advertised(&redis, "hub-a", IPS[0])).await;
    let (_b, _) = start_member(advertised(&redis, "hub-b", IPS[1])).await;
    let status = view_a.cluster().unwrap();
    assert!(status.member);
    // Hub B's name, a plausible epoch, and a token that is not B's.
    let socket = TcpStream::connect(a.addr).await.unwrap();
    let mut framed = FramedStream::new(tls_over(socket, &a.fingerprint).await);
    let hello = Envelope {
        id: 1,
        msg: TunnelMessage::PeerHello {
            hub: "hub-b".into(),
            epoch: 2,
            token: Secret::random(32),
        },
    };
    framed
        .write_preamble_and(&Preamble::new(Channel::Peer).encode(), &[&hello])
        .await
        .unwrap();
    let answer = framed.read_hub_preamble(DEADLINE).await.unwrap();
    assert!(answer.accepted);
    let reply: Envelope<HubMessage> = framed.read_message(DEADLINE, "answering").await.unwrap();
    match reply.msg {
        HubMessage::Refused { code, message, .. } => {
            assert_eq!(code, RefusalCode::AuthFailed, "{message}");
            assert!(message.contains("not a member"), "{message}");
        }
        other => panic!("a wrong peer token must be refused, not answered {other:?}"),
    }
    let metrics = view_a.metrics();
    let failed: u64 = metric(&metrics, "tunnelize_auth_failures_total").unwrap_or(0);
    assert!(failed >= 1, "counted as a failed login: {failed}");
}
