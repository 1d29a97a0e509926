//! Reconnecting: a tunnel the hub lost keeps its ports and hostnames for its key for the hub's
//! `reconnect_grace`, so its tunnel gets them back and another key is refused meanwhile; a
//! tunnel the hub disconnects itself frees them at once; and `[limits] tunnels` holds when
//! tunnels race for the last place.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::web::{App, start_app};
use common::*;
use tunnelize::config::{HubConfig, Limits, ProxyConfig, TunnelConfig, TunnelKey};
use tunnelize::protocol::ProxyOutcome;
use tunnelize::secret::Secret;
use tunnelize::tunnel::{Tunnel, TunnelError};

const ALICE: &str = "alice-key-0123456789";
const BOB: &str = "bob-key-0123456789ab";

/// A hub with a tcp and an http service and two keys, `alice` and `bob`.
fn two_keys(grace: Duration) -> HubConfig {
    let mut config = hub_config(vec![tcp_any("tcp"), http_any("web", "test.local")]);
    config.keys = [("alice", ALICE), ("bob", BOB)]
        .into_iter()
        .map(|(name, key)| TunnelKey {
            name: name.into(),
            key: key.into(),
            hostnames: vec![],
        })
        .collect();
    config.reconnect_grace = grace;
    config
}

fn with_key(hub: &TestHub, key: &str, proxies: Vec<ProxyConfig>) -> TunnelConfig {
    let mut config = tunnel_config(hub, proxies);
    config.key = Some(Secret::new(key));
    config
}

fn site(name: &str, target: SocketAddr, hostname: Option<&str>) -> ProxyConfig {
    ProxyConfig {
        name: name.into(),
        service: "web".into(),
        target: target.to_string(),
        hostname: hostname.map(str::to_owned),
        ..Default::default()
    }
}

/// Two proxies: `ssh` on the tcp service to `echo` (on `port`, or one the hub picks) and `site`
/// as app.test.local to `app`.
fn ssh_and_site(echo: SocketAddr, app: &App, port: Option<u16>) -> Vec<ProxyConfig> {
    vec![
        proxy("ssh", "tcp", echo, port),
        site("site", app.addr, Some("app")),
    ]
}

fn hostname(outcome: &ProxyOutcome) -> String {
    match outcome {
        ProxyOutcome::Accepted {
            hostname: Some(h), ..
        } => h.clone(),
        other => panic!("no hostname: {other:?}"),
    }
}

fn rejection(outcome: &ProxyOutcome) -> Option<&str> {
    match outcome {
        ProxyOutcome::Rejected { reason, .. } => Some(reason),
        ProxyOutcome::Accepted { .. } => None,
    }
}

/// Ends a tunnel without a word, as a crash or a broken network would: its connections just
/// close (tunnels have no goodbye message).
async fn vanish(tunnel: TestTunnel) {
    tunnel.task.abort();
    let _ = tunnel.task.await;
}

#[tokio::test]
async fn a_lost_tunnel_gets_its_port_and_hostnames_back_and_another_key_is_refused_meanwhile() {
    let (hub, _admin, _view) = start_hub_full(two_keys(Duration::from_secs(60))).await;
    let web = hub.services["web"];
    let echo = start_echo().await;
    let app = start_app("alice-app").await;
    // Port and random hostname chosen by the hub, one hostname asked for.
    let alices = vec![
        proxy("ssh", "tcp", echo, None),
        site("site", app.addr, Some("app")),
        site("anywhere", app.addr, None),
    ];
    let first = start_tunnel(with_key(&hub, ALICE, alices.clone())).await;
    let port = first.port(0);
    assert_eq!(hostname(&first.outcomes[1]), "app.test.local");
    let random = hostname(&first.outcomes[2]);
    assert_eq!(round_trip(first.addr(0), b"before").await, b"before");
    assert_eq!(http_get(web, "app.test.local").await.unwrap().0, 200);
    vanish(first).await;

    // Bob asks for exactly what alice had: refused, saying who holds it and for how long.
    let bobs = vec![
        proxy("ssh", "tcp", echo, Some(port)),
        site("site", app.addr, Some("app")),
        site(
            "other",
            app.addr,
            Some(random.trim_end_matches(".test.local")),
        ),
    ];
    let reasons = eventually(
        "bob to be refused for alice's reservation",
        DEADLINE,
        || async {
            let bob = Tunnel::new(with_key(&hub, BOB, bobs.clone()))
                .unwrap()
                .connect()
                .await
                .ok()?;
            let reasons: Vec<String> = bob
                .proxies()
                .iter()
                .filter_map(rejection)
                .map(str::to_owned)
                .collect();
            // Until the hub notices the loss, alice's session still holds them ("taken").
            let held = reasons.len() == 3 && reasons.iter().all(|r| r.contains("reserved"));
            held.then_some(reasons)
        },
    )
    .await;
    assert!(
        reasons[0].starts_with(&format!(
            "port {port} is reserved for tunnel key `alice`, whose tunnel disconnected; it frees up in "
        )),
        "{}",
        reasons[0]
    );
    assert!(
        reasons[1].starts_with("hostname app.test.local is reserved for tunnel key `alice`"),
        "{}",
        reasons[1]
    );
    assert!(reasons[2].contains(&random), "{}", reasons[2]);
    for reason in &reasons {
        assert!(
            reason.contains("s unless that tunnel reconnects"),
            "{reason}"
        );
        assert!(!reason.contains(ALICE) && !reason.contains(BOB), "{reason}");
    }
    assert_ne!(
        http_get(web, "app.test.local").await.unwrap().0,
        200,
        "no tunnel serves the hostname meanwhile"
    );

    // Alice's tunnel comes back with the same configuration and gets everything back.
    let again = start_tunnel(with_key(&hub, ALICE, alices)).await;
    assert_eq!(again.port(0), port, "{:?}", again.outcomes);
    assert_eq!(hostname(&again.outcomes[1]), "app.test.local");
    assert_eq!(hostname(&again.outcomes[2]), random);
    assert_eq!(round_trip(again.addr(0), b"after").await, b"after");
    let (status, body) = http_get(web, &random).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("alice-app"), "{body}");
}

#[tokio::test]
async fn after_the_grace_another_key_may_take_what_a_lost_tunnel_held() {
    let hub = start_hub_with(two_keys(Duration::from_secs(1))).await;
    let echo = start_echo().await;
    let app = start_app("app").await;
    let first = start_tunnel(with_key(&hub, ALICE, ssh_and_site(echo, &app, None))).await;
    let port = first.port(0);
    vanish(first).await;
    let bobs = ssh_and_site(echo, &app, Some(port));
    let bob = eventually("the reservation to expire", DEADLINE, || async {
        let bob = start_tunnel(with_key(&hub, BOB, bobs.clone())).await;
        if bob.outcomes.iter().any(|o| rejection(o).is_some()) {
            vanish(bob).await;
            return None;
        }
        Some(bob)
    })
    .await;
    assert_eq!(bob.port(0), port);
    assert_eq!(hostname(&bob.outcomes[1]), "app.test.local");
    assert_eq!(round_trip(bob.addr(0), b"bob").await, b"bob");
}

#[tokio::test]
async fn a_tunnel_the_hub_disconnects_frees_its_port_and_hostname_at_once() {
    let (hub, _admin, view) = start_hub_full(two_keys(Duration::from_secs(60))).await;
    let echo = start_echo().await;
    let app = start_app("app").await;
    let alice = start_tunnel(with_key(&hub, ALICE, ssh_and_site(echo, &app, None))).await;
    let port = alice.port(0);
    assert!(view.disconnect_tunnel(&alice.tunnel_id.to_string()));
    let bobs = ssh_and_site(echo, &app, Some(port));
    // Only the closing listener may delay bob; nothing is held for alice.
    let bob = eventually("bob to take the port", DEADLINE, || async {
        let bob = start_tunnel(with_key(&hub, BOB, bobs.clone())).await;
        for reason in bob.outcomes.iter().filter_map(rejection) {
            assert!(!reason.contains("reserved"), "{reason}");
        }
        match bob.outcomes.iter().all(|o| rejection(o).is_none()) {
            true => Some(bob),
            false => {
                vanish(bob).await;
                None
            }
        }
    })
    .await;
    assert_eq!(bob.port(0), port);
    assert_eq!(hostname(&bob.outcomes[1]), "app.test.local");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_racing_for_the_last_places_are_admitted_exactly_up_to_the_limit() {
    const LIMIT: usize = 3;
    const RACERS: usize = 8;
    for round in 0..5 {
        let mut config = hub_config(vec![]);
        config.limits = Limits {
            tunnels: LIMIT,
            ..Limits::default()
        };
        let hub = start_hub_with(config).await;
        let tunnel = Tunnel::new(tunnel_config(&hub, vec![])).unwrap();
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(RACERS));
        let racers: Vec<_> = (0..RACERS)
            .map(|_| {
                let (tunnel, start) = (tunnel.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    tunnel.connect().await
                })
            })
            .collect();
        let mut admitted = Vec::new();
        for racer in racers {
            match racer.await.unwrap() {
                // Kept open until every racer is done, so each admitted one counts.
                Ok(session) => admitted.push(session),
                Err(e @ TunnelError::Refused(_)) => {
                    assert!(e.to_string().contains("maximum of 3 tunnels"), "{e}")
                }
                Err(other) => panic!("round {round}: unexpected error {other}"),
            }
        }
        assert_eq!(admitted.len(), LIMIT, "round {round}");
        hub.stop.cancel();
    }
}

#[tokio::test]
async fn a_tunnel_back_before_the_hub_noticed_its_dead_session_gets_its_claims_after_a_check() {
    let hub = start_hub_with(two_keys(Duration::from_secs(60))).await;
    let echo = start_echo().await;
    let app = start_app("app").await;
    let proxies = vec![
        proxy("ssh", "tcp", echo, None),
        site("site", app.addr, Some("app")),
        site("anywhere", app.addr, None),
    ];
    // A session whose tunnel went silent: connected, but it never sends or answers anything
    // again, and the hub would only notice after three heartbeat intervals (30s here).
    let silent = Tunnel::new(with_key(&hub, ALICE, proxies.clone()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let port = match &silent.proxies()[0] {
        ProxyOutcome::Accepted { port: Some(p), .. } => *p,
        other => panic!("{other:?}"),
    };
    let random = hostname(&silent.proxies()[2]);
    // Its tunnel reconnects: the hub checks the old session, which does not answer, so the
    // new one gets the port and hostname now instead of a refusal.
    let again = start_tunnel(with_key(&hub, ALICE, proxies)).await;
    assert_eq!(again.port(0), port, "{:?}", again.outcomes);
    assert_eq!(hostname(&again.outcomes[1]), "app.test.local");
    assert_eq!(hostname(&again.outcomes[2]), random);
    assert_eq!(round_trip(again.addr(0), b"back").await, b"back");
    let web = hub.services["web"];
    assert_eq!(http_get(web, "app.test.local").await.unwrap().0, 200);
    drop(silent);
}

#[tokio::test]
async fn a_second_tunnel_of_a_key_cannot_take_what_a_live_one_holds() {
    let hub = start_hub_with(two_keys(Duration::from_secs(60))).await;
    let echo = start_echo().await;
    let app = start_app("app").await;
    let first = start_tunnel(with_key(&hub, ALICE, ssh_and_site(echo, &app, None))).await;
    let port = first.port(0);
    let second = start_tunnel(with_key(&hub, ALICE, ssh_and_site(echo, &app, Some(port)))).await;
    let reasons: Vec<&str> = second.outcomes.iter().filter_map(rejection).collect();
    assert_eq!(reasons.len(), 2, "{:?}", second.outcomes);
    assert!(
        reasons[0].starts_with(&format!(
            "port {port} is taken by another tunnel of key `alice` that is still connected"
        )),
        "{}",
        reasons[0]
    );
    assert!(
        reasons[1]
            .starts_with("hostname app.test.local is in use by another tunnel of key `alice`"),
        "{}",
        reasons[1]
    );
    // The first one answered the check and keeps serving.
    assert_eq!(round_trip(first.addr(0), b"still").await, b"still");
}
