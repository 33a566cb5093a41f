//! The controller's own metrics, served as OpenMetrics text on `/metrics`
//! (`--metrics-listen`), with `/healthz`:
//!
//! - `weir_controller_reconciles_total{kind}`,
//!   `weir_controller_reconcile_errors_total{kind}` and
//!   `weir_controller_reconcile_duration_seconds{kind}` (a histogram), for
//!   `kind="CaptureProfile"` (a profile's reconcile or cleanup) and
//!   `kind="OrphanSweep"` (the sweep of PodFlows whose profile is gone);
//! - `weir_controller_podflows_deleted_total{reason}`: `ttl` (idle longer
//!   than flowTTL), `cap` (beyond maxPodFlows), `profile_deleted` (the
//!   profile's finalizer), `orphaned` (the sweep);
//! - `weir_controller_podflow_summaries_total`: PodFlow status summaries
//!   written;
//! - `weir_controller_leader`: 1 while this replica holds the Lease;
//! - `weir_alerts_total{namespace,profile,alert}`: alerts raised (a PodFlow's
//!   alert condition turned True; `alert` is `NewPeer`, `RateSpike`,
//!   `TCPResets` or `OverlayLoss`), and `weir_alerts_firing{...}`: PodFlows
//!   whose alert condition is True now;
//! - `weir_alert_events_total{namespace,outcome}`: alert Events `sent`, held
//!   back `within_interval` or by the `namespace_budget`, or `failed`.
//!
//! Every replica serves them; only the leader's reconcile counts move.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::http;

/// `kind` of a CaptureProfile reconcile.
pub const KIND_PROFILE: &str = "CaptureProfile";
/// `kind` of the orphan sweep.
pub const KIND_SWEEP: &str = "OrphanSweep";

/// Why PodFlows were deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    Ttl,
    Cap,
    ProfileDeleted,
    Orphaned,
}

impl Deletion {
    const ALL: [Deletion; 4] = [
        Deletion::Ttl,
        Deletion::Cap,
        Deletion::ProfileDeleted,
        Deletion::Orphaned,
    ];

    fn label(self) -> &'static str {
        match self {
            Deletion::Ttl => "ttl",
            Deletion::Cap => "cap",
            Deletion::ProfileDeleted => "profile_deleted",
            Deletion::Orphaned => "orphaned",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    namespace: String,
    profile: String,
    alert: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    namespace: String,
    outcome: String,
}

fn duration_histogram() -> Histogram {
    // 5 ms to ~20 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

/// The controller's metrics and their registry.
pub struct ControllerMetrics {
    registry: Registry,
    reconciles: Family<KindLabel, Counter>,
    reconcile_errors: Family<KindLabel, Counter>,
    reconcile_duration: Family<KindLabel, Histogram, fn() -> Histogram>,
    deleted: Family<ReasonLabel, Counter>,
    summaries: Counter,
    leader: Gauge,
    alerts: Family<AlertLabels, Counter>,
    firing: Family<AlertLabels, Gauge>,
    alert_events: Family<EventLabels, Counter>,
}

impl std::fmt::Debug for ControllerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerMetrics").finish_non_exhaustive()
    }
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ControllerMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<KindLabel, Counter>::default();
        let reconcile_errors = Family::<KindLabel, Counter>::default();
        let reconcile_duration =
            Family::<KindLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        let deleted = Family::<ReasonLabel, Counter>::default();
        let summaries = Counter::default();
        let leader = Gauge::default();
        let alerts = Family::<AlertLabels, Counter>::default();
        let firing = Family::<AlertLabels, Gauge>::default();
        let alert_events = Family::<EventLabels, Counter>::default();
        registry.register(
            "weir_alerts",
            "Alerts raised: a PodFlow's alert condition turned True, by namespace, profile and alert (NewPeer, RateSpike, TCPResets, OverlayLoss).",
            alerts.clone(),
        );
        registry.register(
            "weir_alerts_firing",
            "PodFlows whose alert condition is True, by namespace, profile and alert.",
            firing.clone(),
        );
        registry.register(
            "weir_alert_events",
            "Alert Events by namespace and outcome: sent, within_interval (the same alert went out within eventInterval), namespace_budget (the namespace's Events per minute were spent), failed.",
            alert_events.clone(),
        );
        registry.register(
            "weir_controller_reconciles",
            "Reconciles run, by kind (CaptureProfile, OrphanSweep).",
            reconciles.clone(),
        );
        registry.register(
            "weir_controller_reconcile_errors",
            "Reconciles that failed, by kind.",
            reconcile_errors.clone(),
        );
        registry.register(
            "weir_controller_reconcile_duration_seconds",
            "How long reconciles took, by kind.",
            reconcile_duration.clone(),
        );
        registry.register(
            "weir_controller_podflows_deleted",
            "PodFlows deleted, by reason: ttl (idle past flowTTL), cap (beyond maxPodFlows), profile_deleted (the profile went), orphaned (swept: no such profile).",
            deleted.clone(),
        );
        registry.register(
            "weir_controller_podflow_summaries",
            "PodFlow status summaries written.",
            summaries.clone(),
        );
        registry.register(
            "weir_controller_leader",
            "1 while this replica holds the Lease and reconciles, else 0.",
            leader.clone(),
        );
        // Every series exists from the start, at zero.
        for kind in [KIND_PROFILE, KIND_SWEEP] {
            let label = KindLabel { kind: kind.into() };
            let _ = reconciles.get_or_create(&label);
            let _ = reconcile_errors.get_or_create(&label);
            let _ = reconcile_duration.get_or_create(&label);
        }
        for d in Deletion::ALL {
            let _ = deleted.get_or_create(&ReasonLabel {
                reason: d.label().into(),
            });
        }
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            deleted,
            summaries,
            leader,
            alerts,
            firing,
            alert_events,
        }
    }

    /// An alert raised on a PodFlow of `profile`.
    pub fn alert_raised(&self, namespace: &str, profile: &str, alert: &str) {
        self.alerts
            .get_or_create(&alert_labels(namespace, profile, alert))
            .inc();
    }

    /// How many PodFlows of `profile` have `alert` True.
    pub fn set_firing(&self, namespace: &str, profile: &str, alert: &str, flows: usize) {
        self.firing
            .get_or_create(&alert_labels(namespace, profile, alert))
            .set(i64::try_from(flows).unwrap_or(i64::MAX));
    }

    /// Drops the firing gauge of an alert the profile no longer asks for.
    pub fn forget_firing(&self, namespace: &str, profile: &str, alert: &str) {
        self.firing.remove(&alert_labels(namespace, profile, alert));
    }

    /// Drops the firing gauges of a deleted profile.
    pub fn forget_profile(&self, namespace: &str, profile: &str) {
        for alert in weir_api::alerts::conditions::ALL {
            self.forget_firing(namespace, profile, alert);
        }
    }

    /// Drops every firing gauge (this replica stopped leading: the new
    /// leader reports them).
    pub fn clear_firing(&self) {
        self.firing.clear();
    }

    /// An alert Event's fate (`sent`, `within_interval`, `namespace_budget`,
    /// `failed`).
    pub fn alert_event(&self, namespace: &str, outcome: &str) {
        self.alert_events
            .get_or_create(&EventLabels {
                namespace: namespace.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// One reconcile of `kind` that took `took`.
    pub fn reconciled(&self, kind: &str, took: Duration, ok: bool) {
        let label = KindLabel { kind: kind.into() };
        self.reconciles.get_or_create(&label).inc();
        if !ok {
            self.reconcile_errors.get_or_create(&label).inc();
        }
        self.reconcile_duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
    }

    /// `n` PodFlows deleted for `why`.
    pub fn deleted(&self, why: Deletion, n: u64) {
        self.deleted
            .get_or_create(&ReasonLabel {
                reason: why.label().into(),
            })
            .inc_by(n);
    }

    /// A PodFlow summary written.
    pub fn summary_written(&self) {
        self.summaries.inc();
    }

    /// Whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The OpenMetrics text.
    pub fn render(&self) -> String {
        http::render(&self.registry)
    }
}

fn alert_labels(namespace: &str, profile: &str, alert: &str) -> AlertLabels {
    AlertLabels {
        namespace: namespace.into(),
        profile: profile.into(),
        alert: alert.into(),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the task
/// is dropped. One request per connection, GET only.
pub async fn serve(listener: TcpListener, metrics: Arc<ControllerMetrics>, ready: http::Readiness) {
    let get = move |path: &str| (path == "/metrics").then(|| http::metrics(&metrics.registry));
    http::serve(listener, Arc::new(get), ready).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_there_from_the_start_and_counts() {
        let m = ControllerMetrics::new();
        let text = m.render();
        for line in [
            r#"weir_controller_reconciles_total{kind="CaptureProfile"} 0"#,
            r#"weir_controller_podflows_deleted_total{reason="profile_deleted"} 0"#,
            "weir_controller_leader 0",
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
        m.reconciled(KIND_PROFILE, Duration::from_millis(30), true);
        m.reconciled(KIND_PROFILE, Duration::from_millis(30), false);
        m.deleted(Deletion::Ttl, 2);
        m.set_leader(true);
        let text = m.render();
        for line in [
            r#"weir_controller_reconciles_total{kind="CaptureProfile"} 2"#,
            r#"weir_controller_reconcile_errors_total{kind="CaptureProfile"} 1"#,
            r#"weir_controller_reconcile_duration_seconds_count{kind="CaptureProfile"} 2"#,
            r#"weir_controller_podflows_deleted_total{reason="ttl"} 2"#,
            "weir_controller_leader 1",
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
