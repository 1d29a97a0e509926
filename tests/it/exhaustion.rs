//! The built hub binary with its open-file limit at 512, flooded with far more connections
//! than it can hold on its tunnel listener, a tcp proxy and an http service: it stays up, every
//! connection it cannot serve is closed rather than left hanging, it keeps every listener, and
//! once the flood is released it serves new clients and new tunnels on the same ports.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use common::*;
use tunnelize::config::TunnelConfig;
use tunnelize::tls::Fingerprint;
use tunnelize::tunnel::Tunnel;

/// The hub's open-file limit.
const NOFILE: usize = 512;
/// Connections opened to each flooded port.
const FLOOD: usize = 700;
/// How long each flood connection may take to be served or closed.
const RESOLVE_DEADLINE: Duration = Duration::from_secs(60);
/// How long a flood connection may wait for its TCP handshake (the kernel drops SYNs while a
/// full accept queue waits for the hub).
const CONNECT_DEADLINE: Duration = Duration::from_secs(15);

/// The hub binary, killed when the test ends, with its JSON log collected as it comes.
struct HubProcess {
    child: Child,
    log: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl HubProcess {
    fn start(config: &std::path::Path) -> HubProcess {
        let prlimit = which("prlimit").unwrap_or_else(|| {
            panic!("`prlimit` is needed to lower the hub's open-file limit: install util-linux")
        });
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let (child, _) = spawn_with_stderr(
            Command::new(prlimit)
                .arg(format!("--nofile={NOFILE}:{NOFILE}"))
                .arg("--")
                .arg(env!("CARGO_BIN_EXE_tunnelize"))
                .args(["--log-format", "json", "hub", "-c"])
                .arg(config)
                .env("RUST_LOG", "info")
                .env_remove("NOTIFY_SOCKET")
                .env_remove("JOURNAL_STREAM"),
            "start the hub under prlimit",
            move |line| {
                if let Ok(v) = serde_json::from_str(&line) {
                    sink.lock().push(v);
                }
            },
        );
        HubProcess { child, log }
    }

    /// The first log event whose message starts with `message`.
    async fn event(&self, message: &str) -> serde_json::Value {
        eventually(&format!("the hub to log {message:?}"), DEADLINE, || async {
            self.log
                .lock()
                .iter()
                .find(|v| {
                    v["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with(message))
                })
                .cloned()
        })
        .await
    }

    /// How many log events have a message containing `part`.
    fn count(&self, part: &str) -> usize {
        self.log
            .lock()
            .iter()
            .filter(|v| {
                v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(part))
            })
            .count()
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("the hub is running")
    }

    fn assert_alive(&mut self, when: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the hub exited {when}: {status}");
        }
    }

    /// Open files of the hub process now.
    fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// A socket address as the hub logs it (`127.0.0.1:7700`, possibly inside `Some(..)`).
fn logged_addr(v: &serde_json::Value) -> SocketAddr {
    v["fields"]["listen"]
        .as_str()
        .expect("a listen field")
        .trim_start_matches("Some(")
        .trim_end_matches(')')
        .parse()
        .expect("a socket address")
}

fn fingerprint(v: &serde_json::Value) -> [u8; 32] {
    let text = v["fields"]["fingerprint"].as_str().expect("a fingerprint");
    hex::decode(text.replace(':', ""))
        .expect("hex")
        .try_into()
        .expect("32 bytes")
}

fn tunnel_to(hub: SocketAddr, pin: [u8; 32], echo: SocketAddr) -> TunnelConfig {
    // The shared helper fills in the tunnel's defaults; it only needs the hub's address and pin.
    let binary = TestHub {
        addr: hub,
        services: Default::default(),
        fingerprint: Fingerprint(pin),
        stop: tokio_util::sync::CancellationToken::new(),
        task: tokio::spawn(async {}),
    };
    tunnel_config(&binary, vec![proxy("echo", "tcp", echo, None)])
}

/// What became of one flood connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Its TCP handshake did not complete (the kernel kept dropping it, or refused it).
    NotConnected,
    /// The hub served it (its byte came back through the tunnel); it is held open.
    Served,
    /// The hub closed it.
    Closed,
    /// Still open and unanswered at the deadline: the hub left it hanging.
    Hung,
}

/// Opens `n` connections to `addr` at once; each sends the start of its first message,
/// `hello`, and waits for the hub to serve it (an answer) or close it. Served connections are
/// returned, still open.
///
/// Each client sends something, as real ones do: past a full accept queue the kernel may
/// complete a client's handshake without queueing the connection, and only the client's own
/// retransmissions bring such a connection to the hub at all.
async fn flood(addr: SocketAddr, n: usize, hello: &'static [u8]) -> (Vec<Fate>, Vec<TcpStream>) {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let Ok(Ok(mut socket)) =
                    tokio::time::timeout(CONNECT_DEADLINE, TcpStream::connect(addr)).await
                else {
                    return (Fate::NotConnected, None);
                };
                if socket.write_all(hello).await.is_err() {
                    return (Fate::Closed, None);
                }
                let mut buf = [0u8; 64];
                match tokio::time::timeout(RESOLVE_DEADLINE, socket.read(&mut buf)).await {
                    Err(_) => (Fate::Hung, Some(socket)),
                    Ok(Ok(0)) | Ok(Err(_)) => (Fate::Closed, None),
                    Ok(Ok(_)) => (Fate::Served, Some(socket)),
                }
            })
        })
        .collect();
    let mut fates = Vec::new();
    let mut held = Vec::new();
    for task in tasks {
        let (fate, socket) = task.await.unwrap();
        fates.push(fate);
        held.extend(socket);
    }
    (fates, held)
}

fn tally(fates: &[Fate]) -> String {
    let n = |f| fates.iter().filter(|x| **x == f).count();
    format!(
        "{} served, {} closed, {} not connected, {} hung",
        n(Fate::Served),
        n(Fate::Closed),
        n(Fate::NotConnected),
        n(Fate::Hung)
    )
}

fn count(fates: &[Fate], fate: Fate) -> usize {
    fates.iter().filter(|x| **x == fate).count()
}

/// One echo of `data` through `public`, if it connects within 2 s and the whole echo is back
/// within 5 s more (a look for [`eventually`] while the hub is short of files).
async fn echoed(public: SocketAddr, data: &[u8]) -> Option<()> {
    let socket = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(public))
        .await
        .ok()?
        .ok()?;
    let (mut r, mut w) = socket.into_split();
    w.write_all(data).await.ok()?;
    w.shutdown().await.ok()?;
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut back))
        .await
        .ok()?
        .ok()?;
    (back == data).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_at_its_open_file_limit_sheds_the_flood_keeps_its_listeners_and_recovers() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = \"{state}\"\nhandshake_timeout = \"2s\"\n\
             lockout_failures = 1000\n\
             [limits]\nconnections_per_address = 100000\n\
             [admin]\nsocket = \"\"\n\
             [[keys]]\nname = \"t\"\nkey = \"{KEY}\"\n\
             [services.tcp]\nkind = \"tcp\"\nlisten = \"127.0.0.1\"\nports = \"0\"\n\
             [services.web]\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\ndomain = \"test.local\"\n\
             header_timeout = \"2s\"\n",
            state = dir.path().join("state").display(),
        ),
    )
    .unwrap();
    let mut hub = HubProcess::start(&config);
    let listening = hub.event("hub listening for tunnels").await;
    let (hub_addr, pin) = (logged_addr(&listening), fingerprint(&listening));
    let web = logged_addr(&hub.event("serving http").await);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", hub.pid())).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap()
        .to_owned();
    assert_eq!(
        nofile,
        NOFILE.to_string(),
        "the hub runs with the lowered limit"
    );

    let echo = start_echo().await;
    let tunnel = start_tunnel(tunnel_to(hub_addr, pin, echo)).await;
    let public = tunnel.addr(0);
    assert_eq!(round_trip(public, b"before").await, b"before");

    // The flood: far more connections than the hub may hold files, on three listeners at once.
    let (tcp, tunnel_flood, http) = tokio::join!(
        flood(public, FLOOD, b"x"),
        flood(hub_addr, FLOOD, b"\x16\x03\x01"),
        flood(web, FLOOD, b"GET / HTTP/1.1\r\n"),
    );
    let (tcp_fates, mut held) = tcp;
    let (tunnel_fates, held_tunnel) = tunnel_flood;
    let (http_fates, held_http) = http;
    eprintln!(
        "tcp proxy: {}\ntunnel listener: {}\nhttp service: {}\nhub open files once the flood was resolved: {}",
        tally(&tcp_fates),
        tally(&tunnel_fates),
        tally(&http_fates),
        hub.open_files()
    );
    hub.assert_alive("under the flood");
    assert!(
        hub.count("out of file descriptors") > 0,
        "the flood must drive the hub to its open-file limit (it never said it was out of descriptors)"
    );
    for (what, fates) in [
        ("tcp proxy", &tcp_fates),
        ("tunnel listener", &tunnel_fates),
        ("http service", &http_fates),
    ] {
        assert_eq!(
            count(fates, Fate::Hung),
            0,
            "{what}: connections the hub neither served nor closed ({})",
            tally(fates)
        );
    }
    // Only the tcp proxy serves a client that says nothing more; the hub holds those open, and
    // it cannot have served more than its limit allows.
    assert!(held_tunnel.is_empty() && held_http.is_empty());
    assert!(count(&tcp_fates, Fate::Served) < NOFILE);
    assert!(
        count(&tcp_fates, Fate::Closed) + count(&tcp_fates, Fate::NotConnected) > 0,
        "more clients than the hub can hold were all served: {}",
        tally(&tcp_fates)
    );
    // The tunnel that was connected before the flood still works (its proxy port was never
    // lost), as soon as the hub has a file to spare.
    held.truncate(held.len().saturating_sub(50));
    let data = payload(3, 10_000);
    eventually(
        "a client through the tunnel while the flood is held",
        DEADLINE,
        || echoed(public, &data),
    )
    .await;

    // Release the flood: the same listeners serve again.
    drop(held);
    hub.assert_alive("after the flood");
    eventually("a new client on the same tcp port", DEADLINE, || {
        echoed(public, b"after")
    })
    .await;
    let echo2 = start_echo().await;
    let second = eventually(
        "a new tunnel on the same tunnel listener",
        DEADLINE,
        || async {
            Tunnel::new(tunnel_to(hub_addr, pin, echo2))
                .ok()?
                .connect()
                .await
                .ok()
        },
    )
    .await;
    let port = match &second.proxies()[0] {
        tunnelize::protocol::ProxyOutcome::Accepted { port: Some(p), .. } => *p,
        other => panic!("the new tunnel's proxy: {other:?}"),
    };
    drop(second);
    assert_ne!(port, public.port(), "the first tunnel still holds its port");
    let answer = eventually("an answer on the same http port", DEADLINE, || async {
        let mut socket = TcpStream::connect(web).await.ok()?;
        socket
            .write_all(b"GET / HTTP/1.1\r\nHost: nobody.test.local\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer))
            .await
            .ok()?
            .ok()?;
        Some(String::from_utf8_lossy(&answer).into_owned())
    })
    .await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert_eq!(round_trip(public, b"still").await, b"still");
    hub.assert_alive("at the end");
    eprintln!(
        "{} shedding reports logged; {:?} in all",
        hub.count("out of file descriptors"),
        started.elapsed()
    );
    tunnel.stop.cancel();
}
