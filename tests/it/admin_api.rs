//! The admin API against a live hub and a live tunnel daemon: every endpoint over the Unix socket
//! and the keyed TLS listener, answers checked against the daemon's own OpenAPI document, the
//! metrics text through a Prometheus parser, the negative auth cases, disconnects seen from the
//! client's and the tunnel's side, and `tunnelizectl` run as a user runs it.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;
use tunnelize::admin::client::{AdminClient, AdminError};
use tunnelize::admin::model::{
    self, ClientInfo, Message, ServiceInfo, SystemInfo, TunnelInfo, TunnelStatus,
};
use tunnelize::config::{AdminConfig, HubTrust, ServiceConfig};
use tunnelize::secret::Secret;
use tunnelize::tunnel::{Backoff, Tunnel, TunnelError, supervise};

const MONITOR_KEY: &str = "monitoring-key-0123456789abcdef";

struct Live {
    _dir: tempfile::TempDir,
    hub: TestHub,
    socket: PathBuf,
    tls: SocketAddr,
    tunnel: TestTunnel,
    /// Public port of the tunnel's `echo` proxy on service `tcp`.
    echo: SocketAddr,
}

fn services() -> Vec<ServiceConfig> {
    vec![tcp_any("tcp"), tcp_any("spare")]
}

async fn live() -> Live {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hub.sock");
    let mut config = hub_config(services());
    config.admin = AdminConfig {
        socket: Some(socket.clone()),
        socket_explicit: true,
        socket_group: None,
        listen: Some("127.0.0.1:0".parse().unwrap()),
        key: Some(MONITOR_KEY.into()),
    };
    let (hub, listeners) = start_hub_with_admin(config).await;
    assert_eq!(listeners.socket.as_deref(), Some(socket.as_path()));
    let tls = listeners.tls.expect("TLS admin listener started");
    let target = start_echo().await;
    let tunnel = start_tunnel(tunnel_config(
        &hub,
        vec![proxy("echo", "tcp", target, None)],
    ))
    .await;
    let echo = tunnel.addr(0);
    Live {
        _dir: dir,
        hub,
        socket,
        tls,
        tunnel,
        echo,
    }
}

impl Live {
    fn over_socket(&self) -> AdminClient {
        AdminClient::unix(&self.socket)
    }

    fn over_tls(&self, key: Option<&str>) -> AdminClient {
        let trust = HubTrust::Fingerprint(self.hub.fingerprint.0);
        AdminClient::hub(
            &format!("https://127.0.0.1:{}", self.tls.port()),
            &trust,
            key.map(Secret::new),
        )
        .unwrap()
    }

    fn transports(&self) -> [(&'static str, AdminClient); 2] {
        [
            ("socket", self.over_socket()),
            ("tls", self.over_tls(Some(MONITOR_KEY))),
        ]
    }
}

// ---- a small JSON Schema check, enough for the schemas of our OpenAPI document ----

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let name = reference.trim_start_matches("#/components/schemas/");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

fn type_matches(value: &Value, ty: &str) -> bool {
    match ty {
        "string" => value.is_string(),
        "integer" => value.is_u64() || value.is_i64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        other => panic!("schema uses unknown type {other}"),
    }
}

fn check_schema(doc: &Value, schema: &Value, value: &Value, at: &str) {
    let schema = resolve(doc, schema);
    assert!(schema.is_object(), "{at}: schema missing");
    match &schema["type"] {
        Value::String(ty) => assert!(type_matches(value, ty), "{at}: {value} is not a {ty}"),
        Value::Array(types) => assert!(
            types
                .iter()
                .any(|t| type_matches(value, t.as_str().unwrap())),
            "{at}: {value} is none of {types:?}"
        ),
        _ => {}
    }
    if let Some(choices) = schema["enum"].as_array() {
        assert!(choices.contains(value), "{at}: {value} not in {choices:?}");
    }
    if let Some(min) = schema["minimum"].as_f64() {
        assert!(value.as_f64().unwrap() >= min, "{at}: {value} below {min}");
    }
    if let Some(items) = value.as_array() {
        for (i, item) in items.iter().enumerate() {
            check_schema(doc, &schema["items"], item, &format!("{at}[{i}]"));
        }
    }
    if let Some(object) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            let key = required.as_str().unwrap();
            assert!(object.contains_key(key), "{at}: missing `{key}`");
        }
        let properties = schema["properties"].as_object();
        for (key, field) in object {
            if let Some(properties) = properties {
                let property = properties
                    .get(key)
                    .unwrap_or_else(|| panic!("{at}: `{key}` is not in the schema"));
                check_schema(doc, property, field, &format!("{at}.{key}"));
            }
        }
    }
}

/// GETs `path` as JSON and checks it against the 200 schema of `template` in `doc`.
async fn get_checked(client: &AdminClient, doc: &Value, template: &str, path: &str) -> Value {
    let value: Value = client
        .get(path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let schema =
        &doc["paths"][template]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
    check_schema(doc, schema, &value, path);
    value
}

fn typed<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap()
}

/// The value of the sample `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse as Prometheus text");
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[tokio::test]
async fn every_hub_endpoint_answers_on_both_transports_as_its_openapi_document_says() {
    let live = live().await;
    let mut client_socket = echoing_client(live.echo, 1000).await;
    let client_addr = client_socket.local_addr().unwrap().to_string();
    let tunnel_id = live.tunnel.tunnel_id.to_string();
    for (transport, admin) in live.transports() {
        let doc: Value = admin.get(model::OPENAPI).await.unwrap();
        assert_eq!(doc["openapi"], "3.1.0", "{transport}");
        assert_eq!(admin.get_text(model::HEALTHZ).await.unwrap().trim(), "ok");

        let system: SystemInfo =
            typed(get_checked(&admin, &doc, "/v1/system", model::SYSTEM).await);
        assert_eq!(system.role, "hub");
        assert_eq!(system.pid, std::process::id());
        assert!(system.process_memory_bytes > 0 && system.memory_total_bytes > 0);

        let services: Vec<ServiceInfo> =
            typed(get_checked(&admin, &doc, "/v1/services", model::SERVICES).await);
        let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["tcp", "spare"], "{transport}");

        // Bytes are counted as they move: the 1000 bytes each way are there while connected.
        let tcp: ServiceInfo = eventually("service byte counts", DEADLINE, || async {
            let value =
                get_checked(&admin, &doc, "/v1/services/{name}", &model::service("tcp")).await;
            let info: ServiceInfo = typed(value);
            (info.bytes_in == 1000 && info.bytes_out == 1000).then_some(info)
        })
        .await;
        assert_eq!((tcp.kind.as_str(), tcp.tunnels, tcp.clients), ("tcp", 1, 1));
        let spare: ServiceInfo = typed(
            get_checked(
                &admin,
                &doc,
                "/v1/services/{name}",
                &model::service("spare"),
            )
            .await,
        );
        assert_eq!((spare.tunnels, spare.clients, spare.bytes_in), (0, 0, 0));

        let tunnels: Vec<TunnelInfo> = typed(
            get_checked(
                &admin,
                &doc,
                "/v1/services/{name}/tunnels",
                &model::service_tunnels("tcp"),
            )
            .await,
        );
        assert_eq!(tunnels.len(), 1);
        assert_eq!(tunnels[0].id, tunnel_id);
        assert_eq!(tunnels[0].key_name.as_deref(), Some("test"));
        assert_eq!(tunnels[0].proxies[0].name, "echo");
        assert_eq!(tunnels[0].proxies[0].port, Some(live.echo.port()));

        let clients: Vec<ClientInfo> = typed(
            get_checked(
                &admin,
                &doc,
                "/v1/services/{name}/clients",
                &model::service_clients("tcp"),
            )
            .await,
        );
        assert_eq!(clients.len(), 1);
        assert_eq!(clients[0].tunnel_id, tunnel_id);
        assert_eq!(clients[0].peer, client_addr);
        assert_eq!((clients[0].bytes_in, clients[0].bytes_out), (1000, 1000));

        let metrics = admin.get_text(model::METRICS).await.unwrap();
        assert_eq!(
            sample(&metrics, "tunnelize_clients", &[("service", "tcp")]),
            Some(1.0)
        );
        assert_eq!(
            sample(&metrics, "tunnelize_tunnels", &[("service", "tcp")]),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &metrics,
                "tunnelize_service_bytes_total",
                &[("service", "tcp"), ("direction", "out")]
            ),
            Some(1000.0)
        );
        assert_eq!(
            sample(
                &metrics,
                "tunnelize_tunnel_bytes_total",
                &[("tunnel_id", &tunnel_id), ("direction", "in")]
            ),
            Some(1000.0)
        );
        let setups = metrics
            .lines()
            .find_map(|l| l.strip_prefix("tunnelize_link_setup_seconds_count "))
            .and_then(|v| v.parse::<u64>().ok());
        assert!(setups >= Some(1), "link setups counted: {setups:?}");

        // Unknown names are 404 with a message, on every endpoint that takes one.
        for path in [
            model::service("nope"),
            model::service_tunnels("nope"),
            model::service_clients("nope"),
        ] {
            match admin.get::<Value>(&path).await {
                Err(AdminError::NotFound { message, .. }) => {
                    assert!(message.contains("no service `nope`"), "{message}")
                }
                other => panic!("{transport} {path}: expected 404, got {other:?}"),
            }
        }
        match admin.delete::<Message>(&model::client("999999")).await {
            Err(AdminError::NotFound { .. }) => {}
            other => panic!("expected 404, got {other:?}"),
        }
    }
    // Once the client leaves it is no longer listed, and its bytes stay in the totals.
    client_socket.shutdown().await.unwrap();
    closed_by_peer(&mut client_socket, "the client that shut down").await;
    drop(client_socket);
    let admin = live.over_socket();
    eventually("the client to be gone", DEADLINE, || async {
        let clients: Vec<ClientInfo> = admin.get(&model::service_clients("tcp")).await.ok()?;
        clients.is_empty().then_some(())
    })
    .await;
    let tcp: ServiceInfo = admin.get(&model::service("tcp")).await.unwrap();
    assert_eq!((tcp.clients, tcp.bytes_in, tcp.bytes_out), (0, 1000, 1000));
}

/// One HTTP/1.1 request over TLS to the admin listener, returning the raw response text.
async fn raw_tls_request(live: &Live, request: &str) -> String {
    let socket = TcpStream::connect(live.tls).await.unwrap();
    let mut tls = tls_over(socket, &live.hub.fingerprint).await;
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, tls.read_to_end(&mut response))
        .await
        .expect("answer in time")
        .ok();
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn every_answer_of_the_tls_listener_carries_the_browser_security_headers() {
    let live = live().await;
    let answers = [
        format!(
            "GET /v1/system HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {MONITOR_KEY}\r\n\
             Connection: close\r\n\r\n"
        ),
        "GET /v1/system HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_owned(),
        format!(
            "GET /v1/no-such-path HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {MONITOR_KEY}\r\n\
             Connection: close\r\n\r\n"
        ),
    ];
    let mut statuses = Vec::new();
    for request in &answers {
        let response = raw_tls_request(&live, request).await;
        let lower = response.to_ascii_lowercase();
        let head = lower.split("\r\n\r\n").next().unwrap_or_default();
        for line in [
            "strict-transport-security: max-age=31536000",
            "x-content-type-options: nosniff",
            "x-frame-options: deny",
            "content-security-policy: default-src 'none'; frame-ancestors 'none'",
            "cache-control: no-store",
        ] {
            assert!(head.contains(line), "{line:?} missing from:\n{response}");
        }
        statuses.push(response.get(9..12).unwrap_or_default().to_owned());
    }
    assert_eq!(statuses, ["200", "401", "404"], "the answers checked");
}

#[tokio::test]
async fn the_tls_listener_wants_the_monitoring_key_and_a_tunnel_key_only_lists_services() {
    let live = live().await;
    let wrong = "wrong-key-that-must-never-be-echoed";
    for (key, what) in [(None, "no key"), (Some(wrong), "a wrong key")] {
        match live.over_tls(key).get::<Value>(model::SYSTEM).await {
            Err(AdminError::Unauthorized { .. }) => {}
            other => panic!("{what}: expected 401, got {other:?}"),
        }
    }
    // A tunnel key lists services (for `tunnelize tunnel --init-from`), and nothing else.
    let with_tunnel_key = live.over_tls(Some(KEY));
    let services: Vec<ServiceInfo> = with_tunnel_key.get(model::SERVICES).await.unwrap();
    assert_eq!(services.len(), 2);
    for path in [
        model::SYSTEM.to_owned(),
        model::service("tcp"),
        model::METRICS.to_owned(),
    ] {
        match with_tunnel_key.get_text(&path).await {
            Err(AdminError::Unauthorized { .. }) => {}
            other => panic!("tunnel key on {path}: expected 401, got {other:?}"),
        }
    }
    match with_tunnel_key
        .delete::<Message>(&model::tunnel(&live.tunnel.tunnel_id.to_string()))
        .await
    {
        Err(AdminError::Unauthorized { .. }) => {}
        other => panic!("tunnel key disconnecting: expected 401, got {other:?}"),
    }
    // The raw answer: 401 with a challenge, and never the key that was sent.
    let response = raw_tls_request(
        &live,
        &format!(
            "GET /v1/system HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {wrong}\r\n\
             Connection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    let lower = response.to_ascii_lowercase();
    assert!(
        lower.contains("www-authenticate: bearer realm=\"tunnelize\""),
        "{response}"
    );
    assert!(!response.contains(wrong), "the key was echoed: {response}");
    assert!(
        !lower.contains("access-control-allow-origin"),
        "no CORS: {response}"
    );
    // Every refusal was counted, and the metrics name no key.
    let metrics = live.over_socket().get_text(model::METRICS).await.unwrap();
    let failures = sample(&metrics, "tunnelize_auth_failures_total", &[]).unwrap();
    // no key, a wrong key, the tunnel key on three reads and a disconnect, the raw request.
    assert_eq!(failures, 7.0, "auth failures counted");
    for secret in [MONITOR_KEY, KEY, wrong] {
        assert!(!metrics.contains(secret));
    }
}

#[tokio::test]
async fn disconnecting_a_client_closes_only_that_client() {
    let live = live().await;
    let mut first = echoing_client(live.echo, 10).await;
    let mut second = echoing_client(live.echo, 20).await;
    let admin = live.over_socket();
    let clients: Vec<ClientInfo> = eventually("two clients listed", DEADLINE, || async {
        let list: Vec<ClientInfo> = admin.get(&model::service_clients("tcp")).await.ok()?;
        (list.len() == 2).then_some(list)
    })
    .await;
    let first_addr = first.local_addr().unwrap().to_string();
    let id = &clients.iter().find(|c| c.peer == first_addr).unwrap().id;
    let answer: Message = admin.delete(&model::client(id)).await.unwrap();
    assert!(answer.message.contains(id.as_str()), "{}", answer.message);
    closed_by_peer(&mut first, "the disconnected client").await;
    // The other client still echoes.
    second.write_all(b"still here").await.unwrap();
    let mut back = [0u8; 10];
    tokio::time::timeout(DEADLINE, second.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"still here");
    match admin.delete::<Message>(&model::client(id)).await {
        Err(AdminError::NotFound { .. }) => {}
        other => panic!("a disconnected client is gone, got {other:?}"),
    }
}

#[tokio::test]
async fn disconnecting_a_tunnel_closes_its_clients_frees_its_port_and_tells_the_tunnel_why() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hub.sock");
    let mut config = hub_config(services());
    config.admin = admin_on(&socket);
    let (hub, _) = start_hub_with_admin(config).await;
    let target = start_echo().await;
    // Run the session by hand, to see the reason it ends with.
    let tunnel = Tunnel::new(tunnel_config(
        &hub,
        vec![proxy("echo", "tcp", target, None)],
    ))
    .unwrap();
    let session = tunnel.connect().await.unwrap();
    let id = session.tunnel_id().to_string();
    let port = match &session.proxies()[0] {
        tunnelize::protocol::ProxyOutcome::Accepted { port: Some(p), .. } => *p,
        other => panic!("{other:?}"),
    };
    let running = tokio::spawn(async move {
        session
            .run(&tunnel, tokio_util::sync::CancellationToken::new())
            .await
    });
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut client = echoing_client(addr, 100).await;

    let output = ctl(&["--socket", path(&socket), "disconnect-tunnel", &id]).await;
    assert_exit(&output, 0);
    closed_by_peer(&mut client, "the disconnected tunnel's client").await;
    let ended = tokio::time::timeout(DEADLINE, running)
        .await
        .unwrap()
        .unwrap();
    match ended {
        Err(TunnelError::Goodbye(reason)) => {
            assert!(reason.contains("disconnected by an operator"), "{reason}")
        }
        other => panic!("expected a goodbye, got {other:?}"),
    }
    eventually("the port to close", DEADLINE, || async {
        TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await;
    let admin = AdminClient::unix(&socket);
    let tunnels: Vec<TunnelInfo> = admin.get(&model::service_tunnels("tcp")).await.unwrap();
    assert!(tunnels.is_empty(), "{tunnels:?}");
    let again = ctl(&["--socket", path(&socket), "disconnect-tunnel", &id]).await;
    assert_exit(&again, 3);
}

// ---- tunnelizectl, the built binary ----

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

async fn ctl(args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tunnelizectl"));
    command
        .args(args)
        .env_remove("TUNNELIZE_MONITOR_KEY")
        .kill_on_drop(true);
    tokio::time::timeout(DEADLINE, command.output())
        .await
        .expect("tunnelizectl finishes in time")
        .expect("tunnelizectl runs")
}

fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn every_tunnelizectl_command_works_against_a_live_hub_in_table_and_json_form() {
    let live = live().await;
    let _client = echoing_client(live.echo, 64).await;
    let socket = path(&live.socket).to_owned();
    let tls = format!("https://127.0.0.1:{}", live.tls.port());
    let fingerprint = live.hub.fingerprint.to_string();
    let tunnel_id = live.tunnel.tunnel_id.to_string();
    let via: [Vec<&str>; 2] = [
        vec!["--socket", &socket],
        vec![
            "--hub",
            &tls,
            "--fingerprint",
            &fingerprint,
            "--key",
            MONITOR_KEY,
        ],
    ];
    for transport in &via {
        let run = |extra: &[&str]| {
            let mut args = transport.clone();
            args.extend_from_slice(extra);
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            async move {
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                ctl(&refs).await
            }
        };
        let out = run(&["sys-info"]).await;
        assert_exit(&out, 0);
        assert!(stdout(&out).contains("hub"), "{}", stdout(&out));
        let out = run(&["list-services"]).await;
        assert_exit(&out, 0);
        let table = stdout(&out);
        assert!(table.starts_with("NAME"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("tcp ") && l.contains(" 1 ")),
            "{table}"
        );
        let out = run(&["get-service", "tcp"]).await;
        assert_exit(&out, 0);
        assert!(stdout(&out).contains("tcp"));
        let out = run(&["list-tunnels", "tcp"]).await;
        assert_exit(&out, 0);
        assert!(stdout(&out).contains(&tunnel_id), "{}", stdout(&out));
        let out = run(&["list-clients", "tcp"]).await;
        assert_exit(&out, 0);
        assert!(stdout(&out).contains(&tunnel_id), "{}", stdout(&out));

        let out = run(&["--json", "list-services"]).await;
        assert_exit(&out, 0);
        let services: Vec<ServiceInfo> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(services[0].name, "tcp");
        let out = run(&["--json", "list-clients", "tcp"]).await;
        assert_exit(&out, 0);
        let clients: Vec<ClientInfo> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(clients.len(), 1);
        let out = run(&["--json", "sys-info"]).await;
        assert_exit(&out, 0);
        let system: SystemInfo = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(system.role, "hub");

        assert_exit(&run(&["get-service", "nope"]).await, 3);
        assert_exit(&run(&["disconnect-client", "424242"]).await, 3);
        let reload = run(&["reload"]).await;
        assert_exit(&reload, 1);
        assert!(String::from_utf8_lossy(&reload.stderr).contains("cannot reload"));
    }
    // Wrong key over TLS: exit 4, and the key is not shown.
    let out = ctl(&[
        "--hub",
        &tls,
        "--fingerprint",
        &fingerprint,
        "--key",
        "wrong-key-0000000000",
        "sys-info",
    ])
    .await;
    assert_exit(&out, 4);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("wrong-key-0000000000"));
}

#[tokio::test]
async fn a_tunnel_daemon_reports_its_session_proxies_and_target_health_on_its_socket() {
    let hub = start_hub(vec![tcp_any("tcp")]).await;
    let target = start_echo().await;
    let dead = closed_port().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tunnel.sock");
    let mut config = tunnel_config(
        &hub,
        vec![
            proxy("echo", "tcp", target, None),
            proxy("dead", "tcp", dead, None),
            proxy("lost", "nope", target, None),
        ],
    );
    config.admin = admin_on(&socket);
    let admin_config = config.admin.clone();
    let tunnel = Tunnel::new(config).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let listeners =
        tunnelize::admin::serve_tunnel(tunnel.status().clone(), &admin_config, None, &stop)
            .await
            .unwrap();
    assert_eq!(listeners.socket.as_deref(), Some(socket.as_path()));
    let running = tokio::spawn(supervise(tunnel, Backoff::default(), stop.clone()));

    let admin = AdminClient::unix(&socket);
    let status: TunnelStatus = eventually("the tunnel to connect", DEADLINE, || async {
        let status: TunnelStatus = admin.get(model::STATUS).await.ok()?;
        (status.state == "connected").then_some(status)
    })
    .await;
    assert_eq!(status.hub, hub.addr.to_string());
    let by_name =
        |s: &TunnelStatus, name: &str| s.proxies.iter().find(|p| p.name == name).unwrap().clone();
    let echo = by_name(&status, "echo");
    assert_eq!(echo.state, "live");
    let port: u16 = echo.public.as_deref().unwrap().parse().unwrap();
    let dead_port: u16 = by_name(&status, "dead").public.unwrap().parse().unwrap();
    let lost = by_name(&status, "lost");
    assert_eq!(lost.state, "rejected");
    assert!(lost.reason.unwrap().contains("no service `nope`"));
    assert_eq!(echo.target_up, None, "no connection yet");

    // One client each: the live target is up, the closed one down.
    let _client = echoing_client(SocketAddr::from(([127, 0, 0, 1], port)), 5).await;
    let mut refused = connect(SocketAddr::from(([127, 0, 0, 1], dead_port))).await;
    closed_by_peer(&mut refused, "the client of the closed target").await;
    let status: TunnelStatus = eventually("target health", DEADLINE, || async {
        let s: TunnelStatus = admin.get(model::STATUS).await.ok()?;
        let ok = by_name(&s, "echo").target_up == Some(true)
            && by_name(&s, "dead").target_up == Some(false);
        ok.then_some(s)
    })
    .await;
    assert_eq!(status.tunnel_id.as_deref().map(str::len), Some(36));
    let metrics = admin.get_text(model::METRICS).await.unwrap();
    assert_eq!(sample(&metrics, "tunnelize_hub_connected", &[]), Some(1.0));
    assert_eq!(
        sample(&metrics, "tunnelize_target_up", &[("proxy", "dead")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "tunnelize_target_up", &[("proxy", "echo")]),
        Some(1.0)
    );
    let system: SystemInfo = admin.get(model::SYSTEM).await.unwrap();
    assert_eq!(system.role, "tunnel");

    // tunnelizectl status, as a table and as JSON.
    let out = ctl(&["--socket", path(&socket), "status"]).await;
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains("connected") && text.contains("rejected"),
        "{text}"
    );
    let out = ctl(&["--socket", path(&socket), "--json", "status"]).await;
    assert_exit(&out, 0);
    let doc: TunnelStatus = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc.proxies.len(), 3);
    // A tunnel has no hub endpoints.
    match admin.get::<Value>(model::SERVICES).await {
        Err(AdminError::NotFound { .. }) => {}
        other => panic!("expected 404, got {other:?}"),
    }

    // The hub goes away: the status says so.
    hub.stop.cancel();
    eventually("the tunnel to notice", DEADLINE, || async {
        let s: TunnelStatus = admin.get(model::STATUS).await.ok()?;
        (s.state == "connecting" && s.last_error.is_some()).then_some(())
    })
    .await;
    stop.cancel();
    let _ = tokio::time::timeout(DEADLINE, running).await;
}

#[tokio::test]
async fn udp_sessions_are_listed_as_clients_with_their_bytes() {
    use tunnelize::config::{PortRange, ServiceKind, UdpService};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hub.sock");
    let mut config = hub_config(vec![ServiceConfig {
        name: "dns".into(),
        kind: ServiceKind::Udp(UdpService {
            listen: [127, 0, 0, 1].into(),
            ports: PortRange { start: 0, end: 0 },
            session_timeout: DEADLINE * 3,
            max_sessions: 16,
        }),
    }]);
    config.admin = admin_on(&socket);
    let (hub, _) = start_hub_with_admin(config).await;
    let echo = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    let tunnel = start_tunnel(tunnel_config(&hub, vec![proxy("dns", "dns", target, None)])).await;
    let public = tunnel.addr(0);
    let mut peers = Vec::new();
    for size in [300usize, 1200] {
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let data = payload(size as u64, size);
        client.send_to(&data, public).await.unwrap();
        let mut back = vec![0u8; 2048];
        let (n, _) = tokio::time::timeout(DEADLINE, client.recv_from(&mut back))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(&back[..n], &data[..]);
        peers.push((
            client.local_addr().unwrap().to_string(),
            size as u64,
            client,
        ));
    }
    let admin = AdminClient::unix(&socket);
    let clients: Vec<ClientInfo> = admin.get(&model::service_clients("dns")).await.unwrap();
    assert_eq!(clients.len(), 2, "{clients:?}");
    for (peer, size, _) in &peers {
        let c = clients.iter().find(|c| &c.peer == peer).expect("listed");
        assert_eq!(
            (c.bytes_in, c.bytes_out),
            (*size, *size),
            "payload bytes only"
        );
        assert_eq!(c.proxy, "dns");
    }
    let dns: ServiceInfo = admin.get(&model::service("dns")).await.unwrap();
    assert_eq!((dns.clients, dns.bytes_in, dns.bytes_out), (2, 1500, 1500));
    // Disconnecting a UDP client ends its session: it is no longer listed.
    let id = clients[0].id.clone();
    let _: Message = admin.delete(&model::client(&id)).await.unwrap();
    eventually("the session to end", DEADLINE, || async {
        let list: Vec<ClientInfo> = admin.get(&model::service_clients("dns")).await.ok()?;
        (list.len() == 1 && list[0].id != id).then_some(())
    })
    .await;
}
