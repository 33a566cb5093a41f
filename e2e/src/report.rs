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

/// A 95 % confidence interval of the median, distribution-free: the order
/// statistics at ranks n/2 ∓ 0.98·√n (the binomial's normal approximation).
/// Tells a reader how far a median of `values` can be trusted on a noisy host.
pub fn median_ci(values: &[f64]) -> (f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let half = 0.98 * (n as f64).sqrt();
    let lo = ((n as f64 / 2.0 - half).floor().max(0.0)) as usize;
    let hi = ((n as f64 / 2.0 + half).ceil() as usize)
        .saturating_sub(1)
        .min(n - 1);
    (v[lo.min(n - 1)], v[hi])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_ci_takes_the_binomial_ranks() {
        let v: Vec<f64> = (1..=30).rev().map(f64::from).collect();
        // ranks 10 and 21 of 30, as the tables for the sign test give them
        assert_eq!(median_ci(&v), (10.0, 21.0));
        assert_eq!(median_ci(&[7.0]), (7.0, 7.0));
        let (lo, hi) = median_ci(&[]);
        assert!(lo.is_nan() && hi.is_nan());
    }
}
