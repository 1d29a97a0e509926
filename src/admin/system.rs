//! `GET /v1/system`: host and process figures from `sysinfo`.
//!
//! CPU use is a rate, so it needs two samples: the sampler keeps its `sysinfo::System` between
//! requests and each answer covers the time since the previous one (the first answer covers
//! the time since the daemon started its API). Reading `/proc` blocks, so sampling runs on
//! tokio's blocking pool.

use std::sync::Arc;

use parking_lot::Mutex;
use std::time::SystemTime;

use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};

use super::model::SystemInfo;

/// Samples the host and this process.
pub struct SystemSampler {
    role: &'static str,
    started: SystemTime,
    system: Mutex<Option<System>>,
}

impl SystemSampler {
    /// A sampler for a daemon of `role` (`hub` or `tunnel`) that started at `started`.
    pub fn new(role: &'static str, started: SystemTime) -> Arc<Self> {
        let sampler = Arc::new(SystemSampler {
            role,
            started,
            system: Mutex::new(None),
        });
        // Take the first CPU sample now, so the first answer has an interval to measure.
        let first = sampler.clone();
        tokio::task::spawn_blocking(move || {
            let _ = first.sample_blocking();
        });
        sampler
    }

    /// The current figures.
    pub async fn sample(self: &Arc<Self>) -> Result<SystemInfo, String> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.sample_blocking())
            .await
            .map_err(|e| format!("sampling the system failed: {e}"))?
    }

    fn sample_blocking(&self) -> Result<SystemInfo, String> {
        let mut slot = self.system.lock();
        if slot.is_none() {
            *slot = Some(System::new().map_err(|e| format!("cannot read system figures: {e}"))?);
        }
        let Some(system) = slot.as_mut() else {
            return Err("cannot read system figures".into());
        };
        let pid = sysinfo::get_current_pid()
            .map_err(|e| format!("cannot find this process's id: {e}"))?;
        system.refresh_cpu_usage();
        system.refresh_memory();
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        let (process_cpu_percent, process_memory_bytes) = system
            .process(pid)
            .map(|p| (p.cpu_usage(), p.memory()))
            .unwrap_or_default();
        let load = System::load_average()
            .map(|l| [l.one, l.five, l.fifteen])
            .unwrap_or_default();
        let uptime_secs = SystemTime::now()
            .duration_since(self.started)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        Ok(SystemInfo {
            role: self.role.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs,
            pid: pid.as_u32(),
            process_cpu_percent,
            process_memory_bytes,
            cpu_percent: system.global_cpu_usage(),
            cpus: system.cpus().len(),
            memory_total_bytes: system.total_memory(),
            memory_used_bytes: system.used_memory(),
            load_average: load,
        })
    }
}
