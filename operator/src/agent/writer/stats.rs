//! The writer's backlog and request counters, and their metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters of the writer, for logs, tests and the scale benchmark.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// API requests sent (successful or not).
    pub requests: AtomicU64,
    pub spec_applies: AtomicU64,
    pub status_applies: AtomicU64,
    pub failures: AtomicU64,
    /// PodFlows whose observer entry differs from the last one written.
    pub dirty: AtomicU64,
    /// PodFlows not created because the profile reached maxPodFlows.
    pub held_by_cap: AtomicU64,
    /// Dirty PodFlows not held by the cap nor paused after a refusal: the
    /// backlog.
    pub pending: AtomicU64,
    /// Of the pending PodFlows, those whose flushInterval has passed:
    /// waiting for the request budget.
    pub due: AtomicU64,
    /// When the oldest unpublished change (of a dirty PodFlow not held by
    /// the cap nor paused) was handed to the writer, in milliseconds since
    /// the Unix epoch; 0 when there is none.
    pub oldest_pending_unix_ms: AtomicU64,
    /// Map-pressure entries of CaptureProfiles written.
    pub loss_applies: AtomicU64,
}

impl WriterStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// How long the oldest unpublished change has waited (zero when none).
    pub fn oldest_pending_age(&self) -> Duration {
        let since = Self::get(&self.oldest_pending_unix_ms);
        if since == 0 {
            return Duration::ZERO;
        }
        let now = unix_ms(std::time::SystemTime::now());
        Duration::from_millis(now.saturating_sub(since))
    }
}

pub(super) fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The writer's figures as agent metrics (OpenMetrics), read at scrape time.
#[derive(Debug)]
pub struct WriterCollector(pub Arc<WriterStats>);

impl prometheus_client::collector::Collector for WriterCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let s = &self.0;
        let counts: [(&str, &str, u64); 3] = [
            (
                "weir_podflow_writer_pending",
                "PodFlows whose newest counters are not published yet (not counting those held by maxPodFlows or paused after a refusal).",
                WriterStats::get(&s.pending),
            ),
            (
                "weir_podflow_writer_due",
                "Pending PodFlows whose flushInterval has passed: waiting for the request budget (--api-qps).",
                WriterStats::get(&s.due),
            ),
            (
                "weir_podflow_writer_held_by_cap",
                "New conversations not published because their profile reached maxPodFlows.",
                WriterStats::get(&s.held_by_cap),
            ),
        ];
        for (name, help, value) in counts {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let age = ConstGauge::new(s.oldest_pending_age().as_secs_f64());
        age.encode(encoder.encode_descriptor(
            "weir_podflow_writer_oldest_pending_seconds",
            "Age of the oldest unpublished change; far above the profiles' flushInterval, the request budget cannot keep up.",
            None,
            age.metric_type(),
        )?)?;
        let counters: [(&str, &str, u64); 2] = [
            (
                "weir_podflow_writer_requests",
                "API requests of the writer (PodFlows and map-pressure entries), successful or not.",
                WriterStats::get(&s.requests),
            ),
            (
                "weir_podflow_writer_failures",
                "API requests of the writer that failed.",
                WriterStats::get(&s.failures),
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
