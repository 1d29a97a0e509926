//! Which tunnel serves which hostname of an `http`/`https` service.
//!
//! A hostname belongs to one tunnel, unless every tunnel on it joined the same load-balancing
//! group; then requests go round-robin over the group. When a session ends its backends leave
//! every route at once, so new requests only reach tunnels still connected. When the hub *lost*
//! the session (rather than closing it), a hostname it was the last to serve stays held for its
//! key name for the hub's `reconnect_grace`: the same key (or a member of the same group) may
//! claim it, any other is refused with the key name and the time left. One `parking_lot::Mutex`,
//! short critical sections, never held across an `.await`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use uuid::Uuid;

use super::upstream::Pool;
use crate::hub::registry::TunnelSession;
use crate::hub::registry::grace::{GraceTable, Reservation};
use crate::protocol::BasicAuth;

/// One tunnel proxy serving a hostname.
#[derive(Debug)]
pub struct Backend {
    /// Unique for the hub's lifetime.
    pub id: u64,
    /// The tunnel session behind it.
    pub session: Arc<TunnelSession>,
    /// The tunnel's proxy name.
    pub proxy: String,
    /// Credentials clients must present, if any.
    pub auth: Option<BasicAuth>,
    /// Largest request body let through, if limited.
    pub max_body: Option<u64>,
    /// Idle upstream connections to this backend's target.
    pub pool: Pool,
}

/// What a proxy brings to a route.
pub struct BackendSpec {
    /// The tunnel session.
    pub session: Arc<TunnelSession>,
    /// The tunnel's proxy name.
    pub proxy: String,
    /// Credentials clients must present, if any.
    pub auth: Option<BasicAuth>,
    /// Largest request body let through, if limited.
    pub max_body: Option<u64>,
}

struct Route {
    group: Option<String>,
    backends: Vec<Arc<Backend>>,
    turn: usize,
}

/// A route's key: service name and hostname.
type RouteKey = (String, String);

#[derive(Default)]
struct Table {
    routes: HashMap<RouteKey, Route>,
    /// Hostnames of lost sessions, held for their key names.
    held: GraceTable<RouteKey>,
}

/// Hostname routes of every http/https service of a hub.
#[derive(Default)]
pub struct HostRoutes {
    table: Mutex<Table>,
    next_id: AtomicU64,
}

impl HostRoutes {
    /// Claims `host` on `service` for a proxy. Fails with a reason when another tunnel holds
    /// the hostname outside a shared group, or when it is held for another key name.
    pub fn claim(
        &self,
        service: &str,
        host: &str,
        group: Option<&str>,
        spec: BackendSpec,
    ) -> Result<Arc<Backend>, String> {
        let key_name = spec.session.key_name.clone();
        let backend = Arc::new(Backend {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            session: spec.session,
            proxy: spec.proxy,
            auth: spec.auth,
            max_body: spec.max_body,
            pool: Pool::default(),
        });
        let mut table = self.table.lock();
        let table = &mut *table;
        let key = (service.to_owned(), host.to_owned());
        match table.routes.get_mut(&key) {
            None => {
                let now = Instant::now();
                if let Some(held) = table.held.get(&key, now) {
                    let same_key = key_name.as_ref() == Some(&held.key_name);
                    let same_group = held.group.is_some() && held.group.as_deref() == group;
                    if !same_key && !same_group {
                        return Err(held.refusal(&format!("hostname {host}"), now));
                    }
                    table.held.release(&key);
                }
                table.routes.insert(
                    key,
                    Route {
                        group: group.map(str::to_owned),
                        backends: vec![backend.clone()],
                        turn: 0,
                    },
                );
                Ok(backend)
            }
            Some(route) if route.group.is_some() && route.group.as_deref() == group => {
                route.backends.push(backend.clone());
                Ok(backend)
            }
            Some(_) => Err(format!("hostname {host} is in use by another tunnel")),
        }
    }

    /// Whether a hostname is taken on a service, or held for a lost session's key.
    pub fn is_taken(&self, service: &str, host: &str) -> bool {
        let key = (service.to_owned(), host.to_owned());
        let mut table = self.table.lock();
        table.routes.contains_key(&key) || table.held.get(&key, Instant::now()).is_some()
    }

    /// The sessions serving `host` on `service` now.
    pub fn sessions(&self, service: &str, host: &str) -> Vec<Arc<TunnelSession>> {
        let table = self.table.lock();
        table
            .routes
            .get(&(service.to_owned(), host.to_owned()))
            .map(|route| route.backends.iter().map(|b| b.session.clone()).collect())
            .unwrap_or_default()
    }

    /// The backend to send the next request for `host` to (round-robin within a group).
    #[cfg(test)]
    pub fn pick(&self, service: &str, host: &str) -> Option<Arc<Backend>> {
        self.pick_untried(service, host, &[])
    }

    /// The backend to send the next request for `host` to (round-robin within a group),
    /// skipping the backends whose ids are in `tried` (those a request already failed on):
    /// `None` when no other backend serves `host`.
    pub fn pick_untried(&self, service: &str, host: &str, tried: &[u64]) -> Option<Arc<Backend>> {
        let mut table = self.table.lock();
        let route = table
            .routes
            .get_mut(&(service.to_owned(), host.to_owned()))?;
        let count = route.backends.len();
        route.turn = route.turn.wrapping_add(1);
        (0..count)
            .map(|k| &route.backends[route.turn.wrapping_add(k) % count])
            .find(|b| !tried.contains(&b.id))
            .cloned()
    }

    /// Removes every backend of a tunnel session; empty routes are freed at once.
    pub fn remove_tunnel(&self, tunnel_id: &Uuid) {
        self.depart(tunnel_id, None, Duration::ZERO);
    }

    /// Removes every backend of a session the hub lost. A hostname it was the last to serve
    /// stays held for `key_name` for `grace` (with its group, whose members may still join);
    /// without a key name or with a zero `grace` it is freed at once.
    pub fn depart(&self, tunnel_id: &Uuid, key_name: Option<&str>, grace: Duration) {
        let now = Instant::now();
        let mut table = self.table.lock();
        let table = &mut *table;
        for (key, route) in &mut table.routes {
            let Some(last) = route
                .backends
                .iter()
                .find(|b| b.session.id == *tunnel_id)
                .map(|b| b.proxy.clone())
            else {
                continue;
            };
            route.backends.retain(|b| b.session.id != *tunnel_id);
            if let (true, Some(key_name), false) =
                (route.backends.is_empty(), key_name, grace.is_zero())
            {
                let reservation = Reservation {
                    key_name: key_name.to_owned(),
                    tunnel_id: *tunnel_id,
                    service: key.0.clone(),
                    proxy: last,
                    group: route.group.clone(),
                    until: now + grace,
                };
                table.held.hold(key.clone(), reservation, now);
            }
        }
        table.routes.retain(|_, route| !route.backends.is_empty());
    }

    /// What a restart must keep for each key: the hostnames of live sessions that have a key
    /// name, as reservations for `grace` from now, and the hostnames already held; by
    /// (service, hostname).
    pub fn holds_for_restart(&self, grace: Duration) -> Vec<((String, String), Reservation)> {
        let now = Instant::now();
        let table = self.table.lock();
        let mut holds = table.held.live(now);
        for (key, route) in &table.routes {
            // A shared hostname goes to the key of its first backend, as a departure would
            // leave it to its last.
            let Some(backend) = route.backends.iter().find(|b| b.session.key_name.is_some()) else {
                continue;
            };
            let Some(key_name) = backend.session.key_name.clone() else {
                continue;
            };
            holds.push((
                key.clone(),
                Reservation {
                    key_name,
                    tunnel_id: backend.session.id,
                    service: key.0.clone(),
                    proxy: backend.proxy.clone(),
                    group: route.group.clone(),
                    until: now + grace,
                },
            ));
        }
        holds
    }

    /// Holds hostnames a previous run of the hub left held (`holds_for_restart`).
    pub fn restore_holds(&self, holds: Vec<((String, String), Reservation)>) {
        let now = Instant::now();
        let mut table = self.table.lock();
        for (key, reservation) in holds {
            table.held.hold(key, reservation, now);
        }
    }

    /// The hostname held for `key_name`'s proxy `proxy` on `service`, if a lost session of
    /// that key left one behind: a reconnecting tunnel that lets the hub pick gets it back.
    pub fn held_hostname_of(&self, key_name: &str, service: &str, proxy: &str) -> Option<String> {
        self.table
            .lock()
            .held
            .find(Instant::now(), |(s, _), r| {
                s == service && r.key_name == key_name && r.proxy == proxy
            })
            .map(|((_, host), _)| host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(session: &Arc<TunnelSession>) -> BackendSpec {
        BackendSpec {
            session: session.clone(),
            proxy: "p".into(),
            auth: None,
            max_body: None,
        }
    }

    #[test]
    fn a_hostname_in_use_cannot_be_taken_by_another_tunnel() {
        let routes = HostRoutes::default();
        let (a, b) = (TunnelSession::for_test(None), TunnelSession::for_test(None));
        routes.claim("web", "app.x", None, spec(&a)).unwrap();
        let err = routes.claim("web", "app.x", None, spec(&b)).unwrap_err();
        assert!(err.contains("in use by another tunnel"), "{err}");
        assert!(
            routes.claim("web", "app.x", Some("g"), spec(&b)).is_err(),
            "a group cannot join an ungrouped name"
        );
        assert!(
            routes.claim("other", "app.x", None, spec(&b)).is_ok(),
            "services are separate"
        );
    }

    #[test]
    fn a_group_shares_a_hostname_round_robin_and_survives_a_member_leaving() {
        let routes = HostRoutes::default();
        let (a, b) = (TunnelSession::for_test(None), TunnelSession::for_test(None));
        routes.claim("web", "lb.x", Some("g"), spec(&a)).unwrap();
        routes.claim("web", "lb.x", Some("g"), spec(&b)).unwrap();
        let picks: Vec<Uuid> = (0..10)
            .map(|_| routes.pick("web", "lb.x").unwrap().session.id)
            .collect();
        assert!(picks.windows(2).all(|w| w[0] != w[1]), "alternates");
        assert_eq!(picks.iter().filter(|id| **id == a.id).count(), 5);
        assert_eq!(picks.iter().filter(|id| **id == b.id).count(), 5);
        let first = routes.pick("web", "lb.x").unwrap();
        for _ in 0..4 {
            let other = routes.pick_untried("web", "lb.x", &[first.id]).unwrap();
            assert_ne!(other.id, first.id, "a retry goes to the other member");
        }
        let both = [
            first.id,
            routes.pick_untried("web", "lb.x", &[first.id]).unwrap().id,
        ];
        assert!(routes.pick_untried("web", "lb.x", &both).is_none());
        routes.remove_tunnel(&a.id);
        assert!((0..4).all(|_| routes.pick("web", "lb.x").unwrap().session.id == b.id));
        routes.remove_tunnel(&b.id);
        assert!(routes.pick("web", "lb.x").is_none());
        assert!(!routes.is_taken("web", "lb.x"));
    }

    const GRACE: Duration = Duration::from_secs(60);

    #[test]
    fn a_lost_sessions_hostname_is_held_for_its_key() {
        let routes = HostRoutes::default();
        let alice = TunnelSession::for_test(Some("alice"));
        routes.claim("web", "app.x", None, spec(&alice)).unwrap();
        routes.depart(&alice.id, Some("alice"), GRACE);
        assert!(
            routes.pick("web", "app.x").is_none(),
            "no backend serves it"
        );
        assert!(routes.is_taken("web", "app.x"), "random names avoid it");
        assert_eq!(
            routes.held_hostname_of("alice", "web", "p").as_deref(),
            Some("app.x")
        );
        assert_eq!(routes.held_hostname_of("bob", "web", "p"), None);
        let err = routes
            .claim(
                "web",
                "app.x",
                None,
                spec(&TunnelSession::for_test(Some("bob"))),
            )
            .unwrap_err();
        assert!(
            err.starts_with("hostname app.x is reserved for tunnel key `alice`")
                && err.contains("frees up in 60s"),
            "{err}"
        );
        assert!(
            routes
                .claim("web", "app.x", None, spec(&TunnelSession::for_test(None)))
                .is_err()
        );
        let back = TunnelSession::for_test(Some("alice"));
        routes.claim("web", "app.x", None, spec(&back)).unwrap();
        assert_eq!(routes.pick("web", "app.x").unwrap().session.id, back.id);
        // The hub closing a session (operator, reload) frees its names at once.
        routes.remove_tunnel(&back.id);
        assert!(!routes.is_taken("web", "app.x"));
        routes
            .claim(
                "web",
                "app.x",
                None,
                spec(&TunnelSession::for_test(Some("bob"))),
            )
            .unwrap();
    }

    #[test]
    fn a_held_group_hostname_takes_members_of_its_group_and_a_live_group_holds_nothing() {
        let routes = HostRoutes::default();
        let (alice, bob) = (
            TunnelSession::for_test(Some("alice")),
            TunnelSession::for_test(Some("bob")),
        );
        routes
            .claim("web", "lb.x", Some("g"), spec(&alice))
            .unwrap();
        routes.claim("web", "lb.x", Some("g"), spec(&bob)).unwrap();
        routes.depart(&alice.id, Some("alice"), GRACE);
        assert_eq!(
            routes.held_hostname_of("alice", "web", "p"),
            None,
            "bob still serves it"
        );
        routes.depart(&bob.id, Some("bob"), GRACE);
        let carol = TunnelSession::for_test(Some("carol"));
        assert!(routes.claim("web", "lb.x", None, spec(&carol)).is_err());
        assert!(
            routes
                .claim("web", "lb.x", Some("h"), spec(&carol))
                .is_err()
        );
        routes
            .claim("web", "lb.x", Some("g"), spec(&carol))
            .unwrap();
    }

    #[test]
    fn without_a_key_name_or_a_grace_a_hostname_is_freed_at_once() {
        let routes = HostRoutes::default();
        let alice = TunnelSession::for_test(Some("alice"));
        routes.claim("web", "a.x", None, spec(&alice)).unwrap();
        routes.depart(&alice.id, Some("alice"), Duration::ZERO);
        let anonymous = TunnelSession::for_test(None);
        routes.claim("web", "b.x", None, spec(&anonymous)).unwrap();
        routes.depart(&anonymous.id, None, GRACE);
        assert!(!routes.is_taken("web", "a.x") && !routes.is_taken("web", "b.x"));
    }
}
