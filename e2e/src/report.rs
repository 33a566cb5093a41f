//! What the benchmark binaries share to measure and report: order statistics,
//! the host's state at the time, raw-number files, and processes that must
//! not outlive a run.

use std::fs;
use std::path::PathBuf;
use std::process::Child;

use anyhow::{Context, Result};

/// Nearest-rank percentile, `q` in 0..=100.
pub fn pct(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub fn med(values: &[f64]) -> f64 {
    pct(values, 50.0)
}

pub fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The running kernel's release.
pub fn uname_r() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The directory raw numbers go to, one `# header` line per file.
pub struct Raw {
    pub dir: PathBuf,
}

impl Raw {
    pub fn write(&self, name: &str, header: &str, lines: &[String]) -> Result<()> {
        let path = self.dir.join(name);
        fs::write(&path, format!("# {header}\n{}\n", lines.join("\n")))
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// A process a benchmark started; killed (by its pid) and reaped on drop.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
