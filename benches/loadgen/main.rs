//! `loadgen`: the small load tools that `bench/run.sh` drives, and the report it prints.
//!
//! This is a `harness = false` bench target, so it is built with the release settings and never
//! run by `cargo test`. Run it as `cargo bench --bench loadgen -- <subcommand> ...` or through
//! the built binary (`cargo bench --bench loadgen --no-run` prints its path).
//!
//! - `load`: traffic tools (echo target, fixed-rate latency, connect rate, idle holder, slow
//!   HTTP clients, probe).
//! - `readers`: the slow-reader load (an endless download and its slow readers, held while the
//!   latency client measures another address).
//! - `iperf`: reads the figures `run.sh` needs out of `iperf3 -J` output.
//! - `report`: medians, ratios and targets from the raw measurements; markdown and JSON.
//! - `soak`: the growth table of a soak run (`run.sh --soak`); markdown, JSON and CSV.
//!
//! Every tool talks to the address it is given, which `run.sh` only ever sets to 127.0.0.1, and
//! every loop is bounded by a count and a deadline. Nothing here asserts a timing: it measures.

#![forbid(unsafe_code)]

mod iperf;
mod load;
mod readers;
mod report;
mod soak;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "loadgen", about = "Load tools and report for bench/run.sh")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// TCP echo server: the local target for latency, connect-rate and idle-client runs.
    Echo {
        #[arg(long)]
        listen: SocketAddr,
        /// Exit after this many seconds whatever happens.
        #[arg(long, default_value_t = 3600)]
        max_secs: u64,
    },
    /// Small requests on one connection at a fixed rate; prints p50/p90/p99/max in microseconds
    /// and the round trips that failed (no answer within 5 s).
    Latency {
        #[arg(long)]
        addr: SocketAddr,
        #[command(flatten)]
        pace: load::Pace,
    },
    /// New connections per second: connect, 1-byte echo, close, from concurrent workers.
    ConnectRate {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Upper bound on connections opened, whatever the duration.
        #[arg(long, default_value_t = 2_000_000)]
        max_total: u64,
    },
    /// Opens COUNT connections (each verified by a 1-byte echo), reports, then holds them idle.
    Hold {
        #[arg(long)]
        addr: SocketAddr,
        #[command(flatten)]
        plan: load::Plan,
    },
    /// Opens COUNT HTTP clients that send part of a request and then nothing (slowloris, or a
    /// head and the start of a body), reports, then holds them.
    Slow {
        #[arg(long)]
        addr: SocketAddr,
        /// Host header of the requests.
        #[arg(long)]
        host: String,
        #[arg(long, value_enum)]
        kind: load::Slowness,
        #[command(flatten)]
        plan: load::Plan,
    },
    /// TCP server that sends every client bytes as fast as it reads them (16 KiB send buffers).
    Endless {
        #[arg(long)]
        listen: SocketAddr,
        /// Exit after this many seconds whatever happens.
        #[arg(long, default_value_t = 3600)]
        max_secs: u64,
    },
    /// Opens COUNT slow readers of the endless download at ADDR (4 KiB receive buffers, 16 B
    /// read a second, spread over several source addresses), then measures the latency
    /// client's round trips to the echo at PROBE while they read; reports, then holds them.
    SlowReaders {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        probe: SocketAddr,
        #[command(flatten)]
        sources: readers::Sources,
        #[command(flatten)]
        plan: load::Plan,
        #[command(flatten)]
        pace: load::Pace,
    },
    /// Short-lived clients at a fixed rate, ending in turn cleanly, by drop, by reset, without
    /// reading, or without sending (the soak's connection churn).
    Churn {
        #[arg(long)]
        addr: SocketAddr,
        /// Clients started per second.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// Most clients open at once; starts beyond it are skipped and counted.
        #[arg(long, default_value_t = 256)]
        max_open: usize,
        /// Longest time a client stays connected after its echo, in milliseconds.
        #[arg(long, default_value_t = 500)]
        max_hold_ms: u64,
    },
    /// Waits until ADDR echoes a byte back (a forwarded path is up); exit 1 on timeout.
    Wait {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 15)]
        timeout_secs: u64,
    },
    /// Prints the first of COUNT consecutive ports free for TCP and UDP on 127.0.0.1.
    FreePorts {
        #[arg(long, default_value_t = 10)]
        count: u16,
    },
    /// Prints `gbps`, `bytes` (and for UDP `loss_pct`) from an `iperf3 -J` output file.
    IperfSummary { file: PathBuf },
    /// Markdown table on stdout and JSON file from the raw measurements of a run.
    Report {
        /// Lines `system<TAB>round<TAB>metric<TAB>value` (value a number or `NA:reason`).
        #[arg(long)]
        raw: PathBuf,
        /// Lines `key<TAB>value` describing the run (machine, versions, command, notes).
        #[arg(long)]
        meta: PathBuf,
        #[arg(long)]
        json_out: PathBuf,
        /// Systems (space-separated) whose every figure must be a number; exits 1 otherwise.
        #[arg(long, value_delimiter = ' ')]
        require: Vec<String>,
        /// Metric keys (space-separated) that `--require` does not ask for.
        #[arg(long, value_delimiter = ' ')]
        allow_missing: Vec<String>,
    },
    /// Growth table of a soak run on stdout; JSON and CSV files.
    SoakReport {
        /// Header `t_secs<TAB>phase<TAB>process<TAB>rss_kib<TAB>fds<TAB>threads<TAB>tasks`, then
        /// one line per process and sample.
        #[arg(long)]
        samples: PathBuf,
        /// Lines `cycle<TAB>step<TAB>key<TAB>value`.
        #[arg(long)]
        load: PathBuf,
        /// Lines `key<TAB>value` describing the run.
        #[arg(long)]
        meta: PathBuf,
        /// Samples before this many seconds are warm-up.
        #[arg(long)]
        warmup_secs: f64,
        #[arg(long)]
        json_out: PathBuf,
        #[arg(long)]
        csv_out: PathBuf,
    },
}

fn main() -> ExitCode {
    // `cargo bench` appends `--bench`; it means nothing to these tools.
    let args = std::env::args_os().filter(|a| a != "--bench");
    let cli = Cli::parse_from(args);
    let Some(command) = cli.command else {
        println!("loadgen: load tools for bench/run.sh; see `loadgen --help`");
        return ExitCode::SUCCESS;
    };
    let result = match command {
        Command::Echo { listen, max_secs } => load::echo(listen, max_secs),
        Command::Latency { addr, pace } => load::latency(addr, pace),
        Command::ConnectRate {
            addr,
            secs,
            concurrency,
            max_total,
        } => load::connect_rate(addr, secs, concurrency, max_total),
        Command::Hold { addr, plan } => load::hold(addr, plan),
        Command::Slow {
            addr,
            host,
            kind,
            plan,
        } => load::slow(addr, host, kind, plan),
        Command::Endless { listen, max_secs } => readers::endless(listen, max_secs),
        Command::SlowReaders {
            addr,
            probe,
            sources,
            plan,
            pace,
        } => readers::slow_readers(addr, probe, sources, plan, pace),
        Command::Churn {
            addr,
            rate,
            secs,
            max_open,
            max_hold_ms,
        } => load::churn(addr, rate, secs, max_open, max_hold_ms),
        Command::Wait { addr, timeout_secs } => load::wait(addr, timeout_secs),
        Command::FreePorts { count } => load::free_ports(count),
        Command::IperfSummary { file } => iperf::summary(&file),
        Command::Report {
            raw,
            meta,
            json_out,
            require,
            allow_missing,
        } => report::run(
            &raw,
            &meta,
            &json_out,
            &report::Require {
                systems: &non_empty(require),
                allow_missing: &non_empty(allow_missing),
            },
        ),
        Command::SoakReport {
            samples,
            load,
            meta,
            warmup_secs,
            json_out,
            csv_out,
        } => soak::run(&samples, &load, &meta, warmup_secs, &json_out, &csv_out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--require ""` and doubled spaces give empty items; they name nothing.
fn non_empty(mut items: Vec<String>) -> Vec<String> {
    items.retain(|s| !s.is_empty());
    items
}
