//! Process concerns shared by the daemons: logging setup (stderr text or JSON, or the systemd
//! journal with structured fields) and service-manager notifications ([`notify`]). Nothing
//! here knows about tunnels or hubs.

pub mod notify;

use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// The journal when started by systemd with its output connected to the journal
    /// (`JOURNAL_STREAM` set), human-readable lines on stderr otherwise.
    #[default]
    Auto,
    /// Human-readable lines on stderr.
    Text,
    /// One JSON object per line on stderr.
    Json,
    /// The systemd journal, every field (service, tunnel id, client id, ...) a journal field.
    Journald,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(LogFormat::Auto),
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            "journald" => Ok(LogFormat::Journald),
            other => Err(format!(
                "unknown log format `{other}`; use `auto`, `text`, `json` or `journald`"
            )),
        }
    }
}

/// Installs the global tracing subscriber. The level comes from `RUST_LOG` when set, else
/// `default_level` (e.g. "info"). Calling it twice is harmless (the second call does nothing).
/// A journal that cannot be reached falls back to stderr, saying so there.
pub fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let format = match format {
        LogFormat::Auto if std::env::var_os("JOURNAL_STREAM").is_some() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        other => other,
    };
    if format == LogFormat::Journald {
        match tracing_journald::layer() {
            Ok(journal) => {
                let _ = tracing_subscriber::registry()
                    .with(filter)
                    // Fields as SERVICE, TUNNEL_ID, CLIENT_ID (no `F_` prefix): none of ours
                    // is named like a field journald keeps for itself.
                    .with(
                        journal
                            .with_syslog_identifier("tunnelize".into())
                            .with_field_prefix(None),
                    )
                    .try_init();
                return;
            }
            Err(e) => eprintln!("cannot write to the systemd journal ({e}); logging to stderr"),
        }
    }
    // Colours only for a person at a terminal: never escape codes in a pipe, file or journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        _ => builder.with_target(false).try_init(),
    };
}

/// Writes the man page of `cmd` and of each of its visible subcommands (`NAME-SUB.1`) into
/// `dir`, creating it; returns the files written. Used by both binaries' `man` commands and
/// by the packages, so the pages always match the CLI definitions.
pub fn write_man_pages(
    cmd: clap::Command,
    dir: &std::path::Path,
) -> std::io::Result<Vec<std::path::PathBuf>> {
    fn pages(
        cmd: clap::Command,
        dir: &std::path::Path,
        written: &mut Vec<std::path::PathBuf>,
    ) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            pages(sub.clone(), dir, written)?;
        }
        written.push(clap_mangen::Man::new(cmd).generate_to(dir)?);
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    pages(cmd, dir, &mut written)?;
    Ok(written)
}
