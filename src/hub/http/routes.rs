//! Which tunnel serves which hostname of an `http`/`https` service.
//!
//! A hostname belongs to one tunnel, unless every tunnel on it joined the same load-balancing
//! group; then requests go round-robin over the group. When a session ends its backends leave
//! every route at once, so new requests only reach tunnels still connected. One
//! `std::sync::Mutex`, short critical sections, never held across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use uuid::Uuid;

use super::upstream::Pool;
use crate::hub::registry::TunnelSession;
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

/// Hostname routes of every http/https service of a hub.
#[derive(Default)]
pub struct HostRoutes {
    routes: Mutex<HashMap<(String, String), Route>>,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl HostRoutes {
    /// Claims `host` on `service` for a proxy. Fails with a reason when another tunnel holds
    /// the hostname outside a shared group.
    pub fn claim(
        &self,
        service: &str,
        host: &str,
        group: Option<&str>,
        spec: BackendSpec,
    ) -> Result<Arc<Backend>, String> {
        let backend = Arc::new(Backend {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            session: spec.session,
            proxy: spec.proxy,
            auth: spec.auth,
            max_body: spec.max_body,
            pool: Pool::default(),
        });
        let mut routes = lock(&self.routes);
        let key = (service.to_owned(), host.to_owned());
        match routes.get_mut(&key) {
            None => {
                routes.insert(
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

    /// Whether a hostname is taken on a service.
    pub fn is_taken(&self, service: &str, host: &str) -> bool {
        lock(&self.routes).contains_key(&(service.to_owned(), host.to_owned()))
    }

    /// The backend to send the next request for `host` to (round-robin within a group).
    pub fn pick(&self, service: &str, host: &str) -> Option<Arc<Backend>> {
        self.pick_untried(service, host, &[])
    }

    /// Like [`pick`](Self::pick), skipping the backends whose ids are in `tried` (those a
    /// request already failed on): `None` when no other backend serves `host`.
    pub fn pick_untried(&self, service: &str, host: &str, tried: &[u64]) -> Option<Arc<Backend>> {
        let mut routes = lock(&self.routes);
        let route = routes.get_mut(&(service.to_owned(), host.to_owned()))?;
        let count = route.backends.len();
        route.turn = route.turn.wrapping_add(1);
        (0..count)
            .map(|k| &route.backends[route.turn.wrapping_add(k) % count])
            .find(|b| !tried.contains(&b.id))
            .cloned()
    }

    /// Removes every backend of a tunnel session; empty routes are freed.
    pub fn remove_tunnel(&self, tunnel_id: &Uuid) {
        let mut routes = lock(&self.routes);
        for route in routes.values_mut() {
            route.backends.retain(|b| b.session.id != *tunnel_id);
        }
        routes.retain(|_, route| !route.backends.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    fn spec(session: &Arc<TunnelSession>) -> BackendSpec {
        BackendSpec {
            session: session.clone(),
            proxy: "p".into(),
            auth: None,
            max_body: None,
        }
    }

    fn session() -> Arc<TunnelSession> {
        Arc::new(TunnelSession::new(
            "t".into(),
            None,
            "127.0.0.1:1".parse().unwrap(),
            &CancellationToken::new(),
        ))
    }

    #[test]
    fn a_hostname_in_use_cannot_be_taken_by_another_tunnel() {
        let routes = HostRoutes::default();
        let (a, b) = (session(), session());
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
        let (a, b) = (session(), session());
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
}
