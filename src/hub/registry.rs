//! The hub's in-memory registry: live tunnel sessions and the public ports they own. Ports are
//! claimed per transport: a TCP and a UDP proxy may both hold port 5000.
//!
//! All state sits behind one `parking_lot::Mutex` with short critical sections (a map lookup or
//! insert); no lock is ever held across an `.await`. Removing a session cancels its token, which
//! stops its port listeners and link connections at once. A session the hub *lost* (its control
//! connection ended) departs instead: its ports stay held for its key name for the hub's
//! `reconnect_grace` ([`grace`]), so that key gets them back and no other can take them meanwhile.

pub mod grace;
pub mod persist;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::clients::{ClientEntry, ClientGuard, ClientTable};
use super::links::LinkSet;
use crate::mux::ByteCounters;
use crate::protocol::Transport;
use crate::secret::Secret;
use grace::{GraceTable, Reservation};

/// A proxy the hub accepted for a session: where the public reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposedProxy {
    /// The hub service.
    pub service: String,
    /// The tunnel's proxy name.
    pub name: String,
    /// Public port (tcp/udp).
    pub port: Option<u16>,
    /// Public hostname (http/https).
    pub hostname: Option<String>,
    /// The port it holds in the registry (tcp/udp), by transport and bound address.
    pub claim: Option<(Transport, PortKey)>,
}

/// A live tunnel session.
#[derive(Debug)]
pub struct TunnelSession {
    /// Session id, sent to the tunnel in `Welcome`.
    pub id: Uuid,
    /// The tunnel's self-reported name (for logs).
    pub name: String,
    /// Which configured key it used, if any.
    pub key_name: Option<String>,
    /// Where its control connection comes from.
    pub peer: SocketAddr,
    /// When it connected.
    pub since: SystemTime,
    /// Authorises this session's link connections.
    pub link_token: Secret,
    /// Its link connections.
    pub links: LinkSet,
    /// Cancelled when the session ends, for whatever reason.
    pub cancel: CancellationToken,
    /// Bytes of all its clients so far.
    pub traffic: Arc<ByteCounters>,
    proxies: Mutex<Vec<ExposedProxy>>,
    close_reason: Mutex<Option<String>>,
    /// Asks the session's control loop to check that its tunnel still answers.
    probe: Notify,
    /// Told when the tunnel answered such a check.
    answered: Notify,
}

#[cfg(test)]
impl TunnelSession {
    /// A session for unit tests: tunnel `t` from 127.0.0.1:1, of `key_name` if given.
    pub(crate) fn for_test(key_name: Option<&str>) -> Arc<Self> {
        Arc::new(TunnelSession::new(
            "t".into(),
            key_name.map(str::to_owned),
            "127.0.0.1:1".parse().unwrap(),
            &CancellationToken::new(),
        ))
    }
}

impl TunnelSession {
    /// A new session whose lifetime is bounded by `parent`.
    pub fn new(
        name: String,
        key_name: Option<String>,
        peer: SocketAddr,
        parent: &CancellationToken,
    ) -> Self {
        TunnelSession {
            id: Uuid::new_v4(),
            name,
            key_name,
            peer,
            since: SystemTime::now(),
            link_token: Secret::random(32),
            links: LinkSet::default(),
            cancel: parent.child_token(),
            traffic: Arc::default(),
            proxies: Mutex::new(Vec::new()),
            close_reason: Mutex::new(None),
            probe: Notify::new(),
            answered: Notify::new(),
        }
    }

    /// Asks the session's control loop to check its tunnel is still there (a ping it must
    /// answer in time), and waits at most until `until` for the outcome: true if the session
    /// ended meanwhile, false if the tunnel answered or time ran out. For a tunnel of the same
    /// key asking for this session's claims: the connection may be dead without the hub
    /// having noticed yet (a tunnel's network changed, and it reconnected first).
    pub async fn ended_after_probe(&self, until: Instant) -> bool {
        let answered = self.answered.notified();
        tokio::pin!(answered);
        answered.as_mut().enable();
        self.probe.notify_one();
        tokio::select! {
            () = self.cancel.cancelled() => true,
            () = answered => false,
            () = tokio::time::sleep_until(until.into()) => self.cancel.is_cancelled(),
        }
    }

    /// Completes when a liveness check of the tunnel was asked for.
    pub async fn probe_requested(&self) {
        self.probe.notified().await;
    }

    /// Records that the tunnel answered a liveness check.
    pub fn probe_answered(&self) {
        self.answered.notify_waiters();
    }

    /// Records a proxy the hub accepted.
    pub fn add_proxy(&self, proxy: ExposedProxy) {
        self.proxies.lock().push(proxy);
    }

    /// The proxies the hub accepted.
    pub fn proxies(&self) -> Vec<ExposedProxy> {
        self.proxies.lock().clone()
    }

    /// Ends the session, recording why (the first reason given wins).
    pub fn close(&self, reason: impl Into<String>) {
        {
            let mut slot = self.close_reason.lock();
            if slot.is_none() {
                *slot = Some(reason.into());
            }
        }
        self.cancel.cancel();
    }

    /// Why the session ended, if it was closed with a reason.
    pub fn close_reason(&self) -> Option<String> {
        self.close_reason.lock().clone()
    }
}

/// Public port a tunnel owns, by the address it is bound on.
pub type PortKey = (IpAddr, u16);

#[derive(Default)]
struct State {
    tunnels: HashMap<Uuid, Arc<TunnelSession>>,
    ports: HashMap<(Transport, PortKey), Uuid>,
    /// Ports of lost sessions, held for their key names.
    held: GraceTable<(Transport, PortKey)>,
}

/// The ports of `proxies` that `session` still owns, as reservations for `key_name` until
/// `until`: what it leaves held when it departs, or across a restart.
fn owned_ports(
    state: &State,
    session: &TunnelSession,
    proxies: &[ExposedProxy],
    key_name: &str,
    until: Instant,
) -> Vec<((Transport, PortKey), Reservation)> {
    proxies
        .iter()
        .filter_map(|proxy| {
            let port = proxy.claim?;
            (state.ports.get(&port) == Some(&session.id)).then(|| {
                (
                    port,
                    Reservation {
                        key_name: key_name.to_owned(),
                        tunnel_id: session.id,
                        service: proxy.service.clone(),
                        proxy: proxy.name.clone(),
                        group: None,
                        until,
                    },
                )
            })
        })
        .collect()
}

/// A session refused by [`Registry::insert_within`]: the hub already serves this many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelLimit(pub usize);

/// Live sessions, port ownership, connected clients and per-service byte counts.
#[derive(Default)]
pub struct Registry {
    state: Mutex<State>,
    next_client_id: AtomicU64,
    /// Connected clients.
    pub clients: Arc<ClientTable>,
    /// Bytes per service name, since the hub started.
    service_traffic: Mutex<HashMap<String, Arc<ByteCounters>>>,
}

impl Registry {
    /// Adds a session.
    pub fn insert(&self, session: Arc<TunnelSession>) {
        self.state.lock().tunnels.insert(session.id, session);
    }

    /// Adds a session unless `limit` sessions are live already. The count and the insertion
    /// are one critical section, so tunnels racing for the last place cannot both get it.
    pub fn insert_within(
        &self,
        session: Arc<TunnelSession>,
        limit: usize,
    ) -> Result<(), TunnelLimit> {
        let mut state = self.state.lock();
        if state.tunnels.len() >= limit {
            return Err(TunnelLimit(limit));
        }
        state.tunnels.insert(session.id, session);
        Ok(())
    }

    /// Looks a session up.
    pub fn tunnel(&self, id: &Uuid) -> Option<Arc<TunnelSession>> {
        self.state.lock().tunnels.get(id).cloned()
    }

    /// Number of live sessions.
    pub fn tunnel_count(&self) -> usize {
        self.state.lock().tunnels.len()
    }

    /// Every live session, in no particular order.
    pub fn tunnels(&self) -> Vec<Arc<TunnelSession>> {
        self.state.lock().tunnels.values().cloned().collect()
    }

    /// The byte counters of service `name` (created on first use).
    pub fn service_traffic(&self, name: &str) -> Arc<ByteCounters> {
        self.service_traffic
            .lock()
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Lists a new client of `session` on `service`'s `proxy` under a fresh id, unless the
    /// session or the service already has as many clients as `[limits]` allows. The client
    /// stays listed while the guard lives; its token is cancelled with the session or by an
    /// operator.
    pub fn try_open_client(
        &self,
        session: &TunnelSession,
        service: &str,
        proxy: &str,
        peer: SocketAddr,
        limits: &crate::config::Limits,
    ) -> Result<ClientGuard, super::clients::ClientLimit> {
        self.clients.insert_within(
            ClientEntry {
                id: self.next_client_id(),
                tunnel_id: session.id,
                service: service.to_owned(),
                proxy: proxy.to_owned(),
                peer,
                since: SystemTime::now(),
                traffic: Arc::default(),
                cancel: session.cancel.child_token(),
            },
            limits.clients_per_tunnel,
            limits.clients_per_service,
        )
    }

    /// A meter counting one client's bytes into its own, its tunnel's and its service's
    /// counters.
    pub fn meter(&self, client: &ClientGuard, session: &TunnelSession) -> crate::mux::Meter {
        let service = self.service_traffic(&client.entry().service);
        client.meter(&[&session.traffic, &service])
    }

    /// Removes a session, frees its ports at once (held ones too) and cancels it. For the
    /// hub's own decisions: an operator's disconnect, a reload, a stop.
    pub fn remove(&self, id: &Uuid, reason: &str) {
        let session = {
            let mut state = self.state.lock();
            let state = &mut *state;
            let held = &mut state.held;
            state.ports.retain(|port, owner| {
                if owner == id {
                    held.release(port);
                }
                owner != id
            });
            state.tunnels.remove(id)
        };
        if let Some(session) = session {
            session.close(reason);
        }
    }

    /// Removes a session the hub lost (its control connection ended) and cancels it. Its
    /// ports stay held for its key name for `grace`; a session without a key name, or a zero
    /// `grace`, frees them at once. Returns false if the session was already gone.
    pub fn depart(&self, session: &TunnelSession, reason: &str, grace: Duration) -> bool {
        let proxies = session.proxies();
        let now = Instant::now();
        let present = {
            let mut state = self.state.lock();
            let state = &mut *state;
            let present = state.tunnels.remove(&session.id).is_some();
            if present
                && let Some(key_name) = session.key_name.as_ref().filter(|_| !grace.is_zero())
            {
                for (port, reservation) in
                    owned_ports(state, session, &proxies, key_name, now + grace)
                {
                    state.held.hold(port, reservation, now);
                }
            }
            state.ports.retain(|_, owner| *owner != session.id);
            present
        };
        session.close(reason);
        present
    }

    /// What a restart must keep for each key: the ports of live sessions that have a key name,
    /// as reservations for `grace` from now, and the ports already held.
    pub fn holds_for_restart(&self, grace: Duration) -> Vec<((Transport, PortKey), Reservation)> {
        let now = Instant::now();
        let state = self.state.lock();
        let mut holds = state.held.live(now);
        for session in state.tunnels.values() {
            if let Some(key_name) = &session.key_name {
                let proxies = session.proxies();
                holds.extend(owned_ports(
                    &state,
                    session,
                    &proxies,
                    key_name,
                    now + grace,
                ));
            }
        }
        holds
    }

    /// Holds ports a previous run of the hub left held (`holds_for_restart`).
    pub fn restore_holds(&self, holds: Vec<((Transport, PortKey), Reservation)>) {
        let now = Instant::now();
        let mut state = self.state.lock();
        for (port, reservation) in holds {
            state.held.hold(port, reservation, now);
        }
    }

    /// Who a port of `transport` is held for, if a lost session left it behind.
    pub fn held(&self, transport: Transport, key: &PortKey) -> Option<Reservation> {
        self.state
            .lock()
            .held
            .get(&(transport, *key), Instant::now())
            .cloned()
    }

    /// The port held for `key_name`'s proxy `proxy` on `service`, if a lost session of that
    /// key left one behind: a reconnecting tunnel that lets the hub choose gets it back.
    pub fn held_port_of(
        &self,
        key_name: &str,
        service: &str,
        proxy: &str,
        transport: Transport,
    ) -> Option<PortKey> {
        let mut state = self.state.lock();
        state
            .held
            .find(Instant::now(), |(t, _), r| {
                *t == transport
                    && r.key_name == key_name
                    && r.service == service
                    && r.proxy == proxy
            })
            .map(|((_, port), _)| port)
    }

    /// Claims a TCP port for a tunnel; on conflict returns the owner.
    pub fn claim_port(&self, key: PortKey, tunnel: Uuid) -> Result<(), Uuid> {
        self.claim(Transport::Tcp, key, tunnel)
    }

    /// Whether a TCP port is claimed.
    pub fn port_owner(&self, key: &PortKey) -> Option<Uuid> {
        self.owner(Transport::Tcp, key)
    }

    /// Releases a TCP port claimed by `tunnel` (no-op if another tunnel owns it).
    pub fn release_port(&self, key: &PortKey, tunnel: Uuid) {
        self.release(Transport::Tcp, key, tunnel)
    }

    /// Claims a port of `transport` for a tunnel; on conflict returns the owner. A port held
    /// for a lost session's key name can only be claimed by a session of that key (the
    /// conflict then names the lost session); the reservation stays until it expires, so a
    /// claim released again (the bind failed) is still protected.
    pub fn claim(&self, transport: Transport, key: PortKey, tunnel: Uuid) -> Result<(), Uuid> {
        let mut state = self.state.lock();
        let state = &mut *state;
        if let Some(owner) = state.ports.get(&(transport, key)) {
            return Err(*owner);
        }
        if let Some(held) = state.held.get(&(transport, key), Instant::now()) {
            let claimant = state.tunnels.get(&tunnel).and_then(|s| s.key_name.as_ref());
            if claimant != Some(&held.key_name) {
                return Err(held.tunnel_id);
            }
        }
        state.ports.insert((transport, key), tunnel);
        Ok(())
    }

    /// Who holds a port of `transport`, if anyone.
    pub fn owner(&self, transport: Transport, key: &PortKey) -> Option<Uuid> {
        self.state.lock().ports.get(&(transport, *key)).copied()
    }

    /// Releases a port of `transport` claimed by `tunnel` (no-op if another tunnel owns it).
    pub fn release(&self, transport: Transport, key: &PortKey, tunnel: Uuid) {
        let mut state = self.state.lock();
        if state.ports.get(&(transport, *key)) == Some(&tunnel) {
            state.ports.remove(&(transport, *key));
        }
    }

    /// A fresh client id, unique for this hub process.
    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Arc<TunnelSession> {
        TunnelSession::for_test(None)
    }

    #[test]
    fn a_claimed_port_cannot_be_claimed_by_another_tunnel() {
        let reg = Registry::default();
        let (a, b) = (session(), session());
        let key = ("127.0.0.1".parse().unwrap(), 5000);
        assert_eq!(reg.claim_port(key, a.id), Ok(()));
        assert_eq!(reg.claim_port(key, b.id), Err(a.id));
        reg.release_port(&key, b.id);
        assert_eq!(
            reg.port_owner(&key),
            Some(a.id),
            "only the owner may release"
        );
    }

    #[test]
    fn tcp_and_udp_ports_are_claimed_separately() {
        let reg = Registry::default();
        let (a, b) = (session(), session());
        let key = ("127.0.0.1".parse().unwrap(), 5000);
        assert_eq!(reg.claim_port(key, a.id), Ok(()));
        assert_eq!(reg.claim(Transport::Udp, key, b.id), Ok(()));
        assert_eq!(reg.claim(Transport::Udp, key, a.id), Err(b.id));
        assert_eq!(reg.owner(Transport::Tcp, &key), Some(a.id));
        reg.release(Transport::Udp, &key, b.id);
        assert_eq!(reg.owner(Transport::Udp, &key), None);
        assert_eq!(
            reg.port_owner(&key),
            Some(a.id),
            "the TCP claim is untouched"
        );
        reg.insert(b.clone());
        reg.claim(Transport::Udp, key, b.id).unwrap();
        reg.remove(&b.id, "bye");
        assert_eq!(
            reg.owner(Transport::Udp, &key),
            None,
            "removal frees UDP ports too"
        );
    }

    #[test]
    fn removing_a_tunnel_frees_its_ports_and_cancels_it() {
        let reg = Registry::default();
        let a = session();
        reg.insert(a.clone());
        let key = ("0.0.0.0".parse().unwrap(), 6000);
        reg.claim_port(key, a.id).unwrap();
        reg.remove(&a.id, "bye");
        assert!(a.cancel.is_cancelled());
        assert_eq!(a.close_reason().as_deref(), Some("bye"));
        assert_eq!(reg.port_owner(&key), None);
        assert!(reg.tunnel(&a.id).is_none());
    }

    fn keyed(key_name: &str) -> Arc<TunnelSession> {
        TunnelSession::for_test(Some(key_name))
    }

    /// Inserts `session` and gives it the TCP port `key` as a proxy.
    fn holding(reg: &Registry, session: &Arc<TunnelSession>, key: PortKey) {
        reg.insert(session.clone());
        reg.claim_port(key, session.id).unwrap();
        session.add_proxy(ExposedProxy {
            service: "tcp".into(),
            name: "ssh".into(),
            port: Some(key.1),
            hostname: None,
            claim: Some((Transport::Tcp, key)),
        });
    }

    #[test]
    fn a_lost_sessions_ports_are_held_for_its_key_only() {
        let reg = Registry::default();
        let key = ("127.0.0.1".parse().unwrap(), 7000);
        let alice = keyed("alice");
        holding(&reg, &alice, key);
        assert!(reg.depart(&alice, "lost", Duration::from_secs(60)));
        assert!(alice.cancel.is_cancelled());
        assert!(!reg.depart(&alice, "again", Duration::from_secs(60)));
        assert_eq!(reg.port_owner(&key), None);
        let held = reg.held(Transport::Tcp, &key).unwrap();
        assert_eq!(
            (held.key_name.as_str(), held.proxy.as_str()),
            ("alice", "ssh")
        );
        assert_eq!(
            reg.held_port_of("alice", "tcp", "ssh", Transport::Tcp),
            Some(key)
        );
        assert_eq!(
            reg.held_port_of("alice", "tcp", "ssh", Transport::Udp),
            None
        );

        let bob = keyed("bob");
        reg.insert(bob.clone());
        assert_eq!(reg.claim_port(key, bob.id), Err(alice.id), "another key");
        let anonymous = session();
        reg.insert(anonymous.clone());
        assert_eq!(reg.claim_port(key, anonymous.id), Err(alice.id), "no key");
        assert_eq!(
            reg.claim(Transport::Udp, key, bob.id),
            Ok(()),
            "UDP is apart"
        );

        let back = keyed("alice");
        reg.insert(back.clone());
        assert_eq!(reg.claim_port(key, back.id), Ok(()), "the same key");
        reg.release_port(&key, back.id);
        assert_eq!(
            reg.claim_port(key, bob.id),
            Err(alice.id),
            "a claim released again (its bind failed) is still held"
        );
        reg.claim_port(key, back.id).unwrap();
        reg.remove(&back.id, "disconnected by an operator");
        assert!(reg.held(Transport::Tcp, &key).is_none());
        assert_eq!(
            reg.claim_port(key, bob.id),
            Ok(()),
            "a session the hub removes frees its ports at once"
        );
    }

    #[test]
    fn without_a_key_name_or_a_grace_ports_are_freed_at_once() {
        let reg = Registry::default();
        let key = ("127.0.0.1".parse().unwrap(), 7001);
        let alice = keyed("alice");
        holding(&reg, &alice, key);
        reg.depart(&alice, "lost", Duration::ZERO);
        assert!(reg.held(Transport::Tcp, &key).is_none());
        let anonymous = session();
        holding(&reg, &anonymous, key);
        reg.depart(&anonymous, "lost", Duration::from_secs(60));
        assert!(reg.held(Transport::Tcp, &key).is_none());
        let bob = keyed("bob");
        reg.insert(bob.clone());
        assert_eq!(reg.claim_port(key, bob.id), Ok(()));
    }

    #[test]
    fn a_hold_expires_after_its_grace() {
        let reg = Registry::default();
        let key = ("127.0.0.1".parse().unwrap(), 7002);
        let alice = keyed("alice");
        holding(&reg, &alice, key);
        reg.depart(&alice, "lost", Duration::from_millis(30));
        let bob = keyed("bob");
        reg.insert(bob.clone());
        assert_eq!(reg.claim_port(key, bob.id), Err(alice.id));
        let start = Instant::now();
        while reg.claim_port(key, bob.id).is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "never expired");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(reg.port_owner(&key), Some(bob.id));
    }

    #[test]
    fn racing_tunnels_never_exceed_the_limit() {
        const LIMIT: usize = 3;
        for round in 0..50 {
            let reg = Arc::new(Registry::default());
            let start = Arc::new(std::sync::Barrier::new(8));
            let racers: Vec<_> = (0..8)
                .map(|_| {
                    let (reg, start) = (reg.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        reg.insert_within(session(), LIMIT).is_ok()
                    })
                })
                .collect();
            let admitted = racers
                .into_iter()
                .map(|r| r.join().unwrap())
                .filter(|ok| *ok)
                .count();
            assert_eq!(admitted, LIMIT, "round {round}");
            assert_eq!(reg.tunnel_count(), LIMIT);
        }
    }

    #[test]
    fn client_ids_are_unique_and_nonzero() {
        let reg = Registry::default();
        let a = reg.next_client_id();
        let b = reg.next_client_id();
        assert!(a > 0 && b > a);
    }
}
