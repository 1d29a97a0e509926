//! The Prometheus text exposition (format 0.0.4) that both daemons serve on `/v1/metrics`.
//!
//! [`Exposition`] writes metric families: a `# HELP`/`# TYPE` header, then samples whose label
//! values it escapes, so no caller formats the text itself. The daemons only say which figures
//! they have ([`HubView::metrics`](crate::hub::inspect::HubView::metrics),
//! [`StatusBoard::metrics`](crate::tunnel::status::StatusBoard::metrics)); the process gauges
//! both export are here ([`Exposition::process`]). It reads `/proc/self`, nothing else.

use std::fmt::{Display, Write as _};

/// The kind of a metric family, as its `# TYPE` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A value that only goes up (named `..._total`).
    Counter,
    /// Cumulative buckets, a sum and a count.
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        }
    }
}

/// A metrics text being written, family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the family `name`: its help text and its kind.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {}",
            kind.name()
        );
        self
    }

    /// One sample of `name` (a family's name, or a histogram's `_bucket`/`_sum`/`_count`),
    /// with its labels; label values are escaped.
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl Display,
    ) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"");
                escape_into(&mut self.out, value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// A histogram family from cumulative `buckets` (upper bound, count at or below it), the
    /// total `count` and the `sum` of the observations.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        buckets: &[(f64, u64)],
        count: u64,
        sum: f64,
    ) -> &mut Self {
        self.family(name, Kind::Histogram, help);
        let bucket = format!("{name}_bucket");
        for (bound, n) in buckets {
            self.sample(&bucket, &[("le", &bound.to_string())], n);
        }
        self.sample(&bucket, &[("le", "+Inf")], count);
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], count)
    }

    /// The process gauges both daemons export, so growth shows over a long run:
    /// `tunnelize_tasks` (tokio tasks alive on the runtime this is called from; omitted outside
    /// a runtime) and, on Linux, `tunnelize_open_fds` and `tunnelize_resident_memory_bytes`.
    ///
    /// The Linux figures come from `/proc/self`: one small read of `status` and a listing of
    /// `fd` (one entry per open file, so its cost grows with the clients held). A figure `/proc`
    /// does not give is left out rather than reported as 0.
    pub fn process(&mut self) -> &mut Self {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.family(
                "tunnelize_tasks",
                Kind::Gauge,
                "Tokio tasks alive in the daemon.",
            )
            .sample("tunnelize_tasks", &[], runtime.metrics().num_alive_tasks());
        }
        #[cfg(target_os = "linux")]
        {
            if let Some(fds) = open_fds() {
                self.family(
                    "tunnelize_open_fds",
                    Kind::Gauge,
                    "File descriptors the daemon has open.",
                )
                .sample("tunnelize_open_fds", &[], fds);
            }
            if let Some(bytes) = resident_memory_bytes() {
                self.family(
                    "tunnelize_resident_memory_bytes",
                    Kind::Gauge,
                    "Resident memory of the daemon (VmRSS).",
                )
                .sample("tunnelize_resident_memory_bytes", &[], bytes);
            }
        }
        self
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Appends `value` escaped as a label value: backslash, double quote and newline.
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Entries of `/proc/self/fd`, less the one the listing itself holds open.
#[cfg(target_os = "linux")]
fn open_fds() -> Option<usize> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(entries.count().saturating_sub(1))
}

/// `VmRSS` of `/proc/self/status`, in bytes.
#[cfg(target_os = "linux")]
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut text = Exposition::new();
        text.sample("m", &[("a", "x\"y\\z\nw"), ("b", "plain")], 3);
        assert_eq!(text.finish(), "m{a=\"x\\\"y\\\\z\\nw\",b=\"plain\"} 3\n");
    }

    #[test]
    fn a_family_has_its_help_and_type_then_its_samples() {
        let mut text = Exposition::new();
        text.family("tunnelize_x_total", Kind::Counter, "Xs seen.")
            .sample("tunnelize_x_total", &[], 7);
        assert_eq!(
            text.finish(),
            "# HELP tunnelize_x_total Xs seen.\n# TYPE tunnelize_x_total counter\n\
             tunnelize_x_total 7\n"
        );
    }

    #[test]
    fn a_histogram_ends_with_inf_sum_and_count() {
        let mut text = Exposition::new();
        text.histogram("h", "H.", &[(0.001, 1), (0.01, 3)], 4, 0.5);
        let text = text.finish();
        let lines: Vec<_> = text.lines().skip(2).collect();
        assert_eq!(
            lines,
            [
                "h_bucket{le=\"0.001\"} 1",
                "h_bucket{le=\"0.01\"} 3",
                "h_bucket{le=\"+Inf\"} 4",
                "h_sum 0.5",
                "h_count 4"
            ]
        );
    }

    #[test]
    fn the_exposition_parses_as_prometheus_text() {
        let mut text = Exposition::new();
        text.family("g", Kind::Gauge, "G.")
            .sample("g", &[("service", "web")], 2)
            .process();
        let text = text.finish();
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        let g = scrape.samples.iter().find(|s| s.metric == "g").unwrap();
        assert_eq!(g.labels.get("service"), Some("web"));
        assert!(
            scrape
                .samples
                .iter()
                .any(|s| s.metric == "tunnelize_open_fds")
        );
    }
}
