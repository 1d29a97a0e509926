//! The TLS policy of every TLS port of a hub (the tunnel listener, an https service, the TLS
//! admin listener), as a standard scanner sees it: only TLS 1.2 and 1.3 (no SSLv2, SSLv3,
//! TLS 1.0 or 1.1), only AEAD cipher suites of at least 128 bits (no NULL, EXPORT, RC4, DES,
//! 3DES, CBC or anonymous suite), no insecure renegotiation, no heartbleed; and `openssl
//! s_client` cannot handshake with TLS 1.1 (even allowing it on its side) but can with 1.2 and
//! 1.3.
//!
//! Needs `sslscan` (Debian package `sslscan`) and `openssl` (package `openssl`), so the scans are
//! ignored unless asked for: `cargo test --test tls_policy -- --ignored`.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair};
use tokio::process::Command;

use common::*;
use tunnelize::config::{AdminConfig, HttpService, ServiceConfig, ServiceKind, TlsFiles};
use tunnelize::secret::Secret;

/// A hub with all three kinds of TLS port, and each port's address and the name to ask for.
struct Ports {
    _dir: tempfile::TempDir,
    hub: TestHub,
    tunnel: SocketAddr,
    https: SocketAddr,
    admin: SocketAddr,
}

fn https_service(dir: &Path) -> ServiceConfig {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["app.test.local".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let files = TlsFiles {
        cert_file: dir.join("web.crt"),
        key_file: dir.join("web.key"),
    };
    std::fs::write(&files.cert_file, cert.pem()).unwrap();
    std::fs::write(&files.key_file, key.serialize_pem()).unwrap();
    ServiceConfig {
        name: "secure".into(),
        kind: ServiceKind::Https(HttpService {
            certificates: vec![files],
            ..http_settings("test.local")
        }),
    }
}

async fn start() -> Ports {
    let dir = tempfile::tempdir().unwrap();
    let mut config = hub_config(vec![https_service(dir.path())]);
    config.admin = AdminConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        key: Some(Secret::new("monitoring-key-0123456789abcdef").into()),
        ..AdminConfig::disabled()
    };
    let (hub, listeners, _view) = start_hub_full(config).await;
    let admin = listeners.tls.expect("the TLS admin listener runs");
    Ports {
        _dir: dir,
        tunnel: hub.addr,
        https: hub.services["secure"],
        admin,
        hub,
    }
}

/// Runs a program that must be installed; a missing one fails the test naming its package.
async fn run(program: &str, package: &str, args: &[String]) -> Output {
    let child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(120), child).await {
        Err(_) => panic!("{program} {args:?} did not finish in 120 s"),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{program}` is not installed: install the Debian package `{package}` \
             (apt-get install {package}; .ci/run installs it)"
        ),
        Ok(Err(e)) => panic!("cannot run {program}: {e}"),
        Ok(Ok(out)) => out,
    }
}

/// What sslscan found on one port.
#[derive(Debug, Default)]
struct Scan {
    /// Protocol name and whether it is enabled, from "SSL/TLS Protocols".
    protocols: Vec<(String, bool)>,
    /// (protocol, bits, cipher name) of every accepted cipher.
    ciphers: Vec<(String, u32, String)>,
}

fn parse_sslscan(text: &str) -> Scan {
    let mut scan = Scan::default();
    let mut in_protocols = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("SSL/TLS Protocols") {
            in_protocols = true;
            continue;
        }
        if in_protocols {
            let mut words = trimmed.split_whitespace();
            match (words.next(), words.next()) {
                (Some(proto), Some(state))
                    if proto.starts_with("SSL") || proto.starts_with("TLS") =>
                {
                    scan.protocols.push((proto.to_owned(), state == "enabled"));
                    continue;
                }
                _ => in_protocols = false,
            }
        }
        let words: Vec<&str> = trimmed.split_whitespace().collect();
        if let ["Preferred" | "Accepted", proto, bits, "bits", name, ..] = words[..] {
            let bits = bits.parse().unwrap_or(0);
            scan.ciphers.push((proto.to_owned(), bits, name.to_owned()));
        }
    }
    scan
}

/// An AEAD suite: AES-GCM or ChaCha20-Poly1305 (TLS 1.3 names use `_`, OpenSSL's 1.2 names `-`).
fn is_aead(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    name.contains("GCM") || (name.contains("CHACHA20") && name.contains("POLY1305"))
}

fn is_weak(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    [
        "NULL", "EXP", "RC4", "DES", "MD5", "ANON", "ADH", "AECDH", "CBC", "RC2", "IDEA", "SEED",
    ]
    .iter()
    .any(|bad| name.contains(bad))
}

async fn check_with_sslscan(what: &str, addr: SocketAddr, sni: &str) {
    let out = run(
        "sslscan",
        "sslscan",
        &[
            "--no-colour".into(),
            format!("--sni-name={sni}"),
            addr.to_string(),
        ],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Supported Server Cipher(s)"),
        "{what}: sslscan did not scan {addr} ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let scan = parse_sslscan(&text);
    for proto in ["SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3"] {
        let enabled = scan
            .protocols
            .iter()
            .find(|(p, _)| p == proto)
            .map(|(_, on)| *on)
            .unwrap_or_else(|| panic!("{what}: sslscan reported nothing on {proto}:\n{text}"));
        let wanted = matches!(proto, "TLSv1.2" | "TLSv1.3");
        assert_eq!(
            enabled,
            wanted,
            "{what}: {proto} is {} :\n{text}",
            if enabled { "enabled" } else { "disabled" }
        );
    }
    assert!(
        !scan.ciphers.is_empty(),
        "{what}: no cipher found in:\n{text}"
    );
    for (proto, bits, name) in &scan.ciphers {
        assert!(
            matches!(proto.as_str(), "TLSv1.2" | "TLSv1.3"),
            "{what}: a cipher on {proto}: {name}"
        );
        assert!(*bits >= 128, "{what}: {name} has {bits} bits");
        assert!(
            is_aead(name) && !is_weak(name),
            "{what}: {proto} offers {name}, which is not an AEAD suite"
        );
    }
    for proto in ["TLSv1.2", "TLSv1.3"] {
        assert!(
            scan.ciphers.iter().any(|(p, _, _)| p == proto),
            "{what}: no {proto} cipher accepted:\n{text}"
        );
    }
    let lower = text.to_ascii_lowercase();
    assert!(
        !lower.contains("insecure session renegotiation"),
        "{what}: insecure renegotiation:\n{text}"
    );
    assert!(
        !lower
            .lines()
            .any(|l| l.contains("vulnerable to heartbleed") && !l.contains("not vulnerable")),
        "{what}: heartbleed:\n{text}"
    );
}

/// `openssl s_client` with only `version` (`tls1_1`, `tls1_2`, `tls1_3`) allowed on its side,
/// and its security level lowered so that it really offers TLS 1.0/1.1.
async fn s_client(addr: SocketAddr, sni: &str, version: &str) -> (bool, String) {
    let out = run(
        "openssl",
        "openssl",
        &[
            "s_client".into(),
            "-connect".into(),
            addr.to_string(),
            "-servername".into(),
            sni.into(),
            format!("-{version}"),
            "-cipher".into(),
            "DEFAULT:@SECLEVEL=0".into(),
        ],
    )
    .await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn check_with_openssl(what: &str, addr: SocketAddr, sni: &str) {
    for old in ["tls1", "tls1_1"] {
        let (ok, text) = s_client(addr, sni, old).await;
        assert!(
            !ok && text.contains("Cipher is (NONE)"),
            "{what}: a -{old} handshake must fail:\n{text}"
        );
        // Refused by the hub (an alert), not by the client's own settings.
        assert!(
            text.contains("alert") && !text.contains("no protocols available"),
            "{what}: -{old} must be refused by the hub:\n{text}"
        );
    }
    for (version, name) in [("tls1_2", "TLSv1.2"), ("tls1_3", "TLSv1.3")] {
        let (ok, text) = s_client(addr, sni, version).await;
        let negotiated = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("New, {name}, Cipher is ")))
            .map(str::trim);
        assert!(
            ok && negotiated.is_some_and(|c| is_aead(c) && !is_weak(c)),
            "{what}: a -{version} handshake must succeed with an AEAD suite:\n{text}"
        );
    }
}

async fn check(what: &str, addr: SocketAddr, sni: &str) {
    check_with_sslscan(what, addr, sni).await;
    check_with_openssl(what, addr, sni).await;
}

#[tokio::test]
#[ignore = "needs the programs sslscan and openssl"]
async fn the_tunnel_listener_speaks_only_tls_1_2_and_1_3_with_aead_suites() {
    let ports = start().await;
    check("tunnel listener", ports.tunnel, "localhost").await;
    ports.hub.stop.cancel();
}

#[tokio::test]
#[ignore = "needs the programs sslscan and openssl"]
async fn an_https_service_speaks_only_tls_1_2_and_1_3_with_aead_suites() {
    let ports = start().await;
    check("https service", ports.https, "app.test.local").await;
    ports.hub.stop.cancel();
}

#[tokio::test]
#[ignore = "needs the programs sslscan and openssl"]
async fn the_tls_admin_listener_speaks_only_tls_1_2_and_1_3_with_aead_suites() {
    let ports = start().await;
    check("admin listener", ports.admin, "localhost").await;
    ports.hub.stop.cancel();
}

#[test]
fn the_sslscan_parser_reads_protocols_and_ciphers() {
    let sample = "  SSL/TLS Protocols:\nSSLv2     disabled\nSSLv3     disabled\nTLSv1.0   enabled\n\
                  TLSv1.3   enabled\n\n  Supported Server Cipher(s):\n\
                  Preferred TLSv1.3  128 bits  TLS_AES_128_GCM_SHA256        Curve 25519 DHE 253\n\
                  Accepted  TLSv1.0  112 bits  DES-CBC3-SHA\n";
    let scan = parse_sslscan(sample);
    assert_eq!(scan.protocols.len(), 4);
    assert!(scan.protocols.contains(&("TLSv1.0".into(), true)));
    assert!(scan.protocols.contains(&("SSLv3".into(), false)));
    assert_eq!(scan.ciphers.len(), 2);
    assert!(is_aead(&scan.ciphers[0].2) && !is_weak(&scan.ciphers[0].2));
    assert!(is_weak(&scan.ciphers[1].2) && !is_aead(&scan.ciphers[1].2));
    assert!(is_aead("ECDHE-ECDSA-CHACHA20-POLY1305") && !is_weak("ECDHE-RSA-AES256-GCM-SHA384"));
    assert!(!is_aead("ECDHE-RSA-AES128-SHA"), "CBC suites are not AEAD");
}
