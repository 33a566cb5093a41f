//! Joins what the split programs counted per pod with what the VXLAN monitor
//! counted on the underlay, and names the peers. Pure: the same reading gives
//! the same answer, so it is tested without a kernel.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::Serialize;
use weir_cni::state::AttachmentRecord;
use weir_ebpf::abi::{Direction, FlowKey};
use weir_ebpf::vxlan_abi::{VxDirection, VxFlowCounters, VxFlowKey};

use super::peers::{Peer, PeerDirectory};
use super::reading::NodeReading;

/// The overlay leg of a flow as this node saw it on its underlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OverlayLeg {
    pub vni: u32,
    pub outer_source: IpAddr,
    pub outer_destination: IpAddr,
    pub encap_packets: u64,
    pub encap_bytes: u64,
    pub decap_packets: u64,
    pub decap_bytes: u64,
}

/// One direction of one conversation of a local pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodFlowView {
    pub pod_id: u32,
    pub namespace: Option<String>,
    /// The pod's name, or `pod-id:N` for a pod weir no longer has a record of.
    pub pod: String,
    pub direction: &'static str,
    pub protocol: u8,
    pub source: IpAddr,
    pub source_port: u16,
    pub destination: IpAddr,
    pub destination_port: u16,
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub tcp_flags: u32,
    /// The other end, when known: a local pod or one the directory names.
    pub peer: Option<Peer>,
    /// Set when the flow crossed the VXLAN overlay on this node.
    pub overlay: Option<OverlayLeg>,
}

/// Key of the inner 5-tuple as both sides see it; VXLAN carries the pod's
/// packet unchanged, so the inner header is the pod flow's header.
type InnerTuple = (IpAddr, IpAddr, u8, u16, u16);

pub fn join(reading: &NodeReading, node: &str, directory: &dyn PeerDirectory) -> Vec<PodFlowView> {
    let Some(pods) = &reading.pods else {
        return Vec::new();
    };
    let by_id: HashMap<u32, &AttachmentRecord> =
        reading.records.iter().map(|r| (r.pod_id, r)).collect();
    let local_peers = local_directory(&reading.records, node);
    let mut encap: HashMap<InnerTuple, OverlayLeg> = HashMap::new();
    let mut decap: HashMap<InnerTuple, OverlayLeg> = HashMap::new();
    for (key, counters) in reading.overlay.iter().flat_map(|o| &o.flows) {
        let side = match key.direction() {
            Some(VxDirection::Encap) => &mut encap,
            Some(VxDirection::Decap) => &mut decap,
            None => continue,
        };
        merge_leg(side, key, counters);
    }

    let mut views: Vec<PodFlowView> = pods
        .flows
        .iter()
        .map(|(key, counters)| {
            let record = by_id.get(&key.pod_id);
            let direction = key.direction();
            let tuple = inner_tuple(key);
            let (remote, overlay) = match direction {
                Some(Direction::FromPod) => (key.dst_ip(), encap.get(&tuple).cloned()),
                Some(Direction::ToPod) => (key.src_ip(), decap.get(&tuple).cloned()),
                None => (key.dst_ip(), None),
            };
            PodFlowView {
                pod_id: key.pod_id,
                namespace: record.and_then(|r| r.pod.namespace.clone()),
                pod: record
                    .and_then(|r| r.pod.name.clone())
                    .unwrap_or_else(|| format!("pod-id:{}", key.pod_id)),
                direction: match direction {
                    Some(Direction::FromPod) => "egress",
                    Some(Direction::ToPod) => "ingress",
                    None => "unknown",
                },
                protocol: key.proto,
                source: key.src_ip(),
                source_port: key.sport,
                destination: key.dst_ip(),
                destination_port: key.dport,
                packets: counters.packets,
                bytes: counters.bytes,
                first_seen_ns: counters.first_seen_ns,
                last_seen_ns: counters.last_seen_ns,
                tcp_flags: counters.tcp_flags,
                peer: local_peers
                    .get(&remote)
                    .cloned()
                    .or_else(|| directory.lookup(remote)),
                overlay,
            }
        })
        .collect();
    views.sort_by(|a, b| {
        (
            &a.namespace,
            &a.pod,
            a.direction,
            a.source,
            a.source_port,
            a.destination,
            a.destination_port,
        )
            .cmp(&(
                &b.namespace,
                &b.pod,
                b.direction,
                b.source,
                b.source_port,
                b.destination,
                b.destination_port,
            ))
    });
    views
}

fn inner_tuple(key: &FlowKey) -> InnerTuple {
    (key.src_ip(), key.dst_ip(), key.proto, key.sport, key.dport)
}

fn merge_leg(side: &mut HashMap<InnerTuple, OverlayLeg>, key: &VxFlowKey, c: &VxFlowCounters) {
    let tuple = (
        key.inner_src_ip(),
        key.inner_dst_ip(),
        key.inner_proto,
        key.inner_sport,
        key.inner_dport,
    );
    let leg = side.entry(tuple).or_insert_with(|| OverlayLeg {
        vni: key.vni,
        outer_source: key.outer_src_ip(),
        outer_destination: key.outer_dst_ip(),
        encap_packets: 0,
        encap_bytes: 0,
        decap_packets: 0,
        decap_bytes: 0,
    });
    leg.encap_packets += c.encap_packets;
    leg.encap_bytes += c.encap_bytes;
    leg.decap_packets += c.decap_packets;
    leg.decap_bytes += c.decap_bytes;
}

fn local_directory(records: &[AttachmentRecord], node: &str) -> HashMap<IpAddr, Peer> {
    let mut peers = HashMap::new();
    for record in records {
        let (Some(namespace), Some(pod)) = (&record.pod.namespace, &record.pod.name) else {
            continue;
        };
        for cidr in &record.ips {
            let ip = cidr
                .split('/')
                .next()
                .and_then(|ip| ip.parse::<IpAddr>().ok());
            if let Some(ip) = ip {
                peers.insert(
                    ip,
                    Peer {
                        namespace: namespace.clone(),
                        pod: pod.clone(),
                        node: node.to_string(),
                    },
                );
            }
        }
    }
    peers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::reading::{OverlaySide, PodSide};
    use weir_cni::state::PodIdentity;
    use weir_ebpf::abi::FlowCounters;

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
            attach_mode: "tcx".into(),
            pod_ifindex: 4,
            outer_ifindex: 2,
            inner_ifindex: 3,
            created_unix: 0,
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
        let out = views
            .iter()
            .find(|v| v.direction == "egress" && v.destination.to_string() == "10.244.1.7")
            .unwrap();
        assert_eq!(out.peer.as_ref().unwrap().node, "node-b");
        let leg = out.overlay.as_ref().unwrap();
        assert_eq!((leg.vni, leg.encap_packets, leg.decap_packets), (1, 10, 0));
        assert_eq!(leg.outer_destination.to_string(), "192.168.50.2");
        let back = views.iter().find(|v| v.direction == "ingress").unwrap();
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
