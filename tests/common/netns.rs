//! Daemons as separate processes, on the loopback or inside network namespaces this test
//! creates, for the tests that need real processes (signals, memory and open files read from
//! `/proc`) or a network that can fail (nftables rules on a veth pair).
//!
//! [`Daemon`] runs the built `tunnelize` binary from a config file written by [`HubFiles`] or
//! [`TunnelFiles`], and keeps its log lines. [`Netns`] is a namespace deleted on drop (also
//! on panic); [`Link`] is two of them joined by a veth pair that exists only inside them, so
//! the host's interfaces and routes are never touched. Sockets are opened inside a namespace
//! from this process by a short-lived thread that enters it.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};

use super::{DEADLINE, KEY, eventually, spawn_with_stderr};
use tunnelize::admin::client::AdminClient;
use tunnelize::admin::model::{self, ServiceInfo, TunnelInfo, TunnelStatus};

/// A name no other run or test uses: the process id and a counter.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command to completion; panics with its output if it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    run_with_input(program, args, None)
}

fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (is it installed?)"));
    if let Some(text) = input {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails with a clear message when a tool the test needs is missing or not allowed here.
pub fn require_netns_tools() {
    let probe = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(
        probe("ip", &["-V"]),
        "this test needs `ip` (Debian package iproute2)"
    );
    assert!(
        probe("nft", &["--version"]),
        "this test needs `nft` (Debian package nftables)"
    );
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "this test creates network namespaces and must run as root"
    );
}

/// A network namespace, deleted when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates a namespace with its loopback up.
    pub fn new(prefix: &str) -> Netns {
        let ns = Netns {
            name: unique(prefix),
        };
        run("ip", &["netns", "add", &ns.name]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS...`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Loads an nftables script into this namespace (`nft -f -`).
    pub fn nft(&self, script: &str) {
        run_with_input(
            "ip",
            &["netns", "exec", &self.name, "nft", "-f", "-"],
            Some(script),
        );
    }

    /// `nft ARGS...` in this namespace; its output.
    pub fn nft_cmd(&self, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", self.name.as_str(), "nft"];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `f` on a new thread that has entered this namespace: sockets it creates belong to
    /// the namespace wherever they are used afterwards.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        enter(&self.name, f)
    }

    /// A listener bound to `addr` inside this namespace.
    pub fn listen(&self, addr: SocketAddr) -> TcpListener {
        let listener = self.enter(move || {
            let l = std::net::TcpListener::bind(addr).unwrap();
            l.set_nonblocking(true).unwrap();
            l
        });
        TcpListener::from_std(listener).unwrap()
    }

    /// Connects to `addr` from inside this namespace.
    pub fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        connect_in(&self.name, addr)
    }

    /// Connects from inside this namespace, retrying until `DEADLINE` (a port about to open).
    pub async fn connect_soon(&self, addr: SocketAddr) -> TcpStream {
        let what = format!("a connection to {addr} in {}", self.name);
        eventually(&what, DEADLINE, || async { self.connect(addr) }).await
    }
}

/// Runs `f` on a new thread that has entered the namespace `name` (the thread ends with `f`,
/// so no other work runs inside the namespace by accident).
pub fn enter<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on a valid descriptor affects only this thread, which runs `f` and
        // then ends.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("the thread inside the namespace panicked")
}

/// Connects to `addr` from inside the namespace `name` (blocks for the connect).
pub fn connect_in(name: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = enter(name, move || {
        let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(s)
    })?;
    TcpStream::from_std(socket)
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside keep the namespace alive until they exit; the name goes now.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// The packet counts of every `counter` in an `nft list` output, in order.
pub fn counted_packets(listing: &str) -> Vec<u64> {
    listing
        .split("counter packets ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Two namespaces joined by a veth pair: the hub's side at 10.213.0.1/24, the tunnel's at
/// 10.213.0.2/24. The addresses exist only inside the namespaces.
pub struct Link {
    pub hub: Netns,
    pub tunnel: Netns,
    /// The veth end inside `hub`.
    pub hub_if: String,
    /// The veth end inside `tunnel`.
    pub tunnel_if: String,
}

pub const HUB_IP: &str = "10.213.0.1";
pub const TUNNEL_IP: &str = "10.213.0.2";

impl Link {
    pub fn new() -> Link {
        require_netns_tools();
        let hub = Netns::new("tzh");
        let tunnel = Netns::new("tzt");
        // Interface names are at most 15 bytes.
        let tag = unique("");
        let hub_if = format!("vh{}", &tag[tag.len().saturating_sub(12)..]);
        let tunnel_if = format!("vt{}", &tag[tag.len().saturating_sub(12)..]);
        // Created inside the hub's namespace with its peer in the tunnel's: never on the host.
        hub.ip(&[
            "link",
            "add",
            &hub_if,
            "type",
            "veth",
            "peer",
            "name",
            &tunnel_if,
            "netns",
            &tunnel.name,
        ]);
        hub.ip(&["addr", "add", &format!("{HUB_IP}/24"), "dev", &hub_if]);
        tunnel.ip(&["addr", "add", &format!("{TUNNEL_IP}/24"), "dev", &tunnel_if]);
        hub.ip(&["link", "set", &hub_if, "up"]);
        tunnel.ip(&["link", "set", &tunnel_if, "up"]);
        Link {
            hub,
            tunnel,
            hub_if,
            tunnel_if,
        }
    }
}

/// Lines a daemon wrote to stderr (the last ones, if it wrote very many).
#[derive(Default)]
struct Log {
    lines: Vec<String>,
    dropped: usize,
}

const LOG_LINES_KEPT: usize = 5_000;

/// The built `tunnelize` binary running as a daemon; killed when dropped (also when stopped).
pub struct Daemon {
    pub what: String,
    pub pid: u32,
    child: tokio::process::Child,
    log: Arc<Mutex<Log>>,
    /// Index in `log` up to which [`Daemon::wait_for_line`] has looked.
    cursor: usize,
}

impl Daemon {
    /// Starts `tunnelize ROLE -c CONFIG`, inside `ns` if given.
    pub fn start(role: &str, config: &Path, ns: Option<&Netns>) -> Daemon {
        let binary = env!("CARGO_BIN_EXE_tunnelize");
        let mut command = match ns {
            // `ip netns exec` executes the command in its own process: the pid is the daemon's.
            Some(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", &ns.name, binary]);
                c
            }
            None => tokio::process::Command::new(binary),
        };
        command
            .args(["--log-format", "text", role, "-c"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET");
        let log = Arc::new(Mutex::new(Log::default()));
        let sink = log.clone();
        let (child, _) = spawn_with_stderr(&mut command, "the daemon starts", move |line| {
            let mut log = sink.lock();
            if log.lines.len() >= LOG_LINES_KEPT {
                log.lines.remove(0);
                log.dropped += 1;
            }
            log.lines.push(line);
        });
        let pid = child.id().unwrap();
        Daemon {
            what: format!("{role} (pid {pid})"),
            pid,
            child,
            log,
            cursor: 0,
        }
    }

    /// The last lines of its log, for failure messages.
    pub fn tail(&self) -> String {
        let log = self.log.lock();
        let from = log.lines.len().saturating_sub(30);
        log.lines[from..].join("\n")
    }

    /// Waits for a log line containing `what` after the last one found.
    pub async fn wait_for_line(&mut self, what: &str) -> String {
        let awaited = format!("{} to log {what:?}", self.what);
        eventually(&awaited, DEADLINE, || {
            std::future::ready(self.next_line_with(what))
        })
        .await
    }

    /// A log line containing `what`, anywhere in the log kept (for lines whose order against
    /// others is not fixed, such as each service's "serving" line); the cursor stays.
    pub async fn any_line_with(&mut self, what: &str) -> String {
        let awaited = format!("{} to log {what:?}", self.what);
        eventually(&awaited, DEADLINE, || {
            let found = self
                .log
                .lock()
                .lines
                .iter()
                .find(|l| l.contains(what))
                .cloned();
            std::future::ready(
                found.ok_or_else(|| format!("not yet; its last lines:\n{}", self.tail())),
            )
        })
        .await
    }

    /// The first log line after the last one found that contains `what`, or the log's tail;
    /// panics if the process has exited.
    fn next_line_with(&mut self, what: &str) -> Result<String, String> {
        {
            let log = self.log.lock();
            let from = self.cursor.saturating_sub(log.dropped);
            if let Some(i) = log.lines[from.min(log.lines.len())..]
                .iter()
                .position(|l| l.contains(what))
            {
                let index = from + i;
                self.cursor = log.dropped + index + 1;
                return Ok(log.lines[index].clone());
            }
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}) before logging {what:?}:\n{}",
                self.what,
                self.tail()
            );
        }
        Err(format!("not yet; its last lines:\n{}", self.tail()))
    }

    /// The hub's tunnel listener, from its "hub listening for tunnels" log line.
    pub async fn hub_address(&mut self) -> SocketAddr {
        let line = self.wait_for_line("hub listening for tunnels").await;
        let at = line.find(" listen=").expect("listen= in the line") + " listen=".len();
        line[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`, ...).
    pub fn signal(&self, name: &str) {
        run("kill", &["-s", name, &self.pid.to_string()]);
    }

    /// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in bytes.
    pub fn status_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_else(|e| panic!("{} is gone: {e}", self.what));
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid))
    }

    /// Resident memory now, in bytes.
    pub fn rss(&self) -> u64 {
        self.status_bytes("VmRSS")
    }

    /// Resets the peak resident memory (`VmHWM`) to the current one.
    pub fn reset_peak(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5").unwrap();
    }

    /// Open file descriptors.
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .unwrap_or_else(|e| panic!("{} is gone: {e}", self.what))
            .count()
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too; the runtime reaps it.
        let _ = self.child.start_kill();
    }
}

/// A hub's config file, state directory (with its certificate made beforehand, so the
/// fingerprint is known) and admin socket.
pub struct HubFiles {
    pub config: PathBuf,
    pub socket: PathBuf,
    /// `hub_cert_sha256` for tunnels.
    pub fingerprint: String,
}

impl HubFiles {
    /// Writes `hub.toml` in `dir`: the tunnel listener on `ip:0`, key [`KEY`], a `tcp` service
    /// on `ip` with ports picked by the OS, `top` as extra top-level keys and `tables` as
    /// extra tables (`[limits]`).
    pub fn write(dir: &Path, ip: &str, top: &str, tables: &str) -> HubFiles {
        tunnelize::tls::install_crypto_provider();
        let state = dir.join("hub-state");
        let (identity, _) = tunnelize::tls::Identity::load_or_generate(&state).unwrap();
        let socket = dir.join("hub.sock");
        let config = dir.join("hub.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{ip}:0\"\nstate_dir = {state:?}\n{top}\n\
                 [admin]\nsocket = {socket:?}\n\
                 [[keys]]\nname = \"test\"\nkey = \"{KEY}\"\n\
                 [services.tcp]\nkind = \"tcp\"\nlisten = \"{ip}\"\nports = \"0\"\n{tables}\n",
            ),
        )
        .unwrap();
        HubFiles {
            config,
            socket,
            fingerprint: identity.fingerprint().to_string(),
        }
    }

    pub fn admin(&self) -> AdminClient {
        AdminClient::unix(&self.socket).with_timeout(Duration::from_secs(5))
    }
}

/// A tunnel's config file and admin socket.
pub struct TunnelFiles {
    pub config: PathBuf,
    pub socket: PathBuf,
}

impl TunnelFiles {
    /// Writes `tunnel.toml` in `dir` for the hub at `hub` (verified by `fingerprint`), one
    /// `tcp` proxy per `(name, target)`, `top` as extra top-level keys.
    pub fn write(
        dir: &Path,
        hub: SocketAddr,
        fingerprint: &str,
        proxies: &[(&str, SocketAddr)],
        top: &str,
    ) -> TunnelFiles {
        let socket = dir.join("tunnel.sock");
        let config = dir.join("tunnel.toml");
        let mut text = format!(
            "hub_address = \"{hub}\"\nhub_server_name = \"localhost\"\n\
             hub_cert_sha256 = \"{fingerprint}\"\nkey = \"{KEY}\"\n{top}\n\
             [admin]\nsocket = {socket:?}\n"
        );
        for (name, target) in proxies {
            text.push_str(&format!(
                "[[proxies]]\nname = \"{name}\"\nservice = \"tcp\"\ntarget = \"{target}\"\n"
            ));
        }
        std::fs::write(&config, text).unwrap();
        TunnelFiles { config, socket }
    }

    pub fn admin(&self) -> AdminClient {
        AdminClient::unix(&self.socket).with_timeout(Duration::from_secs(5))
    }
}

/// Starts a hub daemon on `hub_ip` (with `hub_top` as extra top-level keys) and a tunnel daemon
/// to it with one `tcp` proxy per `(name, target)`, inside `link`'s namespaces if given, their
/// files written in `dir`. Returns the hub, its files, the tunnel and its files.
pub async fn start_hub_and_tunnel(
    dir: &Path,
    hub_ip: &str,
    hub_top: &str,
    proxies: &[(&str, SocketAddr)],
    link: Option<&Link>,
) -> (Daemon, HubFiles, Daemon, TunnelFiles) {
    let hub_files = HubFiles::write(dir, hub_ip, hub_top, "");
    let mut hub = Daemon::start("hub", &hub_files.config, link.map(|l| &l.hub));
    let hub_addr = hub.hub_address().await;
    let tunnel_files = TunnelFiles::write(dir, hub_addr, &hub_files.fingerprint, proxies, "");
    let tunnel = Daemon::start("tunnel", &tunnel_files.config, link.map(|l| &l.tunnel));
    (hub, hub_files, tunnel, tunnel_files)
}

/// The tunnel's status once it is connected with every proxy live.
pub async fn connected(admin: &AdminClient, limit: Duration) -> TunnelStatus {
    eventually("the tunnel to connect", limit, || async {
        let status: TunnelStatus = admin.get(model::STATUS).await.ok()?;
        (status.state == "connected" && status.proxies.iter().all(|p| p.state == "live"))
            .then_some(status)
    })
    .await
}

/// The public port of proxy `name` in a connected tunnel's status.
pub fn public_port(status: &TunnelStatus, name: &str) -> u16 {
    status
        .proxies
        .iter()
        .find(|p| p.name == name)
        .and_then(|p| p.public.as_deref())
        .unwrap_or_else(|| panic!("proxy {name} has no public port: {status:?}"))
        .parse()
        .unwrap()
}

/// The tunnels the hub lists on its `tcp` service, and its client count there; `None` if the
/// hub does not answer.
pub async fn hub_view(admin: &AdminClient) -> Option<(Vec<TunnelInfo>, usize)> {
    let tunnels: Vec<TunnelInfo> = admin.get(&model::service_tunnels("tcp")).await.ok()?;
    let service: ServiceInfo = admin.get(&model::service("tcp")).await.ok()?;
    Some((tunnels, service.clients))
}

/// SHA-256 of a long stream, by the crypto provider's assembly (the `sha2` crate is slow in
/// debug builds: tens of MiB/s, too slow for the gigabytes these tests move).
pub struct Sha256Stream(Box<dyn rustls::crypto::hash::Context>);

impl Sha256Stream {
    pub fn new() -> Sha256Stream {
        let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
        let hash = suite.tls13().expect("a TLS 1.3 suite").common.hash_provider;
        assert_eq!(
            hash.algorithm(),
            rustls::crypto::hash::HashAlgorithm::SHA256
        );
        Sha256Stream(hash.start())
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> [u8; 32] {
        self.0.finish().as_ref().try_into().unwrap()
    }
}
