//! The built daemons across hub restarts: clients in the middle of a transfer when the hub is
//! stopped (SIGTERM) or killed (SIGKILL) see their connection end, never altered bytes; the
//! tunnel daemon comes back on its own (its `[reconnect]` backoff) to the restarted hub with
//! the same port and hostname; and a new 1 GiB transfer through the tcp proxy arrives intact
//! (its SHA-256 matches).
//!
//! The hub's ports are fixed in its config file so that the restarted hub serves the same
//! ones: they are picked free at run time (bound to port 0, then released), and picked again
//! if another program takes one first.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use common::web::start_app;
use common::{DEADLINE, http_get, payload, spawn_with_stderr};
use tunnelize::admin::client::AdminClient;
use tunnelize::admin::model::{self, TunnelStatus};
use tunnelize::tls::Identity;

const KEY: &str = "alice-key-0123456789";
const DOMAIN: &str = "test.local";
const HOSTNAME: &str = "app.test.local";
/// How long the 1 GiB transfer may take in all (a debug build on a shared 2-core machine).
const TRANSFER_DEADLINE: Duration = Duration::from_secs(240);
const GIB: u64 = 1 << 30;
const BLOCK: usize = 1 << 20;
/// Length of the repeating pattern mid-transfer clients send: a prime, so that a lost or
/// repeated chunk of any usual size shifts what follows and is caught.
const PATTERN: usize = 65_537;
/// Bytes each mid-transfer client has verified before the hub is stopped.
const PROGRESS: u64 = 1 << 20;

/// The hub's fixed ports.
#[derive(Debug, Clone, Copy)]
struct Ports {
    hub: u16,
    tcp: u16,
    http: u16,
}

/// Three distinct ports nothing listens on now (bound together, then released).
async fn free_ports() -> Ports {
    let mut ports = Vec::new();
    let mut held = Vec::new();
    for _ in 0..3 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        ports.push(listener.local_addr().unwrap().port());
        held.push(listener);
    }
    Ports {
        hub: ports[0],
        tcp: ports[1],
        http: ports[2],
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A daemon started from the built binary, its stderr kept (the last lines) for failures.
struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn spawn(role: &str, config: &Path) -> Daemon {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let (child, _) = spawn_with_stderr(
            Command::new(env!("CARGO_BIN_EXE_tunnelize"))
                .args([role, "-c", config.to_str().unwrap()])
                .env_remove("NOTIFY_SOCKET"),
            "the daemon starts",
            move |line| {
                let mut log = sink.lock();
                if log.len() >= 200 {
                    log.remove(0);
                }
                log.push(line);
            },
        );
        Daemon { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().join("\n")
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("the daemon runs");
        let status = std::process::Command::new("kill")
            .args(["-s", name, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn wait(&mut self) -> std::process::ExitStatus {
        match tokio::time::timeout(DEADLINE, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("the daemon did not exit; it logged:\n{}", self.log()),
        }
    }
}

fn hub_toml(dir: &Path, ports: Ports) -> String {
    format!(
        "listen = \"127.0.0.1:{hub}\"\nstate_dir = \"{state}\"\nshutdown_timeout = \"1s\"\n\
         [admin]\nsocket = \"\"\n\
         [[keys]]\nname = \"alice\"\nkey = \"{KEY}\"\n\
         [services.tcp]\nkind = \"tcp\"\nlisten = \"127.0.0.1\"\nports = \"{tcp}\"\n\
         [services.web]\nkind = \"http\"\nlisten = \"127.0.0.1:{http}\"\ndomain = \"{DOMAIN}\"\n",
        hub = ports.hub,
        tcp = ports.tcp,
        http = ports.http,
        state = dir.join("state").display(),
    )
}

fn tunnel_toml(dir: &Path, ports: Ports, pin: &str, target: SocketAddr, app: SocketAddr) -> String {
    format!(
        "hub_address = \"127.0.0.1:{hub}\"\nhub_server_name = \"localhost\"\n\
         hub_cert_sha256 = \"{pin}\"\nkey = \"{KEY}\"\n\
         [reconnect]\ninitial = \"50ms\"\nmax = \"500ms\"\n\
         [admin]\nsocket = \"{socket}\"\n\
         [[proxies]]\nname = \"bulk\"\nservice = \"tcp\"\ntarget = \"{target}\"\nport = {tcp}\n\
         [[proxies]]\nname = \"site\"\nservice = \"web\"\ntarget = \"{app}\"\nhostname = \"app\"\n",
        hub = ports.hub,
        tcp = ports.tcp,
        socket = dir.join("tunnel.sock").display(),
    )
}

/// Starts the hub on `ports` and waits until its listeners answer; `None` if it exited
/// instead (a port was taken), with what it logged.
async fn start_hub(config: &Path, ports: Ports) -> Result<Daemon, String> {
    let mut hub = Daemon::spawn("hub", config);
    // Done waiting when both listeners answer (`Ok`) or the hub has exited (`Err`).
    let listening = common::eventually("the hub to listen", DEADLINE, || {
        let exited = hub.child.try_wait();
        let log = hub.log();
        async move {
            if let Ok(Some(status)) = exited {
                return Ok(Err(format!("the hub exited ({status}):\n{log}")));
            }
            let up = TcpStream::connect(local(ports.hub)).await.is_ok()
                && TcpStream::connect(local(ports.http)).await.is_ok();
            if up {
                Ok(Ok(()))
            } else {
                Err(format!("its ports do not answer yet; it logged:\n{log}"))
            }
        }
    })
    .await;
    listening.map(|()| hub)
}

/// Restarts the hub on the same ports, retrying while the old process's ports are released.
async fn restart_hub(config: &Path, ports: Ports) -> Daemon {
    common::eventually("the hub to restart on the same ports", DEADLINE, || async {
        start_hub(config, ports).await.ok()
    })
    .await
}

/// A target: the first byte `E` makes it an echo; `H` makes it hash everything after it
/// and answer the hex digest once the client half-closes.
async fn start_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve_target(socket));
        }
    });
    addr
}

async fn serve_target(socket: TcpStream) {
    let (mut r, mut w) = socket.into_split();
    let mut mode = [0u8; 1];
    if r.read_exact(&mut mode).await.is_err() {
        return;
    }
    match &mode {
        b"E" => {
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        }
        b"H" => {
            let mut sum = Sha256Sum::start();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => sum.feed(&buf[..n]),
                    Err(_) => return,
                }
            }
            let digest = sum.finish();
            let _ = w.write_all(digest.as_bytes()).await;
            let _ = w.shutdown().await;
        }
        _ => {}
    }
}

/// A running SHA-256 (the `sha2` crate is optimised even in test builds; see Cargo.toml).
struct Sha256Sum(Sha256);

impl Sha256Sum {
    fn start() -> Self {
        Sha256Sum(Sha256::new())
    }

    fn feed(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// Block `index` of the gibibyte stream: a fixed random block stamped with its index, so a
/// lost, repeated or reordered block changes the digest.
fn block(base: &[u8], index: u64) -> Vec<u8> {
    let mut block = base.to_vec();
    block[..8].copy_from_slice(&index.to_le_bytes());
    block
}

/// Sends 1 GiB through `addr` to a hashing target; returns the target's digest and ours.
async fn transfer_gibibyte(addr: SocketAddr) -> (String, String) {
    let base = payload(7, BLOCK);
    let expected = {
        let base = base.clone();
        tokio::task::spawn_blocking(move || {
            let mut sum = Sha256Sum::start();
            for index in 0..GIB / BLOCK as u64 {
                sum.feed(&block(&base, index));
            }
            sum.finish()
        })
    };
    let socket = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = socket.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(b"H").await.unwrap();
        for index in 0..GIB / BLOCK as u64 {
            w.write_all(&block(&base, index)).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut answer = String::new();
    tokio::time::timeout(TRANSFER_DEADLINE, r.read_to_string(&mut answer))
        .await
        .expect("the transfer finishes in time")
        .unwrap();
    writer.await.unwrap();
    (answer, expected.await.unwrap())
}

/// A client echoing an endless deterministic stream through `addr` and checking every byte
/// that comes back. It ends when the connection does: `Ok` with the bytes verified, or `Err`
/// at the first byte that differs.
fn endless_client(
    addr: SocketAddr,
    seed: u64,
    verified: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Result<u64, String>> {
    tokio::spawn(async move {
        let pattern = payload(seed, PATTERN);
        let socket = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut r, mut w) = socket.into_split();
        let sent = pattern.clone();
        let writer = tokio::spawn(async move {
            if w.write_all(b"E").await.is_err() {
                return;
            }
            let mut offset = 0usize;
            // Ends when the connection fails; the reader's deadline bounds the whole client.
            loop {
                let chunk: Vec<u8> = (0..16 * 1024)
                    .map(|i| sent[(offset + i) % PATTERN])
                    .collect();
                if w.write_all(&chunk).await.is_err() {
                    return;
                }
                offset = (offset + chunk.len()) % PATTERN;
            }
        });
        let mut buf = vec![0u8; 64 * 1024];
        let mut at: u64 = 0;
        let outcome = tokio::time::timeout(DEADLINE * 3, async {
            loop {
                let n = match r.read(&mut buf).await {
                    Ok(0) | Err(_) => return Ok(at),
                    Ok(n) => n,
                };
                for (i, byte) in buf[..n].iter().enumerate() {
                    let offset = at + i as u64;
                    if *byte != pattern[(offset % PATTERN as u64) as usize] {
                        return Err(format!("byte {offset} differs"));
                    }
                }
                at += n as u64;
                verified.store(at, Ordering::Relaxed);
            }
        })
        .await
        .unwrap_or_else(|_| Err("the connection neither ended nor moved".to_owned()));
        writer.abort();
        outcome
    })
}

/// What the hub gave the tunnel daemon in one session.
#[derive(Debug)]
struct Live {
    tunnel_id: String,
    port: String,
    hostname: String,
}

/// Waits until the tunnel daemon is connected, in a session other than `previous`, and
/// returns what the hub gave its proxies; `Err` with the reason if the hub rejected one.
async fn tunnel_live(
    status_socket: &Path,
    tunnel: &Daemon,
    previous: Option<&str>,
) -> Result<Live, String> {
    live(&connected_anew(status_socket, tunnel, previous).await)
}

/// The tunnel daemon's status once it is connected in a session other than `previous`.
async fn connected_anew(
    status_socket: &Path,
    tunnel: &Daemon,
    previous: Option<&str>,
) -> TunnelStatus {
    let admin = AdminClient::unix(status_socket).with_timeout(Duration::from_secs(5));
    common::eventually("the tunnel to come back", DEADLINE, || async {
        match admin.get::<TunnelStatus>(model::STATUS).await {
            Ok(status)
                if status.state == "connected" && status.tunnel_id.as_deref() != previous =>
            {
                Ok(status)
            }
            seen => Err(format!("{seen:?}; it logged:\n{}", tunnel.log())),
        }
    })
    .await
}

/// What the hub gave the proxies of a connected tunnel; `Err` if it rejected one.
fn live(status: &TunnelStatus) -> Result<Live, String> {
    let proxy = |name: &str| status.proxies.iter().find(|p| p.name == name).cloned();
    let (Some(bulk), Some(site)) = (proxy("bulk"), proxy("site")) else {
        return Err(format!("proxies missing: {status:?}"));
    };
    match (bulk.public, site.public, status.tunnel_id.clone()) {
        (Some(port), Some(hostname), Some(tunnel_id)) => Ok(Live {
            tunnel_id,
            port,
            hostname,
        }),
        _ => Err(format!("a proxy was rejected: {status:?}")),
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    hub_config: PathBuf,
    status_socket: PathBuf,
    ports: Ports,
    hub: Daemon,
    tunnel: Daemon,
}

/// Starts both daemons on freshly picked ports, picking again if another program took one.
async fn setup() -> Setup {
    let target = start_target().await;
    let app = start_app("restarted").await;
    let mut failures = Vec::new();
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports().await;
        let (identity, _) = Identity::load_or_generate(&dir.path().join("state")).unwrap();
        let pin = identity.fingerprint().to_string();
        let hub_config = dir.path().join("hub.toml");
        std::fs::write(&hub_config, hub_toml(dir.path(), ports)).unwrap();
        let tunnel_config = dir.path().join("tunnel.toml");
        std::fs::write(
            &tunnel_config,
            tunnel_toml(dir.path(), ports, &pin, target, app.addr),
        )
        .unwrap();
        let hub = match start_hub(&hub_config, ports).await {
            Ok(hub) => hub,
            Err(log) => {
                failures.push(log);
                continue;
            }
        };
        let tunnel = Daemon::spawn("tunnel", &tunnel_config);
        let status_socket = dir.path().join("tunnel.sock");
        match tunnel_live(&status_socket, &tunnel, None).await {
            Ok(_) => {
                return Setup {
                    _dir: dir,
                    hub_config,
                    status_socket,
                    ports,
                    hub,
                    tunnel,
                };
            }
            Err(reason) => failures.push(reason),
        }
    }
    panic!("could not start on free ports:\n{}", failures.join("\n"));
}

#[tokio::test]
async fn clients_see_a_clean_end_across_hub_restarts_and_the_tunnel_returns_with_its_port() {
    let mut s = setup().await;
    let bulk = local(s.ports.tcp);
    let web = local(s.ports.http);
    let mut previous: Option<String> = None;
    for (round, signal) in ["TERM", "KILL"].into_iter().enumerate() {
        // A restarted hub is a new session: the same port and hostname again.
        let live = tunnel_live(&s.status_socket, &s.tunnel, previous.as_deref())
            .await
            .unwrap();
        assert_eq!(live.port, s.ports.tcp.to_string(), "round {round}");
        assert_eq!(live.hostname, HOSTNAME, "round {round}");
        previous = Some(live.tunnel_id);
        assert_eq!(
            http_get(web, HOSTNAME).await.map(|(status, _)| status),
            Some(200),
            "round {round}"
        );

        let progress: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::default()).collect();
        let clients: Vec<_> = progress
            .iter()
            .enumerate()
            .map(|(i, verified)| endless_client(bulk, (round * 10 + i) as u64, verified.clone()))
            .collect();
        common::eventually("the clients to get going", DEADLINE, || async {
            let verified: Vec<u64> = progress.iter().map(|p| p.load(Ordering::Relaxed)).collect();
            if verified.iter().all(|&v| v >= PROGRESS) {
                Ok(())
            } else {
                Err(format!(
                    "bytes verified {verified:?}; the hub logged:\n{}",
                    s.hub.log()
                ))
            }
        })
        .await;

        // Mid-transfer: the hub goes away.
        s.hub.signal(signal);
        let exit = s.hub.wait().await;
        if signal == "TERM" {
            assert_eq!(exit.code(), Some(0), "{}", s.hub.log());
        }
        for (i, client) in clients.into_iter().enumerate() {
            match client.await.unwrap() {
                Ok(verified) => assert!(verified >= PROGRESS, "round {round} client {i}"),
                Err(problem) => panic!("round {round} ({signal}) client {i}: {problem}"),
            }
        }

        s.hub = restart_hub(&s.hub_config, s.ports).await;
    }

    let live = tunnel_live(&s.status_socket, &s.tunnel, previous.as_deref())
        .await
        .unwrap();
    assert_eq!(live.port, s.ports.tcp.to_string());
    assert_eq!(live.hostname, HOSTNAME);
    assert_eq!(
        http_get(web, HOSTNAME).await.map(|(status, _)| status),
        Some(200)
    );
    let started = Instant::now();
    let (theirs, ours) = transfer_gibibyte(bulk).await;
    eprintln!("1 GiB through the restarted hub in {:?}", started.elapsed());
    assert_eq!(
        theirs, ours,
        "the target received other bytes than were sent"
    );

    s.tunnel.signal("TERM");
    assert_eq!(s.tunnel.wait().await.code(), Some(0), "{}", s.tunnel.log());
    s.hub.signal("TERM");
    s.hub.wait().await;
}

/// What the hub gave each proxy of a connected tunnel (port or hostname), by name.
fn publics(status: &TunnelStatus) -> Vec<(String, Option<String>)> {
    let mut all: Vec<_> = status
        .proxies
        .iter()
        .map(|p| (p.name.clone(), p.public.clone()))
        .collect();
    all.sort();
    all
}

#[tokio::test]
async fn a_port_and_a_hostname_the_hub_chose_come_back_after_it_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports().await;
    let (identity, _) = Identity::load_or_generate(&dir.path().join("state")).unwrap();
    let pin = identity.fingerprint().to_string();
    // The hub picks both: any free port for `roam`, a generated hostname for `drift`.
    let hub_config = dir.path().join("hub.toml");
    std::fs::write(
        &hub_config,
        hub_toml(dir.path(), ports).replace(&format!("ports = \"{}\"", ports.tcp), "ports = \"0\""),
    )
    .unwrap();
    let target = start_target().await;
    let app = start_app("drifting").await;
    let tunnel_config = dir.path().join("tunnel.toml");
    let status_socket = dir.path().join("tunnel.sock");
    std::fs::write(
        &tunnel_config,
        format!(
            "hub_address = \"127.0.0.1:{hub}\"\nhub_server_name = \"localhost\"\n\
             hub_cert_sha256 = \"{pin}\"\nkey = \"{KEY}\"\n\
             [reconnect]\ninitial = \"50ms\"\nmax = \"500ms\"\n\
             [admin]\nsocket = \"{socket}\"\n\
             [[proxies]]\nname = \"roam\"\nservice = \"tcp\"\ntarget = \"{target}\"\n\
             [[proxies]]\nname = \"drift\"\nservice = \"web\"\ntarget = \"{app}\"\n",
            hub = ports.hub,
            socket = status_socket.display(),
            app = app.addr,
        ),
    )
    .unwrap();
    let mut hub = restart_hub(&hub_config, ports).await;
    let mut tunnel = Daemon::spawn("tunnel", &tunnel_config);
    let before = connected_anew(&status_socket, &tunnel, None).await;
    let given = publics(&before);
    assert!(
        given.iter().all(|(_, public)| public.is_some()),
        "both proxies are live: {before:?}"
    );

    // A clean stop (systemctl restart): the hub keeps them for the key in state_dir.
    hub.signal("TERM");
    assert_eq!(hub.wait().await.code(), Some(0), "{}", hub.log());
    let held = dir.path().join("state").join("held.json");
    assert!(
        held.exists(),
        "the hub wrote {}: {}",
        held.display(),
        hub.log()
    );
    hub = restart_hub(&hub_config, ports).await;
    let after = connected_anew(&status_socket, &tunnel, before.tunnel_id.as_deref()).await;
    assert_eq!(
        publics(&after),
        given,
        "the same port and hostname after the restart; the hub logged:\n{}",
        hub.log()
    );
    assert!(
        hub.log().contains("holding 1 ports and 1 hostnames"),
        "{}",
        hub.log()
    );
    assert!(!held.exists(), "read once, then removed");

    tunnel.signal("TERM");
    tunnel.wait().await;
    hub.signal("TERM");
    hub.wait().await;
}
