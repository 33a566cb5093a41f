//! The VXLAN monitor programs driven with BPF_PROG_TEST_RUN on crafted
//! frames, each case asserting the exact effect on every pinned map (or that
//! there was none). Needs root and bpffs.

mod common;

use std::net::IpAddr;

use common::*;
use weir_ebpf::{
    Error,
    vxlan::{self, VxlanMaps, VxlanObject, VxlanParams, VxlanStats},
    vxlan_abi::{
        self, IfaceCounters, VniCounters, VxDirection, VxFlowCounters, VxFlowEvent, VxFlowKey,
        VxStatIndex,
    },
};

/// TC_ACT_UNSPEC == TCX_NEXT (-1) as BPF_PROG_TEST_RUN reports it.
const TCX_NEXT: u32 = u32::MAX;

const NODE_A: [u8; 4] = [192, 0, 2, 1];
const NODE_B: [u8; 4] = [192, 0, 2, 2];
const NODE_A6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const NODE_B6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const POD_A: [u8; 4] = [10, 244, 0, 5];
const POD_B: [u8; 4] = [10, 244, 1, 7];
const POD_A6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
const POD_B6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7];
/// Source port the kernel's VXLAN driver picks from the inner flow hash.
const VX_SPORT: u16 = 51234;
const PORT: u16 = 8472;
const VNI: u32 = 1;
/// The device BPF_PROG_TEST_RUN runs on unless the context names another.
const LO: u32 = 1;

/// Fixed header sizes.
const ETH: usize = 14;
const IP4: usize = 20;
const IP6: usize = 40;
const UDP: usize = 8;
const VXLAN: usize = 8;

// ---- packet builders ----

fn vxlan_hdr(flags: u8, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut v = vec![
        flags,
        0,
        0,
        0,
        (vni >> 16) as u8,
        (vni >> 8) as u8,
        vni as u8,
        0,
    ];
    v.extend_from_slice(inner);
    v
}

/// A complete VXLAN frame over IPv4 to `port`.
fn over4(src: [u8; 4], dst: [u8; 4], port: u16, vni: u32, inner: &[u8]) -> Vec<u8> {
    eth(
        0x0800,
        &ipv4(
            17,
            src,
            dst,
            &[],
            0,
            &udp(VX_SPORT, port, &vxlan_hdr(0x08, vni, inner)),
        ),
    )
}

fn over6(src: [u8; 16], dst: [u8; 16], port: u16, vni: u32, inner: &[u8]) -> Vec<u8> {
    eth(
        0x86dd,
        &ipv6(
            17,
            src,
            dst,
            &udp(VX_SPORT, port, &vxlan_hdr(0x08, vni, inner)),
        ),
    )
}

fn inner4(proto: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
    eth(0x0800, &ipv4(proto, src, dst, &[], 0, l4))
}

fn inner6(next: u8, src: [u8; 16], dst: [u8; 16], l4: &[u8]) -> Vec<u8> {
    eth(0x86dd, &ipv6(next, src, dst, l4))
}

#[allow(clippy::too_many_arguments)]
fn key(
    dir: VxDirection,
    ifindex: u32,
    vni: u32,
    outer: (IpAddr, IpAddr),
    inner: (IpAddr, IpAddr),
    proto: u8,
    sport: u16,
    dport: u16,
) -> VxFlowKey {
    let mut k = VxFlowKey {
        vni,
        ifindex,
        inner_sport: sport,
        inner_dport: dport,
        inner_proto: proto,
        direction: dir as u8,
        ..Default::default()
    };
    k.set_outer(outer.0, outer.1);
    k.set_inner(inner.0, inner.1);
    k
}

/// `__sk_buff` context naming the device (ifindex at offset 40) and GSO.
fn ctx(ifindex: u32, gso_segs: u32, gso_size: u32) -> SkBuffCtx {
    let mut c = SkBuffCtx::gso(gso_segs, gso_size);
    c.0[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    c
}

// ---- fixture ----

struct Fixture {
    t: TestRoot,
    obj: VxlanObject,
    maps: VxlanMaps,
}

#[derive(Debug, PartialEq, Eq)]
struct Effect {
    flows: Vec<(VxFlowKey, VxFlowCounters)>,
    vni: Vec<(u32, VniCounters)>,
    iface: Vec<(u32, IfaceCounters)>,
    stats: Vec<(VxStatIndex, u64)>,
}

impl Fixture {
    fn new(tag: &str) -> Self {
        Self::with_port(tag, PORT)
    }

    fn with_port(tag: &str, port: u16) -> Self {
        let t = TestRoot::new(tag);
        let obj = vxlan::load(&t.root, &VxlanParams { port }).expect("load VXLAN monitor");
        let maps = VxlanMaps::open(&t.root).expect("open pinned maps");
        Self { t, obj, maps }
    }

    /// Runs tc ingress (decap direction) on `frame`; the verdict must be TCX_NEXT.
    fn ingress(&self, frame: &[u8]) {
        self.run(VxDirection::Decap, frame, None);
    }

    /// Runs tc egress (encap direction) on `frame`.
    fn egress(&self, frame: &[u8]) {
        self.run(VxDirection::Encap, frame, None);
    }

    fn run(&self, dir: VxDirection, frame: &[u8], ctx: Option<&SkBuffCtx>) {
        let prog = match dir {
            VxDirection::Decap => self.obj.ingress(),
            VxDirection::Encap => self.obj.egress(),
        };
        let verdict = test_run(prog_fd(prog), frame, ctx);
        assert_eq!(
            verdict, TCX_NEXT,
            "the monitor never decides a packet's fate: always TCX_NEXT / TC_ACT_UNSPEC"
        );
    }

    fn flows(&self) -> Vec<(VxFlowKey, VxFlowCounters)> {
        let mut f = self.maps.flows().unwrap();
        f.sort_by_key(|(k, _)| (k.direction, k.ifindex, k.vni, k.inner_sport, k.inner_proto));
        f
    }

    fn only_flow(&self) -> (VxFlowKey, VxFlowCounters) {
        let flows = self.flows();
        assert_eq!(flows.len(), 1, "expected exactly one flow, got {flows:#?}");
        flows[0]
    }

    fn stats(&self) -> VxlanStats {
        self.maps.stats().unwrap()
    }

    /// Everything the maps hold now; stats as the non-zero slots only.
    fn effect(&self) -> Effect {
        Effect {
            flows: self.flows(),
            vni: self.maps.per_vni().unwrap(),
            iface: self.maps.per_interface().unwrap(),
            stats: self.stats().iter().filter(|(_, v)| *v != 0).collect(),
        }
    }

    /// The exact effect of frames that are not (parsable) VXLAN: no flow, no
    /// VNI, the per-interface "other" counter and the one stat.
    fn assert_not_vxlan(&self, what: &str, dir: VxDirection, n: u64, stat: VxStatIndex) {
        let iface = match dir {
            VxDirection::Encap => IfaceCounters {
                other_egress_packets: n,
                ..Default::default()
            },
            VxDirection::Decap => IfaceCounters {
                other_ingress_packets: n,
                ..Default::default()
            },
        };
        assert_eq!(
            self.effect(),
            Effect {
                flows: vec![],
                vni: vec![],
                iface: vec![(LO, iface)],
                stats: vec![(stat, n)],
            },
            "{what}"
        );
    }

    fn events(&self) -> Vec<VxFlowEvent> {
        ring_events(&vxlan::events_pin(&self.t.root))
    }
}

fn decap(packets: u64, bytes: u64) -> VniCounters {
    VniCounters {
        decap_packets: packets,
        decap_bytes: bytes,
        ..Default::default()
    }
}

fn encap(packets: u64, bytes: u64) -> VniCounters {
    VniCounters {
        encap_packets: packets,
        encap_bytes: bytes,
        ..Default::default()
    }
}

fn iface_of(v: VniCounters) -> IfaceCounters {
    IfaceCounters {
        encap_packets: v.encap_packets,
        encap_bytes: v.encap_bytes,
        decap_packets: v.decap_packets,
        decap_bytes: v.decap_bytes,
        ..Default::default()
    }
}

/// The exact effect of `n` identical VXLAN packets of `bytes` each in one
/// direction that all made the flow `k`.
fn one_flow_effect(
    f: &Fixture,
    k: VxFlowKey,
    n: u64,
    bytes: u64,
    tcp_flags: u32,
    extra_stats: &[(VxStatIndex, u64)],
) {
    let (fk, c) = f.only_flow();
    assert_eq!(fk, k);
    let dir = k.direction().unwrap();
    let per_dir = match dir {
        VxDirection::Encap => encap(n, n * bytes),
        VxDirection::Decap => decap(n, n * bytes),
    };
    assert_eq!(
        (c.packets, c.bytes, c.tcp_flags, c.pad),
        (n, n * bytes, tcp_flags, 0)
    );
    assert_eq!(
        (
            c.encap_packets,
            c.encap_bytes,
            c.decap_packets,
            c.decap_bytes
        ),
        (
            per_dir.encap_packets,
            per_dir.encap_bytes,
            per_dir.decap_packets,
            per_dir.decap_bytes
        )
    );
    assert!(c.first_seen_ns > 0 && c.first_seen_ns <= c.last_seen_ns);
    let mut stats = vec![(VxStatIndex::NewFlows, 1), (VxStatIndex::VxlanPackets, n)];
    stats.extend_from_slice(extra_stats);
    stats.sort_by_key(|(i, _)| *i as u32);
    assert_eq!(
        f.effect(),
        Effect {
            flows: vec![(fk, c)],
            vni: vec![(k.vni, per_dir)],
            iface: vec![(k.ifindex, iface_of(per_dir))],
            stats,
        }
    );
}

// ---- the four outer x inner combinations ----

#[test]
fn v4_outer_v4_inner_tcp_decap() {
    let f = Fixture::new("v4v4");
    let opts = [1, 1, 1, 0]; // 4 bytes of inner IP options
    let syn = eth(
        0x0800,
        &ipv4(6, POD_A, POD_B, &opts, 0, &tcp(40000, 80, 0x02, 0, &[])),
    );
    let ack = eth(
        0x0800,
        &ipv4(6, POD_A, POD_B, &opts, 0, &tcp(40000, 80, 0x10, 0, &[])),
    );
    let f1 = over4(NODE_A, NODE_B, PORT, VNI, &syn);
    let f2 = over4(NODE_A, NODE_B, PORT, VNI, &ack);
    assert_eq!(f1.len(), f2.len());
    assert_eq!(f1.len(), ETH + IP4 + UDP + VXLAN + ETH + IP4 + 4 + 20);
    f.ingress(&f1);
    f.ingress(&f2);
    let k = key(
        VxDirection::Decap,
        LO,
        VNI,
        (v4(NODE_A), v4(NODE_B)),
        (v4(POD_A), v4(POD_B)),
        6,
        40000,
        80,
    );
    one_flow_effect(&f, k, 2, f1.len() as u64, 0x12, &[]);
    let ev = f.events();
    assert_eq!(ev.len(), 1, "one event for one new flow");
    assert_eq!(ev[0].key, k);
    assert_eq!(ev[0].ts_ns, f.only_flow().1.first_seen_ns);
}

#[test]
fn v4_outer_v6_inner_udp_encap() {
    let f = Fixture::new("v4v6");
    let frame = over4(
        NODE_B,
        NODE_A,
        PORT,
        VNI,
        &inner6(17, POD_B6, POD_A6, &udp(5353, 53, &[7; 33])),
    );
    f.egress(&frame);
    let k = key(
        VxDirection::Encap,
        LO,
        VNI,
        (v4(NODE_B), v4(NODE_A)),
        (v6(POD_B6), v6(POD_A6)),
        17,
        5353,
        53,
    );
    one_flow_effect(&f, k, 1, frame.len() as u64, 0, &[]);
}

#[test]
fn v6_outer_behind_extension_headers_v4_inner_decap() {
    let f = Fixture::new("v6v4");
    let inner = inner4(17, POD_A, POD_B, &udp(1000, 2000, &[1; 20]));
    let payload = udp(VX_SPORT, PORT, &vxlan_hdr(0x08, 77, &inner));
    // hop-by-hop (8 bytes) -> destination options (16 bytes) -> UDP
    let mut dst = vec![17, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    dst.extend_from_slice(&payload);
    let mut hbh = vec![60, 0, 1, 4, 0, 0, 0, 0];
    hbh.extend_from_slice(&dst);
    let frame = eth(0x86dd, &ipv6(0, NODE_A6, NODE_B6, &hbh));
    f.ingress(&frame);
    let k = key(
        VxDirection::Decap,
        LO,
        77,
        (v6(NODE_A6), v6(NODE_B6)),
        (v4(POD_A), v4(POD_B)),
        17,
        1000,
        2000,
    );
    one_flow_effect(&f, k, 1, frame.len() as u64, 0, &[]);
}

#[test]
fn v6_outer_v6_inner_tcp_encap() {
    let f = Fixture::new("v6v6");
    let frame = over6(
        NODE_A6,
        NODE_B6,
        PORT,
        0xabcdef,
        &inner6(6, POD_A6, POD_B6, &tcp(443, 50000, 0x18, 2, b"data")),
    );
    f.egress(&frame);
    let k = key(
        VxDirection::Encap,
        LO,
        0xabcdef,
        (v6(NODE_A6), v6(NODE_B6)),
        (v6(POD_A6), v6(POD_B6)),
        6,
        443,
        50000,
    );
    one_flow_effect(&f, k, 1, frame.len() as u64, 0x18, &[]);
}

#[test]
fn vlan_tagged_outer_frame_is_parsed_behind_the_tag() {
    let f = Fixture::new("vlan");
    let inner = inner4(17, POD_A, POD_B, &udp(1, 2, &[0; 10]));
    let frame = eth_vlan(
        100,
        0x0800,
        &ipv4(
            17,
            NODE_A,
            NODE_B,
            &[],
            0,
            &udp(VX_SPORT, PORT, &vxlan_hdr(0x08, VNI, &inner)),
        ),
    );
    f.ingress(&frame);
    let k = key(
        VxDirection::Decap,
        LO,
        VNI,
        (v4(NODE_A), v4(NODE_B)),
        (v4(POD_A), v4(POD_B)),
        17,
        1,
        2,
    );
    one_flow_effect(&f, k, 1, frame.len() as u64, 0, &[]);
}

// ---- what is not VXLAN ----

#[test]
fn other_udp_destination_port_is_not_vxlan() {
    let f = Fixture::new("port");
    let inner = inner4(17, POD_A, POD_B, &udp(1, 2, &[]));
    // IANA's port while the device uses 8472; and 8472 as a *source* port
    f.ingress(&over4(NODE_A, NODE_B, 4789, VNI, &inner));
    f.egress(&eth(
        0x0800,
        &ipv4(
            17,
            NODE_B,
            NODE_A,
            &[],
            0,
            &udp(PORT, 9999, &vxlan_hdr(0x08, VNI, &inner)),
        ),
    ));
    assert_eq!(
        f.effect(),
        Effect {
            flows: vec![],
            vni: vec![],
            iface: vec![(
                LO,
                IfaceCounters {
                    other_ingress_packets: 1,
                    other_egress_packets: 1,
                    ..Default::default()
                }
            )],
            stats: vec![(VxStatIndex::OtherUdpPort, 2)],
        }
    );

    // the port is per attachment (override_global): 4789 counts there
    let g = Fixture::with_port("port4789", 4789);
    let frame = over4(NODE_A, NODE_B, 4789, VNI, &inner);
    g.ingress(&frame);
    let k = key(
        VxDirection::Decap,
        LO,
        VNI,
        (v4(NODE_A), v4(NODE_B)),
        (v4(POD_A), v4(POD_B)),
        17,
        1,
        2,
    );
    one_flow_effect(&g, k, 1, frame.len() as u64, 0, &[]);
    g.ingress(&over4(NODE_A, NODE_B, PORT, VNI, &inner));
    assert_eq!(g.stats().get(VxStatIndex::OtherUdpPort), 1);
    assert_eq!(g.flows().len(), 1);
}

#[test]
fn non_vxlan_traffic_is_only_counted_per_interface() {
    let f = Fixture::new("nonvx");
    let dns = eth(
        0x0800,
        &ipv4(
            17,
            NODE_A,
            [192, 0, 2, 53],
            &[],
            0,
            &udp(40000, 53, &[0; 30]),
        ),
    );
    f.egress(&dns);
    f.assert_not_vxlan("DNS", VxDirection::Encap, 1, VxStatIndex::OtherUdpPort);

    let f = Fixture::new("nonudp");
    let ssh = eth(
        0x0800,
        &ipv4(6, NODE_A, NODE_B, &[], 0, &tcp(22, 40000, 0x10, 0, &[])),
    );
    let ssh6 = eth(
        0x86dd,
        &ipv6(6, NODE_A6, NODE_B6, &tcp(22, 40000, 0x10, 0, &[])),
    );
    f.ingress(&ssh);
    f.ingress(&ssh6);
    f.assert_not_vxlan("TCP", VxDirection::Decap, 2, VxStatIndex::NonUdp);

    let f = Fixture::new("arp");
    f.ingress(&arp_request());
    f.assert_not_vxlan("ARP", VxDirection::Decap, 1, VxStatIndex::NonIp);
}

#[test]
fn vxlan_header_without_the_i_flag_is_refused() {
    let f = Fixture::new("flags");
    let inner = inner4(17, POD_A, POD_B, &udp(1, 2, &[]));
    for flags in [0x00, 0x80, 0x04, 0xf7] {
        let frame = eth(
            0x0800,
            &ipv4(
                17,
                NODE_A,
                NODE_B,
                &[],
                0,
                &udp(VX_SPORT, PORT, &vxlan_hdr(flags, VNI, &inner)),
            ),
        );
        f.ingress(&frame);
    }
    f.assert_not_vxlan(
        "no I flag",
        VxDirection::Decap,
        4,
        VxStatIndex::BadVxlanFlags,
    );
    // other flag bits next to I (e.g. GBP's G bit) are accepted
    let g = Fixture::new("flagsok");
    g.ingress(&eth(
        0x0800,
        &ipv4(
            17,
            NODE_A,
            NODE_B,
            &[],
            0,
            &udp(VX_SPORT, PORT, &vxlan_hdr(0x88, VNI, &inner)),
        ),
    ));
    assert_eq!(g.flows().len(), 1);
}

// ---- truncation at every header boundary ----

#[test]
fn truncated_outer_headers_make_no_vxlan_counts() {
    // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header and
    // IPv4/IPv6 ethertypes without their fixed header, so cuts inside those
    // are made behind a VLAN tag, which the kernel does not look behind.
    let f = Fixture::new("trout");
    let inner = inner4(17, POD_A, POD_B, &udp(1, 2, &[]));
    let full4 = over4(NODE_A, NODE_B, PORT, VNI, &inner);
    let vlan4 = eth_vlan(
        7,
        0x0800,
        &ipv4(
            17,
            NODE_A,
            NODE_B,
            &[],
            0,
            &udp(VX_SPORT, PORT, &vxlan_hdr(0x08, VNI, &inner)),
        ),
    );
    let vlan6 = eth_vlan(
        7,
        0x86dd,
        &ipv6(
            17,
            NODE_A6,
            NODE_B6,
            &udp(VX_SPORT, PORT, &vxlan_hdr(0x08, VNI, &inner)),
        ),
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "outer Ethernet: VLAN tag without its ethertype",
            eth(0x8100, &[0, 7]),
        ),
        ("outer IPv4 cut at 10 bytes", vlan4[..18 + 10].to_vec()),
        ("outer IPv6 cut at 39 bytes", vlan6[..18 + 39].to_vec()),
        ("outer IPv4 IHL claims options that are not there", {
            let mut b = full4[..ETH + IP4].to_vec();
            b[ETH] = 0x46;
            b
        }),
        (
            "outer IPv6 extension header cut",
            eth(0x86dd, &ipv6(0, NODE_A6, NODE_B6, &[17])),
        ),
        (
            "UDP cut after the destination port",
            full4[..ETH + IP4 + 4].to_vec(),
        ),
        ("UDP cut at 7 bytes", full4[..ETH + IP4 + 7].to_vec()),
        (
            "VXLAN header cut at 7 bytes",
            full4[..ETH + IP4 + UDP + 7].to_vec(),
        ),
        (
            "UDP ends right before the VXLAN header",
            full4[..ETH + IP4 + UDP].to_vec(),
        ),
    ];
    for (what, frame) in &cases {
        f.ingress(frame);
        assert!(f.flows().is_empty(), "{what} made a flow");
    }
    f.assert_not_vxlan(
        "truncated outer",
        VxDirection::Decap,
        cases.len() as u64,
        VxStatIndex::TruncatedOuter,
    );
}

#[test]
fn truncated_inner_headers_count_per_vni_but_make_no_flow() {
    let f = Fixture::new("trin");
    let tcp4 = inner4(6, POD_A, POD_B, &tcp(1, 2, 0x02, 0, &[]));
    let udp6 = inner6(17, POD_A6, POD_B6, &udp(1, 2, &[]));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no inner frame at all", vec![]),
        ("inner Ethernet cut at 13 bytes", tcp4[..13].to_vec()),
        ("inner VLAN tag without its ethertype", eth(0x8100, &[0, 9])),
        ("inner IPv4 cut at 19 bytes", tcp4[..ETH + 19].to_vec()),
        ("inner IPv6 cut at 39 bytes", udp6[..ETH + 39].to_vec()),
        (
            "inner IPv6 extension header cut",
            inner6(60, POD_A6, POD_B6, &[6]),
        ),
        ("inner TCP cut at 13 bytes", tcp4[..ETH + IP4 + 13].to_vec()),
        ("inner UDP cut at 7 bytes", udp6[..ETH + IP6 + 7].to_vec()),
        ("inner ICMP cut at 1 byte", inner4(1, POD_A, POD_B, &[8])),
    ];
    let mut bytes = 0;
    for (what, inner) in &cases {
        let frame = over4(NODE_A, NODE_B, PORT, VNI, inner);
        bytes += frame.len() as u64;
        f.ingress(&frame);
        assert!(f.flows().is_empty(), "{what} made a flow");
    }
    let n = cases.len() as u64;
    assert_eq!(
        f.effect(),
        Effect {
            flows: vec![],
            vni: vec![(VNI, decap(n, bytes))],
            iface: vec![(LO, iface_of(decap(n, bytes)))],
            stats: vec![
                (VxStatIndex::VxlanPackets, n),
                (VxStatIndex::TruncatedInner, n)
            ],
        }
    );
}

#[test]
fn bad_headers_are_counted_apart_from_truncation() {
    let f = Fixture::new("bad");
    let inner = inner4(17, POD_A, POD_B, &udp(1, 2, &[]));
    // outer: IPv4 ethertype carrying version 6; IHL 4
    let mut wrong_version = over4(NODE_A, NODE_B, PORT, VNI, &inner);
    wrong_version[ETH] = 0x65;
    let mut short_ihl = over4(NODE_A, NODE_B, PORT, VNI, &inner);
    short_ihl[ETH] = 0x44;
    f.ingress(&wrong_version);
    f.ingress(&short_ihl);
    f.assert_not_vxlan(
        "bad outer IP",
        VxDirection::Decap,
        2,
        VxStatIndex::BadOuterHeader,
    );

    // inner: TCP data offset below 5 words
    let g = Fixture::new("badin");
    let mut seg = tcp(1, 2, 0x02, 0, &[]);
    seg[12] = 0x40;
    let frame = over4(NODE_A, NODE_B, PORT, VNI, &inner4(6, POD_A, POD_B, &seg));
    g.egress(&frame);
    let len = frame.len() as u64;
    assert_eq!(
        g.effect(),
        Effect {
            flows: vec![],
            vni: vec![(VNI, encap(1, len))],
            iface: vec![(LO, iface_of(encap(1, len)))],
            stats: vec![
                (VxStatIndex::VxlanPackets, 1),
                (VxStatIndex::BadInnerHeader, 1)
            ],
        }
    );
}

#[test]
fn inner_non_ip_is_vxlan_but_not_a_flow() {
    let f = Fixture::new("innerarp");
    let frame = over4(NODE_A, NODE_B, PORT, VNI, &arp_request());
    f.ingress(&frame);
    let len = frame.len() as u64;
    assert_eq!(
        f.effect(),
        Effect {
            flows: vec![],
            vni: vec![(VNI, decap(1, len))],
            iface: vec![(LO, iface_of(decap(1, len)))],
            stats: vec![(VxStatIndex::VxlanPackets, 1), (VxStatIndex::InnerNonIp, 1)],
        }
    );
}

// ---- IP options and fragments ----

#[test]
fn outer_ipv4_options_are_skipped() {
    let f = Fixture::new("opts");
    let inner = inner4(17, POD_A, POD_B, &udp(3, 4, &[9; 9]));
    // 8 bytes of options: NOP x3, EOL, padding
    let frame = eth(
        0x0800,
        &ipv4(
            17,
            NODE_A,
            NODE_B,
            &[1, 1, 1, 0, 0, 0, 0, 0],
            0,
            &udp(VX_SPORT, PORT, &vxlan_hdr(0x08, VNI, &inner)),
        ),
    );
    assert_eq!(frame[ETH], 0x47);
    f.ingress(&frame);
    let k = key(
        VxDirection::Decap,
        LO,
        VNI,
        (v4(NODE_A), v4(NODE_B)),
        (v4(POD_A), v4(POD_B)),
        17,
        3,
        4,
    );
    one_flow_effect(&f, k, 1, frame.len() as u64, 0, &[]);
}

#[test]
fn outer_fragments_are_not_parsed() {
    let f = Fixture::new("frag");
    let inner = inner4(17, POD_A, POD_B, &udp(1, 2, &[0; 40]));
    let payload = udp(VX_SPORT, PORT, &vxlan_hdr(0x08, VNI, &inner));
    // IPv4 first fragment (MF set, offset 0): headers present, still not parsed
    let mut first = eth(0x0800, &ipv4(17, NODE_A, NODE_B, &[], 0, &payload));
    first[ETH + 6] |= 0x20;
    // IPv4 later fragment
    let later = eth(0x0800, &ipv4(17, NODE_A, NODE_B, &[], 185, &payload[..24]));
    // IPv6 fragment header, first fragment with M set
    let mut fh = vec![17, 0, 0, 1, 0, 0, 0, 9];
    fh.extend_from_slice(&payload);
    let first6 = eth(0x86dd, &ipv6(44, NODE_A6, NODE_B6, &fh));
    // IPv6 later fragment (offset 64 bytes, M clear)
    let mut fh2 = vec![17, 0, 0, 64, 0, 0, 0, 9];
    fh2.extend_from_slice(&payload[..16]);
    let later6 = eth(0x86dd, &ipv6(44, NODE_A6, NODE_B6, &fh2));
    for frame in [&first, &later, &first6, &later6] {
        f.ingress(frame);
    }
    f.assert_not_vxlan(
        "outer fragments",
        VxDirection::Decap,
        4,
        VxStatIndex::OuterFragments,
    );

    // an IPv6 atomic fragment (offset 0, M clear) is a whole packet
    let g = Fixture::new("atomic");
    let mut atomic = vec![17, 0, 0, 0, 0, 0, 0, 9];
    atomic.extend_from_slice(&payload);
    let frame = eth(0x86dd, &ipv6(44, NODE_A6, NODE_B6, &atomic));
    g.ingress(&frame);
    let k = key(
        VxDirection::Decap,
        LO,
        VNI,
        (v6(NODE_A6), v6(NODE_B6)),
        (v4(POD_A), v4(POD_B)),
        17,
        1,
        2,
    );
    one_flow_effect(&g, k, 1, frame.len() as u64, 0, &[]);
}

#[test]
fn inner_non_first_fragments_make_flows_without_ports() {
    let f = Fixture::new("infrag");
    let frag4 = eth(0x0800, &ipv4(17, POD_A, POD_B, &[], 185, &[0x77; 64]));
    let frame = over4(NODE_A, NODE_B, PORT, VNI, &frag4);
    f.egress(&frame);
    let k = key(
        VxDirection::Encap,
        LO,
        VNI,
        (v4(NODE_A), v4(NODE_B)),
        (v4(POD_A), v4(POD_B)),
        17,
        0,
        0,
    );
    one_flow_effect(
        &f,
        k,
        1,
        frame.len() as u64,
        0,
        &[(VxStatIndex::InnerFragments, 1)],
    );

    let g = Fixture::new("infrag6");
    let mut fh = vec![6, 0, 0x05, 0xa8, 0, 0, 0, 7]; // offset 181*8, next TCP
    fh.extend_from_slice(&[0xee; 40]);
    let frame = over4(NODE_A, NODE_B, PORT, VNI, &inner6(44, POD_A6, POD_B6, &fh));
    g.egress(&frame);
    let k = key(
        VxDirection::Encap,
        LO,
        VNI,
        (v4(NODE_A), v4(NODE_B)),
        (v6(POD_A6), v6(POD_B6)),
        6,
        0,
        0,
    );
    one_flow_effect(
        &g,
        k,
        1,
        frame.len() as u64,
        0,
        &[(VxStatIndex::InnerFragments, 1)],
    );
}

// ---- ICMP ----

#[test]
fn inner_icmp_echo_uses_type_and_code() {
    let f = Fixture::new("icmp");
    let frame = over4(
        NODE_A,
        NODE_B,
        PORT,
        VNI,
        &inner4(1, POD_A, POD_B, &icmp(8, 0, &[0; 56])),
    );
    f.egress(&frame);
    let k = key(
        VxDirection::Encap,
        LO,
        VNI,
        (v4(NODE_A), v4(NODE_B)),
        (v4(POD_A), v4(POD_B)),
        1,
        8,
        0,
    );
    one_flow_effect(&f, k, 1, frame.len() as u64, 0, &[]);
}

#[test]
fn inner_icmpv6_uses_type_and_code() {
    let f = Fixture::new("icmp6");
    let frame = over6(
        NODE_B6,
        NODE_A6,
        PORT,
        VNI,
        &inner6(58, POD_B6, POD_A6, &icmp(129, 0, &[0; 16])),
    );
    f.ingress(&frame);
    let k = key(
        VxDirection::Decap,
        LO,
        VNI,
        (v6(NODE_B6), v6(NODE_A6)),
        (v6(POD_B6), v6(POD_A6)),
        58,
        129,
        0,
    );
    one_flow_effect(&f, k, 1, frame.len() as u64, 0, &[]);
}

// ---- GSO of encapsulated packets ----

#[test]
fn gso_counts_segments_and_repeats_outer_and_inner_headers() {
    let f = Fixture::new("gso");
    // BPF_PROG_TEST_RUN takes about a page of data: a small MSS
    let mss = 300;
    // inner TCP with 12 bytes of options (doff 8)
    let inner = inner4(
        6,
        POD_A,
        POD_B,
        &tcp(33000, 8080, 0x18, 3, &vec![0x5a; mss * 10]),
    );
    let frame = over4(NODE_A, NODE_B, PORT, VNI, &inner);
    f.run(VxDirection::Encap, &frame, Some(&ctx(0, 10, mss as u32)));
    // every wire segment carries outer Eth/IPv4/UDP/VXLAN and inner Eth/IPv4/TCP
    let hdr = (ETH + IP4 + UDP + VXLAN + ETH + IP4 + 32) as u64;
    let (k, c) = f.only_flow();
    assert_eq!(k.inner_sport, 33000);
    assert_eq!(c.packets, 10);
    assert_eq!(c.bytes, frame.len() as u64 + 9 * hdr);
    assert_eq!(
        c.bytes,
        10 * (hdr + mss as u64),
        "ten wire frames of headers + MSS"
    );
    assert_eq!((c.encap_packets, c.encap_bytes), (10, c.bytes));
    assert_eq!(f.maps.per_vni().unwrap(), [(VNI, encap(10, c.bytes))]);
    assert_eq!(
        f.maps.per_interface().unwrap(),
        [(LO, iface_of(encap(10, c.bytes)))]
    );
    assert_eq!(
        f.stats().vxlan_packets(),
        1,
        "stats count what the program saw: one super-packet"
    );

    // gso_segs left 0 with a gso_size (SKB_GSO_DODGY sources): derived from
    // the payload, here 2000 bytes of inner UDP in 500-byte segments
    let g = Fixture::new("gso0");
    let uinner = inner6(17, POD_A6, POD_B6, &udp(9, 9, &vec![0; 2000]));
    let uframe = over6(NODE_A6, NODE_B6, PORT, VNI, &uinner);
    g.run(VxDirection::Decap, &uframe, Some(&ctx(0, 0, 500)));
    let uhdr = (ETH + IP6 + UDP + VXLAN + ETH + IP6 + UDP) as u64;
    let (_, uc) = g.only_flow();
    assert_eq!(uc.packets, 4);
    assert_eq!(uc.bytes, uframe.len() as u64 + 3 * uhdr);
    assert_eq!(uc.bytes, 4 * (uhdr + 500));
}

// ---- per-VNI, per-interface, encap vs decap ----

#[test]
fn per_vni_and_per_interface_counters() {
    // devices that exist in a netns of the test: BPF_PROG_TEST_RUN runs on
    // the device the context names, in the netns of the calling thread
    let ns = Netns::new("vxif");
    ns.ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"]);
    let (if0, if1) = (ns.ifindex("ul0"), ns.ifindex("ul1"));
    let f = Fixture::new("pervni");
    let a = over4(
        NODE_A,
        NODE_B,
        PORT,
        1,
        &inner4(17, POD_A, POD_B, &udp(1, 2, &[0; 10])),
    );
    let b = over4(
        NODE_A,
        NODE_B,
        PORT,
        2,
        &inner4(17, POD_A, POD_B, &udp(1, 2, &[0; 30])),
    );
    let (la, lb) = (a.len() as u64, b.len() as u64);
    ns.enter(|| {
        // if0: VNI 1 in (x2) and out, VNI 2 out; if1: VNI 2 in, plus ARP
        f.run(VxDirection::Decap, &a, Some(&ctx(if0, 0, 0)));
        f.run(VxDirection::Decap, &a, Some(&ctx(if0, 0, 0)));
        f.run(VxDirection::Encap, &a, Some(&ctx(if0, 0, 0)));
        f.run(VxDirection::Encap, &b, Some(&ctx(if0, 0, 0)));
        f.run(VxDirection::Decap, &b, Some(&ctx(if1, 0, 0)));
        f.run(VxDirection::Decap, &arp_request(), Some(&ctx(if1, 0, 0)));
    });
    assert_eq!(
        f.maps.per_vni().unwrap(),
        [
            (
                1,
                VniCounters {
                    encap_packets: 1,
                    encap_bytes: la,
                    decap_packets: 2,
                    decap_bytes: 2 * la
                }
            ),
            (
                2,
                VniCounters {
                    encap_packets: 1,
                    encap_bytes: lb,
                    decap_packets: 1,
                    decap_bytes: lb
                }
            ),
        ]
    );
    let mut expected = vec![
        (
            if0,
            IfaceCounters {
                encap_packets: 2,
                encap_bytes: la + lb,
                decap_packets: 2,
                decap_bytes: 2 * la,
                ..Default::default()
            },
        ),
        (
            if1,
            IfaceCounters {
                decap_packets: 1,
                decap_bytes: lb,
                other_ingress_packets: 1,
                ..Default::default()
            },
        ),
    ];
    expected.sort_by_key(|(i, _)| *i);
    assert_eq!(f.maps.per_interface().unwrap(), expected);
    let flows = f.flows();
    assert_eq!(flows.len(), 4, "{flows:#?}");
    let find = |dir: VxDirection, ifindex: u32, vni: u32| {
        flows
            .iter()
            .find(|(k, _)| k.direction == dir as u8 && k.ifindex == ifindex && k.vni == vni)
            .map(|(_, c)| (c.packets, c.bytes))
    };
    assert_eq!(find(VxDirection::Decap, if0, 1), Some((2, 2 * la)));
    assert_eq!(find(VxDirection::Encap, if0, 1), Some((1, la)));
    assert_eq!(find(VxDirection::Encap, if0, 2), Some((1, lb)));
    assert_eq!(find(VxDirection::Decap, if1, 2), Some((1, lb)));
    let s = f.stats();
    assert_eq!((s.new_flows(), s.vxlan_packets()), (4, 5));
    assert_eq!(s.get(VxStatIndex::NonIp), 1);
}

#[test]
fn encap_and_decap_are_kept_apart() {
    let f = Fixture::new("dirs");
    let frame = over4(
        NODE_A,
        NODE_B,
        PORT,
        VNI,
        &inner4(6, POD_A, POD_B, &tcp(1, 2, 0x10, 0, &[])),
    );
    let len = frame.len() as u64;
    f.egress(&frame);
    f.egress(&frame);
    f.ingress(&frame);
    let flows = f.flows();
    assert_eq!(flows.len(), 2, "direction is part of the key: {flows:#?}");
    let (ek, ec) = flows[0];
    let (dk, dc) = flows[1];
    assert_eq!(ek.direction(), Some(VxDirection::Encap));
    assert_eq!(dk.direction(), Some(VxDirection::Decap));
    assert_eq!(
        VxFlowKey { direction: 1, ..ek },
        dk,
        "only the direction differs"
    );
    assert_eq!(
        (
            ec.packets,
            ec.bytes,
            ec.encap_packets,
            ec.encap_bytes,
            ec.decap_packets,
            ec.decap_bytes
        ),
        (2, 2 * len, 2, 2 * len, 0, 0)
    );
    assert_eq!(
        (
            dc.packets,
            dc.bytes,
            dc.encap_packets,
            dc.encap_bytes,
            dc.decap_packets,
            dc.decap_bytes
        ),
        (1, len, 0, 0, 1, len)
    );
    let both = VniCounters {
        encap_packets: 2,
        encap_bytes: 2 * len,
        decap_packets: 1,
        decap_bytes: len,
    };
    assert_eq!(f.maps.per_vni().unwrap(), [(VNI, both)]);
    assert_eq!(f.maps.per_interface().unwrap(), [(LO, iface_of(both))]);
    assert_eq!(f.events().len(), 2);
}

// ---- maps and loading ----

#[test]
fn maps_are_pinned_by_name_and_shared_between_loads() {
    let t = TestRoot::new("share");
    let a = vxlan::load(&t.root, &VxlanParams { port: 8472 }).unwrap();
    let b = vxlan::load(&t.root, &VxlanParams { port: 4789 }).unwrap();
    for name in [
        vxlan_abi::FLOWS_MAP,
        vxlan_abi::VNI_MAP,
        vxlan_abi::IFACE_MAP,
        vxlan_abi::STATS_MAP,
        vxlan_abi::EVENTS_MAP,
    ] {
        assert!(t.root.map_path(name).exists(), "{name} pinned");
    }
    let inner = inner4(17, POD_A, POD_B, &udp(1, 2, &[]));
    assert_eq!(
        test_run(
            prog_fd(a.ingress()),
            &over4(NODE_A, NODE_B, 8472, VNI, &inner),
            None
        ),
        TCX_NEXT
    );
    assert_eq!(
        test_run(
            prog_fd(b.ingress()),
            &over4(NODE_A, NODE_B, 4789, VNI, &inner),
            None
        ),
        TCX_NEXT
    );
    let maps = VxlanMaps::open(&t.root).unwrap();
    let flows = maps.flows().unwrap();
    assert_eq!(
        flows.len(),
        1,
        "same flow through both instances: {flows:#?}"
    );
    assert_eq!(flows[0].1.packets, 2);
    assert_eq!(maps.live_flow_count().unwrap(), 1);
    let s = maps.stats().unwrap();
    assert_eq!(s.lru_evictions(1, 0), 0);
    let mut maps = maps;
    assert!(maps.remove_flow(&flows[0].0).unwrap());
    assert!(!maps.remove_flow(&flows[0].0).unwrap());
}

#[test]
fn maps_before_first_load_say_so() {
    let t = TestRoot::new("nomaps");
    let err = VxlanMaps::open(&t.root).unwrap_err();
    assert!(matches!(err, Error::VxlanMonitorNotLoaded { .. }), "{err}");
    assert!(err.to_string().contains("VXLAN monitor"), "{err}");
}

#[test]
fn incompatible_pinned_map_is_refused() {
    let t = TestRoot::new("compat");
    pin_foreign_map(&t.root, vxlan_abi::FLOWS_MAP, "lru_hash", 80, 64);
    let err = vxlan::load(&t.root, &VxlanParams::default()).unwrap_err();
    assert!(matches!(err, Error::IncompatibleMap { .. }), "{err}");
}

#[test]
fn port_zero_is_refused() {
    let t = TestRoot::new("port0");
    let err = vxlan::load(&t.root, &VxlanParams { port: 0 }).unwrap_err();
    assert!(matches!(err, Error::InvalidParams(_)), "{err}");
}
