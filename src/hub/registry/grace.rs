//! What a lost tunnel leaves behind: its public ports and hostnames, held for its key name for
//! the hub's `reconnect_grace`, so that the same key gets them back when its tunnel reconnects
//! and no other key can take them meanwhile.
//!
//! A [`GraceTable`] is bounded: entries expire, and a full table drops the entry that was held
//! first. It is plain data behind its owner's lock (the registry's for ports, the host routes'
//! for hostnames) and does no I/O. A hub that stops writes what it holds, and what its live
//! tunnels hold, to its `state_dir` for the next start ([`super::persist`]).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Most claims a table holds at once (64 proxies of each of 1,000 tunnels fit).
pub const CAPACITY: usize = 65_536;

/// A claim held for a departed tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The tunnel key name the claim is held for.
    pub key_name: String,
    /// The session that held it.
    pub tunnel_id: Uuid,
    /// The hub service it belongs to.
    pub service: String,
    /// The departed tunnel's proxy name.
    pub proxy: String,
    /// The load-balancing group of a hostname, if it had one.
    pub group: Option<String>,
    /// When it frees up.
    pub until: Instant,
}

impl Reservation {
    /// Whether the reservation still holds at `now`.
    pub fn is_live(&self, now: Instant) -> bool {
        self.until > now
    }

    /// How long until it frees up.
    pub fn left(&self, now: Instant) -> Duration {
        self.until.saturating_duration_since(now)
    }

    /// Why another key cannot have `what` (a port or hostname): which key holds it and when it
    /// frees up. Names no secret.
    pub fn refusal(&self, what: &str, now: Instant) -> String {
        // Round up: "in 0s" would invite a retry that is still refused.
        let secs = self.left(now).as_millis().div_ceil(1000).max(1);
        format!(
            "{what} is reserved for tunnel key `{}`, whose tunnel disconnected; it frees up in \
             {secs}s unless that tunnel reconnects (the hub's reconnect_grace)",
            self.key_name
        )
    }
}

/// Reservations by what they reserve (a port or a hostname), bounded and expiring.
#[derive(Debug)]
pub struct GraceTable<K> {
    entries: HashMap<K, Reservation>,
    /// Keys in the order they were held, with the expiry they were held with. An item whose
    /// entry was replaced or taken since is stale and skipped.
    order: VecDeque<(Instant, K)>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone> Default for GraceTable<K> {
    fn default() -> Self {
        GraceTable::new(CAPACITY)
    }
}

impl<K: Eq + Hash + Clone> GraceTable<K> {
    /// An empty table holding at most `capacity` reservations (at least 1).
    pub fn new(capacity: usize) -> Self {
        GraceTable {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Holds `key` as `reservation` says, replacing any earlier reservation of it. A full table
    /// first drops the reservation held longest ago.
    pub fn hold(&mut self, key: K, reservation: Reservation, now: Instant) {
        self.expire(now);
        if !reservation.is_live(now) {
            self.entries.remove(&key);
            return;
        }
        if !self.entries.contains_key(&key) {
            while self.entries.len() >= self.capacity {
                let Some((until, oldest)) = self.order.pop_front() else {
                    break;
                };
                self.remove_if_held(&oldest, until);
            }
        }
        self.order.push_back((reservation.until, key.clone()));
        self.entries.insert(key, reservation);
        self.compact();
    }

    /// The live reservation of `key`, if any.
    pub fn get(&mut self, key: &K, now: Instant) -> Option<&Reservation> {
        self.expire(now);
        if self.entries.get(key).is_some_and(|r| !r.is_live(now)) {
            self.entries.remove(key);
        }
        self.entries.get(key)
    }

    /// Drops the reservation of `key`, whatever it is.
    pub fn release(&mut self, key: &K) -> Option<Reservation> {
        self.entries.remove(key)
    }

    /// The first live reservation for which `wanted` holds, with its key.
    pub fn find(
        &mut self,
        now: Instant,
        mut wanted: impl FnMut(&K, &Reservation) -> bool,
    ) -> Option<(K, Reservation)> {
        self.expire(now);
        self.entries
            .iter()
            .find(|(k, r)| r.is_live(now) && wanted(k, r))
            .map(|(k, r)| (k.clone(), r.clone()))
    }

    /// Every live reservation at `now`, with its key.
    pub fn live(&self, now: Instant) -> Vec<(K, Reservation)> {
        self.entries
            .iter()
            .filter(|(_, r)| r.is_live(now))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect()
    }

    /// Number of reservations, expired ones not yet dropped included.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table holds nothing.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops the reservations that expired, oldest first, as far as the order allows.
    fn expire(&mut self, now: Instant) {
        while let Some((until, _)) = self.order.front() {
            if *until > now {
                break;
            }
            if let Some((until, key)) = self.order.pop_front() {
                self.remove_if_held(&key, until);
            }
        }
    }

    /// Removes `key` if its reservation is still the one held with expiry `until`.
    fn remove_if_held(&mut self, key: &K, until: Instant) {
        if self.entries.get(key).is_some_and(|r| r.until == until) {
            self.entries.remove(key);
        }
    }

    /// Keeps the order queue within a small multiple of the entries, dropping stale items.
    fn compact(&mut self) {
        if self.order.len() <= 2 * self.entries.len() + 64 {
            return;
        }
        let entries = &self.entries;
        self.order
            .retain(|(until, key)| entries.get(key).is_some_and(|r| r.until == *until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(key_name: &str, until: Instant) -> Reservation {
        Reservation {
            key_name: key_name.into(),
            tunnel_id: Uuid::nil(),
            service: "s".into(),
            proxy: "p".into(),
            group: None,
            until,
        }
    }

    #[test]
    fn a_reservation_holds_until_it_expires() {
        let now = Instant::now();
        let mut table = GraceTable::new(8);
        table.hold(1u16, held("alice", now + Duration::from_secs(5)), now);
        let r = table.get(&1, now + Duration::from_secs(4)).unwrap();
        assert_eq!(r.key_name, "alice");
        assert_eq!(
            r.refusal("port 1", now + Duration::from_millis(3500)),
            "port 1 is reserved for tunnel key `alice`, whose tunnel disconnected; it frees up \
             in 2s unless that tunnel reconnects (the hub's reconnect_grace)"
        );
        assert!(table.get(&1, now + Duration::from_secs(5)).is_none());
        assert!(table.is_empty(), "an expired entry is dropped");
    }

    #[test]
    fn a_full_table_drops_the_reservation_held_longest_ago() {
        let now = Instant::now();
        let mut table = GraceTable::new(3);
        for port in 0..10u16 {
            let until = now + Duration::from_secs(60 + u64::from(port));
            table.hold(port, held("k", until), now);
            assert!(table.len() <= 3);
        }
        assert!(table.get(&6, now).is_none());
        assert!((7..10).all(|p| table.get(&p, now).is_some()));
    }

    #[test]
    fn holding_again_replaces_and_a_stale_order_item_does_not_drop_the_new_entry() {
        let now = Instant::now();
        let mut table = GraceTable::new(8);
        table.hold(1u16, held("alice", now + Duration::from_secs(1)), now);
        table.hold(1u16, held("bob", now + Duration::from_secs(10)), now);
        let later = now + Duration::from_secs(2);
        assert_eq!(table.get(&1, later).unwrap().key_name, "bob");
        assert_eq!(table.release(&1).unwrap().key_name, "bob");
        assert!(table.get(&1, later).is_none());
    }

    #[test]
    fn find_sees_only_live_reservations() {
        let now = Instant::now();
        let mut table = GraceTable::new(8);
        table.hold(1u16, held("alice", now + Duration::from_secs(1)), now);
        table.hold(2u16, held("alice", now + Duration::from_secs(9)), now);
        let found = table.find(now + Duration::from_secs(2), |_, r| r.key_name == "alice");
        assert_eq!(found.map(|(k, _)| k), Some(2));
        assert!(table.find(now, |_, r| r.key_name == "bob").is_none());
    }

    #[test]
    fn churn_keeps_the_order_queue_bounded() {
        let now = Instant::now();
        let mut table = GraceTable::new(4);
        for i in 0..10_000u32 {
            table.hold(i % 2, held("k", now + Duration::from_secs(60)), now);
            table.release(&(i % 2));
        }
        assert!(table.order.len() <= 64 + 2 * table.len() + 1);
    }
}
