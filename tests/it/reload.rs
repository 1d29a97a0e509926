//! Reloading a running hub: services and keys change, live connections of what did not change
//! survive, tunnels the new configuration no longer admits are told why, and a configuration
//! that cannot be applied is refused with the old one still running. In-process for the rules,
//! and the built binaries for `SIGHUP` and `tunnelizectl reload`, of the hub and of the tunnel
//! daemon.

use crate::common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use common::*;
use tunnelize::config::{HubConfig, ServiceKind, TunnelKey};
use tunnelize::hub::inspect::HubView;
use tunnelize::secret::Secret;
use tunnelize::tunnel::{Tunnel, TunnelError};

const SECOND_KEY: &str = "second-key-0123456789";

/// A hub in this process, with a handle on its admin view.
async fn hub_with_view(config: HubConfig) -> (TestHub, HubView) {
    let (hub, _, view) = start_hub_full(config).await;
    (hub, view)
}

fn second_key() -> TunnelKey {
    TunnelKey {
        name: "second".into(),
        key: SECOND_KEY.into(),
        hostnames: vec![],
    }
}

async fn echo_on(socket: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    socket.write_all(data).await.unwrap();
    let mut back = vec![0; data.len()];
    tokio::time::timeout(DEADLINE, socket.read_exact(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    back
}

async fn port_closed(addr: SocketAddr) {
    eventually(&format!("{addr} to close"), DEADLINE, || async {
        TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_reload_changes_services_and_keys_and_live_connections_of_the_rest_survive() {
    let mut config = hub_config(vec![tcp_any("tcp"), tcp_any("old")]);
    config.keys.push(second_key());
    let (hub, view) = hub_with_view(config.clone()).await;
    let echo = start_echo().await;
    let kept = start_tunnel(tunnel_config(&hub, vec![proxy("echo", "tcp", echo, None)])).await;
    let mut second = tunnel_config(&hub, vec![proxy("echo", "tcp", echo, None)]);
    second.key = Some(Secret::new(SECOND_KEY));
    let keyless = start_tunnel(second.clone()).await;
    let on_old = start_tunnel(tunnel_config(&hub, vec![proxy("echo", "old", echo, None)])).await;
    let mut live = connect(kept.addr(0)).await;
    assert_eq!(echo_on(&mut live, b"before").await, b"before");

    // Remove service `old` and the second key, add `extra`.
    let mut new = config.clone();
    new.services = vec![tcp_any("tcp"), tcp_any("extra")];
    new.keys.retain(|k| k.name != "second");
    let summary = view.reload(new).await.expect("the reload applies");
    assert!(
        summary.contains("1 added, 1 removed, 0 changed"),
        "{summary}"
    );
    assert!(summary.contains("2 tunnels disconnected"), "{summary}");

    // The untouched tunnel's live client goes on over the same connection.
    assert_eq!(echo_on(&mut live, b"after").await, b"after");
    // The tunnel using the removed key and the one on the removed service are gone, ports too.
    port_closed(keyless.addr(0)).await;
    port_closed(on_old.addr(0)).await;
    let names: Vec<String> = view.services().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["tcp", "extra"]);
    // New sessions follow the new configuration.
    let extra = start_tunnel(tunnel_config(
        &hub,
        vec![proxy("echo", "extra", echo, None)],
    ))
    .await;
    let mut through_extra = connect(extra.addr(0)).await;
    assert_eq!(echo_on(&mut through_extra, b"extra").await, b"extra");
    match Tunnel::new(second).unwrap().connect().await {
        Err(TunnelError::AuthFailed(_)) => {}
        Err(other) => panic!("expected an auth failure, got {other}"),
        Ok(_) => panic!("a removed key still authenticates"),
    }
}

#[tokio::test]
async fn a_reload_that_cannot_be_applied_changes_nothing() {
    let (hub, view) = hub_with_view(hub_config(vec![tcp_any("tcp")])).await;
    let echo = start_echo().await;
    let tunnel = start_tunnel(tunnel_config(&hub, vec![proxy("echo", "tcp", echo, None)])).await;
    // No key at all: refused (fail closed).
    let mut keyless = hub_config(vec![tcp_any("tcp"), tcp_any("more")]);
    keyless.keys.clear();
    let refused = view.reload(keyless).await.unwrap_err();
    assert!(refused.contains("no tunnel key"), "{refused}");
    // A new http service on an address in use: refused before anything changes.
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut busy = http_any("web", "reload.test");
    if let ServiceKind::Http(h) = &mut busy.kind {
        h.listen = taken.local_addr().unwrap();
    }
    let mut clash = hub_config(vec![tcp_any("tcp"), tcp_any("more"), busy]);
    clash.listen = hub.addr;
    let refused = view.reload(clash).await.unwrap_err();
    assert!(
        refused.contains("service `web`: cannot listen"),
        "{refused}"
    );
    let names: Vec<String> = view.services().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["tcp"], "the old configuration runs on");
    assert_eq!(round_trip(tunnel.addr(0), b"still").await, b"still");
}

#[tokio::test]
async fn an_http_service_added_by_a_reload_serves_and_one_removed_stops_listening() {
    let config = hub_config(vec![tcp_any("tcp")]);
    let (_hub, view) = hub_with_view(config.clone()).await;
    let mut with_web = config.clone();
    with_web.services.push(http_any("web", "reload.test"));
    view.reload(with_web).await.unwrap();
    let web = view.service("web").expect("the new service is listed");
    let addr: SocketAddr = web.listen.parse().unwrap();
    assert_ne!(addr.port(), 0, "the listed address is the bound one");
    let mut socket = connect(addr).await;
    socket
        .write_all(b"GET / HTTP/1.1\r\nHost: nobody.reload.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(DEADLINE, socket.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    view.reload(config).await.unwrap();
    port_closed(addr).await;
    assert!(view.service("web").is_none());
}

// ---- the binaries: SIGHUP and tunnelizectl reload ----

fn hub_file(dir: &std::path::Path, services: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n[admin]\nsocket = \"{}\"\n[[keys]]\n\
         name = \"t\"\nkey = \"{KEY}\"\n{services}",
        dir.join("state").display(),
        dir.join("hub.sock").display()
    )
}

const TCP: &str = "[services.tcp]\nkind = \"tcp\"\nlisten = \"127.0.0.1\"\nports = \"0\"\n";
const MORE: &str = "[services.more]\nkind = \"tcp\"\nlisten = \"127.0.0.1\"\nports = \"0\"\n";

async fn service_names(socket: &std::path::Path) -> Option<Vec<String>> {
    let out = ctl(socket, &["--json", "list-services"]).await;
    let services: Vec<tunnelize::admin::model::ServiceInfo> =
        serde_json::from_slice(&out.stdout).ok()?;
    let mut names: Vec<String> = services.into_iter().map(|s| s.name).collect();
    names.sort();
    Some(names)
}

type Log = tokio::io::Lines<BufReader<tokio::process::ChildStderr>>;

/// Starts the built `tunnelize ROLE -c FILE`, with its log on a pipe.
fn spawn_daemon(role: &str, file: &std::path::Path) -> (tokio::process::Child, Log) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tunnelize"))
        .args([role, "-c"])
        .arg(file)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = BufReader::new(child.stderr.take().unwrap()).lines();
    (child, log)
}

/// What `systemctl reload` does.
fn sighup(child: &tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// The next log line holding every one of `needles`.
async fn log_line(log: &mut Log, needles: &[&str]) -> String {
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = log.next_line().await.unwrap() {
            if needles.iter().all(|n| line.contains(n)) {
                return line;
            }
        }
        panic!("the daemon exited before logging {needles:?}");
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn tunnelizectl_reload_and_sighup_apply_the_file_and_a_broken_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hub.toml");
    let socket = dir.path().join("hub.sock");
    std::fs::write(&file, hub_file(dir.path(), TCP)).unwrap();
    let (mut hub, mut log) = spawn_daemon("hub", &file);
    eventually("the hub's API", DEADLINE, || async {
        (service_names(&socket).await? == ["tcp"]).then_some(())
    })
    .await;

    std::fs::write(&file, "listen = \"127.0.0.1:0\"\nnot toml at all [").unwrap();
    let refused = ctl(&socket, &["reload"]).await;
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("refused") && stderr.contains("hub.toml"),
        "{stderr}"
    );
    assert_eq!(service_names(&socket).await.unwrap(), ["tcp"]);

    std::fs::write(&file, hub_file(dir.path(), &format!("{TCP}{MORE}"))).unwrap();
    let applied = ctl(&socket, &["reload"]).await;
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert!(String::from_utf8_lossy(&applied.stdout).contains("1 added"));
    assert_eq!(service_names(&socket).await.unwrap(), ["more", "tcp"]);

    std::fs::write(&file, hub_file(dir.path(), MORE)).unwrap();
    sighup(&hub);
    eventually("the SIGHUP reload", DEADLINE, || async {
        (service_names(&socket).await? == ["more"]).then_some(())
    })
    .await;
    // The SIGHUP reload is the one that removes a service.
    let reloaded = log_line(&mut log, &["reloaded:", "1 removed"]).await;
    assert!(reloaded.contains("1 services"), "{reloaded}");
    hub.start_kill().unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), hub.wait()).await;
}

// ---- the tunnel daemon: SIGHUP and tunnelizectl reload on its socket ----

fn tunnel_file(hub: &TestHub, socket: &std::path::Path, proxies: &[(&str, SocketAddr)]) -> String {
    let mut text = format!(
        "hub_address = \"{}\"\nhub_server_name = \"localhost\"\nhub_cert_sha256 = \"{}\"\n\
         key = \"{KEY}\"\n[admin]\nsocket = \"{}\"\n",
        hub.addr,
        hub.fingerprint,
        socket.display()
    );
    for (name, target) in proxies {
        text.push_str(&format!(
            "[[proxies]]\nname = \"{name}\"\nservice = \"tcp\"\ntarget = \"{target}\"\n"
        ));
    }
    text
}

/// The tunnel's proxies and their public ports, once it is connected and all are live.
async fn live_proxies(socket: &std::path::Path) -> Option<Vec<(String, SocketAddr)>> {
    let out = ctl(socket, &["--json", "status"]).await;
    let status: tunnelize::admin::model::TunnelStatus = serde_json::from_slice(&out.stdout).ok()?;
    if status.state != "connected" {
        return None;
    }
    let mut live = Vec::new();
    for p in status.proxies {
        if p.state != "live" {
            return None;
        }
        let port: u16 = p.public?.parse().ok()?;
        live.push((p.name, SocketAddr::from(([127, 0, 0, 1], port))));
    }
    live.sort();
    Some(live)
}

fn names(live: &[(String, SocketAddr)]) -> Vec<&str> {
    live.iter().map(|(name, _)| name.as_str()).collect()
}

#[tokio::test]
async fn a_tunnel_daemon_applies_its_file_on_reload_and_sighup_and_refuses_a_broken_one() {
    let hub = start_hub(vec![tcp_any("tcp")]).await;
    let (echo_a, echo_b) = (start_echo().await, start_echo().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tunnel.toml");
    let socket = dir.path().join("tunnel.sock");
    std::fs::write(&file, tunnel_file(&hub, &socket, &[("a", echo_a)])).unwrap();
    let (mut tunnel, mut log) = spawn_daemon("tunnel", &file);
    let first = eventually("the tunnel to connect", DEADLINE, || async {
        live_proxies(&socket).await.filter(|l| l.len() == 1)
    })
    .await;
    assert_eq!(round_trip(first[0].1, b"before").await, b"before");

    // The same file: nothing to do, the session stays.
    let same = ctl(&socket, &["reload"]).await;
    assert!(
        same.status.success(),
        "{}",
        String::from_utf8_lossy(&same.stderr)
    );
    assert!(String::from_utf8_lossy(&same.stdout).contains("configuration unchanged"));

    // A broken file is refused with where it is broken; the session and its port stay.
    std::fs::write(&file, "hub_address = 7\n").unwrap();
    let refused = ctl(&socket, &["reload"]).await;
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("refused") && stderr.contains("tunnel.toml"),
        "{stderr}"
    );
    assert_eq!(live_proxies(&socket).await, Some(first.clone()));
    assert_eq!(round_trip(first[0].1, b"still").await, b"still");

    // A proxy added by `tunnelizectl reload` goes live next to the one that stayed.
    let both_file = tunnel_file(&hub, &socket, &[("a", echo_a), ("b", echo_b)]);
    std::fs::write(&file, both_file).unwrap();
    let applied = ctl(&socket, &["reload"]).await;
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let said = String::from_utf8_lossy(&applied.stdout);
    assert!(said.contains("proxies 1 added (b)"), "{said}");
    let both = eventually("both proxies live", DEADLINE, || async {
        live_proxies(&socket).await.filter(|l| l.len() == 2)
    })
    .await;
    assert_eq!(names(&both), ["a", "b"]);
    for (name, addr) in &both {
        assert_eq!(round_trip(*addr, name.as_bytes()).await, name.as_bytes());
    }

    // SIGHUP (what `systemctl reload` sends) removes one.
    std::fs::write(&file, tunnel_file(&hub, &socket, &[("b", echo_b)])).unwrap();
    sighup(&tunnel);
    let left = eventually("the SIGHUP reload", DEADLINE, || async {
        live_proxies(&socket).await.filter(|l| names(l) == ["b"])
    })
    .await;
    assert_eq!(round_trip(left[0].1, b"after").await, b"after");
    let reloaded = log_line(&mut log, &["configuration reloaded", "1 removed (a)"]).await;
    assert!(!reloaded.contains(KEY), "{reloaded}");
    tunnel.start_kill().unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), tunnel.wait()).await;
}
