//! Hubs sharing one Redis (`[cluster]`): one owner per port and hostname across every hub,
//! also when two keys race for one on two hubs; the same key holding it on several hubs; a
//! lockout earned on one hub holding on another; a hub cut from Redis serving what it holds
//! and refusing new claims with the reason, then catching up; a Redis restarted empty given
//! back what the hubs hold; the claims of a hub that died freeing up by themselves.
//!
//! Each test starts its own `redis-server` (Debian package redis-server) on a Unix socket in
//! a temporary directory.

use crate::common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::redis::Redis;
use common::*;
use tunnelize::config::{ClusterConfig, HubConfig, ServiceConfig, ServiceKind, TcpService};
use tunnelize::config::{PortRange, ProxyConfig, TunnelKey};
use tunnelize::hub::inspect::HubView;
use tunnelize::protocol::ProxyOutcome;
use tunnelize::secret::Secret;
use tunnelize::tunnel::Tunnel;

pub(crate) const ALICE: &str = "alice-key-0123456789abcdef";
const BOB: &str = "bob-key-0123456789abcdef";
const LEASE: Duration = Duration::from_secs(1);
/// A lease, the grace of the claims after it, and renewals: far more than any test waits.
pub(crate) const SETTLES: Duration = Duration::from_secs(20);

/// A hub of the cluster in `redis` named `name`: an http service for `test.local` and a tcp
/// service on `tcp_ip` (hubs of one test listen on different addresses, as on different
/// machines), keys alice and bob, a one-second lease and reconnect_grace.
pub(crate) fn member(redis: &Redis, name: &str, tcp_ip: [u8; 4]) -> HubConfig {
    let tcp = ServiceConfig {
        name: "tcp".into(),
        kind: ServiceKind::Tcp(TcpService {
            listen: tcp_ip.into(),
            ports: PortRange { start: 0, end: 0 },
        }),
    };
    let mut config = hub_config(vec![http_any("web", "test.local"), tcp]);
    config.keys = [("alice", ALICE), ("bob", BOB)]
        .into_iter()
        .map(|(name, key)| TunnelKey {
            name: name.into(),
            key: key.into(),
            hostnames: vec![],
        })
        .collect();
    config.reconnect_grace = LEASE;
    config.cluster = Some(Box::new(ClusterConfig {
        redis: redis.url(),
        ca_file: None,
        username: None,
        password: None,
        name: name.into(),
        advertise: format!("{name}.test:7700"),
        lease: LEASE,
    }));
    config
}

/// Starts `config` and waits until it is a member of its cluster.
pub(crate) async fn start_member(config: HubConfig) -> (TestHub, HubView) {
    let (hub, _admin, view) = start_hub_full(config).await;
    eventually("the hub to join its cluster", SETTLES, || {
        let status = view.cluster();
        async move {
            match status {
                Some(status) if status.member => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    (hub, view)
}

pub(crate) fn tunnel_of(
    hub: &TestHub,
    key: &str,
    proxy: ProxyConfig,
) -> tunnelize::config::TunnelConfig {
    let mut config = tunnel_config(hub, vec![proxy]);
    config.key = Some(Secret::new(key));
    config
}

fn host_proxy(hostname: &str, target: SocketAddr) -> ProxyConfig {
    ProxyConfig {
        hostname: Some(hostname.into()),
        ..proxy("site", "web", target, None)
    }
}

/// The reason a tunnel's only proxy was refused, or `None` when it was accepted.
fn refusal(tunnel: &TestTunnel) -> Option<String> {
    match &tunnel.outcomes[0] {
        ProxyOutcome::Accepted { .. } => None,
        ProxyOutcome::Rejected { reason, .. } => Some(reason.clone()),
    }
}

/// A port free on both addresses a moment ago.
fn free_port_on(ips: [[u8; 4]; 2]) -> u16 {
    for _ in 0..100 {
        let probe = std::net::TcpListener::bind(SocketAddr::from((ips[0], 0))).unwrap();
        let port = probe.local_addr().unwrap().port();
        if std::net::TcpListener::bind(SocketAddr::from((ips[1], port))).is_ok() {
            return port;
        }
    }
    panic!("no port free on both {ips:?} in 100 tries");
}

/// What Redis holds at `key`, read with a client of its own.
async fn redis_get(redis: &Redis, key: &str) -> Option<String> {
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    ::redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .ok()?
}

#[tokio::test]
#[ignore = "needs redis-server (Debian package redis-server)"]
async fn two_keys_racing_for_one_hostname_on_two_hubs_get_one_owner_everywhere() {
    let redis = Redis::start().await;
    let (a, _) = start_member(member(&redis, "hub-a", [127, 0, 0, 2])).await;
    let (b, _) = start_member(member(&redis, "hub-b", [127, 0, 0, 3])).await;
    let target = start_echo().await;
    let (alice, bob) = tokio::join!(
        start_tunnel(tunnel_of(&a, ALICE, host_proxy("race", target))),
        start_tunnel(tunnel_of(&b, BOB, host_proxy("race", target))),
    );
    let (winner, loser_key, loser) = match (refusal(&alice), refusal(&bob)) {
        (None, Some(reason)) => ("alice", BOB, reason),
        (Some(reason), None) => ("bob", ALICE, reason),
        other => panic!("exactly one of the two must get race.test.local, not {other:?}"),
    };
    assert!(
        loser.contains(&format!("held in the cluster by tunnel key `{winner}`")),
        "{loser}"
    );
    // The loser's key is refused on either hub; the winner's key may hold it on both.
    let (winner_key, winners_hub, losers_hub) = match winner {
        "alice" => (ALICE, &a, &b),
        _ => (BOB, &b, &a),
    };
    let again = start_tunnel(tunnel_of(
        winners_hub,
        loser_key,
        host_proxy("race", target),
    ))
    .await;
    assert!(
        refusal(&again).is_some(),
        "the loser's key is refused on the winner's hub too"
    );
    let twin = start_tunnel(tunnel_of(
        losers_hub,
        winner_key,
        host_proxy("race", target),
    ))
    .await;
    assert_eq!(
        refusal(&twin),
        None,
        "the winner's key holds it on the other hub too"
    );
    let owner = redis_get(&redis, "tunnelize:claim:host:web:race.test.local").await;
    assert_eq!(owner.as_deref(), Some(format!("key:{winner}").as_str()));
}

#[tokio::test]
#[ignore = "needs redis-server (Debian package redis-server)"]
async fn two_keys_racing_for_one_port_on_two_hubs_get_one_owner_and_it_serves_on_both() {
    let redis = Redis::start().await;
    let ips = [[127, 0, 0, 2], [127, 0, 0, 3]];
    let (a, _) = start_member(member(&redis, "hub-a", ips[0])).await;
    let (b, _) = start_member(member(&redis, "hub-b", ips[1])).await;
    let target = start_echo().await;
    let port = free_port_on(ips);
    let asking = |hub: &TestHub, key| tunnel_of(hub, key, proxy("ssh", "tcp", target, Some(port)));
    let (alice, bob) = tokio::join!(
        start_tunnel(asking(&a, ALICE)),
        start_tunnel(asking(&b, BOB))
    );
    let (winner_key, winners_ip, losers_hub, losers_ip) = match (refusal(&alice), refusal(&bob)) {
        (None, Some(reason)) => {
            assert!(
                reason.contains(&format!("port {port} is held in the cluster")),
                "{reason}"
            );
            (ALICE, ips[0], &b, ips[1])
        }
        (Some(reason), None) => {
            assert!(
                reason.contains(&format!("port {port} is held in the cluster")),
                "{reason}"
            );
            (BOB, ips[1], &a, ips[0])
        }
        other => panic!("exactly one of the two must get port {port}, not {other:?}"),
    };
    let twin = start_tunnel(asking(losers_hub, winner_key)).await;
    assert_eq!(
        refusal(&twin),
        None,
        "the winner's key holds port {port} on the other hub too"
    );
    for ip in [winners_ip, losers_ip] {
        let data = payload(u64::from(port), 4096);
        let back = round_trip(SocketAddr::from((ip, port)), &data).await;
        assert!(
            back == data,
            "port {port} on {ip:?} reaches the winner's target"
        );
    }
}

#[tokio::test]
#[ignore = "needs redis-server (Debian package redis-server)"]
async fn a_lockout_earned_on_one_hub_holds_on_another() {
    let redis = Redis::start().await;
    let with_lockout = |name, ip| HubConfig {
        lockout_failures: 3,
        ..member(&redis, name, ip)
    };
    let (a, _) = start_member(with_lockout("hub-a", [127, 0, 0, 2])).await;
    let (b, _) = start_member(with_lockout("hub-b", [127, 0, 0, 3])).await;
    let login = |hub: &TestHub, key: &str| {
        let mut config = tunnel_config(hub, vec![]);
        config.key = Some(Secret::new(key));
        async move { Tunnel::new(config).unwrap().connect().await.map(|_| ()) }
    };
    for _ in 0..3 {
        assert!(login(&a, "wrong-key-0123456789abcdef").await.is_err());
    }
    let lock = format!("tunnelize:lock:{}", IpAddr::from([127, 0, 0, 1]));
    let client = ::redis::Client::open(redis.url()).unwrap();
    eventually("Redis to hold the lockout hub-a set", SETTLES, || {
        let (client, lock) = (client.clone(), lock.clone());
        async move {
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            let ms: i64 = ::redis::cmd("PTTL")
                .arg(&lock)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            match ms > 0 {
                true => Ok(()),
                false => Err(format!("PTTL {lock} is {ms}")),
            }
        }
    })
    .await;
    let refused = login(&b, ALICE)
        .await
        .expect_err("hub-b refuses the address, even with the right key");
    assert!(refused.to_string().contains("locked out"), "{refused}");
}

#[tokio::test]
#[ignore = "needs redis-server (Debian package redis-server)"]
async fn a_hub_cut_from_redis_serves_what_it_holds_refuses_new_claims_and_catches_up() {
    let mut redis = Redis::start().await;
    let (hub, view) = start_member(member(&redis, "hub-a", [127, 0, 0, 2])).await;
    let target = start_echo().await;
    let served = start_tunnel(tunnel_of(&hub, ALICE, proxy("ssh", "tcp", target, None))).await;
    let port = served.port(0);
    let public = SocketAddr::from(([127, 0, 0, 2], port));
    let key = format!("tunnelize:claim:tcp:{port}");
    assert_eq!(redis_get(&redis, &key).await.as_deref(), Some("key:alice"));

    // Each try asks for a name of its own: one accepted early stays connected.
    let tries = std::sync::atomic::AtomicUsize::new(0);
    let next_name = || {
        format!(
            "new{}",
            tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        )
    };
    redis.kill();
    let refused = eventually("a claim to be refused while Redis is away", SETTLES, || {
        let config = tunnel_of(&hub, BOB, host_proxy(&next_name(), target));
        async move {
            let tunnel = start_tunnel(config).await;
            refusal(&tunnel).ok_or("accepted")
        }
    })
    .await;
    assert!(refused.contains("retry shortly"), "{refused}");
    let data = payload(7, 8192);
    assert!(
        round_trip(public, &data).await == data,
        "the tunnel it holds is still served"
    );
    let errors = metric::<u64>(
        &view.metrics(),
        "tunnelize_cluster_redis_errors_total{hub=\"hub-a\"}",
    );
    assert!(
        errors.is_some_and(|n| n > 0),
        "Redis errors counted: {errors:?}"
    );

    redis.restart_empty().await;
    eventually(
        "the hub to write its claims back into the empty Redis",
        SETTLES,
        || {
            let owner = redis_get(&redis, &key);
            async move { owner.await.filter(|owner| owner == "key:alice") }
        },
    )
    .await;
    let accepted = eventually("a new claim to be accepted again", SETTLES, || {
        let config = tunnel_of(&hub, BOB, host_proxy(&next_name(), target));
        async move {
            let tunnel = start_tunnel(config).await;
            match refusal(&tunnel) {
                None => Ok(tunnel),
                Some(reason) => Err(reason),
            }
        }
    })
    .await;
    assert_eq!(refusal(&accepted), None);
    assert!(
        view.cluster()
            .is_some_and(|status| status.member && status.reachable)
    );
    assert!(
        round_trip(public, &data).await == data,
        "and the old one all along"
    );
}

#[tokio::test]
#[ignore = "needs redis-server (Debian package redis-server)"]
async fn the_claims_of_a_hub_that_died_free_up_after_its_lease_and_grace() {
    let redis = Redis::start().await;
    let (a, _) = start_member(member(&redis, "hub-a", [127, 0, 0, 2])).await;
    let (b, view_b) = start_member(member(&redis, "hub-b", [127, 0, 0, 3])).await;
    let target = start_echo().await;
    let alice = start_tunnel(tunnel_of(&a, ALICE, host_proxy("gone", target))).await;
    assert_eq!(refusal(&alice), None);
    let early = start_tunnel(tunnel_of(&b, BOB, host_proxy("gone", target))).await;
    assert!(
        refusal(&early).is_some(),
        "held for alice while hub-a lives"
    );

    // Dies without a word: its task is dropped, nothing is released or left.
    a.task.abort();
    let _ = a.task.await;
    alice.stop.cancel();
    eventually(
        "hub-a to drop out of the cluster's members",
        SETTLES,
        || {
            let members = view_b.cluster_members();
            async move {
                let names: Vec<String> = match members.await {
                    Some(Ok(members)) => members.into_iter().map(|m| m.name).collect(),
                    other => return Err(format!("{other:?}")),
                };
                match names.iter().any(|name| name == "hub-a") {
                    false => Ok(()),
                    true => Err(format!("members {names:?}")),
                }
            }
        },
    )
    .await;
    eventually(
        "bob to get the hostname once alice's claim expired",
        SETTLES,
        || {
            let config = tunnel_of(&b, BOB, host_proxy("gone", target));
            async move {
                let tunnel = start_tunnel(config).await;
                match refusal(&tunnel) {
                    None => Ok(()),
                    Some(reason) => Err(reason),
                }
            }
        },
    )
    .await;
}

#[tokio::test]
#[ignore = "needs redis-server (Debian package redis-server)"]
async fn tunnelizectl_cluster_lists_every_hub_and_a_hub_alone_says_it_is_in_none() {
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hub-a.sock");
    let with_socket = HubConfig {
        admin: admin_on(&socket),
        ..member(&redis, "hub-a", [127, 0, 0, 2])
    };
    let (_a, _) = start_member(with_socket).await;
    let (_b, _) = start_member(member(&redis, "hub-b", [127, 0, 0, 3])).await;

    let out = ctl(&socket, &["--json", "cluster"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: tunnelize::admin::model::ClusterInfo = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (info.name.as_str(), info.member, info.reachable),
        ("hub-a", true, true)
    );
    let hubs: Vec<(&str, &str)> = info
        .members
        .iter()
        .map(|m| (m.name.as_str(), m.advertise.as_str()))
        .collect();
    assert_eq!(
        hubs,
        [("hub-a", "hub-a.test:7700"), ("hub-b", "hub-b.test:7700")]
    );
    assert!(
        info.members
            .iter()
            .all(|m| m.epoch > 0 && m.lease_left_ms > 0)
    );
    assert_ne!(
        info.members[0].epoch, info.members[1].epoch,
        "each join has its own token"
    );
    let table = ctl(&socket, &["cluster"]).await;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("hub-b.test:7700") && table.contains("member"),
        "{table}"
    );

    let alone_socket = dir.path().join("alone.sock");
    let (_alone, _, _) = start_hub_full(HubConfig {
        admin: admin_on(&alone_socket),
        ..hub_config(vec![tcp_any("tcp")])
    })
    .await;
    let out = ctl(&alone_socket, &["cluster"]).await;
    assert_eq!(out.status.code(), Some(3), "not found");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("in no cluster") && said.contains("[cluster]"),
        "{said}"
    );
}

#[tokio::test]
#[ignore = "needs redis-server (Debian package redis-server)"]
async fn a_hub_reaches_redis_over_tls_with_a_private_ca_and_a_password_and_not_without_them() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::TestCa::new(dir.path());
    let (cert, _) = ca.issue(dir.path(), "redis", "127.0.0.1");
    let redis = Redis::start_tls(cert, "redis-password-0123").await;
    let over_tls = |ca_file: Option<std::path::PathBuf>, password: &str| {
        let mut config = member(&redis, "hub-tls", [127, 0, 0, 2]);
        let cluster = config.cluster.as_mut().unwrap();
        cluster.redis = redis.tls_url();
        cluster.ca_file = ca_file;
        cluster.password = Some(Secret::new(password));
        config
    };

    // The system's roots do not know the test CA, and a wrong password is refused: neither
    // hub gets an answer from Redis, and neither says the password it tried.
    for (what, config) in [
        ("without ca_file", over_tls(None, "redis-password-0123")),
        (
            "with a wrong password",
            over_tls(Some(ca.file.clone()), "not-the-password"),
        ),
    ] {
        let (_hub, _admin, view) = start_hub_full(config).await;
        let answer = view.cluster_members().await.expect("a hub with [cluster]");
        let error = answer.expect_err(what);
        assert!(!error.contains("password-0123"), "{what}: {error}");
        let status = view.cluster().unwrap();
        assert!(!status.member && !status.reachable, "{what}: {status:?}");
    }

    let (_hub, view) = start_member(over_tls(Some(ca.file.clone()), "redis-password-0123")).await;
    let members = view.cluster_members().await.unwrap().unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].name, "hub-tls");
    let status = view.cluster().unwrap();
    assert!(status.reachable, "{status:?}");
    assert!(
        !status.redis.contains("redis-password"),
        "no password in {}",
        status.redis
    );
}
