//! `tunnelize`: the hub and tunnel daemons, config checking, and the demo.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use tunnelize::config::{AnyConfig, HubConfig, TunnelConfig, load_any};
use tunnelize::daemon::{LogFormat, init_logging};
use tunnelize::exit;
use tunnelize::hub::Hub;
use tunnelize::tls::{Identity, install_crypto_provider};
use tunnelize::tunnel::{Backoff, Tunnel, TunnelError, supervise};

#[derive(Parser)]
#[command(
    name = "tunnelize",
    version,
    about = "Self-hosted tunnels: expose services behind NAT through a public hub"
)]
struct Cli {
    /// Log format on stderr: `text` or `json`.
    #[arg(long, global = true, default_value = "text", value_name = "FORMAT")]
    log_format: LogFormat,
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
    /// Run the tunnel daemon (private side).
    Tunnel {
        /// Configuration file.
        #[arg(
            short,
            long,
            default_value = "/etc/tunnelize/tunnel.toml",
            value_name = "PATH"
        )]
        config: PathBuf,
    },
    /// Validate a hub or tunnel configuration file without starting anything.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Run a hub, a tunnel and a sample local service on loopback, and print a working curl line.
    Demo,
    /// Hash a password for a proxy's `basic_auth.password_hash` (argon2id). Reads the password
    /// from the terminal without echo, or the first line of standard input when piped.
    HashPassword,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    install_crypto_provider();
    let default_level = match cli.command {
        Command::Demo | Command::HashPassword => "warn",
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
            Command::Tunnel { config } => run_tunnel(&config).await,
            Command::CheckConfig { file } => check_config(&file),
            Command::Demo => report(run_demo().await),
            Command::HashPassword => report(hash_password()),
        }
    });
    ExitCode::from(code as u8)
}

fn report(result: Result<()>) -> i32 {
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::FAILURE
        }
    }
}

fn check_config(file: &Path) -> i32 {
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

/// Cancels the token on SIGINT or SIGTERM.
fn stop_on_signals() -> Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => info!("SIGINT received; stopping"),
            _ = term.recv() => info!("SIGTERM received; stopping"),
        }
        t.cancel();
    });
    Ok(token)
}

async fn run_hub(path: &Path) -> Result<()> {
    let config = HubConfig::load(path)?;
    let identity = match &config.tls {
        Some(files) => Identity::from_files(files)?,
        None => {
            let (identity, generated) = Identity::load_or_generate(&config.state_dir)?;
            if generated {
                warn!(
                    state_dir = %config.state_dir.display(),
                    fingerprint = %identity.fingerprint(),
                    "no [tls] configured: generated a self-signed certificate; give tunnels this fingerprint as hub_cert_sha256"
                );
            }
            identity
        }
    };
    info!(fingerprint = %identity.fingerprint(), "hub certificate");
    let listen = config.listen;
    let admin = config.admin.clone();
    let hub = Hub::new(config, &identity).await?;
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!(
            "cannot listen on {listen} (set `listen` in {} to a free address)",
            path.display()
        )
    })?;
    let shutdown = stop_on_signals()?;
    tunnelize::admin::serve_hub(hub.view(), &admin, &identity, &shutdown)
        .await
        .with_context(|| format!("starting the admin API ([admin] in {})", path.display()))?;
    hub.run(listener, shutdown).await;
    Ok(())
}

async fn run_tunnel(path: &Path) -> i32 {
    let result = async {
        let config = TunnelConfig::load(path)?;
        let admin = config.admin.clone();
        let tunnel = Tunnel::new(config)?;
        let shutdown = stop_on_signals()?;
        tunnelize::admin::serve_tunnel(tunnel.status().clone(), &admin, &shutdown)
            .await
            .with_context(|| format!("starting the status API ([admin] in {})", path.display()))?;
        Ok::<_, anyhow::Error>((tunnel, shutdown))
    }
    .await;
    let (tunnel, shutdown) = match result {
        Ok(pair) => pair,
        Err(e) => return report(Err(e)),
    };
    match supervise(tunnel, Backoff::default(), shutdown).await {
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
    let shutdown = stop_on_signals()?;
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

fn hash_password() -> Result<()> {
    use std::io::IsTerminal;
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").context("reading the password")?;
        let again = rpassword::prompt_password("Again: ").context("reading the password")?;
        anyhow::ensure!(
            first == again,
            "the two passwords differ; nothing was hashed"
        );
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    anyhow::ensure!(
        !password.is_empty(),
        "the password is empty; nothing was hashed"
    );
    let hash = tunnelize::hub::http::auth::hash_password(&password).map_err(anyhow::Error::msg)?;
    println!("{hash}");
    Ok(())
}
