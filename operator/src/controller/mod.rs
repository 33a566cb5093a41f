//! The cluster controller (`weir-operator controller`).
//!
//! One replica at a time works (a `coordination.k8s.io/v1` Lease, see
//! [`leader`]); the others wait. The leader runs a kube-runtime
//! [`Controller`](kube::runtime::Controller) over CaptureProfiles
//! ([`profile`]) and a sweep of PodFlows whose profile is gone
//! ([`lifecycle::sweep_orphans`]).
//!
//! ## Who writes what (the contract with the node agents)
//!
//! - The agents create and update PodFlows (server-side apply, field manager
//!   `weir-agent/<node>`): spec, the labels [`labels::PROFILE`](weir_api::labels::PROFILE) and
//!   [`labels::MANAGED_BY`](weir_api::labels::MANAGED_BY), an ownerReference to the pod, and their own
//!   `status.observers[node]` entry. They never delete PodFlows.
//! - The controller writes the PodFlow status summary (field manager
//!   [`SUMMARY_FIELD_MANAGER`](weir_api::pod_flow::SUMMARY_FIELD_MANAGER)),
//!   the CaptureProfile status (same field manager), and does every
//!   deletion: flows idle longer than the profile's `flowTTL`, the least
//!   recently seen beyond `maxPodFlows`, the flows of a deleted profile
//!   (finalizer [`FINALIZER`]) and of a profile that no longer exists. It
//!   deletes only PodFlows that carry both weir labels. Flows whose pod is
//!   gone are left to Kubernetes' garbage collector (the ownerReference).
//! - Map pressure: each agent applies its own entry of a profile's
//!   `status.nodes` (field manager `weir-agent/<node>`); the controller sums
//!   them into `lostSamples` and keeps the `MapPressure` condition (True
//!   while the sum grew within `--map-pressure-window`), with a Warning
//!   Event `MapPressure` when it grows. Its own status apply never carries
//!   `nodes`, so it never takes the agents' entries.
//!
//! Metrics: [`metrics`] (`--metrics-listen`).

mod alert_gate;
mod alerting;
pub mod alerts;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod profile;
pub mod run;

use std::net::SocketAddr;
use std::time::Duration;

/// The finalizer on CaptureProfiles: their PodFlows are deleted before the
/// profile goes.
pub const FINALIZER: &str = "weir.dev/podflows";

/// The controller's name in Events (`reportingController`).
pub const REPORTING_CONTROLLER: &str = "weir.dev/controller";

/// The controller's errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Config(String),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("{0} has no {1}")]
    MissingField(String, &'static str),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("metrics endpoint {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The controller's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the controller runs (the `controller` subcommand's flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// Leader election.
    pub lease: leader::LeaseConfig,
    /// How often the leader looks for PodFlows whose profile is gone.
    pub orphan_sweep_interval: Duration,
    /// Requeue delay after a failed reconcile.
    pub error_requeue: Duration,
    /// Where to serve `/metrics` and `/healthz` (none: not served).
    pub metrics_listen: Option<SocketAddr>,
    /// How long a profile's `MapPressure` condition stays True after its
    /// `lostSamples` last grew.
    pub map_pressure_window: Duration,
    /// The most alert Events per namespace and minute.
    pub alert_events_per_minute: u32,
}

/// Whether `err` is the API server's 404 Not Found.
pub(crate) fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 404)
}

/// Whether `err` is the API server's 409 Conflict (or a failed precondition).
pub(crate) fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 409)
}
