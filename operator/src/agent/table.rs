//! The agent's flow table: every pod flow of the latest reading, joined with
//! its VXLAN overlay leg and its peer, kept from one collection to the next
//! and updated in place.
//!
//! Memory is what the agent is judged on (issue #3: ≤ 30 MiB with 10k pod
//! flows and their 10k overlay flows), so the table keeps one compact row
//! per flow and nothing per round that grows with the flows:
//! - the maps are streamed into it ([`super::reading::read_into`]), never
//!   copied into vectors;
//! - a row is the flow key, its counters and a shared [`Peer`]; pod and
//!   namespace names live once per pod, peers once per address and round;
//! - the row's counters are also the baseline of the per-pod totals: growth
//!   since the previous reading goes to [`Totals`] as the row is updated,
//!   and a flow gone from the map (evicted) is dropped, so it counts from
//!   zero when it returns;
//! - overlay legs are merged into a second table keyed by the inner 5-tuple
//!   and direction, also updated in place, and looked up when a row is
//!   rendered;
//! - [`FlowTable::write_json`] renders `/flows` straight from the rows, and
//!   [`FlowTable::views`] materializes [`PodFlowView`]s only for the callers
//!   that need owned rows (the PodFlow writer, `agent dump`).
//!
//! Rows are ordered for output as the join always ordered its views: by
//! namespace, pod, direction, source, source port, destination, destination
//! port (then pod id).

use std::cmp::Ordering;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hashbrown::HashMap;
use serde::Serialize;
use weir_ebpf::abi::{Direction, FlowCounters, FlowKey};
use weir_ebpf::vxlan_abi::{VxDirection, VxFlowCounters, VxFlowKey};
use weir_node_state::AttachmentRecord;

use super::join::{FlowDirection, OverlayLeg, PodFlowView};
use super::peers::{Peer, PeerDirectory};
use super::reading::FlowSink;
use super::totals::{Count, SeriesKey, Totals};

/// How a local pod is named in rows and series.
#[derive(Debug, Clone)]
struct PodName {
    namespace: Option<Arc<str>>,
    /// The pod's name, or `pod-id:N` for a pod weir has no record of.
    pod: Arc<str>,
}

/// Inner 5-tuple and direction of an overlay leg; addresses normalized as
/// [`IpAddr`] compares them (IPv4 in the first 4 bytes, the rest zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct LegKey {
    /// 0: encap (sent by a local pod), 1: decap (towards a local pod).
    direction: u8,
    family: u8,
    proto: u8,
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
}

#[derive(Debug, Clone)]
struct Leg {
    leg: OverlayLeg,
    /// The collection round whose overlay flows these counters sum.
    round: u32,
    /// Whether a pod flow of that round joined it (others are dropped).
    used: bool,
}

/// One pod flow's row (besides its key).
#[derive(Debug, Clone)]
struct Row {
    packets: u64,
    bytes: u64,
    first_seen_ns: u64,
    last_seen_ns: u64,
    tcp_flags: u32,
    /// The round that last saw the flow in the map.
    round: u32,
    peer: Option<Arc<Peer>>,
    /// Growth of a new flow to a remote peer read before its overlay leg
    /// was: held one round for the leg to name its VNI (see `pod_flow`).
    held: Count,
}

/// Growth of one round, by pod id, direction byte and VNI.
type Growth = HashMap<(u32, u8, Option<u32>), Count>;

/// See the module documentation.
#[derive(Debug)]
pub struct FlowTable {
    node: String,
    round: u32,
    names: HashMap<u32, PodName>,
    local_peers: HashMap<IpAddr, Arc<Peer>>,
    /// This round's answers of the peer directory, by remote address.
    remote_peers: HashMap<IpAddr, Option<Arc<Peer>>>,
    legs: HashMap<LegKey, Leg>,
    rows: HashMap<FlowKey, Row>,
}

/// One collection into a [`FlowTable`]: a [`FlowSink`] for
/// [`super::reading::read_into`], closed with [`Round::finish`].
pub struct Round<'a> {
    table: &'a mut FlowTable,
    directory: &'a dyn PeerDirectory,
    growth: Growth,
    /// A VXLAN monitor's maps were read this round.
    overlay_monitored: bool,
}

impl FlowTable {
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            round: 0,
            names: HashMap::new(),
            local_peers: HashMap::new(),
            remote_peers: HashMap::new(),
            legs: HashMap::new(),
            rows: HashMap::new(),
        }
    }

    /// Starts a collection; peers not local to the node are named by
    /// `directory`, once per address.
    pub fn round<'a>(&'a mut self, directory: &'a dyn PeerDirectory) -> Round<'a> {
        self.round = self.round.wrapping_add(1);
        self.remote_peers.clear();
        Round {
            table: self,
            directory,
            growth: Growth::new(),
            overlay_monitored: false,
        }
    }

    /// Number of pod flows in the table.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows in output order, each with its name and leg.
    fn sorted(&self) -> Vec<RowRef<'_>> {
        let mut out: Vec<RowRef<'_>> = self
            .rows
            .iter()
            .map(|(key, row)| RowRef {
                key,
                row,
                name: self.names.get(&key.pod_id),
                leg: leg_key(key).and_then(|k| self.legs.get(&k)).map(|l| &l.leg),
            })
            .collect();
        out.sort_unstable_by(RowRef::cmp);
        out
    }

    /// The rows as owned views, in output order.
    pub fn views(&self) -> Vec<PodFlowView> {
        self.sorted()
            .iter()
            .map(|r| {
                let v = r.view();
                PodFlowView {
                    pod_id: v.pod_id,
                    namespace: v.namespace.map(str::to_owned),
                    pod: v.pod.to_owned(),
                    direction: v.direction,
                    protocol: v.protocol,
                    source: v.source,
                    source_port: v.source_port,
                    destination: v.destination,
                    destination_port: v.destination_port,
                    packets: v.packets,
                    bytes: v.bytes,
                    first_seen_ns: v.first_seen_ns,
                    last_seen_ns: v.last_seen_ns,
                    tcp_flags: v.tcp_flags,
                    peer: v.peer.cloned(),
                    overlay: v.overlay.cloned(),
                }
            })
            .collect()
    }

    /// The rows as the JSON array `/flows` serves: exactly what serializing
    /// [`FlowTable::views`] gives, without building the views.
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let rows = self.sorted();
        serde_json::to_writer(out, &Rows(&rows))
    }

    /// [`write_json`](Self::write_json) of the flows whose pod's namespace
    /// `keep` accepts (`None`: a pod recorded without one, or gone).
    pub fn write_json_filtered(
        &self,
        out: &mut Vec<u8>,
        keep: &dyn Fn(Option<&str>) -> bool,
    ) -> serde_json::Result<()> {
        let mut rows = self.sorted();
        rows.retain(|r| keep(r.namespace()));
        serde_json::to_writer(out, &Rows(&rows))
    }

    /// The namespaces of the pods with flows in the table.
    pub fn namespaces(&self) -> std::collections::BTreeSet<String> {
        self.names
            .values()
            .filter_map(|n| n.namespace.as_deref().map(str::to_owned))
            .collect()
    }
}

impl Round<'_> {
    /// Ends the collection. `complete`: every map was read, so the flows and
    /// legs this round did not see are gone from the maps and are dropped
    /// (a flow that returns counts from zero). After a failed read they are
    /// kept. Either way the growth seen is added to `totals`, so no count is
    /// lost or counted twice.
    pub fn finish(self, totals: Option<&mut Totals>, complete: bool) {
        let Round {
            table, mut growth, ..
        } = self;
        let round = table.round;
        if complete {
            // Growth held for a leg that never came, of flows now gone.
            for (key, row) in &table.rows {
                if row.round != round && row.held != Count::default() {
                    add(&mut growth, (key.pod_id, key.direction, None), row.held);
                }
            }
            table.rows.retain(|_, r| r.round == round);
            table.legs.retain(|_, l| l.round == round && l.used);
            shrink(&mut table.rows);
            shrink(&mut table.legs);
        } else {
            // Rows this round did not reach keep a name.
            for key in table.rows.keys() {
                table.names.entry(key.pod_id).or_insert_with(|| PodName {
                    namespace: None,
                    pod: Arc::from(orphan(key.pod_id)),
                });
            }
        }
        table.remote_peers.clear();
        table.remote_peers.shrink_to(256);
        let Some(totals) = totals else {
            return;
        };
        let mut series: Vec<(SeriesKey, Count)> = growth
            .into_iter()
            .map(|((pod_id, direction, vni), grew)| {
                let name = table.names.get(&pod_id);
                let key = SeriesKey {
                    namespace: name
                        .and_then(|n| n.namespace.as_deref())
                        .unwrap_or_default()
                        .to_owned(),
                    pod: name.map_or_else(|| orphan(pod_id), |n| n.pod.to_string()),
                    direction: direction_name(direction).as_str(),
                    vni: vni.map(|v| v.to_string()).unwrap_or_default(),
                };
                (key, grew)
            })
            .collect();
        series.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (key, grew) in series {
            totals.add(key, grew);
        }
    }
}

/// Gives memory back after the flows dropped to well below the table's size.
fn shrink<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 1024 && map.capacity() > 4 * map.len() {
        map.shrink_to(map.len() * 2);
    }
}

fn add(growth: &mut Growth, series: (u32, u8, Option<u32>), grew: Count) {
    let total = growth.entry(series).or_default();
    total.packets += grew.packets;
    total.bytes += grew.bytes;
}

fn orphan(pod_id: u32) -> String {
    format!("pod-id:{pod_id}")
}

impl FlowSink for Round<'_> {
    fn records(&mut self, records: &[AttachmentRecord]) {
        let t = &mut *self.table;
        t.names.clear();
        t.local_peers.clear();
        for record in records {
            t.names.insert(
                record.pod_id,
                PodName {
                    namespace: record.pod.namespace.as_deref().map(Arc::from),
                    pod: match &record.pod.name {
                        Some(name) => Arc::from(name.as_str()),
                        None => Arc::from(orphan(record.pod_id)),
                    },
                },
            );
            // A pod recorded without a namespace (podman passes only
            // K8S_POD_NAME) is still a named peer, with an empty namespace.
            let Some(pod) = &record.pod.name else {
                continue;
            };
            let peer = Arc::new(Peer {
                namespace: record.pod.namespace.clone().unwrap_or_default(),
                pod: pod.clone(),
                node: t.node.clone(),
            });
            for cidr in &record.ips {
                let ip = cidr
                    .split('/')
                    .next()
                    .and_then(|ip| ip.parse::<IpAddr>().ok());
                if let Some(ip) = ip {
                    t.local_peers.insert(ip, peer.clone());
                }
            }
        }
    }

    fn overlay_flow(&mut self, key: &VxFlowKey, c: &VxFlowCounters) {
        let direction = match key.direction() {
            Some(VxDirection::Encap) => 0,
            Some(VxDirection::Decap) => 1,
            None => return,
        };
        let (family, src, dst) = addrs(key.inner_family, &key.inner_src, &key.inner_dst);
        let lk = LegKey {
            direction,
            family,
            proto: key.inner_proto,
            src,
            dst,
            sport: key.inner_sport,
            dport: key.inner_dport,
        };
        let round = self.table.round;
        let fresh = || OverlayLeg {
            vni: key.vni,
            outer_source: key.outer_src_ip(),
            outer_destination: key.outer_dst_ip(),
            encap_packets: 0,
            encap_bytes: 0,
            decap_packets: 0,
            decap_bytes: 0,
        };
        let leg = self.table.legs.entry(lk).or_insert_with(|| Leg {
            leg: fresh(),
            round,
            used: false,
        });
        if leg.round != round {
            // First overlay flow of this tuple in this round: its outer
            // header names the leg, as the first one always did.
            *leg = Leg {
                leg: fresh(),
                round,
                used: false,
            };
        }
        let l = &mut leg.leg;
        l.encap_packets += c.encap_packets;
        l.encap_bytes += c.encap_bytes;
        l.decap_packets += c.decap_packets;
        l.decap_bytes += c.decap_bytes;
    }

    fn pod_flow(&mut self, key: &FlowKey, c: &FlowCounters) {
        let key = normalize(key);
        let t = &mut *self.table;
        let round = t.round;
        t.names.entry(key.pod_id).or_insert_with(|| PodName {
            namespace: None,
            pod: Arc::from(orphan(key.pod_id)),
        });
        let vni = leg_key(&key)
            .and_then(|k| t.legs.get_mut(&k))
            .filter(|l| l.round == round)
            .map(|l| {
                l.used = true;
                l.leg.vni
            });
        let remote = match key.direction() {
            Some(Direction::ToPod) => key.src_ip(),
            _ => key.dst_ip(),
        };
        let local_peer = t.local_peers.get(&remote).cloned();
        let remote_peer_possible = local_peer.is_none();
        let peer = match local_peer {
            Some(p) => Some(p),
            None => t
                .remote_peers
                .entry(remote)
                .or_insert_with(|| self.directory.lookup(remote).map(Arc::new))
                .clone(),
        };
        let now = Count {
            packets: c.packets,
            bytes: c.bytes,
        };
        let mut fresh = Row {
            packets: c.packets,
            bytes: c.bytes,
            first_seen_ns: c.first_seen_ns,
            last_seen_ns: c.last_seen_ns,
            tcp_flags: c.tcp_flags,
            round,
            peer,
            held: Count::default(),
        };
        let (grew, held, new) = match t.rows.get(&key) {
            Some(before) => {
                // Smaller than before: evicted and re-created, counts from zero.
                if now.packets >= before.packets && now.bytes >= before.bytes {
                    let grew = Count {
                        packets: now.packets - before.packets,
                        bytes: now.bytes - before.bytes,
                    };
                    (grew, before.held, false)
                } else {
                    (now, before.held, true)
                }
            }
            None => (now, Count::default(), true),
        };
        // The overlay map is read before the pod map, but a packet reaches
        // them in either order (sent: pod, then underlay; received: the
        // reverse), so a new flow's first packets can be read before its leg
        // exists. Their growth waits one round for the leg to name the VNI
        // (then goes without one); metrics lag a round, counts stay exact.
        let wait = vni.is_none()
            && self.overlay_monitored
            && new
            && remote_peer_possible
            && held == Count::default();
        if wait {
            fresh.held = grew;
        } else {
            let pending = Count {
                packets: grew.packets + held.packets,
                bytes: grew.bytes + held.bytes,
            };
            if pending != Count::default() {
                add(&mut self.growth, (key.pod_id, key.direction, vni), pending);
            }
        }
        t.rows.insert(key, fresh);
    }

    fn overlay_monitored(&mut self) {
        self.overlay_monitored = true;
    }
}

/// (family, src, dst) as [`IpAddr`] sees them: a family other than 4 is
/// IPv6; IPv4 keeps only its first 4 bytes.
fn addrs(family: u8, src: &[u8; 16], dst: &[u8; 16]) -> (u8, [u8; 16], [u8; 16]) {
    if family == 4 {
        let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
        s[..4].copy_from_slice(&src[..4]);
        d[..4].copy_from_slice(&dst[..4]);
        (4, s, d)
    } else {
        (6, *src, *dst)
    }
}

/// The key as the views tell flows apart: addresses as [`IpAddr`], every
/// unknown direction byte as one, padding zero.
fn normalize(key: &FlowKey) -> FlowKey {
    let (family, src, dst) = addrs(key.family, &key.src, &key.dst);
    FlowKey {
        pod_id: key.pod_id,
        direction: key.direction.min(2),
        family,
        proto: key.proto,
        pad: 0,
        src,
        dst,
        sport: key.sport,
        dport: key.dport,
        pad2: 0,
    }
}

/// The overlay leg a pod flow joins: what the pod sent leaves encapsulated,
/// what it received arrived to be decapsulated; VXLAN carries the pod's
/// packet unchanged, so the inner header is the pod flow's header.
fn leg_key(key: &FlowKey) -> Option<LegKey> {
    let direction = match key.direction() {
        Some(Direction::FromPod) => 0,
        Some(Direction::ToPod) => 1,
        None => return None,
    };
    Some(LegKey {
        direction,
        family: key.family,
        proto: key.proto,
        src: key.src,
        dst: key.dst,
        sport: key.sport,
        dport: key.dport,
    })
}

fn direction_name(raw: u8) -> FlowDirection {
    FlowDirection::from_raw(raw)
}

fn ip(family: u8, raw: &[u8; 16]) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*raw))
    }
}

/// A row with what rendering it needs.
struct RowRef<'a> {
    key: &'a FlowKey,
    row: &'a Row,
    name: Option<&'a PodName>,
    leg: Option<&'a OverlayLeg>,
}

impl<'a> RowRef<'a> {
    fn namespace(&self) -> Option<&'a str> {
        self.name.and_then(|n| n.namespace.as_deref())
    }

    fn cmp(a: &Self, b: &Self) -> Ordering {
        let (ka, kb) = (a.key, b.key);
        a.namespace()
            .cmp(&b.namespace())
            .then_with(|| a.name.map(|n| &*n.pod).cmp(&b.name.map(|n| &*n.pod)))
            .then_with(|| direction_name(ka.direction).cmp(&direction_name(kb.direction)))
            .then_with(|| ip(ka.family, &ka.src).cmp(&ip(kb.family, &kb.src)))
            .then_with(|| ka.sport.cmp(&kb.sport))
            .then_with(|| ip(ka.family, &ka.dst).cmp(&ip(kb.family, &kb.dst)))
            .then_with(|| ka.dport.cmp(&kb.dport))
            .then_with(|| ka.pod_id.cmp(&kb.pod_id))
    }

    fn view(&self) -> ViewRef<'a> {
        let (k, r) = (self.key, self.row);
        ViewRef {
            pod_id: k.pod_id,
            namespace: self.namespace(),
            // Every row's pod id is named in `names` (orphans too).
            pod: self.name.map_or("", |n| &n.pod),
            direction: direction_name(k.direction),
            protocol: k.proto,
            source: ip(k.family, &k.src),
            source_port: k.sport,
            destination: ip(k.family, &k.dst),
            destination_port: k.dport,
            packets: r.packets,
            bytes: r.bytes,
            first_seen_ns: r.first_seen_ns,
            last_seen_ns: r.last_seen_ns,
            tcp_flags: r.tcp_flags,
            peer: r.peer.as_deref(),
            overlay: self.leg,
        }
    }
}

/// [`PodFlowView`] borrowed from the table: the same fields in the same
/// order, so it serializes to the same JSON.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ViewRef<'a> {
    pod_id: u32,
    namespace: Option<&'a str>,
    pod: &'a str,
    direction: FlowDirection,
    protocol: u8,
    source: IpAddr,
    source_port: u16,
    destination: IpAddr,
    destination_port: u16,
    packets: u64,
    bytes: u64,
    first_seen_ns: u64,
    last_seen_ns: u64,
    tcp_flags: u32,
    peer: Option<&'a Peer>,
    overlay: Option<&'a OverlayLeg>,
}

struct Rows<'r, 'a>(&'r [RowRef<'a>]);

impl Serialize for Rows<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(RowRef::view))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pod_id: u32, sport: u16) -> FlowKey {
        let mut k = FlowKey {
            pod_id,
            direction: Direction::FromPod as u8,
            proto: 6,
            sport,
            dport: 80,
            ..Default::default()
        };
        k.set_addrs("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        k
    }

    fn counters(packets: u64) -> FlowCounters {
        FlowCounters {
            packets,
            bytes: packets * 10,
            ..Default::default()
        }
    }

    fn collect(table: &mut FlowTable, totals: &mut Totals, flows: &[(FlowKey, u64)]) {
        let directory: std::collections::HashMap<IpAddr, Peer> = Default::default();
        let mut round = table.round(&directory);
        round.records(&[]);
        for (k, p) in flows {
            round.pod_flow(k, &counters(*p));
        }
        round.finish(Some(totals), true);
    }

    #[test]
    fn totals_only_grow_across_evictions_and_restarts_of_a_flow() {
        let (mut table, mut t) = (FlowTable::new("n"), Totals::new(100));
        collect(&mut table, &mut t, &[(key(1, 1), 5)]);
        collect(&mut table, &mut t, &[(key(1, 1), 8)]);
        assert_eq!(
            t.pod_total("pod-id:1"),
            Count {
                packets: 8,
                bytes: 80
            }
        );
        // Evicted and re-created from zero: its 3 new packets still count.
        collect(&mut table, &mut t, &[(key(1, 1), 3)]);
        assert_eq!(t.pod_total("pod-id:1").packets, 11);
        // Gone from the map, then back: counted from zero again.
        collect(&mut table, &mut t, &[]);
        assert!(table.is_empty());
        collect(&mut table, &mut t, &[(key(1, 1), 2)]);
        assert_eq!(t.pod_total("pod-id:1").packets, 13);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_failed_read_keeps_rows_and_loses_no_growth() {
        let (mut table, mut t) = (FlowTable::new("n"), Totals::new(100));
        collect(&mut table, &mut t, &[(key(1, 1), 5), (key(1, 2), 1)]);
        // A read that stopped after the first flow.
        let directory: std::collections::HashMap<IpAddr, Peer> = Default::default();
        let mut round = table.round(&directory);
        round.records(&[]);
        round.pod_flow(&key(1, 1), &counters(7));
        round.finish(Some(&mut t), false);
        assert_eq!(table.len(), 2, "rows of an incomplete read stay");
        collect(&mut table, &mut t, &[(key(1, 1), 9), (key(1, 2), 4)]);
        assert_eq!(t.pod_total("pod-id:1").packets, 13);
    }

    /// The VNI series of `pod_id`'s flows: (vni label, packets).
    fn by_vni(t: &Totals) -> Vec<(String, u64)> {
        t.series()
            .iter()
            .map(|(k, c)| (k.vni.clone(), c.packets))
            .collect()
    }

    fn encap_leg(k: &FlowKey, packets: u64) -> (VxFlowKey, VxFlowCounters) {
        let mut key = VxFlowKey {
            vni: 1,
            inner_proto: k.proto,
            inner_sport: k.sport,
            inner_dport: k.dport,
            direction: VxDirection::Encap as u8,
            ..Default::default()
        };
        key.set_outer(
            "192.168.50.1".parse().unwrap(),
            "192.168.50.2".parse().unwrap(),
        );
        key.set_inner(k.src_ip(), k.dst_ip());
        let c = VxFlowCounters {
            packets,
            encap_packets: packets,
            ..Default::default()
        };
        (key, c)
    }

    /// One round with an overlay monitor: `legs` first, then `flows`, as
    /// the maps are read.
    fn overlay_round(
        table: &mut FlowTable,
        totals: &mut Totals,
        legs: &[(VxFlowKey, VxFlowCounters)],
        flows: &[(FlowKey, u64)],
    ) {
        let directory: std::collections::HashMap<IpAddr, Peer> = Default::default();
        let mut round = table.round(&directory);
        round.records(&[]);
        round.overlay_monitored();
        for (k, c) in legs {
            round.overlay_flow(k, c);
        }
        for (k, p) in flows {
            round.pod_flow(k, &counters(*p));
        }
        round.finish(Some(totals), true);
    }

    #[test]
    fn packets_read_before_their_overlay_leg_still_count_under_its_vni() {
        let (mut table, mut t) = (FlowTable::new("n"), Totals::new(100));
        let k = key(1, 1);
        // The pod map already holds 3 packets the underlay map does not yet.
        overlay_round(&mut table, &mut t, &[], &[(k, 3)]);
        assert_eq!(by_vni(&t), vec![], "held a round for the leg");
        overlay_round(&mut table, &mut t, &[encap_leg(&k, 50)], &[(k, 50)]);
        assert_eq!(by_vni(&t), vec![("1".to_owned(), 50)]);
        overlay_round(&mut table, &mut t, &[encap_leg(&k, 60)], &[(k, 60)]);
        assert_eq!(by_vni(&t), vec![("1".to_owned(), 60)]);
    }

    #[test]
    fn a_flow_whose_leg_never_comes_counts_without_a_vni_a_round_later() {
        let (mut table, mut t) = (FlowTable::new("n"), Totals::new(100));
        let k = key(1, 1);
        overlay_round(&mut table, &mut t, &[], &[(k, 3)]);
        overlay_round(&mut table, &mut t, &[], &[(k, 5)]);
        assert_eq!(by_vni(&t), vec![(String::new(), 5)]);
        overlay_round(&mut table, &mut t, &[], &[(k, 6)]);
        assert_eq!(by_vni(&t), vec![(String::new(), 6)], "no more waiting");
        // A new flow held, then gone from the map: its growth is not lost.
        let gone = key(1, 2);
        overlay_round(&mut table, &mut t, &[], &[(k, 6), (gone, 4)]);
        overlay_round(&mut table, &mut t, &[], &[(k, 6)]);
        assert_eq!(by_vni(&t), vec![(String::new(), 10)]);
    }

    #[test]
    fn without_an_overlay_monitor_growth_counts_at_once() {
        let (mut table, mut t) = (FlowTable::new("n"), Totals::new(100));
        collect(&mut table, &mut t, &[(key(1, 1), 3)]);
        assert_eq!(by_vni(&t), vec![(String::new(), 3)]);
    }
}
