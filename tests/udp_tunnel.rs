//! UDP forwarding through real in-process hubs and tunnels on 127.0.0.1: a real DNS server
//! (dnsmasq, installed by `.ci/run`), datagram boundaries up to the largest UDP payload,
//! per-client sessions, idle expiry, eviction, and silence once a tunnel has left.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::net::UdpSocket;
use tokio::process::{Child, Command};
use tunnelize::config::{PortRange, ServiceConfig, ServiceKind, UdpService};
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

/// Echoes every datagram to its sender, unchanged.
async fn start_udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok((len, peer)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..len], peer).await;
        }
    });
    addr
}

/// Answers every datagram with the datagram, a space, and the port it came from.
async fn start_whoami() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok((len, peer)) = socket.recv_from(&mut buf).await {
            let mut answer = buf[..len].to_vec();
            answer.extend_from_slice(format!(" {}", peer.port()).as_bytes());
            let _ = socket.send_to(&answer, peer).await;
        }
    });
    addr
}

/// Sends `data` to `to` until a datagram starting with `data` comes back (resending every
/// [`RESEND_AFTER`], failing after [`DEADLINE`]); returns it.
async fn ask(socket: &UdpSocket, to: SocketAddr, data: &[u8]) -> Vec<u8> {
    let start = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        socket.send_to(data, to).await.unwrap();
        let resend_at = tokio::time::Instant::now() + RESEND_AFTER;
        while let Ok(received) = tokio::time::timeout_at(resend_at, socket.recv(&mut buf)).await {
            let len = received.unwrap();
            if buf[..len].starts_with(data) {
                return buf[..len].to_vec();
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no answer to a {}-byte datagram sent to {to}",
            data.len()
        );
    }
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
    let start = Instant::now();
    loop {
        if let Ok(socket) = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)) {
            return socket;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "udp port {port} still open after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
                let mut buf = vec![0u8; 64 * 1024];
                let start = Instant::now();
                let mut answers = 0;
                // Three round trips each, so replies of different sessions interleave.
                while answers < 3 {
                    socket.send_to(&mine, to).await.unwrap();
                    let Ok(received) =
                        tokio::time::timeout(RESEND_AFTER, socket.recv(&mut buf)).await
                    else {
                        assert!(start.elapsed() < DEADLINE, "client {i} got no answer");
                        continue;
                    };
                    let len = received.unwrap();
                    assert_eq!(
                        &buf[..len],
                        &mine[..],
                        "client {i} got someone else's reply"
                    );
                    answers += 1;
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

#[tokio::test]
async fn a_new_client_beyond_max_sessions_evicts_the_session_idle_longest() {
    let (_hub, tunnel) = udp_tunnel(start_whoami().await, Duration::from_secs(60), 2).await;
    let to = tunnel.addr(0);
    let (a, b, c) = (client().await, client().await, client().await);
    let port_a = seen_port(&a, to, "a1").await;
    let port_b = seen_port(&b, to, "b1").await;
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
    let first = start_tunnel(tunnel_config(&hub, vec![proxy("u", "udp", udp_echo, None)])).await;
    let port = first.port(0);
    let second = start_tunnel(tunnel_config(
        &hub,
        vec![
            proxy("t", "tcp", tcp_echo, Some(port)),
            proxy("u2", "udp", udp_echo, Some(port)),
        ],
    ))
    .await;
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
    let start = Instant::now();
    let mut buf = [0u8; 512];
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = pipe.read_to_string(&mut stderr).await;
            }
            panic!("dnsmasq exited with {status}: {stderr}");
        }
        socket.send_to(&query, addr).await.unwrap();
        if let Ok(Ok(len)) =
            tokio::time::timeout(Duration::from_millis(100), socket.recv(&mut buf)).await
            && parse_a_answer(&buf[..len], 1, "ready.a.example.test").is_ok()
        {
            return Dnsmasq {
                addr,
                _child: child,
            };
        }
        assert!(
            start.elapsed() < DEADLINE,
            "dnsmasq never answered on {addr}"
        );
    }
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
async fn two_hundred_parallel_dns_queries_through_a_tunnel_are_all_answered_correctly() {
    let dns = start_dnsmasq().await;
    let (_hub, tunnel) = udp_tunnel(dns.addr, Duration::from_secs(60), 1024).await;
    let to = tunnel.addr(0);
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let queries: Vec<_> = (0..200u16)
        .map(|i| {
            let failures = failures.clone();
            tokio::spawn(async move {
                let (zone, want) = ZONES[usize::from(i) % ZONES.len()];
                let name = format!("host{i}.{zone}");
                let id = 0x1000 + i;
                let socket = client().await;
                let query = dns_query(id, &name);
                let mut buf = [0u8; 512];
                let start = Instant::now();
                loop {
                    socket.send_to(&query, to).await.unwrap();
                    if let Ok(received) =
                        tokio::time::timeout(RESEND_AFTER, socket.recv(&mut buf)).await
                    {
                        let len = received.unwrap();
                        match parse_a_answer(&buf[..len], id, &name) {
                            Ok(ip) if ip == Ipv4Addr::from(want) => return,
                            Ok(ip) => {
                                failures.lock().unwrap().push(format!("{name}: got {ip}"));
                                return;
                            }
                            Err(e) => {
                                failures.lock().unwrap().push(format!("{name}: {e}"));
                                return;
                            }
                        }
                    }
                    if start.elapsed() > DEADLINE {
                        failures.lock().unwrap().push(format!("{name}: no answer"));
                        return;
                    }
                }
            })
        })
        .collect();
    for query in queries {
        query.await.unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} queries failed: {failures:?}",
        failures.len()
    );
}
