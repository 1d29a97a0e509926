//! Accepting connections at the open-file limit.
//!
//! When the process is out of file descriptors, `accept` fails with `EMFILE` (or `ENFILE`) and
//! the connection stays in the kernel's queue: its client waits, unanswered, for as long as the
//! process stays at the limit, and so does every client behind it. [`accept`] handles that for
//! every accept loop of the hub (tunnel listener, tcp proxies, http/https services, the TLS
//! admin listener): it keeps one descriptor in reserve, and when accepting fails for lack of
//! descriptors it frees the reserve, takes every connection waiting on that listener and closes
//! it at once (the client sees the connection closed and may retry later), then takes the
//! reserve back and pauses briefly. The listener itself is never closed or replaced.
//!
//! Every accept of these loops happens under one lock, held only for the non-blocking system
//! call, so that no other accept loop can take the descriptor the reserve freed while a loop
//! sheds.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

/// Pause after shedding before accepting again: descriptors free up as connections end.
const PAUSE: Duration = Duration::from_millis(50);
/// Most connections closed in one shedding (the kernel's queue is bounded anyway).
const MAX_SHED: usize = 4096;
/// Shedding is logged at most this often; every shed connection is counted.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The descriptor kept in reserve for shedding (`/dev/null`, opened read-only).
static RESERVE: Mutex<Option<File>> = Mutex::new(None);
/// Connections shed since the last log line.
static SHED_UNLOGGED: AtomicU64 = AtomicU64::new(0);
/// When shedding was last logged, in milliseconds since [`epoch`], plus one (0: never).
static LOGGED_AT: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Whether `e` says the process (or the system) has no file descriptor left.
pub fn out_of_files(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Held around every accept of the hub's accept loops and around shedding.
static ACCEPTING: Mutex<()> = Mutex::new(());

fn lock(mutex: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens the reserve descriptor if it is not held (it cannot be while the process is at the
/// limit; it is tried again at the next accept).
fn ensure_reserve() {
    let mut reserve = RESERVE.lock().unwrap_or_else(|p| p.into_inner());
    if reserve.is_none() {
        *reserve = File::open("/dev/null").ok();
    }
}

/// Accepts the next connection on `listener` (`what` names it in logs). At the open-file
/// limit it closes the connections waiting on the listener instead of leaving them queued,
/// and keeps accepting; other errors are returned to the caller.
pub async fn accept(
    listener: &TcpListener,
    what: &'static str,
) -> io::Result<(TcpStream, SocketAddr)> {
    loop {
        let accepted = std::future::poll_fn(|cx| {
            let _accepting = lock(&ACCEPTING);
            ensure_reserve();
            listener.poll_accept(cx)
        })
        .await;
        match accepted {
            Err(e) if out_of_files(&e) => {
                let shed = shed_waiting(listener);
                note_shed(what, shed, &e);
                tokio::time::sleep(PAUSE).await;
            }
            other => return other,
        }
    }
}

/// Closes the connections waiting on `listener`, using the reserve descriptor to take each;
/// returns how many it closed. The caller must poll `listener` again afterwards (this replaces
/// its waker).
pub fn shed_waiting(listener: &TcpListener) -> usize {
    let _accepting = lock(&ACCEPTING);
    drop(RESERVE.lock().unwrap_or_else(|p| p.into_inner()).take());
    let mut cx = Context::from_waker(Waker::noop());
    let mut shed = 0;
    while shed < MAX_SHED {
        match listener.poll_accept(&mut cx) {
            Poll::Ready(Ok((socket, _))) => {
                drop(socket);
                shed += 1;
            }
            // Nothing waiting, or not even one descriptor free.
            Poll::Ready(Err(_)) | Poll::Pending => break,
        }
    }
    ensure_reserve();
    shed
}

fn note_shed(what: &'static str, shed: usize, cause: &io::Error) {
    let unlogged = SHED_UNLOGGED.fetch_add(shed as u64, Ordering::Relaxed) + shed as u64;
    let now = epoch().elapsed().as_millis() as u64 + 1;
    let last = LOGGED_AT.load(Ordering::Relaxed);
    let due = last == 0 || now.saturating_sub(last) >= LOG_INTERVAL.as_millis() as u64;
    if due
        && LOGGED_AT
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        SHED_UNLOGGED.fetch_sub(unlogged, Ordering::Relaxed);
        warn!(
            listener = what,
            error = %cause,
            closed = unlogged,
            "out of file descriptors: waiting connections closed unserved (logged at most every 10s; raise the open-file limit)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn emfile_and_enfile_are_out_of_files() {
        assert!(out_of_files(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(out_of_files(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!out_of_files(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
        assert!(!out_of_files(&io::Error::other("other")));
    }

    #[tokio::test]
    async fn shedding_closes_every_waiting_connection_and_keeps_the_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // The connections are in the accept queue once connect returned; shed until all three
        // are gone (the kernel may still be queueing the last one).
        let mut shed = 0;
        for _ in 0..100 {
            shed += shed_waiting(&listener);
            if shed == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(shed, 3);
        for mut client in clients {
            let mut buf = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
                .await
                .expect("a shed client sees its connection closed");
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        }
        assert_eq!(shed_waiting(&listener), 0, "nothing is left waiting");
        // The listener still accepts.
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = tokio::time::timeout(Duration::from_secs(5), accept(&listener, "test"))
            .await
            .expect("accepted in time");
        assert!(accepted.is_ok());
        assert!(
            RESERVE.lock().unwrap().is_some(),
            "the reserve is held again"
        );
    }
}
