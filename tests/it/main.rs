//! Most integration tests, as one test binary: one module per behaviour, sharing the helpers
//! in `tests/common/`. One binary builds in about half the time of one per file, on less than
//! half the disk: linking a binary per file, each with its own copy of the crate and of the
//! helpers, was most of the build (numbers in the README, "Tests"). Run one module with
//! `cargo test --test it tcp_tunnel::`, one test with
//! `cargo test --test it tcp_tunnel::stopping_a_tunnel`.
//!
//! The tests that look at their whole process stay binaries of their own in `tests/`:
//! `config_files` sets environment variables, `hostile_input` and `http_upload` read the
//! process's peak memory, `metrics_gauges` its open files and tasks, and `scale` holds 10,000
//! sockets in it. Here, tests of other modules would run beside them in the same process.

#[path = "../common/mod.rs"]
mod common;

mod admin_api;
mod bench_report;
mod cli;
mod cluster;
mod cluster_forward;
mod cluster_kill;
mod code_shape;
mod dead_peer;
mod exhaustion;
mod heartbeats;
mod http_credentials;
mod http_idle;
mod http_service;
mod https_service;
mod hub_restart;
mod init_from;
mod limits;
mod lockout;
mod netfaults;
mod protocol_wire;
mod reconnect;
mod reload;
mod service_files;
mod service_notify;
mod shutdown;
mod slow_reader;
mod target_health;
mod tcp_tunnel;
mod tls_policy;
mod tls_trust;
mod tunnelizectl_cli;
mod udp_tunnel;
