//! Counters the hub keeps for its Prometheus endpoint that the registry cannot derive: failed
//! logins, lockouts and the attempts they refused, refused connections by reason, and how long link streams take to set up. Plain
//! atomics, bounded in size (a fixed set of reasons, fixed histogram buckets).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Why the hub refused or dropped a connection or request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// A connection to the hub's listener failed its TLS handshake or preamble, or was too slow.
    Handshake,
    /// A tunnel asked for a proxy the hub refused (port taken, unknown service, ...).
    Proxy,
    /// A client arrived but its tunnel had no usable link connection.
    NoLink,
    /// The tunnel could not reach its target, or did not answer in time.
    TargetUnreachable,
    /// An http/https request named a host no tunnel serves.
    UnknownHost,
    /// An http/https request was malformed or ambiguous (400, 431, 413).
    BadRequest,
    /// An admin API request without a valid key.
    AdminUnauthorized,
    /// A `[limits]` value was reached.
    Limit,
}

impl Rejection {
    /// Every reason, in the order they are reported.
    pub const ALL: [Rejection; 8] = [
        Rejection::Handshake,
        Rejection::Proxy,
        Rejection::NoLink,
        Rejection::TargetUnreachable,
        Rejection::UnknownHost,
        Rejection::BadRequest,
        Rejection::AdminUnauthorized,
        Rejection::Limit,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::Handshake => "handshake",
            Rejection::Proxy => "proxy_rejected",
            Rejection::NoLink => "no_link",
            Rejection::TargetUnreachable => "target_unreachable",
            Rejection::UnknownHost => "unknown_host",
            Rejection::BadRequest => "bad_request",
            Rejection::AdminUnauthorized => "admin_unauthorized",
            Rejection::Limit => "limit",
        }
    }
}

/// Upper bounds (seconds) of the link setup histogram's buckets.
pub const LINK_SETUP_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// A Prometheus histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at or below each bucket's bound (not cumulative; summed when rendered).
    buckets: [AtomicU64; LINK_SETUP_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        if let Some(i) = LINK_SETUP_BUCKETS.iter().position(|bound| secs <= *bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket bound, then the total count and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut running = 0;
        let buckets = LINK_SETUP_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, n)| {
                running += n.load(Ordering::Relaxed);
                (*bound, running)
            })
            .collect();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, self.count.load(Ordering::Relaxed), sum)
    }
}

/// Refusals at a limit are logged at most this often (a client flood at a limit must not
/// flood the journal); the counter counts every one.
pub const LIMIT_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Lets a kind of log line through at most once per [`LIMIT_LOG_INTERVAL`], so a flood of
/// refusals cannot flood the journal.
#[derive(Debug, Default)]
pub struct LogGate {
    /// When a line was last let through, in milliseconds since `epoch`, plus one (0: never).
    logged_ms: AtomicU64,
    epoch: std::sync::OnceLock<std::time::Instant>,
}

impl LogGate {
    /// Whether a line should be logged now (the first one, then at most once per interval).
    pub fn due(&self) -> bool {
        let epoch = *self.epoch.get_or_init(std::time::Instant::now);
        let now = epoch.elapsed().as_millis() as u64 + 1;
        let last = self.logged_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= LIMIT_LOG_INTERVAL.as_millis() as u64;
        due && self
            .logged_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// The hub's own counters.
#[derive(Debug, Default)]
pub struct HubMetrics {
    limit_log: LogGate,
    handshake_log: LogGate,
    /// Failed tunnel logins and admin requests with a wrong key.
    pub auth_failures: AtomicU64,
    /// Addresses locked out after repeated failures.
    pub lockouts: AtomicU64,
    /// Logins and admin requests refused because their address is locked out.
    pub lockout_refusals: AtomicU64,
    lockout_log: LogGate,
    rejections: [AtomicU64; Rejection::ALL.len()],
    /// Time from a client's arrival to its tunnel's answer on the link stream.
    pub link_setup: Histogram,
}

impl HubMetrics {
    /// Counts one refusal.
    pub fn reject(&self, reason: Rejection) {
        self.rejections[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals so far, by reason.
    pub fn rejections(&self) -> Vec<(Rejection, u64)> {
        Rejection::ALL
            .iter()
            .map(|r| (*r, self.rejections[*r as usize].load(Ordering::Relaxed)))
            .collect()
    }

    /// Counts a refusal at a limit; true when it should also be logged (the first one, then at
    /// most once per [`LIMIT_LOG_INTERVAL`]).
    pub fn reject_at_limit(&self) -> bool {
        self.reject(Rejection::Limit);
        self.limit_log.due()
    }

    /// Counts a connection dropped before its handshake completed (bad preamble, no or bad
    /// first message); true when it should also be logged (at most once per
    /// [`LIMIT_LOG_INTERVAL`]: junk on the listener must not flood the journal).
    pub fn reject_handshake(&self) -> bool {
        self.reject(Rejection::Handshake);
        self.handshake_log.due()
    }

    /// Counts a login or admin request refused because its address is locked out; true when
    /// it should also be logged (at most once per [`LIMIT_LOG_INTERVAL`]: a tunnel that does
    /// not wait out its lockout must not flood the journal).
    pub fn refuse_locked_out(&self) -> bool {
        self.lockout_refusals.fetch_add(1, Ordering::Relaxed);
        self.lockout_log.due()
    }

    /// Counts a failed login.
    pub fn auth_failed(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_the_sum_is_in_seconds() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let (buckets, count, sum) = h.snapshot();
        assert_eq!(buckets[0], (0.0005, 1));
        assert_eq!(buckets[3], (0.005, 2));
        assert_eq!(
            buckets.last().copied(),
            Some((2.5, 2)),
            "10 s is only in +Inf"
        );
        assert_eq!(count, 3);
        assert!((sum - 10.0033).abs() < 1e-9);
    }

    #[test]
    fn limit_refusals_are_all_counted_but_logged_at_most_once_per_interval() {
        let m = HubMetrics::default();
        assert!(m.reject_at_limit(), "the first one is logged");
        assert!(!m.reject_at_limit());
        assert!(!m.reject_at_limit());
        assert!(m.rejections().contains(&(Rejection::Limit, 3)));
    }

    #[test]
    fn lockout_refusals_are_all_counted_but_logged_at_most_once_per_interval() {
        let m = HubMetrics::default();
        assert!(m.refuse_locked_out(), "the first one is logged");
        assert!(!m.refuse_locked_out());
        assert_eq!(m.lockout_refusals.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn rejections_are_counted_per_reason() {
        let m = HubMetrics::default();
        m.reject(Rejection::NoLink);
        m.reject(Rejection::NoLink);
        m.reject(Rejection::UnknownHost);
        let counts = m.rejections();
        assert!(counts.contains(&(Rejection::NoLink, 2)));
        assert!(counts.contains(&(Rejection::UnknownHost, 1)));
        assert!(counts.contains(&(Rejection::Proxy, 0)));
    }
}
