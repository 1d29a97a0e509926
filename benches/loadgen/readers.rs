//! The slow-reader load of issue 26: an endless download target, and many clients that read it
//! a few bytes a second (through one proxy of a tunnel) while the latency probe of `load` runs
//! against another address (another proxy of the same tunnel).
//!
//! The load's own sockets are small on purpose: the endless target's send buffers are 16 KiB and
//! the readers' receive buffers 4 KiB. Filled to the kernel's defaults (megabytes each), a
//! thousand of them would take the kernel's TCP memory (`tcp_mem`) and stall every socket on
//! the machine, those of the daemons measured included. The readers connect from several
//! loopback addresses so that none of them meets the hub's per-address connection cap.

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

use crate::load::{self, Pace, Plan};

/// Send buffer of every socket the endless target accepts (the kernel doubles it).
const ENDLESS_SEND_BUFFER: u32 = 16 * 1024;
/// Receive buffer of every slow reader (the kernel doubles it).
const READER_RECV_BUFFER: u32 = 4096;
/// What a slow reader takes at a time, once every [`SIP_EVERY`].
const SIP: usize = 16;
const SIP_EVERY: Duration = Duration::from_secs(1);
/// Bytes the endless target sends one client at most (a bound on its loop, never reached).
const ENDLESS: u64 = 1 << 40;
/// What the endless target writes, again and again.
static BLOCK: [u8; 16 * 1024] = [b'z'; 16 * 1024];

/// Sends every client accepted at `listen` bytes as fast as it takes them, for `max_secs`.
pub fn endless(listen: SocketAddr, max_secs: u64) -> io::Result<()> {
    let send = |mut stream: TcpStream| async move {
        let mut sent = 0u64;
        while sent < ENDLESS && stream.write_all(&BLOCK).await.is_ok() {
            sent += BLOCK.len() as u64;
        }
    };
    load::runtime(1)?.block_on(load::serve(
        listen,
        Some(ENDLESS_SEND_BUFFER),
        max_secs,
        send,
    ))
}

/// Where the slow readers connect from: consecutive loopback addresses from `first_source`,
/// reader `i` from the `i % sources`-th, so that no address has more than `per_source`.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct Sources {
    /// First source address (each reader's socket is bound to one before it connects).
    #[arg(long, default_value = "127.0.0.2")]
    pub first_source: Ipv4Addr,
    /// How many consecutive source addresses the readers are spread over.
    #[arg(long, default_value_t = 8)]
    pub sources: u8,
    /// Most readers from one address: below the hub's cap of connections per client address
    /// (`[limits] connections_per_address`, 256 by default).
    #[arg(long, default_value_t = 200)]
    pub per_source: usize,
}

impl Sources {
    /// Fails unless `count` readers fit and every source address is in 127.0.0.0/8.
    fn check(&self, count: usize) -> io::Result<()> {
        let last = u32::from(self.first_source) + u32::from(self.sources.max(1)) - 1;
        let loopback = |ip: u32| Ipv4Addr::from(ip).is_loopback();
        if self.sources == 0 || !loopback(u32::from(self.first_source)) || !loopback(last) {
            return Err(io::Error::other(format!(
                "--first-source {} and --sources {} must name addresses in 127.0.0.0/8",
                self.first_source, self.sources
            )));
        }
        if count > usize::from(self.sources) * self.per_source {
            return Err(io::Error::other(format!(
                "{count} readers do not fit {} source addresses of at most {} each; \
                 raise --sources or --per-source",
                self.sources, self.per_source
            )));
        }
        Ok(())
    }

    fn of_reader(&self, index: usize) -> Ipv4Addr {
        let offset = (index % usize::from(self.sources)) as u32;
        Ipv4Addr::from(u32::from(self.first_source) + offset)
    }
}

/// Opens `plan.count` slow readers of the endless download at `addr` (each counted once it
/// has its first byte) and prints `established`, `failed` and `ramp_secs`; then, while they
/// read [`SIP`] bytes every second, runs the round trips of `pace` to the echo at `probe` and
/// prints them as `probe_p50_us` ... `probe_failed`, and `dropped` (readers whose connection
/// ended meanwhile). Holds the readers `plan.hold_secs` more, then exits.
pub fn slow_readers(
    addr: SocketAddr,
    probe: SocketAddr,
    sources: Sources,
    plan: Plan,
    pace: Pace,
) -> io::Result<()> {
    sources.check(plan.count)?;
    load::runtime(1)?.block_on(async move {
        let next = Arc::new(AtomicUsize::new(0));
        let readers = load::open_all(plan, move || {
            open_reader(
                addr,
                sources.of_reader(next.fetch_add(1, Ordering::Relaxed)),
            )
        })
        .await?;
        let dropped = Arc::new(AtomicU64::new(0));
        // Every reader sips until the process ends: the probe's longest run and the hold.
        let lifetime = pace.warmup_secs + pace.secs * 2.0 + 30.0 + plan.hold_secs as f64;
        let sipping = sip(readers, lifetime.ceil() as u64, dropped.clone());
        let trips = tokio::task::spawn_blocking(move || load::paced_round_trips(probe, pace))
            .await
            .map_err(io::Error::other)??;
        trips.print("probe_");
        println!("dropped {}", dropped.load(Ordering::Relaxed));
        io::stdout().flush()?;
        tokio::time::sleep(Duration::from_secs(plan.hold_secs)).await;
        drop(sipping);
        Ok(())
    })
}

/// A reader with a small receive buffer, connected from `source`, that has had its first byte.
async fn open_reader(addr: SocketAddr, source: Ipv4Addr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(READER_RECV_BUFFER)?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let mut stream = socket.connect(addr).await?;
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).await?;
    Ok(stream)
}

/// Keeps each reader reading [`SIP`] bytes every [`SIP_EVERY`], `sips` times at most, until
/// the set is dropped; counts in `dropped` those whose connection ends first. Their reads are
/// spread over the interval, not all at the same instant.
fn sip(readers: Vec<TcpStream>, sips: u64, dropped: Arc<AtomicU64>) -> JoinSet<()> {
    let mut sipping = JoinSet::new();
    let (start, count) = (tokio::time::Instant::now(), readers.len().max(1));
    for (index, mut reader) in readers.into_iter().enumerate() {
        let dropped = dropped.clone();
        let first = start + SIP_EVERY.mul_f64(index as f64 / count as f64);
        sipping.spawn(async move {
            let mut buf = [0u8; SIP];
            // The pace of a slow reader (the load under test), not a wait for anything.
            let mut pace = tokio::time::interval_at(first, SIP_EVERY);
            for _ in 0..sips {
                pace.tick().await;
                if !matches!(reader.read(&mut buf).await, Ok(n) if n > 0) {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        });
    }
    sipping
}
