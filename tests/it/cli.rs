//! The `tunnelize` binary end to end: config files, exit codes, what it prints and logs.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tunnelize")
}

/// A child process killed when the test ends, however it ends.
struct Daemon {
    child: Child,
    lines: Lines<BufReader<ChildStderr>>,
    seen: Vec<String>,
}

impl Daemon {
    fn spawn(args: &[&str]) -> Daemon {
        Daemon::spawn_logging(args, "debug")
    }

    /// `tunnelize --log-format json tunnel -c CONFIG`, at debug level.
    fn tunnel(config: &Path) -> Daemon {
        Daemon::spawn(&[
            "--log-format",
            "json",
            "tunnel",
            "-c",
            config.to_str().unwrap(),
        ])
    }

    /// Like [`spawn`](Self::spawn), logging at `level` (what a packaged daemon runs at).
    fn spawn_logging(args: &[&str], level: &str) -> Daemon {
        let mut child = Command::new(bin())
            .args(args)
            .env("RUST_LOG", level)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start tunnelize");
        let stderr = child.stderr.take().unwrap();
        Daemon {
            child,
            lines: BufReader::new(stderr).lines(),
            seen: Vec::new(),
        }
    }

    /// The first line logged so far, or from now on, that satisfies `pred`.
    async fn seen_or_wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let earlier = self.seen.iter().find_map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .filter(|v| pred(v))
        });
        match earlier {
            Some(v) => v,
            None => self.wait_for(what, pred).await,
        }
    }

    /// Reads log lines until one satisfies `pred`, within `DEADLINE`.
    async fn wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let found = tokio::time::timeout(DEADLINE, async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                self.seen.push(line.clone());
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && pred(&v)
                {
                    return Some(v);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(v)) => v,
            Ok(None) => panic!(
                "process ended before {what}; it said:\n{}",
                self.seen.join("\n")
            ),
            Err(_) => panic!(
                "no {what} within {DEADLINE:?}; it said:\n{}",
                self.seen.join("\n")
            ),
        }
    }
}

/// Asserts that a hub's log line about one client names its service, tunnel, client and peer.
fn assert_client_span(logged: &serde_json::Value, service: &str) {
    let span = &logged["span"];
    assert_eq!(span["service"], service, "{logged}");
    assert!(
        span["tunnel_id"].as_str().is_some_and(|s| s.len() == 36),
        "{logged}"
    );
    assert!(span["client_id"].as_u64().is_some(), "{logged}");
    assert!(span["peer"].as_str().is_some(), "{logged}");
}

/// The public address of the tunnel daemon's live tcp proxy, from its log (logged so far or
/// from now on).
async fn live_tcp_proxy(daemon: &mut Daemon) -> std::net::SocketAddr {
    let live = daemon
        .seen_or_wait_for("the live tcp proxy", |v| {
            message(v).starts_with("proxy is live on the hub") && v["fields"]["port"].is_u64()
        })
        .await;
    let port = live["fields"]["port"].as_u64().expect("port field") as u16;
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// `tunnelize check-config FILE`.
async fn check_config(file: &Path) -> std::process::Output {
    Command::new(bin())
        .arg("check-config")
        .arg(file)
        .output()
        .await
        .unwrap()
}

/// Asserts that a run of the binary exited 0, showing its standard error otherwise.
#[track_caller]
fn assert_succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn message(v: &serde_json::Value) -> &str {
    v["fields"]["message"].as_str().unwrap_or("")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn tunnel_toml(hub: &TestHub, key: &str, proxies: &str) -> String {
    format!(
        "hub_address = \"{}\"\nhub_server_name = \"localhost\"\nhub_cert_sha256 = \"{}\"\nkey = \"{key}\"\nlinks = 1\n{proxies}",
        hub.addr, hub.fingerprint
    )
}

#[tokio::test]
async fn wrong_key_exits_with_the_auth_failure_code_and_says_so() {
    let hub = start_hub(vec![tcp_any("tcp")]).await;
    let dir = tempfile::tempdir().unwrap();
    let echo = start_echo().await;
    let proxies = format!("[[proxies]]\nname = \"echo\"\nservice = \"tcp\"\ntarget = \"{echo}\"\n");
    let cfg = write(
        dir.path(),
        "tunnel.toml",
        &tunnel_toml(&hub, "wrong-key-xyz", &proxies),
    );
    let out = tokio::time::timeout(
        DEADLINE,
        Command::new(bin())
            .args(["tunnel", "-c"])
            .arg(&cfg)
            .output(),
    )
    .await
    .expect("a tunnel with a wrong key must exit, not retry")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(tunnelize::exit::AUTH_FAILED),
        "stderr: {stderr}"
    );
    assert!(stderr.contains("authentication failed"), "{stderr}");
    assert!(
        !stderr.contains("wrong-key-xyz"),
        "the key must never be printed: {stderr}"
    );
}

#[tokio::test]
async fn tunnel_prints_why_a_proxy_was_rejected_and_its_port_closes_when_it_dies() {
    let hub = start_hub(vec![tcp_any("tcp")]).await;
    let echo = start_echo().await;
    let holder = start_tunnel(tunnel_config(&hub, vec![proxy("first", "tcp", echo, None)])).await;
    let taken = holder.port(0);
    let dir = tempfile::tempdir().unwrap();
    let proxies = format!(
        "[[proxies]]\nname = \"grab\"\nservice = \"tcp\"\ntarget = \"{echo}\"\nport = {taken}\n\n\
         [[proxies]]\nname = \"mine\"\nservice = \"tcp\"\ntarget = \"{echo}\"\n"
    );
    let cfg = write(dir.path(), "tunnel.toml", &tunnel_toml(&hub, KEY, &proxies));
    let mut daemon = Daemon::tunnel(&cfg);
    let rejected = daemon
        .wait_for("the rejection", |v| {
            message(v) == "proxy rejected by the hub"
        })
        .await;
    let reason = rejected["fields"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("port {taken} is taken by another tunnel")),
        "{rejected}"
    );
    let addr = live_tcp_proxy(&mut daemon).await;
    assert_eq!(
        round_trip(addr, b"through the binary").await,
        b"through the binary"
    );

    daemon.child.start_kill().unwrap();
    daemon.child.wait().await.unwrap();
    eventually(
        "the port to close within a second of the tunnel's death",
        Duration::from_secs(1),
        || async {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(_) => Err("it still accepts connections"),
                Err(_) => Ok(()),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn hub_binary_serves_a_tunnel_binary_and_logs_a_refusing_target_with_ids() {
    let dir = tempfile::tempdir().unwrap();
    let hub_cfg = write(
        dir.path(),
        "hub.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n\n[[keys]]\nname = \"ci\"\nkey = \"{KEY}\"\n\n\
             [services.tcp]\nkind = \"tcp\"\nlisten = \"127.0.0.1\"\nports = \"0\"\n\n\
             [services.web]\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\ndomain = \"test.local\"\n",
            dir.path().join("state").display()
        ),
    );
    assert_succeeded(&check_config(&hub_cfg).await);

    // At info, as packaged: warnings about single requests must carry their ids there too.
    let mut hub = Daemon::spawn_logging(
        &[
            "--log-format",
            "json",
            "hub",
            "-c",
            hub_cfg.to_str().unwrap(),
        ],
        "info",
    );
    let listening = hub
        .wait_for("the hub listening", |v| {
            message(v).starts_with("hub listening for tunnels on ")
        })
        .await;
    let addr = listening["fields"]["listen"]
        .as_str()
        .unwrap()
        .trim_start_matches("Some(")
        .trim_end_matches(')')
        .to_owned();
    let fingerprint = listening["fields"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        dir.path().join("state/hub.crt").exists(),
        "the generated certificate is kept in state_dir"
    );

    let dead = closed_port().await;
    let tunnel_cfg = write(
        dir.path(),
        "tunnel.toml",
        &format!(
            "hub_address = \"{addr}\"\nhub_server_name = \"localhost\"\nhub_cert_sha256 = \"{fingerprint}\"\n\
             key_file = \"key\"\n\n[[proxies]]\nname = \"dead\"\nservice = \"tcp\"\ntarget = \"{dead}\"\n\n\
             [[proxies]]\nname = \"deadweb\"\nservice = \"web\"\ntarget = \"{dead}\"\nhostname = \"dead\"\n"
        ),
    );
    write(dir.path(), "key", &format!("{KEY}\n"));
    assert_succeeded(&check_config(&tunnel_cfg).await);

    let mut tunnel = Daemon::tunnel(&tunnel_cfg);
    let mut client = connect(live_tcp_proxy(&mut tunnel).await).await;
    closed_by_peer(&mut client, "a client of a refusing target").await;

    let logged = hub
        .wait_for("the refusal log", |v| {
            message(v).contains("could not reach its target")
        })
        .await;
    assert_client_span(&logged, "tcp");
    assert_eq!(logged["span"]["proxy"], "dead", "{logged}");
    let logged = tunnel
        .wait_for("the tunnel's refusal log", |v| {
            message(v).contains("cannot reach the target")
        })
        .await;
    assert!(logged["span"]["client_id"].as_u64().is_some(), "{logged}");
    assert_eq!(logged["span"]["proxy"], "dead", "{logged}");

    // A request through the http service that its tunnel cannot serve: a 502, and a warning
    // naming the service, tunnel, client and host.
    let web = hub
        .seen_or_wait_for("the http service", |v| {
            message(v).starts_with("serving http on ")
        })
        .await;
    let web: std::net::SocketAddr = web["fields"]["listen"].as_str().unwrap().parse().unwrap();
    tunnel
        .seen_or_wait_for("the live http proxy", |v| {
            message(v).starts_with("proxy is live on the hub") && v["fields"]["proxy"] == "deadweb"
        })
        .await;
    let mut client = connect(web).await;
    tokio::io::AsyncWriteExt::write_all(
        &mut client,
        b"GET / HTTP/1.1\r\nHost: dead.test.local\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        DEADLINE,
        tokio::io::AsyncReadExt::read_to_end(&mut client, &mut answer),
    )
    .await
    .expect("an answer")
    .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 502"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let logged = hub
        .seen_or_wait_for("the http warning", |v| {
            v["level"] == "WARN" && v["span"]["host"] == "dead.test.local"
        })
        .await;
    assert_client_span(&logged, "web");
}

/// Runs `tunnelize ARGS` to its end (bounded by `DEADLINE`).
async fn run_to_end(args: &[&str]) -> std::process::Output {
    let run = Command::new(bin()).args(args).kill_on_drop(true).output();
    tokio::time::timeout(DEADLINE, run)
        .await
        .expect("tunnelize exits")
        .unwrap()
}

#[tokio::test]
async fn a_daemon_whose_configuration_is_at_fault_exits_78_and_a_busy_port_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state = state.display();
    let cases = [
        (
            "a key unknown",
            "hub",
            "listen = \"127.0.0.1:0\"\nlisten_typo = 1\n",
        ),
        (
            "no [[keys]]",
            "hub",
            &*format!("listen = \"127.0.0.1:0\"\nstate_dir = \"{state}\"\n"),
        ),
        (
            "a missing certificate",
            "hub",
            &*format!(
                "listen = \"127.0.0.1:0\"\nstate_dir = \"{state}\"\n\
                 [tls]\ncert_file = \"/nonexistent/hub.crt\"\nkey_file = \"/nonexistent/hub.key\"\n\
                 [[keys]]\nname = \"k\"\nkey = \"0123456789abcdef0123\"\n"
            ),
        ),
        (
            "a bad hub address",
            "tunnel",
            "hub_address = \"\"\nkey = \"0123456789abcdef0123\"\n",
        ),
    ];
    for (what, daemon, text) in cases {
        let file = write(dir.path(), "case.toml", text);
        let out = run_to_end(&[daemon, "-c", file.to_str().unwrap()]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{what}: {stderr}");
        assert!(stderr.contains("error:"), "{what}: says why: {stderr}");
    }
    let missing = dir.path().join("missing.toml");
    let out = run_to_end(&["hub", "-c", missing.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(78), "a missing file");
    // A port in use may free itself: that failure is a plain 1, which systemd retries.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let file = write(
        dir.path(),
        "busy.toml",
        &format!(
            "listen = \"{}\"\nstate_dir = \"{state}\"\n\
             [[keys]]\nname = \"k\"\nkey = \"0123456789abcdef0123\"\n",
            busy.local_addr().unwrap()
        ),
    );
    let out = run_to_end(&["hub", "-c", file.to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a busy port: {stderr}");
    assert!(stderr.contains("cannot listen on"), "{stderr}");
}

#[tokio::test]
async fn reload_waits_for_the_daemons_answer_and_fails_for_a_file_it_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hub.sock");
    let good = format!(
        "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n\
         [admin]\nsocket = \"{}\"\n\
         [[keys]]\nname = \"ci\"\nkey = \"{KEY}\"\n",
        dir.path().join("state").display(),
        socket.display()
    );
    let file = write(dir.path(), "hub.toml", &good);
    let path = file.to_str().unwrap();
    let mut hub = Daemon::spawn(&["--log-format", "json", "hub", "-c", path]);
    hub.wait_for("the hub listening", |v| {
        message(v).starts_with("hub listening for tunnels on ")
    })
    .await;
    let out = run_to_end(&["reload", "-c", path]).await;
    assert_succeeded(&out);
    assert!(!out.stdout.is_empty(), "prints the daemon's answer");
    // The hub logs who asked, by the credentials the kernel gives for the socket's peer.
    // SAFETY: no pointers.
    let uid = unsafe { libc::geteuid() };
    let asked = hub
        .seen_or_wait_for("the reload's caller", |v| {
            message(v).starts_with("reload requested by user ")
        })
        .await;
    assert!(
        message(&asked).contains(&format!("(uid {uid}, pid "))
            && message(&asked).ends_with(" on the admin socket"),
        "{asked}"
    );

    // A file that does not parse: 78, with file and line, and the daemon is not asked.
    std::fs::write(&file, format!("{good}bogus_key = 1\n")).unwrap();
    let out = run_to_end(&["reload", "-c", path]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("hub.toml:"),
        "names file and line: {stderr}"
    );
    assert!(stderr.contains("keeps the configuration"), "{stderr}");

    // A valid file the daemon refuses (a new service on a port in use): 1, with its reason.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().unwrap();
    std::fs::write(
        &file,
        format!(
            "{good}[services.web]\nkind = \"http\"\nlisten = \"{busy}\"\n\
             domain = \"test.local\"\n"
        ),
    )
    .unwrap();
    let out = run_to_end(&["reload", "-c", path]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refused") && stderr.contains(&busy.to_string()),
        "{stderr}"
    );

    // The daemon kept running: the good file reloads again.
    std::fs::write(&file, &good).unwrap();
    assert_succeeded(&run_to_end(&["reload", "-c", path]).await);

    // With the socket turned off in the file, --pid signals the daemon instead.
    let no_socket = good.replace(
        &format!("socket = \"{}\"", socket.display()),
        "socket = \"\"",
    );
    std::fs::write(&file, &no_socket).unwrap();
    let out = run_to_end(&["reload", "-c", path]).await;
    assert_eq!(out.status.code(), Some(2), "no socket and no --pid");
    let pid = hub.child.id().unwrap().to_string();
    let out = run_to_end(&["reload", "-c", path, "--pid", &pid]).await;
    assert_succeeded(&out);
    hub.seen_or_wait_for("the SIGHUP reload", |v| {
        message(v).contains("SIGHUP received")
    })
    .await;
}

#[tokio::test]
async fn gen_key_writes_a_private_random_key_never_over_another_and_prints_its_hash() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.key");
    let path = file.to_str().unwrap();
    let out = run_to_end(&["gen-key", path]).await;
    assert_succeeded(&out);
    let key = std::fs::read_to_string(&file).unwrap();
    let key = key.strip_suffix('\n').expect("one line");
    assert!(
        key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "64 hex digits: {key:?}"
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "readable by owner and group only");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = tunnelize::secret::StoredKey::hash_line(&tunnelize::secret::Secret::new(key));
    assert_eq!(stdout.trim(), format!("key_hash = \"{line}\""));
    assert!(
        !stdout.contains(key),
        "the key is not printed when written to a file"
    );
    // The config accepts the key as a key_file, and its hash as a key_hash.
    for keys in [
        format!("key_file = \"{path}\""),
        format!("key_hash = \"{line}\""),
    ] {
        let cfg = write(
            dir.path(),
            "hub.toml",
            &format!("listen = \"127.0.0.1:0\"\n[[keys]]\nname = \"t\"\n{keys}\n"),
        );
        assert_succeeded(&check_config(&cfg).await);
    }
    // A second run never replaces the key.
    let out = run_to_end(&["gen-key", path]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("{key}\n"));
    // Without a file it prints a new key each time.
    let printed = |out: std::process::Output| String::from_utf8(out.stdout).unwrap();
    let one = printed(run_to_end(&["gen-key"]).await);
    let two = printed(run_to_end(&["gen-key"]).await);
    assert_eq!(one.trim().len(), 64);
    assert_ne!(one, two);
    assert_ne!(one.trim(), key);
}

#[tokio::test]
async fn check_config_rejects_a_bad_file_with_exit_code_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "hub.toml",
        "listen = \"127.0.0.1:7700\"\nlisten_typo = 1\n",
    );
    let out = check_config(&cfg).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("hub.toml:2"),
        "names file and line: {stderr}"
    );
    assert!(stderr.contains("listen_typo"), "names the key: {stderr}");
}

#[tokio::test]
async fn demo_prints_a_working_curl_line_and_stops_on_ctrl_c() {
    let mut child = Command::new(bin())
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(DEADLINE, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("demo exited early");
            if let Some(rest) = line.trim().strip_prefix("curl ") {
                break rest.trim().to_owned();
            }
        }
    })
    .await
    .expect("demo printed no curl line in time");
    let out = tokio::time::timeout(
        DEADLINE,
        Command::new("curl")
            .args(["-sS", "--max-time", "10", &url])
            .output(),
    )
    .await
    .unwrap()
    .expect("curl must be installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        tunnelize::demo::GREETING
    );

    let pid = child.id().unwrap().to_string();
    let kill = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("demo did not stop")
        .unwrap();
    assert!(status.success(), "demo exits 0 on Ctrl-C: {status:?}");
}

#[tokio::test]
async fn hash_password_prints_a_hash_the_config_accepts() {
    let out = run_with_input("hash-password", "correct horse\n").await;
    assert_succeeded(&out);
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("correct horse"));

    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "tunnel.toml",
        &format!(
            "hub_address = \"127.0.0.1:7700\"\n\n[[proxies]]\nname = \"web\"\nservice = \"web\"\n\
             target = \"127.0.0.1:3000\"\nhostname = \"app\"\n\n[proxies.basic_auth]\nuser = \"ann\"\n\
             password_hash = \"{hash}\"\n"
        ),
    );
    assert_succeeded(&check_config(&cfg).await);
}

/// Runs `tunnelize hash-key` with `input` on standard input.
async fn hash_key(input: &str) -> std::process::Output {
    run_with_input("hash-key", input).await
}

/// Runs `tunnelize SUBCOMMAND` with `input` on standard input, within `DEADLINE`.
async fn run_with_input(subcommand: &str, input: &str) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(bin())
        .arg(subcommand)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn hash_key_prints_a_key_hash_the_hub_accepts_that_key_with() {
    let out = hash_key(&format!("{KEY}\n")).await;
    assert_succeeded(&out);
    let line = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(line.starts_with("sha256:"), "{line}");
    assert!(!line.contains(KEY));

    // A hub whose only key is stored as that hash admits the tunnel with the key, not another.
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "hub.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\n[[keys]]\nname = \"ci\"\nkey_hash = \"{line}\"\n\n\
             [services.tcp]\nkind = \"tcp\"\nlisten = \"127.0.0.1\"\nports = \"0\"\n"
        ),
    );
    let config = tunnelize::config::HubConfig::load(&file).unwrap();
    assert!(!format!("{config:?}").contains(&line[7..]));
    let hub = start_hub_with(config).await;
    let echo = start_echo().await;
    let tunnel = start_tunnel(tunnel_config(&hub, vec![proxy("echo", "tcp", echo, None)])).await;
    let data = payload(7, 4096);
    assert_eq!(round_trip(tunnel.addr(0), &data).await, data);

    let mut wrong = tunnel_config(&hub, vec![proxy("echo", "tcp", echo, None)]);
    wrong.key = Some(tunnelize::secret::Secret::new(format!("{KEY}x")));
    let err = tunnelize::tunnel::Tunnel::new(wrong)
        .unwrap()
        .connect()
        .await
        .err()
        .expect("another key must be refused");
    assert!(
        matches!(err, tunnelize::tunnel::TunnelError::AuthFailed(_)),
        "{err}"
    );
}

#[tokio::test]
async fn hash_key_refuses_a_key_the_config_would_refuse_without_echoing_it() {
    let out = hash_key("too-short\n").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("shorter than 16 characters"), "{stderr}");
    assert!(!stderr.contains("too-short"), "{stderr}");
}

#[tokio::test]
async fn a_tunnel_daemon_gives_back_its_start_up_code_when_ready_and_after_its_first_session() {
    let hub = start_hub(vec![tcp_any("tcp")]).await;
    let echo = start_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let proxies = format!("[[proxies]]\nname = \"echo\"\nservice = \"tcp\"\ntarget = \"{echo}\"\n");
    let cfg = write(dir.path(), "tunnel.toml", &tunnel_toml(&hub, KEY, &proxies));
    let mut daemon = Daemon::tunnel(&cfg);
    let advised = |v: &serde_json::Value| v["fields"]["advised_bytes"].as_u64();
    let at_ready = daemon
        .wait_for("the release when ready", |v| {
            message(v) == "released the executable's start-up pages"
        })
        .await;
    let after_session = daemon
        .wait_for("the release after the first session", |v| {
            message(v) == "released the executable's pages of start-up and the first session"
        })
        .await;
    // This machine's kernel takes MADV_PAGEOUT (Linux 5.4 and later): the whole read-only
    // part of the executable is advised both times.
    assert!(advised(&at_ready).is_some_and(|n| n > 0), "{at_ready}");
    assert_eq!(
        advised(&after_session),
        advised(&at_ready),
        "{after_session}"
    );
    // The code it gave back is read in again when used.
    let addr = live_tcp_proxy(&mut daemon).await;
    assert_eq!(
        round_trip(addr, b"after the release").await,
        b"after the release"
    );
}
