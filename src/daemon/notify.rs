//! Telling the service manager how the daemon is doing (systemd's `sd_notify` protocol through
//! the `sd-notify` crate): `READY=1` once every listener is bound, a one-line `STATUS=`,
//! `STOPPING=1`, and `WATCHDOG=1` while a liveness check passes, when the unit asks for a
//! watchdog. Outside systemd (`NOTIFY_SOCKET` unset) every call does nothing.

use std::future::Future;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "cannot notify the service manager");
    }
}

/// Startup is done: every listener is bound. `status` is a one-line summary.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A new one-line summary.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// The daemon is re-reading its configuration; [`ready`] follows when it is done.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        // systemd 253 and later want the time with RELOADING=1.
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The daemon is stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// When the unit asks for a watchdog (`WatchdogSec=`), sends `WATCHDOG=1` every half interval
/// for as long as `alive()` says the daemon works, until `shutdown`. A failing check sends
/// nothing, so the service manager restarts the daemon when the interval runs out.
pub fn spawn_watchdog<F, Fut>(alive: F, shutdown: CancellationToken)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            // The check itself must not outlive the interval.
            match tokio::time::timeout(period, alive()).await {
                Ok(true) => send(&[NotifyState::Watchdog]),
                Ok(false) => warn!("liveness check failed; not feeding the watchdog"),
                Err(_) => warn!("liveness check timed out; not feeding the watchdog"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    /// `NOTIFY_SOCKET` is process-wide, so every notify check runs in this one test. The reads
    /// block, so the watchdog task needs a worker thread of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_reach_a_notify_socket_standing_in_for_systemd() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // SAFETY: no other code of this test binary reads or writes these variables.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("NOTIFY_SOCKET", &path);
            std::env::set_var("WATCHDOG_USEC", "200000");
            std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
        }
        let next = || {
            let mut buf = [0u8; 512];
            let n = socket.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        let mut buf = [0u8; 512];
        ready("serving 2 services");
        assert_eq!(next(), "READY=1\nSTATUS=serving 2 services\n");
        status("3 tunnels");
        assert_eq!(next(), "STATUS=3 tunnels\n");

        // The watchdog is fed while the check passes, and not once it fails.
        let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let stop = CancellationToken::new();
        let check = healthy.clone();
        spawn_watchdog(
            move || {
                let ok = check.load(std::sync::atomic::Ordering::SeqCst);
                async move { ok }
            },
            stop.clone(),
        );
        assert_eq!(next(), "WATCHDOG=1\n");
        healthy.store(false, std::sync::atomic::Ordering::SeqCst);
        // Drain a ping that may have been in flight, then expect silence until stopping.
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut pings_after_failure = 0;
        while socket.recv(&mut buf).is_ok() {
            pings_after_failure += 1;
            assert!(pings_after_failure <= 1, "the watchdog kept being fed");
        }
        stop.cancel();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stopping();
        assert_eq!(next(), "STOPPING=1\nSTATUS=stopping\n");
        // SAFETY: as above.
        #[allow(unsafe_code)]
        unsafe {
            std::env::remove_var("NOTIFY_SOCKET");
            std::env::remove_var("WATCHDOG_USEC");
            std::env::remove_var("WATCHDOG_PID");
        }
    }
}
