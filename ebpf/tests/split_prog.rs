//! The split programs driven with BPF_PROG_TEST_RUN on crafted frames, with
//! exact expectations on the pinned maps. Needs root and bpffs.

mod common;

use std::net::IpAddr;

use common::*;
use weir_ebpf::{
    Error, SplitParams,
    abi::{self, Direction, FlowCounters, FlowEvent, FlowKey, PodMode},
    maps::{NodeMaps, Stats},
    node_program,
    split::{self, SplitStubs},
};

const SRC4: [u8; 4] = [192, 0, 2, 10];
const DST4: [u8; 4] = [192, 0, 2, 20];
const SRC6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
const DST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20];

struct Fixture {
    t: TestRoot,
    obj: SplitStubs,
    maps: NodeMaps,
}

impl Fixture {
    /// One pod instance loaded (not attached) under a fresh root, in `mode`.
    fn new(tag: &str, pod: u32, mode: Option<PodMode>) -> Self {
        let t = TestRoot::new(tag);
        let obj = split::load(&t.root, &params(pod)).expect("load split object");
        let mut maps = NodeMaps::open(&t.root).expect("open pinned maps");
        if let Some(mode) = mode {
            maps.set_pod_mode(pod, mode).unwrap();
        }
        Self { t, obj, maps }
    }

    fn outer(&self, frame: &[u8]) -> u32 {
        test_run(self.obj.outer(), frame, None)
    }

    fn inner(&self, frame: &[u8]) -> u32 {
        test_run(self.obj.inner(), frame, None)
    }

    fn flows(&self) -> Vec<(FlowKey, FlowCounters)> {
        self.maps.flows().unwrap()
    }

    fn only_flow(&self) -> (FlowKey, FlowCounters) {
        let flows = self.flows();
        assert_eq!(flows.len(), 1, "expected exactly one flow, got {flows:#?}");
        flows[0]
    }

    fn stats(&self) -> Stats {
        self.maps.stats().unwrap()
    }
}

fn params(pod: u32) -> SplitParams {
    SplitParams {
        pod_id: pod,
        wx_ifindex: 1000 + pod,
        wi_ifindex: 2000 + pod,
        outbound_via_peer: true,
    }
}

fn key(
    pod: u32,
    dir: Direction,
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
) -> FlowKey {
    let mut k = FlowKey {
        pod_id: pod,
        direction: dir as u8,
        proto,
        sport,
        dport,
        ..Default::default()
    };
    k.set_addrs(src, dst);
    k
}

#[test]
fn ipv4_tcp_with_options_counts_and_ors_flags() {
    let f = Fixture::new("tcp4", 11, Some(PodMode::Count));
    let opts = [1, 1, 1, 0]; // NOP NOP NOP EOL: 4 bytes of IP options
    let syn = eth(
        0x0800,
        &ipv4(6, SRC4, DST4, &opts, 0, &tcp(40000, 80, 0x02, 0, &[])),
    );
    let psh_ack = eth(
        0x0800,
        &ipv4(6, SRC4, DST4, &opts, 0, &tcp(40000, 80, 0x18, 0, b"hello")),
    );
    let before = boottime_ns();
    assert_eq!(f.outer(&syn), TC_ACT_REDIRECT);
    assert_eq!(f.outer(&psh_ack), TC_ACT_REDIRECT);
    let after = boottime_ns();

    let (k, c) = f.only_flow();
    assert_eq!(
        k,
        key(11, Direction::ToPod, 6, v4(SRC4), v4(DST4), 40000, 80)
    );
    assert_eq!(k.direction(), Some(Direction::ToPod));
    assert_eq!((k.pad, k.pad2), (0, 0));
    assert_eq!(c.packets, 2);
    assert_eq!(c.bytes, (syn.len() + psh_ack.len()) as u64);
    assert_eq!(c.tcp_flags, 0x1a, "SYN | PSH | ACK");
    assert!(c.first_seen_ns > 0 && c.first_seen_ns <= c.last_seen_ns);
    // first seen on the precise boot clock; last seen on it at tick
    // resolution, never before the first
    assert!(
        (before..=after).contains(&c.first_seen_ns) && c.last_seen_ns <= after,
        "seen {}..{} outside CLOCK_BOOTTIME {before}..{after}",
        c.first_seen_ns,
        c.last_seen_ns
    );

    // A reply's flow starts after its request's, even within one tick: the
    // agent names the conversation's initiator by that order.
    let reply = eth(
        0x0800,
        &ipv4(6, DST4, SRC4, &opts, 0, &tcp(80, 40000, 0x12, 0, &[])),
    );
    assert_eq!(f.inner(&reply), TC_ACT_REDIRECT);
    let flows = f.flows();
    let reply_flow = flows
        .iter()
        .find(|(k, _)| k.direction() == Some(Direction::FromPod))
        .expect("the reply's flow");
    assert!(
        reply_flow.1.first_seen_ns > c.first_seen_ns,
        "reply first seen at {}, request at {}",
        reply_flow.1.first_seen_ns,
        c.first_seen_ns
    );
    let s = f.stats();
    assert_eq!(s.new_flows, 2);
    assert_eq!(s.redirects, 3);
    assert_eq!(
        (
            s.parse_errors,
            s.non_ip_packets,
            s.flow_update_failed,
            s.passthrough_packets
        ),
        (0, 0, 0, 0)
    );
}

#[test]
fn ipv4_udp_from_pod() {
    let f = Fixture::new("udp4", 12, Some(PodMode::Count));
    let frame = eth(
        0x0800,
        &ipv4(17, DST4, SRC4, &[], 0, &udp(5353, 53, &[0xab; 33])),
    );
    assert_eq!(f.inner(&frame), TC_ACT_REDIRECT);
    let (k, c) = f.only_flow();
    assert_eq!(
        k,
        key(12, Direction::FromPod, 17, v4(DST4), v4(SRC4), 5353, 53)
    );
    assert_eq!(
        (c.packets, c.bytes, c.tcp_flags),
        (1, frame.len() as u64, 0)
    );
}

#[test]
fn ipv6_tcp_behind_extension_headers() {
    let f = Fixture::new("tcp6", 13, Some(PodMode::Count));
    let seg = tcp(443, 50000, 0x10, 0, b"data");
    // fragment header, first fragment (offset 0, M=1), then TCP
    let mut frag = vec![6, 0, 0, 1, 0, 0, 0, 7];
    frag.extend_from_slice(&seg);
    // hop-by-hop, 8 bytes (hdrlen 0): next = fragment (44), PadN
    let mut hbh = vec![44, 0, 1, 4, 0, 0, 0, 0];
    hbh.extend_from_slice(&frag);
    let frame = eth(0x86dd, &ipv6(0, SRC6, DST6, &hbh));
    assert_eq!(f.outer(&frame), TC_ACT_REDIRECT);
    let (k, c) = f.only_flow();
    assert_eq!(
        k,
        key(13, Direction::ToPod, 6, v6(SRC6), v6(DST6), 443, 50000)
    );
    assert_eq!(k.src_ip(), v6(SRC6));
    assert_eq!(
        (c.packets, c.bytes, c.tcp_flags),
        (1, frame.len() as u64, 0x10)
    );
}

#[test]
fn ipv6_non_first_fragment_has_no_ports() {
    let f = Fixture::new("frag6", 14, Some(PodMode::Count));
    let mut frag = vec![17, 0, 0x05, 0xa8, 0, 0, 0, 7]; // offset 181*8, next UDP
    frag.extend_from_slice(&[0xee; 40]);
    let frame = eth(0x86dd, &ipv6(44, SRC6, DST6, &frag));
    assert_eq!(f.outer(&frame), TC_ACT_REDIRECT);
    let (k, _) = f.only_flow();
    assert_eq!(k, key(14, Direction::ToPod, 17, v6(SRC6), v6(DST6), 0, 0));
}

#[test]
fn icmp_echo_uses_type_and_code() {
    let f = Fixture::new("icmp", 15, Some(PodMode::Count));
    let frame = eth(0x0800, &ipv4(1, DST4, SRC4, &[], 0, &icmp(8, 0, &[0; 56])));
    assert_eq!(f.inner(&frame), TC_ACT_REDIRECT);
    let (k, c) = f.only_flow();
    assert_eq!(k, key(15, Direction::FromPod, 1, v4(DST4), v4(SRC4), 8, 0));
    assert_eq!(c.bytes, frame.len() as u64);
}

#[test]
fn icmpv6_uses_type_and_code() {
    let f = Fixture::new("icmp6", 16, Some(PodMode::Count));
    let frame = eth(0x86dd, &ipv6(58, DST6, SRC6, &icmp(128, 0, &[0; 16])));
    assert_eq!(f.inner(&frame), TC_ACT_REDIRECT);
    let (k, _) = f.only_flow();
    assert_eq!(
        k,
        key(16, Direction::FromPod, 58, v6(DST6), v6(SRC6), 128, 0)
    );
}

#[test]
fn vlan_tagged_ipv4_is_parsed_behind_the_tag() {
    let f = Fixture::new("vlan", 17, Some(PodMode::Count));
    let frame = eth_vlan(
        100,
        0x0800,
        &ipv4(17, SRC4, DST4, &[], 0, &udp(1000, 2000, &[1; 10])),
    );
    assert_eq!(f.outer(&frame), TC_ACT_REDIRECT);
    let (k, c) = f.only_flow();
    assert_eq!(
        k,
        key(17, Direction::ToPod, 17, v4(SRC4), v4(DST4), 1000, 2000)
    );
    assert_eq!(c.bytes, frame.len() as u64, "the tag is on the wire too");
}

#[test]
fn arp_is_not_a_flow_but_is_counted_and_forwarded() {
    let f = Fixture::new("arp", 18, Some(PodMode::Count));
    assert_eq!(f.outer(&arp_request()), TC_ACT_REDIRECT);
    assert_eq!(f.inner(&arp_request()), TC_ACT_REDIRECT);
    assert!(f.flows().is_empty());
    let s = f.stats();
    assert_eq!((s.non_ip_packets, s.redirects, s.new_flows), (2, 2, 0));
}

#[test]
fn truncated_frames_are_forwarded_without_a_flow() {
    // BPF_PROG_TEST_RUN itself refuses IPv4/IPv6 ethertypes shorter than
    // their fixed header, so the cuts are where the kernel lets them through
    let f = Fixture::new("trunc", 19, Some(PodMode::Count));
    let full = eth(
        0x0800,
        &ipv4(6, SRC4, DST4, &[], 0, &tcp(1, 2, 0x02, 0, &[])),
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("TCP cut after the ports", full[..14 + 20 + 6].to_vec()),
        ("UDP cut inside the ports", {
            let u = eth(0x0800, &ipv4(17, SRC4, DST4, &[], 0, &udp(1, 2, &[])));
            u[..14 + 20 + 2].to_vec()
        }),
        ("IHL claims 60 bytes that are not there", {
            let mut b = full[..14 + 24].to_vec();
            b[14] = 0x4f;
            b
        }),
        ("IPv4 behind a VLAN tag cut at 10 bytes", {
            let v = eth_vlan(7, 0x0800, &ipv4(17, SRC4, DST4, &[], 0, &udp(1, 2, &[])));
            v[..18 + 10].to_vec()
        }),
        ("VLAN tag without the inner ethertype", eth(0x8100, &[0, 7])),
        (
            "IPv6 extension header cut",
            eth(0x86dd, &ipv6(0, SRC6, DST6, &[17])),
        ),
        ("IPv6 TCP cut after the ports", {
            let v = eth(0x86dd, &ipv6(6, SRC6, DST6, &tcp(1, 2, 0, 0, &[])));
            v[..14 + 40 + 4].to_vec()
        }),
    ];
    for (what, frame) in &cases {
        assert_eq!(f.outer(frame), TC_ACT_REDIRECT, "{what}");
        assert!(f.flows().is_empty(), "{what} made a flow: {:#?}", f.flows());
    }
    let s = f.stats();
    let n = cases.len() as u64;
    assert_eq!((s.parse_errors, s.redirects, s.new_flows), (n, n, 0));
}

#[test]
fn non_first_ipv4_fragment_has_no_ports() {
    let f = Fixture::new("frag4", 20, Some(PodMode::Count));
    let frame = eth(0x0800, &ipv4(17, SRC4, DST4, &[], 185, &[0x77; 64]));
    assert_eq!(f.outer(&frame), TC_ACT_REDIRECT);
    let (k, c) = f.only_flow();
    assert_eq!(k, key(20, Direction::ToPod, 17, v4(SRC4), v4(DST4), 0, 0));
    assert_eq!((c.packets, c.bytes), (1, frame.len() as u64));
}

#[test]
fn gso_tcp_counts_wire_segments_and_bytes() {
    let f = Fixture::new("gso", 21, Some(PodMode::Count));
    // BPF_PROG_TEST_RUN takes at most about a page of data: a small MSS
    let mss = 300;
    // doff 8 (12 bytes of options), 10 segments of payload
    let frame = eth(
        0x0800,
        &ipv4(
            6,
            DST4,
            SRC4,
            &[],
            0,
            &tcp(33000, 8080, 0x18, 3, &vec![0x5a; mss * 10]),
        ),
    );
    let ctx = SkBuffCtx::gso(10, mss as u32);
    assert_eq!(test_run(f.obj.inner(), &frame, Some(&ctx)), TC_ACT_REDIRECT);
    let (k, c) = f.only_flow();
    assert_eq!(
        k,
        key(21, Direction::FromPod, 6, v4(DST4), v4(SRC4), 33000, 8080)
    );
    let hdr = 14 + 20 + 32;
    assert_eq!(c.packets, 10);
    assert_eq!(c.bytes, (frame.len() + 9 * hdr) as u64);
    assert_eq!(
        c.bytes,
        (10 * (hdr + mss)) as u64,
        "ten wire frames of headers + MSS"
    );

    // GSO UDP: 8-byte L4 header per segment
    let uframe = eth(
        0x0800,
        &ipv4(17, DST4, SRC4, &[], 0, &udp(9, 9, &vec![0; 2000])),
    );
    assert_eq!(
        test_run(f.obj.inner(), &uframe, Some(&SkBuffCtx::gso(4, 500))),
        TC_ACT_REDIRECT
    );
    let flows = f.flows();
    let (_, uc) = flows.iter().find(|(k, _)| k.proto == 17).expect("udp flow");
    assert_eq!(uc.packets, 4);
    assert_eq!(uc.bytes, (uframe.len() + 3 * (14 + 20 + 8)) as u64);
}

#[test]
fn passthrough_pods_make_no_flows() {
    // no config entry at all: the default
    let f = Fixture::new("pass", 22, None);
    let frame = eth(0x0800, &ipv4(17, SRC4, DST4, &[], 0, &udp(1, 2, &[])));
    assert_eq!(f.outer(&frame), TC_ACT_REDIRECT);
    assert_eq!(f.inner(&frame), TC_ACT_REDIRECT);
    assert_eq!(f.maps.pod_mode(22).unwrap(), PodMode::PassThrough);
    assert!(f.flows().is_empty());
    let s = f.stats();
    assert_eq!(
        (
            s.passthrough_packets,
            s.redirects,
            s.new_flows,
            s.parse_errors
        ),
        (2, 2, 0, 0)
    );

    // an explicit PassThrough entry, and back from Count to PassThrough
    let mut f = f;
    f.maps.set_pod_mode(22, PodMode::Count).unwrap();
    assert_eq!(f.outer(&frame), TC_ACT_REDIRECT);
    assert_eq!(f.flows().len(), 1);
    f.maps.set_pod_mode(22, PodMode::PassThrough).unwrap();
    assert_eq!(f.outer(&frame), TC_ACT_REDIRECT);
    assert_eq!(
        f.only_flow().1.packets,
        1,
        "not counted after switching back"
    );
    assert_eq!(f.stats().passthrough_packets, 3);
}

#[test]
fn two_pods_share_the_pinned_flow_map() {
    let t = TestRoot::new("share");
    let a = split::load(&t.root, &params(31)).unwrap();
    let b = split::load(&t.root, &params(32)).unwrap();
    let mut maps = NodeMaps::open(&t.root).unwrap();
    maps.set_pod_mode(31, PodMode::Count).unwrap();
    maps.set_pod_mode(32, PodMode::Count).unwrap();

    let frame = eth(0x0800, &ipv4(17, SRC4, DST4, &[], 0, &udp(7, 7, &[0; 20])));
    assert_eq!(test_run(a.outer(), &frame, None), TC_ACT_REDIRECT);
    assert_eq!(test_run(b.outer(), &frame, None), TC_ACT_REDIRECT);
    assert_eq!(test_run(b.outer(), &frame, None), TC_ACT_REDIRECT);

    let mut flows = maps.flows().unwrap();
    flows.sort_by_key(|(k, _)| k.pod_id);
    assert_eq!(flows.len(), 2, "{flows:#?}");
    assert_eq!(
        flows[0].0,
        key(31, Direction::ToPod, 17, v4(SRC4), v4(DST4), 7, 7)
    );
    assert_eq!(
        flows[1].0,
        key(32, Direction::ToPod, 17, v4(SRC4), v4(DST4), 7, 7)
    );
    assert_eq!((flows[0].1.packets, flows[1].1.packets), (1, 2));
    assert_eq!(maps.live_flow_count().unwrap(), 2);
    assert_eq!(maps.stats().unwrap().new_flows, 2);

    // both pods run the one node program, and it uses the pinned flow map
    let node = node_program::open(&t.root)
        .unwrap()
        .expect("node program loaded");
    let node_maps = aya::programs::ProgramInfo::from_pin(node_program::dir(&t.root).join("prog"))
        .unwrap()
        .map_ids()
        .unwrap()
        .unwrap();
    let flows_id = aya::maps::MapInfo::from_pin(t.root.map_path(abi::FLOWS_MAP))
        .unwrap()
        .id();
    assert!(
        node_maps.contains(&flows_id),
        "{node_maps:?} lacks {flows_id}"
    );
    drop((a, b));
    let again = split::load(&t.root, &params(33)).unwrap();
    drop(again);
    assert_eq!(
        node_program::open(&t.root).unwrap().unwrap().program_id(),
        node.program_id(),
        "a later load reuses the node program"
    );

    // removing one pod leaves the other's flows alone
    assert_eq!(maps.remove_pod(31).unwrap(), 1);
    let left = maps.flows().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0.pod_id, 32);
    assert_eq!(maps.pod_mode(31).unwrap(), PodMode::PassThrough);
    let s = maps.stats().unwrap();
    assert_eq!(s.lru_evictions(maps.live_flow_count().unwrap(), 1), 0);
}

#[test]
fn new_flow_emits_one_ring_buffer_event() {
    let f = Fixture::new("events", 40, Some(PodMode::Count));
    let frame = eth(
        0x0800,
        &ipv4(6, SRC4, DST4, &[], 0, &tcp(5, 6, 0x02, 0, &[])),
    );
    assert_eq!(f.outer(&frame), TC_ACT_REDIRECT);
    assert_eq!(f.outer(&frame), TC_ACT_REDIRECT);

    let events: Vec<FlowEvent> = ring_events(&f.t.root.map_path(abi::FLOW_EVENTS_MAP));
    // one event for the new flow, none for the existing flow
    assert_eq!(events.len(), 1, "{events:#?}");
    let ev = events[0];
    let (k, c) = f.only_flow();
    assert_eq!(ev.key, k);
    assert_eq!(ev.ts_ns, c.first_seen_ns);
    assert_eq!(f.stats().events_lost, 0);
}

#[test]
fn object_loads_concurrently_on_a_fresh_root() {
    // several first loads race to create the same pinned maps
    let t = TestRoot::new("race");
    let ids: Vec<(u32, u32)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let root = &t.root;
                s.spawn(move || {
                    let o = split::load(root, &params(50 + i)).expect("concurrent load");
                    drop(o);
                    let flows = aya::maps::MapInfo::from_pin(root.map_path(abi::FLOWS_MAP))
                        .unwrap()
                        .id();
                    let node = node_program::open(root).unwrap().expect("loaded");
                    (flows, node.program_id())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "all loads share one flow map and one node program: {ids:?}"
    );
}

#[test]
fn node_maps_before_first_attach_say_so() {
    let t = TestRoot::new("nomaps");
    let err = NodeMaps::open(&t.root).unwrap_err();
    assert!(matches!(err, Error::MapsNotPinned { .. }), "{err}");
    assert!(err.to_string().contains("not pinned"), "{err}");
}

#[test]
fn probe_checks_bpffs_and_loads() {
    let t = TestRoot::new("probe");
    weir_ebpf::probe(&t.root).expect("probe on bpffs");
    let err = weir_ebpf::probe(&weir_ebpf::BpfRoot::new(
        std::env::temp_dir().join("weir-not-bpffs"),
    ))
    .unwrap_err();
    assert!(matches!(err, Error::NotBpffs { .. }), "{err}");
}

#[test]
fn incompatible_pinned_map_is_refused() {
    let t = TestRoot::new("compat");
    // the right name and the wrong value size, pinned where the flow map belongs
    pin_foreign_map(&t.root, abi::FLOWS_MAP, "lru_hash", 48, 32);
    let err = split::load(&t.root, &params(60)).unwrap_err();
    assert!(matches!(err, Error::IncompatibleMap { .. }), "{err}");
}
