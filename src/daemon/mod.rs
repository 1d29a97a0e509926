//! Process concerns shared by the daemons: the accounts files are read as ([`account`]), logging setup (stderr text or JSON, or the systemd
//! journal with structured fields), service-manager notifications ([`notify`]), and the
//! process's memory ([`pages`]). Nothing here knows about tunnels or hubs.

pub mod account;
pub mod notify;
pub mod pages;

pub use pages::{release_after_first_session, release_startup_code};

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

/// glibc returns freed memory at the top of a heap to the kernel once 128 KiB are free, and
/// serves allocations of 128 KiB or more with their own `mmap`. A link connection's buffers
/// (TLS records, HTTP/2 frames of up to 64 KiB, socket reads) are freed and allocated again many
/// thousand times a second, so with those defaults nearly every one came back as fresh pages:
/// 120,000-200,000 page faults per GiB moved, 8% of the daemons' CPU time. Keeping up to 2 MiB
/// free per heap and mapping separately only allocations of 256 KiB or more cut that to
/// 3,000-10,000 per GiB and the CPU per GiB by 10-25%, for 8-10 MiB more resident memory after
/// traffic (docs/benchmarks.md).
const TRIM_THRESHOLD: i32 = 2 * 1024 * 1024;
const MMAP_THRESHOLD: i32 = 256 * 1024;

/// Tunes the allocator for a long-running daemon that moves bytes (see [`TRIM_THRESHOLD`]).
/// Leaves it alone when the operator set glibc's malloc tunables in `GLIBC_TUNABLES`, and does
/// nothing where the C library is not glibc. Returns whether the settings were applied. Call it
/// before the runtime starts its threads.
pub fn tune_allocator() -> bool {
    let tunables = std::env::var("GLIBC_TUNABLES").ok();
    if operator_tuned_malloc(tunables.as_deref()) {
        return false;
    }
    set_malloc_thresholds()
}

fn operator_tuned_malloc(glibc_tunables: Option<&str>) -> bool {
    glibc_tunables.is_some_and(|t| t.split(':').any(|kv| kv.starts_with("glibc.malloc.")))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // a plain C call with integer arguments
fn set_malloc_thresholds() -> bool {
    // SAFETY: mallopt only changes allocator parameters; glibc takes its own lock.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            && libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_malloc_thresholds() -> bool {
    false
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_malloc_tunables_are_respected() {
        assert!(!operator_tuned_malloc(None));
        assert!(!operator_tuned_malloc(Some("")));
        assert!(!operator_tuned_malloc(Some("glibc.pthread.rseq=0")));
        assert!(operator_tuned_malloc(Some("glibc.malloc.trim_threshold=1")));
        assert!(operator_tuned_malloc(Some(
            "glibc.pthread.rseq=0:glibc.malloc.arena_max=2"
        )));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_accepts_the_thresholds() {
        assert!(set_malloc_thresholds());
    }
}
