//! The node's flows, joined with the pods they belong to: the pinned flow
//! map gives counters keyed by pod id, the CNI plugin's state records say
//! which pod each id is.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use serde::Serialize;
use weir_cni::state::{AttachmentRecord, StateStore};
use weir_ebpf::abi::{Direction, FlowCounters, FlowKey, PodMode};
use weir_ebpf::{BpfRoot, maps::NodeMaps};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("node state: {0}")]
    State(#[from] weir_cni::state::StateError),
    #[error("pinned maps: {0}")]
    Maps(#[from] weir_ebpf::Error),
    #[error("no pod {0} on this node (known: {1})")]
    UnknownPod(String, String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// One direction of one conversation of one local pod.
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
}

pub struct NodeView {
    pub flows: Vec<NodeFlow>,
    pub stats: Vec<(String, u64)>,
}

/// Reads every flow on the node; flows of pods weir has no record of (already
/// deleted) keep their pod id as their name, so no count is hidden.
pub fn read(state_dir: &Path, bpf_root: &Path) -> Result<NodeView> {
    let records = StateStore::list_all(state_dir)?;
    let by_id: HashMap<u32, &AttachmentRecord> = records.iter().map(|r| (r.pod_id, r)).collect();
    let maps = NodeMaps::open(&BpfRoot::new(bpf_root))?;
    let mut flows: Vec<NodeFlow> = maps
        .flows()?
        .into_iter()
        .map(|(key, counters)| describe(&key, &counters, by_id.get(&key.pod_id).copied()))
        .collect();
    flows.sort_by(|a, b| (&a.pod, a.direction, &a.source, &a.destination).cmp(&(&b.pod, b.direction, &b.source, &b.destination)));
    let counters = maps.stats()?;
    let live = maps.live_flow_count()?;
    let stats = vec![
        ("new_flows".to_string(), counters.new_flows),
        ("live_flows".to_string(), live),
        ("lru_evictions".to_string(), counters.lru_evictions(live, 0)),
        ("flow_update_failed".to_string(), counters.flow_update_failed),
        ("events_lost".to_string(), counters.events_lost),
        ("non_ip_packets".to_string(), counters.non_ip_packets),
        ("parse_errors".to_string(), counters.parse_errors),
        ("redirects".to_string(), counters.redirects),
        ("passthrough_packets".to_string(), counters.passthrough_packets),
    ];
    Ok(NodeView { flows, stats })
}

/// Whether `flow` passes the filters; an empty filter passes everything.
/// Protocols compare by name, case-insensitively ("icmp" does not match
/// "ICMPv6").
pub fn matches(flow: &NodeFlow, pods: &[String], protocols: &[String]) -> bool {
    let proto = flow.protocol.split(' ').next().unwrap_or_default();
    (pods.is_empty() || pods.iter().any(|p| *p == flow.pod))
        && (protocols.is_empty() || protocols.iter().any(|p| p.eq_ignore_ascii_case(proto)))
}

/// Turns counting on or off for one pod (`namespace/name`, or a container id)
/// on this node — what a CaptureProfile does through the agent.
pub fn set_mode(state_dir: &Path, bpf_root: &Path, pod: &str, mode: PodMode) -> Result<Vec<u32>> {
    let records = StateStore::list_all(state_dir)?;
    let matching: Vec<&AttachmentRecord> = records.iter().filter(|r| pod_name(r) == pod || r.container_id == pod).collect();
    if matching.is_empty() {
        let known: Vec<String> = records.iter().map(pod_name).collect();
        return Err(Error::UnknownPod(pod.to_string(), known.join(", ")));
    }
    let mut maps = NodeMaps::open(&BpfRoot::new(bpf_root))?;
    let mut ids = Vec::new();
    for record in matching {
        maps.set_pod_mode(record.pod_id, mode)?;
        ids.push(record.pod_id);
    }
    Ok(ids)
}

fn pod_name(record: &AttachmentRecord) -> String {
    match (&record.pod.namespace, &record.pod.name) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        _ => record.container_id.clone(),
    }
}

fn describe(key: &FlowKey, counters: &FlowCounters, record: Option<&AttachmentRecord>) -> NodeFlow {
    let pod = record.map(pod_name).unwrap_or_else(|| format!("pod-id:{}", key.pod_id));
    let protocol = protocol_name(key.proto);
    let ported = matches!(key.proto, 6 | 17 | 132);
    NodeFlow {
        pod,
        pod_id: key.pod_id,
        direction: match key.direction() {
            Some(Direction::FromPod) => "out",
            Some(Direction::ToPod) => "in",
            None => "?",
        },
        source: endpoint(key.src_ip(), ported.then_some(key.sport)),
        destination: endpoint(key.dst_ip(), ported.then_some(key.dport)),
        protocol: if ported { protocol } else if matches!(key.proto, 1 | 58) {
            format!("{protocol} {}/{}", key.sport, key.dport)
        } else {
            protocol
        },
        packets: counters.packets,
        bytes: counters.bytes,
        tcp_flags: tcp_flags(counters.tcp_flags),
        first_seen_ns: counters.first_seen_ns,
        last_seen_ns: counters.last_seen_ns,
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
    const NAMES: [(u32, &str); 6] = [(0x02, "SYN"), (0x10, "ACK"), (0x08, "PSH"), (0x01, "FIN"), (0x04, "RST"), (0x20, "URG")];
    let set: Vec<&str> = NAMES.iter().filter(|(bit, _)| bits & bit != 0).map(|(_, n)| *n).collect();
    if set.is_empty() { "-".into() } else { set.join(",") }
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// A fixed-width table, one flow per line, for a terminal.
pub fn render_table(flows: &[NodeFlow], now_ns: u64) -> String {
    let header = ["POD", "DIR", "PROTO", "SOURCE", "DESTINATION", "PACKETS", "BYTES", "TCP-FLAGS", "LAST-SEEN"];
    let rows: Vec<[String; 9]> = flows
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
        let text: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
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
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(pod_id: u32, dir: Direction, proto: u8) -> (FlowKey, FlowCounters) {
        let mut key = FlowKey { pod_id, direction: dir as u8, proto, sport: 40000, dport: 8080, ..Default::default() };
        key.set_addrs("10.244.0.2".parse().unwrap(), "10.244.0.3".parse().unwrap());
        let counters = FlowCounters { packets: 3, bytes: 3000, tcp_flags: 0x12, last_seen_ns: 5_000_000_000, ..Default::default() };
        (key, counters)
    }

    #[test]
    fn flows_name_their_pod_or_keep_the_id() {
        let (key, counters) = flow(7, Direction::FromPod, 6);
        let unknown = describe(&key, &counters, None);
        assert_eq!(unknown.pod, "pod-id:7");
        assert_eq!(unknown.direction, "out");
        assert_eq!(unknown.source, "10.244.0.2:40000");
        assert_eq!(unknown.destination, "10.244.0.3:8080");
        assert_eq!(unknown.tcp_flags, "SYN,ACK");
    }

    #[test]
    fn icmp_shows_type_and_code_instead_of_ports() {
        let (mut key, counters) = flow(1, Direction::ToPod, 1);
        key.sport = 8;
        key.dport = 0;
        let f = describe(&key, &counters, None);
        assert_eq!(f.protocol, "ICMP 8/0");
        assert_eq!(f.destination, "10.244.0.3");
    }

    #[test]
    fn filters_by_pod_and_protocol_name() {
        let (key, counters) = flow(7, Direction::FromPod, 1);
        let icmp = describe(&key, &counters, None);
        let (key, counters) = flow(7, Direction::FromPod, 58);
        let icmp6 = describe(&key, &counters, None);
        let icmp_only = ["icmp".to_string()];
        assert!(matches(&icmp, &[], &icmp_only));
        assert!(!matches(&icmp6, &[], &icmp_only));
        assert!(matches(&icmp6, &[], &[]));
        assert!(!matches(&icmp, &["shop/cart".to_string()], &[]));
        assert!(matches(&icmp, &["pod-id:7".to_string()], &["ICMP".to_string()]));
    }

    #[test]
    fn table_aligns_columns_and_ages_flows() {
        let (key, counters) = flow(1, Direction::FromPod, 17);
        let f = describe(&key, &counters, None);
        let table = render_table(&[f], 65_000_000_000);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("POD"));
        assert!(lines[1].contains("UDP") && lines[1].contains("2.9 KiB") && lines[1].ends_with("1m ago"), "{}", lines[1]);
        assert_eq!(lines[0].find("DIR"), lines[1].find("out"));
    }
}
