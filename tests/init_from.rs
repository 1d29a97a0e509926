//! `tunnelize tunnel --init-from` and `tunnelize tunnel -s SERVICE -p PORT`, the built binary
//! against a live in-process hub: the written configuration passes `check-config` and connects,
//! and a one-off tunnel forwards a client.

mod common;

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use common::*;
use tunnelize::config::{AdminConfig, TunnelConfig};
use tunnelize::protocol::ProxyOutcome;
use tunnelize::tunnel::Tunnel;

const MONITOR_KEY: &str = "monitoring-key-0123456789abcdef";

async fn hub_with_admin() -> (TestHub, std::net::SocketAddr) {
    let mut config = hub_config(vec![tcp_any("tcp"), tcp_any("other")]);
    config.admin = AdminConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        key: Some(MONITOR_KEY.into()),
        ..AdminConfig::default()
    };
    let (hub, listeners) = start_hub_with_admin(config).await;
    (hub, listeners.tls.unwrap())
}

async fn tunnelize(args: &[&str]) -> std::process::Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tunnelize"));
    command
        .args(args)
        .env_remove("TUNNELIZE_KEY")
        .kill_on_drop(true);
    tokio::time::timeout(DEADLINE, command.output())
        .await
        .expect("tunnelize finishes in time")
        .expect("tunnelize runs")
}

#[tokio::test]
async fn init_from_writes_a_config_that_check_config_accepts_and_that_connects() {
    let (hub, admin) = hub_with_admin().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tunnel.toml");
    let file_arg = file.to_str().unwrap();
    let fingerprint = hub.fingerprint.to_string();
    let admin_arg = admin.to_string();
    let hub_addr = hub.addr.to_string();
    let args = [
        "tunnel",
        "-c",
        file_arg,
        "--init-from",
        &admin_arg,
        "-a",
        KEY,
        "--fingerprint",
        &fingerprint,
        "--hub-address",
        &hub_addr,
    ];
    let out = tunnelize(&args).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the file holds a key");

    let check = tunnelize(&["check-config", file_arg]).await;
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("2 proxies"));

    let mut config = TunnelConfig::load(&file).unwrap();
    config.hub_server_name = "localhost".into();
    let session = Tunnel::new(config).unwrap().connect().await.unwrap();
    assert!(
        session
            .proxies()
            .iter()
            .all(|p| matches!(p, ProxyOutcome::Accepted { .. })),
        "{:?}",
        session.proxies()
    );

    // A second run does not overwrite the file; a wrong key is refused by the hub.
    let again = tunnelize(&args).await;
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let other = dir.path().join("other.toml");
    let wrong = [
        "tunnel",
        "-c",
        other.to_str().unwrap(),
        "--init-from",
        &admin_arg,
        "-a",
        "not-a-key-0123456789",
        "--fingerprint",
        &fingerprint,
    ];
    let refused = tunnelize(&wrong).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(!other.exists());
    assert!(!String::from_utf8_lossy(&refused.stderr).contains("not-a-key-0123456789"));
}

#[tokio::test]
async fn a_one_off_tunnel_forwards_one_local_port_through_the_named_service() {
    let (hub, _) = hub_with_admin().await;
    let echo = start_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tunnel.toml");
    std::fs::write(
        &file,
        format!(
            "hub_address = \"{}\"\nhub_server_name = \"localhost\"\nhub_cert_sha256 = \"{}\"\n\
             key = \"{KEY}\"\n[[proxies]]\nname = \"unused\"\nservice = \"other\"\n\
             target = \"127.0.0.1:1\"\n",
            hub.addr, hub.fingerprint
        ),
    )
    .unwrap();
    let port = echo.port().to_string();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tunnelize"))
        .args([
            "tunnel",
            "-c",
            file.to_str().unwrap(),
            "-s",
            "tcp",
            "-p",
            &port,
        ])
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let public = tokio::time::timeout(DEADLINE, async {
        let mut live = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            assert!(
                !line.contains('\x1b'),
                "no colour codes in a pipe: {line:?}"
            );
            if line.contains("proxy is live") {
                live.push(line.clone());
                if let Some(port) = line.split("port=").nth(1) {
                    let digits: String = port.chars().take_while(char::is_ascii_digit).collect();
                    return (digits.parse::<u16>().unwrap(), live);
                }
            }
        }
        panic!("the tunnel exited before its proxy was live");
    })
    .await
    .expect("the proxy goes live in time");
    let (public, live) = public;
    assert!(
        live.iter().all(|l| !l.contains("unused")),
        "only the one-off proxy: {live:?}"
    );
    let mut client = connect(std::net::SocketAddr::from(([127, 0, 0, 1], public))).await;
    client.write_all(b"one-off").await.unwrap();
    client.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(DEADLINE, client.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"one-off");
    child.kill().await.unwrap();
}

/// Runs `tunnelize tunnel --init-from` against `hub`, writing `tunnel-demo.toml` in `dir`;
/// the written file's owner, group and mode.
async fn init_into(
    hub: &TestHub,
    admin: std::net::SocketAddr,
    dir: &std::path::Path,
) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let file = dir.join("tunnel-demo.toml");
    let out = tunnelize(&[
        "tunnel",
        "-c",
        file.to_str().unwrap(),
        "--init-from",
        &admin.to_string(),
        "-a",
        KEY,
        "--fingerprint",
        &hub.fingerprint.to_string(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = std::fs::metadata(&file).unwrap();
    (meta.uid(), meta.gid(), meta.mode() & 0o777)
}

#[tokio::test]
async fn written_into_the_writers_own_directory_the_file_is_readable_by_the_writer_only() {
    use std::os::unix::fs::MetadataExt;
    let (hub, admin) = hub_with_admin().await;
    let dir = tempfile::tempdir().unwrap();
    let owner = std::fs::metadata(dir.path()).unwrap();
    // Nobody else may read the key, not even the directory's group (for root: group 0).
    let (uid, _, mode) = init_into(&hub, admin, dir.path()).await;
    assert_eq!((uid, mode), (owner.uid(), 0o600));
}

#[tokio::test]
#[ignore = "needs root: it gives a directory to the group nogroup"]
async fn written_by_root_into_a_group_directory_the_file_is_readable_by_that_group() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "this test must run as root (sudo -E cargo test -- --ignored)"
    );
    let (hub, admin) = hub_with_admin().await;
    let dir = tempfile::tempdir().unwrap();
    // As the packages make /etc/tunnelize: root:tunnelize 0750 (here the group `nogroup`).
    const GROUP: u32 = 65534;
    std::os::unix::fs::chown(dir.path(), Some(0), Some(GROUP)).unwrap();
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o750)).unwrap();
    // So that `tunnelize-tunnel@demo` (User=tunnelize) can read it, as the packaged files.
    assert_eq!(init_into(&hub, admin, dir.path()).await, (0, GROUP, 0o640));
}
