//! Joins what the split programs counted per pod with what the VXLAN monitor
//! counted on the underlay, and names the peers. Pure: the same reading gives
//! the same answer, so it is tested without a kernel.

use std::net::IpAddr;

use serde::Serialize;

use super::peers::{Peer, PeerDirectory};
use super::reading::{FlowSink, NodeReading};
use super::table::FlowTable;

/// The overlay leg of a flow as this node saw it on its underlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OverlayLeg {
    /// The VXLAN network identifier.
    pub vni: u32,
    /// Outer (underlay) source address of the flow's packets.
    pub outer_source: IpAddr,
    /// Outer (underlay) destination address.
    pub outer_destination: IpAddr,
    /// Packets this node encapsulated (sent into the overlay).
    pub encap_packets: u64,
    pub encap_bytes: u64,
    /// Packets this node decapsulated (received from the overlay).
    pub decap_packets: u64,
    pub decap_bytes: u64,
}

/// Which way a local pod's flow goes, as the agent names it (`egress`:
/// sent by the pod; `ingress`: towards it). Decoded once from the data
/// path's direction byte; `unknown` is a byte this build does not know.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum FlowDirection {
    Egress,
    Ingress,
    Unknown,
}

impl FlowDirection {
    /// From a [`weir_ebpf::abi::FlowKey`]'s direction byte.
    pub fn from_raw(raw: u8) -> Self {
        match weir_ebpf::abi::Direction::from_raw(raw) {
            Some(weir_ebpf::abi::Direction::FromPod) => Self::Egress,
            Some(weir_ebpf::abi::Direction::ToPod) => Self::Ingress,
            None => Self::Unknown,
        }
    }

    /// `egress`, `ingress` or `unknown`: the JSON and metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Egress => "egress",
            Self::Ingress => "ingress",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for FlowDirection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One direction of one conversation of a local pod: the flow as the agent
/// serves it on `/flows` and `weir-operator agent dump -o json` prints it
/// (docs/flow.schema.json is generated from this type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "weir flow", rename = "Flow")]
pub struct PodFlowView {
    /// The node-unique id the CNI plugin gave the pod.
    pub pod_id: u32,
    /// The pod's namespace; absent for a pod recorded without one (podman
    /// passes only K8S_POD_NAME) or one weir no longer has a record of.
    pub namespace: Option<String>,
    /// The pod's name, or `pod-id:N` for a pod weir no longer has a record of.
    pub pod: String,
    /// `egress` (sent by the pod) or `ingress` (towards the pod).
    pub direction: FlowDirection,
    /// The IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...).
    pub protocol: u8,
    pub source: IpAddr,
    /// TCP/UDP source port; for ICMP the type.
    pub source_port: u16,
    pub destination: IpAddr,
    /// TCP/UDP destination port; for ICMP the code.
    pub destination_port: u16,
    /// Wire packets (GSO segments counted one by one).
    pub packets: u64,
    /// Wire bytes.
    pub bytes: u64,
    /// First packet, nanoseconds since the node booted (CLOCK_BOOTTIME).
    pub first_seen_ns: u64,
    /// Last packet, nanoseconds since the node booted (kernel tick resolution).
    pub last_seen_ns: u64,
    /// The TCP flags seen, OR-ed (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, URG 0x20).
    pub tcp_flags: u32,
    /// The other end, when known: a local pod or one the directory names.
    pub peer: Option<Peer>,
    /// Set when the flow crossed the VXLAN overlay on this node.
    pub overlay: Option<OverlayLeg>,
}

/// The JSON schema of one flow ([`PodFlowView`]), as docs/flow.schema.json
/// holds it.
pub fn flow_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(PodFlowView)).expect("a schema serializes")
}

/// Joins one reading: every pod flow with its overlay leg and its peer, in
/// output order. The agent keeps a [`FlowTable`] across collections and
/// streams into it; this builds a fresh one from a reading already in
/// memory (`agent dump`, tests).
pub fn join(reading: &NodeReading, node: &str, directory: &dyn PeerDirectory) -> Vec<PodFlowView> {
    table(reading, node, directory)
        .map(|t| t.views())
        .unwrap_or_default()
}

/// The table of one reading; `None` before the pod maps are pinned.
fn table(reading: &NodeReading, node: &str, directory: &dyn PeerDirectory) -> Option<FlowTable> {
    let pods = reading.pods.as_ref()?;
    let mut table = FlowTable::new(node);
    let mut round = table.round(directory);
    round.records(&reading.records);
    if reading.overlay.is_some() {
        round.overlay_monitored();
    }
    for (key, counters) in reading.overlay.iter().flat_map(|o| &o.flows) {
        round.overlay_flow(key, counters);
    }
    for (key, counters) in &pods.flows {
        round.pod_flow(key, counters);
    }
    round.finish(None, true);
    Some(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use crate::agent::reading::{OverlaySide, PodSide};
    use weir_ebpf::abi::{Direction, FlowCounters, FlowKey};
    use weir_ebpf::vxlan_abi::{VxDirection, VxFlowCounters, VxFlowKey};
    use weir_node_state::{AttachmentRecord, PodIdentity};

    fn record(pod_id: u32, name: &str, ip: &str) -> AttachmentRecord {
        AttachmentRecord {
            network: "cbr0".into(),
            container_id: format!("c{pod_id}"),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            pod: PodIdentity {
                namespace: Some("shop".into()),
                name: Some(name.into()),
                uid: None,
                infra_container_id: None,
            },
            pod_id,
            mac: "aa:bb:cc:dd:ee:ff".into(),
            ips: vec![format!("{ip}/24")],
            attach_mode: weir_node_state::AttachMode::Tcx,
            pod_ifindex: 4,
            outer_ifindex: 2,
            inner_ifindex: 3,
            created_unix: 0,
            phase: weir_node_state::Phase::Split,
            attachment_id: None,
            original: None,
        }
    }

    fn pod_flow(
        pod_id: u32,
        dir: Direction,
        src: &str,
        dst: &str,
        packets: u64,
    ) -> (FlowKey, FlowCounters) {
        let mut key = FlowKey {
            pod_id,
            direction: dir as u8,
            proto: 17,
            sport: 4000,
            dport: 53,
            ..Default::default()
        };
        if dir == Direction::ToPod {
            (key.sport, key.dport) = (53, 4000);
        }
        key.set_addrs(src.parse().unwrap(), dst.parse().unwrap());
        (
            key,
            FlowCounters {
                packets,
                bytes: packets * 100,
                ..Default::default()
            },
        )
    }

    fn vx_flow(
        dir: VxDirection,
        inner: (&str, &str, u16, u16),
        packets: u64,
    ) -> (VxFlowKey, VxFlowCounters) {
        let mut key = VxFlowKey {
            vni: 1,
            inner_proto: 17,
            inner_sport: inner.2,
            inner_dport: inner.3,
            direction: dir as u8,
            ..Default::default()
        };
        key.set_outer(
            "192.168.50.1".parse().unwrap(),
            "192.168.50.2".parse().unwrap(),
        );
        key.set_inner(inner.0.parse().unwrap(), inner.1.parse().unwrap());
        let mut c = VxFlowCounters {
            packets,
            bytes: packets * 150,
            ..Default::default()
        };
        match dir {
            VxDirection::Encap => (c.encap_packets, c.encap_bytes) = (packets, packets * 150),
            VxDirection::Decap => (c.decap_packets, c.decap_bytes) = (packets, packets * 150),
        }
        (key, c)
    }

    #[test]
    fn remote_flows_get_their_overlay_leg_and_peer_local_ones_do_not() {
        let reading = NodeReading {
            records: vec![
                record(1, "cart", "10.244.0.3"),
                record(2, "web", "10.244.0.4"),
            ],
            pods: Some(PodSide {
                flows: vec![
                    pod_flow(1, Direction::FromPod, "10.244.0.3", "10.244.1.7", 10),
                    pod_flow(1, Direction::ToPod, "10.244.1.7", "10.244.0.3", 9),
                    pod_flow(1, Direction::FromPod, "10.244.0.3", "10.244.0.4", 5),
                    pod_flow(9, Direction::FromPod, "10.244.0.9", "1.1.1.1", 1),
                ],
                ..Default::default()
            }),
            overlay: Some(OverlaySide {
                flows: vec![
                    vx_flow(
                        VxDirection::Encap,
                        ("10.244.0.3", "10.244.1.7", 4000, 53),
                        10,
                    ),
                    vx_flow(
                        VxDirection::Decap,
                        ("10.244.1.7", "10.244.0.3", 53, 4000),
                        9,
                    ),
                ],
                ..Default::default()
            }),
            took: Default::default(),
        };
        let directory: HashMap<IpAddr, Peer> = [(
            "10.244.1.7".parse().unwrap(),
            Peer {
                namespace: "shop".into(),
                pod: "db-0".into(),
                node: "node-b".into(),
            },
        )]
        .into();
        let views = join(&reading, "node-a", &directory);
        assert_eq!(views.len(), 4);
        // /flows is rendered from the table without views: the same JSON.
        let mut json = Vec::new();
        table(&reading, "node-a", &directory)
            .unwrap()
            .write_json(&mut json)
            .unwrap();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            serde_json::to_string(&views).unwrap()
        );
        let out = views
            .iter()
            .find(|v| {
                v.direction == FlowDirection::Egress && v.destination.to_string() == "10.244.1.7"
            })
            .unwrap();
        assert_eq!(out.peer.as_ref().unwrap().node, "node-b");
        let leg = out.overlay.as_ref().unwrap();
        assert_eq!((leg.vni, leg.encap_packets, leg.decap_packets), (1, 10, 0));
        assert_eq!(leg.outer_destination.to_string(), "192.168.50.2");
        let back = views
            .iter()
            .find(|v| v.direction == FlowDirection::Ingress)
            .unwrap();
        assert_eq!(back.overlay.as_ref().unwrap().decap_packets, 9);
        let local = views
            .iter()
            .find(|v| v.destination.to_string() == "10.244.0.4")
            .unwrap();
        assert_eq!(
            local.peer.as_ref().unwrap(),
            &Peer {
                namespace: "shop".into(),
                pod: "web".into(),
                node: "node-a".into()
            }
        );
        assert_eq!(local.overlay, None);
        let orphan = views.iter().find(|v| v.pod_id == 9).unwrap();
        assert_eq!(
            (
                orphan.pod.as_str(),
                orphan.namespace.as_deref(),
                orphan.peer.as_ref()
            ),
            ("pod-id:9", None, None)
        );
    }
}
