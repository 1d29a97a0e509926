//! A real Redis (Debian's `redis-server`) for the cluster tests: its own temporary directory,
//! a Unix socket there and no plain TCP port (a TLS port on request), nothing saved to disk;
//! killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// A running redis-server.
pub struct Redis {
    dir: tempfile::TempDir,
    child: Option<Child>,
    tls: Option<Tls>,
    password: Option<String>,
}

/// The TLS side of a Redis started by [`Redis::start_tls`].
struct Tls {
    cert: tunnelize::config::TlsFiles,
    port: u16,
}

impl Redis {
    /// Starts one and waits (bounded) until it answers PING.
    pub async fn start() -> Redis {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut redis = Redis {
            dir,
            child: None,
            tls: None,
            password: None,
        };
        redis.spawn().await;
        redis
    }

    /// Starts one that also serves TLS on a loopback port with `cert` (clients unauthenticated)
    /// and asks for `password`.
    pub async fn start_tls(cert: tunnelize::config::TlsFiles, password: &str) -> Redis {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut redis = Redis {
            dir,
            child: None,
            tls: Some(Tls { cert, port: 0 }),
            password: Some(password.into()),
        };
        redis.spawn().await;
        redis
    }

    /// `rediss://127.0.0.1:PORT` of a Redis started by [`Redis::start_tls`].
    pub fn tls_url(&self) -> String {
        let tls = self.tls.as_ref().expect("a Redis started with start_tls");
        format!("rediss://127.0.0.1:{}", tls.port)
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
        // Redis takes no port 0 for "any": a port the kernel just chose, and another if Redis
        // finds it taken meanwhile.
        for _ in 0..5 {
            if let Some(tls) = &mut self.tls {
                let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
                tls.port = probe.local_addr().expect("its address").port();
            }
            if self.try_spawn().await {
                return;
            }
        }
        panic!(
            "redis-server did not start; its log: {}",
            tail(&self.dir.path().join("redis.log"))
        );
    }

    /// Starts redis-server and waits (bounded) for it to answer; false if it exited first.
    async fn try_spawn(&mut self) -> bool {
        let dir = self.dir.path();
        let mut command = Command::new("redis-server");
        command
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
            .arg(dir.join("redis.log"));
        if let Some(tls) = &self.tls {
            command
                .args(["--tls-port", &tls.port.to_string(), "--tls-cert-file"])
                .arg(&tls.cert.cert_file)
                .arg("--tls-key-file")
                .arg(&tls.cert.key_file)
                .args(["--tls-auth-clients", "no", "--bind", "127.0.0.1"]);
        }
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
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
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            let exited = self
                .child
                .as_mut()
                .map(|child| matches!(child.try_wait(), Ok(Some(_))))
                .unwrap_or(true);
            if exited {
                self.child = None;
                return false;
            }
            let error = match ping(&socket).await {
                Ok(()) => return true,
                Err(e) => e,
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not answer PING within 10 s: {error}; its log: {}",
                tail(&log)
            );
        }
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
        // Alive, and asking for its password.
        b"+PONG\r\n" | b"-NOAUTH" => Ok(()),
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
