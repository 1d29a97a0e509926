//! Concurrent client connections per source address (`[limits] connections_per_address`), so
//! that one address cannot hold thousands of slow connections (each costs the hub and the
//! tunnel up to a stream window of memory: docs/protocol.md, "Slow readers and fairness").
//!
//! Counted at accept, for the public connections of tcp proxies and http/https services, for
//! as long as each connection is open ([`AddressSlot`]). An IPv6 client counts by its /64, the
//! block one host is usually given; an IPv4-mapped IPv6 address counts as its IPv4 address.
//! An upgraded http connection (WebSocket) counts for as long as it lives: its splice holds
//! the place after the connection's own task has ended.
//! The table holds one entry per address with a connection open, so it is bounded by the
//! connections the hub holds. One `parking_lot::Mutex`, held for a map operation only.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use parking_lot::Mutex;

/// Open connections by source address (or /64).
#[derive(Debug, Default)]
pub struct PerAddress {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection counted toward its address; dropping it frees the place.
#[derive(Debug)]
pub struct AddressSlot {
    table: Arc<PerAddress>,
    key: IpAddr,
}

/// What `ip` is counted as: itself for IPv4, its /64 for IPv6.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

impl PerAddress {
    /// Counts one more connection from `ip`, unless `limit` are open from it already.
    pub fn take(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<AddressSlot> {
        let key = key(ip);
        let mut open = self.open.lock();
        let count = open.entry(key).or_default();
        if *count >= limit {
            if *count == 0 {
                open.remove(&key);
            }
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            table: self.clone(),
            key,
        })
    }

    /// Connections open from `ip` (or its /64) now.
    #[cfg(test)]
    fn open_from(&self, ip: IpAddr) -> usize {
        self.open.lock().get(&key(ip)).copied().unwrap_or(0)
    }

    /// Addresses with a connection open.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.open.lock().len()
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock();
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_gets_its_limit_and_no_more_and_a_closed_one_frees_a_place() {
        let table = Arc::new(PerAddress::default());
        let mut held: Vec<_> = (0..3)
            .map(|_| table.take(ip("192.0.2.1"), 3).expect("within the limit"))
            .collect();
        assert!(table.take(ip("192.0.2.1"), 3).is_none());
        // Another address is counted apart.
        let other = table.take(ip("192.0.2.2"), 3).expect("another address");
        assert_eq!(table.open_from(ip("192.0.2.1")), 3);
        drop(held.pop());
        assert_eq!(table.open_from(ip("192.0.2.1")), 2);
        assert!(table.take(ip("192.0.2.1"), 3).is_some());
        drop(other);
        assert_eq!(table.open_from(ip("192.0.2.2")), 0);
    }

    #[test]
    fn an_address_without_connections_leaves_no_entry() {
        let table = Arc::new(PerAddress::default());
        let slots: Vec<_> = (0..5)
            .filter_map(|i| table.take(ip(&format!("198.51.100.{i}")), 1))
            .collect();
        assert_eq!(table.addresses(), 5);
        drop(slots);
        assert_eq!(table.addresses(), 0);
        // A refusal at a limit of 0 leaves nothing behind either.
        assert!(table.take(ip("198.51.100.9"), 0).is_none());
        assert_eq!(table.addresses(), 0);
    }

    #[test]
    fn ipv6_counts_by_its_64_and_a_mapped_ipv4_as_the_ipv4() {
        let table = Arc::new(PerAddress::default());
        let _a = table.take(ip("2001:db8:1:2::1"), 2).unwrap();
        let _b = table.take(ip("2001:db8:1:2:ffff::9"), 2).unwrap();
        assert!(
            table.take(ip("2001:db8:1:2:abcd::1"), 2).is_none(),
            "the same /64"
        );
        assert!(
            table.take(ip("2001:db8:1:3::1"), 2).is_some(),
            "another /64"
        );
        let _v4 = table.take(ip("203.0.113.7"), 1).unwrap();
        assert!(table.take(ip("::ffff:203.0.113.7"), 1).is_none());
    }
}
