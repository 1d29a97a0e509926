//! `tunnelizectl`: inspect and control a running hub or tunnel daemon through its admin API,
//! on the local socket or, for the hub, over TLS with a monitoring key.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use serde::de::DeserializeOwned;
use serde_json::Value;

use tunnelize::admin::client::{AdminClient, AdminError, HUB_SOCKET, TUNNEL_SOCKET, path_segment};
use tunnelize::admin::{model, view};
use tunnelize::config::HubTrust;
use tunnelize::exit;
use tunnelize::secret::Secret;
use tunnelize::tls::Fingerprint;

/// Exit code: the daemon has no such service, tunnel or client.
const NOT_FOUND: u8 = 3;
/// Exit code: the daemon refused the key or the caller.
const UNAUTHORIZED: u8 = 4;
/// Exit code: the daemon could not be reached.
const UNREACHABLE: u8 = 5;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure (the daemon answered with an error, or its answer was unusable)
  2  bad usage (unknown command or option, bad --hub, --fingerprint or --timeout)
  3  not found (no such service, tunnel or client)
  4  unauthorized (missing or wrong monitoring key, or no permission on the socket)
  5  cannot reach the daemon (no socket, nothing listening, TLS refused, or no answer
     within --timeout)";

#[derive(Parser)]
#[command(
    name = "tunnelizectl",
    version,
    about = "Inspect and control a running tunnelize hub or tunnel daemon",
    long_about = "Inspect and control a running tunnelize hub or tunnel daemon.\n\n\
                  By default it talks to the hub's local admin socket (/run/tunnelize/hub.sock; \
                  for `status`, the tunnel daemon's /run/tunnelize/tunnel.sock). With --hub it \
                  talks to the hub's TLS admin listener instead, authenticated by the \
                  monitoring key and verifying the hub by --ca, --fingerprint or the system's \
                  root certificates.\n\n\
                  Output is aligned tables for people; --json prints the daemon's JSON documents \
                  for scripts. Errors go to standard error.",
    after_long_help = EXIT_CODES
)]
struct Cli {
    /// The daemon's admin socket [default: /run/tunnelize/hub.sock, or
    /// /run/tunnelize/tunnel.sock for `status`].
    #[arg(long, global = true, value_name = "PATH", conflicts_with = "hub")]
    socket: Option<PathBuf>,
    /// Talk to the hub's TLS admin listener instead of a local socket.
    #[arg(long, global = true, value_name = "https://HOST:PORT")]
    hub: Option<String>,
    /// The hub's monitoring key, for --hub. Prefer the environment variable: a command-line
    /// argument is visible to other users in the process list.
    #[arg(
        long,
        global = true,
        value_name = "KEY",
        env = "TUNNELIZE_MONITOR_KEY",
        hide_env_values = true
    )]
    key: Option<String>,
    /// Verify the hub's certificate with this CA file (PEM), for --hub.
    #[arg(long, global = true, value_name = "FILE", requires = "hub")]
    ca: Option<PathBuf>,
    /// Verify the hub's certificate by its SHA-256 fingerprint (64 hex digits, colons
    /// optional), for --hub.
    #[arg(
        long,
        global = true,
        value_name = "SHA256",
        requires = "hub",
        conflicts_with = "ca"
    )]
    fingerprint: Option<Fingerprint>,
    /// Print the daemon's JSON documents, pretty-printed, instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Give up on the daemon after this long, connecting included (`10`, `2.5s`, `500ms`).
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        default_value = "10",
        value_parser = parse_timeout
    )]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the daemon's host and process figures: cpu, memory, load, uptime, version.
    SysInfo,
    /// List the hub's services with their tunnels, clients and bytes (IN from clients, OUT to
    /// clients).
    ListServices,
    /// Show one service of the hub with its figures.
    GetService {
        /// The service's name (`[services.NAME]` in hub.toml).
        name: String,
    },
    /// List the tunnels connected to a service (or to every service), with their proxies'
    /// public ports or hostnames.
    ListTunnels {
        /// The service's name; every service when left out.
        service: Option<String>,
    },
    /// List the clients connected to a service (or to every service): which tunnel serves
    /// each, peer, bytes, since.
    ListClients {
        /// The service's name; every service when left out.
        service: Option<String>,
    },
    /// Disconnect a tunnel: its clients close, its ports and hostnames are freed.
    DisconnectTunnel {
        /// The tunnel's id, as `list-tunnels` shows it.
        id: String,
    },
    /// Disconnect one client; its tunnel and other clients stay.
    DisconnectClient {
        /// The client's id, as `list-clients` shows it.
        id: String,
    },
    /// List the hub's failed-login table: addresses with failures, and those locked out.
    ListLockouts,
    /// Show the hub's cluster: whether it is a member, whether Redis answers, and every hub
    /// of the cluster with its address and lease.
    Cluster,
    /// Forget an address's failed logins and lift its lockout.
    Unlock {
        /// The address, as `list-lockouts` shows it.
        address: String,
    },
    /// Show a tunnel daemon's own view: its connection to the hub and each proxy's state.
    /// Asks /run/tunnelize/tunnel.sock unless --socket is given.
    Status,
    /// Make the daemon re-read its configuration file.
    Reload,
    /// Print the daemon's Prometheus metrics (text exposition format).
    Metrics,
    /// Print a shell completion script to standard output.
    Completions {
        /// The shell.
        shell: Shell,
    },
    /// Write man pages (tunnelizectl.1 and one per command) into a directory.
    Man {
        /// Where to write them; created if missing.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

/// Shells that completion scripts are generated for.
#[derive(Clone, Copy, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Completions { shell } => return print_completions(*shell),
        Command::Man { dir } => return write_man_pages(dir),
        Command::Status if cli.hub.is_some() => Cli::command()
            .error(
                ErrorKind::ArgumentConflict,
                "`status` asks a tunnel daemon, which serves its API on its socket only; \
                 drop --hub (and pass --socket PATH if it is not /run/tunnelize/tunnel.sock)",
            )
            .exit(),
        _ => {}
    }
    let client = match connect(&cli) {
        Ok(client) => client,
        Err(e) => return fail(&e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE as u8);
        }
    };
    match runtime.block_on(run(&cli.command, &client, cli.json)) {
        Ok(text) => {
            print_out(&text);
            ExitCode::from(exit::OK as u8)
        }
        Err(e) => fail_in(&cli.command, &e),
    }
}

/// The client for the daemon the options name.
fn connect(cli: &Cli) -> Result<AdminClient, AdminError> {
    let client = match &cli.hub {
        Some(address) => {
            tunnelize::tls::install_crypto_provider();
            let trust = match (&cli.ca, cli.fingerprint) {
                (Some(ca), _) => HubTrust::CaFile(ca.clone()),
                (None, Some(pin)) => HubTrust::Fingerprint(pin.0),
                (None, None) => HubTrust::SystemRoots,
            };
            let key = cli
                .key
                .as_deref()
                .filter(|k| !k.is_empty())
                .map(Secret::new);
            AdminClient::hub(address, &trust, key)?
        }
        None => {
            let default = match cli.command {
                Command::Status => TUNNEL_SOCKET,
                _ => HUB_SOCKET,
            };
            AdminClient::unix(cli.socket.clone().unwrap_or_else(|| default.into()))
        }
    };
    Ok(client.with_timeout(cli.timeout))
}

/// Runs one API command; its output for standard output.
async fn run(command: &Command, api: &AdminClient, json: bool) -> Result<String, AdminError> {
    use model::{ClientInfo, ServiceInfo, TunnelInfo};
    match command {
        Command::SysInfo => show(api, model::SYSTEM, json, view::system).await,
        Command::ListServices => {
            show(api, model::SERVICES, json, |s: &Vec<ServiceInfo>| {
                view::services(s)
            })
            .await
        }
        Command::GetService { name } => {
            let path = model::service(&path_segment(name));
            show(api, &path, json, view::service).await
        }
        Command::ListTunnels {
            service: Some(service),
        } => {
            let path = model::service_tunnels(&path_segment(service));
            show(api, &path, json, |t: &Vec<TunnelInfo>| {
                view::tunnels(service, t)
            })
            .await
        }
        Command::ListTunnels { service: None } => {
            show_every_service(
                api,
                model::service_tunnels,
                json,
                view::every_service_tunnels,
            )
            .await
        }
        Command::ListClients {
            service: Some(service),
        } => {
            let path = model::service_clients(&path_segment(service));
            show(api, &path, json, |c: &Vec<ClientInfo>| {
                view::clients(service, c)
            })
            .await
        }
        Command::ListClients { service: None } => {
            show_every_service(
                api,
                model::service_clients,
                json,
                view::every_service_clients,
            )
            .await
        }
        Command::DisconnectTunnel { id } => {
            answer(api.delete(&model::tunnel(&path_segment(id))).await?, json)
        }
        Command::DisconnectClient { id } => {
            answer(api.delete(&model::client(&path_segment(id))).await?, json)
        }
        Command::ListLockouts => {
            show(api, model::LOCKOUTS, json, |l: &Vec<model::LockoutInfo>| {
                view::lockouts(l)
            })
            .await
        }
        Command::Cluster => show(api, model::CLUSTER, json, view::cluster).await,
        Command::Unlock { address } => answer(
            api.delete(&model::lockout(&path_segment(address))).await?,
            json,
        ),
        Command::Status => show(api, model::STATUS, json, view::status).await,
        Command::Reload => answer(api.post(model::RELOAD).await?, json),
        Command::Metrics => api.get_text(model::METRICS).await,
        Command::Completions { .. } | Command::Man { .. } => Ok(String::new()),
    }
}

/// `GET path`: the raw document with `--json`, else `render`ed for people.
async fn show<T: DeserializeOwned>(
    api: &AdminClient,
    path: &str,
    json: bool,
    render: impl FnOnce(&T) -> String,
) -> Result<String, AdminError> {
    if json {
        Ok(pretty(&api.get::<Value>(path).await?))
    } else {
        Ok(render(&api.get::<T>(path).await?))
    }
}

/// `GET path_of(SERVICE)` for every service of the hub, in its order: with `--json` one object
/// of the documents by service name, else `render`ed for people.
async fn show_every_service<T: DeserializeOwned>(
    api: &AdminClient,
    path_of: fn(&str) -> String,
    json: bool,
    render: impl FnOnce(&[(String, T)]) -> String,
) -> Result<String, AdminError> {
    let services: Vec<model::ServiceInfo> = api.get(model::SERVICES).await?;
    if json {
        let mut all = serde_json::Map::new();
        for service in services {
            let document = api
                .get::<Value>(&path_of(&path_segment(&service.name)))
                .await?;
            all.insert(service.name, document);
        }
        return Ok(pretty(&Value::Object(all)));
    }
    let mut all = Vec::with_capacity(services.len());
    for service in services {
        let document = api.get::<T>(&path_of(&path_segment(&service.name))).await?;
        all.push((service.name, document));
    }
    Ok(render(&all))
}

/// The answer to an action: the raw document with `--json`, else its message.
fn answer(document: Value, json: bool) -> Result<String, AdminError> {
    if json {
        return Ok(pretty(&document));
    }
    Ok(
        match serde_json::from_value::<model::Message>(document.clone()) {
            Ok(m) => format!("{}\n", m.message),
            Err(_) => pretty(&document),
        },
    )
}

fn pretty(document: &Value) -> String {
    // Serialising a `Value` cannot fail: its keys are strings.
    serde_json::to_string_pretty(document).unwrap_or_default() + "\n"
}

/// Writes to standard output; a closed pipe (`| head`) is not an error.
fn print_out(text: &str) {
    let mut stdout = io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

fn fail(e: &AdminError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(exit_code(e))
}

/// Like [`fail`], adding where to find valid names or ids when something was not found.
fn fail_in(command: &Command, e: &AdminError) -> ExitCode {
    let hint = match (command, e) {
        (
            Command::GetService { .. } | Command::ListTunnels { .. } | Command::ListClients { .. },
            AdminError::NotFound { .. },
        ) => "; see `tunnelizectl list-services` for the services",
        (Command::DisconnectTunnel { .. }, AdminError::NotFound { .. }) => {
            "; see `tunnelizectl list-tunnels` for the tunnels"
        }
        (Command::DisconnectClient { .. }, AdminError::NotFound { .. }) => {
            "; see `tunnelizectl list-clients` for the clients"
        }
        (Command::Unlock { .. }, AdminError::NotFound { .. }) => {
            "; see `tunnelizectl list-lockouts` for the addresses"
        }
        (Command::Status, AdminError::NotFound { .. }) => {
            "; `status` needs a tunnel daemon's socket (--socket /run/tunnelize/tunnel.sock)"
        }
        _ => "",
    };
    eprintln!("error: {e}{hint}");
    ExitCode::from(exit_code(e))
}

fn exit_code(e: &AdminError) -> u8 {
    match e {
        AdminError::Unreachable { .. } => UNREACHABLE,
        AdminError::Unauthorized { .. } | AdminError::BadKey => UNAUTHORIZED,
        AdminError::NotFound { .. } => NOT_FOUND,
        AdminError::BadAddress { .. } => exit::USAGE as u8,
        _ => exit::FAILURE as u8,
    }
}

fn print_completions(shell: Shell) -> ExitCode {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "tunnelizectl", &mut script);
    print_out(&String::from_utf8_lossy(&script));
    ExitCode::from(exit::OK as u8)
}

fn write_man_pages(dir: &Path) -> ExitCode {
    match tunnelize::daemon::write_man_pages(Cli::command(), dir) {
        Ok(written) => {
            let list: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
            print_out(&(list.join("\n") + "\n"));
            ExitCode::from(exit::OK as u8)
        }
        Err(e) => {
            eprintln!(
                "error: cannot write man pages into {}: {e}; pick a writable directory",
                dir.display()
            );
            ExitCode::from(exit::FAILURE as u8)
        }
    }
}

/// `10`, `2.5`, `10s` or `500ms`: more than zero, at most an hour.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.strip_suffix("ms") {
        Some(ms) => (ms, 0.001),
        None => (text.strip_suffix('s').unwrap_or(text), 1.0),
    };
    let hint = "give seconds like `10`, `2.5s` or milliseconds like `500ms`";
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; {hint}"))?;
    let secs = value * unit;
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(format!(
            "{text:?} is out of range; give more than 0 and at most 3600 seconds"
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{text:?}: {e}; {hint}"))
}
