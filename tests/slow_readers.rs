//! One tunnel's slow clients must not stall its other clients (issue 26): with the built hub
//! and tunnel, 1,000 clients of one proxy that read a few bytes a second (or a target that
//! reads nothing) leave every request to another proxy of the same tunnel answered within its
//! deadline, and cost the hub and the tunnel at most [`PER_CLIENT_BOUND`] of memory each
//! ([`PER_HTTP_CLIENT_BOUND`] for slow readers of an http response on one hostname, with
//! requests for another; [`PER_HTTPS_CLIENT_BOUND`] over https).
//!
//! The slow clients come from 127.0.0.2 onward, 200 to an address (`common::spread_socket`),
//! under the hub's default `connections_per_address`.
//!
//! The probes start once every slow client's stream is under way (each has had its first
//! bytes, or its target has taken its first bytes), so the links carry their load throughout.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;

use common::netns::{Daemon, HubFiles, TunnelFiles, connected, public_port, start_hub_and_tunnel};
use common::{DEADLINE, eventually};

/// Slow clients in each test.
const SLOW: usize = 1_000;
/// Clients connecting at once.
const CONCURRENCY: usize = 64;
/// Requests to the other proxy while the slow clients hold on.
const PROBES: usize = 40;
/// Deadline of each probe (the issue's: a request that takes longer has failed).
const PROBE_LIMIT: Duration = Duration::from_secs(5);
/// Most resident memory a slow client may cost the hub or the tunnel (docs/protocol.md): its
/// stream's flow-control window (256 KiB: in flight, or held unread), one 64 KiB socket read
/// waiting for window, and 32 KiB for the state of its connection and stream.
const PER_CLIENT_BOUND: u64 = (256 + 64 + 32) * 1024;
/// The same for a slow reader of an http response: its stream's window, one 64 KiB frame
/// of it taken from the link, the upstream connection's 16 KiB read buffer, the client
/// connection's write buffer (`max_head_size`, 64 KiB by default) and 64 KiB for the state
/// of its connection, request and stream.
const PER_HTTP_CLIENT_BOUND: u64 = (256 + 64 + 16 + 64 + 64) * 1024;
/// The same over https, and the TLS connection's buffers: rustls's unsent TLS records (64 KiB,
/// its default buffer limit) and a 16 KiB record each way.
const PER_HTTPS_CLIENT_BOUND: u64 = PER_HTTP_CLIENT_BOUND + (64 + 32) * 1024;
/// What each slow reader takes at a time.
const SIP: usize = 16;
/// Bytes the endless target sends a client at most (a bound on its loop, never reached).
const ENDLESS: u64 = 1 << 40;

/// Held by each test for its whole run: two tests' thousands of sockets at once would measure
/// each other's load (and memory), and can take the kernel's TCP memory between them.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A listener whose accepted sockets have small send and receive buffers: the test's own
/// target sockets filled to the kernel's 4-6 MiB each (a send queue toward slow readers, a
/// receive queue nobody reads) would take its TCP memory (`tcp_mem`) and stall every socket
/// on the machine.
fn small_buffer_listener() -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(16 * 1024).unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    socket.listen(1024).unwrap()
}

/// A target that sends every client bytes as fast as it takes them, until it goes.
async fn endless_target() -> SocketAddr {
    let listener = small_buffer_listener();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let block = vec![b'z'; 64 * 1024];
                let mut sent = 0u64;
                while sent < ENDLESS && socket.write_all(&block).await.is_ok() {
                    sent += block.len() as u64;
                }
            });
        }
    });
    addr
}

/// An http target that answers every request on a connection with an endless body, sent as
/// fast as the client takes it.
async fn endless_http_target() -> SocketAddr {
    let listener = small_buffer_listener();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                    match socket.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {ENDLESS}\r\n\r\n");
                if socket.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let block = vec![b'z'; 64 * 1024];
                let mut sent = 0u64;
                while sent < ENDLESS && socket.write_all(&block).await.is_ok() {
                    sent += block.len() as u64;
                }
            });
        }
    });
    addr
}

/// A target that accepts clients and never reads what they send; counts the clients whose
/// first byte it has seen.
async fn deaf_target(seen: Arc<AtomicU64>) -> SocketAddr {
    let listener = small_buffer_listener();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            let _ = socket.readable().await;
            seen.fetch_add(1, Ordering::Relaxed);
            held.push(socket);
        }
    });
    addr
}

/// An echo target.
async fn echo_target() -> SocketAddr {
    common::start_echo().await
}

/// A client whose receive buffer is as small as the kernel allows.
async fn small_window_client(addr: SocketAddr) -> TcpStream {
    let socket = common::spread_socket();
    socket.set_recv_buffer_size(4096).unwrap();
    tokio::time::timeout(DEADLINE, socket.connect(addr))
        .await
        .expect("the hub accepts the slow client")
        .unwrap()
}

/// Opens `SLOW` connections to `addr` with `open`, `CONCURRENCY` at a time.
async fn open_all<F, Fut, T>(open: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let gate = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut opening = JoinSet::new();
    for index in 0..SLOW {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let opened = open(index);
        opening.spawn(async move {
            let _permit = permit;
            opened.await
        });
    }
    let mut sockets = Vec::with_capacity(SLOW);
    while let Some(socket) = opening.join_next().await {
        sockets.push(socket.unwrap());
    }
    sockets
}

/// The opened readers, once every one of them had its first bytes (else the test fails with
/// the first reasons and the daemons' last lines).
fn every_reader<R>(opened: Vec<Result<R, String>>, hub: &Daemon, tunnel: &Daemon) -> Vec<R> {
    let (readers, failed): (Vec<_>, Vec<_>) = opened.into_iter().partition(Result::is_ok);
    assert!(
        failed.is_empty(),
        "{} of {SLOW} slow readers had no first bytes: {:?}\nhub:\n{}\ntunnel:\n{}",
        failed.len(),
        failed
            .into_iter()
            .filter_map(Result::err)
            .take(3)
            .collect::<Vec<_>>(),
        hub.tail(),
        tunnel.tail()
    );
    readers.into_iter().filter_map(Result::ok).collect()
}

/// Keeps each reader reading [`SIP`] bytes a second until the set is dropped.
fn sip<R: AsyncRead + Unpin + Send + 'static>(readers: Vec<R>) -> JoinSet<()> {
    let mut sipping = JoinSet::new();
    for mut reader in readers {
        sipping.spawn(async move {
            let mut buf = [0u8; SIP];
            // The pace of a slow reader (the load under test), not a wait for anything.
            let mut pace = tokio::time::interval(Duration::from_secs(1));
            pace.tick().await;
            // Bounded: the test ends long before (the set is aborted when dropped).
            for _ in 0..3_600 {
                pace.tick().await;
                if !matches!(reader.read(&mut buf).await, Ok(n) if n > 0) {
                    return;
                }
            }
        });
    }
    sipping
}

/// `PROBES` echo round trips through `addr`, one after another; returns those that missed
/// [`PROBE_LIMIT`] or failed, with why.
async fn probe_all(addr: SocketAddr) -> Vec<String> {
    let mut failed = Vec::new();
    for index in 0..PROBES {
        let data = common::payload(index as u64, 4096);
        let round_trip = async {
            let mut socket = TcpStream::connect(addr).await?;
            socket.write_all(&data).await?;
            let mut back = vec![0u8; data.len()];
            socket.read_exact(&mut back).await?;
            Ok::<_, std::io::Error>(back)
        };
        match tokio::time::timeout(PROBE_LIMIT, round_trip).await {
            Ok(Ok(back)) if back == data => {}
            Ok(Ok(_)) => failed.push(format!("probe {index}: wrong bytes back")),
            Ok(Err(e)) => failed.push(format!("probe {index}: {e}")),
            Err(_) => failed.push(format!("probe {index}: no answer within {PROBE_LIMIT:?}")),
        }
    }
    failed
}

/// Each daemon's memory growth over `before`, checked against `SLOW` clients' `bound` each.
fn check_memory(daemons: [(&Daemon, u64); 2], bound: u64) {
    let mut report = Vec::new();
    let mut over = false;
    for (daemon, before) in daemons {
        let now = daemon.rss();
        let each = now.saturating_sub(before) / SLOW as u64;
        over |= each > bound;
        report.push(format!(
            "{}: {:.1} -> {:.1} MiB, {:.1} KiB per slow client",
            daemon.what,
            before as f64 / 1048576.0,
            now as f64 / 1048576.0,
            each as f64 / 1024.0
        ));
    }
    println!("{}", report.join("; "));
    assert!(
        !over,
        "{}; the bound is {bound} B per slow client",
        report.join("; ")
    );
}

/// A hub and tunnel with proxies `slow` (to `slow_target`) and `app` (an echo target).
async fn start(
    dir: &std::path::Path,
    slow_target: SocketAddr,
) -> (Daemon, Daemon, SocketAddr, SocketAddr) {
    common::require_open_files((2 * SLOW + 500) as u64);
    let app = echo_target().await;
    let (hub, _hub_files, tunnel, tunnel_files) = start_hub_and_tunnel(
        dir,
        "127.0.0.1",
        "",
        &[("slow", slow_target), ("app", app)],
        None,
    )
    .await;
    let status = connected(&tunnel_files.admin(), DEADLINE).await;
    let at = |name| SocketAddr::from(([127, 0, 0, 1], public_port(&status, name)));
    let (slow, app) = (at("slow"), at("app"));
    assert!(
        probe_all(app).await.is_empty(),
        "the app answers before the load"
    );
    (hub, tunnel, slow, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_readers_of_one_proxy_do_not_stall_another() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (hub, tunnel, slow, app) = start(dir.path(), endless_target().await).await;
    let idle = (hub.rss(), tunnel.rss());
    let opened = open_all(|_| async move {
        let mut socket = small_window_client(slow).await;
        let mut first = [0u8; 1];
        match tokio::time::timeout(DEADLINE, socket.read_exact(&mut first)).await {
            Ok(Ok(_)) => Ok(socket),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no first byte in time".to_string()),
        }
    })
    .await;
    let _sipping = sip(every_reader(opened, &hub, &tunnel));
    let failed = probe_all(app).await;
    assert!(
        failed.is_empty(),
        "{} of {PROBES} probes failed with {SLOW} slow readers on another proxy: {failed:?}\n\
         hub:\n{}\ntunnel:\n{}",
        failed.len(),
        hub.tail(),
        tunnel.tail()
    );
    check_memory([(&hub, idle.0), (&tunnel, idle.1)], PER_CLIENT_BOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_reads_nothing_does_not_stall_another_proxy() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let (hub, tunnel, slow, app) = start(dir.path(), deaf_target(seen.clone()).await).await;
    let idle = (hub.rss(), tunnel.rss());
    // Each client sends as fast as it may to a target that takes nothing.
    // Their send buffers are small, or the test's own sockets alone would take the kernel's
    // TCP memory (`tcp_mem`) and stall every socket on the machine.
    let writers = open_all(|_| async move {
        let socket = common::spread_socket();
        socket.set_send_buffer_size(16 * 1024).unwrap();
        tokio::time::timeout(DEADLINE, socket.connect(slow))
            .await
            .expect("the hub accepts the client")
            .unwrap()
    })
    .await;
    let mut writing = JoinSet::new();
    for mut writer in writers {
        writing.spawn(async move {
            let block = vec![b'u'; 64 * 1024];
            let mut sent = 0u64;
            while sent < ENDLESS && writer.write_all(&block).await.is_ok() {
                sent += block.len() as u64;
            }
        });
    }
    eventually(
        "the deaf target to have every client",
        DEADLINE * 3,
        || async {
            let n = seen.load(Ordering::Relaxed);
            (n >= SLOW as u64).then_some(()).ok_or(format!("{n} seen"))
        },
    )
    .await;
    let failed = probe_all(app).await;
    assert!(
        failed.is_empty(),
        "{} of {PROBES} probes failed with {SLOW} clients writing to a deaf target: {failed:?}\n\
         hub:\n{}\ntunnel:\n{}",
        failed.len(),
        hub.tail(),
        tunnel.tail()
    );
    check_memory([(&hub, idle.0), (&tunnel, idle.1)], PER_CLIENT_BOUND);
    writing.abort_all();
}

/// A client connection to the http or https service: the socket, or TLS over it.
trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> ClientStream for S {}

/// The hub's http service, or its https one with a client trusting the test CA.
#[derive(Clone)]
struct Web {
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Web {
    /// `socket`, with TLS for `host` when the service is https (HTTP/1.1 by ALPN).
    async fn over(&self, socket: TcpStream, host: &str) -> std::io::Result<Box<dyn ClientStream>> {
        match &self.tls {
            None => Ok(Box::new(socket)),
            Some(connector) => {
                let name = rustls_pki_types::ServerName::try_from(host.to_owned())
                    .map_err(std::io::Error::other)?;
                Ok(Box::new(connector.connect(name, socket).await?))
            }
        }
    }
}

/// `PROBES` requests for `https?://app.test.local/` on `web`, one after another; returns
/// those that missed [`PROBE_LIMIT`] or were not answered 200, with why.
async fn probe_all_web(web: &Web) -> Vec<String> {
    let mut failed = Vec::new();
    for index in 0..PROBES {
        let exchange = async {
            let socket = TcpStream::connect(web.addr).await?;
            let mut stream = web.over(socket, "app.test.local").await?;
            stream
                .write_all(
                    format!(
                        "GET /probe-{index} HTTP/1.1\r\nHost: app.test.local\r\n\
                         Connection: close\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .await?;
            let mut answer = Vec::new();
            // A TLS peer that closes without close_notify still gave the whole answer.
            let _ = stream.read_to_end(&mut answer).await;
            Ok::<_, std::io::Error>(answer)
        };
        match tokio::time::timeout(PROBE_LIMIT, exchange).await {
            Ok(Ok(answer)) if answer.starts_with(b"HTTP/1.1 200") => {}
            Ok(Ok(answer)) => failed.push(format!(
                "probe {index}: {:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(80)])
            )),
            Ok(Err(e)) => failed.push(format!("probe {index}: {e}")),
            Err(_) => failed.push(format!("probe {index}: no answer within {PROBE_LIMIT:?}")),
        }
    }
    failed
}

/// 1,000 slow readers of `big.test.local` on the hub's http (or, with `tls`, https) service,
/// and 40 requests for `app.test.local` meanwhile; each daemon's memory within `bound`.
async fn slow_readers_of_a_hostname(tls: bool, bound: u64) {
    let _alone = ONE_AT_A_TIME.lock().await;
    common::require_open_files((2 * SLOW + 500) as u64);
    let dir = tempfile::tempdir().unwrap();
    let big = endless_http_target().await;
    let app = common::web::start_app("app").await;
    let (kind, certificates, connector) = if tls {
        let ca = common::pki::TestCa::new(dir.path());
        let (files, _) = ca.issue(dir.path(), "web", "*.test.local");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let certificates = format!(
            "[[services.web.certificates]]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            files.cert_file.display(),
            files.key_file.display()
        );
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        ("https", certificates, Some(connector))
    } else {
        ("http", String::new(), None)
    };
    let web = format!(
        "[services.web]\nkind = \"{kind}\"\nlisten = \"127.0.0.1:0\"\n\
         domain = \"test.local\"\n{certificates}"
    );
    let hub_files = HubFiles::write(dir.path(), "127.0.0.1", "", &web);
    let mut hub = Daemon::start("hub", &hub_files.config, None);
    let hub_addr = hub.hub_address().await;
    let line = hub.any_line_with(&format!("serving {kind} on ")).await;
    let addr: SocketAddr = line[line.find(" listen=").unwrap() + " listen=".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let web = Web {
        addr,
        tls: connector,
    };
    let tunnel_files = TunnelFiles::write(dir.path(), hub_addr, &hub_files.fingerprint, &[], "");
    let mut text = std::fs::read_to_string(&tunnel_files.config).unwrap();
    for (name, target) in [("big", big), ("app", app.addr)] {
        text.push_str(&format!(
            "[[proxies]]\nname = \"{name}\"\nservice = \"web\"\nhostname = \"{name}\"\n\
             target = \"{target}\"\n"
        ));
    }
    std::fs::write(&tunnel_files.config, text).unwrap();
    let tunnel = Daemon::start("tunnel", &tunnel_files.config, None);
    connected(&tunnel_files.admin(), DEADLINE).await;
    assert!(
        probe_all_web(&web).await.is_empty(),
        "the app answers before the load"
    );
    let idle = (hub.rss(), tunnel.rss());
    let opened = open_all(|_| {
        let web = web.clone();
        async move {
            let started = async {
                let socket = small_window_client(web.addr).await;
                let mut stream = web.over(socket, "big.test.local").await?;
                stream
                    .write_all(b"GET /big HTTP/1.1\r\nHost: big.test.local\r\n\r\n")
                    .await?;
                let mut first = [0u8; 1];
                stream.read_exact(&mut first).await?;
                Ok::<_, std::io::Error>(stream)
            };
            match tokio::time::timeout(DEADLINE, started).await {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no first byte in time".to_string()),
            }
        }
    })
    .await;
    let _sipping = sip(every_reader(opened, &hub, &tunnel));
    let failed = probe_all_web(&web).await;
    assert!(
        failed.is_empty(),
        "{} of {PROBES} probes failed with {SLOW} slow readers of another hostname ({kind}): \
         {failed:?}\nhub:\n{}\ntunnel:\n{}",
        failed.len(),
        hub.tail(),
        tunnel.tail()
    );
    check_memory([(&hub, idle.0), (&tunnel, idle.1)], bound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_readers_of_one_hostname_do_not_stall_another() {
    slow_readers_of_a_hostname(false, PER_HTTP_CLIENT_BOUND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_readers_of_one_https_hostname_do_not_stall_another() {
    slow_readers_of_a_hostname(true, PER_HTTPS_CLIENT_BOUND).await;
}
