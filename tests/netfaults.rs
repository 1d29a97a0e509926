//! A bad network between hub and tunnel: the built daemons in two network namespaces joined
//! by a veth pair, an nftables rule dropping 1% of the packets on it at random in each
//! direction, and a userspace proxy adding 50 ms to each direction (the kernels here have no
//! netem). A 256 MiB echo through a `tcp` proxy comes back intact (SHA-256).
//!
//! ```text
//!  hub netns                                   tunnel netns
//!  client ── hub ═══ veth, 1% loss ═══ delay proxy (50 ms each way) ── tunnel ── echo
//! ```

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use common::netns::{
    Daemon, HUB_IP, HubFiles, Link, Netns, Sha256Stream, TunnelFiles, connect_in, connected,
    counted_packets, public_port,
};
use common::{DEADLINE, payload};

const MIB: usize = 1024 * 1024;
const TOTAL: usize = 256 * MIB;
const CHUNK: usize = 256 * 1024;
const DELAY: Duration = Duration::from_millis(50);
/// Chunks a direction of the delay proxy holds at most (of up to 64 KiB each).
const HELD: usize = 64;
const TRANSFER_LIMIT: Duration = Duration::from_secs(300);

/// Copies one direction, holding each chunk for [`DELAY`] after it was read; order is kept
/// and at most [`HELD`] chunks wait at once (then the reader waits too).
async fn delayed(mut from: OwnedReadHalf, mut to: OwnedWriteHalf) {
    let (queue, mut held) = mpsc::channel::<(tokio::time::Instant, Bytes)>(HELD);
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due = tokio::time::Instant::now() + DELAY;
                    if queue
                        .send((due, Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = held.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // The reader hit end of file and everything it read is out: pass the half-close on.
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// The delay proxy: listens on the tunnel side's loopback, and dials `upstream` (the hub,
/// across the veth) from inside `ns` for each connection.
fn start_delay_proxy(ns: &Netns, upstream: SocketAddr) -> SocketAddr {
    let listener = ns.listen("127.0.0.1:0".parse().unwrap());
    let addr = listener.local_addr().unwrap();
    let name = ns.name.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let dial = tokio::task::spawn_blocking(move || connect_in(&name, upstream));
                let Ok(Ok(outbound)) = dial.await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (in_r, in_w) = inbound.into_split();
                let (out_r, out_w) = outbound.into_split();
                tokio::join!(delayed(in_r, out_w), delayed(out_r, in_w));
            });
        }
    });
    addr
}

/// An echo target, in the tunnel's namespace.
fn start_echo_in(ns: &Netns) -> SocketAddr {
    let listener: TcpListener = ns.listen("127.0.0.1:0".parse().unwrap());
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Sends [`TOTAL`] bytes and reads the echo at the same time; returns the SHA-256 of each.
async fn echo_transfer(socket: TcpStream) -> ([u8; 32], [u8; 32], usize) {
    let (mut r, mut w) = socket.into_split();
    let writer = tokio::spawn(async move {
        let blocks: Vec<Vec<u8>> = (0..16).map(|s| payload(100 + s, CHUNK)).collect();
        let mut hash = Sha256Stream::new();
        let mut buf = Vec::with_capacity(CHUNK);
        for index in 0..(TOTAL / CHUNK) as u64 {
            buf.clear();
            buf.extend_from_slice(&blocks[index as usize % blocks.len()]);
            buf[..8].copy_from_slice(&index.to_le_bytes());
            hash.update(&buf);
            w.write_all(&buf).await.unwrap();
        }
        w.shutdown().await.unwrap();
        hash.finish()
    });
    let mut hash = Sha256Stream::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0;
    loop {
        let n = tokio::time::timeout(DEADLINE, r.read(&mut buf))
            .await
            .expect("the echo stalled")
            .expect("the echo failed");
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        received += n;
    }
    (writer.await.unwrap(), hash.finish(), received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, ip (iproute2) and nft (nftables): it makes network namespaces"]
async fn a_256_mib_echo_is_intact_through_one_percent_loss_and_50_ms_of_delay() {
    let dir = tempfile::tempdir().unwrap();
    let link = Link::new();
    // One packet per segment on the veth, so the loss rule drops wire-sized packets rather
    // than 64 KiB offload bursts.
    link.hub
        .ip(&["link", "set", &link.hub_if, "gso_max_segs", "1"]);
    link.tunnel
        .ip(&["link", "set", &link.tunnel_if, "gso_max_segs", "1"]);

    let hub_files = HubFiles::write(dir.path(), HUB_IP, "", "");
    let mut hub = Daemon::start("hub", &hub_files.config, Some(&link.hub));
    let hub_addr = hub.hub_address().await;
    let proxy = start_delay_proxy(&link.tunnel, hub_addr);
    let echo = start_echo_in(&link.tunnel);
    let tunnel_files = TunnelFiles::write(
        dir.path(),
        proxy,
        &hub_files.fingerprint,
        &[("echo", echo)],
        "",
    );
    let mut tunnel = Daemon::start("tunnel", &tunnel_files.config, Some(&link.tunnel));
    let status = connected(&tunnel_files.admin(), DEADLINE).await;
    let public: SocketAddr = format!("{HUB_IP}:{}", public_port(&status, "echo"))
        .parse()
        .unwrap();

    // The delay proxy is in the path: a small echo crosses it twice each way.
    let mut probe = link.hub.connect_soon(public).await;
    let started = Instant::now();
    assert!(common::echoes(&mut probe, b"are you there").await);
    let rtt = started.elapsed();
    assert!(rtt >= 4 * DELAY, "a round trip took only {rtt:?}");
    drop(probe);

    let veth = &link.hub_if;
    link.hub.nft(&format!(
        "table inet lossy {{\n\
           chain input {{ type filter hook input priority 0;\n\
             iifname \"{veth}\" counter;\n\
             iifname \"{veth}\" numgen random mod 100 < 1 counter drop; }}\n\
           chain output {{ type filter hook output priority 0;\n\
             oifname \"{veth}\" counter;\n\
             oifname \"{veth}\" numgen random mod 100 < 1 counter drop; }}\n\
         }}\n"
    ));

    let client = link.hub.connect_soon(public).await;
    let started = Instant::now();
    let (sent, echoed, received) = tokio::time::timeout(TRANSFER_LIMIT, echo_transfer(client))
        .await
        .expect("the transfer finished in time");
    let elapsed = started.elapsed();

    let listing = link.hub.nft_cmd(&["list", "table", "inet", "lossy"]);
    let counts = counted_packets(&listing);
    let [seen_in, dropped_in, seen_out, dropped_out] = counts[..] else {
        panic!("expected four counters: {listing}");
    };
    println!(
        "256 MiB echoed in {elapsed:.1?} ({:.1} MiB/s each way; small round trip {rtt:?}); \
         veth packets dropped: {dropped_in} of {seen_in} toward the hub, {dropped_out} of \
         {seen_out} toward the tunnel",
        TOTAL as f64 / MIB as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(received, TOTAL, "every byte came back");
    assert_eq!(echoed, sent, "the echo is intact");
    for (what, dropped, seen) in [
        ("toward the hub", dropped_in, seen_in),
        ("toward the tunnel", dropped_out, seen_out),
    ] {
        let rate = dropped as f64 / seen.max(1) as f64;
        assert!(
            seen > 10_000 && (0.004..0.025).contains(&rate),
            "{what}: {dropped} of {seen} packets dropped, not about 1%: {listing}"
        );
    }
    assert!(!hub.exited() && !tunnel.exited());
}
