//! `PodFlow`: one conversation of an observed pod, with its counters.
//!
//! ## Who writes what
//!
//! - `spec` is the conversation's identity, written once by the first node
//!   agent that publishes it and immutable after that (CEL
//!   `self == oldSelf`); every agent applies the same spec, so server-side
//!   apply lets them share it.
//! - `status.observers` is a list keyed by `node` (`x-kubernetes-list-type:
//!   map`): the agent of node N applies only its own entry, as field
//!   manager [`agent_field_manager`]`(N)` = `weir-agent/N`, so nodes never
//!   conflict and never overwrite one another ([`PodFlow::observer_patch`]).
//! - The summary in `status` (`totals`, `packets`, `bytes`, `firstSeen`,
//!   `lastSeen`, `vxlan`) is derived from the observers by one writer,
//!   field manager [`SUMMARY_FIELD_MANAGER`] (the cluster controller), with
//!   [`PodFlowStatus::summarize`] ([`PodFlow::summary_patch`]).
//!
//! ## Directions
//!
//! `source` is the end that sent the conversation's first packet (the client
//! for TCP), `destination` the other end, whose `port` the conversation is
//! addressed to. Counters are kept per direction: `forward` is source →
//! destination, `reverse` destination → source. These names do not depend
//! on which node observed the packets, so observers of both ends agree.
//!
//! ## Printed columns
//!
//! `kubectl get` columns are single JSONPaths, so what they print is stored
//! in single fields: `spec.source.display` and `spec.destination.display`
//! (`namespace/pod`, or the IP for an end that is not a pod; CEL rules keep
//! them equal to the fields they are made of, so they cannot drift), and
//! `status.packets` / `status.bytes` (forward + reverse of `status.totals`).
//!
//! (In CEL rules, `namespace` is a reserved word: the field is
//! `self.__namespace__` there.)

use std::fmt::Write as _;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, Resource as _};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Protocol;

/// The field manager of the status summary (the cluster controller).
pub const SUMMARY_FIELD_MANAGER: &str = "weir-operator";

/// The API server's limit on a field manager's length.
const FIELD_MANAGER_MAX: usize = 128;

/// The field manager a node's agent uses for its observer entry:
/// `weir-agent/<node>` (cut to the API server's 128 characters).
pub fn agent_field_manager(node: &str) -> String {
    let mut manager = format!("weir-agent/{node}");
    if manager.len() > FIELD_MANAGER_MAX {
        let mut end = FIELD_MANAGER_MAX;
        while !manager.is_char_boundary(end) {
            end -= 1;
        }
        manager.truncate(end);
    }
    manager
}

/// One conversation of an observed pod: who talked to whom, over which
/// protocol and port, and how much (in `status`).
// kube's printcolumn(...) entries repeat keys such as `type_` by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "PodFlow",
    namespaced,
    status = "PodFlowStatus",
    derive = "PartialEq",
    shortname = "pf",
    category = "weir",
    doc = "PodFlow is one conversation of a pod that a CaptureProfile observes, with its counters; written by weir's node agents.",
    printcolumn(
        name = "Source",
        type_ = "string",
        json_path = ".spec.source.display",
        description = "namespace/pod that opened the conversation"
    ),
    printcolumn(
        name = "Destination",
        type_ = "string",
        json_path = ".spec.destination.display",
        description = "namespace/pod, or IP, the conversation is addressed to"
    ),
    printcolumn(name = "Proto", type_ = "string", json_path = ".spec.protocol"),
    printcolumn(name = "Port", type_ = "integer", json_path = ".spec.destination.port"),
    printcolumn(
        name = "Packets",
        type_ = "integer",
        json_path = ".status.packets",
        description = "packets, both directions"
    ),
    printcolumn(
        name = "Bytes",
        type_ = "integer",
        json_path = ".status.bytes",
        description = "bytes, both directions"
    ),
    printcolumn(
        name = "VNI",
        type_ = "integer",
        json_path = ".status.vxlan.vni",
        description = "VXLAN network identifier"
    ),
    printcolumn(name = "Last-Seen", type_ = "date", json_path = ".status.lastSeen"),
    printcolumn(
        name = "Src-Node",
        type_ = "string",
        json_path = ".spec.source.node",
        priority = 1
    ),
    printcolumn(
        name = "Dst-Node",
        type_ = "string",
        json_path = ".spec.destination.node",
        priority = 1
    ),
    printcolumn(
        name = "Outer-Src",
        type_ = "string",
        json_path = ".status.vxlan.outerSource",
        description = "VXLAN outer source (node) IP, forward direction",
        priority = 1
    ),
    printcolumn(
        name = "Outer-Dst",
        type_ = "string",
        json_path = ".status.vxlan.outerDestination",
        description = "VXLAN outer destination (node) IP, forward direction",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self == oldSelf",
        "message": "spec is immutable: a PodFlow is one conversation"
    },
    {
        "rule": "(self.protocol == 'TCP' || self.protocol == 'UDP') == has(self.destination.port)",
        "message": "destination.port is required for TCP and UDP, and not allowed for ICMP",
        "fieldPath": ".destination.port",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct PodFlowSpec {
    /// Who sent the conversation's first packet: a pod, or an address.
    pub source: SourceEndpoint,
    /// The other end: a pod, or only an IP (outside the cluster, a service
    /// address, a pod weir does not know).
    pub destination: DestinationEndpoint,
    /// The IP protocol.
    pub protocol: Protocol,
    /// The CaptureProfile (in this namespace) that publishes this PodFlow.
    #[schemars(length(min = 1, max = 253))]
    pub profile: String,
}

/// The source end of a conversation: the pod that sent the first packet, or
/// only an address when a client outside the cluster (or one weir does not
/// know) opened a conversation with a local pod.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.pod) == has(self.__namespace__)",
        "message": "source.pod and source.namespace are set together"
    },
    {
        "rule": "self.display == (has(self.pod) && has(self.__namespace__) ? self.__namespace__ + '/' + self.pod : self.ip)",
        "message": "display must be namespace/pod for a pod, else the ip"
    }
]))]
pub struct SourceEndpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// The address this conversation came from.
    #[schemars(
        length(max = 45),
        extend("x-kubernetes-validations" = [{ "rule": "isIP(self)", "message": "ip must be an IPv4 or IPv6 address" }])
    )]
    pub ip: String,
    /// The node of the source pod, when it is one; for an address, the node
    /// the VXLAN overlay carried the conversation from (by its underlay
    /// address), when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub node: Option<String>,
    /// `namespace/pod`, or the IP when the source is not a pod.
    #[schemars(length(max = 317))]
    pub display: String,
}

/// The destination end of a conversation: a pod, or only an address.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.pod) == has(self.__namespace__)",
        "message": "destination.pod and destination.namespace are set together"
    },
    {
        "rule": "self.display == (has(self.pod) && has(self.__namespace__) ? self.__namespace__ + '/' + self.pod : self.ip)",
        "message": "display must be namespace/pod for a pod, else the ip"
    }
]))]
pub struct DestinationEndpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// The address the conversation is addressed to.
    #[schemars(
        length(max = 45),
        extend("x-kubernetes-validations" = [{ "rule": "isIP(self)", "message": "ip must be an IPv4 or IPv6 address" }])
    )]
    pub ip: String,
    /// The node of the destination pod, when it is one; for an address, the
    /// node the VXLAN overlay carried the conversation to (by its underlay
    /// address), when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub node: Option<String>,
    /// The destination port (TCP and UDP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self >= 1 && self <= 65535",
        "message": "port must be between 1 and 65535"
    }]))]
    pub port: Option<i32>,
    /// `namespace/pod`, or the IP when the destination is not a pod.
    #[schemars(length(max = 317))]
    pub display: String,
}

impl SourceEndpoint {
    /// A source pod; `display` is derived.
    pub fn pod(namespace: &str, pod: &str, ip: &str, node: &str) -> Self {
        Self {
            pod: Some(pod.to_owned()),
            namespace: Some(namespace.to_owned()),
            ip: ip.to_owned(),
            node: Some(node.to_owned()),
            display: format!("{namespace}/{pod}"),
        }
    }

    /// A source that is only an address; `display` is the IP.
    pub fn address(ip: &str) -> Self {
        Self {
            pod: None,
            namespace: None,
            ip: ip.to_owned(),
            node: None,
            display: ip.to_owned(),
        }
    }
}

impl DestinationEndpoint {
    /// A destination pod; `display` is derived.
    pub fn pod(namespace: &str, pod: &str, ip: &str, node: &str, port: Option<u16>) -> Self {
        Self {
            pod: Some(pod.to_owned()),
            namespace: Some(namespace.to_owned()),
            ip: ip.to_owned(),
            node: Some(node.to_owned()),
            port: port.map(i32::from),
            display: format!("{namespace}/{pod}"),
        }
    }

    /// A destination that is only an address; `display` is the IP.
    pub fn address(ip: &str, port: Option<u16>) -> Self {
        Self {
            pod: None,
            namespace: None,
            ip: ip.to_owned(),
            node: None,
            port: port.map(i32::from),
            display: ip.to_owned(),
        }
    }
}

impl PodFlowSpec {
    /// A stable object name for this conversation under its profile: the
    /// source pod's name (cut to 40 characters) and a 64-bit FNV-1a hash of
    /// everything that identifies the conversation. Every agent computes
    /// the same name, so they apply to the same object.
    pub fn object_name(&self) -> String {
        let mut key = String::new();
        let _ = write!(
            key,
            "{}\0{}\0{}\0{}\0{}\0{}\0{}",
            self.profile,
            self.source.display,
            self.source.ip,
            self.destination.display,
            self.destination.ip,
            self.destination.port.unwrap_or(0),
            self.protocol
        );
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        // Named after the pod the conversation belongs to: the source, or the
        // destination for a conversation opened from outside.
        let owner = self
            .source
            .pod
            .as_deref()
            .or(self.destination.pod.as_deref())
            .unwrap_or_default();
        let prefix: String = owner.chars().take(40).collect();
        let prefix = prefix.trim_end_matches(['-', '.']);
        if prefix.is_empty() {
            format!("flow-{hash:016x}")
        } else {
            format!("{prefix}-{hash:016x}")
        }
    }
}

/// Packets and bytes of one direction. Packets are wire packets (GSO
/// segments counted one by one), bytes wire bytes.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionCounters {
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub packets: i64,
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub bytes: i64,
}

impl DirectionCounters {
    /// Both counts added, saturating.
    pub(crate) fn add(self, other: Self) -> Self {
        Self {
            packets: self.packets.saturating_add(other.packets),
            bytes: self.bytes.saturating_add(other.bytes),
        }
    }
}

/// Both directions of a conversation.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Source → destination.
    #[serde(default)]
    pub forward: DirectionCounters,
    /// Destination → source.
    #[serde(default)]
    pub reverse: DirectionCounters,
}

/// What the VXLAN overlay carried of a conversation. Encap is counted where
/// packets leave a node into the overlay, decap where they arrive.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VxlanCounters {
    /// The VXLAN network identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16_777_215))]
    pub vni: Option<i64>,
    /// Outer source IP (the source pod's node) of forward packets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 45))]
    pub outer_source: Option<String>,
    /// Outer destination IP (the destination's node) of forward packets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 45))]
    pub outer_destination: Option<String>,
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub encap_packets: i64,
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub encap_bytes: i64,
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub decap_packets: i64,
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub decap_bytes: i64,
    /// Packets encapsulated by one end's node and not decapsulated by the
    /// other's, both directions (summary only, when both nodes observe;
    /// packets in flight at a flush show here until the next one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub loss_packets: Option<i64>,
}

/// What one node saw of the conversation; written only by that node's agent.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Observer {
    /// The node (the list's key).
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
    /// Source → destination, as this node counted it.
    #[serde(default)]
    pub forward: DirectionCounters,
    /// Destination → source, as this node counted it.
    #[serde(default)]
    pub reverse: DirectionCounters,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    /// This node's VXLAN counters of the conversation, when it crossed the
    /// overlay here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<VxlanCounters>,
    /// The conversation's TCP connections this node counts (TCP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpConnections>,
}

/// The TCP connections (distinct port pairs) of a conversation a node's
/// flow table holds, and how many of them carried a reset (RST) either way.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TcpConnections {
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub connections: i64,
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub resets: i64,
}

/// The counters of a conversation: each node's own entry in `observers`,
/// and the summary derived from them.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodFlowStatus {
    /// Per direction: the view of the source pod's node when it observes,
    /// else of the destination pod's node, else of the busiest observer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totals: Option<Totals>,
    /// `totals` forward + reverse packets (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub packets: Option<i64>,
    /// `totals` forward + reverse bytes (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub bytes: Option<i64>,
    /// The earliest `firstSeen` of the observers (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<Time>,
    /// The latest `lastSeen` of the observers (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    /// The overlay's view: VNI and outer IPs of the forward direction, encap
    /// and decap summed over the observers, and the loss between them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<VxlanCounters>,
    /// The TCP connections as the observer of `totals` counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpConnections>,
    /// The alerts the profile asks for (`NewPeer`, `RateSpike`,
    /// `TCPResets`, `OverlayLoss`), written by the controller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"])
    )]
    pub conditions: Vec<Condition>,
    /// One entry per node that saw the conversation, each written only by
    /// that node's agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"])
    )]
    pub observers: Vec<Observer>,
}

impl PodFlow {
    /// The server-side apply body with which a node's agent publishes its
    /// own observer entry (apply it to the `status` subresource as
    /// [`agent_field_manager`]`(&observer.node)`).
    pub fn observer_patch(name: &str, observer: &Observer) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": PodFlow::api_version(&()),
            "kind": PodFlow::kind(&()),
            "metadata": { "name": name },
            "status": { "observers": [observer] },
        })
    }

    /// The server-side apply body with which the summary's writer publishes
    /// it (apply it to the `status` subresource as [`SUMMARY_FIELD_MANAGER`]).
    pub fn summary_patch(name: &str, summary: &PodFlowStatus) -> serde_json::Value {
        let mut status = serde_json::to_value(summary).expect("a status serializes");
        if let Some(map) = status.as_object_mut() {
            map.remove("observers");
        }
        serde_json::json!({
            "apiVersion": PodFlow::api_version(&()),
            "kind": PodFlow::kind(&()),
            "metadata": { "name": name },
            "status": status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn spec() -> PodFlowSpec {
        PodFlowSpec {
            source: SourceEndpoint::pod("shop", "web-1", "10.244.1.5", "node-a"),
            destination: DestinationEndpoint::pod(
                "shop",
                "db-0",
                "10.244.2.7",
                "node-b",
                Some(5432),
            ),
            protocol: Protocol::Tcp,
            profile: "all".into(),
        }
    }

    fn observer(node: &str, fwd: (i64, i64), rev: (i64, i64)) -> Observer {
        Observer {
            node: node.into(),
            forward: DirectionCounters {
                packets: fwd.0,
                bytes: fwd.1,
            },
            reverse: DirectionCounters {
                packets: rev.0,
                bytes: rev.1,
            },
            ..Default::default()
        }
    }

    #[test]
    fn display_fields_are_derived() {
        let s = spec();
        assert_eq!(s.source.display, "shop/web-1");
        assert_eq!(s.destination.display, "shop/db-0");
        assert_eq!(
            DestinationEndpoint::address("1.1.1.1", Some(53)).display,
            "1.1.1.1"
        );
        let v = serde_json::to_value(DestinationEndpoint::address("1.1.1.1", None)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({ "ip": "1.1.1.1", "display": "1.1.1.1" })
        );
    }

    #[test]
    fn object_names_are_stable_and_distinct() {
        // Golden names: every node, and every version of weir, must compute
        // these same names for these conversations (the agents on both ends
        // write one object). A change here renames every PodFlow.
        let a = spec();
        assert_eq!(a.object_name(), "web-1-429c50a7f286774b");
        let mut b = spec();
        b.destination.port = Some(5433);
        assert_eq!(b.object_name(), "web-1-4f374fd26fc56838");
        let mut c = spec();
        c.profile = "other".into();
        assert_eq!(c.object_name(), "web-1-48faa1a54c34d906");
        // The prefix is the pod's name cut to 40 characters, without a
        // trailing '-' or '.'.
        let mut long = spec();
        long.source.pod = Some(format!("{}-x", "p".repeat(39)));
        assert_eq!(
            long.object_name(),
            format!("{}-429c50a7f286774b", "p".repeat(39))
        );
    }

    #[test]
    fn field_managers_name_the_node_within_the_limit() {
        assert_eq!(agent_field_manager("node-a"), "weir-agent/node-a");
        assert_eq!(agent_field_manager(&"n".repeat(253)).len(), 128);
    }

    #[test]
    fn summary_prefers_the_source_node_and_sums_the_overlay() {
        let mut a = observer("node-a", (10, 1000), (8, 800));
        a.first_seen = Some(time("2026-01-01T00:00:05Z"));
        a.last_seen = Some(time("2026-01-01T00:01:00Z"));
        a.vxlan = Some(VxlanCounters {
            vni: Some(1),
            outer_source: Some("192.168.0.1".into()),
            outer_destination: Some("192.168.0.2".into()),
            encap_packets: 10,
            encap_bytes: 1500,
            decap_packets: 8,
            decap_bytes: 1200,
            loss_packets: None,
        });
        let mut b = observer("node-b", (9, 900), (8, 800));
        b.first_seen = Some(time("2026-01-01T00:00:04Z"));
        b.last_seen = Some(time("2026-01-01T00:01:02Z"));
        b.vxlan = Some(VxlanCounters {
            vni: Some(1),
            outer_source: Some("192.168.0.2".into()),
            outer_destination: Some("192.168.0.1".into()),
            encap_packets: 8,
            encap_bytes: 1200,
            decap_packets: 9,
            decap_bytes: 1350,
            loss_packets: None,
        });
        let s = PodFlowStatus::summarize(&spec(), &[b.clone(), a.clone()]);
        assert_eq!(
            s.totals,
            Some(Totals {
                forward: a.forward,
                reverse: a.reverse
            })
        );
        assert_eq!((s.packets, s.bytes), (Some(18), Some(1800)));
        assert_eq!(s.first_seen, Some(time("2026-01-01T00:00:04Z")));
        assert_eq!(s.last_seen, Some(time("2026-01-01T00:01:02Z")));
        let v = s.vxlan.unwrap();
        assert_eq!(
            v.outer_source.as_deref(),
            Some("192.168.0.1"),
            "forward direction: the source node's view"
        );
        assert_eq!((v.encap_packets, v.decap_packets), (18, 17));
        assert_eq!(
            v.loss_packets,
            Some(1),
            "node-a encapsulated 10 forward packets, node-b decapsulated 9"
        );
        assert!(s.observers.is_empty());

        // Only the destination's node observes: its view, and no loss figure.
        let s = PodFlowStatus::summarize(&spec(), &[b.clone()]);
        assert_eq!(s.packets, Some(17));
        assert_eq!(s.vxlan.unwrap().loss_packets, None);
        // Nobody observes: an empty summary.
        assert_eq!(
            PodFlowStatus::summarize(&spec(), &[]),
            PodFlowStatus::default()
        );
    }

    #[test]
    fn patches_carry_only_what_their_writer_owns() {
        let o = observer("node-a", (1, 100), (0, 0));
        let p = PodFlow::observer_patch("f", &o);
        assert_eq!(p["apiVersion"], "weir.dev/v1alpha1");
        assert_eq!(p["kind"], "PodFlow");
        assert_eq!(
            p["status"].as_object().unwrap().keys().collect::<Vec<_>>(),
            ["observers"]
        );
        assert!(p.get("spec").is_none());
        let summary = PodFlowStatus::summarize(&spec(), &[o]);
        let p = PodFlow::summary_patch("f", &summary);
        assert!(p["status"].get("observers").is_none());
        assert_eq!(p["status"]["packets"], 1);
    }
}
