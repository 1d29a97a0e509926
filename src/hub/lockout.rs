//! The login lockout table: failed logins per source address (tunnel control and link
//! connections, the TLS admin listener). `max_failures` failures in a row lock the address out
//! for `duration`; while locked, even the right key is refused, with the time to retry
//! ([`refusal`]). A success clears the address's count. Other addresses are unaffected.
//!
//! The table is bounded: when it is full the entry seen longest ago is evicted, so a flood of
//! addresses costs at most `capacity` entries. One `parking_lot::Mutex`, held for a map
//! operation (an eviction scans the map, which only happens when it is full).

use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use crate::protocol::session::Refusal;

/// Entries the table holds at most.
pub const DEFAULT_CAPACITY: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    locked_until: Option<Instant>,
    last_seen: Instant,
}

/// One address in the table, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockoutEntry {
    /// The source address.
    pub address: IpAddr,
    /// Failures in a row so far (reset by a success or when a lockout ends).
    pub failures: u32,
    /// When the lockout ends, if the address is locked out now.
    pub locked_until: Option<SystemTime>,
}

/// Failed logins per source address.
#[derive(Debug)]
pub struct LockoutTable {
    max_failures: u32,
    duration: Duration,
    capacity: usize,
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

impl LockoutTable {
    /// A table locking an address out for `duration` after `max_failures` failures.
    pub fn new(max_failures: u32, duration: Duration, capacity: usize) -> Self {
        LockoutTable {
            max_failures: max_failures.max(1),
            duration,
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, Entry>> {
        self.entries.lock()
    }

    /// `Err(time left)` while `ip` is locked out.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut entries = self.lock();
        match entries.get(&ip).and_then(|e| e.locked_until) {
            Some(until) if until > now => Err(until - now),
            Some(_) => {
                // The lockout is over: the address starts afresh.
                entries.remove(&ip);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Records a failed login from `ip`; returns `Some(duration)` when this failure locked it.
    pub fn fail(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let mut entries = self.lock();
        let entry = self.entry(&mut entries, ip, now);
        if entry.locked_until.is_some_and(|until| until > now) {
            return None;
        }
        entry.locked_until = None;
        entry.failures += 1;
        if entry.failures >= self.max_failures {
            entry.locked_until = Some(now + self.duration);
            return Some(self.duration);
        }
        None
    }

    /// Locks `ip` out for `duration` from now, unless it is locked out longer already: a
    /// lockout another hub of the cluster set (`hub::cluster`).
    pub fn lock_for(&self, ip: IpAddr, duration: Duration) {
        let now = Instant::now();
        let mut entries = self.lock();
        let max_failures = self.max_failures;
        let entry = self.entry(&mut entries, ip, now);
        entry.failures = entry.failures.max(max_failures);
        let until = now + duration;
        if entry.locked_until.is_none_or(|held| held < until) {
            entry.locked_until = Some(until);
        }
    }

    /// `ip`'s entry, made if it has none (the least recently seen one goes when the table is
    /// full), seen `now`.
    fn entry<'t>(
        &self,
        entries: &'t mut HashMap<IpAddr, Entry>,
        ip: IpAddr,
        now: Instant,
    ) -> &'t mut Entry {
        if !entries.contains_key(&ip) && entries.len() >= self.capacity {
            let oldest = entries
                .iter()
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(ip, _)| *ip);
            if let Some(oldest) = oldest {
                entries.remove(&oldest);
            }
        }
        let entry = entries.entry(ip).or_insert(Entry {
            failures: 0,
            locked_until: None,
            last_seen: now,
        });
        entry.last_seen = now;
        entry
    }

    /// A successful login from `ip` clears its failures.
    pub fn succeed(&self, ip: IpAddr) {
        self.lock().remove(&ip);
    }

    /// Removes `ip` from the table (an operator's unlock). False if it was not there.
    pub fn clear(&self, ip: IpAddr) -> bool {
        self.lock().remove(&ip).is_some()
    }

    /// Every address with failures or a lockout, locked ones first, then by failures.
    pub fn list(&self) -> Vec<LockoutEntry> {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut list: Vec<LockoutEntry> = self
            .lock()
            .iter()
            .map(|(ip, e)| LockoutEntry {
                address: *ip,
                failures: e.failures,
                locked_until: e
                    .locked_until
                    .filter(|until| *until > now)
                    .map(|until| wall + (until - now)),
            })
            .collect();
        list.sort_by(|a, b| {
            (b.locked_until.is_some(), b.failures, a.address).cmp(&(
                a.locked_until.is_some(),
                a.failures,
                b.address,
            ))
        });
        list
    }
}

/// The refusal of a login from an address locked out for `left` more: the retry time as
/// `retry_after_secs` for the tunnel, and in the message for people.
pub fn refusal(left: Duration) -> Refusal {
    let message = format!(
        "this address is locked out after repeated failed logins; retry in {}",
        retry_in(left)
    );
    Refusal::locked_out(left, message)
}

/// "in 29m 59s" for people.
pub fn retry_in(left: Duration) -> String {
    let secs = left.as_secs().max(1);
    match secs {
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn a_lockout_from_elsewhere_locks_at_once_and_never_shortens_a_longer_one() {
        let table = LockoutTable::new(5, Duration::from_secs(60), 16);
        table.lock_for(ip(1), Duration::from_secs(30));
        let left = table.check(ip(1)).expect_err("locked by lock_for");
        assert!(left <= Duration::from_secs(30) && left > Duration::from_secs(20));
        table.lock_for(ip(1), Duration::from_secs(1));
        let left = table.check(ip(1)).expect_err("still locked");
        assert!(left > Duration::from_secs(20), "{left:?}");
        assert!(table.check(ip(2)).is_ok());
    }

    #[test]
    fn the_fifth_failure_locks_the_address_and_only_that_address() {
        let table = LockoutTable::new(5, Duration::from_secs(60), 16);
        for _ in 0..4 {
            assert_eq!(table.fail(ip(1)), None);
            assert!(table.check(ip(1)).is_ok());
        }
        assert_eq!(table.fail(ip(1)), Some(Duration::from_secs(60)));
        let left = table.check(ip(1)).unwrap_err();
        assert!(left <= Duration::from_secs(60) && left > Duration::from_secs(50));
        assert!(table.check(ip(2)).is_ok(), "another address is unaffected");
        let listed = table.list();
        assert_eq!(listed[0].address, ip(1));
        assert!(listed[0].locked_until.is_some());
    }

    #[test]
    fn a_success_clears_the_count_and_an_operator_can_unlock() {
        let table = LockoutTable::new(2, Duration::from_secs(60), 16);
        table.fail(ip(1));
        table.succeed(ip(1));
        assert_eq!(table.fail(ip(1)), None, "the count started again");
        assert!(table.fail(ip(1)).is_some());
        assert!(table.clear(ip(1)));
        assert!(table.check(ip(1)).is_ok());
        assert!(!table.clear(ip(1)));
    }

    #[test]
    fn a_lockout_ends_after_its_duration() {
        let table = LockoutTable::new(1, Duration::ZERO, 16);
        assert!(table.fail(ip(1)).is_some());
        assert!(
            table.check(ip(1)).is_ok(),
            "a zero-length lockout is already over"
        );
        assert!(table.list().is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_entry_seen_longest_ago() {
        let table = LockoutTable::new(5, Duration::from_secs(60), 3);
        for last in 1..=3 {
            table.fail(ip(last));
        }
        table.fail(ip(1)); // 1 is now the most recent; 2 is the oldest
        table.fail(ip(4));
        let addresses: Vec<IpAddr> = table.list().iter().map(|e| e.address).collect();
        assert_eq!(addresses.len(), 3);
        assert!(!addresses.contains(&ip(2)), "{addresses:?}");
        assert!(addresses.contains(&ip(1)) && addresses.contains(&ip(4)));
    }

    #[test]
    fn the_refusal_carries_the_retry_time_as_a_field_and_in_its_message() {
        let refused = refusal(Duration::from_millis(1_799_400));
        assert_eq!(refused.retry_after_secs, Some(1800));
        assert!(
            refused.message.contains("retry in 29m 59s"),
            "{}",
            refused.message
        );
    }

    #[test]
    fn retry_times_read_well() {
        assert_eq!(retry_in(Duration::from_secs(1799)), "29m 59s");
        assert_eq!(retry_in(Duration::from_millis(200)), "1s");
    }
}
