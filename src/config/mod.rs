//! Strict TOML configuration for the hub ([`HubConfig`]) and the tunnel ([`TunnelConfig`]).
//!
//! This module owns reading, checking and describing config files; it must not start anything,
//! open sockets or read certificates. A loaded config is fully checked: unknown keys, wrong
//! types, bad values and broken rules between keys are all refused with a [`ConfigError`] that
//! names the file, the line and column, the key, and what to do. Secrets may come inline, from a
//! file or from an environment variable, and never appear in errors or `Debug` output. Relative
//! paths in a config file are relative to that file's directory.
//!
//! Layout: `file` reads and checks either file through one loader, `source` turns `toml` errors
//! and spans into [`ConfigError`]s (and a value's problem into an error at its key), `values`
//! holds the shared value types and parses value syntaxes (durations, port ranges, `host:port`,
//! hostnames), `secret_source` reads `key`/`key_file`/`key_env`/`key_hash`, `hub` and `tunnel`
//! hold each daemon's schema and rules, and `service` (with `http`) the hub's
//! `[services.NAME]` tables.

mod admin;
mod cluster;
mod error;
mod file;
mod http;
mod hub;
mod limits;
mod secret_source;
mod service;
mod source;
mod tunnel;
mod values;

use std::path::Path;

pub use admin::AdminConfig;
pub use cluster::ClusterConfig;
pub use error::{ConfigError, Location, Position};
pub use http::HttpService;
pub use hub::{HubConfig, TunnelKey};
pub use limits::Limits;
pub use service::{ServiceConfig, ServiceKind, TcpService, UdpService};
pub use tunnel::{HubTrust, ProxyConfig, Reconnect, TunnelConfig};
pub(crate) use values::is_hostname;
pub use values::{PortRange, TlsFiles};

/// Checks a tunnel key as `[[keys]]` would (length, no whitespace or control characters), for
/// tools such as `tunnelize hash-key`; the message never contains the key.
pub fn check_tunnel_key(key: &str) -> Result<(), String> {
    values::check_secret(key, values::MIN_HUB_KEY_LEN)
}

use source::Source;

/// A config file of either daemon, as told apart by [`load_any`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyConfig {
    /// A hub config.
    Hub(HubConfig),
    /// A tunnel config.
    Tunnel(TunnelConfig),
}

/// Reads and checks the config file at `path`, whichever daemon it is for.
///
/// A file whose top level has `hub_address` or `proxies` is a tunnel config; any other file is
/// a hub config. Used by `tunnelize check-config`.
pub fn load_any(path: &Path) -> Result<AnyConfig, ConfigError> {
    let text = file::read_config(path)?;
    let no_env = |_: &str| Err(std::env::VarError::NotPresent);
    let top_level = Source::new(&text, path, &no_env).top_level_keys()?;
    if top_level
        .iter()
        .any(|key| key == "hub_address" || key == "proxies")
    {
        TunnelConfig::parse(&text, path).map(AnyConfig::Tunnel)
    } else {
        HubConfig::parse(&text, path).map(AnyConfig::Hub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUB: &str = "[[keys]]\nname = \"alice\"\nkey = \"alice-0123456789abcdef\"\n";
    const TUNNEL: &str = "hub_address = \"hub.example.com:7700\"\n[[proxies]]\nname = \"ssh\"\n\
                          service = \"ssh\"\ntarget = \"127.0.0.1:22\"\n";

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn load_any_tells_hub_and_tunnel_configs_apart() {
        let dir = tempfile::tempdir().unwrap();
        let hub = write(&dir, "a.toml", HUB);
        let tunnel = write(&dir, "b.toml", TUNNEL);
        assert!(matches!(load_any(&hub), Ok(AnyConfig::Hub(_))));
        assert!(matches!(load_any(&tunnel), Ok(AnyConfig::Tunnel(_))));
        assert_eq!(
            load_any(&hub).unwrap(),
            AnyConfig::Hub(HubConfig::load(&hub).unwrap())
        );
        assert_eq!(
            load_any(&tunnel).unwrap(),
            AnyConfig::Tunnel(TunnelConfig::load(&tunnel).unwrap())
        );
    }

    #[test]
    fn load_any_judges_a_tunnel_config_without_hub_address_as_a_tunnel_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "t.toml",
            "[[proxies]]\nname = \"a\"\nservice = \"a\"\ntarget = \"h:1\"\n",
        );
        let err = load_any(&path).unwrap_err().to_string();
        assert!(err.contains("missing required key `hub_address`"), "{err}");
    }

    #[test]
    fn load_any_reports_syntax_errors_with_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "bad.toml", "\n[services\n");
        let err = load_any(&path).unwrap_err();
        assert_eq!(err.path(), path);
        assert_eq!(err.position().map(|p| p.line), Some(2));
        assert!(err.to_string().contains("invalid TOML"), "{err}");
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.toml");
        for err in [
            load_any(&path).unwrap_err(),
            HubConfig::load(&path).unwrap_err(),
            TunnelConfig::load(&path).unwrap_err(),
        ] {
            assert!(matches!(err, ConfigError::Read { .. }));
            let text = err.to_string();
            assert!(
                text.starts_with(&format!(
                    "{}: cannot read the config file: ",
                    path.display()
                )),
                "{text}"
            );
        }
    }
}
