//! The report of a run: medians over rounds, ratios against rathole and direct, and the verdict
//! on each target of issue 9, as a markdown table on stdout and a JSON file.
//!
//! Input is what `run.sh` wrote while measuring: raw lines `system<TAB>round<TAB>metric<TAB>value`
//! (a value is a number or `NA:reason`) and meta lines `key<TAB>value`. Figures that are sums or
//! quotients of raw values (RSS per idle client, CPU seconds per GiB) are derived per round
//! before the median is taken. Nothing here judges a run as passed or failed: it reports.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde_json::{Value, json};

/// Whether a larger or a smaller figure is the better one.
#[derive(Clone, Copy, PartialEq)]
enum Better {
    Higher,
    Lower,
    Neither,
}

/// One row of the table.
struct Figure {
    key: &'static str,
    label: &'static str,
    decimals: usize,
    better: Better,
    /// The figure of rathole (and direct) that this one is compared with, if not its own key.
    baseline_key: Option<&'static str>,
}

const fn fig(key: &'static str, label: &'static str, decimals: usize, better: Better) -> Figure {
    Figure {
        key,
        label,
        decimals,
        better,
        baseline_key: None,
    }
}

const FIGURES: &[Figure] = &[
    fig(
        "tcp_1_up_gbps",
        "TCP 1 stream, client→target, Gbit/s",
        2,
        Better::Higher,
    ),
    fig(
        "tcp_1_down_gbps",
        "TCP 1 stream, target→client (-R), Gbit/s",
        2,
        Better::Higher,
    ),
    fig(
        "tcp_8_up_gbps",
        "TCP 8 streams, client→target, Gbit/s",
        2,
        Better::Higher,
    ),
    fig(
        "tcp_8_down_gbps",
        "TCP 8 streams, target→client (-R), Gbit/s",
        2,
        Better::Higher,
    ),
    fig(
        "udp_gbps",
        "UDP 1400 B datagrams, 1 Gbit/s offered: received, Gbit/s",
        3,
        Better::Higher,
    ),
    fig(
        "udp_loss_pct",
        "UDP 1400 B datagrams: loss, %",
        2,
        Better::Lower,
    ),
    Figure {
        baseline_key: Some("http_ka_rps"),
        ..fig(
            "httpsvc_ka_rps",
            "HTTP keep-alive via the `http` service, req/s",
            0,
            Better::Higher,
        )
    },
    Figure {
        baseline_key: Some("http_close_rps"),
        ..fig(
            "httpsvc_close_rps",
            "HTTP new conn each via the `http` service, req/s",
            0,
            Better::Higher,
        )
    },
    fig(
        "http_ka_rps",
        "HTTP keep-alive through a tcp proxy, req/s",
        0,
        Better::Higher,
    ),
    fig(
        "http_close_rps",
        "HTTP new conn each through a tcp proxy, req/s",
        0,
        Better::Higher,
    ),
    fig(
        "lat_p50_us",
        "64 B echo at 1,000 req/s, 1 conn: p50, us",
        0,
        Better::Lower,
    ),
    fig(
        "lat_p99_us",
        "64 B echo at 1,000 req/s, 1 conn: p99, us",
        0,
        Better::Lower,
    ),
    fig(
        "slowread_probe_p50_us",
        "64 B echo at 1,000 req/s, 1 conn, under 1,000 slow readers of another proxy: p50, us",
        0,
        Better::Lower,
    ),
    fig(
        "slowread_probe_p99_us",
        "64 B echo at 1,000 req/s, 1 conn, under 1,000 slow readers of another proxy: p99, us",
        0,
        Better::Lower,
    ),
    fig(
        "slowread_probe_failed",
        "64 B echo at 1,000 req/s, 1 conn, under 1,000 slow readers of another proxy: round trips failed (no echo in 5 s)",
        0,
        Better::Lower,
    ),
    fig(
        "connrate_conns_per_s",
        "New TCP connections/s (connect, 1 B echo, close)",
        0,
        Better::Higher,
    ),
    fig("rss_idle_mib", "RSS idle, MiB", 1, Better::Lower),
    fig(
        "rss_idle_anon_mib",
        "RSS idle, anonymous part (heap, stacks), MiB",
        1,
        Better::Lower,
    ),
    fig(
        "pss_idle_mib",
        "PSS idle (pages shared between the processes counted once), MiB",
        1,
        Better::Lower,
    ),
    fig(
        "rss_after_mib",
        "RSS after the traffic runs, MiB",
        1,
        Better::Lower,
    ),
    fig(
        "rss_1k_mib",
        "RSS with 1,000 idle clients, MiB",
        1,
        Better::Lower,
    ),
    fig(
        "per_client_1k_kib",
        "RSS per idle client (1,000), KiB",
        1,
        Better::Lower,
    ),
    fig(
        "rss_10k_mib",
        "RSS with 10,000 idle clients, MiB",
        1,
        Better::Lower,
    ),
    fig(
        "per_client_10k_kib",
        "RSS per idle client (10,000), KiB",
        1,
        Better::Lower,
    ),
    fig(
        "held_10k",
        "idle clients actually held (of 10,000)",
        0,
        Better::Neither,
    ),
    fig(
        "per_client_slowloris_kib",
        "RSS per slowloris client (1,000 holding part of a head), KiB",
        1,
        Better::Lower,
    ),
    fig(
        "per_client_slowbody_kib",
        "RSS per slow-body client (1,000 holding a head and 100 B of a body), KiB",
        1,
        Better::Lower,
    ),
    fig(
        "per_client_slowread_kib",
        "RSS per slow reader (1,000 reading 16 B/s of an endless download), KiB",
        1,
        Better::Lower,
    ),
    fig(
        "cpu_s_per_gib",
        "CPU s per GiB moved (iperf3 TCP runs)",
        2,
        Better::Lower,
    ),
];

/// A measured value: a number, or why there is none.
#[derive(Clone, Debug)]
enum Measure {
    Num(f64),
    Na(String),
}

impl Measure {
    fn parse(text: &str) -> Self {
        match text.strip_prefix("NA:") {
            Some(reason) => Measure::Na(reason.to_string()),
            None => text
                .parse()
                .map(Measure::Num)
                .unwrap_or_else(|_| Measure::Na(format!("unreadable value {text:?}"))),
        }
    }

    fn num(&self) -> Option<f64> {
        match self {
            Measure::Num(v) => Some(*v),
            Measure::Na(_) => None,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Measure::Num(v) => json!(v),
            Measure::Na(reason) => json!({ "na": reason }),
        }
    }
}

/// system -> round -> metric -> value
type Raw = BTreeMap<String, BTreeMap<u32, BTreeMap<String, Measure>>>;
/// system -> metric -> median
type Medians = BTreeMap<String, BTreeMap<String, Measure>>;

const TUNNELIZE: &str = "tunnelize";
const RATHOLE: &str = "rathole";
const DIRECT: &str = "direct";

/// What `run` checks after it has reported (`run.sh --smoke`): that the harness produced a
/// figure for every row of these systems.
pub struct Require<'a> {
    /// Systems whose every figure must be a number (`direct` has no processes of its own, so
    /// its RSS, idle-client and CPU rows are not asked of it).
    pub systems: &'a [String],
    /// Metric keys not asked for in this run (the smoke run holds no 10,000 idle clients).
    pub allow_missing: &'a [String],
}

/// Reads the raw and meta files, prints the markdown report, writes the JSON report. Then, if
/// `require` names systems, fails when one of their figures is missing, not a number, zero
/// where higher is better, or when a wrk run saw non-2xx answers: the harness is broken.
pub fn run(
    raw_path: &Path,
    meta_path: &Path,
    json_out: &Path,
    require: &Require<'_>,
) -> io::Result<()> {
    let meta = read_meta(&std::fs::read_to_string(meta_path)?);
    let mut raw = read_raw(&std::fs::read_to_string(raw_path)?)?;
    for rounds in raw.values_mut() {
        for values in rounds.values_mut() {
            derive(values);
        }
    }
    let systems: Vec<String> = meta
        .iter()
        .find(|(k, _)| k == "systems")
        .map(|(_, v)| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_else(|| raw.keys().cloned().collect());
    let medians = medians(&raw);
    let targets = targets(&medians);
    print!("{}", markdown(&meta, &systems, &medians, &targets));
    let json = to_json(&meta, &systems, &raw, &medians, &targets);
    let text = serde_json::to_string_pretty(&json).map_err(io::Error::other)?;
    std::fs::write(json_out, text + "\n")?;
    let missing = missing_figures(&medians, require);
    if missing.is_empty() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "the run is missing {} figure(s): {}",
        missing.len(),
        missing.join("; ")
    )))
}

/// Whether `system` is expected to have the figure `key`: direct runs no processes, so it has
/// no RSS, idle-client or CPU figures.
fn applies(system: &str, key: &str) -> bool {
    system != DIRECT
        || !["rss_", "pss_", "per_client_", "held_", "cpu_"]
            .iter()
            .any(|p| key.starts_with(p))
}

/// The figures `require` asks for that this run does not have, as `system: key (why)`.
fn missing_figures(medians: &Medians, require: &Require<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for system in require.systems {
        let values = medians.get(system.as_str());
        for figure in FIGURES {
            if !applies(system, figure.key) || require.allow_missing.iter().any(|k| k == figure.key)
            {
                continue;
            }
            let why = match values.and_then(|v| v.get(figure.key)) {
                None => Some("not recorded".to_string()),
                Some(Measure::Na(reason)) => Some(reason.clone()),
                Some(Measure::Num(v)) if figure.better == Better::Higher && *v <= 0.0 => {
                    Some(format!("{v}, not above zero"))
                }
                Some(Measure::Num(v)) if !v.is_finite() || *v < 0.0 => Some(format!("{v}")),
                Some(Measure::Num(_)) => None,
            };
            if let Some(why) = why {
                out.push(format!("{system}: {} ({why})", figure.key));
            }
        }
        for run in ["http_ka", "http_close", "httpsvc_ka", "httpsvc_close"] {
            let key = format!("{run}_non2xx");
            if let Some(n) = values.and_then(|v| v.get(&key)).and_then(Measure::num)
                && n > 0.0
            {
                out.push(format!("{system}: {key} ({n} answers were not 2xx)"));
            }
        }
    }
    out
}

fn read_meta(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn read_raw(text: &str) -> io::Result<Raw> {
    let mut raw = Raw::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let parts: Vec<&str> = line.splitn(4, '\t').collect();
        let [system, round, metric, value] = parts[..] else {
            return Err(io::Error::other(format!("raw line {}: {line:?}", n + 1)));
        };
        let round: u32 = round
            .parse()
            .map_err(|_| io::Error::other(format!("raw line {}: round {round:?}", n + 1)))?;
        raw.entry(system.to_string())
            .or_default()
            .entry(round)
            .or_default()
            .insert(metric.to_string(), Measure::parse(value));
    }
    Ok(raw)
}

/// Adds the figures computed from several raw values of one round.
fn derive(values: &mut BTreeMap<String, Measure>) {
    let get = |values: &BTreeMap<String, Measure>, k: &str| values.get(k).and_then(Measure::num);
    for (kib, mib) in [
        ("rss_idle_kib", "rss_idle_mib"),
        ("rss_idle_anon_kib", "rss_idle_anon_mib"),
        ("rss_idle_pss_kib", "pss_idle_mib"),
        ("rss_after_kib", "rss_after_mib"),
        ("rss_1k_kib", "rss_1k_mib"),
        ("rss_10k_kib", "rss_10k_mib"),
    ] {
        if let Some(v) = get(values, kib) {
            values.insert(mib.into(), Measure::Num(v / 1024.0));
        }
    }
    for n in ["1k", "10k", "slowloris", "slowbody", "slowread"] {
        let with = get(values, &format!("rss_{n}_kib"));
        let base = get(values, &format!("rss_base_{n}_kib"));
        let held = get(values, &format!("held_{n}"));
        if let (Some(with), Some(base), Some(held)) = (with, base, held)
            && held > 0.0
        {
            let per = (with - base) / held;
            values.insert(format!("per_client_{n}_kib"), Measure::Num(per));
        }
    }
    let runs = ["tcp_1_up", "tcp_1_down", "tcp_8_up", "tcp_8_down"];
    let cpu: Option<f64> = runs
        .iter()
        .map(|r| get(values, &format!("cpu_s_{r}")))
        .sum();
    let bytes: Option<f64> = runs
        .iter()
        .map(|r| get(values, &format!("bytes_{r}")))
        .sum();
    if let (Some(cpu), Some(bytes)) = (cpu, bytes)
        && bytes > 0.0
    {
        let gib = bytes / (1u64 << 30) as f64;
        values.insert("cpu_s_per_gib".into(), Measure::Num(cpu / gib));
    }
}

fn medians(raw: &Raw) -> Medians {
    let mut out = Medians::new();
    for (system, rounds) in raw {
        let mut by_metric: BTreeMap<&str, Vec<&Measure>> = BTreeMap::new();
        for values in rounds.values() {
            for (metric, m) in values {
                by_metric.entry(metric).or_default().push(m);
            }
        }
        let system_out = out.entry(system.clone()).or_default();
        for (metric, measures) in by_metric {
            let mut nums: Vec<f64> = measures.iter().filter_map(|m| m.num()).collect();
            let median = if nums.is_empty() {
                measures[0].clone()
            } else {
                nums.sort_by(f64::total_cmp);
                let mid = nums.len() / 2;
                Measure::Num(if nums.len() % 2 == 1 {
                    nums[mid]
                } else {
                    (nums[mid - 1] + nums[mid]) / 2.0
                })
            };
            system_out.insert(metric.to_string(), median);
        }
    }
    out
}

fn median_of(medians: &Medians, system: &str, key: &str) -> Option<f64> {
    medians.get(system)?.get(key)?.num()
}

/// `tunnelize / system` for `figure`, comparing with the baseline's own figure where the row
/// has one (the `http` service is compared with rathole's TCP forward of the same server).
fn ratio(medians: &Medians, figure: &Figure, system: &str) -> Option<f64> {
    let ours = median_of(medians, TUNNELIZE, figure.key)?;
    let theirs = median_of(medians, system, figure.key)
        .or_else(|| median_of(medians, system, figure.baseline_key?))?;
    (theirs != 0.0).then(|| ours / theirs)
}

/// One target of issue 9 and how this run did against it.
struct Target {
    name: String,
    measured: String,
    required: String,
    met: Option<bool>,
}

fn targets(m: &Medians) -> Vec<Target> {
    let mut out = Vec::new();
    let ratio_target = |name: &str, ours: Option<f64>, theirs: Option<f64>, need: f64| {
        let r = ours.zip(theirs).map(|(a, b)| a / b);
        Target {
            name: name.to_string(),
            measured: r.map_or("n/a".into(), |r| format!("{r:.2}x rathole")),
            required: format!(">= {need:.1}x"),
            met: r.map(|r| r >= need),
        }
    };
    for (key, what) in [
        ("tcp_1_up_gbps", "1 stream up"),
        ("tcp_1_down_gbps", "1 stream down"),
        ("tcp_8_up_gbps", "8 streams up"),
        ("tcp_8_down_gbps", "8 streams down"),
    ] {
        let (ours, theirs) = (median_of(m, TUNNELIZE, key), median_of(m, RATHOLE, key));
        out.push(ratio_target(
            &format!("TCP throughput, {what}"),
            ours,
            theirs,
            1.3,
        ));
    }
    let rathole_http = median_of(m, RATHOLE, "http_ka_rps");
    match median_of(m, TUNNELIZE, "httpsvc_ka_rps") {
        Some(ours) => out.push(ratio_target(
            "HTTP keep-alive req/s via the `http` service",
            Some(ours),
            rathole_http,
            1.3,
        )),
        None => out.push(ratio_target(
            "HTTP keep-alive req/s (tcp proxy; `http` service n/a)",
            median_of(m, TUNNELIZE, "http_ka_rps"),
            rathole_http,
            1.3,
        )),
    }
    out.push(ratio_target(
        "New connections per second",
        median_of(m, TUNNELIZE, "connrate_conns_per_s"),
        median_of(m, RATHOLE, "connrate_conns_per_s"),
        2.0,
    ));
    let added = |system: &str| {
        Some(median_of(m, system, "lat_p50_us")? - median_of(m, DIRECT, "lat_p50_us")?)
    };
    let (ours, theirs) = (added(TUNNELIZE), added(RATHOLE));
    out.push(Target {
        name: "Added p50 latency over direct".into(),
        measured: ours.map_or("n/a".into(), |v| format!("+{v:.0} us")),
        required: theirs.map_or("n/a".into(), |v| format!("<= +{v:.0} us (rathole)")),
        met: ours.zip(theirs).map(|(a, b)| a <= b),
    });
    let limit = |name: &str, key: &str, unit: &str, max: f64| {
        let v = median_of(m, TUNNELIZE, key);
        Target {
            name: name.into(),
            measured: v.map_or("n/a".into(), |v| format!("{v:.1} {unit}")),
            required: format!("<= {max} {unit}"),
            met: v.map(|v| v <= max),
        }
    };
    out.push(limit("Hub+tunnel RSS idle", "rss_idle_mib", "MiB", 12.0));
    out.push(limit(
        "RSS per idle client, 1,000 held",
        "per_client_1k_kib",
        "KiB",
        16.0,
    ));
    out.push(limit(
        "RSS per idle client, 10,000 held",
        "per_client_10k_kib",
        "KiB",
        16.0,
    ));
    out.push(limit(
        "RSS per slowloris client, 1,000 held",
        "per_client_slowloris_kib",
        "KiB",
        16.0,
    ));
    out.push(limit(
        "RSS per slow-body client, 1,000 held",
        "per_client_slowbody_kib",
        "KiB",
        16.0,
    ));
    let (ours, theirs) = (
        median_of(m, TUNNELIZE, "cpu_s_per_gib"),
        median_of(m, RATHOLE, "cpu_s_per_gib"),
    );
    out.push(Target {
        name: "CPU per GiB moved".into(),
        measured: ours.map_or("n/a".into(), |v| format!("{v:.2} s/GiB")),
        required: theirs.map_or("n/a".into(), |v| format!("<= {v:.2} s/GiB (rathole)")),
        met: ours.zip(theirs).map(|(a, b)| a <= b),
    });
    out
}

fn cell(measure: Option<&Measure>, decimals: usize) -> String {
    match measure {
        None => "–".into(),
        Some(Measure::Num(v)) => group_thousands(&format!("{v:.decimals$}")),
        Some(Measure::Na(reason)) => format!("n/a ({reason})"),
    }
}

/// `12345.6` -> `12,345.6`
fn group_thousands(number: &str) -> String {
    let (sign, rest) = number.strip_prefix('-').map_or(("", number), |r| ("-", r));
    let (int, frac) = rest
        .split_once('.')
        .map_or((rest, None), |(i, f)| (i, Some(f)));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

fn markdown(
    meta: &[(String, String)],
    systems: &[String],
    medians: &Medians,
    targets: &[Target],
) -> String {
    let mut s = String::new();
    s.push_str("## Run\n\n");
    for (k, v) in meta.iter().filter(|(k, _)| !k.starts_with("note")) {
        s.push_str(&format!("- {k}: {v}\n"));
    }
    s.push_str("\n## Figures (medians over rounds)\n\n| figure |");
    for system in systems {
        s.push_str(&format!(" {system} |"));
    }
    s.push_str(" tunnelize/rathole | tunnelize/direct | better |\n|---|");
    s.push_str(&"---:|".repeat(systems.len() + 2));
    s.push_str("---|\n");
    for figure in FIGURES {
        s.push_str(&format!("| {} |", figure.label));
        for system in systems {
            let m = medians.get(system).and_then(|m| m.get(figure.key));
            s.push_str(&format!(" {} |", cell(m, figure.decimals)));
        }
        for system in [RATHOLE, DIRECT] {
            let r = ratio(medians, figure, system).filter(|_| figure.better != Better::Neither);
            s.push_str(&r.map_or(" – |".into(), |r| format!(" {r:.2}x |")));
        }
        s.push_str(match figure.better {
            Better::Higher => " higher |\n",
            Better::Lower => " lower |\n",
            Better::Neither => " – |\n",
        });
    }
    s.push_str("\n## Targets of issue 9 (tunnelize, TLS on; rathole = plain TCP transport)\n\n");
    s.push_str("| target | measured | required | met |\n|---|---:|---:|---|\n");
    for t in targets {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "n/a",
        };
        s.push_str(&format!(
            "| {} | {} | {} | {met} |\n",
            t.name, t.measured, t.required
        ));
    }
    let notes: Vec<&String> = meta
        .iter()
        .filter(|(k, _)| k.starts_with("note"))
        .map(|(_, v)| v)
        .collect();
    if !notes.is_empty() {
        s.push_str("\nNotes:\n");
        for note in notes {
            s.push_str(&format!("- {note}\n"));
        }
    }
    s
}

fn to_json(
    meta: &[(String, String)],
    systems: &[String],
    raw: &Raw,
    medians: &Medians,
    targets: &[Target],
) -> Value {
    let meta_json: serde_json::Map<String, Value> = meta
        .iter()
        .filter(|(k, _)| !k.starts_with("note"))
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let notes: Vec<&String> = meta
        .iter()
        .filter(|(k, _)| k.starts_with("note"))
        .map(|(_, v)| v)
        .collect();
    let measures = |values: &BTreeMap<String, Measure>| -> Value {
        values
            .iter()
            .map(|(k, m)| (k.clone(), m.to_json()))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let rounds: serde_json::Map<String, Value> = raw
        .iter()
        .map(|(system, rounds)| {
            let list: Vec<Value> = rounds.values().map(measures).collect();
            (system.clone(), Value::Array(list))
        })
        .collect();
    let medians_json: serde_json::Map<String, Value> = medians
        .iter()
        .map(|(system, values)| (system.clone(), measures(values)))
        .collect();
    let ratios: serde_json::Map<String, Value> = FIGURES
        .iter()
        .map(|f| {
            let r = |s| ratio(medians, f, s).map_or(Value::Null, |r| json!(r));
            let value = json!({
                "tunnelize_over_rathole": r(RATHOLE),
                "tunnelize_over_direct": r(DIRECT),
            });
            (f.key.to_string(), value)
        })
        .collect();
    let targets_json: Vec<Value> = targets
        .iter()
        .map(|t| json!({ "target": t.name, "measured": t.measured, "required": t.required, "met": t.met }))
        .collect();
    json!({
        "meta": meta_json,
        "notes": notes,
        "systems": systems,
        "rounds": rounds,
        "medians": medians_json,
        "ratios": ratios,
        "targets": targets_json,
    })
}

// The bench target has `harness = false`, so these run from `tests/it/bench_report.rs`, which
// includes this file as a module. `cargo clippy --all-targets` also compiles them into the
// bench target, without its test functions, where the helpers look unused.
#[cfg(test)]
#[allow(dead_code)]
mod tests {
    use super::*;

    fn raw_of(lines: &[&str]) -> Raw {
        read_raw(&lines.join("\n")).expect("well-formed raw lines")
    }

    /// A run where every figure of `systems` is 1.0 in every one of `rounds`.
    fn complete_medians(systems: &[&str]) -> Medians {
        let mut m = Medians::new();
        for system in systems {
            let values = m.entry(system.to_string()).or_default();
            for figure in FIGURES.iter().filter(|f| applies(system, f.key)) {
                values.insert(figure.key.to_string(), Measure::Num(1.0));
            }
        }
        m
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_median_is_the_middle_round_or_the_mean_of_the_two_middle_ones() {
        let m = medians(&raw_of(&[
            "tunnelize\t1\todd\t3",
            "tunnelize\t2\todd\t1",
            "tunnelize\t3\todd\t20",
            "tunnelize\t1\teven\t1",
            "tunnelize\t2\teven\t4",
        ]));
        assert_eq!(median_of(&m, "tunnelize", "odd"), Some(3.0));
        assert_eq!(median_of(&m, "tunnelize", "even"), Some(2.5));
    }

    #[test]
    fn rounds_without_a_number_are_left_out_and_a_figure_with_none_keeps_its_reason() {
        let m = medians(&raw_of(&[
            "rathole\t1\tsome\tNA:timed out",
            "rathole\t2\tsome\t7",
            "rathole\t1\tnone\tNA:process exited",
            "rathole\t2\tnone\tNA:process exited",
            "rathole\t1\tgarbage\t12abc",
        ]));
        assert_eq!(median_of(&m, "rathole", "some"), Some(7.0));
        match m["rathole"].get("none") {
            Some(Measure::Na(reason)) => assert_eq!(reason, "process exited"),
            other => panic!("expected NA, got {other:?}"),
        }
        match m["rathole"].get("garbage") {
            Some(Measure::Na(reason)) => assert!(reason.contains("12abc"), "{reason}"),
            other => panic!("expected NA, got {other:?}"),
        }
    }

    #[test]
    fn a_malformed_raw_line_is_an_error_naming_its_line() {
        let err = read_raw("tunnelize\t1\tok\t1\n\ntunnelize\t1\n").unwrap_err();
        assert!(err.to_string().contains("raw line 3"), "{err}");
        let err = read_raw("tunnelize\tfirst\tok\t1\n").unwrap_err();
        assert!(err.to_string().contains("round \"first\""), "{err}");
    }

    #[test]
    fn per_client_memory_and_cpu_per_gib_are_derived_from_one_rounds_values() {
        let mut values = raw_of(&[
            "tunnelize\t1\trss_idle_kib\t2048",
            "tunnelize\t1\trss_base_1k_kib\t10240",
            "tunnelize\t1\trss_1k_kib\t18432",
            "tunnelize\t1\theld_1k\t1024",
            "tunnelize\t1\trss_base_10k_kib\t10240",
            "tunnelize\t1\trss_10k_kib\t90000",
            "tunnelize\t1\theld_10k\t0",
            "tunnelize\t1\trss_base_slowbody_kib\t10240",
            "tunnelize\t1\trss_slowbody_kib\t24576",
            "tunnelize\t1\theld_slowbody\t1024",
            "tunnelize\t1\trss_base_slowread_kib\t10240",
            "tunnelize\t1\trss_slowread_kib\t266240",
            "tunnelize\t1\theld_slowread\t1000",
            "tunnelize\t1\tcpu_s_tcp_1_up\t1",
            "tunnelize\t1\tcpu_s_tcp_1_down\t1",
            "tunnelize\t1\tcpu_s_tcp_8_up\t1",
            "tunnelize\t1\tcpu_s_tcp_8_down\t3",
            "tunnelize\t1\tbytes_tcp_1_up\t1073741824",
            "tunnelize\t1\tbytes_tcp_1_down\t0",
            "tunnelize\t1\tbytes_tcp_8_up\t1073741824",
            "tunnelize\t1\tbytes_tcp_8_down\t0",
        ])["tunnelize"][&1]
            .clone();
        derive(&mut values);
        let get = |k: &str| values.get(k).and_then(Measure::num);
        assert_eq!(get("rss_idle_mib"), Some(2.0));
        assert_eq!(get("per_client_1k_kib"), Some(8.0));
        // No client held: no per-client figure rather than a division by zero.
        assert_eq!(get("per_client_10k_kib"), None);
        assert_eq!(get("per_client_slowbody_kib"), Some(14.0));
        assert_eq!(get("per_client_slowread_kib"), Some(256.0));
        assert_eq!(get("cpu_s_per_gib"), Some(3.0));
    }

    #[test]
    fn the_probe_under_slow_readers_sits_beside_the_latency_it_repeats_and_direct_has_it_too() {
        let at = |key: &str| FIGURES.iter().position(|f| f.key == key).expect(key);
        assert_eq!(at("slowread_probe_p50_us"), at("lat_p99_us") + 1);
        assert_eq!(at("slowread_probe_p99_us"), at("lat_p99_us") + 2);
        assert_eq!(at("slowread_probe_failed"), at("lat_p99_us") + 3);
        for key in [
            "slowread_probe_p50_us",
            "slowread_probe_p99_us",
            "slowread_probe_failed",
        ] {
            assert!(applies(DIRECT, key), "{key}");
        }
        assert!(!applies(DIRECT, "per_client_slowread_kib"));
    }

    #[test]
    fn cpu_per_gib_needs_all_four_runs() {
        let mut values = raw_of(&[
            "rathole\t1\tcpu_s_tcp_1_up\t1",
            "rathole\t1\tbytes_tcp_1_up\t1073741824",
        ])["rathole"][&1]
            .clone();
        derive(&mut values);
        assert!(!values.contains_key("cpu_s_per_gib"));
    }

    #[test]
    fn a_complete_run_is_missing_nothing_and_direct_is_not_asked_for_process_figures() {
        let m = complete_medians(&["direct", "tunnelize"]);
        assert!(!m["direct"].contains_key("rss_idle_mib"));
        let systems = strings(&["direct", "tunnelize"]);
        let require = Require {
            systems: &systems,
            allow_missing: &[],
        };
        assert_eq!(missing_figures(&m, &require), Vec::<String>::new());
    }

    #[test]
    fn each_missing_unreadable_zero_or_non_2xx_figure_is_named() {
        let mut m = complete_medians(&["direct", "tunnelize"]);
        let t = m.get_mut("tunnelize").expect("tunnelize");
        t.remove("udp_gbps");
        t.insert("rss_10k_mib".into(), Measure::Na("holder exited".into()));
        t.insert("connrate_conns_per_s".into(), Measure::Num(0.0));
        // Zero is a fine figure where lower is better.
        t.insert("udp_loss_pct".into(), Measure::Num(0.0));
        t.insert("httpsvc_close_non2xx".into(), Measure::Num(3.0));
        t.insert("http_ka_non2xx".into(), Measure::Num(0.0));
        m.get_mut("direct")
            .expect("direct")
            .insert("lat_p50_us".into(), Measure::Num(f64::NAN));
        let systems = strings(&["direct", "tunnelize"]);
        let require = Require {
            systems: &systems,
            allow_missing: &[],
        };
        let missing = missing_figures(&m, &require);
        assert_eq!(
            missing,
            strings(&[
                "direct: lat_p50_us (NaN)",
                "tunnelize: udp_gbps (not recorded)",
                "tunnelize: connrate_conns_per_s (0, not above zero)",
                "tunnelize: rss_10k_mib (holder exited)",
                "tunnelize: httpsvc_close_non2xx (3 answers were not 2xx)",
            ]),
        );
        let allowed = strings(&["rss_10k_mib", "udp_gbps"]);
        let require = Require {
            systems: &systems,
            allow_missing: &allowed,
        };
        assert_eq!(missing_figures(&m, &require).len(), 3);
    }

    #[test]
    fn a_system_not_in_the_run_is_missing_every_figure() {
        let m = complete_medians(&["tunnelize"]);
        let systems = strings(&["direct"]);
        let require = Require {
            systems: &systems,
            allow_missing: &[],
        };
        let missing = missing_figures(&m, &require);
        assert!(missing.contains(&"direct: tcp_1_up_gbps (not recorded)".to_string()));
        let asked = FIGURES.iter().filter(|f| applies("direct", f.key)).count();
        assert_eq!(missing.len(), asked);
    }

    fn verdict<'a>(targets: &'a [Target], name: &str) -> &'a Target {
        targets
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no target {name:?}"))
    }

    #[test]
    fn targets_compare_tunnelize_with_plain_rathole_and_the_fixed_limits() {
        let mut m = Medians::new();
        let mut set = |system: &str, key: &str, v: f64| {
            m.entry(system.to_string())
                .or_default()
                .insert(key.to_string(), Measure::Num(v));
        };
        set("tunnelize", "tcp_1_up_gbps", 13.0);
        set("rathole", "tcp_1_up_gbps", 10.0);
        set("tunnelize", "tcp_8_up_gbps", 12.0);
        set("rathole", "tcp_8_up_gbps", 10.0);
        set("tunnelize", "httpsvc_ka_rps", 9_000.0);
        set("tunnelize", "http_ka_rps", 20_000.0);
        set("rathole", "http_ka_rps", 10_000.0);
        set("tunnelize", "connrate_conns_per_s", 19_999.0);
        set("rathole", "connrate_conns_per_s", 10_000.0);
        set("direct", "lat_p50_us", 50.0);
        set("tunnelize", "lat_p50_us", 150.0);
        set("rathole", "lat_p50_us", 150.0);
        set("tunnelize", "rss_idle_mib", 12.0);
        set("tunnelize", "per_client_1k_kib", 16.5);
        set("tunnelize", "cpu_s_per_gib", 2.0);
        set("rathole", "cpu_s_per_gib", 1.5);
        let t = targets(&m);
        let up = verdict(&t, "TCP throughput, 1 stream up");
        assert_eq!(
            (up.met, up.measured.as_str()),
            (Some(true), "1.30x rathole")
        );
        assert_eq!(verdict(&t, "TCP throughput, 8 streams up").met, Some(false));
        // A figure rathole lacks is no verdict at all, not a pass.
        assert_eq!(verdict(&t, "TCP throughput, 1 stream down").met, None);
        // The `http` service is judged, not the faster tcp proxy.
        let http = verdict(&t, "HTTP keep-alive req/s via the `http` service");
        assert_eq!(
            (http.met, http.measured.as_str()),
            (Some(false), "0.90x rathole")
        );
        assert_eq!(verdict(&t, "New connections per second").met, Some(false));
        let lat = verdict(&t, "Added p50 latency over direct");
        assert_eq!((lat.met, lat.measured.as_str()), (Some(true), "+100 us"));
        assert_eq!(verdict(&t, "Hub+tunnel RSS idle").met, Some(true));
        assert_eq!(
            verdict(&t, "RSS per idle client, 1,000 held").met,
            Some(false)
        );
        assert_eq!(verdict(&t, "RSS per idle client, 10,000 held").met, None);
        assert_eq!(verdict(&t, "CPU per GiB moved").met, Some(false));
    }

    #[test]
    fn the_http_target_falls_back_to_the_tcp_proxy_when_the_service_was_not_measured() {
        let m = medians(&raw_of(&[
            "tunnelize\t1\thttp_ka_rps\t14000",
            "rathole\t1\thttp_ka_rps\t10000",
        ]));
        let t = targets(&m);
        let http = verdict(&t, "HTTP keep-alive req/s (tcp proxy; `http` service n/a)");
        assert_eq!(http.met, Some(true));
    }

    #[test]
    fn thousands_are_grouped_in_the_integer_part_only() {
        assert_eq!(group_thousands("12345.678"), "12,345.678");
        assert_eq!(group_thousands("-1234567"), "-1,234,567");
        assert_eq!(group_thousands("999"), "999");
        assert_eq!(group_thousands("100000"), "100,000");
    }

    #[test]
    fn the_report_writes_json_and_fails_only_when_a_required_figure_is_missing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let raw = dir.path().join("raw.tsv");
        let meta = dir.path().join("meta.tsv");
        let json_out = dir.path().join("out.json");
        let mut lines = String::new();
        for system in ["direct", "tunnelize"] {
            for figure in FIGURES.iter().filter(|f| applies(system, f.key)) {
                lines.push_str(&format!("{system}\t1\t{}\t2\n", figure.key));
            }
        }
        std::fs::write(&raw, &lines).expect("write raw");
        std::fs::write(&meta, "systems\tdirect tunnelize\nnote1\tan example\n").expect("meta");
        let systems = strings(&["direct", "tunnelize"]);
        let require = Require {
            systems: &systems,
            allow_missing: &[],
        };
        run(&raw, &meta, &json_out, &require).expect("a complete run passes");
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(&json_out).expect("json written"))
                .expect("valid json");
        assert_eq!(json["systems"], json!(["direct", "tunnelize"]));
        assert_eq!(json["medians"]["tunnelize"]["tcp_1_up_gbps"], json!(2.0));
        assert_eq!(json["notes"], json!(["an example"]));

        std::fs::write(
            &raw,
            lines.replace(
                "tunnelize\t1\tudp_gbps\t2",
                "tunnelize\t1\tudp_gbps\tNA:iperf3 failed",
            ),
        )
        .expect("write raw");
        let err = run(&raw, &meta, &json_out, &require).expect_err("a figure is missing");
        assert!(
            err.to_string()
                .contains("1 figure(s): tunnelize: udp_gbps (iperf3 failed)"),
            "{err}"
        );
    }
}
