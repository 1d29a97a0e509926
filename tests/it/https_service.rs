//! The `https` service: certificates by SNI (two names and a wildcard), ALPN h2, and the http
//! service's redirect to it.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::pki::TestCa;
use common::web::start_app;
use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::process::Command;
use tunnelize::config::{HttpService, ServiceConfig, ServiceKind, TlsFiles};

/// A CA and three certificates it signs: `a.test.local`, `b.test.local`, `*.test.local`.
struct Pki {
    ca_file: std::path::PathBuf,
    ca_der: CertificateDer<'static>,
    certs: Vec<(TlsFiles, CertificateDer<'static>)>,
}

fn make_pki(dir: &Path) -> Pki {
    let ca = TestCa::new(dir);
    let certs = ["a.test.local", "b.test.local", "*.test.local"]
        .into_iter()
        .enumerate()
        .map(|(i, name)| ca.issue(dir, &i.to_string(), name))
        .collect();
    Pki {
        ca_file: ca.file,
        ca_der: ca.der,
        certs,
    }
}

fn web(
    name: &str,
    tls: bool,
    certificates: Vec<TlsFiles>,
    redirect: Option<&str>,
) -> ServiceConfig {
    let http = HttpService {
        redirect_https: redirect.map(str::to_owned),
        certificates,
        ..http_settings("test.local")
    };
    let kind = if tls {
        ServiceKind::Https(http)
    } else {
        ServiceKind::Http(http)
    };
    ServiceConfig {
        name: name.into(),
        kind,
    }
}

/// The certificate the hub presents for `sni`.
async fn presented_cert(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    sni: &str,
) -> CertificateDer<'static> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let socket = TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), socket)
        .await
        .unwrap_or_else(|e| panic!("TLS to {sni} failed: {e}"));
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

async fn curl(args: &[&str]) -> String {
    let out = tokio::time::timeout(
        DEADLINE,
        Command::new("curl")
            .args(["-sS", "--max-time", "15"])
            .args(args)
            .output(),
    )
    .await
    .expect("curl hung")
    .expect("curl must be installed");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_chosen_by_sni_including_a_wildcard_and_h2_is_offered() {
    tunnelize::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let files: Vec<TlsFiles> = pki.certs.iter().map(|(f, _)| f.clone()).collect();
    let hub = start_hub(vec![web("secure", true, files, None)]).await;
    let addr = hub.services["secure"];
    let app = start_app("tls").await;
    let mut proxies = Vec::new();
    for name in ["a", "b", "c"] {
        let mut p = proxy(name, "secure", app.addr, None);
        p.hostname = Some(name.into());
        proxies.push(p);
    }
    let _t = start_tunnel(tunnel_config(&hub, proxies)).await;

    for (sni, want) in [
        ("a.test.local", 0),
        ("b.test.local", 1),
        ("c.test.local", 2),
    ] {
        assert_eq!(
            presented_cert(addr, &pki.ca_der, sni).await,
            pki.certs[want].1,
            "certificate for {sni}"
        );
    }
    for host in ["a", "b", "c"] {
        let resolve = format!("{host}.test.local:{}:127.0.0.1", addr.port());
        let url = format!("https://{host}.test.local:{}/over-tls", addr.port());
        let ca = pki.ca_file.to_str().unwrap();
        let out = curl(&[
            "--cacert",
            ca,
            "--resolve",
            &resolve,
            "--http2",
            "-w",
            "\n%{http_version}",
            &url,
        ])
        .await;
        let (body, version) = out.rsplit_once('\n').unwrap();
        assert_eq!(version, "2", "ALPN h2 negotiated for {host}");
        let seen: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            seen["headers"]["x-forwarded-proto"],
            serde_json::json!(["https"])
        );
        let out = curl(&[
            "--cacert",
            ca,
            "--resolve",
            &resolve,
            "--http1.1",
            "-w",
            "\n%{http_version}",
            &url,
        ])
        .await;
        assert!(out.ends_with("\n1.1"), "http/1.1 still works: {out}");
    }
    assert_eq!(app.requests().len(), 6);
}

#[tokio::test]
async fn an_http_service_can_redirect_everything_to_https() {
    tunnelize::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let files: Vec<TlsFiles> = pki.certs.iter().map(|(f, _)| f.clone()).collect();
    let hub = start_hub(vec![
        web("plain", false, vec![], Some("secure")),
        web("secure", true, files, None),
    ])
    .await;
    let (plain, secure) = (hub.services["plain"], hub.services["secure"]);
    let resolve = format!("a.test.local:{}:127.0.0.1", plain.port());
    let url = format!("http://a.test.local:{}/path?q=1", plain.port());
    let out = curl(&[
        "--resolve",
        &resolve,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        &url,
    ])
    .await;
    assert_eq!(
        out,
        format!("308 https://a.test.local:{}/path?q=1", secure.port())
    );
}

#[tokio::test]
async fn a_reload_serves_certificates_renewed_at_the_same_paths() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let files = pki.certs[0].0.clone();
    let config = hub_config(vec![web("secure", true, vec![files.clone()], None)]);
    let (hub, _, view) = start_hub_full(config.clone()).await;
    let addr = hub.services["secure"];
    assert_eq!(
        presented_cert(addr, &pki.ca_der, "a.test.local").await,
        pki.certs[0].1
    );
    // A renewal writes a new certificate over the same files, then reloads.
    let renewed_dir = tempfile::tempdir().unwrap();
    let renewed = make_pki(renewed_dir.path());
    std::fs::copy(&renewed.certs[0].0.cert_file, &files.cert_file).unwrap();
    std::fs::copy(&renewed.certs[0].0.key_file, &files.key_file).unwrap();
    let summary = view.reload(config).await.unwrap();
    assert!(
        summary.contains("0 changed"),
        "the service is unchanged: {summary}"
    );
    assert_eq!(
        presented_cert(addr, &renewed.ca_der, "a.test.local").await,
        renewed.certs[0].1,
        "new connections get the renewed certificate"
    );
}

/// An h2 connection to `sni` on `addr`: the request sender and the connection's task, which
/// ends when the hub closes the connection.
async fn h2_client(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    sni: &str,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let socket = TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), socket)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_without_requests_is_closed_after_idle_timeout_despite_pings() {
    use http_body_util::BodyExt;
    tunnelize::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let files: Vec<TlsFiles> = pki.certs.iter().map(|(f, _)| f.clone()).collect();
    let mut config = hub_config(vec![web("secure", true, files, None)]);
    // The hub pings an idle h2 client every idle_timeout / 2; the pings must not count as use.
    config.idle_timeout = Duration::from_millis(1500);
    let hub = start_hub_with(config).await;
    let addr = hub.services["secure"];
    let app = start_app("tls").await;
    let mut p = proxy("a", "secure", app.addr, None);
    p.hostname = Some("a".into());
    let _t = start_tunnel(tunnel_config(&hub, vec![p])).await;

    let (mut sender, conn) = h2_client(addr, &pki.ca_der, "a.test.local").await;
    let request = http::Request::get("https://a.test.local/first")
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();

    // Nothing more is asked: the hub closes the connection (the client's task ends).
    tokio::time::timeout(DEADLINE, conn)
        .await
        .expect("the idle h2 connection is closed by the hub")
        .unwrap();
    assert!(sender.is_closed() || !sender.is_ready());
    assert_eq!(app.requests(), ["GET /first"]);
}
