//! What slow clients cost the built hub: 1,000 slowloris connections (a request head sent a
//! line at a time) and 1,000 slow bodies (a head, then a body trickling in), each costing the
//! hub at most [`PER_CONNECTION_BOUND`] of resident memory, the figure docs/benchmarks.md
//! states. The hub stays answering meanwhile.
//!
//! The hub's memory is read once it has consumed every byte the clients sent (every one of
//! its sockets on the http port has an empty receive queue in `/proc/net/tcp`), so what it
//! holds for them is in place; no waiting on the clock.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use common::netns::{Daemon, HubFiles, TunnelFiles, connected};
use common::{DEADLINE, eventually};

/// Connections of each kind.
const SLOW: usize = 1_000;
/// Clients connecting at once.
const CONCURRENCY: usize = 64;
/// Most resident memory a slow connection may cost the hub (the figure in
/// docs/benchmarks.md; measured at about 2 KiB for slowloris, 14 KiB for a slow body).
const PER_CONNECTION_BOUND: u64 = 16 * 1024;
const KIB: f64 = 1024.0;

/// A plain HTTP target (Python's http.server) in a process of its own; killed when dropped.
struct PythonHttp {
    addr: SocketAddr,
    _child: tokio::process::Child,
}

async fn start_python_http(dir: &std::path::Path) -> PythonHttp {
    let mut child = tokio::process::Command::new("python3")
        .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("this test needs python3 for its http target");
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
    let line = tokio::time::timeout(DEADLINE, out.next_line())
        .await
        .expect("the http target starts")
        .unwrap()
        .expect("the http target prints its port");
    let port: u16 = line
        .split(" port ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    PythonHttp {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        _child: child,
    }
}

/// Receive queues of the hub's established sockets on `port`, from `/proc/net/tcp`.
fn receive_queues(port: u16) -> Vec<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (address, state, queues) = (fields.get(1)?, fields.get(3)?, fields.get(4)?);
            if !address.ends_with(&local) || *state != "01" {
                return None;
            }
            u64::from_str_radix(queues.split(':').nth(1)?, 16).ok()
        })
        .collect()
}

/// Waits until the hub holds `count` connections on `port` and has read all they sent.
async fn consumed(port: u16, count: usize) {
    let what = format!("the hub to read everything {count} clients sent");
    eventually(&what, DEADLINE * 3, || async {
        let queues = receive_queues(port);
        let waiting: u64 = queues.iter().sum();
        match queues.len() >= count && waiting == 0 {
            true => Ok(()),
            false => Err(format!("{} sockets, {waiting} bytes unread", queues.len())),
        }
    })
    .await;
}

/// Opens `n` connections to `web`, each sending `first`.
async fn open(web: SocketAddr, n: usize, first: &'static [u8]) -> Vec<TcpStream> {
    let gate = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut opening = JoinSet::new();
    for index in 0..n {
        let permit = gate.clone().acquire_owned().await.unwrap();
        opening.spawn(async move {
            let _permit = permit;
            let mut socket = common::spread_socket()
                .connect(web)
                .await
                .unwrap_or_else(|e| panic!("slow client {index}: connect: {e}"));
            socket.write_all(first).await.unwrap();
            socket
        });
    }
    let mut sockets = Vec::with_capacity(n);
    while let Some(socket) = opening.join_next().await {
        sockets.push(socket.unwrap());
    }
    sockets
}

/// Sends `more` on every socket: the slow clients go on being slow.
async fn trickle(sockets: &mut [TcpStream], more: &[u8]) {
    for socket in sockets {
        socket.write_all(more).await.unwrap();
    }
}

/// A request through the hub to the target, answered.
async fn probe(web: SocketAddr) {
    let mut socket = common::connect(web).await;
    socket
        .write_all(b"GET / HTTP/1.1\r\nHost: app.test.local\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, socket.read_to_end(&mut out))
        .await
        .expect("the probe is answered")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

/// The hub's memory growth per connection from `before`, printed as `what`.
fn per_connection(hub: &Daemon, before: u64, what: &str) -> u64 {
    let now = hub.rss();
    let each = now.saturating_sub(before) / SLOW as u64;
    println!(
        "{SLOW} {what}: hub RSS {:.1} -> {:.1} MiB, {:.1} KiB per connection",
        before as f64 / KIB / KIB,
        now as f64 / KIB / KIB,
        each as f64 / KIB
    );
    each
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slowloris_and_a_thousand_slow_bodies_cost_the_hub_little_memory_each() {
    common::require_open_files((2 * SLOW + 500) as u64);
    let dir = tempfile::tempdir().unwrap();
    let target = start_python_http(dir.path()).await;
    // Defaults but for header_timeout: the slowloris clients must outlast the test.
    let web = "[services.web]\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n\
               domain = \"test.local\"\nheader_timeout = \"10m\"\n";
    let hub_files = HubFiles::write(dir.path(), "127.0.0.1", "", web);
    let mut hub = Daemon::start("hub", &hub_files.config, None);
    let hub_addr = hub.hub_address().await;
    let line = hub.any_line_with("serving http").await;
    let web: SocketAddr = line[line.find(" listen=").unwrap() + " listen=".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let tunnel_files = TunnelFiles::write(dir.path(), hub_addr, &hub_files.fingerprint, &[], "");
    let mut text = std::fs::read_to_string(&tunnel_files.config).unwrap();
    text.push_str(&format!(
        "[[proxies]]\nname = \"app\"\nservice = \"web\"\nhostname = \"app\"\n\
         target = \"{}\"\n",
        target.addr
    ));
    std::fs::write(&tunnel_files.config, text).unwrap();
    let _tunnel = Daemon::start("tunnel", &tunnel_files.config, None);
    connected(&tunnel_files.admin(), DEADLINE).await;
    // Warmed up: the link to the tunnel is open and has carried a request.
    probe(web).await;
    let idle = hub.rss();

    let head = b"GET / HTTP/1.1\r\nHost: app.test.local\r\nX-Slow-1: a\r\n";
    let mut loris = open(web, SLOW, head).await;
    consumed(web.port(), SLOW).await;
    trickle(&mut loris, b"X-Slow-2: b\r\n").await;
    consumed(web.port(), SLOW).await;
    let loris_each = per_connection(&hub, idle, "slowloris connections");

    let with_loris = hub.rss();
    let head = b"POST /upload HTTP/1.1\r\nHost: app.test.local\r\nContent-Length: 1000000\r\n\r\n\
                 0123456789012345678901234567890123456789012345678901234567890123456789\
                 012345678901234567890123456789";
    let mut bodies = open(web, SLOW, head).await;
    consumed(web.port(), 2 * SLOW).await;
    trickle(&mut bodies, &[b'x'; 100]).await;
    consumed(web.port(), 2 * SLOW).await;
    let body_each = per_connection(&hub, with_loris, "slow-body connections");

    // The hub still answers others while holding them all.
    probe(web).await;
    assert!(
        loris_each <= PER_CONNECTION_BOUND && body_each <= PER_CONNECTION_BOUND,
        "a slowloris connection costs the hub {loris_each} B, a slow body {body_each} B; the \
         bound is {PER_CONNECTION_BOUND} B"
    );
    assert!(!hub.exited(), "the hub died:\n{}", hub.tail());
}
