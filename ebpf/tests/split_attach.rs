//! attach / verify / detach on real veth pairs in network namespaces made by
//! the test, with real traffic through the split. Needs root, bpffs, iproute2.

mod common;

use std::net::IpAddr;

use aya::programs::links::{FdLink, LinkType, PinnedLink};
use common::*;
use weir_ebpf::{
    AttachMode, Error,
    abi::{Direction, PodMode},
    maps::NodeMaps,
    split,
};

const ID: &str = "c0ffee-eth0";

fn udp_frame_len(payload: usize) -> u64 {
    (14 + 20 + 8 + payload) as u64
}

#[test]
fn tcx_attach_forwards_counts_verifies_and_detaches() {
    let topo = Topology::new("tcx");
    let t = TestRoot::new("tcx");
    let p = topo.params(7, "eth0");

    assert_eq!(
        topo.udp_exchange(1, 10, 10),
        0,
        "without the split wx-eth0 and eth0 are not connected"
    );

    let mode = topo
        .pod
        .enter(|| split::attach(&t.root, ID, &p, AttachMode::Tcx))
        .expect("attach");
    assert_eq!(mode, AttachMode::Tcx, "kernel {} has TCX", kernel());

    // attach() has returned and dropped its loader: the links live on in their pins
    assert_eq!(tcx_programs(&topo.pod, "wx-eth0"), ["weir_wx"]);
    assert_eq!(tcx_programs(&topo.pod, "wi-eth0"), ["weir_wi"]);
    let dir = t.root.links_dir(ID).unwrap();
    for pin in ["outer", "inner"] {
        let link = FdLink::from(PinnedLink::from_pin(dir.join(pin)).expect("pinned link"));
        assert_eq!(link.info().unwrap().link_type().unwrap(), LinkType::Tcx);
    }
    assert_eq!(split::list_attachments(&t.root).unwrap(), [ID]);
    topo.pod
        .enter(|| split::verify(&t.root, ID, &p))
        .expect("verify");

    // traffic goes through and is counted exactly, per direction
    let mut maps = NodeMaps::open(&t.root).unwrap();
    maps.set_pod_mode(7, PodMode::Count).unwrap();
    assert_eq!(topo.udp_exchange(3, 100, 40), 3);
    let flows = maps.flows().unwrap();
    let udp: Vec<_> = flows.iter().filter(|(k, _)| k.proto == 17).collect();
    assert_eq!(udp.len(), 2, "{flows:#?}");
    let to_pod = udp
        .iter()
        .find(|(k, _)| k.direction() == Some(Direction::ToPod))
        .expect("ToPod flow");
    let from_pod = udp
        .iter()
        .find(|(k, _)| k.direction() == Some(Direction::FromPod))
        .expect("FromPod flow");
    assert_eq!(to_pod.0.pod_id, 7);
    assert_eq!(to_pod.0.src_ip(), HOST_IP.parse::<IpAddr>().unwrap());
    assert_eq!(
        (to_pod.0.dst_ip(), to_pod.0.dport),
        (POD_IP.parse::<IpAddr>().unwrap(), POD_PORT)
    );
    assert_eq!(
        (to_pod.1.packets, to_pod.1.bytes),
        (3, 3 * udp_frame_len(100))
    );
    assert_eq!(
        (from_pod.0.sport, from_pod.0.dst_ip()),
        (POD_PORT, HOST_IP.parse::<IpAddr>().unwrap())
    );
    assert_eq!(
        (from_pod.1.packets, from_pod.1.bytes),
        (3, 3 * udp_frame_len(40))
    );
    let stats = maps.stats().unwrap();
    assert!(
        stats.non_ip_packets >= 2,
        "ARP request and reply crossed the split: {stats:?}"
    );
    assert_eq!(stats.flow_update_failed, 0);

    // re-attaching the same id replaces the attachment, it does not stack
    topo.pod
        .enter(|| split::attach(&t.root, ID, &p, AttachMode::Tcx))
        .expect("re-attach");
    assert_eq!(tcx_programs(&topo.pod, "wx-eth0"), ["weir_wx"]);
    assert_eq!(tcx_programs(&topo.pod, "wi-eth0"), ["weir_wi"]);
    topo.pod
        .enter(|| split::verify(&t.root, ID, &p))
        .expect("verify after re-attach");
    assert_eq!(topo.udp_exchange(1, 10, 10), 1);

    // TCX detach needs no netns: run it from the test's own thread
    split::detach(&t.root, ID, AttachMode::Tcx).expect("detach");
    assert!(tcx_programs(&topo.pod, "wx-eth0").is_empty());
    assert!(tcx_programs(&topo.pod, "wi-eth0").is_empty());
    assert!(!dir.exists());
    assert!(split::list_attachments(&t.root).unwrap().is_empty());
    assert_eq!(
        topo.udp_exchange(1, 10, 10),
        0,
        "no forwarding after detach"
    );
    let err = topo
        .pod
        .enter(|| split::verify(&t.root, ID, &p))
        .unwrap_err();
    assert!(err.to_string().contains("no pins"), "{err}");
    split::detach(&t.root, ID, AttachMode::Tcx).expect("detach is idempotent");
}

#[test]
fn verify_names_what_is_wrong() {
    let topo = Topology::new("ver");
    let t = TestRoot::new("ver");
    let p = topo.params(8, "eth0");
    topo.pod
        .enter(|| split::attach(&t.root, ID, &p, AttachMode::Tcx))
        .unwrap();

    let wrong_pod = weir_ebpf::SplitParams { pod_id: 9, ..p };
    let err = topo
        .pod
        .enter(|| split::verify(&t.root, ID, &wrong_pod))
        .unwrap_err();
    assert!(
        matches!(err, Error::Unhealthy { .. }) && err.to_string().contains("carries pod id 8"),
        "{err}"
    );

    let no_peer = weir_ebpf::SplitParams {
        outbound_via_peer: false,
        ..p
    };
    let err = topo
        .pod
        .enter(|| split::verify(&t.root, ID, &no_peer))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("peer redirect true; expected pod id 8"),
        "{err}"
    );

    let swapped = weir_ebpf::SplitParams {
        wx_ifindex: p.wi_ifindex,
        wi_ifindex: p.wx_ifindex,
        ..p
    };
    let err = topo
        .pod
        .enter(|| split::verify(&t.root, ID, &swapped))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("attached to ifindex {}", p.wx_ifindex)),
        "{err}"
    );

    // one half missing
    std::fs::remove_file(t.root.links_dir(ID).unwrap().join("inner")).unwrap();
    let err = topo
        .pod
        .enter(|| split::verify(&t.root, ID, &p))
        .unwrap_err();
    assert!(err.to_string().contains("inner"), "{err}");

    // the device is gone: the link is defunct
    topo.pod.ip(&["link", "del", "wx-eth0"]);
    let err = topo
        .pod
        .enter(|| split::verify(&t.root, ID, &p))
        .unwrap_err();
    assert!(err.to_string().contains("defunct"), "{err}");
    split::detach(&t.root, ID, AttachMode::Tcx).expect("detach with the device gone");
}

#[test]
fn tcx_link_lifetime_follows_pins_and_fds() {
    let topo = Topology::new("life");
    let t = TestRoot::new("life");
    let p = topo.params(10, "eth0");
    topo.pod
        .enter(|| split::attach(&t.root, ID, &p, AttachMode::Tcx))
        .unwrap();
    let dir = t.root.links_dir(ID).unwrap();

    // an fd held elsewhere (an agent, bpftool) keeps a link attached after
    // its pin is removed; without one the link detaches with the pin
    let held = PinnedLink::from_pin(dir.join("outer")).unwrap();
    split::remove_pins(&t.root, ID).unwrap();
    assert!(!dir.exists());
    eventually("inner link detached once its pin is gone", || {
        tcx_programs(&topo.pod, "wi-eth0").is_empty()
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        tcx_programs(&topo.pod, "wx-eth0"),
        ["weir_wx"],
        "held fd keeps the outer link"
    );
    drop(held);
    eventually("outer link detached once the last fd is closed", || {
        tcx_programs(&topo.pod, "wx-eth0").is_empty()
    });

    // detach() does not depend on that: BPF_LINK_DETACH cuts the link off
    // the device at once, even while another fd still refers to it
    topo.pod
        .enter(|| split::attach(&t.root, ID, &p, AttachMode::Tcx))
        .unwrap();
    let held = PinnedLink::from_pin(dir.join("outer")).unwrap();
    split::detach(&t.root, ID, AttachMode::Tcx).unwrap();
    assert!(
        tcx_programs(&topo.pod, "wx-eth0").is_empty(),
        "detached while an fd is still open"
    );
    assert!(tcx_programs(&topo.pod, "wi-eth0").is_empty());
    drop(held);
}

#[test]
fn netlink_mode_attach_verify_detach() {
    let topo = Topology::new("nl");
    let t = TestRoot::new("nl");
    let p = topo.params(11, "eth0");

    topo.pod
        .enter(|| split::attach(&t.root, ID, &p, AttachMode::Netlink))
        .expect("netlink attach");
    assert!(tc_filters(&topo.pod, "wx-eth0").contains("weir_wx"));
    assert!(tc_filters(&topo.pod, "wi-eth0").contains("weir_wi"));
    assert!(tcx_programs(&topo.pod, "wx-eth0").is_empty());
    topo.pod
        .enter(|| split::verify(&t.root, ID, &p))
        .expect("verify netlink");

    let mut maps = NodeMaps::open(&t.root).unwrap();
    maps.set_pod_mode(11, PodMode::Count).unwrap();
    assert_eq!(
        topo.udp_exchange(2, 64, 64),
        2,
        "filters outlive the loader and forward"
    );
    let udp: Vec<_> = maps
        .flows()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.proto == 17)
        .collect();
    assert_eq!(udp.len(), 2);
    assert!(
        udp.iter()
            .all(|(_, c)| c.packets == 2 && c.bytes == 2 * udp_frame_len(64))
    );

    // switching modes on re-attach leaves nothing of the old mode behind
    let mode = topo
        .pod
        .enter(|| split::attach(&t.root, ID, &p, AttachMode::Tcx))
        .unwrap();
    assert_eq!(mode, AttachMode::Tcx);
    assert!(
        !tc_filters(&topo.pod, "wx-eth0").contains("weir_w"),
        "old filters removed"
    );
    assert!(!tc_filters(&topo.pod, "wi-eth0").contains("weir_w"));
    topo.pod
        .enter(|| split::verify(&t.root, ID, &p))
        .expect("verify tcx");
    topo.pod
        .enter(|| split::attach(&t.root, ID, &p, AttachMode::Netlink))
        .unwrap();
    assert!(
        tcx_programs(&topo.pod, "wx-eth0").is_empty(),
        "old links removed"
    );
    assert!(tcx_programs(&topo.pod, "wi-eth0").is_empty());
    topo.pod
        .enter(|| split::verify(&t.root, ID, &p))
        .expect("verify netlink again");
    assert_eq!(topo.udp_exchange(1, 10, 10), 1);

    topo.pod
        .enter(|| split::detach(&t.root, ID, AttachMode::Netlink))
        .expect("netlink detach");
    assert!(!tc_filters(&topo.pod, "wx-eth0").contains("weir_w"));
    assert!(!tc_filters(&topo.pod, "wi-eth0").contains("weir_w"));
    assert!(!t.root.links_dir(ID).unwrap().exists());
    assert_eq!(topo.udp_exchange(1, 10, 10), 0);
    topo.pod
        .enter(|| split::detach(&t.root, ID, AttachMode::Netlink))
        .expect("idempotent");
}

#[test]
fn netlink_detach_removes_only_its_own_interface() {
    let topo = Topology::new("two");
    topo.add_interface("net1");
    let t = TestRoot::new("two");
    let p0 = topo.params(12, "eth0");
    let p1 = topo.params(12, "net1");
    let (id0, id1) = ("c0ffee-eth0", "c0ffee-net1");
    topo.pod.enter(|| {
        split::attach(&t.root, id0, &p0, AttachMode::Netlink).unwrap();
        split::attach(&t.root, id1, &p1, AttachMode::Netlink).unwrap();
    });
    assert_eq!(split::list_attachments(&t.root).unwrap(), [id0, id1]);

    topo.pod
        .enter(|| split::detach(&t.root, id0, AttachMode::Netlink))
        .unwrap();
    assert!(!tc_filters(&topo.pod, "wx-eth0").contains("weir_w"));
    assert!(tc_filters(&topo.pod, "wx-net1").contains("weir_wx"));
    assert!(tc_filters(&topo.pod, "wi-net1").contains("weir_wi"));
    topo.pod
        .enter(|| split::verify(&t.root, id1, &p1))
        .expect("the other interface is intact");
    topo.pod
        .enter(|| split::detach(&t.root, id1, AttachMode::Netlink))
        .unwrap();
    assert!(!tc_filters(&topo.pod, "wx-net1").contains("weir_w"));
}

#[test]
fn attach_rejects_bad_input() {
    let topo = Topology::new("bad");
    let t = TestRoot::new("bad");
    let p = topo.params(13, "eth0");
    let err = topo
        .pod
        .enter(|| split::attach(&t.root, "../escape", &p, AttachMode::Tcx))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidAttachmentId { .. }), "{err}");
    let same = weir_ebpf::SplitParams {
        wi_ifindex: p.wx_ifindex,
        ..p
    };
    assert!(matches!(
        topo.pod
            .enter(|| split::attach(&t.root, ID, &same, AttachMode::Tcx)),
        Err(Error::InvalidParams(_))
    ));
    // an ifindex that does not exist in the pod netns (the caller forgot setns)
    let missing = weir_ebpf::SplitParams {
        wx_ifindex: 999_999,
        ..p
    };
    let err = topo
        .pod
        .enter(|| split::attach(&t.root, ID, &missing, AttachMode::Netlink))
        .unwrap_err();
    assert!(err.to_string().contains("999999"), "{err}");
    assert!(split::list_attachments(&t.root).unwrap().is_empty());
}

#[test]
fn stub_forwards_when_the_node_program_is_gone() {
    // the jump slot emptied (someone removed weir's pins, a broken upgrade):
    // the pod keeps its network, CHECK says what is missing
    let topo = Topology::new("nojmp");
    let t = TestRoot::new("nojmp");
    let p = topo.params(14, "eth0");
    topo.pod
        .enter(|| split::attach(&t.root, ID, &p, AttachMode::Netlink))
        .expect("attach");
    let mut maps = NodeMaps::open(&t.root).unwrap();
    maps.set_pod_mode(14, PodMode::Count).unwrap();
    assert_eq!(topo.udp_exchange(1, 10, 10), 1);
    assert!(maps.stats().unwrap().redirects > 0);

    let jump = weir_ebpf::node_program::dir(&t.root).join("jump");
    run(
        "bpftool",
        &[
            "map",
            "delete",
            "pinned",
            jump.to_str().unwrap(),
            "key",
            "0",
            "0",
            "0",
            "0",
        ],
    );
    // taken after the slot is empty: the new devices' own IPv6 chatter
    // may still pass the node program until then
    let counted = maps.stats().unwrap().redirects;
    assert_eq!(
        topo.udp_exchange(3, 10, 10),
        3,
        "the stubs forward on their own"
    );
    assert_eq!(
        maps.stats().unwrap().redirects,
        counted,
        "nothing ran the node program"
    );
    let err = topo
        .pod
        .enter(|| split::verify(&t.root, ID, &p))
        .unwrap_err();
    assert!(err.to_string().contains("missing from jump table"), "{err}");

    // the next load refills the slot and counting resumes
    weir_ebpf::probe(&t.root).expect("probe reloads the node program");
    topo.pod
        .enter(|| split::verify(&t.root, ID, &p))
        .expect("healthy again");
    assert_eq!(topo.udp_exchange(1, 10, 10), 1);
    assert!(maps.stats().unwrap().redirects > counted);
    topo.pod
        .enter(|| split::detach(&t.root, ID, AttachMode::Netlink))
        .unwrap();
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn older_builds_are_unpinned_only_once_no_pod_calls_them() {
    use weir_ebpf::node_program;
    let topo = Topology::new("oldbld");
    let t = TestRoot::new("oldbld");
    let p = topo.params(15, "eth0");
    topo.pod
        .enter(|| split::attach(&t.root, ID, &p, AttachMode::Netlink))
        .expect("attach");
    let mut maps = NodeMaps::open(&t.root).unwrap();
    maps.set_pod_mode(15, PodMode::Count).unwrap();

    // The pod's build becomes "an older build" by name; this binary then
    // loads its own next to it, as after an upgrade.
    let split_dir = t.root.path().join("split");
    let in_use = split_dir.join("00000000000000aa");
    std::fs::rename(node_program::dir(&t.root), &in_use).unwrap();
    weir_ebpf::probe(&t.root).expect("this build's node program");
    // an older build nobody calls, and things that are not weir's builds
    let unused = split_dir.join("00000000000000bb");
    let crowded = split_dir.join("00000000000000cc");
    let foreign = split_dir.join("not-a-build");
    for (dir, pin) in [(&unused, "jump"), (&crowded, "theirs"), (&foreign, "jump")] {
        std::fs::create_dir_all(dir).unwrap();
        run(
            "bpftool",
            &[
                "map",
                "create",
                dir.join(pin).to_str().unwrap(),
                "type",
                "prog_array",
                "key",
                "4",
                "value",
                "4",
                "entries",
                "1",
                "name",
                "weir_split_jump",
            ],
        );
    }

    let removed = node_program::remove_unused_builds(&t.root).unwrap();
    assert_eq!(removed, vec!["00000000000000bb".to_string()]);
    assert!(!unused.exists());
    assert!(
        in_use.join("jump").exists(),
        "the pod's build is still called"
    );
    assert!(
        crowded.join("theirs").exists(),
        "a pin weir did not make stays"
    );
    assert!(foreign.join("jump").exists(), "not a build directory");
    assert!(node_program::dir(&t.root).join("jump").exists());
    let before = maps.stats().unwrap().redirects;
    assert_eq!(topo.udp_exchange(2, 10, 10), 2);
    assert!(
        maps.stats().unwrap().redirects > before,
        "the pod of the older build is still counted"
    );
    topo.pod
        .enter(|| split::verify(&t.root, ID, &p))
        .expect("the older build's pod stays healthy");

    topo.pod
        .enter(|| split::detach(&t.root, ID, AttachMode::Netlink))
        .unwrap();
    // tc frees a deleted filter's program after an RCU grace period
    let mut removed = Vec::new();
    for _ in 0..100 {
        removed = node_program::remove_unused_builds(&t.root).unwrap();
        if !removed.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(removed, vec!["00000000000000aa".to_string()]);
    assert!(!in_use.exists());
    assert!(
        node_program::remove_unused_builds(&t.root)
            .unwrap()
            .is_empty()
    );
    assert!(node_program::dir(&t.root).join("jump").exists());
}
