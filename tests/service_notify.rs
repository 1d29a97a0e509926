//! The built `tunnelize hub` under a stand-in for systemd's notify socket: `READY=1` comes only
//! once its listeners answer, `STATUS=` summarises, `SIGHUP` reloads between `RELOADING=1` and
//! `READY=1`, and `SIGTERM` sends `STOPPING=1` and exits 0.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use common::DEADLINE;
use tunnelize::admin::client::AdminClient;
use tunnelize::admin::model;

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Blocks (off the runtime) for the next notify message.
async fn next_message(socket: &std::sync::Arc<UnixDatagram>) -> String {
    let socket = socket.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 1024];
        let n = socket.recv(&mut buf).expect("a notify message in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_hub_says_ready_once_listening_reloads_on_sighup_and_says_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(DEADLINE)).unwrap();
    let notify = std::sync::Arc::new(notify);
    let admin_socket = dir.path().join("hub.sock");
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n[admin]\nsocket = \"{}\"\n\
             [[keys]]\nname = \"t\"\nkey = \"{}\"\n[services.tcp]\nkind = \"tcp\"\n\
             listen = \"127.0.0.1\"\nports = \"0\"\n",
            dir.path().join("state").display(),
            admin_socket.display(),
            common::KEY
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tunnelize"))
        .args(["hub", "-c", config.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify_path)
        .env_remove("WATCHDOG_USEC")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();

    let ready = next_message(&notify).await;
    assert!(ready.starts_with("READY=1\nSTATUS="), "{ready:?}");
    assert!(ready.contains("1 services"), "{ready:?}");
    // Ready means serving: the admin socket answers at once, without retries.
    let admin = AdminClient::unix(&admin_socket).with_timeout(Duration::from_secs(5));
    assert_eq!(admin.get_text(model::HEALTHZ).await.unwrap().trim(), "ok");

    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    signal(pid, "HUP");
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("SIGHUP received") {
                return;
            }
        }
        panic!("the hub exited on SIGHUP");
    })
    .await
    .expect("the hub logs the SIGHUP");
    // A hangup is a reload, bracketed for the service manager.
    let reloading = next_message(&notify).await;
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    let ready_again = next_message(&notify).await;
    assert!(
        ready_again.starts_with("READY=1\nSTATUS=reloaded: 1 services"),
        "{ready_again:?}"
    );
    // Still serving after the hangup.
    assert_eq!(admin.get_text(model::HEALTHZ).await.unwrap().trim(), "ok");

    signal(pid, "TERM");
    let stopping = next_message(&notify).await;
    assert!(stopping.starts_with("STOPPING=1"), "{stopping:?}");
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("the hub exits in time")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!admin_socket.exists(), "the socket file is removed on stop");
}

#[tokio::test]
async fn daemon_mode_detaches_writes_its_pidfile_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let admin_socket = dir.path().join("hub.sock");
    let pidfile = dir.path().join("hub.pid");
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n[admin]\nsocket = \"{}\"\n\
             [[keys]]\nname = \"t\"\nkey = \"{}\"\n",
            dir.path().join("state").display(),
            admin_socket.display(),
            common::KEY
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("hub.log")).unwrap();
    // The parent returns once the daemon is detached.
    let launched = tokio::process::Command::new(env!("CARGO_BIN_EXE_tunnelize"))
        .args(["--daemon", "--pidfile"])
        .arg(&pidfile)
        .args(["hub", "-c"])
        .arg(&config)
        .env_remove("NOTIFY_SOCKET")
        .stderr(log)
        .status();
    let status = tokio::time::timeout(DEADLINE, launched)
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let pid: u32 = common::eventually("the pidfile", DEADLINE, || async {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    })
    .await;
    let admin = AdminClient::unix(&admin_socket).with_timeout(Duration::from_secs(5));
    let info: model::SystemInfo = common::eventually("the daemon's API", DEADLINE, || async {
        admin.get(model::SYSTEM).await.ok()
    })
    .await;
    assert_eq!(
        info.pid, pid,
        "the pidfile names the process serving the API"
    );
    signal(pid, "TERM");
    common::eventually("the daemon to exit", DEADLINE, || async {
        let alive = std::process::Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .ok()?
            .success();
        (!alive).then_some(())
    })
    .await;

    // A bad configuration is reported to the caller, before detaching.
    std::fs::write(&config, "listen = 5\n").unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tunnelize"))
        .args(["--daemon", "hub", "-c"])
        .arg(&config)
        .output();
    let out = tokio::time::timeout(DEADLINE, out).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hub.toml"));
}
