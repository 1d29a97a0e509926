//! Shared helpers for integration tests: in-process hubs and tunnels on 127.0.0.1 with port 0,
//! local targets, deterministic payloads, and [`eventually`], the one way a test waits.

#![allow(dead_code)]

pub mod netns;
pub mod pki;
pub mod redis;
pub mod web;

use std::net::SocketAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use tunnelize::config::{
    AdminConfig, HubConfig, HubTrust, PortRange, ProxyConfig, ServiceConfig, ServiceKind,
    TcpService, TunnelConfig, TunnelKey,
};
use tunnelize::hub::Hub;
use tunnelize::protocol::ProxyOutcome;
use tunnelize::secret::Secret;
use tunnelize::tls::{Fingerprint, Identity, client_config, server_name};
use tunnelize::tunnel::{Session, Tunnel};

/// The key every test hub accepts.
pub const KEY: &str = "test-key-0123456789";

/// Upper bound for any wait in a test.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A hub running in this process.
pub struct TestHub {
    pub addr: SocketAddr,
    /// Bound addresses of the hub's http/https services, by name.
    pub services: std::collections::HashMap<String, SocketAddr>,
    pub fingerprint: Fingerprint,
    pub stop: CancellationToken,
    pub task: JoinHandle<()>,
}

/// A `tcp` service whose ports are picked by the OS.
pub fn tcp_any(name: &str) -> ServiceConfig {
    ServiceConfig {
        name: name.into(),
        kind: ServiceKind::Tcp(TcpService {
            listen: [127, 0, 0, 1].into(),
            ports: PortRange { start: 0, end: 0 },
        }),
    }
}

pub fn hub_config(services: Vec<ServiceConfig>) -> HubConfig {
    HubConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: std::env::temp_dir(),
        allow_no_auth: false,
        tls: None,
        keys: vec![TunnelKey {
            name: "test".into(),
            key: KEY.into(),
            hostnames: vec!["*.custom.test".into(), "exact.example.org".into()],
        }],
        services,
        heartbeat_interval: Duration::from_secs(10),
        handshake_timeout: Duration::from_secs(10),
        link_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(7200),
        admin: AdminConfig::disabled(),
        // Tests of refusals make many failed logins from 127.0.0.1; the lockout tests set
        // their own limits.
        lockout_failures: 1000,
        lockout_duration: Duration::from_secs(1800),
        limits: tunnelize::config::Limits::default(),
        // Stopping a test hub with clients connected waits this long for them.
        shutdown_timeout: Duration::from_secs(1),
        reconnect_grace: Duration::from_secs(60),
        cluster: None,
    }
}

pub async fn start_hub(services: Vec<ServiceConfig>) -> TestHub {
    start_hub_with(hub_config(services)).await
}

pub async fn start_hub_with(config: HubConfig) -> TestHub {
    start_hub_full(config).await.0
}

/// Starts a hub like [`start_hub_with`], also serving its admin API as `config.admin` says.
pub async fn start_hub_with_admin(
    config: HubConfig,
) -> (TestHub, tunnelize::admin::AdminListeners) {
    let (hub, listeners, _) = start_hub_full(config).await;
    (hub, listeners)
}

/// Starts a hub on 127.0.0.1:0 with a fresh certificate for `localhost`, its admin API as
/// `config.admin` says, and returns a view of its state too.
pub async fn start_hub_full(
    config: HubConfig,
) -> (
    TestHub,
    tunnelize::admin::AdminListeners,
    tunnelize::hub::inspect::HubView,
) {
    start_hub_presenting(config, &Identity::generate(&["localhost"]).unwrap()).await
}

/// [`start_hub_full`] with `identity` as the certificate of the tunnel listener and of the
/// TLS admin listener.
pub async fn start_hub_presenting(
    mut config: HubConfig,
    identity: &Identity,
) -> (
    TestHub,
    tunnelize::admin::AdminListeners,
    tunnelize::hub::inspect::HubView,
) {
    tunnelize::tls::install_crypto_provider();
    // `config.listen` is 127.0.0.1:0 unless a test gives a hub another address.
    let listener = TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    config.listen = addr;
    // A cluster member whose test left `advertise` empty advertises where it listens.
    if let Some(cluster) = config.cluster.as_mut().filter(|c| c.advertise.is_empty()) {
        cluster.advertise = addr.to_string();
    }
    let admin = config.admin.clone();
    let names: Vec<String> = config.services.iter().map(|s| s.name.clone()).collect();
    let hub = Hub::new(config, identity).await.unwrap();
    let services = names
        .into_iter()
        .filter_map(|n| Some((n.clone(), hub.service_addr(&n)?)))
        .collect();
    let fingerprint = hub.fingerprint();
    let stop = CancellationToken::new();
    let view = hub.view();
    let listeners = tunnelize::admin::serve_hub(hub.view(), &admin, identity, None, &stop)
        .await
        .expect("admin API starts");
    let task = tokio::spawn(hub.run(listener, stop.clone()));
    let hub = TestHub {
        addr,
        services,
        fingerprint,
        stop,
        task,
    };
    (hub, listeners, view)
}

/// How often [`eventually`] looks again.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// What one look at an awaited condition saw: the value waited for, or what was there instead.
pub trait Look {
    type Value;
    /// `Ok` with the value waited for, or `Err` saying what was seen instead.
    fn seen(self) -> Result<Self::Value, String>;
}

impl<T> Look for Option<T> {
    type Value = T;
    fn seen(self) -> Result<T, String> {
        self.ok_or_else(|| "not yet".to_owned())
    }
}

impl<T, E: std::fmt::Display> Look for Result<T, E> {
    type Value = T;
    fn seen(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

/// Looks with `check` every [`POLL_EVERY`] until it sees what it waits for (`Some`, `Ok`) and
/// returns that. Bounded in time and in count: at most `limit` (a look still running then is
/// cut short) and at most as many looks as fit in it, so that a clock that does not move
/// (tokio's paused time) ends the wait too. Otherwise panics, naming `what` it waited for and
/// what the last look saw (the `Err`; for `None`, "not yet").
///
/// `check` makes a new future for each look; a look that needs to change what the test holds
/// does that in the closure's body, before the `async` block (or through a lock).
pub async fn eventually<L, Fut>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Fut,
) -> L::Value
where
    L: Look,
    Fut: std::future::Future<Output = L>,
{
    let start = std::time::Instant::now();
    let most = limit.as_millis() / POLL_EVERY.as_millis() + 1;
    let mut last = "nothing: no look finished".to_owned();
    let mut looks = 0;
    while looks < most {
        looks += 1;
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, check()).await {
            Ok(look) => match look.seen() {
                Ok(value) => return value,
                Err(seen) => last = seen,
            },
            Err(_) => {
                last = format!("{last} (and look {looks} did not finish in time)");
                break;
            }
        }
        if start.elapsed() >= limit {
            break;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    panic!(
        "gave up waiting for {what} after {:?} and {looks} looks; the last one saw: {last}",
        start.elapsed()
    );
}

pub fn proxy(name: &str, service: &str, target: SocketAddr, port: Option<u16>) -> ProxyConfig {
    ProxyConfig {
        name: name.into(),
        service: service.into(),
        target: target.to_string(),
        port,
        ..Default::default()
    }
}

pub fn tunnel_config(hub: &TestHub, proxies: Vec<ProxyConfig>) -> TunnelConfig {
    TunnelConfig {
        hub_address: hub.addr.to_string(),
        hub_server_name: "localhost".into(),
        hub_trust: HubTrust::Fingerprint(hub.fingerprint.0),
        key: Some(Secret::new(KEY)),
        links: 2,
        connect_timeout: Duration::from_secs(5),
        admin: AdminConfig::disabled(),
        reconnect: Default::default(),
        proxies,
    }
}

/// A connected tunnel running in this process.
pub struct TestTunnel {
    pub tunnel_id: uuid::Uuid,
    pub outcomes: Vec<ProxyOutcome>,
    pub stop: CancellationToken,
    pub task: JoinHandle<()>,
}

impl TestTunnel {
    /// Public port of the proxy at `index`; panics with the rejection reason otherwise.
    pub fn port(&self, index: usize) -> u16 {
        match &self.outcomes[index] {
            ProxyOutcome::Accepted { port: Some(p), .. } => *p,
            other => panic!("proxy {index} not accepted: {other:?}"),
        }
    }

    pub fn addr(&self, index: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port(index)))
    }
}

pub async fn start_tunnel(config: TunnelConfig) -> TestTunnel {
    let tunnel = Tunnel::new(config).unwrap();
    let session: Session = tunnel.connect().await.unwrap();
    let outcomes = session.proxies().to_vec();
    let tunnel_id = session.tunnel_id();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let _ = session.run(&tunnel, s).await;
    });
    TestTunnel {
        tunnel_id,
        outcomes,
        stop,
        task,
    }
}

/// An echo server on 127.0.0.1:0 that echoes until the client half-closes, then half-closes
/// too.
pub async fn start_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve_echo(listener);
    addr
}

/// Serves echo on `listener` as [`start_echo`] does; aborting the task closes the listener.
pub fn serve_echo(listener: TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = socket.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    })
}

/// An admin API on the Unix socket `socket` only, as a config file naming it would set it.
pub fn admin_on(socket: &std::path::Path) -> AdminConfig {
    AdminConfig {
        socket: Some(socket.to_owned()),
        socket_explicit: true,
        ..AdminConfig::default()
    }
}

/// Starts `command` with no standard input or output, to be killed when dropped, and hands each
/// line of its standard error to `keep` as it comes. Returns the child and the task reading its
/// standard error, which ends when the child closes it. Panics naming `what` if it cannot start.
pub fn spawn_with_stderr(
    command: &mut tokio::process::Command,
    what: &str,
    mut keep: impl FnMut(String) + Send + 'static,
) -> (tokio::process::Child, JoinHandle<()>) {
    use tokio::io::AsyncBufReadExt;
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let reader = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            keep(line);
        }
    });
    (child, reader)
}

/// A port on which nothing listens (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// Deterministic pseudo-random bytes (xorshift), so each client's data is its own.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Connects, retrying until `DEADLINE` (for a port that is about to open).
pub async fn connect(addr: SocketAddr) -> TcpStream {
    eventually(&format!("a connection to {addr}"), DEADLINE, || {
        TcpStream::connect(addr)
    })
    .await
}

/// Clients given one source address by [`spread_socket`].
pub const PER_SOURCE: usize = 200;

/// A client socket bound to a source address of its own among 127.0.0.2 onward, [`PER_SOURCE`]
/// sockets to each in the order asked for (across the test binary), so that a test's
/// thousand clients stay under the hub's `[limits] connections_per_address` (256 by default)
/// as clients from many addresses would.
pub fn spread_socket() -> tokio::net::TcpSocket {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) / PER_SOURCE;
    // 127.0.0.2 onward; 127.255.255.255 is never reached by a test's few thousand clients.
    let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(127, 0, 0, 2)) + n as u32);
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind(SocketAddr::from((ip, 0)))
        .unwrap_or_else(|e| panic!("binding a client socket to {ip}: {e}"));
    socket
}

/// Sends `data`, half-closes, and returns everything read back until EOF.
pub async fn round_trip(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    round_trip_on(connect(addr).await, data).await
}

/// [`round_trip`] on a connection already open.
pub async fn round_trip_on(socket: TcpStream, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = socket.into_split();
    let data = data.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(DEADLINE, r.read_to_end(&mut back))
        .await
        .expect("echo timed out")
        .unwrap();
    writer.await.unwrap();
    back
}

/// Starts TLS on `socket` as a client of the test hub whose certificate has `fingerprint`
/// (the hub's tunnel listener, or its admin API's TLS listener).
pub async fn tls_over(socket: TcpStream, fingerprint: &Fingerprint) -> TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(
        client_config(&HubTrust::Fingerprint(fingerprint.0)).unwrap(),
    );
    connector
        .connect(server_name("localhost").unwrap(), socket)
        .await
        .unwrap()
}

/// A TLS connection to the hub's tunnel listener, as a hand-written peer starts one.
pub async fn tls_to(hub: &TestHub) -> TlsStream<TcpStream> {
    let socket = TcpStream::connect(hub.addr).await.unwrap();
    tls_over(socket, &hub.fingerprint).await
}

/// A client connection through an echo proxy that has moved `n` bytes each way and stays open.
pub async fn echoing_client(addr: SocketAddr, n: usize) -> TcpStream {
    let mut socket = connect(addr).await;
    let data = payload(n as u64, n);
    socket.write_all(&data).await.unwrap();
    let mut back = vec![0; n];
    tokio::time::timeout(DEADLINE, socket.read_exact(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(back, data);
    socket
}

/// Asserts that the peer closes `socket` (end of file or a reset) within [`DEADLINE`]; `what`
/// names the connection in the failure.
pub async fn closed_by_peer(socket: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(DEADLINE, socket.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!("{what}: got {n} bytes instead of a close"),
        Err(_) => panic!("{what}: still open after {DEADLINE:?}"),
    }
}

/// Writes `data` on an open connection and reads the same back; false if the connection
/// failed or was closed instead.
pub async fn echoes(socket: &mut TcpStream, data: &[u8]) -> bool {
    if socket.write_all(data).await.is_err() {
        return false;
    }
    let mut back = vec![0; data.len()];
    matches!(
        tokio::time::timeout(DEADLINE, socket.read_exact(&mut back)).await,
        Ok(Ok(_))
    ) && back == data
}

/// A plain `http` service on 127.0.0.1:0 for `domain`, with the usual limits.
pub fn http_any(name: &str, domain: &str) -> ServiceConfig {
    http_with(name, domain, |_| {})
}

/// The settings of an `http` or `https` service on 127.0.0.1:0 for `domain`, with the usual
/// limits and no certificates.
pub fn http_settings(domain: &str) -> tunnelize::config::HttpService {
    tunnelize::config::HttpService {
        listen: "127.0.0.1:0".parse().unwrap(),
        domain: domain.into(),
        trusted_proxies: vec![],
        header_timeout: Duration::from_secs(10),
        response_timeout: Duration::from_secs(30),
        max_head_size: 64 * 1024,
        body_read_ahead: 8192,
        redirect_https: None,
        certificates: vec![],
    }
}

/// [`http_any`] with its settings changed by `tweak`.
pub fn http_with(
    name: &str,
    domain: &str,
    tweak: impl FnOnce(&mut tunnelize::config::HttpService),
) -> ServiceConfig {
    let mut http = http_settings(domain);
    tweak(&mut http);
    ServiceConfig {
        name: name.into(),
        kind: ServiceKind::Http(http),
    }
}

/// `GET /` with `Host: host` on `addr`: the status code and the whole response, if an answer
/// came within `DEADLINE`.
pub async fn http_get(addr: SocketAddr, host: &str) -> Option<(u16, String)> {
    let mut socket = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, socket.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text))
}

/// (current, peak) resident memory of this process, in bytes (`VmRSS`, `VmHWM`).
pub fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The value of the sample `series` (a metric name with its labels as printed, such as
/// `tunnelize_rejected_total{reason="limit"}`) in Prometheus text, if there and a `T`.
pub fn metric<T: std::str::FromStr>(metrics: &str, series: &str) -> Option<T> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))?
        .trim()
        .parse()
        .ok()
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The example `etc/tunnelize/hub.toml` with its commented-out `[[keys]]` entry switched on
/// (with the key inline, as its key file does not exist here), and the file's path.
pub fn example_hub_toml_with_a_key() -> (String, std::path::PathBuf) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/tunnelize/hub.toml");
    let text = std::fs::read_to_string(&path).expect("etc/tunnelize/hub.toml");
    let block = "# [[keys]]\n# name = \"alice\"\n# key_file = \"/etc/tunnelize/keys/alice.key\"\n";
    assert!(
        text.contains(block),
        "the example's commented [[keys]] entry"
    );
    let on = format!("[[keys]]\nname = \"alice\"\nkey = \"{KEY}\"\n");
    (text.replace(block, &on), path)
}

/// The example tunnel.toml with its placeholder key replaced by [`KEY`] (the file refuses to
/// load as shipped), and the path it is read from.
pub fn example_tunnel_toml_with_a_key() -> (String, std::path::PathBuf) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/tunnelize/tunnel.toml");
    let text = std::fs::read_to_string(&path).expect("etc/tunnelize/tunnel.toml");
    let placeholder = "key = \"REPLACE-with-this-tunnel's-key-from-the-hub\"";
    assert!(text.contains(placeholder), "the example's placeholder key");
    (text.replace(placeholder, &format!("key = \"{KEY}\"")), path)
}

/// Runs the built `tunnelizectl` against the API socket `socket` with `args`, within DEADLINE.
pub async fn ctl(socket: &std::path::Path, args: &[&str]) -> std::process::Output {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tunnelizectl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output();
    tokio::time::timeout(DEADLINE, out).await.unwrap().unwrap()
}

/// Raises this process's open-file limit to its hard limit; fails clearly unless that allows
/// `needed` files.
pub fn require_open_files(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    assert!(
        limit.rlim_cur >= needed,
        "this test needs {needed} open files per process (ulimit -n); the limit here is {}",
        limit.rlim_cur
    );
}
