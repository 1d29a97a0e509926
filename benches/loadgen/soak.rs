//! The report of a soak run (`bench/run.sh --soak`): whether memory, file descriptors, threads
//! and tokio tasks of the hub and the tunnel grew over the run, and what load they carried.
//!
//! Input is what `run.sh` wrote while the load ran:
//!
//! - samples, a header line then `t_secs<TAB>phase<TAB>process<TAB>rss_kib<TAB>fds<TAB>threads<TAB>tasks`
//!   (phase `start` before any load, `load` in the quiet tail of each 30 s load cycle, `idle`
//!   once the load has stopped and idle timeouts have passed; a figure that could not be read
//!   is `NA`);
//! - load, lines `cycle<TAB>step<TAB>key<TAB>value` (a step that failed has key `error`);
//! - meta, lines `key<TAB>value`.
//!
//! A figure is "flat" when its last `load` sample exceeds its first `load` sample after the
//! warm-up by no more than the tolerance. It reports; it does not fail.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::Path;

use serde_json::{Value, json};

/// One figure sampled per process.
struct Gauge {
    column: &'static str,
    label: &'static str,
    /// Shown as value / scale.
    scale: f64,
    decimals: usize,
    tolerance: Tolerance,
    /// Whether growth is also shown as a percentage.
    percent: bool,
}

#[derive(Clone, Copy)]
enum Tolerance {
    /// Growth up to this fraction of the value after the warm-up.
    Fraction(f64),
    /// Growth up to this many units.
    Units(f64),
}

impl Tolerance {
    fn allows(self, first: f64, growth: f64) -> bool {
        match self {
            Tolerance::Fraction(f) => growth <= first * f,
            Tolerance::Units(n) => growth <= n,
        }
    }

    fn describe(self) -> String {
        match self {
            Tolerance::Fraction(f) => format!("+{:.0}%", f * 100.0),
            Tolerance::Units(n) => format!("+{n:.0}"),
        }
    }
}

const GAUGES: &[Gauge] = &[
    Gauge {
        column: "rss_kib",
        label: "RSS (VmRSS), MiB",
        scale: 1024.0,
        decimals: 1,
        tolerance: Tolerance::Fraction(0.10),
        percent: true,
    },
    Gauge {
        column: "fds",
        label: "open fds (/proc/PID/fd)",
        scale: 1.0,
        decimals: 0,
        tolerance: Tolerance::Units(5.0),
        percent: false,
    },
    Gauge {
        column: "threads",
        label: "threads",
        scale: 1.0,
        decimals: 0,
        tolerance: Tolerance::Units(4.0),
        percent: false,
    },
    Gauge {
        column: "tasks",
        label: "tokio tasks (tunnelize_tasks)",
        scale: 1.0,
        decimals: 0,
        tolerance: Tolerance::Units(10.0),
        percent: true,
    },
];

/// One sample line.
struct Sample {
    t: f64,
    phase: String,
    process: String,
    values: BTreeMap<String, Option<f64>>,
}

/// One row of the verdict table.
struct Row {
    process: String,
    gauge: &'static Gauge,
    start: Option<(f64, f64)>,
    first: Option<(f64, f64)>,
    last: Option<(f64, f64)>,
    max: Option<f64>,
    idle: Option<(f64, f64)>,
}

impl Row {
    fn growth(&self) -> Option<f64> {
        Some(self.last?.1 - self.first?.1)
    }

    /// The idle sample after the load less the idle sample before it.
    fn idle_change(&self) -> Option<f64> {
        Some(self.idle?.1 - self.start?.1)
    }

    fn flat(&self) -> Option<bool> {
        let growth = self.growth()?;
        Some(self.gauge.tolerance.allows(self.first?.1, growth))
    }
}

/// Reads the three files, prints the markdown report, writes the JSON and the samples as CSV.
pub fn run(
    samples_path: &Path,
    load_path: &Path,
    meta_path: &Path,
    warmup_secs: f64,
    json_out: &Path,
    csv_out: &Path,
) -> io::Result<()> {
    let samples = read_samples(&std::fs::read_to_string(samples_path)?)?;
    let load = read_load(&std::fs::read_to_string(load_path)?)?;
    let meta: Vec<(String, String)> = std::fs::read_to_string(meta_path)?
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let rows = rows(&samples, warmup_secs);
    let steps = load_summary(&load);
    print!("{}", markdown(&meta, warmup_secs, &rows, &steps));
    let json = json!({
        "meta": meta.iter().map(|(k, v)| json!({ "key": k, "value": v })).collect::<Vec<_>>(),
        "warmup_secs": warmup_secs,
        "rows": rows.iter().map(row_json).collect::<Vec<_>>(),
        "load": steps.iter().map(|s| json!({
            "step": s.step, "label": s.label, "runs": s.runs, "failed_runs": s.failed,
            "summary": s.summary, "errors": s.errors,
        })).collect::<Vec<_>>(),
        "samples": samples.iter().map(|s| {
            let mut o = serde_json::Map::new();
            o.insert("t_secs".into(), json!(s.t));
            o.insert("phase".into(), json!(s.phase));
            o.insert("process".into(), json!(s.process));
            for (k, v) in &s.values {
                o.insert(k.clone(), v.map_or(Value::Null, |v| json!(v)));
            }
            Value::Object(o)
        }).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&json).map_err(io::Error::other)?;
    std::fs::write(json_out, text + "\n")?;
    std::fs::write(csv_out, csv(&samples))
}

fn read_samples(text: &str) -> io::Result<Vec<Sample>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| io::Error::other("samples: empty file"))?
        .split('\t')
        .collect();
    if header.len() < 4 || header[..3] != ["t_secs", "phase", "process"] {
        return Err(io::Error::other(format!("samples: header {header:?}")));
    }
    let mut out = Vec::new();
    for (n, line) in lines.enumerate() {
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != header.len() {
            return Err(io::Error::other(format!(
                "samples line {}: {line:?}",
                n + 2
            )));
        }
        let t: f64 = fields[0].parse().map_err(|_| {
            io::Error::other(format!("samples line {}: time {:?}", n + 2, fields[0]))
        })?;
        let values = header[3..]
            .iter()
            .zip(&fields[3..])
            .map(|(k, v)| (k.to_string(), v.parse::<f64>().ok()))
            .collect();
        out.push(Sample {
            t,
            phase: fields[1].to_string(),
            process: fields[2].to_string(),
            values,
        });
    }
    Ok(out)
}

/// (cycle, step, key, value)
type LoadLine = (u32, String, String, String);

fn read_load(text: &str) -> io::Result<Vec<LoadLine>> {
    let mut out = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let parts: Vec<&str> = line.splitn(4, '\t').collect();
        let [cycle, step, key, value] = parts[..] else {
            return Err(io::Error::other(format!("load line {}: {line:?}", n + 1)));
        };
        let cycle = cycle
            .parse()
            .map_err(|_| io::Error::other(format!("load line {}: cycle {cycle:?}", n + 1)))?;
        out.push((cycle, step.into(), key.into(), value.into()));
    }
    Ok(out)
}

fn rows(samples: &[Sample], warmup_secs: f64) -> Vec<Row> {
    let mut processes: Vec<&str> = Vec::new();
    for s in samples {
        if !processes.contains(&s.process.as_str()) {
            processes.push(&s.process);
        }
    }
    let mut rows = Vec::new();
    for process in processes {
        for gauge in GAUGES {
            let series = |phase: Option<&str>| -> Vec<(f64, f64)> {
                samples
                    .iter()
                    .filter(|s| s.process == process && phase.is_none_or(|p| s.phase == p))
                    .filter_map(|s| Some((s.t, s.values.get(gauge.column).copied().flatten()?)))
                    .collect()
            };
            let load = series(Some("load"));
            let first = load.iter().find(|(t, _)| *t >= warmup_secs).copied();
            rows.push(Row {
                process: process.to_string(),
                gauge,
                start: series(Some("start")).first().copied(),
                first,
                last: load.last().copied().filter(|_| first.is_some()),
                max: series(None).iter().map(|(_, v)| *v).reduce(f64::max),
                idle: series(Some("idle")).last().copied(),
            });
        }
    }
    rows
}

/// What one load step did over the run.
struct Step {
    step: String,
    label: &'static str,
    runs: usize,
    failed: usize,
    summary: String,
    errors: Vec<String>,
}

const STEPS: &[(&str, &str)] = &[
    ("tcp_up", "TCP burst, client→target (iperf3 -P 2, 3 s)"),
    ("tcp_down", "TCP burst, target→client (iperf3 -P 2 -R, 3 s)"),
    ("udp", "UDP (iperf3 -u, 1200 B datagrams, modest rate)"),
    ("http_ka", "HTTP keep-alive via the `http` service (wrk)"),
    (
        "http_close",
        "HTTP new connection each via the `http` service (wrk)",
    ),
    ("churn", "TCP churn through a tcp proxy (loadgen churn)"),
];

fn load_summary(load: &[LoadLine]) -> Vec<Step> {
    let mut out = Vec::new();
    for (step, label) in STEPS {
        let lines: Vec<&LoadLine> = load.iter().filter(|l| l.1 == *step).collect();
        let mut cycles: Vec<u32> = lines.iter().map(|l| l.0).collect();
        cycles.dedup();
        let errors: Vec<String> = lines
            .iter()
            .filter(|l| l.2 == "error")
            .map(|l| format!("cycle {}: {}", l.0, l.3))
            .collect();
        let values = |key: &str| -> Vec<f64> {
            lines
                .iter()
                .filter(|l| l.2 == key)
                .filter_map(|l| l.3.parse().ok())
                .collect()
        };
        let sum = |key: &str| values(key).iter().sum::<f64>();
        let summary = match *step {
            "tcp_up" | "tcp_down" => format!("median {:.2} Gbit/s", median(values("gbps"))),
            "udp" => format!(
                "median {:.1} Mbit/s received, median loss {:.2}%",
                median(values("gbps")) * 1000.0,
                median(values("loss_pct"))
            ),
            "http_ka" | "http_close" => format!(
                "{} requests, {} errors (socket errors + non-2xx), median {} req/s",
                thousands(sum("requests")),
                thousands(sum("errors")),
                thousands(median(values("rps")))
            ),
            "churn" => format!(
                "{} connections: {} ok, {} failed, {} not started (at the open limit)",
                thousands(sum("started")),
                thousands(sum("ok")),
                thousands(sum("failed")),
                thousands(sum("skipped"))
            ),
            _ => String::new(),
        };
        out.push(Step {
            step: step.to_string(),
            label,
            runs: cycles.len(),
            failed: {
                let mut failed: Vec<u32> = lines
                    .iter()
                    .filter(|l| l.2 == "error")
                    .map(|l| l.0)
                    .collect();
                failed.dedup();
                failed.len()
            },
            summary,
            errors,
        });
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

fn shown(gauge: &Gauge, v: f64) -> String {
    if gauge.decimals == 0 {
        thousands(v / gauge.scale)
    } else {
        format!("{:.*}", gauge.decimals, v / gauge.scale)
    }
}

fn at(gauge: &Gauge, point: Option<(f64, f64)>) -> String {
    point.map_or("–".into(), |(t, v)| {
        format!("{} (t={t:.0} s)", shown(gauge, v))
    })
}

/// `+12` or `−3`, with the percentage of `of` when given.
fn signed(gauge: &Gauge, d: f64, of: Option<f64>) -> String {
    let sign = if d >= 0.0 { "+" } else { "−" };
    let pct = of.map_or(String::new(), |f| {
        format!(" ({sign}{:.1}%)", d.abs() / f * 100.0)
    });
    format!("{sign}{}{pct}", shown(gauge, d.abs()))
}

fn markdown(meta: &[(String, String)], warmup_secs: f64, rows: &[Row], steps: &[Step]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Soak run\n");
    for (k, v) in meta {
        let _ = writeln!(out, "- {k}: {v}");
    }
    let _ = writeln!(
        out,
        "\nSamples are taken in the quiet tail of each 30 s load cycle (about 9 s after the \
         load of the cycle stopped); growth = last − first after the warm-up \
         ({warmup_secs:.0} s), and the verdict is on that growth. \"idle after\" is sampled \
         once the load has stopped and the idle timeouts (UDP sessions, pooled upstream \
         connections) have passed; \"idle vs start\" compares it with the sample before any \
         load.\n"
    );
    let _ = writeln!(
        out,
        "| process | figure | start (idle) | first after warm-up | last | max | growth | tolerance | verdict | idle after | idle vs start |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|");
    for r in rows {
        let g = r.gauge;
        let growth = r.growth().map_or("–".into(), |d| {
            let pct = r
                .first
                .filter(|(_, f)| *f > 0.0 && g.percent)
                .map(|(_, f)| f);
            signed(g, d, pct)
        });
        let idle_change = r.idle_change().map_or("–".into(), |d| {
            signed(
                g,
                d,
                r.start.map(|(_, f)| f).filter(|f| *f > 0.0 && g.percent),
            )
        });
        let verdict = match r.flat() {
            Some(true) => "flat",
            Some(false) => "**GROWS**",
            None => "n/a (too few samples)",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.process,
            g.label,
            r.start.map_or("–".into(), |(_, v)| shown(g, v)),
            at(g, r.first),
            at(g, r.last),
            r.max.map_or("–".into(), |v| shown(g, v)),
            growth,
            g.tolerance.describe(),
            verdict,
            r.idle.map_or("–".into(), |(_, v)| shown(g, v)),
            idle_change,
        );
    }
    let growing: Vec<String> = rows
        .iter()
        .filter(|r| r.flat() == Some(false))
        .map(|r| format!("{} {}", r.process, r.gauge.label))
        .collect();
    let _ = writeln!(
        out,
        "\nVerdict: {}\n",
        if growing.is_empty() {
            "no figure grew beyond its tolerance.".to_string()
        } else {
            format!("growth beyond tolerance in: {}.", growing.join("; "))
        }
    );
    let _ = writeln!(
        out,
        "| load, each 30 s cycle | runs | failed runs | what it did |"
    );
    let _ = writeln!(out, "|---|---:|---:|---|");
    for s in steps {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            s.label, s.runs, s.failed, s.summary
        );
    }
    let errors: Vec<&String> = steps.iter().flat_map(|s| s.errors.iter()).collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "\nFailed runs:");
        for (i, e) in errors.iter().enumerate() {
            if i == 20 {
                let _ = writeln!(out, "- ... and {} more", errors.len() - 20);
                break;
            }
            let _ = writeln!(out, "- {e}");
        }
    }
    out
}

fn row_json(r: &Row) -> Value {
    let point =
        |p: Option<(f64, f64)>| p.map_or(Value::Null, |(t, v)| json!({ "t_secs": t, "value": v }));
    json!({
        "process": r.process,
        "figure": r.gauge.column,
        "start": r.start.map(|p| p.1),
        "first_after_warmup": point(r.first),
        "last": point(r.last),
        "max": r.max,
        "growth": r.growth(),
        "tolerance": r.gauge.tolerance.describe(),
        "flat": r.flat(),
        "idle_after": r.idle.map(|p| p.1),
        "idle_vs_start": r.idle_change(),
    })
}

fn csv(samples: &[Sample]) -> String {
    let columns: Vec<&str> = GAUGES.iter().map(|g| g.column).collect();
    let mut out = format!("t_secs,phase,process,{}\n", columns.join(","));
    for s in samples {
        let values: Vec<String> = columns
            .iter()
            .map(|c| {
                s.values
                    .get(*c)
                    .copied()
                    .flatten()
                    .map_or(String::new(), |v| format!("{v}"))
            })
            .collect();
        let _ = writeln!(
            out,
            "{},{},{},{}",
            s.t,
            s.phase,
            s.process,
            values.join(",")
        );
    }
    out
}
