//! Hostile input on every port of a hub while a 256 MiB transfer runs through one of its
//! tunnels: garbage before TLS, junk TLS records, wrong preambles and versions, huge and
//! truncated frames, hellos with bad keys and tokens, slow drips (closed at
//! `handshake_timeout`, `header_timeout` or the admin listener's deadline), garbage, oversized
//! and ambiguous HTTP requests, and huge admin requests. Every hostile connection must be
//! closed by the hub, the transfer must arrive whole (the same SHA-256 at both ends), a tunnel
//! and clients started during the attack must work, the process's memory must not grow by
//! anything like an announced length, and the hub's metrics must count every refused
//! handshake, bad login and malformed request.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use common::web::start_app;
use common::*;
use tunnelize::admin::client::AdminClient;
use tunnelize::admin::model;
use tunnelize::config::{AdminConfig, HubTrust, ServiceConfig};
use tunnelize::protocol::{
    Channel, Envelope, MAX_FRAME_LEN, PROTOCOL_VERSION, Preamble, TunnelMessage, encode_frame,
};
use tunnelize::secret::Secret;
use tunnelize::tls::{Fingerprint, client_config, server_name};

const MONITOR_KEY: &str = "monitoring-key-0123456789abcdef";
/// Bytes streamed through the tunnel while the hub is attacked.
const TRANSFER: usize = 256 * 1024 * 1024;
const CHUNK: usize = 1024 * 1024;
/// Upper bound for the whole transfer (a debug build on 2 shared cores, under attack).
const TRANSFER_DEADLINE: Duration = Duration::from_secs(300);
/// The hub's `handshake_timeout` and the http service's `header_timeout` in this test.
const SHORT_DEADLINE: Duration = Duration::from_secs(3);
/// How often a slow drip sends its next byte.
const DRIP_EVERY: Duration = Duration::from_millis(150);
/// Concurrent connections of each attack kind.
const COPIES: usize = 2;
/// Each attack kind runs at most this many rounds.
const MAX_ROUNDS: usize = 2_000;
/// Most the process's peak memory may grow while the transfer and the attack run (it holds the
/// hub, the tunnels, the targets and the attackers, and flow-control windows of 16 MiB).
const MEMORY_GROWTH: u64 = 128 * 1024 * 1024;
/// Most bytes kept from what a hostile connection is answered.
const KEEP: usize = 64 * 1024;

type Outcome = Result<(), String>;

// ---------------------------------------------------------------------------------------------
// Targets and the transfer

/// A target that hashes everything it receives and, at EOF, answers the SHA-256 and the byte
/// count (little endian), then closes.
async fn start_hashing_sink() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut hasher = Sha256::new();
                let mut total: u64 = 0;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    match socket.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            hasher.update(&buf[..n]);
                            total += n as u64;
                        }
                        Err(_) => return,
                    }
                }
                let mut answer = hasher.finalize().to_vec();
                answer.extend_from_slice(&total.to_le_bytes());
                let _ = socket.write_all(&answer).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    addr
}

/// Chunk `i` of the transfer: a fixed pseudo-random block with its index in the first bytes,
/// so no two chunks are alike and a lost, repeated or reordered chunk changes the hash.
fn chunk(base: &[u8], i: usize) -> Vec<u8> {
    let mut c = base.to_vec();
    c[..8].copy_from_slice(&(i as u64).to_le_bytes());
    c
}

/// Streams [`TRANSFER`] bytes to `addr`, pausing halfway until `resume` says so; returns the
/// SHA-256 and count the sender computed and the ones the target answered.
async fn transfer(
    addr: SocketAddr,
    halfway: Arc<tokio::sync::Notify>,
    resume: Arc<AtomicBool>,
) -> ([u8; 32], u64, Vec<u8>) {
    let socket = connect(addr).await;
    let (mut r, mut w) = socket.into_split();
    let writer = tokio::spawn(async move {
        let base = payload(0x5eed, CHUNK);
        let mut hasher = Sha256::new();
        let chunks = TRANSFER / CHUNK;
        for i in 0..chunks {
            if i == chunks / 2 {
                halfway.notify_one();
                eventually("the attacks to complete a round", DEADLINE * 2, || async {
                    resume.load(Ordering::Acquire).then_some(())
                })
                .await;
            }
            let c = chunk(&base, i);
            hasher.update(&c);
            w.write_all(&c).await.expect("the transfer's writes go on");
        }
        w.shutdown().await.unwrap();
        let sent: [u8; 32] = hasher.finalize().into();
        sent
    });
    let mut answer = Vec::new();
    tokio::time::timeout(TRANSFER_DEADLINE, r.read_to_end(&mut answer))
        .await
        .expect("the transfer finished in time")
        .expect("the transfer's connection stayed up");
    let sent = writer.await.unwrap();
    (sent, TRANSFER as u64, answer)
}

// ---------------------------------------------------------------------------------------------
// Connections and what "closed" means

async fn tls_to(
    addr: SocketAddr,
    fingerprint: Fingerprint,
) -> Result<TlsStream<TcpStream>, String> {
    let connector = TlsConnector::from(
        client_config(&HubTrust::Fingerprint(fingerprint.0)).map_err(|e| e.to_string())?,
    );
    let socket = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tokio::time::timeout(
        DEADLINE,
        connector.connect(server_name("localhost").unwrap(), socket),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_string())?
    .map_err(|e| format!("TLS handshake failed: {e}"))
}

async fn raw_to(addr: SocketAddr) -> Result<TcpStream, String> {
    TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))
}

/// Reads until the hub closes the connection (EOF or an error), at most [`DEADLINE`]; returns
/// the first [`KEEP`] bytes it answered.
async fn closed_by_hub<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, String> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(DEADLINE, async {
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            let room = KEEP.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
    })
    .await;
    match closed {
        Ok(()) => Ok(kept),
        Err(_) => Err(format!("still open after {DEADLINE:?}")),
    }
}

/// Writes `bytes` one at a time every `every` (starting over when they run out) until the hub
/// closes the connection; an error if it is still open after `limit`.
async fn drip_until_closed<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    every: Duration,
    limit: Duration,
) -> Outcome {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    for i in 0.. {
        if start.elapsed() > limit {
            return Err(format!("a slow drip was still open after {limit:?}"));
        }
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Ok(()),
                // An answer (an alert, an error page) may come before the close.
                Ok(_) => continue,
            },
            () = tokio::time::sleep(every) => {
                let byte = bytes[i % bytes.len()];
                if stream.write_all(&[byte]).await.is_err() || stream.flush().await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    unreachable!()
}

fn frame<M: serde::Serialize>(msg: &M) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    encode_frame(msg, &mut out).unwrap();
    out.to_vec()
}

fn control_preamble() -> [u8; 6] {
    Preamble::new(Channel::Control).encode()
}

fn link_preamble() -> [u8; 6] {
    Preamble::new(Channel::Link).encode()
}

/// Sends `bytes` after the TLS handshake and expects the hub to close; returns its answer.
async fn tls_send(addr: SocketAddr, fp: Fingerprint, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut tls = tls_to(addr, fp).await?;
    let _ = tls.write_all(bytes).await;
    let _ = tls.flush().await;
    closed_by_hub(&mut tls).await
}

/// Sends `bytes` on a plain TCP connection and expects the hub to close; returns its answer.
async fn raw_send(addr: SocketAddr, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut socket = raw_to(addr).await?;
    let _ = socket.write_all(bytes).await;
    closed_by_hub(&mut socket).await
}

/// TLS records no handshake can start with: a bogus content type, a length far over the
/// record limit, application data before any handshake, and a ClientHello announcing 16 MiB.
fn junk_records() -> Vec<Vec<u8>> {
    let mut bogus_type = vec![0x99, 0x03, 0x03, 0x00, 0x20];
    bogus_type.extend_from_slice(&payload(3, 32));
    let mut huge_record = vec![0x16, 0x03, 0x01, 0xff, 0xff];
    huge_record.extend_from_slice(&payload(4, 512));
    let mut early_data = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    early_data.extend_from_slice(&payload(5, 64));
    let mut huge_hello = vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0xff, 0xff, 0xff];
    huge_hello.extend_from_slice(&payload(6, 60));
    vec![bogus_type, huge_record, early_data, huge_hello]
}

/// The status code of an HTTP/1 answer, if the hub answered before closing.
fn status_of(answer: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(answer.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A closed connection whose answer, if any, is one of `codes`.
fn expect_status(what: &str, answer: &[u8], codes: &[u16]) -> Outcome {
    if answer.is_empty() {
        return Ok(());
    }
    match status_of(answer) {
        Some(code) if codes.contains(&code) => Ok(()),
        _ => Err(format!(
            "{what}: expected one of {codes:?} or a bare close, got {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        )),
    }
}

fn expect_silence(what: &str, answer: &[u8]) -> Outcome {
    if answer.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: the hub answered {} bytes", answer.len()))
    }
}

// ---------------------------------------------------------------------------------------------
// The attacks, one function each; each returns once the hub closed the connection.

#[derive(Clone, Copy)]
struct Ports {
    tunnel: SocketAddr,
    http: SocketAddr,
    admin: SocketAddr,
    fingerprint: Fingerprint,
    /// A live session, whose link token the attacks do not know.
    live_session: uuid::Uuid,
}

/// Which attacks the hub must count as rejected handshakes on its tunnel listener.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// Fails the TLS handshake, the preamble or the first message:
    /// `tunnelize_rejected_total{reason="handshake"}`.
    Handshake,
    /// A hello with a wrong key, or a wrong token for a live session:
    /// `tunnelize_auth_failures_total`.
    AuthFailure,
    /// An http request the hub (or hyper for it) refused as malformed:
    /// `tunnelize_rejected_total{reason="bad_request"}`.
    BadRequest,
    /// Counted elsewhere or not at all.
    No,
}

type AttackFn = fn(Ports, u64) -> std::pin::Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;

struct Attack {
    name: &'static str,
    counted: Counted,
    run: AttackFn,
}

macro_rules! attack {
    ($name:literal, $counted:expr, |$p:ident, $seed:ident| $body:expr) => {
        Attack {
            name: $name,
            counted: $counted,
            run: |$p, $seed| Box::pin(async move { $body }),
        }
    };
}

fn attacks() -> Vec<Attack> {
    use Counted::*;
    vec![
        // ---- the tunnel listener, before TLS
        attack!("tunnel: random bytes before TLS", Handshake, |p, seed| {
            let junk = payload(seed, 1 + (seed as usize * 131) % 4096);
            raw_send(p.tunnel, &junk).await.map(drop)
        }),
        attack!(
            "tunnel: an HTTP request instead of TLS",
            Handshake,
            |p, _s| {
                raw_send(p.tunnel, b"GET / HTTP/1.1\r\nHost: hub\r\n\r\n")
                    .await
                    .map(drop)
            }
        ),
        attack!("tunnel: junk TLS records", Handshake, |p, seed| {
            let records = junk_records();
            let record = &records[seed as usize % records.len()];
            raw_send(p.tunnel, record).await.map(drop)
        }),
        attack!("tunnel: slow drip before TLS", Handshake, |p, _s| {
            let mut socket = raw_to(p.tunnel).await?;
            drip_until_closed(
                &mut socket,
                &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01],
                DRIP_EVERY,
                DEADLINE,
            )
            .await
        }),
        // ---- the tunnel listener, after a good TLS handshake
        attack!("tunnel: TLS, then a wrong magic", Handshake, |p, _s| {
            let answer = tls_send(p.tunnel, p.fingerprint, b"SSH-2.0-OpenSSH_9.2\r\n").await?;
            expect_silence("wrong magic", &answer)
        }),
        attack!(
            "tunnel: TLS, then an unknown channel",
            Handshake,
            |p, _s| {
                let answer = tls_send(p.tunnel, p.fingerprint, b"TNLZ\x01\x07").await?;
                expect_silence("unknown channel", &answer)
            }
        ),
        attack!(
            "tunnel: TLS, then a wrong protocol version",
            Handshake,
            |p, _s| {
                let mut bytes = Preamble {
                    version: PROTOCOL_VERSION.wrapping_add(9),
                    channel: Channel::Control,
                }
                .encode()
                .to_vec();
                bytes.extend_from_slice(&frame(&Envelope {
                    id: 1,
                    msg: TunnelMessage::Ping,
                }));
                let mut tls = tls_to(p.tunnel, p.fingerprint).await?;
                let _ = tls.write_all(&bytes).await;
                let _ = tls.flush().await;
                // The hub says which version it speaks, that it refuses, and closes.
                let mut answer = [0u8; 6];
                let read = tokio::time::timeout(DEADLINE, tls.read_exact(&mut answer)).await;
                let refused = [b'T', b'N', b'L', b'Z', PROTOCOL_VERSION, 0];
                if !matches!(read, Ok(Ok(_))) || answer != refused {
                    return Err(format!("wrong version: {read:?}, answered {answer:?}"));
                }
                let rest = closed_by_hub(&mut tls).await?;
                expect_silence("after refusing a version", &rest)
            }
        ),
        attack!(
            "tunnel: TLS, then junk records inside the session",
            Handshake,
            |p, seed| {
                let mut tls = tls_to(p.tunnel, p.fingerprint).await?;
                // Bytes written under the TLS layer: records whose authentication must fail.
                let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x40];
                record.extend_from_slice(&payload(seed, 64));
                let _ = tls.get_mut().0.write_all(&record).await;
                closed_by_hub(&mut tls).await.map(drop)
            }
        ),
        attack!(
            "tunnel: TLS, then a slowly dripped preamble",
            Handshake,
            |p, _s| {
                let mut tls = tls_to(p.tunnel, p.fingerprint).await?;
                // Slow enough that the six bytes cannot all arrive before the deadline.
                let every = SHORT_DEADLINE / 4;
                drip_until_closed(&mut tls, &control_preamble(), every, DEADLINE).await
            }
        ),
        // ---- the tunnel listener, after a good preamble: frames
        attack!("tunnel: a u32::MAX length prefix", Handshake, |p, _s| {
            let mut bytes = control_preamble().to_vec();
            bytes.extend_from_slice(&u32::MAX.to_be_bytes());
            bytes.extend_from_slice(b"{\"id\":1,");
            let answer = tls_send(p.tunnel, p.fingerprint, &bytes).await?;
            expect_silence("u32::MAX length", &answer)
        }),
        attack!(
            "tunnel: a length prefix just over the frame limit",
            Handshake,
            |p, seed| {
                let mut bytes = if seed % 2 == 0 {
                    control_preamble().to_vec()
                } else {
                    link_preamble().to_vec()
                };
                bytes.extend_from_slice(&(MAX_FRAME_LEN as u32 + 1).to_be_bytes());
                // Even with the whole announced body following, the hub must not read it.
                bytes.extend_from_slice(&vec![b' '; 4096]);
                let answer = tls_send(p.tunnel, p.fingerprint, &bytes).await?;
                expect_silence("over-limit length", &answer)
            }
        ),
        attack!(
            "tunnel: a truncated frame, then close",
            Handshake,
            |p, _s| {
                let mut tls = tls_to(p.tunnel, p.fingerprint).await?;
                let mut bytes = control_preamble().to_vec();
                bytes.extend_from_slice(&100u32.to_be_bytes());
                bytes.extend_from_slice(b"{\"id\":1,\"msg\"");
                let _ = tls.write_all(&bytes).await;
                let _ = tls.shutdown().await;
                let answer = closed_by_hub(&mut tls).await?;
                expect_silence("truncated frame", &answer)
            }
        ),
        attack!(
            "tunnel: a truncated frame, then silence",
            Handshake,
            |p, _s| {
                let mut bytes = link_preamble().to_vec();
                bytes.extend_from_slice(&200u32.to_be_bytes());
                bytes.extend_from_slice(b"{\"id\":1");
                let answer = tls_send(p.tunnel, p.fingerprint, &bytes).await?;
                expect_silence("truncated frame", &answer)
            }
        ),
        attack!("tunnel: a frame that is not JSON", Handshake, |p, seed| {
            let body = payload(seed, 300);
            let mut bytes = control_preamble().to_vec();
            bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&body);
            let answer = tls_send(p.tunnel, p.fingerprint, &bytes).await?;
            expect_silence("garbage frame", &answer)
        }),
        attack!("tunnel: a slowly dripped link hello", Handshake, |p, _s| {
            let mut tls = tls_to(p.tunnel, p.fingerprint).await?;
            let _ = tls.write_all(&link_preamble()).await;
            let hello = frame(&Envelope {
                id: 1,
                msg: TunnelMessage::LinkHello {
                    tunnel_id: p.live_session,
                    token: Secret::random(32),
                },
            });
            drip_until_closed(&mut tls, &hello, DRIP_EVERY, DEADLINE).await
        }),
        // ---- the tunnel listener: valid-looking hellos with bad credentials
        attack!(
            "tunnel: a hello with a wrong key",
            AuthFailure,
            |p, seed| {
                let mut bytes = control_preamble().to_vec();
                bytes.extend_from_slice(&frame(&Envelope {
                    id: seed,
                    msg: TunnelMessage::Hello {
                        key: Some(Secret::new(format!("wrong-key-{seed:016}"))),
                        name: "intruder".into(),
                        proxies: vec![],
                    },
                }));
                let answer = tls_send(p.tunnel, p.fingerprint, &bytes).await?;
                refused(&answer, "auth_failed")
            }
        ),
        attack!(
            "tunnel: a link hello with a wrong token",
            AuthFailure,
            |p, _s| {
                let mut bytes = link_preamble().to_vec();
                bytes.extend_from_slice(&frame(&Envelope {
                    id: 2,
                    msg: TunnelMessage::LinkHello {
                        tunnel_id: p.live_session,
                        token: Secret::random(32),
                    },
                }));
                let answer = tls_send(p.tunnel, p.fingerprint, &bytes).await?;
                refused(&answer, "auth_failed")
            }
        ),
        attack!("tunnel: a link hello for no session", No, |p, _s| {
            let mut bytes = link_preamble().to_vec();
            bytes.extend_from_slice(&frame(&Envelope {
                id: 3,
                msg: TunnelMessage::LinkHello {
                    tunnel_id: uuid::Uuid::new_v4(),
                    token: Secret::random(32),
                },
            }));
            let answer = tls_send(p.tunnel, p.fingerprint, &bytes).await?;
            refused(&answer, "auth_failed")
        }),
        // ---- the http service
        attack!("http: a garbage request line", BadRequest, |p, _s| {
            let answer = raw_send(p.http, b"\x01\x02 GARBAGE\x7f \xff\r\n\r\n").await?;
            expect_status("garbage request line", &answer, &[400])
        }),
        attack!("http: random bytes", BadRequest, |p, seed| {
            let answer = raw_send(p.http, &payload(seed, 2048)).await?;
            expect_status("random bytes", &answer, &[400, 431])
        }),
        attack!("http: a TLS ClientHello", BadRequest, |p, seed| {
            let records = junk_records();
            let answer = raw_send(p.http, &records[seed as usize % records.len()]).await?;
            expect_status("TLS on http", &answer, &[400])
        }),
        attack!("http: an oversized header", BadRequest, |p, _s| {
            let mut request = b"GET / HTTP/1.1\r\nHost: app.test.local\r\nX-Big: ".to_vec();
            request.extend(std::iter::repeat_n(b'a', 100 * 1024));
            request.extend_from_slice(b"\r\n\r\n");
            let answer = raw_send(p.http, &request).await?;
            expect_status("oversized header", &answer, &[431])
        }),
        attack!("http: ten thousand headers", BadRequest, |p, _s| {
            let mut request = b"GET / HTTP/1.1\r\nHost: app.test.local\r\n".to_vec();
            for i in 0..10_000 {
                request.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
            }
            request.extend_from_slice(b"\r\n");
            let answer = raw_send(p.http, &request).await?;
            expect_status("many headers", &answer, &[431, 400])
        }),
        attack!("http: ambiguous framing", BadRequest, |p, _s| {
            let answer = raw_send(
                p.http,
                b"POST / HTTP/1.1\r\nHost: app.test.local\r\nContent-Length: 5\r\n\
                  Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            )
            .await?;
            expect_status("CL and TE", &answer, &[400])
        }),
        attack!("http: slowly dripped headers", No, |p, _s| {
            let mut socket = raw_to(p.http).await?;
            drip_until_closed(
                &mut socket,
                b"GET / HTTP/1.1\r\nHost: app.test.local\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa",
                DRIP_EVERY,
                DEADLINE,
            )
            .await
        }),
        // ---- the TLS admin listener
        attack!("admin: random bytes before TLS", No, |p, seed| {
            raw_send(p.admin, &payload(seed, 1500)).await.map(drop)
        }),
        attack!("admin: junk TLS records", No, |p, seed| {
            let records = junk_records();
            raw_send(p.admin, &records[seed as usize % records.len()])
                .await
                .map(drop)
        }),
        attack!("admin: slow drip before TLS", No, |p, _s| {
            let mut socket = raw_to(p.admin).await?;
            drip_until_closed(
                &mut socket,
                &[0x16, 0x03, 0x01, 0x02, 0x00],
                DRIP_EVERY,
                DEADLINE,
            )
            .await
        }),
        attack!("admin: TLS, then a garbage request", No, |p, seed| {
            let answer = tls_send(p.admin, p.fingerprint, &payload(seed, 700)).await?;
            expect_status("admin garbage", &answer, &[400, 431])
        }),
        attack!("admin: TLS, then a 1 MiB header", No, |p, _s| {
            let mut request = b"GET /v1/system HTTP/1.1\r\nHost: hub\r\nX-Big: ".to_vec();
            request.extend(std::iter::repeat_n(b'a', 1024 * 1024));
            request.extend_from_slice(b"\r\n\r\n");
            let answer = tls_send(p.admin, p.fingerprint, &request).await?;
            expect_status("admin huge header", &answer, &[431])
        }),
        attack!(
            "admin: TLS, then a huge body with a wrong key",
            No,
            |p, seed| {
                let mut request = format!(
                "POST /v1/reload HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer wrong-{seed}\r\n\
                 Content-Length: 1000000000000\r\n\r\n"
            )
            .into_bytes();
                request.extend(std::iter::repeat_n(b'x', 256 * 1024));
                let answer = tls_send(p.admin, p.fingerprint, &request).await?;
                expect_status("admin huge body", &answer, &[401, 413, 429])
            }
        ),
        attack!("admin: TLS, then slowly dripped headers", No, |p, _s| {
            let mut tls = tls_to(p.admin, p.fingerprint).await?;
            drip_until_closed(
                &mut tls,
                b"GET /v1/system HTTP/1.1\r\nHost: hub\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                DRIP_EVERY,
                DEADLINE,
            )
            .await
        }),
    ]
}

/// The hub answered a preamble and a refusal with `code`, then closed.
fn refused(answer: &[u8], code: &str) -> Outcome {
    let accepted = [b'T', b'N', b'L', b'Z', PROTOCOL_VERSION, 1];
    let Some(rest) = answer.strip_prefix(&accepted[..]) else {
        return Err(format!("expected an accepted preamble, got {answer:?}"));
    };
    let body = rest.get(4..).unwrap_or_default();
    let text = String::from_utf8_lossy(body);
    if text.contains("\"refused\"") && text.contains(code) {
        Ok(())
    } else {
        Err(format!("expected a `{code}` refusal, got {text:?}"))
    }
}

/// What one attack kind did: how many connections it made, and its first failure.
struct Tally {
    name: &'static str,
    counted: Counted,
    connections: u64,
    failure: Option<String>,
}

/// Runs `attack` with [`COPIES`] connections at a time, round after round, until `stop` is set
/// (and at least one round is done) or [`MAX_ROUNDS`] rounds ran. `rounds_done` counts the
/// kinds that have finished their first round.
async fn keep_attacking(
    attack: Attack,
    ports: Ports,
    stop: Arc<AtomicBool>,
    first_rounds_done: Arc<AtomicUsize>,
    seeds: Arc<AtomicU64>,
) -> Tally {
    let mut tally = Tally {
        name: attack.name,
        counted: attack.counted,
        connections: 0,
        failure: None,
    };
    for round in 0..MAX_ROUNDS {
        if round > 0 && stop.load(Ordering::Acquire) {
            break;
        }
        let runs: Vec<_> = (0..COPIES)
            .map(|_| {
                let seed = seeds.fetch_add(1, Ordering::Relaxed);
                tokio::spawn((attack.run)(ports, seed))
            })
            .collect();
        for run in runs {
            tally.connections += 1;
            let outcome = run.await.unwrap_or_else(|e| Err(format!("panicked: {e}")));
            if let Err(e) = outcome {
                tally.failure.get_or_insert(e);
            }
        }
        if round == 0 {
            first_rounds_done.fetch_add(1, Ordering::AcqRel);
        }
        if tally.failure.is_some() {
            break;
        }
        // A breath between rounds, so the attack shares the two cores with the transfer.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tally
}

// ---------------------------------------------------------------------------------------------

fn http_service() -> ServiceConfig {
    http_with("web", "test.local", |http| {
        http.header_timeout = SHORT_DEADLINE
    })
}

/// A request through the http service to the app behind `host`.
async fn http_get(addr: SocketAddr, host: &str) -> String {
    let mut socket = connect(addr).await;
    let request =
        format!("GET /during-attack HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, socket.read_to_end(&mut answer))
        .await
        .expect("an http answer in time")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// The value of an unlabelled or labelled sample in Prometheus text.
fn sample(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_on_every_port_leaves_a_256_mib_transfer_and_other_tunnels_intact() {
    let started = Instant::now();
    let mut config = hub_config(vec![tcp_any("tcp"), http_service()]);
    config.handshake_timeout = SHORT_DEADLINE;
    // Bad keys and tokens from 127.0.0.1 must not lock the test's own tunnels out.
    config.lockout_failures = 1_000_000;
    config.admin = AdminConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        key: Some(Secret::new(MONITOR_KEY).into()),
        ..AdminConfig::disabled()
    };
    let (hub, listeners, _view) = start_hub_full(config).await;
    let admin_addr = listeners.tls.expect("the TLS admin listener runs");
    let sink = start_hashing_sink().await;
    let echo = start_echo().await;
    let app = start_app("app").await;
    let mut web = proxy("web", "web", app.addr, None);
    web.hostname = Some("app".into());
    let tunnel = start_tunnel(tunnel_config(
        &hub,
        vec![
            proxy("sink", "tcp", sink, None),
            proxy("echo", "tcp", echo, None),
            web,
        ],
    ))
    .await;
    let ports = Ports {
        tunnel: hub.addr,
        http: hub.services["web"],
        admin: admin_addr,
        fingerprint: hub.fingerprint,
        live_session: tunnel.tunnel_id,
    };
    let admin = AdminClient::hub(
        &format!("https://127.0.0.1:{}", admin_addr.port()),
        &HubTrust::Fingerprint(hub.fingerprint.0),
        Some(Secret::new(MONITOR_KEY)),
    )
    .unwrap();
    let before = admin.get_text(model::METRICS).await.unwrap();
    let (rss_before, _) = memory();

    // The transfer starts, and pauses halfway until every attack has run at least once.
    let halfway = Arc::new(tokio::sync::Notify::new());
    let resume = Arc::new(AtomicBool::new(false));
    let transfer = tokio::spawn(transfer(tunnel.addr(0), halfway.clone(), resume.clone()));
    tokio::time::timeout(TRANSFER_DEADLINE, halfway.notified())
        .await
        .expect("the first half of the transfer in time");

    let stop = Arc::new(AtomicBool::new(false));
    let first_rounds = Arc::new(AtomicUsize::new(0));
    let seeds = Arc::new(AtomicU64::new(1));
    let kinds = attacks();
    let kind_count = kinds.len();
    let attackers: Vec<_> = kinds
        .into_iter()
        .map(|a| {
            tokio::spawn(keep_attacking(
                a,
                ports,
                stop.clone(),
                first_rounds.clone(),
                seeds.clone(),
            ))
        })
        .collect();

    // During the attack: a new tunnel connects and round-trips, and so do new clients of the
    // attacked tunnel, over tcp and http.
    let echo2 = start_echo().await;
    let second = start_tunnel(tunnel_config(
        &hub,
        vec![proxy("echo2", "tcp", echo2, None)],
    ))
    .await;
    let data = payload(77, 300_000);
    assert_eq!(round_trip(second.addr(0), &data).await, data);
    assert_eq!(round_trip(tunnel.addr(1), &data).await, data);
    let answer = http_get(ports.http, "app.test.local").await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("\"app\":\"app\""),
        "{answer}"
    );

    eventually("every attack to finish a round", DEADLINE, || async {
        (first_rounds.load(Ordering::Acquire) == kind_count).then_some(())
    })
    .await;
    resume.store(true, Ordering::Release);
    // Still during the attack (it goes on until the transfer ends).
    assert_eq!(round_trip(second.addr(0), b"again").await, b"again");

    let (sent, count, answer) = transfer.await.unwrap();
    stop.store(true, Ordering::Release);
    let mut tallies = Vec::new();
    for attacker in attackers {
        tallies.push(attacker.await.unwrap());
    }
    let failures: Vec<String> = tallies
        .iter()
        .filter_map(|t| t.failure.as_ref().map(|f| format!("{}: {f}", t.name)))
        .collect();
    assert!(
        failures.is_empty(),
        "hostile connections the hub did not handle:\n{}",
        failures.join("\n")
    );
    assert_eq!(answer.len(), 40, "the target answers its hash and count");
    assert_eq!(
        u64::from_le_bytes(answer[32..].try_into().unwrap()),
        count,
        "every byte arrived"
    );
    assert_eq!(answer[..32], sent, "the bytes arrived unchanged (SHA-256)");

    // After the attack: everything still works, and the hub counted what it refused.
    assert_eq!(round_trip(tunnel.addr(1), b"after").await, b"after");
    let total = |counted| {
        tallies
            .iter()
            .filter(|t| t.counted == counted)
            .map(|t| t.connections)
            .sum::<u64>()
    };
    // The hub counts a refusal as it closes the connection, so the last few may be counted a
    // moment after their client saw the close.
    let expected = [
        (
            r#"tunnelize_rejected_total{reason="handshake"}"#,
            Counted::Handshake,
        ),
        ("tunnelize_auth_failures_total", Counted::AuthFailure),
        (
            r#"tunnelize_rejected_total{reason="bad_request"}"#,
            Counted::BadRequest,
        ),
    ];
    let counts = eventually("the hub to count every refusal", DEADLINE, || async {
        let after = admin.get_text(model::METRICS).await.unwrap();
        let counts: Vec<(&str, u64, u64)> = expected
            .iter()
            .map(|(name, kind)| {
                (
                    *name,
                    sample(&after, name) - sample(&before, name),
                    total(*kind),
                )
            })
            .collect();
        if counts.iter().all(|(_, counted, made)| counted >= made) {
            Ok(counts)
        } else {
            Err(format!(
                "(metric, counted, hostile connections): {counts:?}"
            ))
        }
    })
    .await;
    // Announced lengths of 4 GiB and 1 TB, heads of 1 MiB: none of it may be allocated.
    let (_, peak) = memory();
    let growth = peak.saturating_sub(rss_before);
    assert!(
        growth < MEMORY_GROWTH,
        "peak memory grew by {} MiB during the attack",
        growth >> 20
    );
    let connections: u64 = tallies.iter().map(|t| t.connections).sum();
    eprintln!(
        "{connections} hostile connections of {kind_count} kinds during a {} MiB transfer; \
         counted (metric, counted, made): {counts:?}; peak memory +{} MiB; {:?} in all",
        TRANSFER / (1024 * 1024),
        growth >> 20,
        started.elapsed()
    );
    hub.stop.cancel();
}
