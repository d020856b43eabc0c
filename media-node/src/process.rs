//! CPU use of this process, sampled from `/proc/self/stat` once a second.
//!
//! The figure feeds `/status` (the operator places meetings by it) and the benchmark.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Kernel clock ticks per second for `/proc` CPU times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// Reads user+system CPU seconds of this process; `None` off Linux or if `/proc` is odd.
pub fn cpu_seconds() -> Option<f64> {
    cpu_seconds_of("self")
}

/// User+system CPU seconds of process `pid` (a number, or `self`).
pub fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// Resident memory of this process in bytes.
pub fn rss_bytes() -> Option<u64> {
    rss_bytes_of("self")
}

/// Resident memory of process `pid` (a number, or `self`) in bytes.
pub fn rss_bytes_of(pid: &str) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The share of a core the process used over the last second, updated in the background.
#[derive(Clone, Default)]
pub struct CpuMeter {
    bits: Arc<AtomicU64>,
}

impl CpuMeter {
    /// Starts sampling on the current tokio runtime.
    pub fn start() -> Self {
        let meter = Self::default();
        let bits = meter.bits.clone();
        tokio::spawn(async move {
            let mut last = (Instant::now(), cpu_seconds().unwrap_or(0.0));
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = (Instant::now(), cpu_seconds().unwrap_or(0.0));
                let wall = now.0.duration_since(last.0).as_secs_f64();
                if wall > 0.0 {
                    bits.store(((now.1 - last.1) / wall).to_bits(), Ordering::Relaxed);
                }
                last = now;
            }
        });
        meter
    }

    /// Cores in use (1.0 = one core busy).
    pub fn cores(&self) -> f64 {
        f64::from_bits(self.bits.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_cpu_and_memory() {
        assert!(super::cpu_seconds().is_some());
        assert!(super::rss_bytes().is_some_and(|b| b > 0));
    }
}
