//! The ports and hostnames held for tunnel keys, kept across a hub restart: a hub that stops
//! writes them to `state_dir/held.json` (its live tunnels' claims as held for
//! `reconnect_grace` from then, and what was already held), and the next start holds them
//! again, so a tunnel that reconnects gets the same port and hostname from the new process as
//! it would from the old one (`systemctl restart` no longer moves them).
//!
//! The file is written atomically (a temporary file, synced, then renamed over the old one),
//! mode 0600, and read at start bounded in size and entries; times in it are wall-clock, so
//! what expired while the hub was down is dropped. It holds key names, ports and hostnames,
//! never a key. A hub that is killed writes nothing: its tunnels' ports are then held only if
//! an earlier clean stop left them (and still in time). The file is removed once read.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

use super::PortKey;
use super::grace::{CAPACITY, Reservation};
use crate::protocol::Transport;

/// The file's name in `state_dir`.
pub const FILE_NAME: &str = "held.json";
/// Largest file read (two full tables of long names fit).
const MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Most entries taken from it: a full table of ports and one of hostnames.
const MAX_ENTRIES: usize = 2 * CAPACITY;
/// The longest hold taken from it (longer than any `reconnect_grace` a hub accepts).
const MAX_LEFT: Duration = Duration::from_secs(24 * 3600);
/// The format's version; another is refused (and the file left alone).
const VERSION: u32 = 1;

/// What a hub holds for keys: ports by transport and address, hostnames by service and name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Holds {
    /// Held ports.
    pub ports: Vec<((Transport, PortKey), Reservation)>,
    /// Held hostnames, by (service, hostname).
    pub hosts: Vec<((String, String), Reservation)>,
}

/// Why the file could not be used.
#[derive(Debug, Error)]
pub enum PersistError {
    /// Reading or writing it failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// It is not what a hub writes.
    #[error("{}: {reason}; it is ignored (the hub starts with nothing held)", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    held: Vec<Entry>,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Tcp,
    Udp,
    Host,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    kind: Kind,
    key: String,
    service: String,
    proxy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    tunnel_id: Uuid,
    /// When it frees up, in milliseconds since the Unix epoch.
    until_ms: u64,
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn entry(kind: Kind, r: &Reservation, now: (Instant, u64)) -> Entry {
    let left = u64::try_from(r.left(now.0).as_millis()).unwrap_or(u64::MAX);
    Entry {
        kind,
        key: r.key_name.clone(),
        service: r.service.clone(),
        proxy: r.proxy.clone(),
        group: r.group.clone(),
        ip: None,
        port: None,
        host: None,
        tunnel_id: r.tunnel_id,
        until_ms: now.1.saturating_add(left),
    }
}

/// The file in `dir`.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Writes `holds` to `dir`'s file, atomically; returns how many entries it wrote.
pub async fn save(dir: &Path, holds: &Holds) -> Result<usize, PersistError> {
    let now = (Instant::now(), unix_ms(SystemTime::now()));
    let mut held = Vec::with_capacity(holds.ports.len() + holds.hosts.len());
    for ((transport, (ip, port)), r) in &holds.ports {
        let kind = match transport {
            Transport::Tcp => Kind::Tcp,
            Transport::Udp => Kind::Udp,
        };
        held.push(Entry {
            ip: Some(*ip),
            port: Some(*port),
            ..entry(kind, r, now)
        });
    }
    for ((_, host), r) in &holds.hosts {
        held.push(Entry {
            host: Some(host.clone()),
            ..entry(Kind::Host, r, now)
        });
    }
    let count = held.len();
    let text = serde_json::to_vec(&FileFormat {
        version: VERSION,
        held,
    })
    .map_err(|e| PersistError::Invalid {
        path: path_in(dir),
        reason: e.to_string(),
    })?;
    let path = path_in(dir);
    let temporary = dir.join(format!(".{FILE_NAME}.tmp"));
    let io = |source| PersistError::Io {
        path: path.clone(),
        source,
    };
    tokio::fs::create_dir_all(dir).await.map_err(io)?;
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(0o600);
    let mut file = options.open(&temporary).await.map_err(io)?;
    tokio::io::AsyncWriteExt::write_all(&mut file, &text)
        .await
        .map_err(io)?;
    file.sync_all().await.map_err(io)?;
    drop(file);
    tokio::fs::rename(&temporary, &path).await.map_err(io)?;
    Ok(count)
}

/// Reads `dir`'s file, if there is one, and removes it: what is still held, as of now. A
/// missing file is nothing held.
pub async fn load(dir: &Path) -> Result<Holds, PersistError> {
    let path = path_in(dir);
    let io = |source| PersistError::Io {
        path: path.clone(),
        source,
    };
    let size = match tokio::fs::metadata(&path).await {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Holds::default()),
        Err(e) => return Err(io(e)),
    };
    let invalid = |reason: String| PersistError::Invalid {
        path: path.clone(),
        reason,
    };
    if size > MAX_BYTES {
        return Err(invalid(format!(
            "{size} bytes, more than a hub writes ({MAX_BYTES})"
        )));
    }
    let text = tokio::fs::read(&path).await.map_err(io)?;
    let file: FileFormat = serde_json::from_slice(&text)
        .map_err(|e| invalid(format!("not a held-claims file: {e}")))?;
    if file.version != VERSION {
        return Err(invalid(format!(
            "format version {}, this hub reads {VERSION}",
            file.version
        )));
    }
    tokio::fs::remove_file(&path).await.map_err(io)?;
    Ok(parse(file.held, Instant::now(), unix_ms(SystemTime::now())))
}

/// The entries still held at `now` (`now_ms` on the wall clock), at most [`MAX_ENTRIES`].
fn parse(entries: Vec<Entry>, now: Instant, now_ms: u64) -> Holds {
    let mut holds = Holds::default();
    for e in entries.into_iter().take(MAX_ENTRIES) {
        let left = Duration::from_millis(e.until_ms.saturating_sub(now_ms)).min(MAX_LEFT);
        if left.is_zero() {
            continue;
        }
        let reservation = Reservation {
            key_name: e.key,
            tunnel_id: e.tunnel_id,
            service: e.service,
            proxy: e.proxy,
            group: e.group,
            until: now + left,
        };
        match (e.kind, e.ip, e.port, e.host) {
            (Kind::Tcp, Some(ip), Some(port), _) => holds
                .ports
                .push(((Transport::Tcp, (ip, port)), reservation)),
            (Kind::Udp, Some(ip), Some(port), _) => holds
                .ports
                .push(((Transport::Udp, (ip, port)), reservation)),
            (Kind::Host, _, _, Some(host)) => holds
                .hosts
                .push(((reservation.service.clone(), host), reservation)),
            // An entry without what it holds: skipped.
            _ => {}
        }
    }
    holds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reservation(key: &str, left: Duration, now: Instant) -> Reservation {
        Reservation {
            key_name: key.into(),
            tunnel_id: Uuid::new_v4(),
            service: "web".into(),
            proxy: "site".into(),
            group: Some("blue".into()),
            until: now + left,
        }
    }

    #[tokio::test]
    async fn what_is_saved_is_loaded_once_with_the_time_left() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let port = (Transport::Udp, ("127.0.0.1".parse().unwrap(), 5353));
        let host = ("web".to_owned(), "app.example.com".to_owned());
        let holds = Holds {
            ports: vec![(port, reservation("alice", Duration::from_secs(60), now))],
            hosts: vec![(
                host.clone(),
                reservation("bob", Duration::from_secs(30), now),
            )],
        };
        assert_eq!(save(dir.path(), &holds).await.unwrap(), 2);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(path_in(dir.path()))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let loaded = load(dir.path()).await.unwrap();
        assert_eq!(loaded.ports.len(), 1);
        assert_eq!(loaded.ports[0].0, port);
        let (key, r) = &loaded.hosts[0];
        assert_eq!(key, &host);
        assert_eq!(
            (r.key_name.as_str(), r.proxy.as_str(), r.group.as_deref()),
            ("bob", "site", Some("blue"))
        );
        // Within the saved time left (never more), and not much less.
        let left = r.left(Instant::now());
        assert!(
            left <= Duration::from_secs(30) && left > Duration::from_secs(20),
            "{left:?}"
        );
        // Read once: the file is gone, and a missing file is nothing held.
        assert!(!path_in(dir.path()).exists());
        assert_eq!(load(dir.path()).await.unwrap(), Holds::default());
    }

    #[test]
    fn expired_and_incomplete_entries_are_dropped() {
        let entry = |kind, until_ms, port: Option<u16>| Entry {
            kind,
            key: "alice".into(),
            service: "tcp".into(),
            proxy: "ssh".into(),
            group: None,
            ip: Some("0.0.0.0".parse().unwrap()),
            port,
            host: None,
            tunnel_id: Uuid::nil(),
            until_ms,
        };
        let now_ms = 1_000_000;
        let holds = parse(
            vec![
                entry(Kind::Tcp, now_ms - 1, Some(22)),
                entry(Kind::Tcp, now_ms + 5_000, Some(2222)),
                entry(Kind::Tcp, now_ms + 5_000, None),
                entry(Kind::Host, now_ms + 5_000, None),
            ],
            Instant::now(),
            now_ms,
        );
        assert_eq!(holds.ports.len(), 1);
        assert_eq!(holds.ports[0].0.1.1, 2222);
        assert!(holds.hosts.is_empty());
    }

    #[tokio::test]
    async fn a_file_that_is_not_ours_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        for text in ["not json", "{\"version\": 9, \"held\": []}"] {
            std::fs::write(path_in(dir.path()), text).unwrap();
            let err = load(dir.path()).await.unwrap_err();
            assert!(matches!(err, PersistError::Invalid { .. }), "{err}");
            assert!(err.to_string().contains("ignored"), "{err}");
            assert!(path_in(dir.path()).exists());
        }
    }
}
