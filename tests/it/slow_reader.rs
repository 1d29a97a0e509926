//! Backpressure with the built daemons: a client that reads a 1 GiB download in short bursts
//! with pauses, from a target that could send far faster, through a `tcp` proxy. Neither the
//! hub nor the tunnel may buffer what the reader has not taken: each one's resident memory
//! grows by less than 64 MiB over its idle level, and the target is held back (what it has
//! sent minus what the client has read stays bounded). The bytes arrive intact (SHA-256).

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use common::netns::{Daemon, Sha256Stream, connected, public_port, start_hub_and_tunnel};
use common::{DEADLINE, payload};

const MIB: u64 = 1024 * 1024;
const TOTAL: u64 = 1024 * MIB;
const CHUNK: usize = 256 * 1024;
/// Distinct blocks the download cycles through (each chunk also carries its index).
const BLOCKS: usize = 16;
/// The reader takes this much as fast as it can, then pauses.
const BURST: usize = 512 * 1024;
const PAUSE: Duration = Duration::from_millis(10);
/// Allowed growth of each daemon's resident memory.
const BOUND: u64 = 64 * MIB;
/// The whole download must finish within this (the reader alone needs about 25 s).
const TRANSFER_LIMIT: Duration = Duration::from_secs(240);

/// Chunk `index` of the download.
fn chunk(blocks: &[Vec<u8>], index: u64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&blocks[index as usize % BLOCKS]);
    out[..8].copy_from_slice(&index.to_le_bytes());
}

/// A target that sends each client as many bytes as the client asks for (a little-endian
/// u64) as fast as it may, counting what it has handed to the kernel. Each download's
/// SHA-256 comes out of `hashes` once it is sent.
fn serve_downloads(
    listener: TcpListener,
    sent: Arc<AtomicU64>,
) -> tokio::sync::mpsc::UnboundedReceiver<[u8; 32]> {
    let (hashes, out) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let blocks: Arc<Vec<Vec<u8>>> =
            Arc::new((0..BLOCKS as u64).map(|s| payload(s, CHUNK)).collect());
        while let Ok((mut socket, _)) = listener.accept().await {
            let (blocks, sent, hashes) = (blocks.clone(), sent.clone(), hashes.clone());
            tokio::spawn(async move {
                let len = socket.read_u64_le().await.unwrap();
                let mut hash = Sha256Stream::new();
                let mut buf = Vec::with_capacity(CHUNK);
                for index in 0..len / CHUNK as u64 {
                    chunk(&blocks, index, &mut buf);
                    hash.update(&buf);
                    socket.write_all(&buf).await.unwrap();
                    sent.fetch_add(CHUNK as u64, Ordering::Relaxed);
                }
                socket.shutdown().await.unwrap();
                let _ = hashes.send(hash.finish());
            });
        }
    });
    out
}

/// Peak growth over a baseline, from samples of the resident memory and the kernel's
/// high-water mark.
struct Growth {
    baseline: u64,
    peak: u64,
}

impl Growth {
    fn start(daemon: &Daemon) -> Growth {
        daemon.reset_peak();
        let baseline = daemon.rss();
        Growth {
            baseline,
            peak: baseline,
        }
    }

    fn sample(&mut self, daemon: &Daemon) {
        self.peak = self
            .peak
            .max(daemon.rss())
            .max(daemon.status_bytes("VmHWM"));
    }

    fn growth(&self) -> u64 {
        self.peak.saturating_sub(self.baseline)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_a_one_gib_download_keeps_hub_and_tunnel_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    let (hub, _, tunnel, tunnel_files) =
        start_hub_and_tunnel(dir.path(), "127.0.0.1", "", &[("download", target)], None).await;
    let status = connected(&tunnel_files.admin(), DEADLINE).await;
    let public = SocketAddr::from(([127, 0, 0, 1], public_port(&status, "download")));

    let sent = Arc::new(AtomicU64::new(0));
    let mut hashes = serve_downloads(listener, sent.clone());
    // A quick first download, so the baseline is a hub and tunnel that have carried traffic.
    let mut warm_up = common::connect(public).await;
    warm_up.write_u64_le(8 * MIB).await.unwrap();
    let mut first = Vec::new();
    tokio::time::timeout(DEADLINE, warm_up.read_to_end(&mut first))
        .await
        .expect("the warm-up download finished")
        .unwrap();
    assert_eq!(first.len() as u64, 8 * MIB);
    let mut check = Sha256Stream::new();
    check.update(&first);
    assert_eq!(hashes.recv().await, Some(check.finish()));
    drop(warm_up);
    sent.store(0, Ordering::Relaxed);
    let mut hub_growth = Growth::start(&hub);
    let mut tunnel_growth = Growth::start(&tunnel);

    let mut client = common::connect(public).await;
    client.write_u64_le(TOTAL).await.unwrap();
    let started = Instant::now();
    let mut hash = Sha256Stream::new();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut received, mut max_in_flight) = (0u64, 0u64);
    let mut last_sample = Instant::now();
    loop {
        assert!(
            started.elapsed() < TRANSFER_LIMIT,
            "the download did not finish in {TRANSFER_LIMIT:?}: {} MiB of 1024 read",
            received / MIB
        );
        let mut burst = 0;
        let mut done = false;
        while burst < BURST {
            let want = buf.len().min(BURST - burst);
            let n = tokio::time::timeout(DEADLINE, client.read(&mut buf[..want]))
                .await
                .expect("the download stalled")
                .expect("the download failed");
            if n == 0 {
                done = true;
                break;
            }
            hash.update(&buf[..n]);
            burst += n;
        }
        received += burst as u64;
        max_in_flight = max_in_flight.max(sent.load(Ordering::Relaxed).saturating_sub(received));
        if last_sample.elapsed() >= Duration::from_millis(50) {
            hub_growth.sample(&hub);
            tunnel_growth.sample(&tunnel);
            last_sample = Instant::now();
        }
        if done {
            break;
        }
        tokio::time::sleep(PAUSE).await;
    }
    let elapsed = started.elapsed();
    hub_growth.sample(&hub);
    tunnel_growth.sample(&tunnel);
    let sent_hash = tokio::time::timeout(DEADLINE, hashes.recv())
        .await
        .expect("the target finished")
        .unwrap();

    println!(
        "1 GiB read slowly in {elapsed:.1?} ({:.0} MiB/s); growth over idle: hub {:.1} MiB \
         (idle {:.1} MiB), tunnel {:.1} MiB (idle {:.1} MiB); at most {:.1} MiB sent but not \
         yet read",
        TOTAL as f64 / MIB as f64 / elapsed.as_secs_f64(),
        hub_growth.growth() as f64 / MIB as f64,
        hub_growth.baseline as f64 / MIB as f64,
        tunnel_growth.growth() as f64 / MIB as f64,
        tunnel_growth.baseline as f64 / MIB as f64,
        max_in_flight as f64 / MIB as f64,
    );
    assert_eq!(received, TOTAL, "every byte arrived");
    let got = hash.finish();
    assert_eq!(got, sent_hash, "the download arrived intact");
    assert!(
        hub_growth.growth() < BOUND,
        "the hub's memory grew by {} MiB",
        hub_growth.growth() / MIB
    );
    assert!(
        tunnel_growth.growth() < BOUND,
        "the tunnel's memory grew by {} MiB",
        tunnel_growth.growth() / MIB
    );
    // Without backpressure the target would be done long before the reader: it is held
    // back to what the windows and socket buffers between them hold.
    assert!(
        max_in_flight < 128 * MIB,
        "the target got {} MiB ahead of the reader",
        max_in_flight / MIB
    );
}
