//! The node's flows for a person at a terminal (`weir-operator agent dump`):
//! the agent's own reading and join, rendered as a table or JSON, plus the
//! local switch that turns counting on for a pod.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use serde::Serialize;
use weir_ebpf::abi::PodMode;
use weir_ebpf::{BpfRoot, maps::NodeMaps};
use weir_node_state::{AttachmentRecord, StateStore};

use crate::agent::join::{self, FlowDirection, PodFlowView};
use crate::agent::peers::Peer;
use crate::agent::reading;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("node state: {0}")]
    State(#[from] weir_node_state::StateError),
    #[error("pinned maps: {0}")]
    Maps(#[from] weir_ebpf::Error),
    #[error(transparent)]
    Reading(#[from] crate::agent::Error),
    #[error("no pod {0} on this node (known: {1})")]
    UnknownPod(String, String),
    /// Neither directory holds anything of weir: most likely a wrong
    /// `--state-dir` / `--bpf-root`, or a node where weir's plugin never ran.
    #[error(
        "no weir state here: {state_dir} holds no pod records (networks/*/) and {bpf_root} no pinned weir maps; \
         is this a node where weir's CNI plugin split a pod? Point --state-dir / --bpf-root \
         (WEIR_STATE_DIR / WEIR_BPF_ROOT) at the plugin's stateDir and bpfRoot"
    )]
    NoState { state_dir: String, bpf_root: String },
}

fn no_state(state_dir: &Path, bpf_root: &Path) -> Error {
    Error::NoState {
        state_dir: state_dir.display().to_string(),
        bpf_root: bpf_root.display().to_string(),
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// One direction of one conversation of one local pod, as a person reads it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeFlow {
    pub pod: String,
    pub pod_id: u32,
    pub direction: &'static str,
    pub protocol: String,
    pub source: String,
    pub destination: String,
    pub packets: u64,
    pub bytes: u64,
    pub tcp_flags: String,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// The other end's pod, when known (`namespace/name@node`).
    pub peer: Option<String>,
    /// VNI and outer addresses when the flow crossed flannel's VXLAN.
    pub vni: Option<u32>,
    pub outer: Option<String>,
}

pub struct NodeView {
    /// For the table.
    pub flows: Vec<NodeFlow>,
    /// The same flows, in the same order, as `/flows` serves them (the one
    /// JSON schema of a flow, docs/flow.schema.json): for `-o json`.
    pub views: Vec<PodFlowView>,
    pub stats: Vec<(String, u64)>,
}

impl NodeView {
    /// Keeps the flows that pass [`matches`].
    pub fn retain(&mut self, pods: &[String], protocols: &[String]) {
        let keep: Vec<bool> = self
            .flows
            .iter()
            .map(|f| matches(f, pods, protocols))
            .collect();
        let mut k = keep.iter();
        self.flows
            .retain(|_| *k.next().expect("one verdict per flow"));
        let mut k = keep.iter();
        self.views
            .retain(|_| *k.next().expect("one verdict per flow"));
    }
}

/// Reads and joins every flow on the node, as the agent does. Flows of pods
/// weir has no record of (already deleted) keep their pod id as their name,
/// so no count is hidden.
pub fn read(state_dir: &Path, bpf_root: &Path) -> Result<NodeView> {
    let directory: HashMap<IpAddr, Peer> = HashMap::new();
    read_with(state_dir, bpf_root, &directory)
}

/// [`read`], naming remote peers from `directory` (e.g. a peers file, as
/// the agent's `--peers-file`).
pub fn read_with(
    state_dir: &Path,
    bpf_root: &Path,
    directory: &dyn crate::agent::peers::PeerDirectory,
) -> Result<NodeView> {
    let reading = reading::read(state_dir, &BpfRoot::new(bpf_root))?;
    if reading.records.is_empty() && reading.pods.is_none() && reading.overlay.is_none() {
        return Err(no_state(state_dir, bpf_root));
    }
    let views = join::join(&reading, "this-node", directory);
    let flows = views.iter().map(describe).collect();
    let mut stats = Vec::new();
    if let Some(pods) = &reading.pods {
        let c = &pods.stats;
        stats.extend([
            ("new_flows".to_string(), c.new_flows),
            ("live_flows".to_string(), pods.live_flows),
            (
                "lru_evictions".to_string(),
                c.lru_evictions(pods.live_flows, 0),
            ),
            ("flow_update_failed".to_string(), c.flow_update_failed),
            ("events_lost".to_string(), c.events_lost),
            ("non_ip_packets".to_string(), c.non_ip_packets),
            ("parse_errors".to_string(), c.parse_errors),
            ("redirects".to_string(), c.redirects),
            ("passthrough_packets".to_string(), c.passthrough_packets),
        ]);
    }
    if let Some(overlay) = &reading.overlay {
        stats.extend([
            ("vxlan_live_flows".to_string(), overlay.live_flows),
            (
                "vxlan_flow_update_failed".to_string(),
                overlay.stats.flow_update_failed(),
            ),
            ("vxlan_events_lost".to_string(), overlay.stats.events_lost()),
        ]);
    }
    Ok(NodeView {
        flows,
        views,
        stats,
    })
}

/// Whether `flow` passes the filters; an empty filter passes everything.
/// Protocols compare by name, case-insensitively ("icmp" does not match
/// "ICMPv6").
pub fn matches(flow: &NodeFlow, pods: &[String], protocols: &[String]) -> bool {
    let proto = flow.protocol.split(' ').next().unwrap_or_default();
    (pods.is_empty() || pods.contains(&flow.pod))
        && (protocols.is_empty() || protocols.iter().any(|p| p.eq_ignore_ascii_case(proto)))
}

/// Turns counting on or off for one pod on this node — what a
/// CaptureProfile does through the agent. `pod` is any name `dump` shows:
/// `namespace/name`, a bare name (a pod recorded without a namespace, as
/// podman records it), or a container id.
pub fn set_mode(state_dir: &Path, bpf_root: &Path, pod: &str, mode: PodMode) -> Result<Vec<u32>> {
    let records = StateStore::list_all(state_dir)?;
    if records.is_empty() {
        return Err(no_state(state_dir, bpf_root));
    }
    let matching = find_pod(&records, pod)?;
    let mut maps = NodeMaps::open(&BpfRoot::new(bpf_root))?;
    let mut ids = Vec::new();
    for record in matching {
        maps.set_pod_mode(record.pod_id, mode)?;
        ids.push(record.pod_id);
    }
    Ok(ids)
}

/// The records `pod` names (see [`set_mode`]), or which names there are.
pub fn find_pod<'a>(
    records: &'a [AttachmentRecord],
    pod: &str,
) -> Result<Vec<&'a AttachmentRecord>> {
    let matching: Vec<&AttachmentRecord> = records
        .iter()
        .filter(|r| pod_name(r) == pod || r.container_id == pod)
        .collect();
    if matching.is_empty() {
        let mut known: Vec<String> = records.iter().map(pod_name).collect();
        known.sort();
        known.dedup();
        return Err(Error::UnknownPod(pod.to_string(), known.join(", ")));
    }
    Ok(matching)
}

/// The name `dump` shows for a pod: `namespace/name`, the name alone when
/// the runtime passed no namespace, else the container id.
pub fn pod_name(record: &AttachmentRecord) -> String {
    match (&record.pod.namespace, &record.pod.name) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.clone(),
        _ => record.container_id.clone(),
    }
}

fn describe(view: &PodFlowView) -> NodeFlow {
    let protocol = protocol_name(view.protocol);
    let ported = matches!(view.protocol, 6 | 17 | 132);
    NodeFlow {
        pod: match &view.namespace {
            Some(ns) => format!("{ns}/{}", view.pod),
            None => view.pod.clone(),
        },
        pod_id: view.pod_id,
        direction: match view.direction {
            FlowDirection::Egress => "out",
            FlowDirection::Ingress => "in",
            FlowDirection::Unknown => "?",
        },
        source: endpoint(view.source, ported.then_some(view.source_port)),
        destination: endpoint(view.destination, ported.then_some(view.destination_port)),
        protocol: if matches!(view.protocol, 1 | 58) {
            format!("{protocol} {}/{}", view.source_port, view.destination_port)
        } else {
            protocol
        },
        packets: view.packets,
        bytes: view.bytes,
        tcp_flags: tcp_flags(view.tcp_flags),
        first_seen_ns: view.first_seen_ns,
        last_seen_ns: view.last_seen_ns,
        peer: view.peer.as_ref().map(|p| match p.namespace.as_str() {
            "" => format!("{}@{}", p.pod, p.node),
            ns => format!("{ns}/{}@{}", p.pod, p.node),
        }),
        vni: view.overlay.as_ref().map(|o| o.vni),
        outer: view
            .overlay
            .as_ref()
            .map(|o| format!("{}->{}", o.outer_source, o.outer_destination)),
    }
}

fn protocol_name(proto: u8) -> String {
    match proto {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        132 => "SCTP".into(),
        other => format!("IP/{other}"),
    }
}

fn endpoint(ip: IpAddr, port: Option<u16>) -> String {
    match (ip, port) {
        (IpAddr::V6(v6), Some(p)) => format!("[{v6}]:{p}"),
        (ip, Some(p)) => format!("{ip}:{p}"),
        (ip, None) => ip.to_string(),
    }
}

fn tcp_flags(bits: u32) -> String {
    const NAMES: [(u32, &str); 6] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x08, "PSH"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x20, "URG"),
    ];
    let set: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        "-".into()
    } else {
        set.join(",")
    }
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A fixed-width table, one flow per line, for a terminal.
pub fn render_table(flows: &[NodeFlow], now_ns: u64) -> String {
    let header = [
        "POD",
        "DIR",
        "PROTO",
        "SOURCE",
        "DESTINATION",
        "PACKETS",
        "BYTES",
        "VNI",
        "TCP-FLAGS",
        "LAST-SEEN",
    ];
    let rows: Vec<[String; 10]> = flows
        .iter()
        .map(|f| {
            [
                f.pod.clone(),
                f.direction.to_string(),
                f.protocol.clone(),
                f.source.clone(),
                f.destination.clone(),
                f.packets.to_string(),
                human_bytes(f.bytes),
                f.vni.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                f.tcp_flags.clone(),
                age(now_ns, f.last_seen_ns),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn age(now_ns: u64, then_ns: u64) -> String {
    let secs = now_ns.saturating_sub(then_ns) / 1_000_000_000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

/// CLOCK_BOOTTIME in ns: the clock the programs stamp flows with.
pub fn boot_time_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::join::OverlayLeg;

    fn view(proto: u8, direction: FlowDirection) -> PodFlowView {
        PodFlowView {
            pod_id: 7,
            namespace: None,
            pod: "pod-id:7".into(),
            direction,
            protocol: proto,
            source: "10.244.0.2".parse().unwrap(),
            source_port: 40000,
            destination: "10.244.0.3".parse().unwrap(),
            destination_port: 8080,
            packets: 3,
            bytes: 3000,
            first_seen_ns: 0,
            last_seen_ns: 5_000_000_000,
            tcp_flags: 0x12,
            peer: None,
            overlay: None,
        }
    }

    #[test]
    fn flows_read_as_a_person_expects() {
        let f = describe(&view(6, FlowDirection::Egress));
        assert_eq!((f.pod.as_str(), f.direction), ("pod-id:7", "out"));
        assert_eq!(
            (f.source.as_str(), f.destination.as_str()),
            ("10.244.0.2:40000", "10.244.0.3:8080")
        );
        assert_eq!(f.tcp_flags, "SYN,ACK");
        assert_eq!((f.vni, f.outer.as_deref()), (None, None));
        let mut v = view(6, FlowDirection::Ingress);
        v.namespace = Some("shop".into());
        v.pod = "cart".into();
        v.peer = Some(Peer {
            namespace: "shop".into(),
            pod: "db-0".into(),
            node: "node-b".into(),
        });
        v.overlay = Some(OverlayLeg {
            vni: 1,
            outer_source: "192.168.1.2".parse().unwrap(),
            outer_destination: "192.168.1.1".parse().unwrap(),
            encap_packets: 0,
            encap_bytes: 0,
            decap_packets: 3,
            decap_bytes: 3150,
        });
        let f = describe(&v);
        assert_eq!((f.pod.as_str(), f.direction), ("shop/cart", "in"));
        assert_eq!(f.peer.as_deref(), Some("shop/db-0@node-b"));
        assert_eq!(
            (f.vni, f.outer.as_deref()),
            (Some(1), Some("192.168.1.2->192.168.1.1"))
        );
    }

    #[test]
    fn icmp_shows_type_and_code_instead_of_ports() {
        let mut v = view(1, FlowDirection::Ingress);
        (v.source_port, v.destination_port) = (8, 0);
        let f = describe(&v);
        assert_eq!(f.protocol, "ICMP 8/0");
        assert_eq!(f.destination, "10.244.0.3");
    }

    #[test]
    fn filters_by_pod_and_protocol_name() {
        let icmp = describe(&view(1, FlowDirection::Egress));
        let icmp6 = describe(&view(58, FlowDirection::Egress));
        let icmp_only = ["icmp".to_string()];
        assert!(matches(&icmp, &[], &icmp_only));
        assert!(!matches(&icmp6, &[], &icmp_only));
        assert!(matches(&icmp6, &[], &[]));
        assert!(!matches(&icmp, &["shop/cart".to_string()], &[]));
        assert!(matches(
            &icmp,
            &["pod-id:7".to_string()],
            &["ICMP".to_string()]
        ));
    }

    #[test]
    fn table_aligns_columns_and_ages_flows() {
        let f = describe(&view(17, FlowDirection::Egress));
        let table = render_table(&[f], 65_000_000_000);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("POD"));
        assert!(
            lines[1].contains("UDP")
                && lines[1].contains("2.9 KiB")
                && lines[1].ends_with("1m ago"),
            "{}",
            lines[1]
        );
        assert_eq!(lines[0].find("DIR"), lines[1].find("out"));
    }

    fn record(
        cid: &str,
        namespace: Option<&str>,
        name: Option<&str>,
        pod_id: u32,
    ) -> AttachmentRecord {
        AttachmentRecord {
            network: "cbr0".into(),
            container_id: cid.into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            pod: weir_node_state::PodIdentity {
                namespace: namespace.map(Into::into),
                name: name.map(Into::into),
                uid: None,
                infra_container_id: None,
            },
            pod_id,
            mac: "aa:bb:cc:dd:ee:ff".into(),
            ips: vec!["10.88.0.5/16".into()],
            attach_mode: weir_node_state::AttachMode::Netlink,
            pod_ifindex: 4,
            outer_ifindex: 2,
            inner_ifindex: 3,
            created_unix: 1,
            phase: Default::default(),
            attachment_id: None,
            original: None,
        }
    }

    #[test]
    fn observe_takes_every_name_dump_shows() {
        let records = vec![
            record("c1", Some("shop"), Some("cart"), 1),
            // podman: K8S_POD_NAME only.
            record("c2", None, Some("web"), 2),
            record("c3", None, None, 3),
        ];
        let ids = |name: &str| -> Vec<u32> {
            find_pod(&records, name)
                .unwrap()
                .iter()
                .map(|r| r.pod_id)
                .collect()
        };
        assert_eq!(ids("shop/cart"), [1]);
        assert_eq!(
            ids("web"),
            [2],
            "a pod recorded without a namespace, by its name"
        );
        assert_eq!(ids("c2"), [2], "or by its container id");
        assert_eq!(ids("c3"), [3]);
        assert_eq!(pod_name(&records[1]), "web");
        match find_pod(&records, "nope") {
            Err(Error::UnknownPod(name, known)) => {
                assert_eq!(name, "nope");
                assert_eq!(known, "c3, shop/cart, web");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dump_and_observe_say_so_where_there_is_no_weir_state() {
        let dir = std::env::temp_dir().join(format!("weir-no-state-{}", std::process::id()));
        let state = dir.join("state");
        let bpf = dir.join("bpf");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&bpf).unwrap();
        let err = read(&state, &bpf)
            .err()
            .expect("an empty state dir and bpf root are an error");
        assert!(matches!(err, Error::NoState { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("no weir state here") && text.contains("--state-dir"),
            "{text}"
        );
        assert!(text.contains(&state.display().to_string()), "{text}");
        let err = set_mode(&state, &bpf, "shop/cart", PodMode::Count).unwrap_err();
        assert!(matches!(err, Error::NoState { .. }), "{err}");
        let err = read(&dir.join("missing"), &dir.join("missing-bpf"))
            .err()
            .unwrap();
        assert!(matches!(err, Error::NoState { .. }), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
