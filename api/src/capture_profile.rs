//! `CaptureProfile`: which pods of its namespace weir observes, what of
//! their traffic, how, and within which limits.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::alerts::AlertsSpec;
use super::{Protocol, parse_duration};

/// Default of `spec.flushInterval`.
pub const DEFAULT_FLUSH_INTERVAL: &str = "10s";
/// Default of `spec.flowTTL`.
pub const DEFAULT_FLOW_TTL: &str = "5m";
/// Default of `spec.maxPodFlows`.
pub const DEFAULT_MAX_POD_FLOWS: i32 = 500;
/// The inclusive range of one spec field, written once: the schema's CEL
/// rule and message and the controller's [`CaptureProfileSpec::check`] are
/// made from it.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The field as the API names it (`ports` bounds each element).
    pub field: &'static str,
    /// The smallest allowed value, as the API writes it (`1`, `1s`).
    pub min: &'static str,
    /// The largest allowed value.
    pub max: &'static str,
}

/// Bounds of each `spec.ports` element.
pub const PORT_BOUNDS: Bounds = Bounds {
    field: "ports",
    min: "1",
    max: "65535",
};
/// Bounds of `spec.maxPodFlows`.
pub const MAX_POD_FLOWS_BOUNDS: Bounds = Bounds {
    field: "maxPodFlows",
    min: "1",
    max: "10000",
};
/// Bounds of `spec.flushInterval`.
pub const FLUSH_INTERVAL_BOUNDS: Bounds = Bounds {
    field: "flushInterval",
    min: "1s",
    max: "1h",
};
/// Bounds of `spec.flowTTL`; it is also at least `flushInterval`.
pub const FLOW_TTL_BOUNDS: Bounds = Bounds {
    field: "flowTTL",
    min: "1s",
    max: "24h",
};

impl Bounds {
    /// `<field> must be between <min> and <max>`.
    pub fn message(&self) -> String {
        format!(
            "{} must be between {} and {}",
            self.field, self.min, self.max
        )
    }

    /// The CEL rule for an integer field.
    pub fn int_rule(&self) -> String {
        format!("self >= {} && self <= {}", self.min, self.max)
    }

    /// The CEL rule for each element of an integer list.
    pub fn each_int_rule(&self) -> String {
        format!("self.all(p, p >= {} && p <= {})", self.min, self.max)
    }

    /// The CEL rule for a duration field.
    pub fn duration_rule(&self) -> String {
        format!(
            "duration(self) >= duration('{}') && duration(self) <= duration('{}')",
            self.min, self.max
        )
    }

    /// Whether `value` is within the bounds of an integer field.
    pub fn admits_int(&self, value: i64) -> bool {
        let parse = |t: &str| t.parse::<i64>().expect("integer bounds");
        (parse(self.min)..=parse(self.max)).contains(&value)
    }

    /// Whether `value` is within the bounds of a duration field.
    pub fn admits_duration(&self, value: Duration) -> bool {
        let parse = |t: &str| super::parse_duration(t).expect("duration bounds");
        (parse(self.min)..=parse(self.max)).contains(&value)
    }
}

/// Observe the pods of this namespace that `podSelector` selects: count
/// their conversations (optionally only some protocols, ports or peers) and
/// publish them as PodFlows in this namespace. Several profiles may select
/// the same pod; a conversation is then counted once and published under
/// each profile that wants it.
// kube's printcolumn(...) entries repeat keys such as `type_` by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "CaptureProfile",
    namespaced,
    status = "CaptureProfileStatus",
    derive = "PartialEq",
    shortname = "cprof",
    shortname = "cp",
    category = "weir",
    doc = "CaptureProfile selects pods of its namespace whose conversations weir counts and publishes as PodFlows.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the profile is valid and applied on the nodes"
    ),
    printcolumn(
        name = "Matched",
        type_ = "integer",
        json_path = ".status.matchedPods",
        description = "Pods the profile selects"
    ),
    printcolumn(
        name = "Flows",
        type_ = "integer",
        json_path = ".status.activeFlows",
        description = "PodFlows the profile keeps now"
    ),
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".spec.mode",
        priority = 1
    ),
    printcolumn(
        name = "Dropped",
        type_ = "integer",
        json_path = ".status.flowsDroppedByCap",
        description = "Conversations not published because maxPodFlows was reached",
        priority = 1
    ),
    printcolumn(
        name = "Lost",
        type_ = "integer",
        json_path = ".status.lostSamples",
        description = "Updates the data path could not record (map pressure)",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.ports) || size(self.ports) == 0 || !has(self.protocols) || size(self.protocols) == 0 || self.protocols.exists(p, p == 'TCP' || p == 'UDP')",
        "message": "ports select TCP or UDP conversations: add TCP or UDP to protocols, or remove ports",
        "fieldPath": ".ports",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "!has(self.flowTTL) || !has(self.flushInterval) || duration(self.flowTTL) >= duration(self.flushInterval)",
        "message": "flowTTL must be at least flushInterval",
        "fieldPath": ".flowTTL",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct CaptureProfileSpec {
    /// Pods of this namespace to observe; `{}` selects all of them.
    /// Host-network pods are never observed (they have no pod interface).
    pub pod_selector: LabelSelector,

    /// Protocols to count; empty or absent counts all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4), extend("x-kubernetes-list-type" = "set"))]
    pub protocols: Vec<Protocol>,

    /// Destination (server side) ports to count, for TCP and UDP; empty or
    /// absent counts every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        extend(
            "x-kubernetes-list-type" = "set",
            "x-kubernetes-validations" = [{
                "rule": PORT_BOUNDS.each_int_rule(),
                "message": PORT_BOUNDS.message()
            }]
        )
    )]
    pub ports: Vec<i32>,

    /// Peers to count, as CIDRs (`10.0.0.0/8`, `fd00::/8`): a conversation
    /// counts when the other end's address is in one of them. Empty or
    /// absent counts every peer.
    #[serde(rename = "peerCIDRs", default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(max = 43)),
        extend(
            "x-kubernetes-list-type" = "set",
            "x-kubernetes-validations" = [{
                "rule": "self.all(c, isCIDR(c))",
                "message": "peerCIDRs must be CIDRs such as 10.0.0.0/8 or fd00::/8"
            }]
        )
    )]
    pub peer_cidrs: Vec<String>,

    /// What weir records. `Counters` (the default): packets and bytes per
    /// conversation and direction. `Pcap` is reserved for packet capture and
    /// not supported yet: the API server rejects it.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self != 'Pcap'",
        "message": "mode Pcap is not supported yet: use Counters"
    }]))]
    pub mode: CaptureMode,

    /// How often the nodes publish their counters (a duration such as `10s`
    /// or `1m`; at least 1s, at most 1h). Writes are coalesced to this.
    #[serde(default = "default_flush_interval")]
    #[schemars(
        length(max = 32),
        regex(pattern = super::DURATION_PATTERN),
        extend("x-kubernetes-validations" = [{
            "rule": FLUSH_INTERVAL_BOUNDS.duration_rule(),
            "message": FLUSH_INTERVAL_BOUNDS.message()
        }])
    )]
    pub flush_interval: String,

    /// How long a conversation's PodFlow is kept after its last packet (a
    /// duration; at least 1s and flushInterval, at most 24h).
    #[serde(rename = "flowTTL", default = "default_flow_ttl")]
    #[schemars(
        length(max = 32),
        regex(pattern = super::DURATION_PATTERN),
        extend("x-kubernetes-validations" = [{
            "rule": FLOW_TTL_BOUNDS.duration_rule(),
            "message": FLOW_TTL_BOUNDS.message()
        }])
    )]
    pub flow_ttl: String,

    /// The most PodFlows this profile keeps (1 to 10000). Past it, new
    /// conversations are counted in `status.flowsDroppedByCap` instead.
    #[serde(default = "default_max_pod_flows")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": MAX_POD_FLOWS_BOUNDS.int_rule(),
        "message": MAX_POD_FLOWS_BOUNDS.message()
    }]))]
    pub max_pod_flows: i32,

    /// What to be told about: new peers, rate spikes, TCP resets, overlay
    /// loss (as Events, PodFlow conditions and metrics). Absent: nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertsSpec>,
}

/// What a profile records.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CaptureMode {
    /// Packets and bytes per conversation and direction.
    #[default]
    Counters,
    /// Reserved for packet capture; not supported yet.
    Pcap,
}

fn default_flush_interval() -> String {
    DEFAULT_FLUSH_INTERVAL.to_owned()
}

fn default_flow_ttl() -> String {
    DEFAULT_FLOW_TTL.to_owned()
}

fn default_max_pod_flows() -> i32 {
    DEFAULT_MAX_POD_FLOWS
}

/// What the controller reports about a profile.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CaptureProfileStatus {
    /// `Ready`: True when the profile is valid and applied, else False with
    /// the reason (InvalidSelector, UnsupportedMode, InvalidFilter,
    /// InvalidTiming, InvalidLimit). `MapPressure`: True while the nodes
    /// lose updates (see lostSamples).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods the profile selects now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_pods: Option<i32>,
    /// PodFlows the profile keeps now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_flows: Option<i32>,
    /// Conversations not published because `maxPodFlows` was reached
    /// (since the profile was created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows_dropped_by_cap: Option<i64>,
    /// Updates the data path could not record on the nodes that count the
    /// selected pods (flow creations that failed and flows evicted from a
    /// full map, pod and VXLAN flow maps), summed over `nodes`: counts are a
    /// lower bound when this is not 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_samples: Option<i64>,
    /// When the controller first saw `alerts.newPeer` asked for: its
    /// learning window starts here (cleared when `newPeer` is removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_since: Option<Time>,
    /// One entry per node whose agent counted the selected pods and lost
    /// updates meanwhile, each written only by that node's agent (field
    /// manager `weir-agent/<node>`), so nodes never conflict. The controller
    /// sums them into `lostSamples`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 5000),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"])
    )]
    pub nodes: Vec<NodeLoss>,
}

/// What one node's data path could not record while it counted a profile's
/// pods. The map pressure of a node is node-wide (its flow maps are shared
/// by all the pods it counts), so every profile counting pods there sees
/// the same losses from the moment its agent first saw the profile select
/// a pod on the node.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeLoss {
    /// The node (the list's key).
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
    /// `failedUpdates` + `lruEvictions`.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub lost_samples: i64,
    /// Flow creations that failed (a full map) while the profile selected
    /// pods on the node.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub failed_updates: i64,
    /// Flows evicted from a full LRU map while the profile selected pods on
    /// the node (their counts restart if they come back).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub lru_evictions: i64,
    /// The node's own failed-update counter (since its maps were pinned) at
    /// this report: the next report counts from here.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub node_failed_updates: i64,
    /// The node's own LRU eviction count at this report.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub node_lru_evictions: i64,
}

/// Condition types of a CaptureProfile.
pub mod conditions {
    /// The profile is valid and applied on the nodes.
    pub const READY: &str = "Ready";
    /// The nodes lose updates for the selected pods (see `lostSamples`).
    pub const MAP_PRESSURE: &str = "MapPressure";
}

/// Reasons of the `MapPressure` condition (and of its Events).
pub mod pressure_reasons {
    /// MapPressure=True: `lostSamples` grew within the controller's
    /// map-pressure window.
    pub const SAMPLES_LOST: &str = "SamplesLost";
    /// MapPressure=False: no loss within the window (or none at all).
    pub const NO_LOSS: &str = "NoLoss";
}

/// Reasons of the `Ready` condition.
pub mod reasons {
    /// Ready=True: valid and applied.
    pub const ACTIVE: &str = "Active";
    /// The label selector cannot be evaluated.
    pub const INVALID_SELECTOR: &str = "InvalidSelector";
    /// `mode` asks for something weir cannot do yet.
    pub const UNSUPPORTED_MODE: &str = "UnsupportedMode";
    /// `protocols`, `ports` or `peerCIDRs` are inconsistent or malformed.
    pub const INVALID_FILTER: &str = "InvalidFilter";
    /// `flushInterval` or `flowTTL` are malformed or out of range.
    pub const INVALID_TIMING: &str = "InvalidTiming";
    /// `maxPodFlows` is out of range.
    pub const INVALID_LIMIT: &str = "InvalidLimit";
    /// `alerts` has a value out of range or no threshold.
    pub const INVALID_ALERTS: &str = "InvalidAlerts";
}

/// Why a spec cannot be applied: the `Ready` condition's reason and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct SpecProblem {
    pub reason: &'static str,
    pub message: String,
}

fn problem(reason: &'static str, message: impl Into<String>) -> SpecProblem {
    SpecProblem {
        reason,
        message: message.into(),
    }
}

/// Whether `text` is a CIDR in the sense of CEL's `isCIDR` (an address, `/`,
/// a prefix length within the family's width).
pub fn is_cidr(text: &str) -> bool {
    let Some((addr, len)) = text.split_once('/') else {
        return false;
    };
    let Ok(addr) = addr.parse::<IpAddr>() else {
        return false;
    };
    if len.is_empty()
        || len.len() > 3
        || !len.bytes().all(|b| b.is_ascii_digit())
        || (len.len() > 1 && len.starts_with('0'))
    {
        return false;
    }
    let Ok(len) = len.parse::<u8>() else {
        return false;
    };
    len <= if addr.is_ipv4() { 32 } else { 128 }
}

impl CaptureProfile {
    /// The server-side apply body with which a node's agent publishes its
    /// own entry of `status.nodes` (apply it to the `status` subresource as
    /// [`agent_field_manager`](super::pod_flow::agent_field_manager)`(&entry.node)`,
    /// without force).
    pub fn node_loss_patch(name: &str, entry: &NodeLoss) -> serde_json::Value {
        use kube::Resource as _;
        serde_json::json!({
            "apiVersion": CaptureProfile::api_version(&()),
            "kind": CaptureProfile::kind(&()),
            "metadata": { "name": name },
            "status": { "nodes": [entry] },
        })
    }
}

impl CaptureProfileStatus {
    /// `lostSamples` as the node entries give it: their sum.
    pub fn lost_by_nodes(&self) -> i64 {
        self.nodes
            .iter()
            .fold(0i64, |a, n| a.saturating_add(n.lost_samples.max(0)))
    }
}

impl CaptureProfileSpec {
    /// The spec with every field at its default and the given selector.
    pub fn selecting(pod_selector: LabelSelector) -> Self {
        Self {
            pod_selector,
            protocols: Vec::new(),
            ports: Vec::new(),
            peer_cidrs: Vec::new(),
            mode: CaptureMode::default(),
            flush_interval: default_flush_interval(),
            flow_ttl: default_flow_ttl(),
            max_pod_flows: default_max_pod_flows(),
            alerts: None,
        }
    }

    /// `flushInterval` as a duration (after [`check`](Self::check) passed).
    pub fn flush_interval(&self) -> Option<Duration> {
        parse_duration(&self.flush_interval)
    }

    /// `flowTTL` as a duration (after [`check`](Self::check) passed).
    pub fn flow_ttl(&self) -> Option<Duration> {
        parse_duration(&self.flow_ttl)
    }

    /// Checks what the API server's schema checks (for servers or objects
    /// that skipped it) and what it cannot: label selector operators. The
    /// controller reports the problem in the `Ready` condition.
    pub fn check(&self) -> Result<(), SpecProblem> {
        for (i, req) in self
            .pod_selector
            .match_expressions
            .iter()
            .flatten()
            .enumerate()
        {
            let values = req.values.as_deref().unwrap_or_default();
            match req.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(problem(
                        reasons::INVALID_SELECTOR,
                        format!(
                            "podSelector.matchExpressions[{i}]: operator {} needs values",
                            req.operator
                        ),
                    ));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(problem(
                        reasons::INVALID_SELECTOR,
                        format!(
                            "podSelector.matchExpressions[{i}]: operator {} takes no values",
                            req.operator
                        ),
                    ));
                }
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                other => {
                    return Err(problem(
                        reasons::INVALID_SELECTOR,
                        format!(
                            "podSelector.matchExpressions[{i}]: unknown operator {other:?} (In, NotIn, Exists, DoesNotExist)"
                        ),
                    ));
                }
            }
            if req.key.is_empty() {
                return Err(problem(
                    reasons::INVALID_SELECTOR,
                    format!("podSelector.matchExpressions[{i}]: empty key"),
                ));
            }
        }
        if self.mode != CaptureMode::Counters {
            return Err(problem(
                reasons::UNSUPPORTED_MODE,
                format!("mode {:?} is not supported yet: use Counters", self.mode),
            ));
        }
        if let Some(p) = self
            .ports
            .iter()
            .find(|p| !PORT_BOUNDS.admits_int(i64::from(**p)))
        {
            return Err(problem(
                reasons::INVALID_FILTER,
                format!("port {p}: {}", PORT_BOUNDS.message()),
            ));
        }
        if !self.ports.is_empty()
            && !self.protocols.is_empty()
            && !self.protocols.iter().any(|p| p.has_ports())
        {
            return Err(problem(
                reasons::INVALID_FILTER,
                "ports select TCP or UDP conversations: add TCP or UDP to protocols, or remove ports",
            ));
        }
        if let Some(c) = self.peer_cidrs.iter().find(|c| !is_cidr(c)) {
            return Err(problem(
                reasons::INVALID_FILTER,
                format!("peerCIDRs: {c:?} is not a CIDR such as 10.0.0.0/8 or fd00::/8"),
            ));
        }
        let flush = self.flush_interval().ok_or_else(|| {
            problem(
                reasons::INVALID_TIMING,
                format!(
                    "flushInterval {:?} is not a duration such as 10s",
                    self.flush_interval
                ),
            )
        })?;
        if !FLUSH_INTERVAL_BOUNDS.admits_duration(flush) {
            return Err(problem(
                reasons::INVALID_TIMING,
                FLUSH_INTERVAL_BOUNDS.message(),
            ));
        }
        let ttl = self.flow_ttl().ok_or_else(|| {
            problem(
                reasons::INVALID_TIMING,
                format!("flowTTL {:?} is not a duration such as 5m", self.flow_ttl),
            )
        })?;
        if !FLOW_TTL_BOUNDS.admits_duration(ttl) {
            return Err(problem(reasons::INVALID_TIMING, FLOW_TTL_BOUNDS.message()));
        }
        if ttl < flush {
            return Err(problem(
                reasons::INVALID_TIMING,
                "flowTTL must be at least flushInterval",
            ));
        }
        if !MAX_POD_FLOWS_BOUNDS.admits_int(i64::from(self.max_pod_flows)) {
            return Err(problem(
                reasons::INVALID_LIMIT,
                MAX_POD_FLOWS_BOUNDS.message(),
            ));
        }
        if let Some(alerts) = &self.alerts {
            alerts.check()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn spec() -> CaptureProfileSpec {
        CaptureProfileSpec::selecting(LabelSelector {
            match_labels: Some([("app".to_owned(), "web".to_owned())].into()),
            ..Default::default()
        })
    }

    #[test]
    fn defaults_fill_an_empty_spec() {
        let s: CaptureProfileSpec =
            serde_json::from_value(serde_json::json!({ "podSelector": {} })).unwrap();
        assert_eq!(s, CaptureProfileSpec::selecting(LabelSelector::default()));
        assert_eq!(s.flush_interval(), Some(Duration::from_secs(10)));
        assert_eq!(s.flow_ttl(), Some(Duration::from_secs(300)));
        assert_eq!(s.max_pod_flows, 500);
        assert_eq!(s.mode, CaptureMode::Counters);
        assert_eq!(s.check(), Ok(()));
    }

    #[test]
    fn wire_names_follow_the_api() {
        let mut s = spec();
        s.peer_cidrs = vec!["10.0.0.0/8".into()];
        s.protocols = vec![Protocol::Tcp];
        let v = serde_json::to_value(&s).unwrap();
        for key in [
            "podSelector",
            "protocols",
            "peerCIDRs",
            "mode",
            "flushInterval",
            "flowTTL",
            "maxPodFlows",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert!(v.get("ports").is_none(), "empty lists are left out: {v}");
    }

    #[test]
    fn check_reports_each_problem_with_its_reason() {
        type Edit = Box<dyn Fn(&mut CaptureProfileSpec)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                reasons::UNSUPPORTED_MODE,
                Box::new(|s| s.mode = CaptureMode::Pcap),
            ),
            (reasons::INVALID_FILTER, Box::new(|s| s.ports = vec![0])),
            (reasons::INVALID_FILTER, Box::new(|s| s.ports = vec![70000])),
            (
                reasons::INVALID_FILTER,
                Box::new(|s| {
                    s.ports = vec![80];
                    s.protocols = vec![Protocol::Icmp];
                }),
            ),
            (
                reasons::INVALID_FILTER,
                Box::new(|s| s.peer_cidrs = vec!["10.0.0.1".into()]),
            ),
            (
                reasons::INVALID_FILTER,
                Box::new(|s| s.peer_cidrs = vec!["10.0.0.0/33".into()]),
            ),
            (
                reasons::INVALID_TIMING,
                Box::new(|s| s.flush_interval = "10".into()),
            ),
            (
                reasons::INVALID_TIMING,
                Box::new(|s| s.flush_interval = "500ms".into()),
            ),
            (
                reasons::INVALID_TIMING,
                Box::new(|s| s.flow_ttl = "25h".into()),
            ),
            (
                reasons::INVALID_TIMING,
                Box::new(|s| {
                    s.flush_interval = "1m".into();
                    s.flow_ttl = "30s".into();
                }),
            ),
            (
                reasons::INVALID_ALERTS,
                Box::new(|s| {
                    s.alerts = Some(AlertsSpec {
                        rate_spike: Some(crate::alerts::RateSpikeAlert::with_defaults()),
                        ..Default::default()
                    })
                }),
            ),
            (
                reasons::INVALID_ALERTS,
                Box::new(|s| {
                    s.alerts = Some(AlertsSpec {
                        tcp_resets: Some(crate::alerts::TcpResetsAlert {
                            percent: Some(101),
                            ..crate::alerts::TcpResetsAlert::with_defaults()
                        }),
                        ..Default::default()
                    })
                }),
            ),
            (
                reasons::INVALID_ALERTS,
                Box::new(|s| {
                    s.alerts = Some(AlertsSpec {
                        event_interval: "1s".into(),
                        ..Default::default()
                    })
                }),
            ),
            (
                reasons::INVALID_ALERTS,
                Box::new(|s| {
                    s.alerts = Some(AlertsSpec {
                        new_peer: Some(crate::alerts::NewPeerAlert {
                            ipv4_prefix_length: 33,
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                }),
            ),
            (reasons::INVALID_LIMIT, Box::new(|s| s.max_pod_flows = 0)),
            (
                reasons::INVALID_LIMIT,
                Box::new(|s| s.max_pod_flows = 10_001),
            ),
            (
                reasons::INVALID_SELECTOR,
                Box::new(|s| {
                    s.pod_selector.match_expressions = Some(vec![LabelSelectorRequirement {
                        key: "tier".into(),
                        operator: "Matches".into(),
                        values: None,
                    }])
                }),
            ),
            (
                reasons::INVALID_SELECTOR,
                Box::new(|s| {
                    s.pod_selector.match_expressions = Some(vec![LabelSelectorRequirement {
                        key: "tier".into(),
                        operator: "In".into(),
                        values: Some(vec![]),
                    }])
                }),
            ),
        ];
        for (reason, edit) in cases {
            let mut s = spec();
            edit(&mut s);
            let err = s.check().expect_err(&format!("{s:?} should be refused"));
            assert_eq!(err.reason, reason, "{err}");
        }
        let mut ok = spec();
        ok.ports = vec![80, 443];
        ok.protocols = vec![Protocol::Tcp, Protocol::Icmp];
        ok.peer_cidrs = vec![
            "10.0.0.0/8".into(),
            "fd00::/8".into(),
            "192.168.1.7/32".into(),
        ];
        ok.flush_interval = "1s".into();
        ok.flow_ttl = "1s".into();
        ok.max_pod_flows = 10_000;
        assert_eq!(ok.check(), Ok(()));
    }

    #[test]
    fn node_entries_sum_and_patch_only_the_nodes_own_entry() {
        let entry = |node: &str, lost: i64| NodeLoss {
            node: node.into(),
            lost_samples: lost,
            failed_updates: lost,
            ..Default::default()
        };
        let status = CaptureProfileStatus {
            lost_samples: Some(99),
            nodes: vec![entry("a", 3), entry("b", 4)],
            ..Default::default()
        };
        assert_eq!(status.lost_by_nodes(), 7);
        let p = CaptureProfile::node_loss_patch("web", &entry("a", 3));
        assert_eq!(p["kind"], "CaptureProfile");
        assert_eq!(
            p["status"].as_object().unwrap().keys().collect::<Vec<_>>(),
            ["nodes"]
        );
        assert_eq!(p["status"]["nodes"][0]["lostSamples"], 3);
        assert_eq!(p["status"]["nodes"][0]["nodeLruEvictions"], 0);
        // The controller's own status never carries the nodes' entries.
        let mine = CaptureProfileStatus {
            lost_samples: Some(7),
            ..Default::default()
        };
        assert!(serde_json::to_value(&mine).unwrap().get("nodes").is_none());
    }

    #[test]
    fn cidrs_are_what_cel_calls_cidrs() {
        for good in [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "10.1.2.3/32",
            "::/0",
            "fd00::/8",
            "2001:db8::1/128",
        ] {
            assert!(is_cidr(good), "{good}");
        }
        for bad in [
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0.0/08",
            "x/8",
            "10.0.0.0/-1",
            "/8",
        ] {
            assert!(!is_cidr(bad), "{bad}");
        }
    }
}
