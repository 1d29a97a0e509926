//! Accepting connections at the open-file limit.
//!
//! When the process is out of file descriptors, `accept` fails with `EMFILE` (or `ENFILE`) and
//! the connection stays in the kernel's queue: its client waits, unanswered, for as long as the
//! process stays at the limit, and so does every client behind it. [`Acceptor::accept`] handles
//! that for every accept loop of a hub (tunnel listener, tcp proxies, http/https services, the
//! TLS admin listener): it keeps one descriptor in reserve, and when accepting fails for lack of
//! descriptors it frees the reserve, takes every connection waiting on that listener and closes
//! it at once (the client sees the connection closed and may retry later), then takes the
//! reserve back and pauses briefly. The listener itself is never closed or replaced.
//!
//! Each hub has one [`Acceptor`] (in its shared state), and every accept of its loops happens
//! under the acceptor's lock, held only for the non-blocking system call, so that no other
//! accept loop of the hub can take the descriptor the reserve freed while a loop sheds. Two hubs
//! in one process (as in the tests) each keep their own reserve and never wait on each other.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

/// Pause after shedding before accepting again: descriptors free up as connections end.
const PAUSE: Duration = Duration::from_millis(50);
/// Most connections closed in one shedding (the kernel's queue is bounded anyway).
const MAX_SHED: usize = 4096;
/// Shedding is logged at most this often; every shed connection is counted.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Whether `e` says the process (or the system) has no file descriptor left.
pub fn out_of_files(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// The accept state of one hub: the reserve descriptor, the lock every accept takes, and how
/// much shedding is still to be logged.
pub struct Acceptor {
    /// The descriptor kept in reserve for shedding (`/dev/null`, opened read-only); held
    /// around every accept of the hub's loops and around shedding.
    reserve: Mutex<Option<File>>,
    /// Connections shed since the last log line.
    shed_unlogged: AtomicU64,
    /// When shedding was last logged, in milliseconds since `created`, plus one (0: never).
    logged_at: AtomicU64,
    created: Instant,
}

impl Default for Acceptor {
    fn default() -> Self {
        Acceptor {
            reserve: Mutex::new(File::open("/dev/null").ok()),
            shed_unlogged: AtomicU64::new(0),
            logged_at: AtomicU64::new(0),
            created: Instant::now(),
        }
    }
}

impl Acceptor {
    /// Accepts the next connection on `listener` (`what` names it in logs). At the open-file
    /// limit it closes the connections waiting on the listener instead of leaving them queued,
    /// and keeps accepting; other errors are returned to the caller.
    pub async fn accept(
        &self,
        listener: &TcpListener,
        what: &'static str,
    ) -> io::Result<(TcpStream, SocketAddr)> {
        loop {
            let accepted = std::future::poll_fn(|cx| {
                let mut reserve = self.reserve.lock();
                // It cannot be opened while the process is at the limit; tried at every accept.
                if reserve.is_none() {
                    *reserve = File::open("/dev/null").ok();
                }
                listener.poll_accept(cx)
            })
            .await;
            match accepted {
                Err(e) if out_of_files(&e) => {
                    let shed = self.shed_waiting(listener);
                    self.note_shed(what, shed, &e);
                    tokio::time::sleep(PAUSE).await;
                }
                other => return other,
            }
        }
    }

    /// Closes the connections waiting on `listener`, using the reserve descriptor to take
    /// each; returns how many it closed. The caller must poll `listener` again afterwards
    /// (this replaces its waker).
    pub fn shed_waiting(&self, listener: &TcpListener) -> usize {
        let mut reserve = self.reserve.lock();
        drop(reserve.take());
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
        *reserve = File::open("/dev/null").ok();
        shed
    }

    fn note_shed(&self, what: &'static str, shed: usize, cause: &io::Error) {
        let shed = shed as u64;
        let unlogged = self.shed_unlogged.fetch_add(shed, Ordering::Relaxed) + shed;
        let now = self.created.elapsed().as_millis() as u64 + 1;
        let last = self.logged_at.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= LOG_INTERVAL.as_millis() as u64;
        if due
            && self
                .logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.shed_unlogged.fetch_sub(unlogged, Ordering::Relaxed);
            warn!(
                listener = what,
                error = %cause,
                closed = unlogged,
                "out of file descriptors: waiting connections closed unserved (logged at most every 10s; raise the open-file limit)"
            );
        }
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
        let acceptor = Acceptor::default();
        let mut shed = 0;
        for _ in 0..100 {
            shed += acceptor.shed_waiting(&listener);
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
        assert_eq!(
            acceptor.shed_waiting(&listener),
            0,
            "nothing is left waiting"
        );
        // The listener still accepts.
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted =
            tokio::time::timeout(Duration::from_secs(5), acceptor.accept(&listener, "test"))
                .await
                .expect("accepted in time");
        assert!(accepted.is_ok());
        assert!(
            acceptor.reserve.lock().is_some(),
            "the reserve is held again"
        );
    }
}
