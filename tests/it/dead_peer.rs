//! Dead peers, with the built daemons: a tunnel process that is stopped (SIGSTOP), a hub
//! process that is stopped, and a network that silently drops every packet between them (two
//! network namespaces and an nftables rule). Each side notices through its heartbeats, cleans
//! up what it held for the peer (the hub its public port and clients, the tunnel its target
//! connections), and the tunnel comes back once the peer does.
//!
//! Every hub here announces a 1 s heartbeat interval: a peer is dead after 3 s of silence. The
//! waits are generous (a silent peer without heartbeats would go unnoticed for hours); the
//! detection times are printed.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use common::netns::{
    Daemon, HUB_IP, Link, connected, counted_packets, hub_view, public_port, start_hub_and_tunnel,
};
use common::{DEADLINE, closed_by_peer, echoes, eventually, payload};
use tunnelize::admin::client::AdminClient;
use tunnelize::admin::model::{self, TunnelStatus};

const HEARTBEAT: &str = "heartbeat_interval = \"1s\"";

/// An echo target that counts the connections it has open.
struct Echo {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
}

impl Echo {
    fn serve(listener: TcpListener) -> Echo {
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let count = open.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let count = count.clone();
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                    count.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Echo { addr, open }
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// Descriptors the hub holds for a session with `clients` clients: the control connection,
/// two link connections, the public listener and the clients.
fn hub_files_per_session(clients: usize) -> usize {
    4 + clients
}

/// Descriptors the tunnel holds for it: control, two links, a target connection per client.
/// One may come back at once as the tunnel redials (a dial waiting on a stopped or cut-off
/// hub).
fn tunnel_files_per_session(clients: usize) -> usize {
    3 + clients
}

/// Waits until `daemon` holds at most `most` open files.
async fn closes_files(daemon: &Daemon, most: usize, what: &str) {
    eventually(what, DEADLINE, || async {
        (daemon.open_files() <= most).then_some(())
    })
    .await;
}

/// A new session of the tunnel (a tunnel id other than `old`), with its proxies live.
async fn reconnected(admin: &AdminClient, old: &str, limit: Duration) -> TunnelStatus {
    eventually("the tunnel to reconnect", limit, || async {
        let status: TunnelStatus = admin.get(model::STATUS).await.ok()?;
        let fresh = status.tunnel_id.as_deref().is_some_and(|id| id != old);
        (status.state == "connected" && fresh && status.proxies.iter().all(|p| p.state == "live"))
            .then_some(status)
    })
    .await
}

/// Waits until the hub lists exactly the tunnel `id` and no client.
async fn hub_lists_only(hub: &AdminClient, id: &str) {
    eventually("the hub to list only the new session", DEADLINE, || async {
        let (tunnels, clients) = hub_view(hub).await?;
        (tunnels.len() == 1 && tunnels[0].id == id && clients == 0).then_some(())
    })
    .await;
}

/// Hub and tunnel daemons on the loopback, one `echo` proxy, and one client connected through
/// it that has echoed once.
struct Loopback {
    hub: Daemon,
    tunnel: Daemon,
    hub_admin: AdminClient,
    tunnel_admin: AdminClient,
    echo: Echo,
    status: TunnelStatus,
    client: TcpStream,
    _dir: tempfile::TempDir,
}

async fn loopback() -> Loopback {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::serve(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let (hub, hub_files, tunnel, tunnel_files) = start_hub_and_tunnel(
        dir.path(),
        "127.0.0.1",
        HEARTBEAT,
        &[("echo", echo.addr)],
        None,
    )
    .await;
    let tunnel_admin = tunnel_files.admin();
    let status = connected(&tunnel_admin, DEADLINE).await;
    let public = SocketAddr::from(([127, 0, 0, 1], public_port(&status, "echo")));
    let mut client = common::connect(public).await;
    assert!(echoes(&mut client, &payload(1, 1000)).await);
    let hub_admin = hub_files.admin();
    let id = status.tunnel_id.clone().unwrap();
    eventually(
        "the hub to list the tunnel and its client",
        DEADLINE,
        || async {
            let (tunnels, clients) = hub_view(&hub_admin).await?;
            (tunnels.len() == 1 && tunnels[0].id == id && clients == 1).then_some(())
        },
    )
    .await;
    assert_eq!(echo.open(), 1);
    Loopback {
        hub,
        tunnel,
        hub_admin,
        tunnel_admin,
        echo,
        status,
        client,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_drops_a_stopped_tunnel_frees_its_port_and_takes_it_back_once_continued() {
    let mut t = loopback().await;
    let old_id = t.status.tunnel_id.clone().unwrap();
    let public = SocketAddr::from(([127, 0, 0, 1], public_port(&t.status, "echo")));

    let hub_fds = t.hub.open_files();
    t.tunnel.signal("STOP");
    let stopped = Instant::now();
    eventually("the hub to drop the stopped tunnel", DEADLINE, || async {
        let (tunnels, clients) = hub_view(&t.hub_admin).await?;
        (tunnels.is_empty() && clients == 0).then_some(())
    })
    .await;
    println!(
        "the hub dropped the stopped tunnel after {:?} (3 intervals: 3 s)",
        stopped.elapsed()
    );
    closed_by_peer(&mut t.client, "the stopped tunnel's client").await;
    closes_files(
        &t.hub,
        hub_fds - hub_files_per_session(1),
        "the hub to close the stopped tunnel's connections",
    )
    .await;
    assert!(
        TcpStream::connect(public).await.is_err(),
        "the stopped tunnel's public port still accepts"
    );

    t.tunnel.signal("CONT");
    let status = reconnected(&t.tunnel_admin, &old_id, DEADLINE).await;
    hub_lists_only(&t.hub_admin, status.tunnel_id.as_deref().unwrap()).await;
    eventually(
        "the tunnel to close its stale target connection",
        DEADLINE,
        || async { (t.echo.open() == 0).then_some(()) },
    )
    .await;
    let public = SocketAddr::from(([127, 0, 0, 1], public_port(&status, "echo")));
    let mut client = common::connect(public).await;
    assert!(echoes(&mut client, &payload(2, 5000)).await);
    assert!(!t.hub.exited() && !t.tunnel.exited());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_notices_a_stopped_hub_drops_its_targets_and_reconnects_once_continued() {
    let mut t = loopback().await;
    let old_id = t.status.tunnel_id.clone().unwrap();

    let tunnel_fds = t.tunnel.open_files();
    t.hub.signal("STOP");
    let stopped = Instant::now();
    let status: TunnelStatus = eventually("the tunnel to notice", DEADLINE, || async {
        let status: TunnelStatus = t.tunnel_admin.get(model::STATUS).await.ok()?;
        (status.state == "connecting").then_some(status)
    })
    .await;
    println!(
        "the tunnel noticed the stopped hub after {:?} (3 intervals: 3 s): {:?}",
        stopped.elapsed(),
        status.last_error
    );
    assert!(status.last_error.is_some(), "{status:?}");
    assert!(status.tunnel_id.is_none(), "{status:?}");
    assert!(
        status.proxies.iter().all(|p| p.state == "pending"),
        "{status:?}"
    );
    let metrics = t.tunnel_admin.get_text(model::METRICS).await.unwrap();
    assert!(
        metrics.contains("\ntunnelize_hub_connected 0\n"),
        "{metrics}"
    );
    eventually(
        "the tunnel to close its target connection",
        DEADLINE,
        || async { (t.echo.open() == 0).then_some(()) },
    )
    .await;
    closes_files(
        &t.tunnel,
        tunnel_fds - tunnel_files_per_session(1) + 1,
        "the tunnel to close the lost session's connections",
    )
    .await;

    t.hub.signal("CONT");
    let status = reconnected(&t.tunnel_admin, &old_id, DEADLINE * 2).await;
    // The hub forgot the old session: one tunnel, the new one, and the old client is closed.
    hub_lists_only(&t.hub_admin, status.tunnel_id.as_deref().unwrap()).await;
    closed_by_peer(&mut t.client, "the client of the old session").await;
    let public = SocketAddr::from(([127, 0, 0, 1], public_port(&status, "echo")));
    let mut client = common::connect(public).await;
    assert!(echoes(&mut client, &payload(3, 5000)).await);
    assert!(!t.hub.exited() && !t.tunnel.exited());
}

/// Writes to `socket` without reading until the connection fails; counts what it wrote.
async fn write_until_closed(mut socket: TcpStream, written: Arc<AtomicUsize>) {
    let chunk = payload(6, 64 * 1024);
    while socket.write_all(&chunk).await.is_ok() {
        written.fetch_add(chunk.len(), Ordering::SeqCst);
    }
}

/// Peeks at both sides at once: when the hub has dropped the tunnel (no tunnel, no client),
/// and when the tunnel has given up its session and closed its target connection.
async fn both_sides_notice(hub: &AdminClient, tunnel: &AdminClient, echo: &Echo) {
    let start = Instant::now();
    // When each side was first seen to have noticed; a side is not asked again after that.
    let noticed = std::cell::Cell::new((None, None));
    let (hub_at, tunnel_at) =
        eventually("both sides to notice the blackhole", DEADLINE, || async {
            let (mut hub_at, mut tunnel_at) = noticed.get();
            if hub_at.is_none()
                && let Some((tunnels, clients)) = hub_view(hub).await
                && tunnels.is_empty()
                && clients == 0
            {
                hub_at = Some(start.elapsed());
            }
            if tunnel_at.is_none()
                && let Ok(status) = tunnel.get::<TunnelStatus>(model::STATUS).await
                && status.state == "connecting"
                && echo.open() == 0
            {
                tunnel_at = Some(start.elapsed());
            }
            noticed.set((hub_at, tunnel_at));
            match (hub_at, tunnel_at) {
                (Some(hub_at), Some(tunnel_at)) => Ok((hub_at, tunnel_at)),
                _ => Err(format!(
                    "the hub noticed: {hub_at:?}, the tunnel noticed: {tunnel_at:?}"
                )),
            }
        })
        .await;
    println!("blackhole noticed by the hub after {hub_at:?}, by the tunnel after {tunnel_at:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, ip (iproute2) and nft (nftables): it makes network namespaces"]
async fn a_blackholed_network_is_noticed_on_both_sides_and_the_tunnel_returns_when_it_heals() {
    let dir = tempfile::tempdir().unwrap();
    let link = Link::new();
    let echo = Echo::serve(link.tunnel.listen("127.0.0.1:0".parse().unwrap()));
    let (mut hub, hub_files, mut tunnel, tunnel_files) = start_hub_and_tunnel(
        dir.path(),
        HUB_IP,
        HEARTBEAT,
        &[("echo", echo.addr)],
        Some(&link),
    )
    .await;
    let (hub_admin, tunnel_admin) = (hub_files.admin(), tunnel_files.admin());
    let status = connected(&tunnel_admin, DEADLINE).await;
    let old_id = status.tunnel_id.clone().unwrap();
    let public: SocketAddr = format!("{HUB_IP}:{}", public_port(&status, "echo"))
        .parse()
        .unwrap();
    let mut client = link.hub.connect_soon(public).await;
    assert!(echoes(&mut client, &payload(4, 1000)).await);
    // And one client in the middle of a big echo it does not read: its stream is stuck on
    // flow control on both sides when the network goes.
    let busy = link.hub.connect_soon(public).await;
    let written = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(write_until_closed(busy, written.clone()));
    eventually("the busy client to fill the path", DEADLINE, || async {
        (written.load(Ordering::SeqCst) >= 8 << 20).then_some(())
    })
    .await;
    assert_eq!(echo.open(), 2);

    let (hub_fds, tunnel_fds) = (hub.open_files(), tunnel.open_files());
    // Every packet over the veth is dropped, in both directions, without a word to either side.
    let veth = &link.hub_if;
    link.hub.nft(&format!(
        "table inet blackhole {{\n\
           chain input {{ type filter hook input priority 0; iifname \"{veth}\" counter drop; }}\n\
           chain output {{ type filter hook output priority 0; oifname \"{veth}\" counter drop; }}\n\
         }}\n"
    ));
    both_sides_notice(&hub_admin, &tunnel_admin, &echo).await;
    closed_by_peer(&mut client, "the client of the cut-off tunnel").await;
    tokio::time::timeout(DEADLINE, writer)
        .await
        .expect("the busy client is closed too")
        .unwrap();
    closes_files(
        &hub,
        hub_fds - hub_files_per_session(2),
        "the hub to close the cut-off tunnel's connections",
    )
    .await;
    closes_files(
        &tunnel,
        tunnel_fds - tunnel_files_per_session(2) + 1,
        "the tunnel to close the cut-off session's connections",
    )
    .await;
    let listing = link.hub.nft_cmd(&["list", "table", "inet", "blackhole"]);
    let dropped: u64 = counted_packets(&listing).iter().sum();
    assert!(dropped > 0, "the rules dropped nothing: {listing}");

    link.hub.nft_cmd(&["delete", "table", "inet", "blackhole"]);
    // The tunnel redials with backoff; a dial lost in the blackhole times out first.
    let status = reconnected(&tunnel_admin, &old_id, DEADLINE * 2).await;
    hub_lists_only(&hub_admin, status.tunnel_id.as_deref().unwrap()).await;
    let public: SocketAddr = format!("{HUB_IP}:{}", public_port(&status, "echo"))
        .parse()
        .unwrap();
    let mut client = link.hub.connect_soon(public).await;
    assert!(echoes(&mut client, &payload(5, 5000)).await);
    assert!(!hub.exited() && !tunnel.exited());
}
