//! The `http` service end to end: a real hub and tunnels in process, the test app behind them,
//! and real clients (curl, raw sockets, hyper, a WebSocket client).

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::web::{App, start_app};
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tunnelize::config::HttpService;
use tunnelize::protocol::{BasicAuth, ProxyOutcome};

const DOMAIN: &str = "test.local";

fn web_proxy(name: &str, app: &App, hostname: &str) -> tunnelize::config::ProxyConfig {
    let mut p = proxy(name, "web", app.addr, None);
    p.hostname = Some(hostname.into());
    p
}

fn hostname_of(tunnel: &TestTunnel, index: usize) -> String {
    match &tunnel.outcomes[index] {
        ProxyOutcome::Accepted {
            hostname: Some(h), ..
        } => h.clone(),
        other => panic!("proxy {index} not accepted: {other:?}"),
    }
}

/// Runs curl against `url` (written without a port), resolving its host to `addr`; returns
/// (status, body).
async fn curl(addr: SocketAddr, url: &str, extra: &[&str]) -> (u16, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let resolve = format!("{host}:{}:127.0.0.1", addr.port());
    let url = format!("{scheme}://{host}:{}/{path}", addr.port());
    let out = tokio::time::timeout(
        DEADLINE,
        Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "15",
                "-w",
                "\n%{http_code}",
                "--resolve",
                &resolve,
            ])
            .args(extra)
            .arg(&url)
            .output(),
    )
    .await
    .expect("curl hung")
    .expect("curl must be installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Sends raw bytes, then reads until the hub closes the connection (or `DEADLINE`).
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("hub kept the connection open");
    String::from_utf8_lossy(&out).into_owned()
}

/// A plain HTTP/1.1 client connection to `addr`, kept alive across requests.
async fn keep_alive(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let socket = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(socket))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// GET `path` for `host` on `sender`: (status, body), or why no response came. Gives up after
/// [`DEADLINE`].
async fn try_get(
    sender: &mut SendRequest<Empty<Bytes>>,
    host: &str,
    path: &str,
) -> Result<(u16, String), String> {
    let request = hyper::Request::get(path)
        .header("host", host)
        .body(Empty::new())
        .unwrap();
    tokio::time::timeout(DEADLINE, async {
        sender.ready().await.map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
    .await
    .map_err(|_| "timed out".to_owned())?
}

/// GET `path` for `host` on `sender`; (status, body). Panics if no response comes.
async fn get(sender: &mut SendRequest<Empty<Bytes>>, host: &str, path: &str) -> (u16, String) {
    try_get(sender, host, path).await.unwrap()
}

struct Setup {
    hub: TestHub,
    web: SocketAddr,
    view: tunnelize::hub::inspect::HubView,
}

async fn setup(tweak: impl FnOnce(&mut HttpService)) -> Setup {
    let config = hub_config(vec![http_with("web", DOMAIN, tweak)]);
    let (hub, _admin, view) = start_hub_full(config).await;
    let web = hub.services["web"];
    Setup { hub, web, view }
}

/// The hub's `tunnelize_rejected_total{reason="bad_request"}`.
fn bad_requests(view: &tunnelize::hub::inspect::HubView) -> u64 {
    let text = view.metrics();
    let line = text
        .lines()
        .find(|l| l.starts_with("tunnelize_rejected_total{reason=\"bad_request\"}"))
        .expect("the bad_request counter is exported");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_on_a_keep_alive_connection_is_routed_by_its_own_host() {
    let s = setup(|_| {}).await;
    let (a, b) = (start_app("a").await, start_app("b").await);
    let ta = start_tunnel(tunnel_config(&s.hub, vec![web_proxy("a", &a, "alpha")])).await;
    let tb = start_tunnel(tunnel_config(&s.hub, vec![web_proxy("b", &b, "beta")])).await;
    assert_eq!(hostname_of(&ta, 0), "alpha.test.local");
    assert_eq!(hostname_of(&tb, 0), "beta.test.local");

    // Three requests pipelined on one connection, alternating hosts.
    let pipelined = b"GET /1 HTTP/1.1\r\nHost: alpha.test.local\r\n\r\n\
                      GET /2 HTTP/1.1\r\nHost: BETA.test.local:80\r\n\r\n\
                      GET /3 HTTP/1.1\r\nHost: alpha.test.local\r\nConnection: close\r\n\r\n";
    let out = raw_exchange(s.web, pipelined).await;
    let apps: Vec<&str> = out
        .match_indices("\"app\":\"")
        .map(|(i, _)| &out[i + 7..i + 8])
        .collect();
    assert_eq!(
        apps,
        ["a", "b", "a"],
        "responses in order, each from its own host's app: {out}"
    );
    assert_eq!(
        a.requests(),
        ["GET /1", "GET /3"],
        "alpha's app never sees beta's request"
    );
    assert_eq!(b.requests(), ["GET /2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_client_sends_all_its_requests_on_one_upstream_connection() {
    let s = setup(|_| {}).await;
    let (a, b) = (start_app("a").await, start_app("b").await);
    let _t = start_tunnel(tunnel_config(
        &s.hub,
        vec![web_proxy("a", &a, "alpha"), web_proxy("b", &b, "beta")],
    ))
    .await;
    let mut client = keep_alive(s.web).await;
    for i in 0..100 {
        let (status, body) = get(&mut client, "alpha.test.local", &format!("/{i}")).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(a.requests().len(), 100);
    assert_eq!(
        a.connections(),
        1,
        "100 requests one after another on one client connection share one upstream connection"
    );
    // Moving to another hostname and back: each request still reaches its own app.
    for i in 0..10 {
        let host = if i % 2 == 0 { "beta" } else { "alpha" };
        let (status, body) = get(&mut client, &format!("{host}.test.local"), "/x").await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains(&format!("\"app\":\"{}\"", &host[..1])),
            "{body}"
        );
    }
    assert_eq!(a.requests().len(), 105);
    assert_eq!(b.requests().len(), 5);
}

#[tokio::test]
async fn an_unknown_host_gets_a_404_naming_it_escaped() {
    let s = setup(|_| {}).await;
    let (status, body) = curl(s.web, "http://nobody.test.local/", &[]).await;
    assert_eq!(status, 404);
    assert!(body.contains("<code>nobody.test.local</code>"), "{body}");
    let out = raw_exchange(
        s.web,
        b"GET / HTTP/1.1\r\nHost: <script>x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 400"),
        "not a valid authority: {out}"
    );
    assert!(
        !out.contains("<script>"),
        "a host is never echoed unescaped: {out}"
    );
    // `&` and `'` are sub-delims, valid in an authority: this Host does reach the 404 page.
    let out = raw_exchange(
        s.web,
        b"GET / HTTP/1.1\r\nHost: A&b'c.test.local:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(
        out.contains("<code>a&amp;b&#39;c.test.local</code>"),
        "the host is named, escaped: {out}"
    );
    assert!(
        !out.contains("a&b'c"),
        "a host is never echoed unescaped: {out}"
    );
}

#[tokio::test]
async fn a_refusing_target_gives_502_and_a_silent_one_504() {
    let s = setup(|h| h.response_timeout = Duration::from_millis(500)).await;
    let dead = closed_port().await;
    let app = start_app("slow").await;
    let mut refusing = proxy("dead", "web", dead, None);
    refusing.hostname = Some("dead".into());
    let _t = start_tunnel(tunnel_config(
        &s.hub,
        vec![refusing, web_proxy("slow", &app, "slow")],
    ))
    .await;
    let (status, body) = curl(s.web, "http://dead.test.local/", &[]).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("could not reach its service"), "{body}");
    let (status, body) = curl(s.web, "http://slow.test.local/silent", &[]).await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("did not answer in time"), "{body}");
}

/// A target that reads a request head and answers it in HTTP/1.0, closing after the body.
async fn start_http10_target() -> SocketAddr {
    start_raw_target(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nold server".to_vec())
        .await
}

/// A target that reads a request head and answers it with `answer`, then closes.
async fn start_raw_target(answer: Vec<u8>) -> SocketAddr {
    let answer: std::sync::Arc<[u8]> = answer.into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match socket.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let _ = socket.write_all(&answer).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_http10_target_is_answered_to_the_client_in_http11() {
    let s = setup(|_| {}).await;
    let old = start_http10_target().await;
    let mut proxy = proxy("old", "web", old, None);
    proxy.hostname = Some("old".into());
    let _t = start_tunnel(tunnel_config(&s.hub, vec![proxy])).await;
    let out = raw_exchange(
        s.web,
        b"GET / HTTP/1.1\r\nHost: old.test.local\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("\r\n\r\nA\r\nold server\r\n0\r\n\r\n"),
        "{out}"
    );
    // A 1.0 client is answered in 1.0.
    let out = raw_exchange(s.web, b"GET / HTTP/1.0\r\nHost: old.test.local\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    assert!(out.ends_with("old server"), "{out}");
}

#[tokio::test]
async fn a_response_head_over_16_kib_is_a_502_and_one_under_it_passes() {
    let s = setup(|_| {}).await;
    let head_of = |cookie: usize| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: c={}\r\n\r\nok",
            "v".repeat(cookie)
        )
        .into_bytes()
    };
    let big = start_raw_target(head_of(20 * 1024)).await;
    let fits = start_raw_target(head_of(12 * 1024)).await;
    let mut proxies = vec![
        proxy("big", "web", big, None),
        proxy("fits", "web", fits, None),
    ];
    proxies[0].hostname = Some("big".into());
    proxies[1].hostname = Some("fits".into());
    let _t = start_tunnel(tunnel_config(&s.hub, proxies)).await;
    let ask = |host: &str| {
        format!("GET / HTTP/1.1\r\nHost: {host}.test.local\r\nConnection: close\r\n\r\n")
    };
    let out = raw_exchange(s.web, ask("big").as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 502"),
        "{}",
        &out[..out.len().min(200)]
    );
    let out = raw_exchange(s.web, ask("fits").as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "{}",
        &out[..out.len().min(200)]
    );
    assert!(
        out.ends_with("\r\n\r\nok"),
        "{}",
        &out[..out.len().min(200)]
    );
}

#[tokio::test]
async fn forwarded_headers_are_replaced_unless_the_peer_is_trusted() {
    let s = setup(|_| {}).await;
    let app = start_app("a").await;
    let _t = start_tunnel(tunnel_config(&s.hub, vec![web_proxy("a", &app, "fwd")])).await;
    let spoof = [
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        "-H",
        "X-Forwarded-Host: evil",
        "-H",
        "X-Forwarded-Proto: gopher",
    ];
    let (status, body) = curl(s.web, "http://fwd.test.local/x?y=1", &spoof).await;
    assert_eq!(status, 200, "{body}");
    let seen = json(&body);
    assert_eq!(seen["path"], "/x?y=1");
    assert_eq!(
        seen["headers"]["x-forwarded-for"],
        serde_json::json!(["127.0.0.1"])
    );
    assert_eq!(
        seen["headers"]["x-forwarded-proto"],
        serde_json::json!(["http"])
    );
    // The Host as the client sent it (curl adds the port), passed on unchanged.
    let sent_host = format!("fwd.test.local:{}", s.web.port());
    assert_eq!(
        seen["headers"]["x-forwarded-host"],
        serde_json::json!([sent_host])
    );
    assert_eq!(seen["headers"]["host"], serde_json::json!([sent_host]));

    let trusting = setup(|h| h.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let _t2 = start_tunnel(tunnel_config(
        &trusting.hub,
        vec![web_proxy("a", &app, "fwd")],
    ))
    .await;
    let (_, body) = curl(trusting.web, "http://fwd.test.local/", &spoof).await;
    let seen = json(&body);
    assert_eq!(
        seen["headers"]["x-forwarded-for"],
        serde_json::json!(["6.6.6.6, 127.0.0.1"])
    );
    assert_eq!(
        seen["headers"]["x-forwarded-host"],
        serde_json::json!(["evil"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_carries_a_one_mib_binary_message_both_ways() {
    let s = setup(|_| {}).await;
    let app = start_app("ws").await;
    let _t = start_tunnel(tunnel_config(&s.hub, vec![web_proxy("ws", &app, "ws")])).await;
    let socket = TcpStream::connect(s.web).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async("ws://ws.test.local/ws", socket)
        .await
        .expect("websocket handshake through the hub");
    assert_eq!(response.status(), 101);
    let message = payload(42, 1024 * 1024);
    ws.send(tokio_tungstenite::tungstenite::Message::binary(
        message.clone(),
    ))
    .await
    .unwrap();
    let echoed = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("echo timed out")
        .unwrap()
        .unwrap();
    assert_eq!(sha256(&echoed.into_data()), sha256(&message));
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_delivers_its_first_event_before_it_ends() {
    let s = setup(|_| {}).await;
    let app = start_app("sse").await;
    let _t = start_tunnel(tunnel_config(&s.hub, vec![web_proxy("sse", &app, "sse")])).await;
    let mut socket = TcpStream::connect(s.web).await.unwrap();
    socket
        .write_all(b"GET /sse HTTP/1.1\r\nHost: sse.test.local\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The app sends its second event only once released, so the first must arrive on its own.
    while !String::from_utf8_lossy(&got).contains("data: one") {
        let n = tokio::time::timeout(DEADLINE, socket.read(&mut buf))
            .await
            .expect("first event held back")
            .unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(!String::from_utf8_lossy(&got).contains("data: two"));
    app.release.notify_one();
    while !String::from_utf8_lossy(&got).contains("data: two") {
        let n = tokio::time::timeout(DEADLINE, socket.read(&mut buf))
            .await
            .expect("second event")
            .unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn smuggling_payloads_get_400_and_never_reach_the_target() {
    let s = setup(|_| {}).await;
    let app = start_app("a").await;
    let _t = start_tunnel(tunnel_config(&s.hub, vec![web_proxy("a", &app, "app")])).await;
    let payloads: [&[u8]; 14] = [
        // Line ends of a bare LF, which hyper takes and the target may read differently.
        b"GET / HTTP/1.1\nHost: app.test.local\n\n",
        b"GET / HTTP/1.1\r\nHost: app.test.local\nX-After: 1\r\n\r\n",
        // A chunk size over 64 bits, and one that is not hex (RFC 9112 section 7.1).
        b"POST / HTTP/1.1\r\nHost: app.test.local\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF1\r\nx\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: app.test.local\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
        b"POST / HTTP/1.1\r\nHost: app.test.local\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nx\r\n0\r\n\r\n",
        // A bare CR (section 2.2), whitespace before the colon (section 5.1), whitespace
        // before the first header (section 2.2), as nginx refuses them.
        b"GET / HTTP/1.1\r\nHost: app.test.local\rX-After: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : app.test.local\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app.test.local\r\nX-Tab\t: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\n Host: app.test.local\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: app.test.local\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        b"POST / HTTP/1.1\r\nHost: app.test.local\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nG",
        b"POST / HTTP/1.1\r\nHost: app.test.local\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app.test.local\r\nHost: other.test.local\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app.test.local\r\nX-Folded: a\r\n  b\r\n\r\n",
    ];
    for (i, payload) in payloads.iter().enumerate() {
        let out = raw_exchange(s.web, payload).await;
        assert!(
            out.starts_with("HTTP/1.1 400"),
            "{}\n=> {out}",
            String::from_utf8_lossy(payload)
        );
        // Refusals hyper makes itself are counted when the connection ends.
        eventually("each 400 counted as a bad request", DEADLINE, || async {
            (bad_requests(&s.view) == i as u64 + 1).then_some(())
        })
        .await;
    }
    assert!(
        app.requests().is_empty(),
        "nothing may reach the target: {:?}",
        app.requests()
    );
    assert_eq!(app.connections(), 0, "not even a connection to the target");
    // The same connection shape without the ambiguity works.
    let (status, _) = curl(s.web, "http://app.test.local/ok", &[]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_later_chunk_size_that_overflows_gets_400_and_a_close_not_502() {
    // Streams the body as it comes (no read-ahead), as a duplex client needs.
    let s = setup(|h| h.body_read_ahead = 0).await;
    let app = start_app("a").await;
    let _t = start_tunnel(tunnel_config(&s.hub, vec![web_proxy("a", &app, "app")])).await;
    let mut client = TcpStream::connect(s.web).await.unwrap();
    let head =
        b"POST /upload HTTP/1.1\r\nHost: app.test.local\r\nTransfer-Encoding: chunked\r\n\r\n";
    client.write_all(head).await.unwrap();
    client.write_all(b"5\r\nhello\r\n").await.unwrap();
    // Once the request is with the target, a chunk size over 64 bits.
    eventually("the request reached the target", DEADLINE, || async {
        (app.requests() == ["POST /upload"]).then_some(())
    })
    .await;
    client
        .write_all(b"FFFFFFFFFFFFFFFFF1\r\nx\r\n0\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, client.read_to_end(&mut out))
        .await
        .expect("the hub closes the connection")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("chunked framing is invalid"), "{out}");
    eventually("the 400 counted as a bad request", DEADLINE, || async {
        (bad_requests(&s.view) == 1).then_some(())
    })
    .await;
    // The target saw the first chunk, then its request cut short.
    eventually("the target saw the upload end", DEADLINE, || async {
        (app.uploads() == [5]).then_some(())
    })
    .await;
}

#[tokio::test]
async fn oversized_heads_get_431_and_oversized_bodies_413() {
    let s = setup(|h| h.max_head_size = 16 * 1024).await;
    let app = start_app("a").await;
    let mut limited = web_proxy("a", &app, "small");
    limited.max_body = Some(1000);
    let _t = start_tunnel(tunnel_config(&s.hub, vec![limited])).await;
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: small.test.local\r\nX-Big: {}\r\n\r\n",
        "a".repeat(32 * 1024)
    );
    assert_eq!(bad_requests(&s.view), 0);
    let out = raw_exchange(s.web, big_header.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    eventually("the 431 counted as a bad request", DEADLINE, || async {
        (bad_requests(&s.view) == 1).then_some(())
    })
    .await;
    let body = "x".repeat(5000);
    let (status, _) = curl(
        s.web,
        "http://small.test.local/upload",
        &["--data-binary", &body],
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(bad_requests(&s.view), 2, "the 413 is counted");
    let (status, body) = curl(
        s.web,
        "http://small.test.local/upload",
        &["--data-binary", "fits"],
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "4"));
    assert_eq!(
        app.requests(),
        ["POST /upload"],
        "only the request that fits reaches the target"
    );
}

/// A chunked request head for `path` on `small.test.local`, and `n` chunks of 500 bytes.
fn chunked_upload(path: &str, n: usize) -> (Vec<u8>, Vec<u8>) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: small.test.local\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n"
    );
    let mut chunks = Vec::new();
    for _ in 0..n {
        chunks.extend_from_slice(b"1f4\r\n");
        chunks.extend_from_slice(&[b'x'; 500]);
        chunks.extend_from_slice(b"\r\n");
    }
    (head.into_bytes(), chunks)
}

#[tokio::test]
async fn a_chunked_body_over_max_body_gets_413_and_the_target_no_more_than_max_body() {
    // Streams the body as it comes (no read-ahead), as a duplex client needs.
    let s = setup(|h| h.body_read_ahead = 0).await;
    let app = start_app("a").await;
    let mut limited = web_proxy("a", &app, "small");
    limited.max_body = Some(1000);
    let _t = start_tunnel(tunnel_config(&s.hub, vec![limited])).await;

    // Declares no length: the limit is only found while the body streams to the target.
    let (mut request, chunks) = chunked_upload("/upload", 10);
    request.extend_from_slice(&chunks);
    request.extend_from_slice(b"0\r\n\r\n");
    let out = raw_exchange(s.web, &request).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("connection: close"),
        "{out}"
    );
    assert!(out.contains("too large"), "{out}");
    let uploads = eventually("the target to see the upload end", DEADLINE, || async {
        let u = app.uploads();
        (!u.is_empty()).then_some(u)
    })
    .await;
    assert!(uploads[0] <= 1000, "the target got {uploads:?} bytes");

    // Exactly the limit, chunked, passes.
    let (mut request, chunks) = chunked_upload("/upload", 2);
    request.extend_from_slice(&chunks);
    request.extend_from_slice(b"0\r\n\r\n");
    let out = raw_exchange(s.web, &request).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("1000"), "{out}");
}

#[tokio::test]
async fn over_max_body_after_the_target_answered_the_connection_is_cut() {
    // Streams the body as it comes (no read-ahead), as a duplex client needs.
    let s = setup(|h| h.body_read_ahead = 0).await;
    let app = start_app("a").await;
    let mut limited = web_proxy("a", &app, "small");
    limited.max_body = Some(1000);
    let _t = start_tunnel(tunnel_config(&s.hub, vec![limited])).await;

    // The target answers before reading the body; the rest of the body only goes out once the
    // client has that answer's head, so the limit is hit after the response started.
    let (head, chunks) = chunked_upload("/answer-first", 10);
    let mut socket = TcpStream::connect(s.web).await.unwrap();
    socket.write_all(&head).await.unwrap();
    socket.write_all(&chunks[..505]).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, socket.read(&mut buf))
            .await
            .expect("response head")
            .unwrap();
        assert!(
            n > 0,
            "closed before the head: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // The rest may be refused mid-way; errors writing it are expected.
    let _ = socket.write_all(&chunks[505..]).await;
    let _ = socket.write_all(b"0\r\n\r\n").await;
    let rest = tokio::time::timeout(DEADLINE, async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(rest.is_ok(), "the hub must close the connection");
    let text = String::from_utf8_lossy(&got);
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the response must not look complete: {text}"
    );
    let uploads = eventually("the target to see the upload end", DEADLINE, || async {
        let u = app.uploads();
        (!u.is_empty()).then_some(u)
    })
    .await;
    assert!(uploads[0] <= 1000, "the target got {uploads:?} bytes");
}

#[tokio::test]
async fn by_default_a_small_body_reaches_the_target_only_once_whole() {
    let s = setup(|_| {}).await;
    let app = start_app("a").await;
    let mut limited = web_proxy("a", &app, "small");
    limited.max_body = Some(1000);
    let _t = start_tunnel(tunnel_config(&s.hub, vec![limited])).await;

    // A body trickled in: its first 505 bytes wait at the hub while another request passes.
    let (head, chunks) = chunked_upload("/upload", 2);
    let mut slow = TcpStream::connect(s.web).await.unwrap();
    slow.write_all(&head).await.unwrap();
    slow.write_all(&chunks[..505]).await.unwrap();
    let (status, _) = curl(s.web, "http://small.test.local/probe", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        app.requests(),
        ["GET /probe"],
        "the target saw the slow upload early"
    );
    // Once whole it goes upstream in full.
    slow.write_all(&chunks[505..]).await.unwrap();
    slow.write_all(b"0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, slow.read_to_end(&mut out))
        .await
        .expect("the hub answers and closes")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("1000"),
        "{out}"
    );

    // Over max_body within the read-ahead: 413, and the target never sees the request.
    let (mut request, chunks) = chunked_upload("/upload", 10);
    request.extend_from_slice(&chunks);
    request.extend_from_slice(b"0\r\n\r\n");
    let out = raw_exchange(s.web, &request).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    let (status, _) = curl(s.web, "http://small.test.local/after", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(app.requests(), ["GET /probe", "POST /upload", "GET /after"]);
    assert_eq!(app.uploads(), [1000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_clients_are_dropped_and_do_not_block_others() {
    let s = setup(|h| h.header_timeout = Duration::from_millis(800)).await;
    let app = start_app("a").await;
    let _t = start_tunnel(tunnel_config(&s.hub, vec![web_proxy("a", &app, "app")])).await;
    let mut slow = Vec::new();
    for _ in 0..1000 {
        // From 200 addresses each (under connections_per_address), as an attack from several.
        let mut c = spread_socket().connect(s.web).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: app.test.local\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(c);
    }
    let (status, _) = curl(s.web, "http://app.test.local/while-slowloris", &[]).await;
    assert_eq!(
        status, 200,
        "a normal client is served while 1,000 slow ones wait"
    );
    let mut buf = [0u8; 64];
    for c in slow.iter_mut().take(20) {
        let read = tokio::time::timeout(DEADLINE, c.read(&mut buf))
            .await
            .expect("slow client never dropped");
        assert!(
            !matches!(read, Ok(n) if n > 0 && !String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408")),
            "{read:?}"
        );
    }
    assert_eq!(app.requests(), ["GET /while-slowloris"]);
}

#[tokio::test]
async fn basic_auth_asks_for_and_checks_credentials() {
    let s = setup(|_| {}).await;
    let app = start_app("a").await;
    let mut guarded = web_proxy("a", &app, "private");
    guarded.basic_auth = Some(BasicAuth {
        user: "ann".into(),
        password_hash: tunnelize::hub::http::auth::hash_password("open sesame").unwrap(),
    });
    let _t = start_tunnel(tunnel_config(&s.hub, vec![guarded])).await;
    let out = raw_exchange(
        s.web,
        b"GET / HTTP/1.1\r\nHost: private.test.local\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"tunnelize\""),
        "{out}"
    );
    let (status, _) = curl(s.web, "http://private.test.local/", &["-u", "ann:wrong"]).await;
    assert_eq!(status, 401);
    let (status, body) = curl(
        s.web,
        "http://private.test.local/in",
        &["-u", "ann:open sesame"],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.requests(), ["GET /in"]);
    let seen = json(&body);
    assert!(
        seen["headers"].get("authorization").is_none(),
        "the hub consumed the credential; the target must not get it: {body}"
    );
}

#[tokio::test]
async fn authorization_reaches_the_target_only_when_the_hub_did_not_check_it() {
    let s = setup(|_| {}).await;
    let app = start_app("a").await;
    let mut guarded = web_proxy("g", &app, "guarded");
    guarded.basic_auth = Some(BasicAuth {
        user: "ann".into(),
        password_hash: tunnelize::hub::http::auth::hash_password("pw").unwrap(),
    });
    let open = web_proxy("o", &app, "open");
    let _t = start_tunnel(tunnel_config(&s.hub, vec![guarded, open])).await;
    let mut sender = keep_alive(s.web).await;
    for (host, auth) in [
        ("guarded.test.local", "Basic YW5uOnB3"),
        ("open.test.local", "Bearer app-token"),
    ] {
        let request = hyper::Request::get("/")
            .header("host", host)
            .header("authorization", auth)
            .header("proxy-authorization", "Basic cHJveHk6c2VjcmV0")
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.ready().await.unwrap();
        let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 200, "{host}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let seen = json(&String::from_utf8_lossy(&body));
        assert!(
            seen["headers"]["proxy-authorization"].is_null(),
            "a credential for a proxy is not the target's: {seen}"
        );
        let forwarded = &seen["headers"]["authorization"];
        if host.starts_with("open") {
            assert_eq!(
                forwarded,
                &serde_json::json!([auth]),
                "the app's own auth passes"
            );
        } else {
            assert!(
                forwarded.is_null(),
                "checked by the hub, not forwarded: {seen}"
            );
        }
    }
}

#[tokio::test]
async fn a_second_tunnel_cannot_take_a_hostname_in_use_and_random_names_are_given() {
    let s = setup(|_| {}).await;
    let app = start_app("a").await;
    let first = start_tunnel(tunnel_config(
        &s.hub,
        vec![
            web_proxy("a", &app, "mine"),
            proxy("r", "web", app.addr, None),
        ],
    ))
    .await;
    let random = hostname_of(&first, 1);
    assert!(
        random.ends_with(".test.local") && random.len() > ".test.local".len(),
        "{random}"
    );
    let second = start_tunnel(tunnel_config(
        &s.hub,
        vec![
            web_proxy("a", &app, "MINE"),
            web_proxy("b", &app, "x.other.org"),
        ],
    ))
    .await;
    for (i, want) in [
        (0, "hostname mine.test.local is in use by another tunnel"),
        (1, "not under service `web`'s domain"),
    ] {
        match &second.outcomes[i] {
            ProxyOutcome::Rejected { reason, .. } => assert!(reason.contains(want), "{reason}"),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
}

/// Starts two apps, "a" and "b", each behind its own tunnel, both in group "blue" on `lb`.
async fn balanced_pair(hub: &TestHub) -> (TestTunnel, TestTunnel) {
    let (a, b) = (start_app("a").await, start_app("b").await);
    let mut pa = web_proxy("a", &a, "lb");
    pa.group = Some("blue".into());
    let mut pb = web_proxy("b", &b, "lb");
    pb.group = Some("blue".into());
    let ta = start_tunnel(tunnel_config(hub, vec![pa])).await;
    let tb = start_tunnel(tunnel_config(hub, vec![pb])).await;
    assert_eq!(hostname_of(&ta, 0), "lb.test.local");
    assert_eq!(hostname_of(&tb, 0), "lb.test.local");
    (ta, tb)
}

fn assert_alternates(seen: &[String]) {
    assert!(
        seen.windows(2).all(|w| w[0] != w[1]) && seen.iter().any(|a| a == "a"),
        "strict round-robin between a and b: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_balances_across_tunnels_and_survives_one_leaving() {
    let s = setup(|_| {}).await;
    let (ta, _tb) = balanced_pair(&s.hub).await;
    // A new connection for every request.
    let mut seen = Vec::new();
    for _ in 0..10 {
        let (status, body) = curl(s.web, "http://lb.test.local/", &[]).await;
        assert_eq!(status, 200, "{body}");
        seen.push(json(&body)["app"].as_str().unwrap().to_owned());
    }
    assert_alternates(&seen);
    // Every request of one keep-alive connection is balanced on its own.
    let mut sender = keep_alive(s.web).await;
    let mut seen = Vec::new();
    for _ in 0..10 {
        let (status, body) = get(&mut sender, "lb.test.local", "/").await;
        assert_eq!(status, 200, "{body}");
        seen.push(json(&body)["app"].as_str().unwrap().to_owned());
    }
    assert_alternates(&seen);
    ta.stop.cancel();
    ta.task.await.unwrap();
    for _ in 0..6 {
        let (status, body) = curl(s.web, "http://lb.test.local/", &[]).await;
        assert_eq!(status, 200, "no failed request after a member left: {body}");
        assert_eq!(json(&body)["app"], "b");
    }
    for _ in 0..6 {
        let (status, body) = get(&mut sender, "lb.test.local", "/").await;
        assert_eq!(status, 200, "no failed request after a member left: {body}");
        assert_eq!(json(&body)["app"], "b");
    }
}

/// One request of [`a_member_leaving_a_group_under_load_fails_no_request_it_had_not_answered`].
struct Outcome {
    /// Whether the member had finished leaving when the request was sent.
    after_leaving: bool,
    result: Result<(u16, String), String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_leaving_a_group_under_load_fails_no_request_it_had_not_answered() {
    const WORKERS: usize = 4;
    const EACH: usize = 50;
    let s = setup(|_| {}).await;
    let (ta, _tb) = balanced_pair(&s.hub).await;
    let done = Arc::new(AtomicUsize::new(0));
    let left = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..WORKERS {
        let (web, done, left) = (s.web, done.clone(), left.clone());
        workers.spawn(async move {
            // Half the workers keep one connection, half open one per request.
            let mut sender = keep_alive(web).await;
            let mut outcomes = Vec::with_capacity(EACH);
            for i in 0..EACH {
                if worker % 2 == 1 || sender.is_closed() {
                    sender = keep_alive(web).await;
                }
                let after_leaving = left.load(Ordering::SeqCst);
                let result = try_get(&mut sender, "lb.test.local", &format!("/{worker}/{i}")).await;
                outcomes.push(Outcome {
                    after_leaving,
                    result,
                });
                done.fetch_add(1, Ordering::SeqCst);
            }
            outcomes
        });
    }
    // Stop "a" once about a fifth of the requests are done, while the rest keep coming.
    eventually("requests under way", DEADLINE, || {
        let done = done.clone();
        async move { (done.load(Ordering::SeqCst) >= WORKERS * EACH / 5).then_some(()) }
    })
    .await;
    ta.stop.cancel();
    ta.task.await.unwrap();
    // From here on the tunnel's connections are closed: it can answer nothing more.
    left.store(true, Ordering::SeqCst);
    let mut all = Vec::new();
    while let Some(outcomes) = tokio::time::timeout(DEADLINE, workers.join_next())
        .await
        .expect("workers finish in time")
    {
        all.extend(outcomes.unwrap());
    }
    assert_eq!(all.len(), WORKERS * EACH);
    // The hub answers a GET "a" left unanswered by sending it to "b": no 502 ever. Only a
    // request whose response "a" had begun can fail (cut short), and each worker has one
    // request at a time, so at most one per worker, sent before "a" was gone.
    let gateway_errors: Vec<_> = all
        .iter()
        .filter_map(|o| o.result.as_ref().ok())
        .filter(|(status, _)| *status != 200)
        .collect();
    assert!(
        gateway_errors.is_empty(),
        "{} of {} requests got an error page while a member left: {:?}",
        gateway_errors.len(),
        all.len(),
        gateway_errors.first()
    );
    let cut: Vec<_> = all.iter().filter(|o| o.result.is_err()).collect();
    assert!(
        cut.len() <= WORKERS && cut.iter().all(|o| !o.after_leaving),
        "{} requests were cut short, {} of them sent after the member had left: {:?}",
        cut.len(),
        cut.iter().filter(|o| o.after_leaving).count(),
        cut.iter().map(|o| &o.result).collect::<Vec<_>>()
    );
    let served = |app: &str| {
        all.iter()
            .any(|o| matches!(&o.result, Ok((200, body)) if json(body)["app"] == app))
    };
    assert!(served("a") && served("b"), "both members served requests");
    assert!(
        all.iter().any(|o| o.after_leaving),
        "some requests were sent after the member left"
    );
    let mut sender = keep_alive(s.web).await;
    for _ in 0..4 {
        let (status, body) = get(&mut sender, "lb.test.local", "/after").await;
        assert_eq!((status, json(&body)["app"].as_str()), (200, Some("b")));
    }
}

#[tokio::test]
async fn a_key_may_claim_the_custom_hostnames_the_hub_allows_it() {
    let s = setup(|_| {}).await;
    let app = start_app("custom").await;
    let t = start_tunnel(tunnel_config(
        &s.hub,
        vec![
            web_proxy("w", &app, "app.custom.test"),
            web_proxy("e", &app, "exact.example.org"),
            web_proxy("n", &app, "custom.test"),
        ],
    ))
    .await;
    assert_eq!(hostname_of(&t, 0), "app.custom.test");
    assert_eq!(hostname_of(&t, 1), "exact.example.org");
    assert!(
        matches!(&t.outcomes[2], ProxyOutcome::Rejected { reason, .. } if reason.contains("may not claim it"))
    );
    let (status, body) = curl(s.web, "http://app.custom.test/", &[]).await;
    assert_eq!(status, 200, "{body}");
}

/// The process's `tunnelize_tasks` gauge (hub, tunnel and test share this runtime).
fn tasks(view: &tunnelize::hub::inspect::HubView) -> u64 {
    let text = view.metrics();
    let line = text
        .lines()
        .find(|l| l.starts_with("tunnelize_tasks "))
        .expect("the tasks gauge is exported");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_upstream_connections_leave_no_task_behind_per_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup(|_| {}).await;
    let app = start_app("a").await;
    let _t = start_tunnel(tunnel_config(&s.hub, vec![web_proxy("a", &app, "pool")])).await;
    let mut client = tokio::net::TcpStream::connect(s.web).await.unwrap();
    // One whole response (head and Content-Length body), however the reads split it.
    let exchange = async |client: &mut tokio::net::TcpStream| {
        client
            .write_all(b"GET /n HTTP/1.1\r\nHost: pool.test.local\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..1000 {
            let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text
                    .split("content-length:")
                    .nth(1)
                    .and_then(|v| v.lines().next())
                    .and_then(|v| v.trim().parse().ok())
                    .expect("a Content-Length");
                if got.len() >= end + 4 + len {
                    assert!(got.starts_with(b"HTTP/1.1 200"));
                    assert_eq!(got.len(), end + 4 + len, "one response at a time");
                    return;
                }
            }
            let n = tokio::time::timeout(DEADLINE, client.read(&mut buf))
                .await
                .expect("a response")
                .unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
        panic!("no whole response");
    };
    exchange(&mut client).await;
    let before = tasks(&s.view);
    // Requests one after another: each reuses the one pooled upstream connection.
    for _ in 0..200 {
        exchange(&mut client).await;
    }
    let after = tasks(&s.view);
    assert!(
        after < before + 20,
        "200 requests left {} more tasks alive ({before} -> {after})",
        after.saturating_sub(before)
    );
}
