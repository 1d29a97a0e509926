//! Hub certificates from files, verified by tunnels through a CA file.

mod common;

use std::path::Path;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tunnelize::config::{HubTrust, TlsFiles};
use tunnelize::hub::Hub;
use tunnelize::tls::Identity;
use tunnelize::tunnel::{Tunnel, TunnelError};

/// Writes a CA certificate, and a hub certificate for `localhost` signed by it, into `dir`.
fn make_pki(dir: &Path) -> (TlsFiles, std::path::PathBuf) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct subject names: OpenSSL takes a leaf whose subject equals its issuer for
    // self-signed.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tunnelize test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();

    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let files = TlsFiles {
        cert_file: dir.join("hub.crt"),
        key_file: dir.join("hub.key"),
    };
    std::fs::write(&files.cert_file, leaf.pem()).unwrap();
    std::fs::write(&files.key_file, leaf_key.serialize_pem()).unwrap();
    (files, ca_file)
}

async fn hub_with_files(files: &TlsFiles) -> TestHub {
    let identity = Identity::from_files(files).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = hub_config(vec![tcp_any("tcp")]);
    config.listen = addr;
    config.tls = Some(files.clone());
    let hub = Hub::new(config, &identity).await.unwrap();
    let fingerprint = hub.fingerprint();
    let stop = CancellationToken::new();
    let task = tokio::spawn(hub.run(listener, stop.clone()));
    TestHub {
        addr,
        services: Default::default(),
        fingerprint,
        stop,
        task,
    }
}

#[tokio::test]
async fn a_hub_certificate_from_files_is_trusted_through_its_ca_file() {
    tunnelize::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let (files, ca_file) = make_pki(dir.path());
    let hub = hub_with_files(&files).await;
    let echo = start_echo().await;
    let mut config = tunnel_config(&hub, vec![proxy("echo", "tcp", echo, None)]);
    config.hub_trust = HubTrust::CaFile(ca_file);
    let tunnel = start_tunnel(config).await;
    assert_eq!(round_trip(tunnel.addr(0), b"via CA").await, b"via CA");
}

#[tokio::test]
async fn a_wrong_server_name_or_another_ca_is_refused_for_good() {
    tunnelize::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let (files, ca_file) = make_pki(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (_, other_ca) = make_pki(other.path());
    let hub = hub_with_files(&files).await;
    let echo = start_echo().await;

    let mut wrong_name = tunnel_config(&hub, vec![proxy("echo", "tcp", echo, None)]);
    wrong_name.hub_trust = HubTrust::CaFile(ca_file);
    wrong_name.hub_server_name = "hub.example.org".into();
    let mut wrong_ca = tunnel_config(&hub, vec![proxy("echo", "tcp", echo, None)]);
    wrong_ca.hub_trust = HubTrust::CaFile(other_ca);

    for config in [wrong_name, wrong_ca] {
        let err = Tunnel::new(config)
            .unwrap()
            .connect()
            .await
            .err()
            .expect("must be refused");
        assert!(
            matches!(err, TunnelError::Handshake { rejected: true, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("not trusted"), "{err}");
    }
}
