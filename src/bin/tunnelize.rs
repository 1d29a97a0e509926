//! `tunnelize`: the hub and tunnel daemons, config checking, and the demo.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use tunnelize::admin::api::ReloadRequest;
use tunnelize::config::{AnyConfig, HubConfig, TunnelConfig, load_any};
use tunnelize::daemon::{LogFormat, init_logging, notify, tune_allocator};
use tunnelize::exit;
use tunnelize::hub::Hub;
use tunnelize::tls::{Identity, install_crypto_provider};
use tunnelize::tunnel::reload::supervise_reloading;
use tunnelize::tunnel::{Tunnel, TunnelError};

#[derive(Parser)]
#[command(
    name = "tunnelize",
    version,
    about = "Self-hosted tunnels: expose services behind NAT through a public hub"
)]
struct Cli {
    /// Log format: `auto` (the journal under systemd, else text on stderr), `text`, `json`
    /// (one object per line on stderr) or `journald`.
    #[arg(long, global = true, default_value = "auto", value_name = "FORMAT")]
    log_format: LogFormat,
    /// Detach into the background (for init systems other than systemd and launchd, which
    /// want the daemon in the foreground). The configuration is checked first; standard
    /// output and error stay where they were, so redirect them to a log file.
    #[arg(long, global = true)]
    daemon: bool,
    /// With --daemon: write the daemon's process id to this file.
    #[arg(long, global = true, value_name = "PATH", requires = "daemon")]
    pidfile: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub daemon (public side).
    Hub {
        /// Configuration file.
        #[arg(
            short,
            long,
            default_value = "/etc/tunnelize/hub.toml",
            value_name = "PATH"
        )]
        config: PathBuf,
    },
    /// Run the tunnel daemon (private side), or write its configuration with --init-from.
    Tunnel {
        /// Configuration file (with --init-from: the file to write).
        #[arg(
            short,
            long,
            default_value = "/etc/tunnelize/tunnel.toml",
            value_name = "PATH"
        )]
        config: PathBuf,
        #[command(flatten)]
        init: InitArgs,
        /// Run a one-off tunnel for this hub service only (hub and key from the config file).
        #[arg(
            short = 's',
            long,
            value_name = "SERVICE",
            requires = "port",
            conflicts_with = "init_from"
        )]
        service: Option<String>,
        /// With --service: the local port to expose (127.0.0.1:PORT).
        #[arg(short = 'p', long, value_name = "PORT", requires = "service")]
        port: Option<u16>,
    },
    /// Validate a hub or tunnel configuration file without starting anything.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Make a running hub or tunnel re-read its configuration file and wait for its answer
    /// (the units' `ExecReload=`). Exits 0 when the daemon took the file; 78 when the file is
    /// invalid (checked here first: the daemon keeps the configuration it runs); 1 when the
    /// daemon refused it or could not be asked.
    Reload {
        /// The daemon's configuration file (the one it was started with).
        #[arg(short, long, value_name = "PATH")]
        config: PathBuf,
        /// The daemon's process id (`$MAINPID`): sent SIGHUP when the file turns its admin
        /// socket off, as the answer cannot be waited for then.
        #[arg(long, value_name = "PID")]
        pid: Option<i32>,
    },
    /// Run a hub, a tunnel and a sample local service on loopback, and print a working curl line.
    Demo,
    /// Hash a password for a proxy's `basic_auth.password_hash` (argon2id). Reads the password
    /// from the terminal without echo, or the first line of standard input when piped.
    HashPassword,
    /// Print the `key_hash` line for a tunnel or monitoring key (`sha256:…`), so the hub's config
    /// need not hold the key itself. Reads the key from the terminal without echo, or the first
    /// line of standard input when piped.
    HashKey,
    /// Make a random tunnel or monitoring key (32 bytes from the system's generator, as 64 hex
    /// digits). With FILE it is written there, mode 0640 and group `tunnelize` (when that group
    /// exists), never over an existing file, and its `key_hash` line is printed; without, the
    /// key is printed.
    GenKey {
        /// Where to write the key; refused when it exists.
        file: Option<PathBuf>,
    },
    /// Write man pages (tunnelize.1 and one per command) into a directory (for packagers).
    #[command(hide = true)]
    Man {
        /// Where to write them; created if missing.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

/// `tunnelize tunnel --init-from`.
#[derive(clap::Args)]
struct InitArgs {
    /// Write a tunnel configuration from the services of the hub whose TLS admin listener is
    /// at HOST:PORT, then exit.
    #[arg(long, value_name = "HOST:PORT")]
    init_from: Option<String>,
    /// The tunnel key (the hub lets a tunnel key list its services). Prefer the environment
    /// variable: a command-line argument is visible to other users.
    #[arg(
        short = 'a',
        long = "key",
        value_name = "KEY",
        env = "TUNNELIZE_KEY",
        hide_env_values = true,
        requires = "init_from"
    )]
    key: Option<String>,
    /// Pin the hub's certificate by its SHA-256 (also written to the configuration).
    #[arg(
        long,
        value_name = "SHA256",
        requires = "init_from",
        conflicts_with = "ca"
    )]
    fingerprint: Option<String>,
    /// Verify the hub with this CA file (also written to the configuration).
    #[arg(long, value_name = "FILE", requires = "init_from")]
    ca: Option<PathBuf>,
    /// The hub's tunnel listener to write as `hub_address` [default: HOST:7700].
    #[arg(long, value_name = "HOST:PORT", requires = "init_from")]
    hub_address: Option<String>,
    /// Replace the configuration file if it exists.
    #[arg(long, requires = "init_from")]
    force: bool,
}

/// For `--daemon`: checks the daemon's configuration while errors still reach the caller,
/// then forks into the background. Returns the exit code to leave with on failure.
fn detach(cli: &mut Cli) -> Result<(), i32> {
    let config = match &mut cli.command {
        Command::Hub { config } | Command::Tunnel { config, .. } => config,
        _ => {
            eprintln!("error: --daemon is for `tunnelize hub` and `tunnelize tunnel`");
            return Err(exit::USAGE);
        }
    };
    // The daemon runs in `/`: keep paths meaning what they meant here.
    if let Ok(absolute) = std::fs::canonicalize(&*config) {
        *config = absolute;
    }
    if let Err(e) = load_any(config) {
        eprintln!("error: {e}");
        return Err(exit::FAILURE);
    }
    let mut daemon = daemonix::Daemonize::new()
        .working_directory("/")
        .stdout(daemonix::Stdio::keep())
        .stderr(daemonix::Stdio::keep());
    if let Some(pidfile) = &cli.pidfile {
        let absolute = match pidfile.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => std::fs::canonicalize(dir)
                .map(|d| d.join(pidfile.file_name().unwrap_or_default()))
                .unwrap_or_else(|_| pidfile.clone()),
            _ => std::env::current_dir().unwrap_or_default().join(pidfile),
        };
        daemon = daemon.pid_file(absolute);
    }
    daemon.start().map_err(|e| {
        eprintln!("error: cannot run in the background: {e}");
        exit::FAILURE
    })
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    // Fork before any thread exists (the runtime's, the logger's).
    if cli.daemon
        && let Err(code) = detach(&mut cli)
    {
        return ExitCode::from(code as u8);
    }
    install_crypto_provider();
    tune_allocator();
    let default_level = match cli.command {
        Command::Demo
        | Command::HashPassword
        | Command::Man { .. }
        | Command::Reload { .. }
        | Command::GenKey { .. } => "warn",
        _ => "info",
    };
    init_logging(cli.log_format, default_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE as u8);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Hub { config } => report(run_hub(&config).await),
            Command::Tunnel { config, init, .. } if init.init_from.is_some() => {
                report(init_from(&config, init).await)
            }
            Command::Tunnel {
                config,
                service,
                port,
                ..
            } => run_tunnel(&config, service.zip(port)).await,
            Command::CheckConfig { file } => check_config(&file),
            Command::Reload { config, pid } => reload(&config, pid).await,
            Command::Demo => report(run_demo().await),
            Command::HashPassword => report(hash_password()),
            Command::HashKey => report(hash_key()),
            Command::GenKey { file } => report(gen_key(file.as_deref())),
            Command::Man { dir } => report(
                tunnelize::daemon::write_man_pages(<Cli as clap::CommandFactory>::command(), &dir)
                    .map(|written| {
                        for page in written {
                            println!("{}", page.display());
                        }
                    })
                    .with_context(|| format!("writing man pages into {}", dir.display())),
            ),
        }
    });
    ExitCode::from(code as u8)
}

/// Once a daemon is ready: the executable's pages that only start-up used go back to the
/// kernel, now and again after its first session (`tunnelize::daemon::pages`).
fn release_startup_code() {
    let advised = tunnelize::daemon::release_startup_code();
    tracing::debug!(
        advised_bytes = advised,
        "released the executable's start-up pages"
    );
    tunnelize::daemon::release_after_first_session();
}

fn report(result: Result<()>) -> i32 {
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: {e:#}");
            failure_code(&e)
        }
    }
}

/// The exit status for `e`: [`exit::CONFIG`] when the configuration is at fault (its file, the
/// TLS files it names, or a rule such as "no tunnel key"), which a restart cannot cure; else
/// [`exit::FAILURE`].
fn failure_code(e: &anyhow::Error) -> i32 {
    use tunnelize::hub::HubError;
    let config = e.chain().any(|cause| {
        cause.is::<tunnelize::config::ConfigError>()
            || cause.is::<tunnelize::tls::TlsError>()
            || matches!(
                cause.downcast_ref::<HubError>(),
                Some(HubError::Config(_) | HubError::Tls(_))
            )
            || matches!(
                cause.downcast_ref::<TunnelError>(),
                Some(TunnelError::Tls(_))
            )
    });
    if config { exit::CONFIG } else { exit::FAILURE }
}

fn check_config(file: &Path) -> i32 {
    warn_if_the_daemons_cannot_read(file);
    match load_any(file) {
        Ok(AnyConfig::Hub(c)) => {
            println!(
                "{}: valid hub configuration ({} services, {} keys)",
                file.display(),
                c.services.len(),
                c.keys.len()
            );
            exit::OK
        }
        Ok(AnyConfig::Tunnel(c)) => {
            println!(
                "{}: valid tunnel configuration ({} proxies)",
                file.display(),
                c.proxies.len()
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::FAILURE
        }
    }
}

/// `tunnelize reload`: checks `file`, then asks the daemon through the admin socket the file
/// names and prints its answer (or signals `pid` when the socket is off).
async fn reload(file: &Path, pid: Option<i32>) -> i32 {
    let socket = match load_any(file) {
        Ok(AnyConfig::Hub(c)) => c.admin.socket,
        Ok(AnyConfig::Tunnel(c)) => c.admin.socket,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!(
                "the running daemon keeps the configuration it had; fix the file and reload again"
            );
            return exit::CONFIG;
        }
    };
    let Some(socket) = socket else {
        return match pid {
            Some(pid) if pid > 0 => {
                // SAFETY: kill(2) with a process id and a signal number; no memory involved.
                if unsafe { libc::kill(pid, libc::SIGHUP) } == 0 {
                    println!(
                        "{}: the admin socket is off ([admin] socket = \"\"): sent SIGHUP to {pid}; \
                         the daemon logs whether it took the file",
                        file.display()
                    );
                    exit::OK
                } else {
                    let e = std::io::Error::last_os_error();
                    eprintln!("error: cannot signal process {pid}: {e}");
                    exit::FAILURE
                }
            }
            _ => {
                eprintln!(
                    "error: {} turns the admin socket off ([admin] socket = \"\"), so the daemon \
                     cannot be asked; pass its process id with --pid",
                    file.display()
                );
                exit::USAGE
            }
        };
    };
    let api = tunnelize::admin::client::AdminClient::unix(&socket);
    match api
        .post::<tunnelize::admin::model::Message>(tunnelize::admin::model::RELOAD)
        .await
    {
        Ok(answer) => {
            println!("{}", answer.message);
            exit::OK
        }
        Err(e) => {
            eprintln!("error: reloading through {}: {e}", socket.display());
            exit::FAILURE
        }
    }
}

/// Run as root, `check-config` reads any file; the daemons run as [`DAEMON_USER`]. Warns (on
/// stderr) when that user exists and could not read `file`, with the fix.
///
/// [`DAEMON_USER`]: tunnelize::daemon::account::DAEMON_USER
fn warn_if_the_daemons_cannot_read(file: &Path) {
    use tunnelize::daemon::account::{Account, DAEMON_USER};
    if Account::current().user != "root" {
        return;
    }
    let Some(daemon) = Account::named(DAEMON_USER) else {
        return;
    };
    if daemon.may_read(file) == Some(false) {
        let (group, path) = (&daemon.group, file.display());
        eprintln!(
            "warning: {path}: user {DAEMON_USER} (group {group}), which the daemons run as, \
             may not read this file; as root: chgrp {group} {path} && chmod 0640 {path}"
        );
    }
}

/// Cancels the token on SIGINT or SIGTERM (telling the service manager first); SIGHUP asks
/// `reload` to re-read the configuration.
fn stop_on_signals(reload: Option<mpsc::Sender<ReloadRequest>>) -> Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let t = token.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = int.recv() => { info!("SIGINT received; stopping"); break; }
                _ = term.recv() => { info!("SIGTERM received; stopping"); break; }
                // Without a handler SIGHUP would kill the daemon (`systemctl reload` sends it).
                _ = hup.recv() => match &reload {
                    Some(requests) => {
                        info!("SIGHUP received; reloading the configuration");
                        // The reload logs its own outcome; nobody waits for the answer.
                        let (answer, _) = tokio::sync::oneshot::channel();
                        let _ = requests.try_send(answer);
                    }
                    None => warn!("SIGHUP received: this daemon cannot reload its configuration yet; restart it to apply a new one"),
                },
            }
        }
        // Before anything starts closing, so the service manager knows at once.
        notify::stopping();
        t.cancel();
    });
    Ok(token)
}

/// Re-reads the hub's configuration file and applies it; a file that does not load is refused
/// and the running configuration stays.
async fn reload_hub(
    view: &tunnelize::hub::inspect::HubView,
    path: &Path,
) -> Result<String, String> {
    notify::reloading();
    let result = match HubConfig::load(path) {
        Ok(config) => view.reload(config).await,
        Err(e) => Err(e.to_string()),
    };
    match &result {
        Ok(summary) => notify::ready(summary),
        Err(e) => {
            error!("reload refused, the running configuration stays: {e}");
            notify::ready(&format!("reload refused: {e}"));
        }
    }
    result
}

async fn run_hub(path: &Path) -> Result<()> {
    let config = HubConfig::load(path)?;
    let identity = match &config.tls {
        Some(files) => Identity::from_files(files)?,
        None => {
            let (identity, generated) = Identity::load_or_generate(&config.state_dir)?;
            if generated {
                // The fingerprint is in the message too: `journalctl` shows only the message.
                let fingerprint = identity.fingerprint();
                warn!(
                    state_dir = %config.state_dir.display(),
                    %fingerprint,
                    "no [tls] configured: generated a self-signed certificate; give tunnels hub_cert_sha256 = \"{fingerprint}\""
                );
            }
            identity
        }
    };
    let fingerprint = identity.fingerprint();
    info!(%fingerprint, "hub certificate, SHA-256 fingerprint {fingerprint}");
    let listen = config.listen;
    let admin = config.admin.clone();
    let mut hub = Hub::new(config, &identity).await?;
    hub.keep_holds_across_restarts().await;
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!(
            "cannot listen on {listen} (set `listen` in {} to a free address)",
            path.display()
        )
    })?;
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let shutdown = stop_on_signals(Some(reload_tx.clone()))?;
    let api =
        tunnelize::admin::serve_hub(hub.view(), &admin, &identity, Some(reload_tx), &shutdown)
            .await
            .with_context(|| format!("starting the admin API ([admin] in {})", path.display()))?;
    let view = hub.view();
    notify::ready(&format!(
        "listening for tunnels on {listen}; {} services; admin {}",
        view.services().len(),
        api.socket
            .as_ref()
            .map_or("socket off".to_owned(), |p| p.display().to_string())
    ));
    release_startup_code();
    // Alive when the runtime runs tasks and the registry answers.
    notify::spawn_watchdog(
        move || {
            let view = view.clone();
            async move {
                tokio::spawn(async move { view.services().len() })
                    .await
                    .is_ok()
            }
        },
        shutdown.clone(),
    );
    let (reload_view, reload_path) = (hub.view(), path.to_owned());
    tokio::spawn(async move {
        while let Some(answer) = reload_rx.recv().await {
            let _ = answer.send(reload_hub(&reload_view, &reload_path).await);
        }
    });
    hub.run(listener, shutdown).await;
    api.stopped(Duration::from_secs(5)).await;
    Ok(())
}

async fn run_tunnel(path: &Path, one_off: Option<(String, u16)>) -> i32 {
    let result = async {
        let mut config = TunnelConfig::load(path)?;
        if let Some((service, port)) = &one_off {
            config = tunnelize::tunnel::bootstrap::one_off(config, service, *port);
        }
        let admin = config.admin.clone();
        let tunnel = Tunnel::new(config)?;
        let (reload_tx, reload_rx) = mpsc::channel::<ReloadRequest>(4);
        let shutdown = stop_on_signals(Some(reload_tx.clone()))?;
        let api = tunnelize::admin::serve_tunnel(
            tunnel.status().clone(),
            &admin,
            Some(reload_tx),
            &shutdown,
        )
        .await
        .with_context(|| format!("starting the status API ([admin] in {})", path.display()))?;
        Ok::<_, anyhow::Error>((tunnel, shutdown, api, reload_rx))
    }
    .await;
    let (tunnel, shutdown, api, reload_rx) = match result {
        Ok(pair) => pair,
        Err(e) => return report(Err(e)),
    };
    // Ready once the status socket is up; the session with the hub comes and goes after.
    notify::ready(&format!("connecting to {}", tunnel.config().hub_address));
    release_startup_code();
    notify::spawn_watchdog(
        || async { tokio::spawn(async {}).await.is_ok() },
        shutdown.clone(),
    );
    // A reload re-reads the same file, with the same command-line proxy if one was given.
    let load = || {
        let config = TunnelConfig::load(path).map_err(|e| e.to_string())?;
        Ok(match &one_off {
            Some((service, port)) => tunnelize::tunnel::bootstrap::one_off(config, service, *port),
            None => config,
        })
    };
    let result = supervise_reloading(tunnel, shutdown.clone(), reload_rx, load).await;
    shutdown.cancel();
    api.stopped(Duration::from_secs(5)).await;
    match result {
        Ok(()) => exit::OK,
        Err(e @ TunnelError::AuthFailed(_)) => {
            error!("{e}");
            eprintln!("error: {e}");
            exit::AUTH_FAILED
        }
        Err(e) => {
            error!("{e}");
            eprintln!("error: {e}");
            exit::FAILURE
        }
    }
}

async fn run_demo() -> Result<()> {
    let shutdown = stop_on_signals(None)?;
    let demo = tunnelize::demo::Demo::start()
        .await
        .context("starting the demo")?;
    println!("tunnelize demo is running (Ctrl-C to stop)");
    println!(
        "  hub:            {} (certificate SHA-256 {})",
        demo.hub_addr, demo.fingerprint
    );
    println!("  local service:  http://{}/", demo.local_addr);
    println!("  public, http:   {} (routed by hostname)", demo.http_url);
    println!("  public, tcp:    {} (a port of its own)", demo.public_addr);
    println!();
    println!("Try it:");
    println!("  curl {}", demo.http_url);
    shutdown.cancelled().await;
    demo.stop().await;
    println!("demo stopped");
    Ok(())
}

/// Reads a secret twice from the terminal (no echo), or one line from piped standard input.
fn read_secret(what: &str) -> Result<String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        let prompt = format!("{}{}: ", what[..1].to_uppercase(), &what[1..]);
        let first =
            rpassword::prompt_password(&prompt).with_context(|| format!("reading the {what}"))?;
        let again =
            rpassword::prompt_password("Again: ").with_context(|| format!("reading the {what}"))?;
        anyhow::ensure!(first == again, "the two {what}s differ; nothing was hashed");
        Ok(first)
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .with_context(|| format!("reading the {what} from standard input"))?;
        Ok(line.trim_end_matches(['\n', '\r']).to_owned())
    }
}

fn hash_key() -> Result<()> {
    let key = read_secret("key")?;
    tunnelize::config::check_tunnel_key(&key)
        .map_err(|problem| anyhow::anyhow!("{problem}; nothing was hashed"))?;
    let line = tunnelize::secret::StoredKey::hash_line(&tunnelize::secret::Secret::new(key));
    println!("{line}");
    eprintln!(
        "put it in the hub's config as `key_hash = \"{line}\"` (in [[keys]] or [admin]), in place of `key`, `key_file` or `key_env`"
    );
    Ok(())
}

/// The group key files are given to, so the daemons (which run in it) can read them.
const KEY_GROUP: &str = "tunnelize";

fn gen_key(file: Option<&Path>) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use tunnelize::secret::StoredKey;

    let key = StoredKey::generate()
        .map_err(|e| anyhow::anyhow!("reading the system's random number generator: {e}"))?;
    let line = format!("key_hash = \"{}\"", StoredKey::hash_line(&key));
    let Some(file) = file else {
        println!("{}", key.expose());
        eprintln!("for the hub's config, in place of the key itself: {line}");
        return Ok(());
    };
    // Created with O_EXCL: an existing key is never replaced.
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(file)
        .with_context(|| match file.exists() {
            true => format!(
                "{} exists; remove it first to replace its key",
                file.display()
            ),
            false => format!("cannot create {}", file.display()),
        })?;
    let group = give_to_key_group(&out);
    out.write_all(format!("{}\n", key.expose()).as_bytes())
        .and_then(|()| out.sync_all())
        .with_context(|| format!("writing {}", file.display()))?;
    // The umask may have narrowed the mode asked for at creation.
    std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o640))
        .with_context(|| format!("setting the mode of {}", file.display()))?;
    println!("{line}");
    match group {
        Ok(true) => eprintln!(
            "wrote {} (mode 0640, group {KEY_GROUP}); the line above is its hash, for the hub's \
             [[keys]] or [admin] in place of key_file",
            file.display()
        ),
        Ok(false) => eprintln!(
            "wrote {} (mode 0640); there is no group {KEY_GROUP} here, so give it to the group the \
             daemon runs as: chgrp GROUP {}",
            file.display(),
            file.display()
        ),
        Err(e) => eprintln!(
            "wrote {} (mode 0640) but could not give it to group {KEY_GROUP} ({e}); as root: \
             chgrp {KEY_GROUP} {}",
            file.display(),
            file.display()
        ),
    }
    Ok(())
}

/// Gives `file` to [`KEY_GROUP`]: `Ok(false)` when the group does not exist.
fn give_to_key_group(file: &std::fs::File) -> std::io::Result<bool> {
    let Some(gid) = tunnelize::daemon::account::group_id(KEY_GROUP) else {
        return Ok(false);
    };
    std::os::unix::fs::fchown(file, None, Some(gid))?;
    Ok(true)
}

fn hash_password() -> Result<()> {
    let password = read_secret("password")?;
    anyhow::ensure!(
        !password.is_empty(),
        "the password is empty; nothing was hashed"
    );
    let hash = tunnelize::hub::http::auth::hash_password(&password).map_err(anyhow::Error::msg)?;
    println!("{hash}");
    Ok(())
}

async fn init_from(path: &Path, init: InitArgs) -> Result<()> {
    let key = init
        .key
        .context("--init-from needs the tunnel key: pass -a KEY or set TUNNELIZE_KEY")?;
    let request = tunnelize::tunnel::bootstrap::InitRequest {
        path: path.to_owned(),
        admin: init.init_from.unwrap_or_default(),
        key: tunnelize::secret::Secret::new(key),
        fingerprint: init.fingerprint,
        ca: init.ca,
        hub_address: init.hub_address,
        force: init.force,
    };
    let proxies = tunnelize::tunnel::bootstrap::init_from(request).await?;
    println!(
        "{}: tunnel configuration with {proxies} proxies (one per service of the hub); point each \
         `target` at a local service, then run `tunnelize tunnel -c {}`",
        path.display(),
        path.display()
    );
    Ok(())
}
