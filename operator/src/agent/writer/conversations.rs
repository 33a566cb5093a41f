//! The pure rules that turn one round's joined flows into the PodFlows this
//! node publishes (see the module above for the rules in words).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::Resource as _;

use super::super::join::{FlowDirection, OverlayLeg, PodFlowView};
use super::super::selection::{Rule, Selection};
use weir_api::labels;
use weir_api::{
    DestinationEndpoint, DirectionCounters, Observer, PodFlow, PodFlowSpec, Protocol,
    SourceEndpoint, TcpConnections, VxlanCounters,
};

/// Wall clock for the data path's boot-time stamps. Taken once, so the
/// same stamp always gives the same time (no writes from clock jitter).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    boot_epoch_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Self {
            boot_epoch_ns: wall - i128::from(crate::node_flows::boot_time_ns()),
        }
    }

    /// A clock whose boot happened at `boot_epoch_ns` (for tests).
    pub fn at(boot_epoch_ns: i128) -> Self {
        Self { boot_epoch_ns }
    }

    /// The time of a boot-time stamp, to the second (what the API keeps).
    pub fn time(&self, boot_ns: u64) -> Option<Time> {
        if boot_ns == 0 {
            return None;
        }
        let secs = (self.boot_epoch_ns + i128::from(boot_ns)).div_euclid(1_000_000_000);
        k8s_openapi::jiff::Timestamp::from_second(i64::try_from(secs).ok()?)
            .ok()
            .map(Time)
    }
}

/// Pod uids, for owner references.
pub trait PodUids {
    fn uid(&self, namespace: &str, pod: &str) -> Option<String>;
}

impl PodUids for HashMap<(String, String), String> {
    fn uid(&self, namespace: &str, pod: &str) -> Option<String> {
        self.get(&(namespace.to_owned(), pod.to_owned())).cloned()
    }
}

/// Node names by node address (InternalIP, ExternalIP), for the overlay's
/// outer addresses.
pub trait NodeNames {
    fn node_of(&self, ip: IpAddr) -> Option<String>;
}

/// No node is known.
impl NodeNames for () {
    fn node_of(&self, _: IpAddr) -> Option<String> {
        None
    }
}

impl NodeNames for HashMap<IpAddr, String> {
    fn node_of(&self, ip: IpAddr) -> Option<String> {
        self.get(&ip).cloned()
    }
}

/// One PodFlow as this node wants it to be.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredFlow {
    pub namespace: String,
    pub name: String,
    pub spec: PodFlowSpec,
    pub owner: Option<OwnerReference>,
    pub observer: Observer,
    pub flush_interval: Duration,
    pub max_pod_flows: i32,
    /// The profile's `status.activeFlows` (the controller's count).
    pub profile_active_flows: Option<i32>,
}

/// The conversations of one round.
#[derive(Debug, Default)]
pub struct Conversations {
    pub flows: Vec<DesiredFlow>,
    /// Conversations the selecting profile's filters exclude.
    pub filtered: u64,
}

#[derive(Default)]
struct Pair<'a> {
    egress: Vec<&'a PodFlowView>,
    ingress: Vec<&'a PodFlowView>,
}

#[derive(Default)]
struct Agg {
    forward: DirectionCounters,
    reverse: DirectionCounters,
    first_ns: u64,
    last_ns: u64,
    vxlan: Option<VxlanCounters>,
    tcp: Option<TcpConnections>,
}

/// TCP's RST flag in [`PodFlowView::tcp_flags`].
const TCP_RST: u32 = 0x04;

fn add(c: &mut DirectionCounters, views: &[&PodFlowView]) {
    for v in views {
        c.packets = c.packets.saturating_add(v.packets as i64);
        c.bytes = c.bytes.saturating_add(v.bytes as i64);
    }
}

fn add_leg(vx: &mut Option<VxlanCounters>, leg: &OverlayLeg, forward: bool) {
    let v = vx.get_or_insert_with(|| {
        let (src, dst) = if forward {
            (leg.outer_source, leg.outer_destination)
        } else {
            (leg.outer_destination, leg.outer_source)
        };
        VxlanCounters {
            vni: Some(i64::from(leg.vni)),
            outer_source: Some(src.to_string()),
            outer_destination: Some(dst.to_string()),
            ..Default::default()
        }
    });
    v.encap_packets = v.encap_packets.saturating_add(leg.encap_packets as i64);
    v.encap_bytes = v.encap_bytes.saturating_add(leg.encap_bytes as i64);
    v.decap_packets = v.decap_packets.saturating_add(leg.decap_packets as i64);
    v.decap_bytes = v.decap_bytes.saturating_add(leg.decap_bytes as i64);
}

fn pod_owner(namespace: &str, pod: &str, uids: &dyn PodUids) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: pod.to_owned(),
        uid: uids.uid(namespace, pod)?,
        controller: Some(false),
        block_owner_deletion: Some(false),
    })
}

/// The underlay address of the other end's node, from the overlay legs of a
/// 5-tuple's views: the outer destination of what this node encapsulated,
/// else the outer source of what it decapsulated.
fn remote_vtep(pair: &Pair<'_>) -> Option<IpAddr> {
    pair.egress
        .iter()
        .find_map(|v| v.overlay.as_ref().map(|l| l.outer_destination))
        .or_else(|| {
            pair.ingress
                .iter()
                .find_map(|v| v.overlay.as_ref().map(|l| l.outer_source))
        })
}

/// Groups a round's views into the PodFlows this node publishes (see the
/// module doc for the rules).
pub fn conversations(
    views: &[PodFlowView],
    node: &str,
    selection: &Selection,
    uids: &dyn PodUids,
    nodes: &dyn NodeNames,
    clock: &Clock,
) -> Conversations {
    // (pod id, proto, local ip, local port, remote ip, remote port)
    type Tuple = (u32, u8, IpAddr, u16, IpAddr, u16);
    let mut pairs: HashMap<Tuple, (Pair<'_>, &PodFlowView)> = HashMap::new();
    for v in views {
        let (Some(ns), true) = (&v.namespace, v.direction != FlowDirection::Unknown) else {
            continue;
        };
        if selection.rule(ns, &v.pod).is_none() {
            continue;
        }
        let has_ports = Protocol::from_ip_proto(v.protocol).is_some_and(Protocol::has_ports);
        let egress = v.direction == FlowDirection::Egress;
        let (local, lport, remote, rport) = if egress {
            (v.source, v.source_port, v.destination, v.destination_port)
        } else {
            (v.destination, v.destination_port, v.source, v.source_port)
        };
        let (lport, rport) = if has_ports { (lport, rport) } else { (0, 0) };
        let entry = pairs
            .entry((v.pod_id, v.protocol, local, lport, remote, rport))
            .or_insert_with(|| (Pair::default(), v));
        if egress {
            entry.0.egress.push(v)
        } else {
            entry.0.ingress.push(v)
        }
    }

    let mut out = Conversations::default();
    // (namespace, name, local pod is the source) → spec, owner, rule, counters
    type Grouped = (PodFlowSpec, Option<OwnerReference>, Arc<Rule>, Agg);
    let mut aggs: HashMap<(String, String, bool), Grouped> = HashMap::new();
    for ((_, proto, local_ip, lport, remote_ip, rport), (pair, any)) in pairs {
        let Some(protocol) = Protocol::from_ip_proto(proto) else {
            continue;
        };
        let ns = any.namespace.as_deref().unwrap_or_default();
        let Some(rule) = selection.rule(ns, &any.pod) else {
            continue;
        };
        let first =
            |vs: &[&PodFlowView]| vs.iter().map(|v| v.first_seen_ns).filter(|t| *t > 0).min();
        let local_is_source = match (first(&pair.egress), first(&pair.ingress)) {
            (Some(e), Some(i)) => e <= i,
            (_, None) => true,
            (None, Some(_)) => pair.egress.is_empty(),
        } && !pair.egress.is_empty();
        let port = |p: u16| protocol.has_ports().then_some(p);
        // The node behind the overlay, for an end known only by its address.
        let remote_node = || {
            remote_vtep(&pair)
                .and_then(|vtep| nodes.node_of(vtep))
                .filter(|n| n != node)
        };
        let (spec, owner) = if local_is_source {
            let source = SourceEndpoint::pod(ns, &any.pod, &local_ip.to_string(), node);
            let destination = match any.peer.as_ref().filter(|p| !p.namespace.is_empty()) {
                Some(peer) => DestinationEndpoint::pod(
                    &peer.namespace,
                    &peer.pod,
                    &remote_ip.to_string(),
                    &peer.node,
                    port(rport),
                ),
                None => DestinationEndpoint {
                    node: remote_node(),
                    ..DestinationEndpoint::address(&remote_ip.to_string(), port(rport))
                },
            };
            (
                PodFlowSpec {
                    source,
                    destination,
                    protocol,
                    profile: rule.profile.clone(),
                },
                pod_owner(ns, &any.pod, uids),
            )
        } else {
            let destination =
                DestinationEndpoint::pod(ns, &any.pod, &local_ip.to_string(), node, port(lport));
            let (source, owner) = match any.peer.as_ref().filter(|p| !p.namespace.is_empty()) {
                Some(peer) => {
                    let owner = if peer.namespace == rule.namespace {
                        pod_owner(&peer.namespace, &peer.pod, uids)
                    } else {
                        None
                    };
                    (
                        SourceEndpoint::pod(
                            &peer.namespace,
                            &peer.pod,
                            &remote_ip.to_string(),
                            &peer.node,
                        ),
                        owner,
                    )
                }
                // Opened from outside the pods weir knows: the local pod owns it.
                None => (
                    SourceEndpoint {
                        node: remote_node(),
                        ..SourceEndpoint::address(&remote_ip.to_string())
                    },
                    None,
                ),
            };
            let owner = owner.or_else(|| pod_owner(ns, &any.pod, uids));
            (
                PodFlowSpec {
                    source,
                    destination,
                    protocol,
                    profile: rule.profile.clone(),
                },
                owner,
            )
        };
        let destination_port = spec.destination.port.and_then(|p| u16::try_from(p).ok());
        if !rule.admits(protocol, destination_port, remote_ip) {
            out.filtered += 1;
            continue;
        }
        let name = spec.object_name();
        let (_, _, _, agg) = aggs
            .entry((rule.namespace.clone(), name, local_is_source))
            .or_insert_with(|| (spec, owner, rule.clone(), Agg::default()));
        let (fwd, rev) = if local_is_source {
            (&pair.egress, &pair.ingress)
        } else {
            (&pair.ingress, &pair.egress)
        };
        add(&mut agg.forward, fwd);
        add(&mut agg.reverse, rev);
        if protocol == Protocol::Tcp {
            // One pair is one connection (a local and a remote port).
            let tcp = agg.tcp.get_or_insert_with(TcpConnections::default);
            tcp.connections += 1;
            if fwd
                .iter()
                .chain(rev.iter())
                .any(|v| v.tcp_flags & TCP_RST != 0)
            {
                tcp.resets += 1;
            }
        }
        for (views, forward) in [(fwd, true), (rev, false)] {
            for v in views {
                if v.first_seen_ns > 0 && (agg.first_ns == 0 || v.first_seen_ns < agg.first_ns) {
                    agg.first_ns = v.first_seen_ns;
                }
                agg.last_ns = agg.last_ns.max(v.last_seen_ns);
                if let Some(leg) = &v.overlay {
                    add_leg(&mut agg.vxlan, leg, forward);
                }
            }
        }
    }
    let mut keys: Vec<(String, String, bool)> = aggs.keys().cloned().collect();
    keys.sort();
    for key in keys {
        // Both ends local and selected: publish the source pod's view only.
        if !key.2 && aggs.contains_key(&(key.0.clone(), key.1.clone(), true)) {
            continue;
        }
        let (spec, owner, rule, agg) = aggs.remove(&key).expect("listed key");
        out.flows.push(DesiredFlow {
            namespace: key.0,
            name: key.1,
            spec,
            owner,
            observer: Observer {
                node: node.to_owned(),
                forward: agg.forward,
                reverse: agg.reverse,
                first_seen: clock.time(agg.first_ns),
                last_seen: clock.time(agg.last_ns),
                vxlan: agg.vxlan,
                tcp: agg.tcp,
            },
            flush_interval: rule.flush_interval,
            max_pod_flows: rule.max_pod_flows,
            profile_active_flows: rule.active_flows,
        });
    }
    out
}

/// The server-side apply body of a PodFlow's spec, labels and owner.
pub fn spec_patch(flow: &DesiredFlow) -> serde_json::Value {
    let mut metadata = serde_json::json!({
        "name": flow.name,
        "labels": { labels::PROFILE: flow.spec.profile, labels::MANAGED_BY: labels::MANAGED_BY_WEIR },
    });
    if let Some(owner) = &flow.owner {
        metadata["ownerReferences"] = serde_json::json!([owner]);
    }
    serde_json::json!({
        "apiVersion": PodFlow::api_version(&()),
        "kind": PodFlow::kind(&()),
        "metadata": metadata,
        "spec": flow.spec,
    })
}
