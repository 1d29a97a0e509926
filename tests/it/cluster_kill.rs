//! A tunnel connected to two hubs of one cluster (the built binary, `tunnelize hub`, sharing a
//! real Redis) survives `kill -9` of either hub: the hub that is left goes on serving the
//! tunnel's port, and a transfer started after the kill arrives intact (the target's SHA-256
//! of what it received matches the sender's), also once the dead hub's lease has run out.
//!
//! Hub A serves the tcp service on 127.0.0.2, hub B on 127.0.0.3, both the same port number P
//! (the key holds one claim for P in the cluster; each hub listens on its own address). Every
//! port is picked free at run time (bound to port 0, then released); when another program takes
//! one first, the whole setup starts over on new ones.
//!
//! Needs `redis-server` (Debian package redis-server), as `tests/it/cluster.rs` does.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use common::redis::Redis;
use common::{DEADLINE, TestTunnel, payload, proxy, spawn_with_stderr, start_tunnel};
use tunnelize::config::{AdminConfig, HubTrust, TunnelConfig};
use tunnelize::protocol::ProxyOutcome;
use tunnelize::secret::Secret;
use tunnelize::tls::{Fingerprint, Identity};

const ALICE: &str = "alice-key-0123456789abcdef";
/// The hubs' addresses: A's, then B's.
const IPS: [[u8; 4]; 2] = [[127, 0, 0, 2], [127, 0, 0, 3]];
const NAMES: [&str; 2] = ["hub-a", "hub-b"];
/// Bytes of each transfer before the kill (one through each hub).
const SMALL: usize = 4 << 20;
/// Bytes of the transfer started after the kill.
const LARGE: usize = 64 << 20;
/// How long one transfer may take in all (a debug build on a shared 2-core machine).
const TRANSFER_DEADLINE: Duration = Duration::from_secs(120);
/// A lease (1s), the claims' grace after it (2s) and renewals: far more than any wait here.
const SETTLES: Duration = Duration::from_secs(20);
/// Setups tried on freshly picked ports before giving up.
const ATTEMPTS: usize = 5;

/// A hub started from the built binary, killed when dropped, its stderr kept (the last lines)
/// for failures.
struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn spawn(config: &Path) -> Daemon {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let (child, _) = spawn_with_stderr(
            Command::new(env!("CARGO_BIN_EXE_tunnelize"))
                .arg("hub")
                .arg("-c")
                .arg(config)
                .env_remove("NOTIFY_SOCKET"),
            "the hub starts",
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

    /// `kill -9`, and waits (bounded) until it is gone.
    async fn kill_9(&mut self) {
        self.child
            .start_kill()
            .unwrap_or_else(|e| panic!("SIGKILL to the hub: {e}"));
        match tokio::time::timeout(DEADLINE, self.child.wait()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("waiting for the killed hub: {e}"),
            Err(_) => panic!("the hub outlived SIGKILL; it logged:\n{}", self.log()),
        }
    }
}

/// One hub of the cluster: its process, where tunnels reach it and its certificate.
struct Member {
    name: &'static str,
    daemon: Daemon,
    listen: SocketAddr,
    fingerprint: Fingerprint,
}

/// Ports picked for one setup: P, free on both addresses, and each hub's tunnel listener.
#[derive(Debug, Clone, Copy)]
struct Ports {
    public: u16,
    hubs: [u16; 2],
}

/// Ports nothing listens on now; all are held until every one is picked, so none repeats.
fn free_ports() -> Ports {
    let bind = |ip: [u8; 4], port: u16| std::net::TcpListener::bind(SocketAddr::from((ip, port)));
    let mut held = Vec::new();
    let mut public = None;
    for _ in 0..100 {
        let first = bind(IPS[0], 0).expect("a port on 127.0.0.2");
        let port = first.local_addr().expect("its address").port();
        if let Ok(second) = bind(IPS[1], port) {
            held.extend([first, second]);
            public = Some(port);
            break;
        }
    }
    let public = public.unwrap_or_else(|| panic!("no port free on both {IPS:?} in 100 tries"));
    let hubs = IPS.map(|ip| {
        let listener = bind(ip, 0).unwrap_or_else(|e| panic!("a port on {ip:?}: {e}"));
        let port = listener.local_addr().expect("its address").port();
        held.push(listener);
        port
    });
    Ports { public, hubs }
}

fn hub_toml(dir: &Path, index: usize, ports: Ports, redis: &str) -> String {
    let ip = std::net::Ipv4Addr::from(IPS[index]);
    let hub = ports.hubs[index];
    format!(
        "listen = \"{ip}:{hub}\"\nstate_dir = \"{state}\"\n\
         reconnect_grace = \"2s\"\nshutdown_timeout = \"1s\"\n\
         [admin]\nsocket = \"\"\n\
         [[keys]]\nname = \"alice\"\nkey = \"{ALICE}\"\n\
         [services.tcp]\nkind = \"tcp\"\nlisten = \"{ip}\"\nports = \"{public}\"\n\
         [cluster]\nredis = \"{redis}\"\nname = \"{name}\"\nadvertise = \"{ip}:{hub}\"\n\
         lease = \"1s\"\n",
        state = dir.join("state").display(),
        public = ports.public,
        name = NAMES[index],
    )
}

/// Whether Redis holds the membership of the hub `name`.
async fn is_member(redis: &::redis::Client, name: &str) -> Result<bool, String> {
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("Redis: {e}"))?;
    let exists: i64 = ::redis::cmd("EXISTS")
        .arg(format!("tunnelize:hub:{name}"))
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("Redis EXISTS: {e}"))?;
    Ok(exists == 1)
}

/// Who Redis says holds tcp port `port` in the cluster.
async fn port_owner(redis: &::redis::Client, port: u16) -> Result<Option<String>, String> {
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("Redis: {e}"))?;
    ::redis::cmd("GET")
        .arg(format!("tunnelize:claim:tcp:{port}"))
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("Redis GET: {e}"))
}

/// Starts hub `index` of the cluster in `redis` and waits until its tunnel listener answers
/// and it is a member of the cluster; `Err` with what it logged if it exited instead (a port
/// was taken).
async fn start_member(
    dir: &Path,
    index: usize,
    ports: Ports,
    redis: &Redis,
) -> Result<Member, String> {
    let name = NAMES[index];
    let dir = dir.join(name);
    let (identity, _) = Identity::load_or_generate(&dir.join("state"))
        .unwrap_or_else(|e| panic!("the certificate of {name}: {e}"));
    let config = dir.join("hub.toml");
    std::fs::write(&config, hub_toml(&dir, index, ports, &redis.url()))
        .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
    let listen = SocketAddr::from((IPS[index], ports.hubs[index]));
    let client = ::redis::Client::open(redis.url()).expect("a Redis client");
    let mut daemon = Daemon::spawn(&config);
    // Done waiting when the hub is up (`Ok`) or has exited (`Err`).
    let up = common::eventually(&format!("{name} to listen and join"), SETTLES, || {
        let exited = daemon.child.try_wait();
        let log = daemon.log();
        let client = client.clone();
        async move {
            if let Ok(Some(status)) = exited {
                return Ok(Err(format!("{name} exited ({status}):\n{log}")));
            }
            if let Err(e) = TcpStream::connect(listen).await {
                return Err(format!("{listen} does not answer ({e}); it logged:\n{log}"));
            }
            match is_member(&client, name).await {
                Ok(true) => Ok(Ok(())),
                seen => Err(format!("member: {seen:?}; it logged:\n{log}")),
            }
        }
    })
    .await;
    up.map(|()| Member {
        name,
        daemon,
        listen,
        fingerprint: identity.fingerprint(),
    })
}

/// A tunnel of key alice to `hub`, its one proxy asking for tcp port `port` to `target`.
fn tunnel_to(hub: &Member, port: u16, target: SocketAddr) -> TunnelConfig {
    TunnelConfig {
        hub_address: hub.listen.to_string(),
        hub_server_name: "localhost".into(),
        hub_trust: HubTrust::Fingerprint(hub.fingerprint.0),
        key: Some(Secret::new(ALICE)),
        links: 2,
        connect_timeout: Duration::from_secs(5),
        admin: AdminConfig::disabled(),
        reconnect: Default::default(),
        proxies: vec![proxy("bulk", "tcp", target, Some(port))],
    }
}

/// A target hashing everything it receives until the client half-closes, then answering the
/// hex SHA-256 of it.
async fn start_hash_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port for the target");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(hash_back(socket));
        }
    });
    addr
}

async fn hash_back(socket: TcpStream) {
    let (mut r, mut w) = socket.into_split();
    let mut sum = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    // Ends with the connection: the client's half-close, or an error.
    loop {
        match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => sum.update(&buf[..n]),
            Err(_) => return,
        }
    }
    let _ = w.write_all(hex::encode(sum.finalize()).as_bytes()).await;
    let _ = w.shutdown().await;
}

/// Sends `len` bytes of the payload `seed` through `addr` to the hash target, half-closes, and
/// returns the target's digest and the sender's.
async fn transfer(addr: SocketAddr, seed: u64, len: usize) -> (String, String) {
    let data = payload(seed, len);
    let ours = hex::encode(common::sha256(&data));
    let socket = match tokio::time::timeout(DEADLINE, TcpStream::connect(addr)).await {
        Ok(Ok(socket)) => socket,
        Ok(Err(e)) => panic!("connecting to {addr}: {e}"),
        Err(_) => panic!("connecting to {addr} took over {DEADLINE:?}"),
    };
    let (mut r, mut w) = socket.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await
    });
    let mut theirs = String::new();
    match tokio::time::timeout(TRANSFER_DEADLINE, r.read_to_string(&mut theirs)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("{len} bytes through {addr}: reading the digest: {e}"),
        Err(_) => panic!("{len} bytes through {addr}: no digest in {TRANSFER_DEADLINE:?}"),
    }
    match tokio::time::timeout(DEADLINE, writer).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => panic!("{len} bytes through {addr}: sending: {e}"),
        Ok(Err(e)) => panic!("{len} bytes through {addr}: the sender failed: {e}"),
        Err(_) => panic!("{len} bytes through {addr}: the sender did not finish"),
    }
    (theirs, ours)
}

/// Two hubs of one cluster and a tunnel of key alice to each, both holding tcp port `port`.
struct Cluster {
    redis: Redis,
    _dir: tempfile::TempDir,
    port: u16,
    hubs: [Member; 2],
    tunnels: [TestTunnel; 2],
}

impl Cluster {
    fn logs(&self) -> String {
        self.hubs
            .iter()
            .map(|hub| format!("--- {} logged:\n{}", hub.name, hub.daemon.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One try at a setup on freshly picked ports; `Err` with the reason when a hub could not
/// start or a proxy was refused (a port taken meanwhile, or a bug: the reasons end up in the
/// failure after the last try).
async fn try_setup(target: SocketAddr) -> Result<Cluster, String> {
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ports = free_ports();
    let a = start_member(dir.path(), 0, ports, &redis).await?;
    let b = start_member(dir.path(), 1, ports, &redis).await?;
    let hubs = [a, b];
    let mut tunnels = Vec::new();
    for hub in &hubs {
        let config = tunnel_to(hub, ports.public, target);
        let tunnel = tokio::time::timeout(DEADLINE, start_tunnel(config))
            .await
            .map_err(|_| format!("the tunnel to {} did not connect", hub.name))?;
        match &tunnel.outcomes[..] {
            [ProxyOutcome::Accepted { port: Some(p), .. }] if *p == ports.public => {}
            other => {
                return Err(format!(
                    "{} did not give the tunnel port {}: {other:?}; it logged:\n{}",
                    hub.name,
                    ports.public,
                    hub.daemon.log()
                ));
            }
        }
        tunnels.push(tunnel);
    }
    let Ok(tunnels) = <[TestTunnel; 2]>::try_from(tunnels) else {
        unreachable!("one tunnel per hub");
    };
    Ok(Cluster {
        redis,
        _dir: dir,
        port: ports.public,
        hubs,
        tunnels,
    })
}

async fn setup(target: SocketAddr) -> Cluster {
    let mut failures = Vec::new();
    for _ in 0..ATTEMPTS {
        match try_setup(target).await {
            Ok(cluster) => return cluster,
            Err(reason) => failures.push(reason),
        }
    }
    panic!(
        "no setup in {ATTEMPTS} tries on fresh ports:\n{}",
        failures.join("\n\n")
    );
}

/// Both hubs serve the tunnel's port; after `kill -9` of hub `killed` (0 for A, 1 for B) its
/// address refuses connections and the other hub carries a new transfer intact, both right
/// after the kill and once the dead hub's lease has run out.
async fn survives_kill_9_of(killed: usize) {
    let target = start_hash_target().await;
    let mut c = setup(target).await;
    let survivor = 1 - killed;
    let public = |index: usize| SocketAddr::from((IPS[index], c.port));
    let (killed_name, survivor_name) = (NAMES[killed], NAMES[survivor]);

    for (index, seed) in [(0, 1), (1, 2)] {
        let (theirs, ours) = transfer(public(index), seed, SMALL).await;
        assert_eq!(
            theirs,
            ours,
            "{SMALL} bytes through {} (port {} of {}) reached the target altered; logs:\n{}",
            public(index),
            c.port,
            NAMES[index],
            c.logs()
        );
    }

    c.hubs[killed].daemon.kill_9().await;
    match TcpStream::connect(public(killed)).await {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => panic!(
            "{} ({killed_name}, killed) should refuse connections, not {other:?}",
            public(killed)
        ),
    }

    let (theirs, ours) = transfer(public(survivor), 3, LARGE).await;
    assert_eq!(
        theirs,
        ours,
        "{LARGE} bytes through {} ({survivor_name}) after {killed_name} was killed reached the \
         target altered; logs:\n{}",
        public(survivor),
        c.logs()
    );

    // The tunnel to the killed hub saw it go; the killed hub's membership runs out (one lease)
    // while the survivor keeps its own and the key's claim on the port.
    let lost = &c.tunnels[killed].task;
    common::eventually(
        &format!("the tunnel to {killed_name} to end"),
        DEADLINE,
        || async { lost.is_finished().then_some(()) },
    )
    .await;
    let client = ::redis::Client::open(c.redis.url()).expect("a Redis client");
    common::eventually(
        &format!("{killed_name}'s lease to run out"),
        SETTLES,
        || {
            let client = client.clone();
            async move {
                match is_member(&client, killed_name).await {
                    Ok(false) => Ok(()),
                    seen => Err(format!("member: {seen:?}")),
                }
            }
        },
    )
    .await;
    assert_eq!(
        is_member(&client, survivor_name).await,
        Ok(true),
        "{survivor_name} is still a member; logs:\n{}",
        c.logs()
    );
    assert_eq!(
        port_owner(&client, c.port).await,
        Ok(Some("key:alice".to_owned())),
        "the key still holds port {} in the cluster; logs:\n{}",
        c.port,
        c.logs()
    );
    let (theirs, ours) = transfer(public(survivor), 4, SMALL).await;
    assert_eq!(
        theirs,
        ours,
        "{SMALL} bytes through {} ({survivor_name}) after {killed_name}'s lease ran out reached \
         the target altered; logs:\n{}",
        public(survivor),
        c.logs()
    );
    assert!(
        !c.tunnels[survivor].task.is_finished(),
        "the tunnel to {survivor_name} is still connected"
    );
    for tunnel in &c.tunnels {
        tunnel.stop.cancel();
    }
}

#[tokio::test]
#[ignore = "needs redis-server (Debian package redis-server)"]
async fn a_tunnel_on_two_hubs_survives_kill_9_of_hub_a_and_carries_a_new_transfer_through_hub_b() {
    survives_kill_9_of(0).await;
}

#[tokio::test]
#[ignore = "needs redis-server (Debian package redis-server)"]
async fn a_tunnel_on_two_hubs_survives_kill_9_of_hub_b_and_carries_a_new_transfer_through_hub_a() {
    survives_kill_9_of(1).await;
}
