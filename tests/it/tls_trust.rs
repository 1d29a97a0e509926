//! Hub certificates from files, verified by tunnels through a CA file.

use crate::common;

use std::path::Path;

use common::pki::TestCa;
use common::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tunnelize::config::{HubTrust, TlsFiles};
use tunnelize::hub::Hub;
use tunnelize::tls::Identity;
use tunnelize::tunnel::{Tunnel, TunnelError};

/// Writes a CA certificate, and a hub certificate for `localhost` signed by it, into `dir`.
fn make_pki(dir: &Path) -> (TlsFiles, std::path::PathBuf) {
    let ca = TestCa::new(dir);
    let (files, _) = ca.issue(dir, "hub", "localhost");
    (files, ca.file)
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

#[tokio::test]
async fn the_system_roots_do_not_trust_a_self_signed_hub() {
    // The default trust (neither hub_ca_file nor hub_cert_sha256) is the system's roots; a
    // hub's generated certificate is in none of them, so the tunnel must refuse, for good.
    let hub = start_hub(vec![tcp_any("tcp")]).await;
    let mut config = tunnel_config(&hub, vec![]);
    config.hub_trust = HubTrust::SystemRoots;
    match Tunnel::new(config) {
        // A machine without any root certificate refuses already here, which is as safe.
        Err(e) => assert!(e.to_string().contains("root"), "{e}"),
        Ok(tunnel) => {
            let err = tunnel.connect().await.err().expect("must be refused");
            assert!(
                matches!(err, TunnelError::Handshake { rejected: true, .. }),
                "{err}"
            );
            assert!(err.is_permanent());
        }
    }
}

#[tokio::test]
async fn each_configured_key_admits_its_tunnel_under_its_own_name() {
    let mut config = hub_config(vec![tcp_any("tcp")]);
    config.keys.push(tunnelize::config::TunnelKey {
        name: "second".into(),
        key: "second-key-0123456789".into(),
        hostnames: vec![],
    });
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hub.sock");
    config.admin = admin_on(&socket);
    let (hub, _) = start_hub_with_admin(config).await;
    let echo = start_echo().await;
    let first = start_tunnel(tunnel_config(&hub, vec![proxy("a", "tcp", echo, None)])).await;
    let mut second_config = tunnel_config(&hub, vec![proxy("b", "tcp", echo, None)]);
    second_config.key = Some(tunnelize::secret::Secret::new("second-key-0123456789"));
    let second = start_tunnel(second_config).await;
    assert_eq!(round_trip(first.addr(0), b"1").await, b"1");
    assert_eq!(round_trip(second.addr(0), b"2").await, b"2");
    let admin = tunnelize::admin::client::AdminClient::unix(&socket);
    let tunnels: Vec<tunnelize::admin::model::TunnelInfo> = admin
        .get(&tunnelize::admin::model::service_tunnels("tcp"))
        .await
        .unwrap();
    let key_of = |id: uuid::Uuid| {
        tunnels
            .iter()
            .find(|t| t.id == id.to_string())
            .and_then(|t| t.key_name.clone())
    };
    assert_eq!(key_of(first.tunnel_id).as_deref(), Some("test"));
    assert_eq!(key_of(second.tunnel_id).as_deref(), Some("second"));
}
