//! Traffic tools: a TCP echo target, a fixed-rate latency client, a connect-rate client, an
//! idle-connection holder, a slow-HTTP-client holder, a connection churner (for the soak), a
//! readiness probe and a free-port finder. Their parts are shared with the other tools: the
//! accept loop (`serve`), the latency client's paced round trips, the opening of many
//! connections (`open_all`).
//!
//! Each prints `name value` lines on stdout for `run.sh` to record. Every loop ends by a count
//! or a deadline; the echo server ends after `max_secs` even if nobody stops it.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// Deadline for one connect + 1-byte echo in the connect-rate, hold and wait tools.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A round trip of the latency probe that takes longer than this has failed (issue 26's limit).
const ROUND_TRIP_LIMIT: Duration = Duration::from_secs(5);
/// Listen backlog of the echo and endless targets (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: u32 = 4096;
/// Read buffer per echo connection: small, so 10,000 idle clients cost the target little.
const ECHO_BUFFER: usize = 4096;

pub fn runtime(threads: usize) -> io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

/// Echoes every byte back on every connection accepted at `listen`, for `max_secs` at most.
pub fn echo(listen: SocketAddr, max_secs: u64) -> io::Result<()> {
    runtime(2)?.block_on(serve(listen, None, max_secs, echo_connection))
}

/// Listens at `listen` (each accepted socket with a send buffer of `send_buffer` bytes, if
/// given), prints `listening ADDR`, and runs `handle` on every connection for `max_secs`.
pub async fn serve<F, Fut>(
    listen: SocketAddr,
    send_buffer: Option<u32>,
    max_secs: u64,
    handle: F,
) -> io::Result<()>
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    // Accepted sockets inherit the listener's buffer sizes.
    if let Some(size) = send_buffer {
        socket.set_send_buffer_size(size)?;
    }
    socket.bind(listen)?;
    let listener = socket.listen(BACKLOG)?;
    println!("listening {}", listener.local_addr()?);
    io::stdout().flush()?;
    let deadline = tokio::time::sleep(Duration::from_secs(max_secs));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(handle(stream));
                }
                // Out of file descriptors or a reset before accept: back off briefly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

async fn echo_connection(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; ECHO_BUFFER];
    // Ends when the peer closes or the connection fails.
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

/// How a run of round trips is paced: `size`-byte requests on one connection at `rate` per
/// second, each waiting for its echo; the first `warmup_secs` are sent and not measured.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct Pace {
    /// Requests per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Seconds of requests sent first and not measured.
    #[arg(long, default_value_t = 0.5)]
    pub warmup_secs: f64,
    /// Request (and echoed response) size in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
}

/// The measured round trips of a paced run, sorted; a failed one is in `samples` as
/// [`ROUND_TRIP_LIMIT`] and counted in `failed`.
pub struct RoundTrips {
    samples: Vec<Duration>,
    failed: u64,
}

impl RoundTrips {
    /// Prints `p50_us`, `p90_us`, `p99_us`, `max_us`, `count` and `failed`, each name after
    /// `prefix`; the percentiles are `NA:` when nothing was measured.
    pub fn print(&self, prefix: &str) {
        for (name, q) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0)] {
            match percentile(&self.samples, q) {
                Some(d) => println!("{prefix}{name}_us {:.1}", d.as_secs_f64() * 1e6),
                None => println!("{prefix}{name}_us NA:no round trip measured"),
            }
        }
        println!("{prefix}count {}", self.samples.len());
        println!("{prefix}failed {}", self.failed);
    }
}

/// Sends `pace.size`-byte requests on one connection at `pace.rate` per second and waits for
/// each echo; prints the percentiles of the round-trip times measured after the warm-up.
pub fn latency(addr: SocketAddr, pace: Pace) -> io::Result<()> {
    paced_round_trips(addr, pace)?.print("");
    Ok(())
}

/// The round trips of `pace` to the echo at `addr`. One that fails or takes longer than
/// [`ROUND_TRIP_LIMIT`] counts as failed, and the next opens a new connection; only the first
/// connection failing is an error.
///
/// Blocking sockets and `thread::sleep` on purpose: tokio's timer has 1 ms granularity, far
/// coarser than the round trips measured here.
pub fn paced_round_trips(addr: SocketAddr, pace: Pace) -> io::Result<RoundTrips> {
    let Pace {
        rate,
        secs,
        warmup_secs,
        size,
    } = pace;
    if !(rate > 0.0 && secs > 0.0 && warmup_secs >= 0.0 && size > 0) {
        return Err(io::Error::other("rate, secs and size must be positive"));
    }
    let mut stream = Some(probe_connection(addr)?);
    let request = vec![b'x'; size];
    let mut response = vec![0u8; size];
    let interval = 1.0 / rate;
    let warmup = (warmup_secs * rate).ceil() as u64;
    let total = warmup + (secs * rate).ceil() as u64;
    let start = Instant::now();
    let give_up = start + Duration::from_secs_f64(warmup_secs + secs * 2.0 + 10.0);
    let mut trips = RoundTrips {
        samples: Vec::with_capacity((total - warmup) as usize),
        failed: 0,
    };
    for i in 0..total {
        let due = start + Duration::from_secs_f64(interval * i as f64);
        let now = Instant::now();
        if now > give_up {
            break;
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        let sent = Instant::now();
        let answered = match stream.as_mut() {
            Some(s) => s
                .write_all(&request)
                .and_then(|()| s.read_exact(&mut response)),
            None => Err(io::Error::other("no connection")),
        };
        let took = sent.elapsed();
        let ok = answered.is_ok() && took <= ROUND_TRIP_LIMIT;
        if !ok {
            // Whatever is still in flight on it would answer the next request.
            stream = probe_connection(addr).ok();
        }
        if i >= warmup {
            trips.samples.push(if ok { took } else { ROUND_TRIP_LIMIT });
            trips.failed += u64::from(!ok);
        }
    }
    trips.samples.sort_unstable();
    Ok(trips)
}

/// A connection for round trips: no Nagle delay, and no read or write waiting past the limit.
fn probe_connection(addr: SocketAddr) -> io::Result<std::net::TcpStream> {
    let stream = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(ROUND_TRIP_LIMIT))?;
    stream.set_write_timeout(Some(ROUND_TRIP_LIMIT))?;
    Ok(stream)
}

/// The `q` quantile (nearest rank) of sorted `samples`; `None` when there are none.
fn percentile(samples: &[Duration], q: f64) -> Option<Duration> {
    let rank = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len().max(1));
    samples.get(rank - 1).copied()
}

/// Connect, send one byte, read it back, close: as often as `concurrency` workers manage in
/// `secs` seconds (and at most `max_total` times). Prints the rate and the failures.
pub fn connect_rate(
    addr: SocketAddr,
    secs: f64,
    concurrency: usize,
    max_total: u64,
) -> io::Result<()> {
    runtime(2)?.block_on(async move {
        let started = Arc::new(AtomicU64::new(0));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let begin = Instant::now();
        let deadline = begin + Duration::from_secs_f64(secs);
        let mut workers = JoinSet::new();
        for _ in 0..concurrency.max(1) {
            let (started, ok, failed) = (started.clone(), ok.clone(), failed.clone());
            workers.spawn(async move {
                while Instant::now() < deadline
                    && started.fetch_add(1, Ordering::Relaxed) < max_total
                {
                    match tokio::time::timeout(CONNECT_TIMEOUT, open_verified(addr)).await {
                        Ok(Ok(_stream)) => ok.fetch_add(1, Ordering::Relaxed),
                        _ => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            });
        }
        while workers.join_next().await.is_some() {}
        let elapsed = begin.elapsed().as_secs_f64();
        let ok = ok.load(Ordering::Relaxed);
        println!("conns_per_s {:.1}", ok as f64 / elapsed);
        println!("ok {ok}");
        println!("failed {}", failed.load(Ordering::Relaxed));
        Ok(())
    })
}

/// Connects and checks with a 1-byte echo that the whole forwarded path is up.
async fn open_verified(addr: SocketAddr) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(b"h").await?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await?;
    Ok(stream)
}

/// Opens `plan.count` verified connections (`plan.concurrency` at a time, giving up after
/// `plan.ready_timeout_secs`), prints how many are up, then keeps them idle for
/// `plan.hold_secs`.
pub fn hold(addr: SocketAddr, plan: Plan) -> io::Result<()> {
    runtime(1)?.block_on(hold_opened(plan, move || open_verified(addr)))
}

/// What a slow client has sent when it stops: part of a head, or a head and part of a body.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Slowness {
    /// A request line and one header, no end of head (slowloris).
    Loris,
    /// A whole head announcing 1 MB, then 100 bytes of it.
    Body,
}

/// Opens `count` HTTP clients to `addr` for `host` that send part of a request (`slowness`)
/// and then nothing, prints how many are up, and holds them for `hold_secs`.
pub fn slow(addr: SocketAddr, host: String, slowness: Slowness, plan: Plan) -> io::Result<()> {
    let sent = match slowness {
        Slowness::Loris => format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-Slow: a\r\n"),
        Slowness::Body => format!(
            "POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000000\r\n\r\n{}",
            "x".repeat(100)
        ),
    };
    let sent: Arc<[u8]> = sent.into_bytes().into();
    runtime(1)?.block_on(hold_opened(plan, move || {
        let sent = sent.clone();
        async move {
            let mut stream = TcpStream::connect(addr).await?;
            stream.write_all(&sent).await?;
            Ok(stream)
        }
    }))
}

/// How many connections to open and hold, and for how long (the `hold`, `slow` and
/// `slow-readers` options).
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct Plan {
    #[arg(long)]
    pub count: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Give up opening connections after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub ready_timeout_secs: u64,
    /// Hold the connections this long, then exit.
    #[arg(long, default_value_t = 120)]
    pub hold_secs: u64,
}

/// Opens `plan.count` connections with `open`, prints `established`, `failed` and
/// `ramp_secs`, then holds what opened for `plan.hold_secs`.
async fn hold_opened<F, Fut>(plan: Plan, open: F) -> io::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = io::Result<TcpStream>> + Send + 'static,
{
    let held = open_all(plan, open).await?;
    tokio::time::sleep(Duration::from_secs(plan.hold_secs)).await;
    drop(held);
    Ok(())
}

/// Opens `plan.count` connections with `open`, `plan.concurrency` at a time, until
/// `plan.ready_timeout_secs` have passed; prints `established`, `failed` and `ramp_secs`, and
/// returns those that opened.
pub async fn open_all<F, Fut>(plan: Plan, open: F) -> io::Result<Vec<TcpStream>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = io::Result<TcpStream>> + Send + 'static,
{
    let begin = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(plan.ready_timeout_secs);
    let mut opening = JoinSet::new();
    let mut held = Vec::with_capacity(plan.count);
    let (mut launched, mut failed) = (0usize, 0usize);
    while launched < plan.count || !opening.is_empty() {
        while launched < plan.count && opening.len() < plan.concurrency.max(1) {
            opening.spawn(tokio::time::timeout_at(deadline, open()));
            launched += 1;
        }
        match opening.join_next().await {
            Some(Ok(Ok(Ok(stream)))) => held.push(stream),
            Some(_) => failed += 1,
            None => break,
        }
    }
    let ramp = begin.elapsed().as_secs_f64();
    println!("established {}", held.len());
    println!("failed {failed}");
    println!("ramp_secs {ramp:.2}");
    io::stdout().flush()?;
    Ok(held)
}

/// Returns once `addr` echoes a byte back; fails after `timeout_secs`.
pub fn wait(addr: SocketAddr, timeout_secs: u64) -> io::Result<()> {
    runtime(1)?.block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(timeout_secs);
        let mut last_error = None;
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(1), open_verified(addr)).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => last_error = Some(e.to_string()),
                Err(_) => last_error = Some("no echo within 1s".into()),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(io::Error::other(format!(
            "{addr} did not echo within {timeout_secs}s (last: {})",
            last_error.unwrap_or_default()
        )))
    })
}

/// Prints the first port of `count` consecutive ports that are free for TCP and UDP on
/// 127.0.0.1, below the kernel's ephemeral range (32768+), so outgoing connections never take
/// them later.
pub fn free_ports(count: u16) -> io::Result<()> {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let count = u32::from(count.max(1));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut state = nanos ^ std::process::id().wrapping_mul(2_654_435_761);
    for _ in 0..500 {
        // xorshift32: enough to spread the tries.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let base = LOW + state % (SPAN - count);
        if (base..base + count).all(|p| port_is_free(p as u16)) {
            println!("{base}");
            return Ok(());
        }
    }
    Err(io::Error::other(format!(
        "no {count} consecutive free ports found"
    )))
}

fn port_is_free(port: u16) -> bool {
    let addr = (Ipv4Addr::LOCALHOST, port);
    std::net::TcpListener::bind(addr).is_ok() && std::net::UdpSocket::bind(addr).is_ok()
}

/// How a churn client ends its connection, in turn.
#[derive(Clone, Copy)]
enum Ending {
    /// Echo, half-close, read to the peer's EOF.
    Clean,
    /// Echo, then drop the socket at once.
    Drop,
    /// Echo, then a reset (`SO_LINGER` 0) instead of a FIN.
    Reset,
    /// Send and close without reading the echo back.
    Unread,
    /// Connect, say nothing, close.
    Silent,
}

const ENDINGS: [Ending; 5] = [
    Ending::Clean,
    Ending::Drop,
    Ending::Reset,
    Ending::Unread,
    Ending::Silent,
];

/// Connection churn for the soak: starts `rate` short-lived clients per second for `secs`
/// (at most `max_open` at once; a start that would exceed it is skipped and counted). Each
/// sends 1..=2048 bytes, may hold for up to `max_hold_ms`, and ends in one of five ways in turn:
/// clean close, drop, reset, close without reading, or no data at all. Prints the counts.
pub fn churn(
    addr: SocketAddr,
    rate: f64,
    secs: f64,
    max_open: usize,
    max_hold_ms: u64,
) -> io::Result<()> {
    if !(rate > 0.0 && secs > 0.0) {
        return Err(io::Error::other("rate and secs must be positive"));
    }
    runtime(1)?.block_on(async move {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (mut started, mut skipped) = (0u64, 0u64);
        let mut clients = JoinSet::new();
        let begin = tokio::time::Instant::now();
        let total = (rate * secs).ceil() as u64;
        let interval = Duration::from_secs_f64(1.0 / rate);
        let mut state = 0x2545_F491_4F6C_DD1D_u64 ^ u64::from(std::process::id());
        for i in 0..total {
            tokio::time::sleep_until(begin + interval.mul_f64(i as f64)).await;
            while clients.try_join_next().is_some() {}
            if clients.len() >= max_open.max(1) {
                skipped += 1;
                continue;
            }
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let size = 1 + (state % 2048) as usize;
            let hold = Duration::from_millis((state >> 16) % (max_hold_ms + 1));
            let ending = ENDINGS[(i % ENDINGS.len() as u64) as usize];
            let (ok, failed) = (ok.clone(), failed.clone());
            clients.spawn(async move {
                let run = churn_client(addr, size, hold, ending);
                match tokio::time::timeout(CONNECT_TIMEOUT + hold, run).await {
                    Ok(Ok(())) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            });
            started += 1;
        }
        while clients.join_next().await.is_some() {}
        let elapsed = begin.elapsed().as_secs_f64();
        println!("started {started}");
        println!("ok {}", ok.load(Ordering::Relaxed));
        println!("failed {}", failed.load(Ordering::Relaxed));
        println!("skipped {skipped}");
        println!("conns_per_s {:.1}", started as f64 / elapsed);
        Ok(())
    })
}

async fn churn_client(
    addr: SocketAddr,
    size: usize,
    hold: Duration,
    ending: Ending,
) -> io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    if let Ending::Silent = ending {
        tokio::time::sleep(hold).await;
        return Ok(());
    }
    let data = vec![b'c'; size];
    stream.write_all(&data).await?;
    if let Ending::Unread = ending {
        return Ok(());
    }
    let mut back = vec![0u8; size];
    stream.read_exact(&mut back).await?;
    if back != data {
        return Err(io::Error::other("echo differs"));
    }
    tokio::time::sleep(hold).await;
    match ending {
        Ending::Clean => {
            stream.shutdown().await?;
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await?;
        }
        Ending::Reset => stream.set_zero_linger()?,
        Ending::Drop | Ending::Unread | Ending::Silent => {}
    }
    Ok(())
}
