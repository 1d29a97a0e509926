//! The unit tests of the benchmark report (`benches/loadgen/report.rs`: medians, derived
//! figures, target verdicts, and the check that fails `bench/run.sh --smoke` in CI when a figure
//! is missing). The bench target has `harness = false`, so tests inside it would never run; this
//! file includes the module so that `cargo test` runs them.

#[allow(dead_code)]
#[path = "../../benches/loadgen/report.rs"]
mod report;
