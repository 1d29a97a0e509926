//! `tunnelize tunnel --init-from`: a starting tunnel configuration written from a hub's list of
//! services (fetched from the hub's TLS admin listener with a tunnel key), and
//! `tunnelize tunnel -s SERVICE -p PORT`: a configuration narrowed to one proxy.
//!
//! [`init_from`] does the whole job (fetch, render, write); the rendering ([`config_text`]) and
//! the narrowing ([`one_off`]) are pure functions from documents to text or configuration.
//! The binary only maps command-line flags to an [`InitRequest`] and reports the outcome.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::admin::client::{AdminClient, AdminError};
use crate::admin::model::{SERVICES, ServiceInfo};
use crate::config::{HubTrust, ProxyConfig, TunnelConfig};
use crate::secret::Secret;
use crate::tls::Fingerprint;

/// What `--init-from` was asked to do.
#[derive(Debug)]
pub struct InitRequest {
    /// The configuration file to write.
    pub path: PathBuf,
    /// The hub's TLS admin listener, `HOST:PORT`.
    pub admin: String,
    /// The tunnel key: it lists the hub's services and is written into the file.
    pub key: Secret,
    /// A pinned certificate digest (hex, colons optional), written as `hub_cert_sha256`.
    pub fingerprint: Option<String>,
    /// A CA file to verify the hub with, written as `hub_ca_file`.
    pub ca: Option<PathBuf>,
    /// The tunnel listener to write as `hub_address` (default: the admin host, port 7700).
    pub hub_address: Option<String>,
    /// Replace `path` if it exists.
    pub force: bool,
}

/// Why `--init-from` wrote nothing. The cause, where there is one, is the error's `source`
/// (the binary prints the chain).
#[derive(Debug, Error)]
pub enum BootstrapError {
    /// The file is there and `--force` was not given.
    #[error("{} exists; pass --force to replace it, or -c another path", .0.display())]
    Exists(PathBuf),
    /// The `--fingerprint` argument is not a SHA-256 digest.
    #[error("--fingerprint: {0}")]
    Fingerprint(String),
    /// The CA file cannot be read.
    #[error("reading the CA file {}", path.display())]
    CaFile {
        /// The file as given.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The hub's admin listener could not be asked.
    #[error("listing the services of the hub at {admin}")]
    Admin {
        /// `HOST:PORT` as given.
        admin: String,
        /// The cause (boxed: it is large, and this error is rare).
        source: Box<AdminError>,
    },
    /// The hub answered with no service.
    #[error("the hub at {0} has no services; nothing to write")]
    NoServices(String),
    /// The file cannot be written.
    #[error("writing {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Fetches the hub's services and writes a tunnel configuration with one proxy per service to
/// `req.path` (readable by its owner only: it holds the key). Returns how many proxies it wrote.
pub async fn init_from(req: InitRequest) -> Result<usize, BootstrapError> {
    if !req.force && req.path.exists() {
        return Err(BootstrapError::Exists(req.path));
    }
    let fingerprint = match &req.fingerprint {
        Some(text) => Some(
            text.parse::<Fingerprint>()
                .map_err(BootstrapError::Fingerprint)?
                .0,
        ),
        None => None,
    };
    let trust = match (fingerprint, &req.ca) {
        (Some(fp), _) => HubTrust::Fingerprint(fp),
        (None, Some(ca)) => HubTrust::CaFile(ca.clone()),
        (None, None) => HubTrust::SystemRoots,
    };
    let services = fetch_services(&req.admin, &trust, &req.key).await?;
    let hub = HubLocation {
        address: req
            .hub_address
            .clone()
            .unwrap_or_else(|| format!("{}:7700", admin_host(&req.admin))),
        fingerprint: fingerprint.map(|fp| Fingerprint(fp).to_string()),
        // Relative paths in a config file are relative to the file: write an absolute one.
        ca_file: match &req.ca {
            Some(ca) => Some(absolute(ca)?),
            None => None,
        },
    };
    let text = config_text(&hub, req.key.expose(), &services);
    write_private(&req.path, &text).map_err(|source| BootstrapError::Write {
        path: req.path.clone(),
        source,
    })?;
    Ok(services.len())
}

async fn fetch_services(
    admin: &str,
    trust: &HubTrust,
    key: &Secret,
) -> Result<Vec<ServiceInfo>, BootstrapError> {
    let failed = |source| BootstrapError::Admin {
        admin: admin.to_owned(),
        source: Box::new(source),
    };
    let client =
        AdminClient::hub(&format!("https://{admin}"), trust, Some(key.clone())).map_err(failed)?;
    let services: Vec<ServiceInfo> = client.get(SERVICES).await.map_err(failed)?;
    if services.is_empty() {
        return Err(BootstrapError::NoServices(admin.to_owned()));
    }
    Ok(services)
}

/// The host part of `HOST:PORT` (all of it when there is no port).
fn admin_host(admin: &str) -> &str {
    admin.rsplit_once(':').map_or(admin, |(host, _)| host)
}

fn absolute(ca: &Path) -> Result<String, BootstrapError> {
    std::fs::canonicalize(ca)
        .map(|path| path.display().to_string())
        .map_err(|source| BootstrapError::CaFile {
            path: ca.to_owned(),
            source,
        })
}

/// Writes `text` to `path`, readable by its owner only (it holds a key). Written by root into
/// a directory of another group (as the packages make /etc/tunnelize, group `tunnelize`), the
/// file goes to that group with mode 0640, like the packaged config files, so a unit running
/// as `User=tunnelize` can read it.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` applies only to a new file: an existing one (--force) is narrowed before the
    // key is written into it.
    file.set_permissions(PermissionsExt::from_mode(0o600))?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let dir_gid = std::fs::metadata(dir)?.gid();
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let root = unsafe { libc::geteuid() } == 0;
    if root && dir_gid != 0 {
        std::os::unix::fs::fchown(&file, Some(0), Some(dir_gid))?;
        file.set_permissions(PermissionsExt::from_mode(0o640))?;
    }
    file.write_all(text.as_bytes())
}

/// Where the written configuration tells the tunnel to find and trust the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubLocation {
    /// `hub_address`: the hub's tunnel listener (`host:port`).
    pub address: String,
    /// `hub_cert_sha256`, when the certificate is pinned.
    pub fingerprint: Option<String>,
    /// `hub_ca_file`, when verified through a CA file.
    pub ca_file: Option<String>,
}

/// Placeholder target of every written proxy, for the operator to edit.
pub const PLACEHOLDER_TARGET: &str = "127.0.0.1:8080";

/// A TOML string literal.
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// The text of a tunnel configuration with one proxy per service of the hub.
pub fn config_text(hub: &HubLocation, key: &str, services: &[ServiceInfo]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Written by `tunnelize tunnel --init-from` from the hub's services.\n\
         # Point each proxy's `target` at the local service to expose, delete the proxies you\n\
         # do not need, then run `tunnelize check-config` on this file. Every key is described\n\
         # in /usr/share/doc/tunnelize/examples/tunnel.toml.\n\n\
         hub_address = {}",
        quoted(&hub.address)
    );
    if let Some(fingerprint) = &hub.fingerprint {
        let _ = writeln!(out, "hub_cert_sha256 = {}", quoted(fingerprint));
    }
    if let Some(ca) = &hub.ca_file {
        let _ = writeln!(out, "hub_ca_file = {}", quoted(ca));
    }
    let _ = writeln!(
        out,
        "# This file holds the key: keep it readable by the tunnel's user only, or move the\n\
         # key to a file (key_file) or the environment (key_env).\n\
         key = {}",
        quoted(key)
    );
    for service in services {
        let _ = writeln!(
            out,
            "\n# {} service `{}` on {}{}\n[[proxies]]\nname = {}\nservice = {}\ntarget = {}",
            service.kind,
            service.name,
            service.listen,
            service
                .domain
                .as_ref()
                .map(|d| format!(", hostnames under {d}"))
                .unwrap_or_default(),
            quoted(&service.name),
            quoted(&service.name),
            quoted(PLACEHOLDER_TARGET)
        );
        match service.kind.as_str() {
            "http" | "https" => {
                let _ = writeln!(out, "# hostname = \"myapp\"");
            }
            _ => {
                let _ = writeln!(out, "# port = 20000");
            }
        }
    }
    out
}

/// `config` with its proxies replaced by one: `service` forwarded to `127.0.0.1:port`.
pub fn one_off(mut config: TunnelConfig, service: &str, port: u16) -> TunnelConfig {
    config.proxies = vec![ProxyConfig {
        name: format!("{service}-{port}"),
        service: service.to_owned(),
        target: format!("127.0.0.1:{port}"),
        ..Default::default()
    }];
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, kind: &str, domain: Option<&str>) -> ServiceInfo {
        ServiceInfo {
            name: name.into(),
            kind: kind.into(),
            listen: "0.0.0.0:20000-20100".into(),
            domain: domain.map(Into::into),
            tunnels: 0,
            clients: 0,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    #[test]
    fn the_written_text_is_a_valid_tunnel_config_with_a_proxy_per_service() {
        let hub = HubLocation {
            address: "hub.example.com:7700".into(),
            fingerprint: Some("AB".repeat(32)),
            ca_file: None,
        };
        let services = [
            service("ssh", "tcp", None),
            service("web", "http", Some("t.example.com")),
        ];
        let text = config_text(&hub, "key-with-\"quotes\"-0123456789", &services);
        let config = TunnelConfig::parse(&text, std::path::Path::new("init.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.hub_address, "hub.example.com:7700");
        assert_eq!(
            config.key.as_ref().map(|k| k.expose().to_owned()),
            Some("key-with-\"quotes\"-0123456789".to_owned())
        );
        let names: Vec<_> = config.proxies.iter().map(|p| p.service.as_str()).collect();
        assert_eq!(names, ["ssh", "web"]);
        assert!(
            config
                .proxies
                .iter()
                .all(|p| p.target == PLACEHOLDER_TARGET)
        );
    }

    #[test]
    fn the_admin_host_is_what_stands_before_the_port() {
        assert_eq!(admin_host("hub.example.com:7701"), "hub.example.com");
        assert_eq!(admin_host("[::1]:7701"), "[::1]");
        assert_eq!(admin_host("hub"), "hub");
    }

    #[tokio::test]
    async fn an_existing_file_is_kept_without_force_and_nothing_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tunnel.toml");
        std::fs::write(&path, "kept").unwrap();
        let req = InitRequest {
            path: path.clone(),
            // Nothing listens here: an attempt to ask the hub would fail differently.
            admin: "hub.invalid:1".into(),
            key: Secret::new("k-0123456789abcdef"),
            fingerprint: None,
            ca: None,
            hub_address: None,
            force: false,
        };
        let err = init_from(req).await.unwrap_err();
        assert!(matches!(err, BootstrapError::Exists(_)), "{err}");
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "kept");
    }

    #[test]
    fn a_written_file_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, PermissionsExt::from_mode(0o644)).unwrap();
        write_private(&path, "key = \"x\"").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        // 0600, or 0640 when root writes into a directory of another group.
        assert_eq!(mode & 0o037, 0, "mode {mode:o}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "key = \"x\"");
    }

    #[test]
    fn a_one_off_tunnel_has_exactly_the_one_proxy() {
        let text = config_text(
            &HubLocation {
                address: "h:1".into(),
                fingerprint: None,
                ca_file: None,
            },
            "k-0123456789abcdef",
            &[service("a", "tcp", None), service("b", "tcp", None)],
        );
        let config = TunnelConfig::parse(&text, std::path::Path::new("x.toml")).unwrap();
        let config = one_off(config, "b", 3000);
        assert_eq!(config.proxies.len(), 1);
        assert_eq!(config.proxies[0].service, "b");
        assert_eq!(config.proxies[0].target, "127.0.0.1:3000");
    }
}
