//! UDP forwarding through real in-process hubs and tunnels on 127.0.0.1: a real DNS server
//! (dnsmasq, installed by `.ci/run`), datagram boundaries up to the largest UDP payload,
//! per-client sessions, idle expiry, eviction of the session idle longest, port ranges, silence
//! when a port cannot forward or its tunnel has left, never more datagrams to a client than its
//! target sent, (from the hub daemon's stderr) rate-limited drop logs, and a flood to a target
//! or from clients that read nothing leaving the tunnel's other proxies answering (issue 26).

use crate::common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::net::UdpSocket;
use tokio::process::{Child, Command};
use tunnelize::config::{PortRange, ProxyConfig, ServiceConfig, ServiceKind, UdpService};
use tunnelize::protocol::ProxyOutcome;

/// How long a client waits for an answer before sending its datagram again.
const RESEND_AFTER: Duration = Duration::from_secs(1);

/// A `udp` service on 127.0.0.1 whose ports are picked by the OS.
fn udp_any(name: &str, session_timeout: Duration, max_sessions: usize) -> ServiceConfig {
    ServiceConfig {
        name: name.into(),
        kind: ServiceKind::Udp(UdpService {
            listen: [127, 0, 0, 1].into(),
            ports: PortRange::OS_ASSIGNED,
            session_timeout,
            max_sessions,
        }),
    }
}

/// A hub with one `udp` service named `udp`, and a tunnel exposing `target` on it.
async fn udp_tunnel(
    target: SocketAddr,
    session_timeout: Duration,
    max_sessions: usize,
) -> (TestHub, TestTunnel) {
    let hub = start_hub(vec![udp_any("udp", session_timeout, max_sessions)]).await;
    let tunnel = start_tunnel(tunnel_config(&hub, vec![proxy("t", "udp", target, None)])).await;
    (hub, tunnel)
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// A UDP target on 127.0.0.1 that answers every datagram with the datagrams
/// `answers(datagram, sender)` (possibly none), and counts the datagrams it received.
async fn start_udp_target(
    answers: impl Fn(&[u8], SocketAddr) -> Vec<Vec<u8>> + Send + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let heard = Arc::new(AtomicUsize::new(0));
    let count = heard.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok((len, peer)) = socket.recv_from(&mut buf).await {
            count.fetch_add(1, Ordering::SeqCst);
            for answer in answers(&buf[..len], peer) {
                let _ = socket.send_to(&answer, peer).await;
            }
        }
    });
    (addr, heard)
}

/// Echoes every datagram to its sender, unchanged.
async fn start_udp_echo() -> SocketAddr {
    start_udp_target(|datagram, _| vec![datagram.to_vec()])
        .await
        .0
}

/// Answers every datagram with the datagram, a space, and the port it came from.
async fn start_whoami() -> SocketAddr {
    let (addr, _) = start_udp_target(|datagram, peer| {
        let mut answer = datagram.to_vec();
        answer.extend_from_slice(format!(" {}", peer.port()).as_bytes());
        vec![answer]
    })
    .await;
    addr
}

/// Sends `data` to `to` until a datagram starting with `data` comes back (resending every
/// [`RESEND_AFTER`], failing after [`DEADLINE`]); returns it.
async fn ask(socket: &UdpSocket, to: SocketAddr, data: &[u8]) -> Vec<u8> {
    let what = format!("an answer to a {}-byte datagram sent to {to}", data.len());
    eventually(&what, DEADLINE, || async {
        socket.send_to(data, to).await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let answer = async {
            loop {
                let len = socket.recv(&mut buf).await.unwrap();
                if buf[..len].starts_with(data) {
                    return buf[..len].to_vec();
                }
            }
        };
        tokio::time::timeout(RESEND_AFTER, answer)
            .await
            .map_err(|_| format!("no answer within {RESEND_AFTER:?} of sending"))
    })
    .await
}

/// The source port the whoami target saw for this `ask`.
async fn seen_port(socket: &UdpSocket, to: SocketAddr, nonce: &str) -> u16 {
    let answer = ask(socket, to, nonce.as_bytes()).await;
    let text = String::from_utf8(answer).unwrap();
    text.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Waits until the tunnel host's UDP port `port` is closed (binding it works), then holds it so
/// that nothing else gets it.
async fn wait_until_udp_port_closed(port: u16) -> std::net::UdpSocket {
    eventually(&format!("udp port {port} to close"), DEADLINE, || async {
        std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
    })
    .await
}

#[tokio::test]
async fn datagrams_of_every_size_arrive_whole() {
    let (_hub, tunnel) = udp_tunnel(start_udp_echo().await, Duration::from_secs(60), 16).await;
    let socket = client().await;
    let mut buf = vec![0u8; 64 * 1024];
    for len in [1, 3_000, 65_000, 65_507] {
        let data = payload(len as u64, len);
        let back = ask(&socket, tunnel.addr(0), &data).await;
        assert_eq!(
            back.len(),
            len,
            "a {len}-byte datagram came back as {}",
            back.len()
        );
        assert_eq!(
            sha256(&back),
            sha256(&data),
            "a {len}-byte datagram was damaged"
        );
    }
    // An empty datagram is a datagram too (echoes of resent datagrams above are skipped).
    socket.send_to(&[], tunnel.addr(0)).await.unwrap();
    let empty_came_back = async { while socket.recv(&mut buf).await.unwrap() != 0 {} };
    tokio::time::timeout(DEADLINE, empty_came_back)
        .await
        .expect("the empty datagram came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_each_receive_only_their_own_replies() {
    let (_hub, tunnel) = udp_tunnel(start_udp_echo().await, Duration::from_secs(60), 1024).await;
    let to = tunnel.addr(0);
    let clients: Vec<_> = (0..100u64)
        .map(|i| {
            tokio::spawn(async move {
                let socket = client().await;
                let mine = payload(5000 + i, 200 + i as usize);
                // Three round trips each, so replies of different sessions interleave.
                for _ in 0..3 {
                    let reply = eventually(&format!("client {i}'s answer"), DEADLINE, || async {
                        socket.send_to(&mine, to).await.unwrap();
                        let mut buf = vec![0u8; 64 * 1024];
                        let len = tokio::time::timeout(RESEND_AFTER, socket.recv(&mut buf))
                            .await
                            .map_err(|_| "no answer within RESEND_AFTER of sending")?
                            .unwrap();
                        buf.truncate(len);
                        Ok::<_, &str>(buf)
                    })
                    .await;
                    assert_eq!(reply, mine, "client {i} got someone else's reply");
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
}

#[tokio::test]
async fn an_idle_session_expires_and_a_later_datagram_opens_a_new_one() {
    let (_hub, tunnel) = udp_tunnel(start_whoami().await, Duration::from_millis(500), 16).await;
    let socket = client().await;
    let first = seen_port(&socket, tunnel.addr(0), "one").await;
    assert_eq!(
        seen_port(&socket, tunnel.addr(0), "two").await,
        first,
        "within the timeout the session, and so the tunnel's socket, is the same"
    );
    // Say nothing: the hub ends the session and the tunnel closes its socket for it.
    let _held = wait_until_udp_port_closed(first).await;
    let second = seen_port(&socket, tunnel.addr(0), "three").await;
    assert_ne!(
        second, first,
        "a new session has a new socket on the tunnel"
    );
}

/// A tunnel to a whoami target that keeps at most two sessions, and three clients `[a, b, c]`
/// of its public address: both sessions are taken, `a`'s then `b`'s (their ports on the tunnel
/// returned), and `c` has sent nothing yet.
async fn two_sessions_of_two() -> (TestHub, TestTunnel, SocketAddr, [UdpSocket; 3], [u16; 2]) {
    let (hub, tunnel) = udp_tunnel(start_whoami().await, Duration::from_secs(60), 2).await;
    let to = tunnel.addr(0);
    let (a, b, c) = (client().await, client().await, client().await);
    let port_a = seen_port(&a, to, "a1").await;
    let port_b = seen_port(&b, to, "b1").await;
    (hub, tunnel, to, [a, b, c], [port_a, port_b])
}

#[tokio::test]
async fn a_new_client_beyond_max_sessions_evicts_the_session_idle_longest() {
    let (_hub, _tunnel, to, [a, b, c], [port_a, port_b]) = two_sessions_of_two().await;
    seen_port(&c, to, "c1").await;
    // `a` was idle longest: its session, and the tunnel's socket for it, are gone.
    let _held = wait_until_udp_port_closed(port_a).await;
    assert_eq!(seen_port(&b, to, "b2").await, port_b, "b keeps its session");
    assert_ne!(
        seen_port(&a, to, "a2").await,
        port_a,
        "a gets a new session"
    );
}

#[tokio::test]
async fn a_datagram_to_a_port_whose_tunnel_left_is_not_answered() {
    let echo = start_udp_echo().await;
    let (hub, tunnel) = udp_tunnel(echo, Duration::from_secs(60), 16).await;
    let addr = tunnel.addr(0);
    let socket = client().await;
    assert_eq!(ask(&socket, addr, b"hello").await, b"hello");
    tunnel.stop.cancel();
    tunnel.task.await.unwrap();
    // The hub closes the port once the tunnel has left.
    drop(wait_until_udp_port_closed(addr.port()).await);
    socket.send_to(b"anyone there?", addr).await.unwrap();
    let mut buf = [0u8; 64];
    let answer = tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf)).await;
    assert!(
        answer.is_err(),
        "a port without a tunnel must stay silent: {answer:?}"
    );
    // The port is free for the next tunnel.
    let again = start_tunnel(tunnel_config(
        &hub,
        vec![proxy("t", "udp", echo, Some(addr.port()))],
    ))
    .await;
    assert_eq!(again.port(0), addr.port());
    assert_eq!(ask(&socket, addr, b"back").await, b"back");
}

#[tokio::test]
async fn a_tcp_and_a_udp_proxy_may_hold_the_same_port_number() {
    let hub = start_hub(vec![
        udp_any("udp", Duration::from_secs(60), 16),
        tcp_any("tcp"),
    ])
    .await;
    let udp_echo = start_udp_echo().await;
    let tcp_echo = start_echo().await;
    // A port free for both protocols a moment ago: the OS picks a TCP port that a listener may
    // bind (which rules out ports held by other programs' connections, TIME-WAIT ones too),
    // and the UDP port of that number is checked. Another program may take either before the
    // hub does: then try again, a bounded number of times.
    for _ in 0..20 {
        let Some(port) = free_tcp_and_udp_port() else {
            continue;
        };
        let first = start_tunnel(tunnel_config(
            &hub,
            vec![proxy("u", "udp", udp_echo, Some(port))],
        ))
        .await;
        if !matches!(first.outcomes[0], ProxyOutcome::Accepted { .. }) {
            stop_tunnel(first).await;
            continue;
        }
        let second = start_tunnel(tunnel_config(
            &hub,
            vec![
                proxy("t", "tcp", tcp_echo, Some(port)),
                proxy("u2", "udp", udp_echo, Some(port)),
            ],
        ))
        .await;
        if let ProxyOutcome::Rejected { reason, .. } = &second.outcomes[0]
            && reason.contains("in use by another program")
        {
            stop_tunnel(second).await;
            stop_tunnel(first).await;
            continue;
        }
        assert_eq!(first.port(0), port);
        assert_eq!(second.port(0), port, "the TCP port is free");
        match &second.outcomes[1] {
            ProxyOutcome::Rejected { reason, .. } => {
                assert!(
                    reason.contains(&format!("udp port {port} is taken")),
                    "{reason}"
                )
            }
            other => panic!("the UDP port is taken, got {other:?}"),
        }
        assert_eq!(round_trip(second.addr(0), b"tcp").await, b"tcp");
        assert_eq!(ask(&client().await, first.addr(0), b"udp").await, b"udp");
        return;
    }
    panic!("other programs kept taking the ports picked");
}

/// A port of 127.0.0.1 that a TCP listener and a UDP socket could both bind a moment ago.
fn free_tcp_and_udp_port() -> Option<u16> {
    let tcp = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
    let port = tcp.local_addr().ok()?.port();
    std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).ok()?;
    Some(port)
}

// --- Port ranges --------------------------------------------------------------------------------

/// A `udp` service on 127.0.0.1 with the ports `ports`.
fn udp_range(name: &str, ports: PortRange) -> ServiceConfig {
    ServiceConfig {
        name: name.into(),
        kind: ServiceKind::Udp(UdpService {
            listen: [127, 0, 0, 1].into(),
            ports,
            session_timeout: Duration::from_secs(60),
            max_sessions: 16,
        }),
    }
}

/// Three consecutive UDP ports on 127.0.0.1, around one the OS picked, that were all free a
/// moment ago (bound together, then released). Another program may take one before the hub
/// does: callers retry.
fn free_udp_range() -> Option<PortRange> {
    let picked = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    let port = picked.local_addr().ok()?.port();
    // Room for a port on either side of the range, for the proxies asking outside it.
    let start = port.checked_sub(1).filter(|&p| p > 1)?;
    let end = port.checked_add(1).filter(|&p| p < u16::MAX)?;
    let _held: Vec<std::net::UdpSocket> = [start, end]
        .into_iter()
        .map(|p| std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, p)))
        .collect::<Result<_, _>>()
        .ok()?;
    Some(PortRange { start, end })
}

/// Stops a test hub and waits until it has stopped.
async fn stop_hub(hub: TestHub) {
    hub.stop.cancel();
    hub.task.await.unwrap();
}

/// Stops a test tunnel and waits until it has stopped.
async fn stop_tunnel(tunnel: TestTunnel) {
    tunnel.stop.cancel();
    tunnel.task.await.unwrap();
}

/// One try of [`a_udp_service_with_a_port_range_gives_ports_inside_it_only`] on `range`.
/// `Err` when another program took a port of the range meanwhile (the caller retries);
/// panics on anything else that is wrong.
async fn port_range_attempt(
    hub: &TestHub,
    range: PortRange,
    echo: SocketAddr,
) -> Result<(), String> {
    let PortRange { start, end } = range;
    let in_use = |reason: &str| reason.contains("in use by another program");
    let wanted = start + 1;
    let first = start_tunnel(tunnel_config(
        hub,
        vec![
            proxy("wanted", "udp", echo, Some(wanted)),
            proxy("above", "udp", echo, Some(end + 1)),
            proxy("below", "udp", echo, Some(start - 1)),
        ],
    ))
    .await;
    match &first.outcomes[0] {
        ProxyOutcome::Accepted { port, .. } => {
            assert_eq!(
                *port,
                Some(wanted),
                "a proxy asking {wanted} in {start}-{end} gets it"
            )
        }
        ProxyOutcome::Rejected { reason, .. } if in_use(reason) => return Err(reason.clone()),
        other => panic!("a proxy asking {wanted} in {start}-{end} must get it: {other:?}"),
    }
    for (index, port) in [(1, end + 1), (2, start - 1)] {
        match &first.outcomes[index] {
            ProxyOutcome::Rejected { reason, .. } => assert!(
                reason.contains(&format!(
                    "port {port} is outside service `udp`'s range {start}-{end}"
                )),
                "the reason names the range: {reason}"
            ),
            other => panic!("port {port} is outside {start}-{end}, got {other:?}"),
        }
    }
    let socket = client().await;
    assert_eq!(ask(&socket, first.addr(0), b"wanted").await, b"wanted");

    // Proxies asking no port get the other ports of the range, then nothing.
    let second = start_tunnel(tunnel_config(
        hub,
        vec![
            proxy("any-1", "udp", echo, None),
            proxy("any-2", "udp", echo, None),
        ],
    ))
    .await;
    let mut given = vec![wanted];
    for (index, outcome) in second.outcomes.iter().enumerate() {
        match outcome {
            ProxyOutcome::Accepted {
                port: Some(port), ..
            } => {
                assert!(
                    range.contains(*port),
                    "a proxy asking no port got {port}, outside {start}-{end}"
                );
                assert!(!given.contains(port), "port {port} was given twice");
                given.push(*port);
                let data = format!("any-{index}");
                assert_eq!(
                    ask(&socket, second.addr(index), data.as_bytes()).await,
                    data.as_bytes()
                );
            }
            ProxyOutcome::Rejected { reason, .. } if reason.contains("no free port left") => {
                return Err(reason.clone());
            }
            other => panic!("a proxy asking no port in {start}-{end}: {other:?}"),
        }
    }
    let third = start_tunnel(tunnel_config(hub, vec![proxy("any-3", "udp", echo, None)])).await;
    match &third.outcomes[0] {
        ProxyOutcome::Rejected { reason, .. } => assert!(
            reason.contains(&format!(
                "no free port left in service `udp`'s range {start}-{end}"
            )),
            "{reason}"
        ),
        other => panic!("every port of {start}-{end} is taken, got {other:?}"),
    }
    for tunnel in [first, second, third] {
        stop_tunnel(tunnel).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_udp_service_with_a_port_range_gives_ports_inside_it_only() {
    let echo = start_udp_echo().await;
    let mut races = Vec::new();
    for _ in 0..10 {
        let Some(range) = free_udp_range() else {
            races.push("no three free consecutive ports".to_owned());
            continue;
        };
        let hub = start_hub(vec![udp_range("udp", range)]).await;
        let result = port_range_attempt(&hub, range, echo).await;
        stop_hub(hub).await;
        match result {
            Ok(()) => return,
            Err(reason) => races.push(reason),
        }
    }
    panic!("other programs kept taking the test's ports: {races:?}");
}

// --- Eviction ---------------------------------------------------------------------------------

#[tokio::test]
async fn eviction_picks_the_session_idle_longest_not_the_oldest() {
    let (_hub, _tunnel, to, [a, b, c], [port_a, port_b]) = two_sessions_of_two().await;
    // `a` is the oldest session, but now `b` is the one idle longest.
    assert_eq!(seen_port(&a, to, "a2").await, port_a, "a keeps its session");
    seen_port(&c, to, "c1").await;
    assert_eq!(
        seen_port(&a, to, "a3").await,
        port_a,
        "a was not idle longest: it keeps its session"
    );
    // `b`'s session, and the tunnel's socket for it, are gone; hold the port so that a new
    // session cannot get it by chance.
    let _held = wait_until_udp_port_closed(port_b).await;
    assert_ne!(
        seen_port(&b, to, "b2").await,
        port_b,
        "b was idle longest: it gets a new session"
    );
}

// --- Ports that cannot forward ------------------------------------------------------------------

/// A UDP port on which nothing listens (bound, then released).
fn closed_udp_port() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

/// A target that reads every datagram and answers none; counts what it read.
async fn start_udp_sink() -> (SocketAddr, Arc<AtomicUsize>) {
    start_udp_target(|_, _| vec![]).await
}

/// How long a "nothing arrives" check listens.
const SILENCE: Duration = Duration::from_millis(300);

/// Asserts that nothing arrives on `socket` for [`SILENCE`].
async fn assert_silence(socket: &UdpSocket, what: &str) {
    let mut buf = vec![0u8; 64 * 1024];
    if let Ok(received) = tokio::time::timeout(SILENCE, socket.recv_from(&mut buf)).await {
        let got = received.map(|(len, from)| (from, buf[..len.min(64)].to_vec()));
        panic!("{what}, but the client received {got:?}");
    }
}

#[tokio::test]
async fn a_port_whose_tunnel_cannot_forward_never_answers_and_the_hub_serves_on() {
    let hub = start_hub(vec![udp_any("udp", Duration::from_secs(60), 16)]).await;
    let (sink, heard) = start_udp_sink().await;
    let unresolvable = ProxyConfig {
        // The tunnel cannot even make a socket for it: it refuses every session.
        target: "127.0.0.1:no-such-port".into(),
        ..proxy("refused", "udp", sink, None)
    };
    let broken = start_tunnel(tunnel_config(
        &hub,
        vec![
            proxy("closed", "udp", closed_udp_port(), None),
            proxy("silent", "udp", sink, None),
            unresolvable,
        ],
    ))
    .await;
    let socket = client().await;
    for round in 0..3 {
        for index in 0..3 {
            let data = format!("anyone there? {round}");
            socket
                .send_to(data.as_bytes(), broken.addr(index))
                .await
                .unwrap();
        }
    }
    // The datagrams did cross the tunnel (to the silent target at least), and nothing comes
    // back from any of the three ports.
    eventually(
        "the silent target hears the datagrams",
        DEADLINE,
        || async { (heard.load(Ordering::SeqCst) >= 3).then_some(()) },
    )
    .await;
    assert_silence(&socket, "no port whose target cannot answer may answer").await;
    assert_eq!(
        heard.load(Ordering::SeqCst),
        3,
        "each datagram crossed once"
    );

    // The hub serves a later, good proxy, and the same client.
    let echo = start_udp_echo().await;
    let good = start_tunnel(tunnel_config(&hub, vec![proxy("good", "udp", echo, None)])).await;
    assert_eq!(
        ask(&socket, good.addr(0), b"still there").await,
        b"still there"
    );
    // The broken ports are still held, and still silent.
    socket.send_to(b"and now?", broken.addr(0)).await.unwrap();
    socket.send_to(b"and now?", broken.addr(2)).await.unwrap();
    assert_silence(&socket, "the broken ports stay silent").await;
}

// --- Never more than the target sent -----------------------------------------------------------

/// What a target answers to one datagram: any number of datagrams, possibly none.
type Replies = fn(&[u8]) -> Vec<Vec<u8>>;

/// A target that answers each datagram with `replies(datagram)`. Counts the datagrams it
/// received.
async fn start_replier(replies: Replies) -> (SocketAddr, Arc<AtomicUsize>) {
    start_udp_target(move |datagram, _| replies(datagram)).await
}

/// At most the first 10 bytes of the datagram.
fn first_ten(datagram: &[u8]) -> Vec<Vec<u8>> {
    vec![datagram[..datagram.len().min(10)].to_vec()]
}

/// The datagram in pieces of 100 bytes (none for an empty one).
fn in_hundreds(datagram: &[u8]) -> Vec<Vec<u8>> {
    datagram.chunks(100).map(<[u8]>::to_vec).collect()
}

#[tokio::test]
async fn a_client_receives_exactly_the_datagrams_the_target_sent() {
    let (short, short_heard) = start_replier(first_ten).await;
    let (split, split_heard) = start_replier(in_hundreds).await;
    let hub = start_hub(vec![udp_any("udp", Duration::from_secs(60), 16)]).await;
    let tunnel = start_tunnel(tunnel_config(
        &hub,
        vec![
            proxy("short", "udp", short, None),
            proxy("split", "udp", split, None),
        ],
    ))
    .await;
    let sizes = [0, 1, 10, 11, 99, 100, 101, 1_000, 3_000];
    let cases: [(usize, Replies, &AtomicUsize); 2] =
        [(0, first_ten, &short_heard), (1, in_hundreds, &split_heard)];
    for (index, replies, heard) in cases {
        let socket = client().await;
        let mut expected = Vec::new();
        for (i, len) in sizes.into_iter().enumerate() {
            let data = payload((index * 100 + i) as u64, len);
            expected.extend(replies(&data));
            socket.send_to(&data, tunnel.addr(index)).await.unwrap();
        }
        let mut received = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let all = tokio::time::timeout(DEADLINE, async {
            while received.len() < expected.len() {
                let len = socket.recv(&mut buf).await.unwrap();
                received.push(buf[..len].to_vec());
            }
        })
        .await;
        assert!(
            all.is_ok(),
            "proxy {index}: {} of {} replies arrived",
            received.len(),
            expected.len()
        );
        assert_silence(
            &socket,
            &format!("proxy {index}: every reply already arrived"),
        )
        .await;
        assert_eq!(
            heard.load(Ordering::SeqCst),
            sizes.len(),
            "proxy {index}: the target got each datagram once"
        );
        expected.sort();
        received.sort();
        let lens = |d: &[Vec<u8>]| d.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(
            lens(&received),
            lens(&expected),
            "proxy {index}: datagram sizes"
        );
        assert!(received == expected, "proxy {index}: datagram contents");
    }
}

// --- Drop logs, from the hub daemon's stderr ----------------------------------------------------

/// The value of `key=` in a text log line.
fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..].split_whitespace().next()
}

/// Waits for a line containing `what` (earlier lines go to `seen`); panics after
/// [`DEADLINE`] or if the daemon's stderr ends.
async fn wait_for_line(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: &mut Vec<String>,
    what: &str,
) -> String {
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.recv().await {
            if line.contains(what) {
                return Some(line);
            }
            seen.push(line);
        }
        None
    })
    .await;
    match found {
        Ok(Some(line)) => line,
        Ok(None) => panic!("the hub exited before logging {what:?}; it logged {seen:#?}"),
        Err(_) => panic!("the hub did not log {what:?} in time; it logged {seen:#?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_undeliverable_datagrams_is_logged_at_most_once_per_interval() {
    tunnelize::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    // The hub loads the certificate made here, so the tunnel knows what to pin.
    let (identity, _) = tunnelize::tls::Identity::load_or_generate(dir.path()).unwrap();
    let config = dir.path().join("hub.toml");
    let admin_socket = dir.path().join("hub.sock");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = {:?}\n[admin]\nsocket = {:?}\n\
             [[keys]]\nname = \"test\"\nkey = \"{KEY}\"\n\
             [services.udp]\nkind = \"udp\"\nlisten = \"127.0.0.1\"\nports = \"0\"\n",
            dir.path().to_str().unwrap(),
            admin_socket.to_str().unwrap(),
        ),
    )
    .unwrap();
    let started = Instant::now();
    let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let (mut child, _) = spawn_with_stderr(
        Command::new(env!("CARGO_BIN_EXE_tunnelize"))
            .args([
                "--log-format",
                "text",
                "hub",
                "-c",
                config.to_str().unwrap(),
            ])
            .env("RUST_LOG", "info"),
        "the hub binary starts",
        move |line| {
            let _ = line_tx.send(line);
        },
    );
    let mut seen = Vec::new();
    let listening = wait_for_line(&mut lines, &mut seen, "hub listening for tunnels").await;
    let hub_address = log_field(&listening, "listen")
        .unwrap_or_else(|| panic!("no listen= in {listening:?}"))
        .to_owned();

    // A proxy whose every session the tunnel refuses: each datagram is dropped on the hub.
    let tunnel = start_tunnel(tunnelize::config::TunnelConfig {
        hub_address,
        hub_server_name: "localhost".into(),
        hub_trust: tunnelize::config::HubTrust::Fingerprint(identity.fingerprint().0),
        key: Some(tunnelize::secret::Secret::new(KEY)),
        links: 2,
        connect_timeout: Duration::from_secs(5),
        admin: tunnelize::config::AdminConfig::disabled(),
        reconnect: Default::default(),
        proxies: vec![ProxyConfig {
            name: "refused".into(),
            service: "udp".into(),
            target: "127.0.0.1:no-such-port".into(),
            ..Default::default()
        }],
    })
    .await;
    let to = tunnel.addr(0);
    const CLIENTS: usize = 20;
    const PER_CLIENT: usize = 20;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(client().await);
    }
    for round in 0..PER_CLIENT {
        for socket in &clients {
            socket
                .send_to(format!("flood {round}").as_bytes(), to)
                .await
                .unwrap();
        }
    }
    // Every client's first datagram opens a session that the tunnel refuses, dropping at
    // least that datagram: wait for those refusals (the hub counts them in its metrics).
    let admin = tunnelize::admin::client::AdminClient::unix(&admin_socket);
    let refused = eventually(
        "the tunnel refuses a session of every client",
        DEADLINE,
        || async {
            let metrics = admin.get_text("/metrics").await.ok()?;
            let refused: u64 = metric(
                &metrics,
                "tunnelize_rejected_total{reason=\"target_unreachable\"}",
            )?;
            (refused >= CLIENTS as u64).then_some(refused)
        },
    )
    .await;
    // The drops are logged...
    let first = wait_for_line(&mut lines, &mut seen, "dropping udp datagrams").await;
    assert_eq!(
        log_field(&first, "port"),
        Some(to.port().to_string().as_str())
    );
    // ...and once the proxy has closed (it reports how many it dropped), the count of drop
    // logs is bounded by the interval, not by the number of drops.
    stop_tunnel(tunnel).await;
    let closed = wait_for_line(&mut lines, &mut seen, "udp proxy closed").await;
    let elapsed = started.elapsed();
    let dropped: u64 = log_field(&closed, "dropped")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no dropped= in {closed:?}"));
    let logged = 1 + seen
        .iter()
        .filter(|l| l.contains("dropping udp datagrams"))
        .count();
    let interval = tunnelize::hub::udp::DROP_LOG_INTERVAL;
    let allowed = 1 + (elapsed.as_secs_f64() / interval.as_secs_f64()).ceil() as usize;
    assert!(
        dropped >= refused,
        "{refused} refused sessions dropped a datagram each, but the hub counted {dropped}"
    );
    assert!(
        logged <= allowed,
        "{logged} drop logs for {dropped} drops in {elapsed:?}: at most {allowed} allowed"
    );
    // No client was answered.
    for socket in &clients {
        let mut buf = [0u8; 64];
        assert!(
            socket.try_recv(&mut buf).is_err(),
            "a refused session was answered"
        );
    }
    child.kill().await.unwrap();
}

// --- DNS through the tunnel, to dnsmasq -------------------------------------------------------

/// Names dnsmasq answers, with their addresses.
const ZONES: [(&str, [u8; 4]); 4] = [
    ("a.example.test", [10, 1, 2, 3]),
    ("b.example.test", [10, 4, 5, 6]),
    ("c.example.test", [10, 7, 8, 9]),
    ("d.example.test", [10, 10, 11, 12]),
];

/// dnsmasq on 127.0.0.1, killed when dropped.
struct Dnsmasq {
    addr: SocketAddr,
    _child: Child,
}

fn dnsmasq_binary() -> &'static str {
    [
        "/usr/sbin/dnsmasq",
        "/sbin/dnsmasq",
        "/usr/local/sbin/dnsmasq",
    ]
    .into_iter()
    .find(|path| std::path::Path::new(path).exists())
    .unwrap_or("dnsmasq")
}

async fn start_dnsmasq() -> Dnsmasq {
    // Another program may take the port before dnsmasq binds it: then try another one.
    const ATTEMPTS: usize = 5;
    for attempt in 1..=ATTEMPTS {
        match try_start_dnsmasq().await {
            Ok(dns) => return dns,
            Err(stderr) if stderr.contains("Address already in use") && attempt < ATTEMPTS => {}
            Err(stderr) => panic!("{stderr}"),
        }
    }
    unreachable!("the last attempt returns or panics")
}

/// Starts dnsmasq on a port that was free a moment ago; `Err` with its stderr if it exits.
async fn try_start_dnsmasq() -> Result<Dnsmasq, String> {
    // A port nobody uses right now; dnsmasq binds it a moment later.
    let port = {
        let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut command = Command::new(dnsmasq_binary());
    command
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--pid-file",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
        ])
        .arg(format!("--port={port}"))
        .args(
            ZONES
                .iter()
                .map(|(name, ip)| format!("--address=/{name}/{}", Ipv4Addr::from(*ip))),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap_or_else(|e| {
        panic!("cannot start dnsmasq ({e}); install it with `apt-get install dnsmasq-base` (.ci/run does)")
    });
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Ready once it answers.
    let socket = client().await;
    let query = dns_query(1, "ready.a.example.test");
    // Done waiting when it answers (`None`) or has exited (`Some` with its status).
    let exited = eventually(&format!("dnsmasq to answer on {addr}"), DEADLINE, || {
        let exited = child.try_wait().ok().flatten();
        let (socket, query) = (&socket, &query);
        async move {
            if exited.is_some() {
                return Ok(exited);
            }
            socket.send_to(query, addr).await.unwrap();
            let mut buf = [0u8; 512];
            let len = tokio::time::timeout(Duration::from_millis(100), socket.recv(&mut buf))
                .await
                .map_err(|_| "no answer within 100 ms".to_owned())?
                .map_err(|e| e.to_string())?;
            parse_a_answer(&buf[..len], 1, "ready.a.example.test").map(|_| None)
        }
    })
    .await;
    if let Some(status) = exited {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            use tokio::io::AsyncReadExt;
            let _ = pipe.read_to_string(&mut stderr).await;
        }
        return Err(format!("dnsmasq exited with {status}: {stderr}"));
    }
    Ok(Dnsmasq {
        addr,
        _child: child,
    })
}

/// A standard query for the A record of `name`, with recursion desired.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(12 + name.len() + 6);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    q.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    q.extend_from_slice(&[0; 6]); // ANCOUNT, NSCOUNT, ARCOUNT
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&1u16.to_be_bytes()); // QTYPE A
    q.extend_from_slice(&1u16.to_be_bytes()); // QCLASS IN
    q
}

/// The address in the first answer of a response to `dns_query(id, name)`.
fn parse_a_answer(resp: &[u8], id: u16, name: &str) -> Result<Ipv4Addr, String> {
    let u16_at = |at: usize| -> Result<u16, String> {
        resp.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| format!("response truncated at byte {at}"))
    };
    if u16_at(0)? != id {
        return Err(format!("id {} instead of {id}", u16_at(0)?));
    }
    let flags = u16_at(2)?;
    if flags & 0x8000 == 0 || flags & 0x000f != 0 {
        return Err(format!("not a successful response: flags {flags:#06x}"));
    }
    if u16_at(4)? != 1 || u16_at(6)? == 0 {
        return Err("expected one question and an answer".into());
    }
    // The question must be ours, byte for byte.
    let question = &dns_query(id, name)[12..];
    if resp.get(12..12 + question.len()) != Some(question) {
        return Err("the question section is not the one asked".into());
    }
    let mut at = 12 + question.len();
    // The answer's name: a compression pointer, or labels.
    if resp.get(at).is_some_and(|b| b & 0xc0 == 0xc0) {
        at += 2;
    } else {
        while let Some(&len) = resp.get(at) {
            at += 1 + usize::from(len);
            if len == 0 {
                break;
            }
        }
    }
    let (rtype, class, rdlen) = (u16_at(at)?, u16_at(at + 2)?, u16_at(at + 8)?);
    if rtype != 1 || class != 1 || rdlen != 4 {
        return Err(format!(
            "answer is type {rtype} class {class} length {rdlen}"
        ));
    }
    let rdata = resp.get(at + 10..at + 14).ok_or("answer data truncated")?;
    Ok(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dnsmasq (Debian package dnsmasq-base)"]
async fn two_hundred_parallel_dns_queries_through_a_tunnel_are_all_answered_correctly() {
    let dns = start_dnsmasq().await;
    let (_hub, tunnel) = udp_tunnel(dns.addr, Duration::from_secs(60), 1024).await;
    let to = tunnel.addr(0);
    let failures = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let queries: Vec<_> = (0..200u16)
        .map(|i| {
            let failures = failures.clone();
            tokio::spawn(async move {
                let (zone, want) = ZONES[usize::from(i) % ZONES.len()];
                let name = format!("host{i}.{zone}");
                let id = 0x1000 + i;
                let socket = client().await;
                let query = dns_query(id, &name);
                let answer = eventually(&format!("an answer for {name}"), DEADLINE, || async {
                    socket.send_to(&query, to).await.unwrap();
                    let mut buf = [0u8; 512];
                    let len = tokio::time::timeout(RESEND_AFTER, socket.recv(&mut buf))
                        .await
                        .map_err(|_| "no answer within RESEND_AFTER of sending")?
                        .unwrap();
                    Ok::<_, &str>(parse_a_answer(&buf[..len], id, &name))
                })
                .await;
                match answer {
                    Ok(ip) if ip == Ipv4Addr::from(want) => {}
                    Ok(ip) => failures.lock().push(format!("{name}: got {ip}")),
                    Err(e) => failures.lock().push(format!("{name}: {e}")),
                }
            })
        })
        .collect();
    for query in queries {
        query.await.unwrap();
    }
    let failures = failures.lock();
    assert!(
        failures.is_empty(),
        "{} queries failed: {failures:?}",
        failures.len()
    );
}

/// Clients flooding a udp proxy whose target reads nothing.
const FLOODERS: usize = 200;
/// Datagrams each flooder sends at most (a bound on its loop; the test stops it first).
const FLOOD_MAX: usize = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_targets_and_clients_that_read_nothing_do_not_stall_the_tunnels_other_proxies() {
    let hub = start_hub(vec![
        udp_any("udp", Duration::from_secs(60), 1024),
        tcp_any("tcp"),
    ])
    .await;
    // Bound, never read: its receive queue fills and the kernel drops the rest.
    let deaf = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo = start_udp_echo().await;
    let tcp_echo = start_echo().await;
    let tunnel = start_tunnel(tunnel_config(
        &hub,
        vec![
            proxy("deaf", "udp", deaf.local_addr().unwrap(), None),
            proxy("echo", "udp", echo, None),
            proxy("app", "tcp", tcp_echo, None),
            proxy("mirror", "udp", start_udp_echo().await, None),
        ],
    ))
    .await;
    let (deaf_proxy, udp_echo, app) = (tunnel.addr(0), tunnel.addr(1), tunnel.addr(2));
    let mirror = tunnel.addr(3);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    // Half flood the deaf target; half flood an echo and never read what comes back.
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|i| {
            let flooded = if i % 2 == 0 { deaf_proxy } else { mirror };
            let (stop, sent) = (stop.clone(), sent.clone());
            tokio::spawn(async move {
                let socket = client().await;
                let datagram = [b'f'; 1200];
                for _ in 0..FLOOD_MAX {
                    if stop.load(Ordering::Relaxed)
                        || socket.send_to(&datagram, flooded).await.is_err()
                    {
                        return;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    eventually("the flood to be under way", DEADLINE, || async {
        let n = sent.load(Ordering::Relaxed);
        (n >= FLOODERS * 100)
            .then_some(())
            .ok_or(format!("{n} sent"))
    })
    .await;
    let before = sent.load(Ordering::Relaxed);
    // Meanwhile every tcp request and udp question to the other proxies is answered.
    for i in 0..40u64 {
        let data = payload(i, 1024);
        let round_trip = async {
            let mut socket = tokio::net::TcpStream::connect(app).await?;
            tokio::io::AsyncWriteExt::write_all(&mut socket, &data).await?;
            let mut back = vec![0u8; data.len()];
            tokio::io::AsyncReadExt::read_exact(&mut socket, &mut back).await?;
            Ok::<_, std::io::Error>(back)
        };
        let back = tokio::time::timeout(Duration::from_secs(5), round_trip)
            .await
            .unwrap_or_else(|_| panic!("tcp probe {i} unanswered within 5 s during the flood"))
            .unwrap();
        assert_eq!(back, data);
        let question = format!("question {i}");
        assert_eq!(
            ask(&client().await, udp_echo, question.as_bytes()).await,
            question.as_bytes()
        );
    }
    let during = sent.load(Ordering::Relaxed) - before;
    assert!(during > 0, "the flood went on while the probes ran");
    println!("{during} datagrams flooded the deaf target and the unread echo during the probes");
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.await.unwrap();
    }
}
