//! A real Redis (Debian's `redis-server`) for the cluster tests: its own temporary directory,
//! a Unix socket there and no TCP port, nothing saved to disk; killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// A running redis-server.
pub struct Redis {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    /// Starts one and waits (bounded) until it answers PING.
    pub async fn start() -> Redis {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut redis = Redis { dir, child: None };
        redis.spawn().await;
        redis
    }

    /// `unix://…` for `[cluster] redis`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// Kills it (SIGKILL: nothing is saved, and nothing was to be).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Starts it again on the same socket, with no data: a Redis restarted empty.
    pub async fn restart_empty(&mut self) {
        self.kill();
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let dir = self.dir.path();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}); install it (Debian package redis-server)")
            });
        self.child = Some(child);
        let socket = self.socket();
        let log = dir.join("redis.log");
        super::eventually(
            "redis-server to answer PING",
            Duration::from_secs(10),
            || {
                let (socket, log) = (socket.clone(), log.clone());
                async move {
                    ping(&socket)
                        .await
                        .map_err(|e| format!("{e}; its log: {}", tail(&log)))
                }
            },
        )
        .await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn ping(socket: &Path) -> std::io::Result<()> {
    let mut stream = UnixStream::connect(socket).await?;
    stream.write_all(b"PING\r\n").await?;
    let mut answer = [0u8; 7];
    stream.read_exact(&mut answer).await?;
    match &answer {
        b"+PONG\r\n" => Ok(()),
        other => Err(std::io::Error::other(format!(
            "answered {:?}",
            String::from_utf8_lossy(other)
        ))),
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}
