//! `tunnelizectl` as a user runs it: the built binary against a stub admin API served by this
//! test, on a Unix socket in a temporary directory and over TLS on 127.0.0.1:0 with a bearer
//! key. The stub answers with canned documents built from the model types, so these tests pin
//! the tables, the `--json` documents, the exit codes and the error lines.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;

use tunnelize::admin::model::{
    self, ClientInfo, Message, ProxyInfo, ServiceInfo, SystemInfo, TunnelInfo, TunnelProxyStatus,
    TunnelStatus,
};
use tunnelize::tls::Identity;

/// Upper bound for any wait in these tests.
const DEADLINE: Duration = Duration::from_secs(20);
/// The monitoring key the TLS stub requires.
const KEY: &str = "monitoring-key-0123456789";
const TUNNEL_ID: &str = "6f1c2a4e-8d0b-4c55-9a47-3e1f0b7d2c91";
const CLIENT_ID: &str = "42";
const METRICS: &str = "# TYPE tunnelize_clients gauge\ntunnelize_clients{service=\"web\"} 1\n";

// ---- canned documents ----

fn system() -> SystemInfo {
    SystemInfo {
        role: "hub".into(),
        version: "0.1.0".into(),
        uptime_secs: 3 * 3600 + 5 * 60,
        pid: 4242,
        process_cpu_percent: 1.5,
        process_memory_bytes: 12 * 1024 * 1024,
        cpu_percent: 7.25,
        cpus: 2,
        memory_total_bytes: 4 * 1024 * 1024 * 1024,
        memory_used_bytes: 1024 * 1024 * 1024,
        load_average: [0.5, 0.25, 0.125],
    }
}

fn services() -> Vec<ServiceInfo> {
    vec![
        ServiceInfo {
            name: "web".into(),
            kind: "http".into(),
            listen: "0.0.0.0:80".into(),
            domain: Some("tunnels.example.com".into()),
            tunnels: 1,
            clients: 1,
            bytes_in: 2048,
            bytes_out: 1_258_291,
        },
        ServiceInfo {
            name: "ssh".into(),
            kind: "tcp".into(),
            listen: "0.0.0.0:20000-20099".into(),
            domain: None,
            tunnels: 0,
            clients: 0,
            bytes_in: 0,
            bytes_out: 0,
        },
    ]
}

fn tunnels() -> Vec<TunnelInfo> {
    vec![TunnelInfo {
        id: TUNNEL_ID.into(),
        name: "laptop".into(),
        key_name: Some("alice".into()),
        peer: "203.0.113.7:51234".into(),
        since: "2026-11-23T01:02:03Z".into(),
        proxies: vec![ProxyInfo {
            name: "site".into(),
            port: None,
            hostname: Some("app.tunnels.example.com".into()),
        }],
    }]
}

fn clients() -> Vec<ClientInfo> {
    vec![ClientInfo {
        id: CLIENT_ID.into(),
        tunnel_id: TUNNEL_ID.into(),
        proxy: "site".into(),
        peer: "198.51.100.9:40000".into(),
        bytes_in: 512,
        bytes_out: 3 * 1024 * 1024,
        since: "2026-11-23T01:05:00Z".into(),
    }]
}

fn status() -> TunnelStatus {
    TunnelStatus {
        state: "connected".into(),
        hub: "hub.example.com:7000".into(),
        tunnel_id: Some(TUNNEL_ID.into()),
        since: "2026-11-23T01:02:03Z".into(),
        last_error: None,
        retry_at: None,
        proxies: vec![TunnelProxyStatus {
            name: "site".into(),
            service: "web".into(),
            target: "app.internal:3000".into(),
            state: "live".into(),
            public: Some("app.tunnels.example.com".into()),
            reason: None,
            target_up: Some(true),
        }],
    }
}

fn message(text: &str) -> Message {
    Message {
        message: text.into(),
    }
}

// ---- the stub admin API ----

/// A stub daemon: what it serves, and the `METHOD path` of every request it answered.
#[derive(Clone, Default)]
struct Stub {
    /// The bearer key required, if any.
    key: Option<&'static str>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Stub {
    fn requests(&self) -> Vec<String> {
        self.seen.lock().clone()
    }

    fn serve<S>(&self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let stub = self.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let stub = stub.clone();
                async move { Ok::<_, Infallible>(stub.respond(&req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        self.seen.lock().push(format!("{} {path}", req.method()));
        if let Some(key) = self.key {
            let given = req.headers().get(header::AUTHORIZATION);
            if given.and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {key}")) {
                let mut response =
                    json(StatusCode::UNAUTHORIZED, &message("a valid key is needed"));
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                return response;
            }
        }
        let ok = StatusCode::OK;
        match (req.method().clone(), path.as_str()) {
            (Method::GET, model::SYSTEM) => json(ok, &system()),
            (Method::GET, model::SERVICES) => json(ok, &services()),
            (Method::GET, model::STATUS) => json(ok, &status()),
            (Method::POST, model::RELOAD) => json(ok, &message("configuration reloaded")),
            (Method::GET, model::METRICS) => Response::new(Full::new(Bytes::from(METRICS))),
            (Method::GET, p) if p == model::service("web") => json(ok, &services()[0]),
            (Method::GET, p) if p == model::service_tunnels("web") => json(ok, &tunnels()),
            (Method::GET, p) if p == model::service_clients("web") => json(ok, &clients()),
            (Method::GET, p) if p == model::service_tunnels("ssh") => {
                json(ok, &Vec::<TunnelInfo>::new())
            }
            (Method::GET, p) if p == model::service_clients("ssh") => {
                json(ok, &Vec::<ClientInfo>::new())
            }
            (Method::GET, p) if p == model::service_clients("broken") => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &message("the registry is unavailable"),
            ),
            (Method::DELETE, p) if p == model::tunnel(TUNNEL_ID) => {
                json(ok, &message(&format!("tunnel {TUNNEL_ID} disconnected")))
            }
            (Method::DELETE, p) if p == model::client(CLIENT_ID) => {
                json(ok, &message("client 42 disconnected"))
            }
            _ => json(
                StatusCode::NOT_FOUND,
                &message(&format!("nothing at {path}")),
            ),
        }
    }
}

fn json(status: StatusCode, document: &impl Serialize) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(document).unwrap(),
    )));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A stub on a Unix socket in its own temporary directory.
struct SocketStub {
    stub: Stub,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

async fn socket_stub() -> SocketStub {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hub.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let stub = Stub::default();
    let serving = stub.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            serving.serve(stream);
        }
    });
    SocketStub {
        stub,
        socket,
        _dir: dir,
    }
}

/// A stub on TLS at 127.0.0.1:0 requiring [`KEY`], with its certificate written as a PEM file.
struct TlsStub {
    stub: Stub,
    url: String,
    fingerprint: String,
    cert_file: PathBuf,
    _dir: tempfile::TempDir,
}

async fn tls_stub() -> TlsStub {
    tunnelize::tls::install_crypto_provider();
    let identity = Identity::generate(&["localhost"]).unwrap();
    let acceptor = TlsAcceptor::from(identity.server_config().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let cert_file = dir.path().join("hub.crt");
    std::fs::write(&cert_file, pem(identity.chain[0].as_ref())).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stub = Stub {
        key: Some(KEY),
        ..Stub::default()
    };
    let serving = stub.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let serving = serving.clone();
            tokio::spawn(async move {
                if let Ok(Ok(tls)) = tokio::time::timeout(DEADLINE, acceptor.accept(tcp)).await {
                    serving.serve(tls);
                }
            });
        }
    });
    TlsStub {
        stub,
        url: format!("https://localhost:{port}"),
        fingerprint: identity.fingerprint().to_string(),
        cert_file,
        _dir: dir,
    }
}

fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

// ---- running the binary ----

/// Runs `tunnelizectl args...` with no monitoring key in its environment unless given.
async fn ctl_env(args: &[&str], env_key: Option<&str>) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tunnelizectl"));
    command.args(args).kill_on_drop(true);
    match env_key {
        Some(key) => command.env("TUNNELIZE_MONITOR_KEY", key),
        None => command.env_remove("TUNNELIZE_MONITOR_KEY"),
    };
    tokio::time::timeout(DEADLINE, command.output())
        .await
        .expect("tunnelizectl finishes in time")
        .expect("tunnelizectl runs")
}

async fn ctl(args: &[&str]) -> Output {
    ctl_env(args, None).await
}

/// `tunnelizectl --hub URL --key KEY --fingerprint FINGERPRINT ARGS...`.
async fn ctl_hub(url: &str, fingerprint: &str, args: &[&str]) -> Output {
    let mut all = vec!["--hub", url, "--key", KEY, "--fingerprint", fingerprint];
    all.extend_from_slice(args);
    ctl(&all).await
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}

/// Asserts that `tunnelizectl` exited with `code` and said `text` on standard error; returns
/// all it said there.
#[track_caller]
fn assert_fails_saying(output: &Output, code: i32, text: &str) -> String {
    assert_exit(output, code);
    let err = stderr(output);
    assert!(err.contains(text), "{err}");
    err
}

/// Runs a command against the socket stub, expects success, and returns standard output.
async fn table(stub: &SocketStub, args: &[&str]) -> String {
    let socket = stub.socket.to_str().unwrap();
    let output = ctl(&[&["--socket", socket], args].concat()).await;
    assert_exit(&output, 0);
    assert!(stderr(&output).is_empty(), "{}", stderr(&output));
    stdout(&output)
}

/// Runs a command with `--json` against the socket stub and parses its output.
async fn document<T: DeserializeOwned>(stub: &SocketStub, args: &[&str]) -> T {
    let text = table(stub, &[&["--json"], args].concat()).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[track_caller]
fn assert_cells(text: &str, cells: &[&str]) {
    for cell in cells {
        assert!(text.contains(cell), "missing {cell:?} in:\n{text}");
    }
}

/// The table line that contains `needle`, split into its cells.
#[track_caller]
fn row(text: &str, needle: &str) -> Vec<String> {
    let line = text
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"));
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect()
}

// ---- tables ----

#[tokio::test]
async fn listings_print_aligned_tables_with_readable_figures() {
    let stub = socket_stub().await;

    let text = table(&stub, &["list-services"]).await;
    let header = row(&text, "NAME");
    assert_eq!(
        header,
        [
            "NAME", "KIND", "LISTEN", "DOMAIN", "TUNNELS", "CLIENTS", "IN", "OUT"
        ]
    );
    assert_eq!(
        row(&text, "web"),
        [
            "web",
            "http",
            "0.0.0.0:80",
            "tunnels.example.com",
            "1",
            "1",
            "2.0 KiB",
            "1.2 MiB"
        ]
    );
    assert_eq!(
        row(&text, "ssh"),
        [
            "ssh",
            "tcp",
            "0.0.0.0:20000-20099",
            "-",
            "0",
            "0",
            "0 B",
            "0 B"
        ]
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0].find("KIND"), lines[1].find("http"), "{text}");
    assert_eq!(lines[0].find("KIND"), lines[2].find("tcp "), "{text}");
    assert_eq!(
        lines[1].len(),
        lines[2].len(),
        "figures end in one column:\n{text}"
    );

    let text = table(&stub, &["list-tunnels", "web"]).await;
    assert_cells(
        &text,
        &[
            "ID",
            "PROXIES",
            TUNNEL_ID,
            "laptop",
            "alice",
            "203.0.113.7:51234",
            "2026-11-23T01:02:03Z",
            "site=app.tunnels.example.com",
        ],
    );

    let text = table(&stub, &["list-clients", "web"]).await;
    assert_eq!(
        row(&text, "198.51.100.9"),
        [
            CLIENT_ID,
            TUNNEL_ID,
            "site",
            "198.51.100.9:40000",
            "512 B",
            "3.0 MiB",
            "2026-11-23T01:05:00Z"
        ]
    );

    // Without a service: every service's, with the service in a column of its own.
    let text = table(&stub, &["list-tunnels"]).await;
    assert_eq!(row(&text, "SERVICE")[..2], ["SERVICE", "ID"], "{text}");
    assert_eq!(
        row(&text, TUNNEL_ID)[..3],
        ["web", TUNNEL_ID, "laptop"],
        "{text}"
    );
    assert_eq!(text.lines().count(), 2, "ssh has no tunnels:\n{text}");
    let text = table(&stub, &["list-clients"]).await;
    assert_eq!(
        row(&text, "198.51.100.9"),
        [
            "web",
            CLIENT_ID,
            TUNNEL_ID,
            "site",
            "198.51.100.9:40000",
            "512 B",
            "3.0 MiB",
            "2026-11-23T01:05:00Z"
        ]
    );
}

#[tokio::test]
async fn single_documents_print_as_aligned_fields() {
    let stub = socket_stub().await;

    let text = table(&stub, &["sys-info"]).await;
    assert_eq!(row(&text, "role"), ["role", "hub"]);
    assert_eq!(row(&text, "version"), ["version", "0.1.0"]);
    assert_eq!(row(&text, "uptime"), ["uptime", "3h 5m"]);
    assert_eq!(
        row(&text, "process"),
        ["process", "1.5% cpu, 12.0 MiB resident"]
    );
    assert_eq!(
        row(&text, "host memory"),
        ["host memory", "1.0 GiB used of 4.0 GiB"]
    );
    assert_eq!(row(&text, "load"), ["load", "0.50 0.25 0.12"]);

    let text = table(&stub, &["get-service", "web"]).await;
    assert_eq!(row(&text, "kind"), ["kind", "http"]);
    assert_eq!(row(&text, "bytes out"), ["bytes out", "1.2 MiB"]);

    let text = table(&stub, &["status"]).await;
    assert_eq!(row(&text, "state"), ["state", "connected"]);
    assert_eq!(row(&text, "last error"), ["last error", "-"]);
    assert_eq!(
        row(&text, "app.internal:3000"),
        [
            "site",
            "web",
            "app.internal:3000",
            "live",
            "app.tunnels.example.com",
            "yes",
            "-"
        ]
    );
}

#[tokio::test]
async fn actions_send_their_request_and_print_the_daemons_message() {
    let stub = socket_stub().await;

    let text = table(&stub, &["disconnect-tunnel", TUNNEL_ID]).await;
    assert_eq!(text, format!("tunnel {TUNNEL_ID} disconnected\n"));
    let text = table(&stub, &["disconnect-client", CLIENT_ID]).await;
    assert_eq!(text, "client 42 disconnected\n");
    let text = table(&stub, &["reload"]).await;
    assert_eq!(text, "configuration reloaded\n");
    let text = table(&stub, &["metrics"]).await;
    assert_eq!(text, METRICS);

    assert_eq!(
        stub.stub.requests(),
        [
            format!("DELETE /v1/tunnels/{TUNNEL_ID}"),
            "DELETE /v1/clients/42".into(),
            "POST /v1/reload".into(),
            "GET /metrics".into(),
        ]
    );
}

// ---- --json ----

#[tokio::test]
async fn json_output_is_the_daemons_documents() {
    let stub = socket_stub().await;
    assert_eq!(document::<SystemInfo>(&stub, &["sys-info"]).await, system());
    assert_eq!(
        document::<Vec<ServiceInfo>>(&stub, &["list-services"]).await,
        services()
    );
    assert_eq!(
        document::<ServiceInfo>(&stub, &["get-service", "web"]).await,
        services()[0]
    );
    assert_eq!(
        document::<Vec<TunnelInfo>>(&stub, &["list-tunnels", "web"]).await,
        tunnels()
    );
    assert_eq!(
        document::<Vec<ClientInfo>>(&stub, &["list-clients", "web"]).await,
        clients()
    );
    let every =
        document::<std::collections::BTreeMap<String, Vec<TunnelInfo>>>(&stub, &["list-tunnels"])
            .await;
    assert_eq!(every["web"], tunnels());
    assert_eq!(every["ssh"], []);
    let every =
        document::<std::collections::BTreeMap<String, Vec<ClientInfo>>>(&stub, &["list-clients"])
            .await;
    assert_eq!(every["web"], clients());
    assert_eq!(every.len(), 2);
    assert_eq!(document::<TunnelStatus>(&stub, &["status"]).await, status());
    assert_eq!(
        document::<Message>(&stub, &["disconnect-tunnel", TUNNEL_ID]).await,
        message(&format!("tunnel {TUNNEL_ID} disconnected"))
    );
    assert_eq!(
        document::<Message>(&stub, &["disconnect-client", CLIENT_ID]).await,
        message("client 42 disconnected")
    );
    assert_eq!(
        document::<Message>(&stub, &["reload"]).await,
        message("configuration reloaded")
    );
    // Pretty-printed: one field per line.
    let text = table(&stub, &["--json", "get-service", "web"]).await;
    assert!(text.contains("\n  \"name\": \"web\",\n"), "{text}");
}

// ---- exit codes ----

#[tokio::test]
async fn unknown_services_tunnels_and_clients_exit_3_with_a_hint() {
    let stub = socket_stub().await;
    let socket = stub.socket.to_str().unwrap();
    for (args, hint) in [
        (&["get-service", "nope"][..], "list-services"),
        (&["list-tunnels", "nope"], "list-services"),
        (&["list-clients", "nope"], "list-services"),
        (
            &["disconnect-tunnel", "nope"],
            "`tunnelizectl list-tunnels` for",
        ),
        (
            &["disconnect-client", "999"],
            "`tunnelizectl list-clients` for",
        ),
    ] {
        let output = ctl(&[&["--socket", socket], args].concat()).await;
        assert_exit(&output, 3);
        let err = stderr(&output);
        assert!(err.starts_with("error: "), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("nothing at /v1/"), "{err}");
        assert!(err.contains(socket), "{err}");
        assert!(err.contains(hint), "{err}");
        assert!(stdout(&output).is_empty());
    }
}

#[tokio::test]
async fn names_cannot_reach_another_endpoint() {
    let stub = socket_stub().await;
    let socket = stub.socket.to_str().unwrap();
    let output = ctl(&["--socket", socket, "get-service", "web/tunnels"]).await;
    assert_exit(&output, 3);
    assert_eq!(stub.stub.requests(), ["GET /v1/services/web%2Ftunnels"]);
}

#[tokio::test]
async fn other_daemon_errors_exit_1_with_the_daemons_message() {
    let stub = socket_stub().await;
    let socket = stub.socket.to_str().unwrap();
    let output = ctl(&["--socket", socket, "list-clients", "broken"]).await;
    let err = assert_fails_saying(&output, 1, "500");
    assert!(err.contains("the registry is unavailable"), "{err}");
}

#[tokio::test]
async fn a_missing_or_dead_socket_exits_5_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let output = ctl(&["--socket", missing.to_str().unwrap(), "list-services"]).await;
    let err = assert_fails_saying(&output, 5, missing.to_str().unwrap());
    assert!(err.contains("no such socket"), "{err}");

    // A socket file left by a daemon that stopped.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let output = ctl(&["--socket", stale.to_str().unwrap(), "sys-info"]).await;
    assert_fails_saying(&output, 5, "nothing is listening");
}

#[tokio::test]
async fn status_defaults_to_the_tunnel_daemons_socket() {
    const SOCKET: &str = "/run/tunnelize/tunnel.sock";
    let output = ctl(&["status"]).await;
    if Path::new(SOCKET).exists() {
        // A tunnel daemon runs on this machine: `status` reaches it there, or says why it
        // cannot (permission denied), naming the path.
        assert!(
            output.status.success() || stderr(&output).contains(SOCKET),
            "{}",
            stderr(&output)
        );
    } else {
        // As on a test machine: the error names the path that does not exist.
        assert_fails_saying(&output, 5, SOCKET);
    }
}

#[tokio::test]
async fn a_daemon_that_never_answers_exits_5_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("silent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    // Accepts and holds connections without ever answering.
    let held = tokio::spawn(async move {
        let mut streams = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            streams.push(stream);
        }
    });
    let output = ctl(&[
        "--socket",
        socket.to_str().unwrap(),
        "--timeout",
        "300ms",
        "sys-info",
    ])
    .await;
    assert_fails_saying(&output, 5, "no answer within 0.3s");
    held.abort();
}

#[tokio::test]
async fn bad_usage_exits_2() {
    let fingerprint = "ab".repeat(32);
    for args in [
        &[][..],
        &["no-such-command"],
        &["get-service"],
        &["sys-info", "--no-such-option"],
        &["--ca", "/tmp/ca.pem", "sys-info"],
        &[
            "--hub",
            "https://localhost:1",
            "--fingerprint",
            "abc",
            "sys-info",
        ],
        &[
            "--hub",
            "https://localhost:1",
            "--ca",
            "ca.pem",
            "--fingerprint",
            &fingerprint,
            "sys-info",
        ],
        &["--hub", "http://localhost:1", "sys-info"],
        &["--hub", "https://localhost:1", "status"],
        &["--timeout", "0", "sys-info"],
        &["completions", "powershell"],
    ] {
        let output = ctl(args).await;
        assert_exit(&output, 2);
        assert!(!stderr(&output).is_empty(), "{args:?}");
        assert!(stdout(&output).is_empty(), "{args:?}");
    }
}

#[tokio::test]
async fn help_documents_the_exit_codes() {
    let output = ctl(&["--help"]).await;
    assert_exit(&output, 0);
    assert_cells(
        &stdout(&output),
        &[
            "Exit codes",
            "3  not found",
            "4  unauthorized",
            "5  cannot reach the daemon",
        ],
    );
}

// ---- TLS ----

#[tokio::test]
async fn over_tls_the_key_and_a_pinned_fingerprint_or_ca_file_give_access() {
    let hub = tls_stub().await;
    let ca = hub.cert_file.to_str().unwrap();

    let output = ctl_hub(&hub.url, &hub.fingerprint, &["--json", "list-services"]).await;
    assert_exit(&output, 0);
    let listed: Vec<ServiceInfo> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listed, services());

    // The key from the environment, the hub verified through a CA file.
    let output = ctl_env(&["--hub", &hub.url, "--ca", ca, "sys-info"], Some(KEY)).await;
    assert_exit(&output, 0);
    assert_eq!(row(&stdout(&output), "role"), ["role", "hub"]);

    // The fingerprint without colons, lower case.
    let bare = hub.fingerprint.replace(':', "").to_lowercase();
    let output = ctl_hub(&hub.url, &bare, &["metrics"]).await;
    assert_exit(&output, 0);
    assert_eq!(stdout(&output), METRICS);

    assert_eq!(hub.stub.requests().len(), 3);
}

#[tokio::test]
async fn over_tls_a_wrong_or_missing_key_exits_4_without_showing_the_key() {
    let hub = tls_stub().await;
    let wrong = "wrong-key-secret-9876543210";
    let output = ctl(&[
        "--hub",
        &hub.url,
        "--fingerprint",
        &hub.fingerprint,
        "--key",
        wrong,
        "list-services",
    ])
    .await;
    let err = assert_fails_saying(&output, 4, "401");
    assert!(err.contains("TUNNELIZE_MONITOR_KEY"), "{err}");
    assert!(!err.contains(wrong), "{err}");

    let output = ctl(&[
        "--hub",
        &hub.url,
        "--fingerprint",
        &hub.fingerprint,
        "sys-info",
    ])
    .await;
    assert_fails_saying(&output, 4, "no monitoring key was given");
}

#[tokio::test]
async fn over_tls_an_untrusted_hub_or_nothing_listening_exits_5() {
    let hub = tls_stub().await;
    let other = Identity::generate(&["localhost"])
        .unwrap()
        .fingerprint()
        .to_string();
    let output = ctl_hub(&hub.url, &other, &["sys-info"]).await;
    let err = assert_fails_saying(&output, 5, "TLS handshake failed");
    assert!(err.contains(&hub.fingerprint), "{err}");
    assert!(hub.stub.requests().is_empty());

    // The system roots do not know a self-signed certificate (exit 1 where the machine has
    // no root certificates at all); either way the error points at --ca.
    let output = ctl(&["--hub", &hub.url, "--key", KEY, "sys-info"]).await;
    assert!(
        matches!(output.status.code(), Some(5 | 1)),
        "{}",
        stderr(&output)
    );
    assert!(stderr(&output).contains("--ca"), "{}", stderr(&output));

    let closed: SocketAddr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let url = format!("https://127.0.0.1:{}", closed.port());
    let output = ctl_hub(&url, &hub.fingerprint, &["sys-info"]).await;
    assert_fails_saying(&output, 5, &url);
}

// ---- completions and man pages ----

#[tokio::test]
async fn completions_are_printed_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let output = ctl(&["completions", shell]).await;
        assert_exit(&output, 0);
        assert_cells(
            &stdout(&output),
            &["tunnelizectl", "list-services", "disconnect-tunnel"],
        );
    }
}

#[tokio::test]
async fn man_writes_a_page_for_the_tool_and_each_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let output = ctl(&["man", out.to_str().unwrap()]).await;
    assert_exit(&output, 0);
    for page in [
        "tunnelizectl.1",
        "tunnelizectl-list-services.1",
        "tunnelizectl-status.1",
    ] {
        let text =
            std::fs::read_to_string(out.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text}"
        );
    }
    let main_page = std::fs::read_to_string(out.join("tunnelizectl.1")).unwrap();
    assert!(main_page.contains("cannot reach the daemon"), "{main_page}");
}
