//! `tunnelize demo`: a hub, a tunnel and a small local HTTP service, all on loopback with free
//! ports and an embedded default configuration, so a new user sees the whole path work without
//! writing a config or being root. The service is published twice: through the hub's `http`
//! service as `demo.localhost` (routed by Host; `*.localhost` resolves to loopback in curl and
//! browsers) and through a `tcp` service on a port of its own.
//!
//! The hub gets a fresh self-signed certificate in memory and a random tunnel key; the tunnel
//! pins that certificate's fingerprint, exactly as an operator would with `hub_cert_sha256`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{
    AdminConfig, HttpService, HubConfig, HubTrust, PortRange, ProxyConfig, ServiceConfig,
    ServiceKind, TcpService, TunnelConfig, TunnelKey,
};
use crate::hub::{Hub, HubError};
use crate::protocol::ProxyOutcome;
use crate::secret::Secret;
use crate::tls::{Fingerprint, Identity, TlsError};
use crate::tunnel::{Tunnel, TunnelError};

/// What the demo's local service answers.
pub const GREETING: &str =
    "Hello from tunnelize! This answer came from a local service, through a tunnel.\n";

/// Errors starting the demo.
#[derive(Debug, Error)]
pub enum DemoError {
    /// A loopback port could not be bound.
    #[error("cannot bind a loopback port: {0}")]
    Bind(#[from] std::io::Error),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The hub refused its configuration.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The tunnel failed to connect.
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    /// The hub rejected the demo proxy.
    #[error("the hub rejected the demo proxy: {0}")]
    Rejected(String),
}

/// A running demo.
pub struct Demo {
    /// Where tunnels connect.
    pub hub_addr: SocketAddr,
    /// The hub certificate's fingerprint.
    pub fingerprint: Fingerprint,
    /// The local service behind the tunnel.
    pub local_addr: SocketAddr,
    /// The public URL through the hub's http service.
    pub http_url: String,
    /// The public address through the hub's tcp service.
    pub public_addr: SocketAddr,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Demo {
    /// Starts hub, local service and tunnel, and waits until the public port is live.
    pub async fn start() -> Result<Demo, DemoError> {
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();

        let identity = Identity::generate(&["localhost", "127.0.0.1"])?;
        let key = Secret::random(24);
        let hub_listener = TcpListener::bind("127.0.0.1:0").await?;
        let hub_addr = hub_listener.local_addr()?;
        let hub = Hub::new(hub_config(hub_addr, key.clone()), &identity).await?;
        let fingerprint = hub.fingerprint();
        let http_addr = hub
            .service_addr("web")
            .ok_or_else(|| DemoError::Rejected("the hub has no http listener".into()))?;
        tasks.push(tokio::spawn(hub.run(hub_listener, stop.clone())));

        let web = TcpListener::bind("127.0.0.1:0").await?;
        let local_addr = web.local_addr()?;
        tasks.push(tokio::spawn(serve_greeting(web, stop.clone())));

        let tunnel = Tunnel::new(tunnel_config(hub_addr, fingerprint, key, local_addr))?;
        let session = tunnel.connect().await?;
        let mut port = None;
        let mut hostname = None;
        for outcome in session.proxies() {
            match outcome {
                ProxyOutcome::Accepted { port: Some(p), .. } => port = Some(*p),
                ProxyOutcome::Accepted {
                    hostname: Some(h), ..
                } => hostname = Some(h.clone()),
                ProxyOutcome::Accepted { .. } => {}
                ProxyOutcome::Rejected { reason, .. } => {
                    return Err(DemoError::Rejected(reason.clone()));
                }
            }
        }
        let (Some(port), Some(hostname)) = (port, hostname) else {
            return Err(DemoError::Rejected(
                "the hub assigned no port or hostname".into(),
            ));
        };
        let tunnel_stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = session.run(&tunnel, tunnel_stop).await {
                tracing::warn!(error = %e, "demo tunnel stopped");
            }
        }));
        let public_addr = SocketAddr::from(([127, 0, 0, 1], port));
        let http_url = format!("http://{hostname}:{}/", http_addr.port());
        Ok(Demo {
            hub_addr,
            fingerprint,
            local_addr,
            http_url,
            public_addr,
            stop,
            tasks,
        })
    }

    /// Stops everything and waits for it to finish.
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

fn hub_config(listen: SocketAddr, key: Secret) -> HubConfig {
    HubConfig {
        listen,
        state_dir: std::env::temp_dir(),
        allow_no_auth: false,
        tls: None,
        keys: vec![TunnelKey {
            name: "demo".into(),
            key: key.into(),
            hostnames: vec![],
        }],
        services: vec![
            ServiceConfig {
                name: "demo".into(),
                kind: ServiceKind::Tcp(TcpService {
                    listen: [127, 0, 0, 1].into(),
                    ports: PortRange::OS_ASSIGNED,
                }),
            },
            ServiceConfig {
                name: "web".into(),
                kind: ServiceKind::Http(HttpService {
                    listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                    domain: "localhost".into(),
                    trusted_proxies: vec![],
                    header_timeout: Duration::from_secs(10),
                    response_timeout: Duration::from_secs(60),
                    max_head_size: 64 * 1024,
                    body_read_ahead: 8192,
                    redirect_https: None,
                    certificates: vec![],
                }),
            },
        ],
        heartbeat_interval: Duration::from_secs(10),
        handshake_timeout: Duration::from_secs(10),
        link_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(7200),
        admin: AdminConfig::disabled(),
        lockout_failures: 5,
        lockout_duration: Duration::from_secs(1800),
        limits: crate::config::Limits::default(),
        shutdown_timeout: Duration::from_secs(1),
        reconnect_grace: Duration::from_secs(60),
        cluster: None,
    }
}

fn tunnel_config(
    hub: SocketAddr,
    pin: Fingerprint,
    key: Secret,
    target: SocketAddr,
) -> TunnelConfig {
    TunnelConfig {
        hub_address: hub.to_string(),
        hub_server_name: "localhost".into(),
        hub_trust: HubTrust::Fingerprint(pin.0),
        key: Some(key),
        links: 2,
        connect_timeout: Duration::from_secs(5),
        admin: AdminConfig::disabled(),
        reconnect: Default::default(),
        proxies: vec![
            ProxyConfig {
                name: "web".into(),
                service: "web".into(),
                target: target.to_string(),
                hostname: Some("demo".into()),
                ..Default::default()
            },
            ProxyConfig {
                name: "raw".into(),
                service: "demo".into(),
                target: target.to_string(),
                ..Default::default()
            },
        ],
    }
}

/// The demo's local service: answers every HTTP/1.1 request with [`GREETING`].
async fn serve_greeting(listener: TcpListener, stop: CancellationToken) {
    loop {
        let socket = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(_) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        tokio::spawn(async move {
            let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                    GREETING.as_bytes(),
                ))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}
