//! 10,000 concurrent clients through one tunnel, with the built daemons: each client sends its
//! own bytes and checks that its own echo comes back, all stay connected at once, and the
//! memory each idle client costs the hub and the tunnel is measured (target: 16 KiB or less
//! each). Once the clients leave, the hub counts no client and both daemons are back to about
//! the open files they had before; a second wave of 10,000 then fits in the memory the first
//! one left (nothing stays behind per client).
//!
//! A process may hold at most 20,000 open files here, so everything with one descriptor per
//! client is its own process: hub, tunnel, the echo target (a small python3 asyncio server)
//! and the clients (this test).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use common::netns::{Daemon, HubFiles, TunnelFiles, connected, hub_view, public_port};
use common::{DEADLINE, eventually, payload};
use tunnelize::admin::client::AdminClient;

const CLIENTS: usize = 10_000;
/// Clients connecting at once.
const CONCURRENCY: usize = 128;
/// Each client's own bytes, per round.
const MESSAGE: usize = 64;
/// Most resident memory an idle client may cost the hub or the tunnel (the target; measured
/// at about 4 KiB each).
const PER_CLIENT_BOUND: u64 = 16 * 1024;
/// Open files a daemon may keep above its idle level once the clients are gone.
const FD_SLACK: usize = 16;
/// How much more a second wave of clients may make a daemon's memory peak than the first
/// (the allocator reuses what the first wave freed, give or take a few MiB; a leak of a
/// KiB per client, under a third of what a client costs, would show).
const SECOND_WAVE_SLACK: u64 = (CLIENTS as u64) * 1024;
const KIB: f64 = 1024.0;

const ECHO_PY: &str = r#"
import asyncio, sys

async def echo(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except Exception:
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    # Stop when the test goes away (its end of our stdin closes).
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"#;

/// The echo target in a process of its own; killed when dropped.
struct PythonEcho {
    addr: SocketAddr,
    _child: tokio::process::Child,
}

async fn start_python_echo(dir: &std::path::Path) -> PythonEcho {
    let script = dir.join("echo.py");
    std::fs::write(&script, ECHO_PY).unwrap();
    let mut child = tokio::process::Command::new("python3")
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("this test needs python3 for its echo target");
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = tokio::time::timeout(DEADLINE, out.next_line())
        .await
        .expect("the echo target starts")
        .unwrap()
        .expect("the echo target prints its port")
        .trim()
        .parse()
        .unwrap();
    PythonEcho {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        _child: child,
    }
}

/// Fails clearly unless this machine lets the test hold its clients: enough open files for
/// this process (raised to the hard limit) and enough local ports.
fn require_room() {
    common::require_open_files((CLIENTS + 1_000) as u64);
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let ports: Vec<usize> = range
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let available = ports[1] - ports[0] + 1;
    assert!(
        available >= CLIENTS + 2_000,
        "this test needs {} local ports toward one address (the clients to the hub, the tunnel \
         to the target); net.ipv4.ip_local_port_range gives {available}",
        CLIENTS + 2_000
    );
}

/// Sends client `index`'s bytes for `round` and checks that exactly they come back.
async fn own_echo(socket: &mut TcpStream, index: usize, round: u64) -> Result<(), String> {
    let data = payload(round << 32 | index as u64, MESSAGE);
    socket
        .write_all(&data)
        .await
        .map_err(|e| format!("client {index}: write: {e}"))?;
    let mut back = vec![0u8; MESSAGE];
    tokio::time::timeout(DEADLINE, socket.read_exact(&mut back))
        .await
        .map_err(|_| format!("client {index}: no echo in round {round}"))?
        .map_err(|e| format!("client {index}: read in round {round}: {e}"))?;
    if back != data {
        return Err(format!(
            "client {index} got someone else's bytes in round {round}"
        ));
    }
    Ok(())
}

/// Opens [`CLIENTS`] clients to `public`, [`CONCURRENCY`] at a time, each checking its echo
/// for `round`.
async fn open_clients(public: SocketAddr, round: u64) -> Vec<TcpStream> {
    let gate = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut opening = JoinSet::new();
    for index in 0..CLIENTS {
        let permit = gate.clone().acquire_owned().await.unwrap();
        opening.spawn(async move {
            let _permit = permit;
            let mut socket = TcpStream::connect(public)
                .await
                .map_err(|e| format!("client {index}: connect: {e}"))?;
            own_echo(&mut socket, index, round).await?;
            Ok::<_, String>((index, socket))
        });
    }
    let mut clients: Vec<Option<TcpStream>> = (0..CLIENTS).map(|_| None).collect();
    while let Some(done) = opening.join_next().await {
        let (index, socket) = done.unwrap().unwrap_or_else(|e| panic!("{e}"));
        clients[index] = Some(socket);
    }
    clients.into_iter().map(Option::unwrap).collect()
}

/// One more round on every held client, [`CONCURRENCY`] at a time.
async fn echo_round(clients: Vec<TcpStream>, round: u64) -> Vec<TcpStream> {
    let gate = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut running = JoinSet::new();
    for (index, mut socket) in clients.into_iter().enumerate() {
        let permit = gate.clone().acquire_owned().await.unwrap();
        running.spawn(async move {
            let _permit = permit;
            own_echo(&mut socket, index, round).await?;
            Ok::<_, String>((index, socket))
        });
    }
    let mut back: Vec<Option<TcpStream>> = (0..CLIENTS).map(|_| None).collect();
    while let Some(done) = running.join_next().await {
        let (index, socket) = done.unwrap().unwrap_or_else(|e| panic!("{e}"));
        back[index] = Some(socket);
    }
    back.into_iter().map(Option::unwrap).collect()
}

struct Level {
    rss: u64,
    files: usize,
}

fn level(daemon: &Daemon) -> Level {
    Level {
        rss: daemon.rss(),
        files: daemon.open_files(),
    }
}

fn per_client(idle: &Level, loaded: &Level) -> u64 {
    loaded.rss.saturating_sub(idle.rss) / CLIENTS as u64
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / KIB / KIB
}

/// The hub and tunnel daemons, and what they look like with no client.
struct Pair {
    hub: Daemon,
    tunnel: Daemon,
    hub_admin: AdminClient,
    public: SocketAddr,
    hub_idle: Level,
    tunnel_idle: Level,
}

impl Pair {
    /// Opens a wave of [`CLIENTS`] clients; returns them once the hub counts them all, with
    /// both daemons' levels then.
    async fn wave(&self, round: u64) -> (Vec<TcpStream>, Level, Level) {
        let started = Instant::now();
        let clients = open_clients(self.public, round).await;
        let opened = started.elapsed();
        eventually("the hub to count every client", DEADLINE, || async {
            (hub_view(&self.hub_admin).await?.1 == CLIENTS).then_some(())
        })
        .await;
        let (hub, tunnel) = (level(&self.hub), level(&self.tunnel));
        println!(
            "wave {round}: {CLIENTS} clients opened and echoed in {opened:.1?}; RSS hub \
             {:.1} MiB, tunnel {:.1} MiB; open files hub {}, tunnel {}",
            mib(hub.rss),
            mib(tunnel.rss),
            hub.files,
            tunnel.files
        );
        (clients, hub, tunnel)
    }

    /// Waits for the hub to count no client and both daemons to be back to about their idle
    /// open files.
    async fn released(&self) {
        let started = Instant::now();
        eventually("the hub to count no client", DEADLINE * 3, || async {
            (hub_view(&self.hub_admin).await?.1 == 0).then_some(())
        })
        .await;
        eventually(
            "both daemons to close their sockets",
            DEADLINE * 3,
            || async {
                let (hub, tunnel) = (self.hub.open_files(), self.tunnel.open_files());
                (hub <= self.hub_idle.files + FD_SLACK
                    && tunnel <= self.tunnel_idle.files + FD_SLACK)
                    .then_some(())
            },
        )
        .await;
        let (hub, tunnel) = (level(&self.hub), level(&self.tunnel));
        println!(
            "released in {:.1?}: open files hub {} (idle {}), tunnel {} (idle {}); RSS hub \
             {:.1} MiB, tunnel {:.1} MiB",
            started.elapsed(),
            hub.files,
            self.hub_idle.files,
            tunnel.files,
            self.tunnel_idle.files,
            mib(hub.rss),
            mib(tunnel.rss),
        );
    }
}

async fn start_pair(dir: &std::path::Path, target: SocketAddr) -> Pair {
    let limits = format!(
        "[limits]\nclients_per_tunnel = {}\nclients_per_service = {}\n\
         connections_per_address = {}\n",
        2 * CLIENTS,
        2 * CLIENTS,
        2 * CLIENTS
    );
    let hub_files = HubFiles::write(dir, "127.0.0.1", "", &limits);
    let mut hub = Daemon::start("hub", &hub_files.config, None);
    let hub_addr = hub.hub_address().await;
    let tunnel_files = TunnelFiles::write(
        dir,
        hub_addr,
        &hub_files.fingerprint,
        &[("echo", target)],
        "",
    );
    let tunnel = Daemon::start("tunnel", &tunnel_files.config, None);
    let status = connected(&tunnel_files.admin(), DEADLINE).await;
    let public = SocketAddr::from(([127, 0, 0, 1], public_port(&status, "echo")));
    let hub_admin = hub_files.admin();

    // Idle levels: after one client has come and gone, so the links are up and used.
    let mut first = common::connect(public).await;
    own_echo(&mut first, CLIENTS, 0).await.unwrap();
    drop(first);
    eventually("the warm-up client to leave", DEADLINE, || async {
        (hub_view(&hub_admin).await?.1 == 0).then_some(())
    })
    .await;
    let (hub_idle, tunnel_idle) = (level(&hub), level(&tunnel));
    Pair {
        hub,
        tunnel,
        hub_admin,
        public,
        hub_idle,
        tunnel_idle,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_clients_each_get_their_own_echo_through_one_tunnel_and_are_released() {
    require_room();
    let dir = tempfile::tempdir().unwrap();
    let echo = start_python_echo(dir.path()).await;
    let mut pair = start_pair(dir.path(), echo.addr).await;

    let (clients, hub_loaded, tunnel_loaded) = pair.wave(0).await;
    let (hub_each, tunnel_each) = (
        per_client(&pair.hub_idle, &hub_loaded),
        per_client(&pair.tunnel_idle, &tunnel_loaded),
    );
    println!(
        "per idle client: hub {:.1} KiB, tunnel {:.1} KiB (RSS idle: hub {:.1} MiB, tunnel \
         {:.1} MiB)",
        hub_each as f64 / KIB,
        tunnel_each as f64 / KIB,
        mib(pair.hub_idle.rss),
        mib(pair.tunnel_idle.rss),
    );
    assert!(
        tunnel_loaded.files >= pair.tunnel_idle.files + CLIENTS,
        "the tunnel does not hold a target connection per client"
    );
    assert!(
        hub_each < PER_CLIENT_BOUND && tunnel_each < PER_CLIENT_BOUND,
        "an idle client costs the hub {hub_each} B and the tunnel {tunnel_each} B of memory"
    );

    // Still all connected, still each its own.
    let started = Instant::now();
    let clients = echo_round(clients, 1).await;
    println!("another round on every client in {:.1?}", started.elapsed());
    assert_eq!(hub_view(&pair.hub_admin).await.unwrap().1, CLIENTS);
    drop(clients);
    pair.released().await;

    // A second wave fits in what the first one left: nothing stayed behind per client.
    let (clients, hub_again, tunnel_again) = pair.wave(2).await;
    drop(clients);
    pair.released().await;
    for (what, first, second) in [
        ("hub", &hub_loaded, &hub_again),
        ("tunnel", &tunnel_loaded, &tunnel_again),
    ] {
        assert!(
            second.rss <= first.rss + SECOND_WAVE_SLACK,
            "the {what} needed {:.1} MiB for the second wave of clients, {:.1} MiB for the first",
            mib(second.rss),
            mib(first.rss)
        );
    }

    // The session survived it all.
    let mut last = common::connect(pair.public).await;
    own_echo(&mut last, CLIENTS + 1, 3).await.unwrap();
    assert!(!pair.hub.exited() && !pair.tunnel.exited());
}
