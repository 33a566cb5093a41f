//! The VXLAN monitor on real VXLAN traffic: two "nodes" (network
//! namespaces) joined by a veth underlay, each with a `flannel.1` VXLAN
//! device configured the way flanneld configures it, and a pod namespace
//! behind each node. Pod A sends UDP datagrams to pod B; the monitor on
//! node A's underlay must count them as encapsulated, the one on node B's
//! as decapsulated, exactly. (Finding the flannel devices is the agent's
//! job: weir-operator's tests/vxlan_discovery.rs.)
//! Needs root, bpffs, iproute2 and the vxlan and veth drivers.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use aya::programs::{SchedClassifier, TcAttachType};
use common::*;
use weir_ebpf::{
    BpfRoot,
    vxlan::{self, VxlanMaps, VxlanParams},
    vxlan_abi::{IfaceCounters, VniCounters, VxDirection, VxFlowKey},
};

const UNDERLAY_A: &str = "192.0.2.1";
const UNDERLAY_B: &str = "192.0.2.2";
const VTEP_MAC_A: &str = "02:00:00:00:0a:01";
const VTEP_MAC_B: &str = "02:00:00:00:0a:02";
const POD_A: &str = "10.244.0.5";
const POD_B: &str = "10.244.1.5";
const POD_B_PORT: u16 = 7777;
const PORT: u16 = 8472;
const VNI: u32 = 1;
/// Outer Ethernet + IPv4 + UDP + VXLAN, inner Ethernet + IPv4 + UDP.
const HEADERS: u64 = 14 + 20 + 8 + 8 + 14 + 20 + 8;

/// `ip netns exec <ns> <cmd...>`
fn exec(ns: &Netns, cmd: &[&str]) {
    let mut all = vec!["netns", "exec", ns.name.as_str()];
    all.extend_from_slice(cmd);
    run("ip", &all);
}

/// One flannel node: underlay `ul`, `flannel.1`, a pod behind `veth`.
struct Node {
    ns: Netns,
    pod: Netns,
    underlay: &'static str,
}

struct Cluster {
    a: Node,
    b: Node,
}

impl Cluster {
    fn new(tag: &str) -> Self {
        let a = Node {
            ns: Netns::new(&format!("{tag}a")),
            pod: Netns::new(&format!("{tag}pa")),
            underlay: "ul-a",
        };
        let b = Node {
            ns: Netns::new(&format!("{tag}b")),
            pod: Netns::new(&format!("{tag}pb")),
            underlay: "ul-b",
        };
        a.ns.ip(&[
            "link", "add", "ul-a", "type", "veth", "peer", "name", "ul-b", "netns", &b.ns.name,
        ]);
        let c = Self { a, b };
        c.a.setup(
            UNDERLAY_A, VTEP_MAC_A, "10.244.0", "10.244.1", UNDERLAY_B, VTEP_MAC_B,
        );
        c.b.setup(
            UNDERLAY_B, VTEP_MAC_B, "10.244.1", "10.244.0", UNDERLAY_A, VTEP_MAC_A,
        );
        c
    }
}

impl Node {
    /// What flanneld does on a node (the device, its /32, and for the peer:
    /// an onlink route via the peer's VTEP address, a permanent neighbour
    /// entry and an FDB entry), plus a pod on a /24 behind a veth.
    fn setup(
        &self,
        underlay_ip: &str,
        mac: &str,
        subnet: &str,
        peer_subnet: &str,
        peer_underlay_ip: &str,
        peer_mac: &str,
    ) {
        let ns = &self.ns;
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{underlay_ip}/24"),
            "dev",
            self.underlay,
        ]);
        ns.ip(&["link", "set", self.underlay, "up"]);
        ns.ip(&[
            "link",
            "add",
            "flannel.1",
            "address",
            mac,
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            underlay_ip,
            "dev",
            self.underlay,
            "dstport",
            "8472",
            "nolearning",
        ]);
        // no IPv6 link-local address: nothing but the test's traffic crosses the overlay
        ns.ip(&["link", "set", "flannel.1", "addrgenmode", "none"]);
        ns.ip(&["addr", "add", &format!("{subnet}.0/32"), "dev", "flannel.1"]);
        ns.ip(&["link", "set", "flannel.1", "up"]);
        let peer_vtep = format!("{peer_subnet}.0");
        ns.ip(&[
            "route",
            "add",
            &format!("{peer_subnet}.0/24"),
            "via",
            &peer_vtep,
            "dev",
            "flannel.1",
            "onlink",
        ]);
        ns.ip(&[
            "neigh",
            "add",
            &peer_vtep,
            "lladdr",
            peer_mac,
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ]);
        exec(
            ns,
            &[
                "bridge",
                "fdb",
                "append",
                peer_mac,
                "dev",
                "flannel.1",
                "dst",
                peer_underlay_ip,
                "self",
                "permanent",
            ],
        );
        exec(ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);

        // the pod: eth0 in its own netns, the gateway (.1, as cni0 holds it) on the node
        self.pod.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "veth0", "netns", &ns.name,
        ]);
        self.pod.ip(&["link", "set", "lo", "up"]);
        self.pod.ip(&["link", "set", "eth0", "up"]);
        self.pod
            .ip(&["addr", "add", &format!("{subnet}.5/24"), "dev", "eth0"]);
        self.pod
            .ip(&["route", "add", "default", "via", &format!("{subnet}.1")]);
        ns.ip(&["addr", "add", &format!("{subnet}.1/24"), "dev", "veth0"]);
        ns.ip(&["link", "set", "veth0", "up"]);
    }

    fn attach(&self, root: &BpfRoot) -> vxlan::VxlanAttachment {
        let ul = self.underlay;
        self.ns
            .enter(|| vxlan::attach(root, ul, &VxlanParams { port: PORT }))
            .expect("attach the VXLAN monitor")
    }

    fn ul_ifindex(&self) -> u32 {
        self.ns.ifindex(self.underlay)
    }

    fn tcx(&self, hook: TcAttachType) -> Vec<String> {
        let ul = self.underlay;
        self.ns.enter(|| {
            let (_, progs) = SchedClassifier::query_tcx(ul, hook).expect("query tcx");
            progs
                .iter()
                .map(|p| p.name_as_str().unwrap_or("?").to_owned())
                .collect()
        })
    }
}

/// Sends `n` datagrams of `len` bytes pod A -> pod B; returns the sender's
/// port and how many pod B received.
fn send(c: &Cluster, n: usize, len: usize) -> (u16, usize) {
    let rx =
        c.b.pod
            .enter(|| UdpSocket::bind((POD_B, POD_B_PORT)).expect("bind in pod B"));
    let tx =
        c.a.pod
            .enter(|| UdpSocket::bind((POD_A, 0)).expect("bind in pod A"));
    rx.set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let dst: SocketAddr = (POD_B.parse::<Ipv4Addr>().unwrap(), POD_B_PORT).into();
    let mut got = 0;
    let mut buf = [0u8; 2048];
    for _ in 0..n {
        tx.send_to(&vec![0x42; len], dst).unwrap();
        if let Ok((m, from)) = rx.recv_from(&mut buf) {
            assert_eq!(m, len);
            assert_eq!(from.ip(), POD_A.parse::<IpAddr>().unwrap());
            got += 1;
        }
    }
    (tx.local_addr().unwrap().port(), got)
}

fn flow_key(dir: VxDirection, ifindex: u32, outer: (&str, &str), sport: u16) -> VxFlowKey {
    let mut k = VxFlowKey {
        vni: VNI,
        ifindex,
        inner_sport: sport,
        inner_dport: POD_B_PORT,
        inner_proto: 17,
        direction: dir as u8,
        ..Default::default()
    };
    k.set_outer(outer.0.parse().unwrap(), outer.1.parse().unwrap());
    k.set_inner(POD_A.parse().unwrap(), POD_B.parse().unwrap());
    k
}

#[test]
fn pod_to_pod_over_flannel_vxlan_is_counted_on_both_nodes() {
    let c = Cluster::new("vx");
    let (ta, tb) = (TestRoot::new("vxa"), TestRoot::new("vxb"));

    let ul_a = c.a.ul_ifindex();
    // the monitor attaches to the underlay flannel.1 names (`dev ul-a`; the
    // agent's discovery, tested in weir-operator, reads it from the kernel)
    let att_a = c.a.attach(&ta.root);
    let att_b = c.b.attach(&tb.root);
    assert_eq!((att_a.ifname.as_str(), att_a.ifindex), ("ul-a", ul_a));
    assert!(!att_a.replaced_in_place && !att_b.replaced_in_place);
    assert_eq!(c.a.tcx(TcAttachType::Ingress), ["weir_vx_ingress"]);
    assert_eq!(c.a.tcx(TcAttachType::Egress), ["weir_vx_egress"]);
    assert_eq!(vxlan::list_attachments(&ta.root).unwrap(), ["ul-a"]);
    c.a.ns
        .enter(|| vxlan::verify(&ta.root, "ul-a", &VxlanParams { port: PORT }))
        .expect("verify");

    // N datagrams of a known size, pod A -> pod B
    let (n, len) = (5, 100);
    let (sport, got) = send(&c, n, len);
    assert_eq!(got, n, "pod B received every datagram over the overlay");
    let n = n as u64;
    let wire = HEADERS + len as u64;

    let maps_a = VxlanMaps::open(&ta.root).unwrap();
    let maps_b = VxlanMaps::open(&tb.root).unwrap();
    let ul_b = c.b.ul_ifindex();

    let fa = maps_a.flows().unwrap();
    assert_eq!(
        fa.len(),
        1,
        "node A: only the test's flow crossed the overlay: {fa:#?}"
    );
    let (ka, ca) = fa[0];
    assert_eq!(
        ka,
        flow_key(VxDirection::Encap, ul_a, (UNDERLAY_A, UNDERLAY_B), sport)
    );
    assert_eq!(
        (
            ca.packets,
            ca.bytes,
            ca.encap_packets,
            ca.encap_bytes,
            ca.decap_packets
        ),
        (n, n * wire, n, n * wire, 0)
    );

    let fb = maps_b.flows().unwrap();
    assert_eq!(fb.len(), 1, "node B: {fb:#?}");
    let (kb, cb) = fb[0];
    assert_eq!(
        kb,
        flow_key(VxDirection::Decap, ul_b, (UNDERLAY_A, UNDERLAY_B), sport)
    );
    assert_eq!(
        (
            cb.packets,
            cb.bytes,
            cb.decap_packets,
            cb.decap_bytes,
            cb.encap_packets
        ),
        (n, n * wire, n, n * wire, 0)
    );

    let enc = VniCounters {
        encap_packets: n,
        encap_bytes: n * wire,
        ..Default::default()
    };
    let dec = VniCounters {
        decap_packets: n,
        decap_bytes: n * wire,
        ..Default::default()
    };
    assert_eq!(maps_a.per_vni().unwrap(), [(VNI, enc)]);
    assert_eq!(maps_b.per_vni().unwrap(), [(VNI, dec)]);
    let ia = maps_a.per_interface().unwrap();
    assert_eq!(ia.len(), 1);
    assert_eq!(ia[0].0, ul_a);
    assert_eq!(
        (
            ia[0].1.encap_packets,
            ia[0].1.encap_bytes,
            ia[0].1.decap_packets
        ),
        (n, n * wire, 0)
    );
    assert!(
        ia[0].1.other_egress_packets >= 1 && ia[0].1.other_ingress_packets >= 1,
        "ARP for the peer's underlay address is seen as other traffic: {ia:?}"
    );
    let ib = maps_b.per_interface().unwrap();
    assert_eq!(ib.len(), 1);
    assert_eq!(
        (
            ib[0].0,
            ib[0].1.decap_packets,
            ib[0].1.decap_bytes,
            ib[0].1.encap_packets
        ),
        (ul_b, n, n * wire, 0)
    );
    for (node, maps) in [("A", &maps_a), ("B", &maps_b)] {
        let s = maps.stats().unwrap();
        assert_eq!(s.new_flows(), 1, "node {node}: {s:?}");
        assert_eq!(s.vxlan_packets(), n, "node {node}: {s:?}");
        assert_eq!(s.flow_update_failed(), 0);
        assert_eq!(s.events_lost(), 0);
    }
}

#[test]
fn reattach_under_traffic_misses_and_doubles_nothing_and_detach_removes_all() {
    let c = Cluster::new("vr");
    let (ta, tb) = (TestRoot::new("vra"), TestRoot::new("vrb"));
    c.a.attach(&ta.root);
    c.b.attach(&tb.root);
    // resolve the neighbours first so no datagram waits in a queue
    assert_eq!(send(&c, 1, 10).1, 1);

    let rx =
        c.b.pod
            .enter(|| UdpSocket::bind((POD_B, POD_B_PORT + 1)).expect("bind in pod B"));
    rx.set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let tx =
        c.a.pod
            .enter(|| UdpSocket::bind((POD_A, 0)).expect("bind in pod A"));
    let dst: SocketAddr = (POD_B.parse::<Ipv4Addr>().unwrap(), POD_B_PORT + 1).into();
    let sport = tx.local_addr().unwrap().port();
    let stop = AtomicBool::new(false);
    let (sent, received, reattached) = std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            let mut buf = [0u8; 256];
            let mut n = 0u64;
            while rx.recv_from(&mut buf).is_ok() {
                n += 1;
            }
            n
        });
        let sender = s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) || n < 200 {
                tx.send_to(&[7u8; 64], dst).unwrap();
                n += 1;
                if n.is_multiple_of(20) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            n
        });
        // replace node A's programs repeatedly while traffic flows
        let mut in_place = 0;
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(20));
            if c.a.attach(&ta.root).replaced_in_place {
                in_place += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let sent = sender.join().unwrap();
        (sent, receiver.join().unwrap(), in_place)
    });
    assert_eq!(
        reattached, 5,
        "every re-attach updated the live links in place"
    );
    assert_eq!(
        c.a.tcx(TcAttachType::Egress),
        ["weir_vx_egress"],
        "not stacked"
    );
    assert_eq!(c.a.tcx(TcAttachType::Ingress), ["weir_vx_ingress"]);
    assert_eq!(received, sent, "the overlay lost nothing");

    let count = |root: &BpfRoot, dir: VxDirection| -> u64 {
        VxlanMaps::open(root)
            .unwrap()
            .flows()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.inner_sport == sport && k.direction() == Some(dir))
            .map(|(_, c)| c.packets)
            .sum()
    };
    assert_eq!(
        count(&ta.root, VxDirection::Encap),
        sent,
        "node A counted every datagram once across the re-attaches"
    );
    assert_eq!(count(&tb.root, VxDirection::Decap), sent);

    let ul_a = c.a.ul_ifindex();
    let before: IfaceCounters = VxlanMaps::open(&ta.root).unwrap().per_interface().unwrap()[0].1;

    // detach: nothing left on the hooks, nothing counted any more
    vxlan::detach(&ta.root, "ul-a").expect("detach");
    assert!(c.a.tcx(TcAttachType::Ingress).is_empty());
    assert!(c.a.tcx(TcAttachType::Egress).is_empty());
    assert!(vxlan::list_attachments(&ta.root).unwrap().is_empty());
    assert!(!vxlan::links_dir(&ta.root, "ul-a").unwrap().exists());
    assert_eq!(send(&c, 3, 10).1, 3, "traffic flows without the monitor");
    let after = VxlanMaps::open(&ta.root).unwrap().per_interface().unwrap();
    assert_eq!(after, [(ul_a, before)], "nothing counted after detach");
    vxlan::detach(&ta.root, "ul-a").expect("detach is idempotent");
    let err =
        c.a.ns
            .enter(|| vxlan::verify(&ta.root, "ul-a", &VxlanParams { port: PORT }))
            .unwrap_err();
    assert!(err.to_string().contains("cannot open pinned link"), "{err}");
}

#[test]
fn reattach_after_the_device_was_recreated_replaces_the_stale_link() {
    let ns = Netns::new("vxre");
    ns.ip(&[
        "link", "add", "eth0.100", "type", "veth", "peer", "name", "p0",
    ]);
    let t = TestRoot::new("vxre");
    let p = VxlanParams { port: 4789 };
    let first = ns.enter(|| vxlan::attach(&t.root, "eth0.100", &p)).unwrap();
    assert!(first.pin_dir.ends_with("vxlan/eth0%2E100"));
    assert_eq!(vxlan::list_attachments(&t.root).unwrap(), ["eth0.100"]);
    ns.enter(|| vxlan::verify(&t.root, "eth0.100", &p)).unwrap();
    let err = ns
        .enter(|| vxlan::verify(&t.root, "eth0.100", &VxlanParams { port: 8472 }))
        .unwrap_err();
    assert!(err.to_string().contains("VXLAN_PORT=4789"), "{err}");

    // the device goes away and comes back with a new ifindex
    ns.ip(&["link", "del", "eth0.100"]);
    let err = ns
        .enter(|| vxlan::verify(&t.root, "eth0.100", &p))
        .unwrap_err();
    assert!(err.to_string().contains("eth0.100"), "{err}");
    ns.ip(&[
        "link", "add", "eth0.100", "type", "veth", "peer", "name", "p0",
    ]);
    let second = ns.enter(|| vxlan::attach(&t.root, "eth0.100", &p)).unwrap();
    assert_ne!(first.ifindex, second.ifindex);
    assert!(!second.replaced_in_place, "the old links were defunct");
    ns.enter(|| vxlan::verify(&t.root, "eth0.100", &p))
        .expect("verify after re-attach");
    let progs = ns.enter(|| {
        SchedClassifier::query_tcx("eth0.100", TcAttachType::Egress)
            .unwrap()
            .1
            .len()
    });
    assert_eq!(progs, 1);

    // by ifindex works the same, and a missing device is a clear error
    let third = ns
        .enter(|| vxlan::attach(&t.root, second.ifindex, &p))
        .unwrap();
    assert!(third.replaced_in_place);
    assert_eq!(third.ifname, "eth0.100");
    let err = ns
        .enter(|| vxlan::attach(&t.root, "nosuchdev", &p))
        .unwrap_err();
    assert!(err.to_string().contains("nosuchdev"), "{err}");
    vxlan::detach(&t.root, "eth0.100").unwrap();
}
