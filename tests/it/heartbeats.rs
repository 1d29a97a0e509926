//! Heartbeat dead-peer detection on the control channel, in both directions: the hub drops a
//! tunnel that goes silent (and closes its public ports), keeps one whose pings it answers, and a
//! tunnel gives up on a hub that stops answering instead of hanging.
//!
//! Every hub here announces a 1 s interval, so a peer is declared dead after 3 s of silence.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use tunnelize::channel::{ChannelError, FramedStream};
use tunnelize::protocol::{
    Channel, Envelope, HEARTBEAT_MISSES, HubMessage, HubPreamble, PROTOCOL_VERSION, Preamble,
    ProxyOutcome, ProxyRequest, TunnelMessage,
};
use tunnelize::secret::Secret;
use tunnelize::tls::Identity;
use tunnelize::tunnel::{Tunnel, TunnelError};
use uuid::Uuid;

const INTERVAL: Duration = Duration::from_secs(1);

type Control = FramedStream<TlsStream<TcpStream>>;

async fn fast_heartbeat_hub() -> TestHub {
    let mut config = hub_config(vec![tcp_any("tcp")]);
    config.heartbeat_interval = INTERVAL;
    start_hub_with(config).await
}

/// Opens a control channel by hand with one `tcp` proxy; returns the channel and the public
/// address the hub assigned.
async fn hand_rolled_session(hub: &TestHub) -> (Control, SocketAddr) {
    let mut framed = FramedStream::new(tls_to(hub).await);
    let hello = Envelope {
        id: 1,
        msg: TunnelMessage::Hello {
            key: Some(Secret::new(KEY)),
            name: "hand-rolled".into(),
            proxies: vec![ProxyRequest {
                name: "p".into(),
                service: "tcp".into(),
                ..Default::default()
            }],
        },
    };
    framed
        .write_preamble_and(&Preamble::new(Channel::Control).encode(), &[&hello])
        .await
        .unwrap();
    let answer = framed.read_hub_preamble(DEADLINE).await.unwrap();
    assert_eq!(
        answer,
        HubPreamble {
            version: PROTOCOL_VERSION,
            accepted: true
        }
    );
    let welcome: Envelope<HubMessage> = framed
        .read_message(DEADLINE, "answering our hello")
        .await
        .unwrap();
    assert_eq!(welcome.id, 1, "a welcome carries the hello's id");
    let HubMessage::Welcome {
        heartbeat_secs,
        proxies,
        ..
    } = welcome.msg
    else {
        panic!("expected a welcome, got {:?}", welcome.msg);
    };
    assert_eq!(
        heartbeat_secs,
        INTERVAL.as_secs(),
        "the hub announces its configured interval"
    );
    let port = match proxies.as_slice() {
        [
            ProxyOutcome::Accepted {
                port: Some(port), ..
            },
        ] => *port,
        other => panic!("expected one accepted tcp proxy, got {other:?}"),
    };
    (framed, SocketAddr::from(([127, 0, 0, 1], port)))
}

#[tokio::test]
async fn hub_drops_a_tunnel_that_stops_sending_heartbeats_and_closes_its_ports() {
    let hub = fast_heartbeat_hub().await;
    let (mut control, public) = hand_rolled_session(&hub).await;
    TcpStream::connect(public)
        .await
        .expect("the proxy's public port accepts clients while the session is live");

    // Send nothing more. The next thing the hub does on this connection must be to end it: a
    // goodbye, or closing it. A read that runs into our own deadline means the hub never noticed.
    let end = control
        .read_message::<Envelope<HubMessage>>(DEADLINE, "dropping a silent tunnel")
        .await;
    match end {
        Ok(Envelope {
            msg: HubMessage::Goodbye { .. },
            ..
        })
        | Err(ChannelError::Closed | ChannelError::Io(_)) => {}
        Err(ChannelError::Timeout(..)) => {
            panic!("the hub kept a tunnel that sent no heartbeat for {DEADLINE:?}")
        }
        other => panic!("expected the hub to end the session, got {other:?}"),
    }

    eventually(
        "the silent tunnel's public port to close",
        DEADLINE,
        || async { TcpStream::connect(public).await.is_err().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_tunnel_whose_heartbeats_are_answered_stays_connected_past_several_intervals() {
    let hub = fast_heartbeat_hub().await;
    let (mut control, public) = hand_rolled_session(&hub).await;

    // Ping twice per interval for well past the silence window (3 intervals), and check that
    // each answer is a pong that carries its ping's id. Ids are deliberately not consecutive.
    let mut pace = tokio::time::interval(INTERVAL / 2);
    let rounds = 2 * (HEARTBEAT_MISSES + 2);
    for round in 0..u64::from(rounds) {
        pace.tick().await;
        let id = 1000 + 7 * round;
        control
            .write_message(&Envelope {
                id,
                msg: TunnelMessage::Ping,
            })
            .await
            .unwrap_or_else(|e| panic!("ping {round} could not be sent: {e}"));
        let reply: Envelope<HubMessage> = control
            .read_message(DEADLINE, "answering a ping")
            .await
            .unwrap_or_else(|e| panic!("no answer to ping {round}: {e}"));
        assert_eq!(
            reply,
            Envelope {
                id,
                msg: HubMessage::Pong
            },
            "ping {round} must be answered by a pong with its id"
        );
    }

    TcpStream::connect(public)
        .await
        .expect("a tunnel that keeps answering keeps its public port");
}

/// Sends `data` through the tunnel to an echo target and returns what comes back. Connects
/// once: a public port that is gone is an immediate failure.
async fn echo_once(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let socket = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("the public port {addr} is gone: {e}"));
    round_trip_on(socket, data).await
}

/// Echoes `len` bytes through `addr` once every `every`, `rounds` times, each round checked.
async fn echo_at_pace(addr: SocketAddr, every: Duration, rounds: u64, len: usize) {
    let mut pace = tokio::time::interval(every);
    for round in 0..rounds {
        pace.tick().await;
        let data = payload(round, len);
        assert_eq!(echo_once(addr, &data).await, data, "round {round}");
    }
}

#[tokio::test]
async fn a_real_tunnel_keeps_its_session_past_several_intervals() {
    let hub = fast_heartbeat_hub().await;
    let echo = start_echo().await;
    let tunnel = start_tunnel(tunnel_config(&hub, vec![proxy("echo", "tcp", echo, None)])).await;

    // Client traffic rides on link connections, never on the control channel, so only the
    // tunnel's own pings keep the session past the hub's silence window.
    let rounds = 2 * u64::from(HEARTBEAT_MISSES + 2);
    echo_at_pace(tunnel.addr(0), INTERVAL / 2, rounds, 64).await;
    assert!(
        !tunnel.task.is_finished(),
        "the tunnel's session ended although the hub answers its heartbeats"
    );
    tunnel.stop.cancel();
    tokio::time::timeout(DEADLINE, tunnel.task)
        .await
        .expect("the tunnel stops when told")
        .unwrap();
}

#[tokio::test]
async fn a_sub_second_heartbeat_interval_does_not_drop_healthy_tunnels() {
    // Tunnels are told whole seconds (at least 1 s); the hub must judge them by that, not by
    // its own 300 ms, or every tunnel is dropped after 900 ms.
    let mut config = hub_config(vec![tcp_any("tcp")]);
    config.heartbeat_interval = Duration::from_millis(300);
    let hub = start_hub_with(config).await;
    let echo = start_echo().await;
    let tunnel = start_tunnel(tunnel_config(&hub, vec![proxy("echo", "tcp", echo, None)])).await;
    echo_at_pace(tunnel.addr(0), Duration::from_millis(250), 12, 32).await;
    assert!(
        !tunnel.task.is_finished(),
        "the hub dropped a tunnel that pinged as told"
    );
    tunnel.stop.cancel();
}

/// A hub that welcomes a tunnel (1 s heartbeats, no proxies) and then never says another word.
/// Counts the pings it receives on the control channel; link connections are dropped.
struct MuteHub {
    addr: SocketAddr,
    fingerprint: tunnelize::tls::Fingerprint,
    pings: Arc<AtomicUsize>,
    /// Receives once the tunnel has closed the control connection.
    control_closed: tokio::sync::oneshot::Receiver<()>,
}

async fn start_mute_hub() -> MuteHub {
    tunnelize::tls::install_crypto_provider();
    let identity = Identity::generate(&["localhost"]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config().unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pings = Arc::new(AtomicUsize::new(0));
    let (closed_tx, control_closed) = tokio::sync::oneshot::channel();
    let counter = pings.clone();
    tokio::spawn(async move {
        let mut closed_tx = Some(closed_tx);
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let Ok(tls) = acceptor.accept(socket).await else {
                continue;
            };
            let mut framed = FramedStream::new(tls);
            let Ok(preamble) = framed.read_preamble(DEADLINE).await else {
                continue;
            };
            if preamble.channel != Channel::Control {
                // Link connections: hang up; the tunnel redials them until its session ends.
                continue;
            }
            let closed_tx = closed_tx
                .take()
                .expect("the tunnel opens one control channel");
            let counter = counter.clone();
            tokio::spawn(async move {
                let hello: Envelope<TunnelMessage> =
                    framed.read_message(DEADLINE, "saying hello").await.unwrap();
                assert!(
                    matches!(hello.msg, TunnelMessage::Hello { .. }),
                    "{hello:?}"
                );
                let welcome = Envelope {
                    id: hello.id,
                    msg: HubMessage::Welcome {
                        tunnel_id: Uuid::new_v4(),
                        link_token: Secret::random(16),
                        heartbeat_secs: INTERVAL.as_secs(),
                        proxies: vec![],
                    },
                };
                let accepted = HubPreamble {
                    version: PROTOCOL_VERSION,
                    accepted: true,
                };
                framed
                    .write_preamble_and(&accepted.encode(), &[&welcome])
                    .await
                    .unwrap();
                // Read and ignore everything, answering nothing, until the tunnel hangs up.
                loop {
                    match framed
                        .read_message::<Envelope<TunnelMessage>>(DEADLINE, "pinging")
                        .await
                    {
                        Ok(Envelope {
                            msg: TunnelMessage::Ping,
                            ..
                        }) => {
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                let _ = closed_tx.send(());
            });
        }
    });
    MuteHub {
        addr,
        fingerprint: identity.fingerprint(),
        pings,
        control_closed,
    }
}

#[tokio::test]
async fn a_tunnel_notices_a_hub_that_stops_answering() {
    let hub = start_mute_hub().await;
    let stand_in = TestHub {
        addr: hub.addr,
        services: Default::default(),
        fingerprint: hub.fingerprint,
        stop: CancellationToken::new(),
        task: tokio::spawn(async {}),
    };
    let tunnel = Tunnel::new(tunnel_config(&stand_in, vec![])).unwrap();
    let session = tunnel
        .connect()
        .await
        .expect("the mute hub welcomes the tunnel");

    // Never cancelled: the session may only end because the hub went quiet.
    let never = CancellationToken::new();
    let result = tokio::time::timeout(DEADLINE, session.run(&tunnel, never.clone()))
        .await
        .expect("a tunnel must give up on a hub that stops answering, not hang");
    let err = result.expect_err("a silent hub is an error, not a clean end");
    assert!(
        matches!(err, TunnelError::Channel(ChannelError::Timeout(..))),
        "the session must end on the read deadline, got: {err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("sent nothing") && text.contains("heartbeats"),
        "the error must say the hub went silent: {text}"
    );
    assert!(!err.is_permanent(), "a silent hub is worth reconnecting to");

    tokio::time::timeout(DEADLINE, hub.control_closed)
        .await
        .expect("the tunnel closes the control connection it gave up on")
        .unwrap();
    let pings = hub.pings.load(Ordering::SeqCst);
    assert!(
        pings >= 2,
        "the tunnel must keep pinging while it waits for an answer, sent {pings}"
    );
}
