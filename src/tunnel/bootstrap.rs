//! `tunnelize tunnel --init-from`: a starting tunnel configuration written from a hub's list of
//! services (fetched from the hub's TLS admin listener with a tunnel key), and
//! `tunnelize tunnel -s SERVICE -p PORT`: a configuration narrowed to one proxy.
//!
//! Pure functions from documents to text or configuration; the fetching is done by the
//! binary through [`AdminClient`](crate::admin::client::AdminClient).

use std::fmt::Write as _;

use crate::admin::model::ServiceInfo;
use crate::config::{ProxyConfig, TunnelConfig};

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
