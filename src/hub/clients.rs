//! The hub's table of connected clients: who is connected through which tunnel and proxy, since
//! when, and how many bytes each has moved, so the admin API can list them and an operator can
//! disconnect one.
//!
//! A client is a public TCP connection, a UDP session (one client address), or an HTTP request
//! (an upgraded one for as long as the upgraded connection lives). Each entry lives exactly as
//! long as its [`ClientGuard`]: the task serving the client holds it and dropping it, however
//! the task ends, removes the entry. The table holds no more entries than there are live
//! client tasks, which the services bound. One `parking_lot::Mutex`, held for a map operation only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::mux::{ByteCounters, Meter};

/// One connected client.
#[derive(Debug)]
pub struct ClientEntry {
    /// Client id (unique for this hub process), as in the logs.
    pub id: u64,
    /// The tunnel session serving it.
    pub tunnel_id: Uuid,
    /// The hub service it came in on.
    pub service: String,
    /// The tunnel's proxy serving it.
    pub proxy: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// When it connected.
    pub since: SystemTime,
    /// Its bytes so far.
    pub traffic: Arc<ByteCounters>,
    /// Cancelled to disconnect it; a child of its tunnel session's token.
    pub cancel: CancellationToken,
}

/// Connected clients by id, with how many each tunnel and each service has.
#[derive(Debug, Default)]
pub struct ClientTable {
    clients: Mutex<Clients>,
}

#[derive(Debug, Default)]
struct Clients {
    by_id: HashMap<u64, Arc<ClientEntry>>,
    per_tunnel: HashMap<Uuid, usize>,
    per_service: HashMap<String, usize>,
}

impl Clients {
    fn add(&mut self, entry: Arc<ClientEntry>) {
        *self.per_tunnel.entry(entry.tunnel_id).or_default() += 1;
        *self.per_service.entry(entry.service.clone()).or_default() += 1;
        self.by_id.insert(entry.id, entry);
    }

    fn remove(&mut self, id: u64) {
        let Some(entry) = self.by_id.remove(&id) else {
            return;
        };
        if let Some(n) = self.per_tunnel.get_mut(&entry.tunnel_id) {
            *n -= 1;
            if *n == 0 {
                self.per_tunnel.remove(&entry.tunnel_id);
            }
        }
        if let Some(n) = self.per_service.get_mut(&entry.service) {
            *n -= 1;
            if *n == 0 {
                self.per_service.remove(&entry.service);
            }
        }
    }
}

/// Which limit a new client would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientLimit {
    /// `[limits] clients_per_tunnel`.
    PerTunnel(usize),
    /// `[limits] clients_per_service`.
    PerService(usize),
}

impl std::fmt::Display for ClientLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientLimit::PerTunnel(n) => {
                write!(
                    f,
                    "the tunnel serves its maximum of {n} clients ([limits] clients_per_tunnel)"
                )
            }
            ClientLimit::PerService(n) => {
                write!(
                    f,
                    "the service serves its maximum of {n} clients ([limits] clients_per_service)"
                )
            }
        }
    }
}

impl ClientTable {
    /// Adds `entry`; it stays until the returned guard is dropped.
    pub fn insert(self: &Arc<Self>, entry: ClientEntry) -> ClientGuard {
        let entry = Arc::new(entry);
        self.clients.lock().add(entry.clone());
        ClientGuard {
            table: self.clone(),
            entry,
        }
    }

    /// Adds `entry` unless its tunnel already has `per_tunnel` clients or its service
    /// `per_service`.
    pub fn insert_within(
        self: &Arc<Self>,
        entry: ClientEntry,
        per_tunnel: usize,
        per_service: usize,
    ) -> Result<ClientGuard, ClientLimit> {
        let entry = Arc::new(entry);
        {
            let mut clients = self.clients.lock();
            if clients
                .per_tunnel
                .get(&entry.tunnel_id)
                .copied()
                .unwrap_or(0)
                >= per_tunnel
            {
                return Err(ClientLimit::PerTunnel(per_tunnel));
            }
            if clients
                .per_service
                .get(&entry.service)
                .copied()
                .unwrap_or(0)
                >= per_service
            {
                return Err(ClientLimit::PerService(per_service));
            }
            clients.add(entry.clone());
        }
        Ok(ClientGuard {
            table: self.clone(),
            entry,
        })
    }

    /// Looks a client up.
    pub fn get(&self, id: u64) -> Option<Arc<ClientEntry>> {
        self.clients.lock().by_id.get(&id).cloned()
    }

    /// Every connected client, in no particular order.
    pub fn snapshot(&self) -> Vec<Arc<ClientEntry>> {
        self.clients.lock().by_id.values().cloned().collect()
    }

    /// Number of connected clients.
    pub fn len(&self) -> usize {
        self.clients.lock().by_id.len()
    }

    /// Whether no client is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps a client listed; dropping it removes the entry.
#[derive(Debug)]
pub struct ClientGuard {
    table: Arc<ClientTable>,
    entry: Arc<ClientEntry>,
}

impl ClientGuard {
    /// The entry.
    pub fn entry(&self) -> &ClientEntry {
        &self.entry
    }

    /// Resolves when an operator (or the tunnel's end) disconnects this client.
    pub async fn cancelled(&self) {
        self.entry.cancel.cancelled().await
    }

    /// A meter adding this client's bytes to its own counters and to `more` (its tunnel's and
    /// its service's).
    pub fn meter(&self, more: &[&Arc<ByteCounters>]) -> Meter {
        let mut counters = vec![self.entry.traffic.clone()];
        counters.extend(more.iter().map(|c| (*c).clone()));
        Meter::new(counters)
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.table.clients.lock().remove(self.entry.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, cancel: CancellationToken) -> ClientEntry {
        ClientEntry {
            id,
            tunnel_id: Uuid::new_v4(),
            service: "tcp".into(),
            proxy: "echo".into(),
            peer: "127.0.0.1:5000".parse().unwrap(),
            since: SystemTime::now(),
            traffic: Arc::default(),
            cancel,
        }
    }

    #[test]
    fn an_entry_lives_exactly_as_long_as_its_guard() {
        let table = Arc::new(ClientTable::default());
        let guard = table.insert(entry(7, CancellationToken::new()));
        assert_eq!(table.get(7).map(|e| e.id), Some(7));
        assert_eq!(table.len(), 1);
        drop(guard);
        assert!(table.get(7).is_none());
        assert!(table.is_empty());
    }

    #[test]
    fn a_meter_counts_into_the_client_and_every_extra_counter() {
        let table = Arc::new(ClientTable::default());
        let guard = table.insert(entry(1, CancellationToken::new()));
        let (tunnel, service) = (Arc::default(), Arc::default());
        let meter = guard.meter(&[&tunnel, &service]);
        meter.add_in(10);
        meter.add_out(3);
        for counters in [&guard.entry().traffic, &tunnel, &service] {
            assert_eq!((counters.bytes_in(), counters.bytes_out()), (10, 3));
        }
    }

    #[test]
    fn clients_are_bounded_per_tunnel_and_per_service_and_freed_on_drop() {
        let table = Arc::new(ClientTable::default());
        let tunnel = Uuid::new_v4();
        let on = |id: u64, tunnel_id: Uuid, service: &str| {
            let mut e = entry(id, CancellationToken::new());
            e.tunnel_id = tunnel_id;
            e.service = service.into();
            table.insert_within(e, 2, 3)
        };
        let a = on(1, tunnel, "tcp").unwrap();
        let _b = on(2, tunnel, "tcp").unwrap();
        assert_eq!(on(3, tunnel, "tcp").unwrap_err(), ClientLimit::PerTunnel(2));
        let _c = on(4, Uuid::new_v4(), "tcp").unwrap();
        assert_eq!(
            on(5, Uuid::new_v4(), "tcp").unwrap_err(),
            ClientLimit::PerService(3)
        );
        assert!(
            on(6, Uuid::new_v4(), "udp").is_ok(),
            "another service has room"
        );
        drop(a);
        assert!(
            on(7, tunnel, "tcp").is_ok(),
            "a departed client frees its place"
        );
    }

    #[tokio::test]
    async fn cancelling_the_entry_wakes_the_guard() {
        let table = Arc::new(ClientTable::default());
        let parent = CancellationToken::new();
        let guard = table.insert(entry(2, parent.child_token()));
        parent.cancel();
        guard.cancelled().await;
        assert!(guard.entry().cancel.is_cancelled());
    }
}
