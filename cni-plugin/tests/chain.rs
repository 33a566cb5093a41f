//! weir in a real CNI chain: network namespaces made here, the reference
//! bridge + host-local plugins before weir in one conflist, all driven by the
//! real `cnitool` over every CNI version; traffic of known shape and the
//! kernel's own counters as the truth weir's counters must match exactly.
//!
//! Needs root, bpffs and the tools of scripts/bootstrap.sh: without them each
//! test fails and says what is missing.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::json;
use weir_e2e::chain::{ChainSpec, Node};
use weir_e2e::netns::Netns;
use weir_e2e::{host, traffic};
use weir_ebpf::BpfRoot;
use weir_ebpf::abi::{Direction, FlowCounters, FlowKey, PodMode};
use weir_ebpf::maps::NodeMaps;
use weir_node_state::{AttachmentRecord, StateStore};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

fn weir() -> &'static Path {
    Path::new(WEIR)
}

struct Pod {
    ns: Netns,
    ip: IpAddr,
    record: AttachmentRecord,
    result: serde_json::Value,
}

fn record_of(node: &Node, pod: &Netns) -> Result<AttachmentRecord> {
    let store = StateStore::new(&node.state_dir, &node.network);
    let path = pod.path().display().to_string();
    store
        .list()?
        .into_iter()
        .find(|r| r.netns == path)
        .with_context(|| format!("no weir state record for {path}"))
}

fn add_pod(node: &Node, tag: &str, name: &str) -> Result<Pod> {
    let ns = Netns::create(&format!("{tag}-{name}"))?;
    let call = node.add(&ns, "eth0", "shop", name)?.ok()?;
    let result = call.json()?;
    assert_eq!(
        result["cniVersion"],
        node.cni_version(),
        "result must be in the request's version: {result}"
    );
    let ip = Node::pod_ipv4(&result)?;
    let record = record_of(node, &ns)?;
    assert_eq!(record.pod.namespace.as_deref(), Some("shop"));
    assert_eq!(record.pod.name.as_deref(), Some(name));
    assert_eq!(
        record.pod.uid.as_deref(),
        Some(format!("uid-{name}").as_str())
    );
    assert!(
        record.ips.iter().any(|a| a.starts_with(&ip.to_string())),
        "{record:?}"
    );
    Ok(Pod {
        ns,
        ip,
        record,
        result,
    })
}

fn maps(node: &Node) -> Result<NodeMaps> {
    Ok(NodeMaps::open(&BpfRoot::new(&node.bpf_root))?)
}

fn observe(node: &Node, pod: &Pod) -> Result<()> {
    maps(node)?.set_pod_mode(pod.record.pod_id, PodMode::Count)?;
    Ok(())
}

/// The counters of one flow direction at one pod, by its 5-tuple.
fn flow(
    node: &Node,
    pod: &Pod,
    dir: Direction,
    proto: u8,
    src: (IpAddr, Option<u16>),
    dst: (IpAddr, Option<u16>),
) -> Result<FlowCounters> {
    let flows = maps(node)?.flows()?;
    let matches = |k: &FlowKey| {
        k.pod_id == pod.record.pod_id
            && k.direction() == Some(dir)
            && k.proto == proto
            && k.src_ip() == src.0
            && k.dst_ip() == dst.0
            && src.1.is_none_or(|p| k.sport == p)
            && dst.1.is_none_or(|p| k.dport == p)
    };
    let found: Vec<FlowCounters> = flows
        .iter()
        .filter(|(k, _)| matches(k))
        .map(|(_, v)| *v)
        .collect();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => bail!(
            "no {dir:?} flow {src:?} -> {dst:?} at pod {}; flows: {flows:#?}",
            pod.record.pod_id
        ),
        many => bail!("{} flows match {src:?} -> {dst:?}: {many:?}", many.len()),
    }
}

/// The source port the kernel picked is whatever the one flow from `src` to
/// `dst_port` uses.
fn client_port(node: &Node, pod: &Pod, proto: u8, dst: IpAddr, dst_port: u16) -> Result<u16> {
    let flows = maps(node)?.flows()?;
    flows
        .iter()
        .find(|(k, _)| {
            k.pod_id == pod.record.pod_id
                && k.direction() == Some(Direction::FromPod)
                && k.proto == proto
                && k.dst_ip() == dst
                && k.dport == dst_port
        })
        .map(|(k, _)| k.sport)
        .with_context(|| format!("no flow to {dst}:{dst_port} from pod {}", pod.record.pod_id))
}

fn links_named(ns: &Netns) -> Result<Vec<String>> {
    Ok(ns
        .links()?
        .iter()
        .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect())
}

const UDP: u8 = 17;
const TCP: u8 = 6;

/// Two split pods exchange counted UDP and TCP traffic; every counter matches
/// exactly, in both directions and at both pods. Then CHECK, DEL twice, and
/// the pods' own eth0 is back.
fn exact_counts_over(version: &str, tag: &str) -> Result<()> {
    exact_counts_attached(version, tag, "tc")
}

/// `attach` is weir's `attach` option: `tc` (the default) or `tcx`.
fn exact_counts_attached(version: &str, tag: &str, attach: &str) -> Result<()> {
    host::require_privileged_host();
    let mut spec = ChainSpec::new(version, "10.244.1.0/24");
    spec.weir_options = json!({ "attach": attach });
    let node = Node::new(tag, &spec, weir())?;
    let a = add_pod(&node, tag, "a")?;
    let b = add_pod(&node, tag, "b")?;
    assert_eq!(a.record.attach_mode.as_str(), attach, "{:?}", a.record);
    assert_eq!(
        links_named(&a.ns)?,
        ["eth0 veth", "lo -", "wi-eth0 veth", "wx-eth0 veth"],
        "pod a after ADD"
    );
    assert_eq!(
        a.ns.addresses()?,
        [format!("eth0 {}/24", a.ip)],
        "pod's IP moved to the new eth0"
    );

    // The node itself (the bridge's gateway address) is reachable: frames
    // from the pod enter the host's veth by bpf_redirect_peer, and the
    // bridge must still take them as its own.
    let gateway = Node::gateway_v4(&a.result)?;
    a.ns.exec(&[
        "ping",
        "-c",
        "2",
        "-i",
        "0.2",
        "-W",
        "2",
        &gateway.to_string(),
    ])
    .context("pod a cannot reach the node's bridge address")?;

    // Not observed yet: pass-through, nothing counted.
    traffic::udp_echo(&a.ns, &b.ns, b.ip, 7000, 3, 100)?;
    assert!(
        maps(&node)?.flows()?.is_empty(),
        "pass-through pods must not be counted"
    );

    observe(&node, &a)?;
    observe(&node, &b)?;

    // UDP: N datagrams each way, lock-step echo.
    let (n, size) = (100u64, 300usize);
    traffic::udp_echo(&a.ns, &b.ns, b.ip, 7001, n as usize, size)?;
    let udp_bytes = n * (traffic::UDP4_OVERHEAD + size as u64);
    let sport = client_port(&node, &a, UDP, b.ip, 7001)?;
    let (ca, cb) = ((a.ip, Some(sport)), (b.ip, Some(7001)));
    for (pod, dir, src, dst) in [
        (&a, Direction::FromPod, ca, cb),
        (&b, Direction::ToPod, ca, cb),
        (&b, Direction::FromPod, cb, ca),
        (&a, Direction::ToPod, cb, ca),
    ] {
        let c = flow(&node, pod, dir, UDP, src, dst)?;
        assert_eq!(
            (c.packets, c.bytes),
            (n, udp_bytes),
            "UDP {dir:?} at pod {}",
            pod.record.pod_id
        );
        assert!(c.first_seen_ns > 0 && c.last_seen_ns >= c.first_seen_ns);
    }

    // TCP with GSO: segments on the wire, not super-packets. The kernel's own
    // per-namespace segment counters are the truth.
    assert!(
        a.ns.exec(&["ethtool", "-k", "eth0"])?
            .contains("tcp-segmentation-offload: on"),
        "TSO must be on for this test"
    );
    // Without SACK every segment after the handshake has the same header, so
    // wire bytes follow from segments and payload alone.
    for pod in [&a, &b] {
        pod.ns.exec(&["sysctl", "-qw", "net.ipv4.tcp_sack=0"])?;
    }
    let payload = 8 << 20;
    let (seg_a0, seg_b0, skb_a0) = (
        traffic::tcp_segments(&a.ns)?,
        traffic::tcp_segments(&b.ns)?,
        traffic::tx_skbs(&a.ns, "eth0")?,
    );
    let report = traffic::tcp_send(&a.ns, &b.ns, b.ip, 5201, payload)?;
    let (seg_a1, seg_b1, skb_a1) = (
        traffic::tcp_segments(&a.ns)?,
        traffic::tcp_segments(&b.ns)?,
        traffic::tx_skbs(&a.ns, "eth0")?,
    );
    // OutSegs leaves out retransmitted segments (a tail loss probe on a busy
    // host is one); the wire carries them too.
    let wire_segs = |before: &traffic::TcpSegments, after: &traffic::TcpSegments| {
        (after.out_segs - before.out_segs) + (after.retrans_segs - before.retrans_segs)
    };
    let sent_a = wire_segs(&seg_a0, &seg_a1);
    let sent_b = wire_segs(&seg_b0, &seg_b1);
    let sport = client_port(&node, &a, TCP, b.ip, 5201)?;
    let (ca, cb) = ((a.ip, Some(sport)), (b.ip, Some(5201)));
    let a_out = flow(&node, &a, Direction::FromPod, TCP, ca, cb)?;
    let b_in = flow(&node, &b, Direction::ToPod, TCP, ca, cb)?;
    let b_out = flow(&node, &b, Direction::FromPod, TCP, cb, ca)?;
    let a_in = flow(&node, &a, Direction::ToPod, TCP, cb, ca)?;
    assert_eq!(
        a_out.packets, sent_a,
        "a's segments vs the kernel's OutSegs + RetransSegs"
    );
    assert_eq!(
        b_out.packets, sent_b,
        "b's segments vs the kernel's OutSegs + RetransSegs"
    );
    assert_eq!(
        (b_in.packets, b_in.bytes),
        (a_out.packets, a_out.bytes),
        "what left a arrived at b"
    );
    assert_eq!(
        (a_in.packets, a_in.bytes),
        (b_out.packets, b_out.bytes),
        "what left b arrived at a"
    );
    // Every segment is Ethernet 14 + IPv4 20 + TCP 32 (timestamps) + payload;
    // the SYN and SYN-ACK carry 8 more option bytes. The payload on the wire
    // is what the client's socket says it sent, retransmissions included.
    const HEADERS: u64 = 14 + 20 + 32;
    assert!(report.bytes_sent >= payload as u64);
    assert_eq!(
        a_out.bytes,
        report.bytes_sent + HEADERS * a_out.packets + 8,
        "a's wire bytes"
    );
    assert_eq!(b_out.bytes, HEADERS * b_out.packets + 8, "b's wire bytes");
    assert!(
        a_out.packets > skb_a1 - skb_a0,
        "GSO was not in effect: {} segments from {} skbs",
        a_out.packets,
        skb_a1 - skb_a0
    );
    assert_eq!(a_out.tcp_flags & 0x13, 0x13, "SYN, ACK and FIN seen");

    // CHECK exists from 0.4.0 on. The bridge plugin's own CHECK insists that
    // the pod's eth0 is the peer of its host veth, which a split pod's eth0 is
    // not by design, so weir's CHECK is driven as the chain's last plugin
    // gets it: with the chain's result as prevResult.
    if version >= "0.4.0" {
        let check = |pod: &Pod| -> Result<(weir_e2e::chain::CniCall, i32)> {
            let netns = pod.ns.path().display().to_string();
            node.invoke(
                weir(),
                &[
                    ("CNI_COMMAND", "CHECK"),
                    ("CNI_CONTAINERID", &pod.record.container_id),
                    ("CNI_NETNS", &netns),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_PATH", "/x"),
                ],
                &node.weir_conf(Some(&pod.result), json!({})),
            )
        };
        let (call, exit) = check(&a)?;
        assert_eq!(exit, 0, "CHECK of an intact split: {call:?}");
        assert!(call.stdout.is_empty());
        // Without its programs the split is broken, and CHECK says so.
        let attachment = weir_ebpf::attachment_id(&b.record.container_id, "eth0");
        weir_ebpf::split::remove_pins(&BpfRoot::new(&node.bpf_root), &attachment)?;
        let (call, exit) = check(&b)?;
        assert_ne!(exit, 0, "CHECK must fail without the programs");
        let err = call.json()?;
        assert!(
            err["msg"].as_str().unwrap_or("").contains("not intact"),
            "{err}"
        );
    }

    // DEL hands bridge its own eth0 back; twice is fine.
    for pod in [&a, &b] {
        node.del(&pod.ns.path(), "eth0")?.ok()?;
        node.del(&pod.ns.path(), "eth0")?.ok()?;
    }
    assert_eq!(
        links_named(&a.ns)?,
        ["lo -"],
        "bridge's DEL removed the original veth"
    );
    assert!(
        StateStore::new(&node.state_dir, &node.network)
            .list()?
            .is_empty()
    );
    let pins = BpfRoot::new(&node.bpf_root).links_root();
    let left: Vec<_> = std::fs::read_dir(&pins)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "pins left after DEL: {left:?}");
    Ok(())
}

#[test]
fn exact_counts_cni_0_3_0() -> Result<()> {
    exact_counts_over("0.3.0", "wc030")
}

#[test]
fn exact_counts_cni_0_3_1() -> Result<()> {
    exact_counts_over("0.3.1", "wc031")
}

#[test]
fn exact_counts_cni_0_4_0() -> Result<()> {
    exact_counts_over("0.4.0", "wc040")
}

#[test]
fn exact_counts_cni_1_0_0() -> Result<()> {
    exact_counts_over("1.0.0", "wc100")
}

#[test]
fn exact_counts_cni_1_1_0() -> Result<()> {
    exact_counts_over("1.1.0", "wc110")
}

#[test]
fn exact_counts_cni_1_1_0_tcx_links() -> Result<()> {
    exact_counts_attached("1.1.0", "wcx110", "tcx")
}

/// Dual-stack: IPv6 addresses vanish when a link goes down, so the split must
/// carry them over itself; traffic works over both families afterwards.
#[test]
fn dual_stack_pod_keeps_both_families() -> Result<()> {
    host::require_privileged_host();
    let tag = "wds";
    let mut spec = ChainSpec::new("1.0.0", "10.244.2.0/24");
    spec.subnet_v6 = Some("fd00:244:2::/64".into());
    let node = Node::new(tag, &spec, weir())?;
    let a = add_pod(&node, tag, "a")?;
    let b = add_pod(&node, tag, "b")?;
    let v6 = |ns: &Netns| -> Result<IpAddr> {
        ns.addresses()?
            .iter()
            .find_map(|l| {
                l.strip_prefix("eth0 ")
                    .and_then(|a| a.split('/').next())
                    .and_then(|a| a.parse::<IpAddr>().ok())
                    .filter(IpAddr::is_ipv6)
            })
            .context("no IPv6 address on eth0")
    };
    let b6 = v6(&b.ns)?;
    v6(&a.ns)?;
    assert!(
        a.ns.routes()?
            .iter()
            .any(|r| r.starts_with("default via fd00:244:2::1 dev eth0")),
        "{:?}",
        a.ns.routes()?
    );
    observe(&node, &a)?;
    traffic::udp_echo(&a.ns, &b.ns, b6, 7002, 20, 200)?;
    let sport = client_port(&node, &a, UDP, b6, 7002)?;
    let c = flow(
        &node,
        &a,
        Direction::FromPod,
        UDP,
        (v6(&a.ns)?, Some(sport)),
        (b6, Some(7002)),
    )?;
    assert_eq!(
        (c.packets, c.bytes),
        (20, 20 * (traffic::UDP6_OVERHEAD + 200))
    );
    Ok(())
}

/// Per-interface sysctls a plugin before weir (the reference `tuning`) set on
/// eth0 are on the eth0 the pod uses after the split, not only on the renamed
/// original, and the pod still reaches its gateway. A split that fails right
/// after the copy gives the pod back its own eth0 with those values.
#[test]
fn sysctls_set_before_weir_stay_on_the_pods_eth0() -> Result<()> {
    host::require_privileged_host();
    let tag = "wsys";
    let tuned = [
        ("ipv4.conf", "arp_notify", "1"),
        ("ipv4.conf", "arp_ignore", "1"),
        ("ipv6.conf", "accept_ra", "0"),
        ("ipv6.conf", "dad_transmits", "0"),
        ("ipv4.neigh", "ucast_solicit", "5"),
        ("ipv6.neigh", "retrans_time_ms", "2000"),
    ];
    let sysctls: serde_json::Map<String, serde_json::Value> = tuned
        .iter()
        .map(|(table, name, value)| (format!("net.{table}.eth0.{name}"), json!(value)))
        .collect();
    let mut spec = ChainSpec::new("1.1.0", "10.244.10.0/24");
    spec.before_weir = vec![json!({ "type": "tuning", "sysctl": sysctls })];
    let node = Node::new(tag, &spec, weir())?;
    // Read with the kernel's own files from inside the pod, not weir's code.
    let read = |ns: &Netns, table: &str, dev: &str, name: &str| -> Result<String> {
        let path = format!("/proc/sys/net/{}/{dev}/{name}", table.replace('.', "/"));
        Ok(ns.exec(&["cat", &path])?.trim().to_string())
    };

    let a = add_pod(&node, tag, "a")?;
    assert_eq!(
        links_named(&a.ns)?,
        ["eth0 veth", "lo -", "wi-eth0 veth", "wx-eth0 veth"],
        "pod a is split"
    );
    for (table, name, value) in tuned {
        assert_ne!(
            read(&a.ns, table, "wi-eth0", name)?,
            value,
            "{table} {name}: the test needs a value away from a fresh device's (wi-eth0)"
        );
        assert_eq!(
            read(&a.ns, table, "wx-eth0", name)?,
            value,
            "tuning set {table} {name} on the original eth0"
        );
        assert_eq!(
            read(&a.ns, table, "eth0", name)?,
            value,
            "{table} {name} on the pod's new eth0"
        );
    }
    let gateway = Node::gateway_v4(&a.result)?;
    weir_e2e::chain::ping(&a.ns, gateway, 2).context("split pod a cannot reach its gateway")?;

    spec.weir_options = json!({ "faultInjection": { "failAt": "copy-sysctls" } });
    node.write_conflist(&spec)?;
    let b = Netns::create(&format!("{tag}-b"))?;
    let call = node.add(&b, "eth0", "shop", "b")?;
    assert!(!call.success, "ADD with a fault at copy-sysctls must fail");
    assert!(
        call.stderr.contains("copy-sysctls") && call.stderr.contains("restored"),
        "cnitool reports the step and the restore: {call:?}"
    );
    assert_eq!(links_named(&b)?, ["eth0 veth", "lo -"]);
    for (table, name, value) in tuned {
        assert_eq!(
            read(&b, table, "eth0", name)?,
            value,
            "{table} {name} on pod b's own eth0 after the failed split"
        );
    }
    weir_e2e::chain::ping(&b, gateway, 1).context("pod b must keep its networking")?;

    node.del(&a.ns.path(), "eth0")?.ok()?;
    assert_eq!(links_named(&a.ns)?, ["lo -"], "the chain's DEL cleaned up");
    Ok(())
}

/// The plugins before weir configure a pod (a chain without weir), then weir
/// is run on it the way the runtime would, failing after each step in turn:
/// every time, the pod's links, addresses and routes are exactly as before,
/// and the error is the spec's JSON. Then a real split and DEL also come back
/// to exactly that state.
#[test]
fn failure_at_every_step_restores_the_pod_exactly() -> Result<()> {
    host::require_privileged_host();
    let tag = "wfail";
    let mut spec = ChainSpec::new("1.1.0", "10.244.3.0/24");
    spec.subnet_v6 = Some("fd00:244:3::/64".into());
    spec.with_weir = false;
    let node = Node::new(tag, &spec, weir())?;
    let pod = Netns::create(&format!("{tag}-a"))?;
    let peer = Netns::create(&format!("{tag}-b"))?;
    let prev = node.add(&pod, "eth0", "shop", "a")?.ok()?.json()?;
    let peer_ip = Node::pod_ipv4(&node.add(&peer, "eth0", "shop", "b")?.ok()?.json()?)?;
    let before = (pod.links()?, pod.addresses()?, pod.routes()?);

    let conf = |extra: serde_json::Value| {
        let mut conf = json!({
            "cniVersion": "1.1.0",
            "name": node.network,
            "type": "weir",
            "stateDir": node.state_dir,
            "bpfRoot": node.bpf_root,
            "prevResult": prev,
        });
        for (k, v) in extra.as_object().unwrap() {
            conf[k] = v.clone();
        }
        conf.to_string()
    };
    let netns = pod.path().display().to_string();
    let env = |command: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", "fault-test".to_string()),
            ("CNI_NETNS", netns.clone()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", "/nonexistent".to_string()),
        ]
    };
    let invoke = |command: &'static str, stdin: &str| {
        let env = env(command);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        node.invoke(weir(), &env, stdin)
    };

    for step in weir_cni::split::Step::ALL {
        let (call, exit) = invoke(
            "ADD",
            &conf(json!({ "faultInjection": { "failAt": step.name() } })),
        )?;
        assert_ne!(exit, 0, "ADD with a fault at {step} must fail");
        let err = call.json()?;
        let expected_code = match step {
            weir_cni::split::Step::Load | weir_cni::split::Step::Attach => 101,
            weir_cni::split::Step::Journal | weir_cni::split::Step::WriteState => 102,
            _ => 100,
        };
        assert_eq!(err["code"], expected_code, "step {step}: {err}");
        assert_eq!(err["cniVersion"], "1.1.0");
        assert!(
            err["msg"].as_str().unwrap_or("").contains(step.name()),
            "message names the step: {err}"
        );
        assert!(
            err["msg"].as_str().unwrap_or("").contains("restored"),
            "{err}"
        );
        assert_eq!(
            (pod.links()?, pod.addresses()?, pod.routes()?),
            before,
            "pod after a fault at {step}"
        );
        weir_e2e::chain::ping(&pod, peer_ip, 1)
            .with_context(|| format!("pod lost networking after a fault at {step}"))?;
        assert!(
            StateStore::new(&node.state_dir, &node.network)
                .list()?
                .is_empty(),
            "no state after a fault at {step}"
        );
    }

    // failurePolicy Ignore: the same fault passes prevResult through untouched.
    let (call, exit) = invoke(
        "ADD",
        &conf(json!({ "failurePolicy": "Ignore", "faultInjection": { "failAt": "move-routes" } })),
    )?;
    assert_eq!(exit, 0, "{}", call.stderr);
    assert_eq!(
        call.json()?,
        prev,
        "Ignore passes prevResult through unchanged"
    );
    assert!(
        call.stderr.contains("move-routes"),
        "the failure is still reported on stderr: {}",
        call.stderr
    );
    assert_eq!((pod.links()?, pod.addresses()?, pod.routes()?), before);

    // A real split, then DEL: back to exactly what the plugins before weir made.
    let (call, exit) = invoke("ADD", &conf(json!({})))?;
    assert_eq!(exit, 0, "{}{}", call.stdout, call.stderr);
    assert_eq!(call.json()?, prev);
    assert_ne!(pod.links()?, before.0);
    weir_e2e::chain::ping(&pod, peer_ip, 1).context("split pod must be reachable")?;
    let (call, exit) = invoke("DEL", &conf(json!({})))?;
    assert_eq!(exit, 0, "{}{}", call.stdout, call.stderr);
    assert_eq!(
        (pod.links()?, pod.addresses()?, pod.routes()?),
        before,
        "pod after DEL"
    );
    Ok(())
}

/// A runtime using cnitool sees weir's failure as the chain's failure, and the
/// pod keeps the networking the bridge gave it.
#[test]
fn failed_add_through_cnitool_leaves_a_working_pod() -> Result<()> {
    host::require_privileged_host();
    let tag = "wfct";
    let mut spec = ChainSpec::new("0.3.1", "10.244.4.0/24");
    spec.weir_options = json!({ "faultInjection": { "failAt": "attach" } });
    let node = Node::new(tag, &spec, weir())?;
    let gateway: IpAddr = "10.244.4.1".parse()?;
    let pod = Netns::create(&format!("{tag}-a"))?;
    let call = node.add(&pod, "eth0", "shop", "a")?;
    assert!(!call.success, "ADD must fail");
    assert!(
        call.stderr.contains("attach") || call.stdout.contains("attach"),
        "{call:?}"
    );
    assert_eq!(links_named(&pod)?, ["eth0 veth", "lo -"]);
    weir_e2e::chain::ping(&pod, gateway, 1).context("pod must keep its networking")?;
    Ok(())
}

/// DEL must succeed when the namespace is already gone, or not given at all.
#[test]
fn del_without_netns_succeeds_and_cleans_up() -> Result<()> {
    host::require_privileged_host();
    let tag = "wdnn";
    let node = Node::new(tag, &ChainSpec::new("1.0.0", "10.244.5.0/24"), weir())?;
    let a = add_pod(&node, tag, "a")?;
    let b = add_pod(&node, tag, "b")?;
    let path_a = a.ns.path();
    drop(a.ns);
    node.del(&path_a, "eth0")?.ok()?;
    // No CNI_NETNS at all: the runtime lost it.
    let conf = json!({ "cniVersion": "1.0.0", "name": node.network, "type": "weir", "stateDir": node.state_dir, "bpfRoot": node.bpf_root });
    let (call, exit) = node.invoke(
        weir(),
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", &b.record.container_id),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ],
        &conf.to_string(),
    )?;
    assert_eq!(exit, 0, "{call:?}");
    assert!(
        call.stdout.is_empty(),
        "DEL prints nothing: {:?}",
        call.stdout
    );
    assert!(
        StateStore::new(&node.state_dir, &node.network)
            .list()?
            .is_empty()
    );
    Ok(())
}

/// GC releases what the runtime no longer lists and keeps what it does; a
/// released pod whose namespace still exists gets its own eth0 back.
#[test]
fn gc_releases_only_stale_attachments() -> Result<()> {
    host::require_privileged_host();
    let tag = "wgc";
    let node = Node::new(tag, &ChainSpec::new("1.1.0", "10.244.6.0/24"), weir())?;
    let a = add_pod(&node, tag, "a")?;
    let b = add_pod(&node, tag, "b")?;
    let conf = json!({
        "cniVersion": "1.1.0", "name": node.network, "type": "weir",
        "stateDir": node.state_dir, "bpfRoot": node.bpf_root,
        "cni.dev/valid-attachments": [{ "containerID": b.record.container_id, "ifname": "eth0" }],
    });
    let (call, exit) = node.invoke(
        weir(),
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")],
        &conf.to_string(),
    )?;
    assert_eq!(exit, 0, "{call:?}");
    let left: Vec<String> = StateStore::new(&node.state_dir, &node.network)
        .list()?
        .into_iter()
        .map(|r| r.container_id)
        .collect();
    assert_eq!(left, std::slice::from_ref(&b.record.container_id));
    assert_eq!(
        links_named(&a.ns)?,
        ["eth0 veth", "lo -"],
        "a got its own eth0 back"
    );
    assert_eq!(
        links_named(&b.ns)?,
        ["eth0 veth", "lo -", "wi-eth0 veth", "wx-eth0 veth"],
        "b untouched"
    );
    weir_e2e::chain::ping(&a.ns, b.ip, 1).context("both pods still talk")?;
    // cnitool's GC names nothing valid: libcni DELs every cached attachment
    // through the whole chain (weir first, then bridge removes the veth), then
    // GCs each plugin with no list.
    node.cnitool("gc", &b.ns.path(), "eth0", "")?.ok()?;
    assert!(
        StateStore::new(&node.state_dir, &node.network)
            .list()?
            .is_empty()
    );
    assert_eq!(links_named(&b.ns)?, ["lo -"]);
    node.cnitool("status", &b.ns.path(), "eth0", "")?.ok()?;
    Ok(())
}

/// STATUS reports not-ready (50) when bpffs is not where the config says.
#[test]
fn status_reports_unusable_bpffs() -> Result<()> {
    host::require_privileged_host();
    let node = Node::new("wst", &ChainSpec::new("1.1.0", "10.244.7.0/24"), weir())?;
    let conf = |root: &str| {
        json!({ "cniVersion": "1.1.0", "name": node.network, "type": "weir", "stateDir": node.state_dir, "bpfRoot": root }).to_string()
    };
    let (ok, exit) = node.invoke(
        weir(),
        &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/x")],
        &conf(node.bpf_root.to_str().unwrap()),
    )?;
    assert_eq!(exit, 0, "{ok:?}");
    let (bad, exit) = node.invoke(
        weir(),
        &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/x")],
        &conf("/tmp/not-bpffs/weir"),
    )?;
    assert_ne!(exit, 0);
    let err = bad.json()?;
    assert_eq!(err["code"], 50, "{err}");
    assert!(err["msg"].as_str().unwrap_or("").contains("bpf"), "{err}");
    Ok(())
}

/// Interfaces weir cannot split are passed through untouched, with a note on
/// stderr and no error.
#[test]
fn non_veth_interface_passes_through() -> Result<()> {
    host::require_privileged_host();
    let tag = "wmv";
    let node = Node::new(tag, &ChainSpec::new("1.0.0", "10.244.8.0/24"), weir())?;
    node.ns.exec(&[
        "ip", "link", "add", "wparent0", "type", "veth", "peer", "name", "wparent1",
    ])?;
    let pod = Netns::create(&format!("{tag}-a"))?;
    node.ns.exec(&[
        "ip", "link", "add", "mv0", "link", "wparent0", "type", "macvlan", "mode", "bridge",
    ])?;
    node.ns.exec(&[
        "ip",
        "link",
        "set",
        "mv0",
        "netns",
        pod.path().to_str().unwrap(),
        "name",
        "net1",
    ])?;
    let before = pod.links()?;
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{ "name": "net1", "sandbox": pod.path() }],
        "ips": [{ "address": "10.244.8.9/24", "interface": 0 }],
    });
    let conf = json!({ "cniVersion": "1.0.0", "name": node.network, "type": "weir", "stateDir": node.state_dir, "bpfRoot": node.bpf_root, "prevResult": prev });
    let netns = pod.path().display().to_string();
    let (call, exit) = node.invoke(
        weir(),
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "mv"),
            ("CNI_NETNS", &netns),
            ("CNI_IFNAME", "net1"),
            ("CNI_PATH", "/x"),
        ],
        &conf.to_string(),
    )?;
    assert_eq!(exit, 0, "{call:?}");
    assert_eq!(call.json()?, prev);
    assert!(
        call.stderr.contains("macvlan"),
        "says why on stderr: {}",
        call.stderr
    );
    assert_eq!(pod.links()?, before, "nothing changed");
    Ok(())
}

/// Bad input gets the spec's error JSON with the right code, on stdout.
#[test]
fn bad_input_gets_spec_errors() -> Result<()> {
    host::require_privileged_host();
    let node = Node::new("wbad", &ChainSpec::new("1.0.0", "10.244.9.0/24"), weir())?;
    let pod = Netns::create("wbad-a")?;
    let netns = pod.path().display().to_string();
    let add_env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/x"),
    ];
    // (CNI_* environment, stdin, the error code the spec requires)
    type Case<'a> = (&'a [(&'a str, &'a str)], String, u64);
    let cases: [Case; 5] = [
        (&add_env, "{not json".into(), 6),
        (
            &add_env,
            json!({ "cniVersion": "1.0.0", "name": "n", "type": "weir" }).to_string(),
            7,
        ),
        (
            &add_env,
            json!({ "cniVersion": "9.9.9", "name": "n", "type": "weir" }).to_string(),
            1,
        ),
        (
            &add_env[..1],
            json!({ "cniVersion": "1.0.0", "name": "n", "type": "weir", "prevResult": {} })
                .to_string(),
            4,
        ),
        (
            &[
                ("CNI_COMMAND", "CHECK"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_NETNS", netns.as_str()),
                ("CNI_IFNAME", "eth0"),
            ],
            json!({ "cniVersion": "0.3.1", "name": "n", "type": "weir", "prevResult": {} })
                .to_string(),
            1,
        ),
    ];
    for (env, stdin, code) in cases {
        let (call, exit) = node.invoke(weir(), env, &stdin)?;
        assert_ne!(exit, 0, "{stdin}");
        let err = call
            .json()
            .with_context(|| format!("stdout must be error JSON for {stdin}"))?;
        assert_eq!(err["code"], code, "{stdin} -> {err}");
        assert!(!err["msg"].as_str().unwrap_or("").is_empty());
    }
    let (call, exit) = node.invoke(weir(), &[("CNI_COMMAND", "VERSION")], "")?;
    assert_eq!(exit, 0);
    let versions = call.json()?["supportedVersions"].clone();
    assert_eq!(
        versions,
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    Ok(())
}
