//! The node agent on two nodes joined by flannel-style VXLAN: pods on each
//! node chained through bridge + host-local + weir by cnitool, a counted
//! exchange across the overlay, and the agents' own answers (/flows,
//! /metrics) checked exactly. Then the agent's lifecycle: a second agent is
//! refused, `kill -9` under traffic loses no count, SIGTERM stops cleanly.
//!
//! Needs root, bpffs and scripts/bootstrap.sh's tools; fails saying what is
//! missing otherwise.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use weir_e2e::agent::{AgentProcess, Endpoint};
use weir_e2e::chain::{ChainSpec, Node};
use weir_e2e::flannel::{self, FlannelNode};
use weir_e2e::netns::Netns;
use weir_e2e::{host, traffic};
use weir_ebpf::abi::PodMode;

const AGENT: &str = env!("CARGO_BIN_EXE_weir-operator");

const LISTEN: &str = "127.0.0.1:9465";

struct Agent {
    process: AgentProcess,
}

impl Agent {
    fn start(node: &Node, name: &str) -> Result<Self> {
        let mut cmd = node.ns.command(&[
            AGENT,
            "agent",
            "run",
            "--node-name",
            name,
            "--interval",
            "200ms",
            "--listen",
            LISTEN,
        ]);
        cmd.arg("--state-dir")
            .arg(&node.state_dir)
            .arg("--bpf-root")
            .arg(&node.bpf_root);
        let process = AgentProcess::spawn(
            cmd,
            &node.work_dir.join(format!("agent-{name}.log")),
            endpoint(&node.ns),
            Duration::from_secs(10),
        )?;
        Ok(Self { process })
    }

    fn kill9(self) -> Result<()> {
        self.process.kill9()
    }
}

fn endpoint(ns: &Netns) -> Endpoint<'_> {
    Endpoint {
        ns: Some(ns),
        addr: LISTEN.parse().expect("LISTEN is an address"),
    }
}

/// GET from inside the node namespace, where the agent listens.
fn http_get(ns: &Netns, path: &str) -> Result<String> {
    endpoint(ns).get(path, Duration::from_secs(5))
}

/// The flows the agent published, after it has collected at least once more.
fn flows(ns: &Netns) -> Result<Vec<Value>> {
    std::thread::sleep(Duration::from_millis(600));
    let body = http_get(ns, "/flows")?;
    Ok(serde_json::from_str::<Vec<Value>>(&body)?)
}

fn find<'a>(
    flows: &'a [Value],
    pod: &str,
    direction: &str,
    proto: u64,
    port: u64,
) -> Result<&'a Value> {
    flows
        .iter()
        .find(|f| {
            f["pod"] == pod
                && f["direction"] == direction
                && f["protocol"] == proto
                && (f["destinationPort"] == port || f["sourcePort"] == port)
        })
        .with_context(|| format!("no {direction} flow of {pod} on port {port}: {flows:#?}"))
}

fn observe(node: &Node, pod: &Netns) -> Result<()> {
    node.set_pod_mode(node.pod_id(pod)?, PodMode::Count)
}

struct Cluster {
    a: Node,
    b: Node,
    pod_a: Netns,
    pod_b: Netns,
    ip_b: IpAddr,
}

fn two_nodes(tag: &str) -> Result<Cluster> {
    host::require_privileged_host();
    let weir = host::weir_plugin_beside(AGENT);
    let a = Node::new(
        &format!("{tag}a"),
        &ChainSpec::new("1.0.0", "10.245.0.0/24"),
        &weir,
    )?;
    let b = Node::new(
        &format!("{tag}b"),
        &ChainSpec::new("1.0.0", "10.245.1.0/24"),
        &weir,
    )?;
    flannel::connect(
        &FlannelNode {
            ns: &a.ns,
            underlay_ip: "192.168.100.1",
            pod_subnet: "10.245.0.0/24",
        },
        &FlannelNode {
            ns: &b.ns,
            underlay_ip: "192.168.100.2",
            pod_subnet: "10.245.1.0/24",
        },
    )?;
    let pod_a = Netns::create(&format!("{tag}a-web"))?;
    let pod_b = Netns::create(&format!("{tag}b-db"))?;
    a.add(&pod_a, "eth0", "shop", "web")?.ok()?;
    let ip_b = Node::pod_ipv4(&b.add(&pod_b, "eth0", "shop", "db")?.ok()?.json()?)?;
    observe(&a, &pod_a)?;
    observe(&b, &pod_b)?;
    Ok(Cluster {
        a,
        b,
        pod_a,
        pod_b,
        ip_b,
    })
}

#[test]
fn cross_node_exchange_is_counted_exactly_by_pods_and_overlay() -> Result<()> {
    let c = two_nodes("wvx")?;
    let agent_a = Agent::start(&c.a, "node-a")?;
    let agent_b = Agent::start(&c.b, "node-b")?;
    // Both agents are ready (Agent::start waits on /readyz): they looked for
    // flannel.1 and attached to its underlay in their first collection.

    let (n, size) = (50u64, 400usize);
    traffic::udp_echo(&c.pod_a, &c.pod_b, c.ip_b, 9053, n as usize, size)?;
    let wire = traffic::UDP4_OVERHEAD + size as u64;

    let on_a = flows(&c.a.ns)?;
    let on_b = flows(&c.b.ns)?;
    let a_out = find(&on_a, "web", "egress", 17, 9053)?;
    let b_in = find(&on_b, "db", "ingress", 17, 9053)?;
    let b_out = find(&on_b, "db", "egress", 17, 9053)?;
    let a_in = find(&on_a, "web", "ingress", 17, 9053)?;
    for (flow, what) in [
        (a_out, "web egress"),
        (b_in, "db ingress"),
        (b_out, "db egress"),
        (a_in, "web ingress"),
    ] {
        assert_eq!(
            (flow["packets"].as_u64(), flow["bytes"].as_u64()),
            (Some(n), Some(n * wire)),
            "pod counters of {what}"
        );
        assert_eq!(
            flow["overlay"]["vni"],
            flannel::VNI,
            "{what} crossed VNI 1: {flow}"
        );
    }
    // Encapsulated on A = decapsulated on B = packets sent, each way.
    assert_eq!(
        a_out["overlay"]["encapPackets"].as_u64(),
        Some(n),
        "{a_out}"
    );
    assert_eq!(b_in["overlay"]["decapPackets"].as_u64(), Some(n), "{b_in}");
    assert_eq!(
        b_out["overlay"]["encapPackets"].as_u64(),
        Some(n),
        "{b_out}"
    );
    assert_eq!(a_in["overlay"]["decapPackets"].as_u64(), Some(n), "{a_in}");
    // The outer header is the nodes' underlay; VXLAN adds 50 bytes per frame.
    assert_eq!(a_out["overlay"]["outerSource"], "192.168.100.1");
    assert_eq!(a_out["overlay"]["outerDestination"], "192.168.100.2");
    assert_eq!(
        a_out["overlay"]["encapBytes"].as_u64(),
        Some(n * (wire + 50)),
        "{a_out}"
    );
    assert_eq!(b_in["overlay"]["outerSource"], "192.168.100.1");
    // The peer is named: the local pod on B, via node state.
    assert_eq!(
        b_in["peer"],
        Value::Null,
        "A's pod is not in B's directory without a peers file"
    );
    assert_eq!(a_out["destination"], c.ip_b.to_string());

    let metrics = http_get(&c.a.ns, "/metrics")?;
    assert!(
        metrics.contains(&format!(
            r#"weir_pod_packets_total{{namespace="shop",pod="web",direction="egress",vni="1"}} {n}"#
        )),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"weir_vxlan_interface_packets_total{interface="eth0",direction="encap"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_collection_duration_seconds"),
        "{metrics}"
    );

    // The operator's local view shows the same, with the overlay, in the
    // same schema as /flows (docs/flow.schema.json).
    // A peers file names the remote pod, as the agent's --peers-file does.
    let peers_file = c.a.state_dir.join("dump-peers.json");
    std::fs::write(
        &peers_file,
        serde_json::json!({ c.ip_b.to_string(): { "namespace": "shop", "pod": "db", "node": "node-b" } }).to_string(),
    )?;
    let dump =
        c.a.ns
            .command(&[AGENT, "agent", "dump", "-o", "json", "--protocol", "udp"])
            .arg("--state-dir")
            .arg(&c.a.state_dir)
            .arg("--bpf-root")
            .arg(&c.a.bpf_root)
            .arg("--peers-file")
            .arg(&peers_file)
            .output()?;
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump: Value = serde_json::from_slice(&dump.stdout)?;
    let out = dump["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["namespace"] == "shop" && f["pod"] == "web" && f["direction"] == "egress")
        .context("web's flow in dump")?;
    assert_eq!(
        (out["packets"].as_u64(), out["overlay"]["vni"].as_u64()),
        (Some(n), Some(1)),
        "{out}"
    );
    assert_eq!(out["overlay"]["outerSource"], "192.168.100.1");
    assert_eq!(out["overlay"]["outerDestination"], "192.168.100.2");
    assert_eq!(
        out["overlay"]["encapPackets"], a_out["overlay"]["encapPackets"],
        "dump and /flows agree"
    );
    assert_eq!(
        out["peer"],
        serde_json::json!({ "namespace": "shop", "pod": "db", "node": "node-b" }),
        "dump names the remote peer from the peers file"
    );
    drop((agent_a, agent_b));
    Ok(())
}

#[test]
fn agent_lifecycle_lock_kill9_under_traffic_and_sigterm() -> Result<()> {
    let c = two_nodes("wlc")?;
    let agent = Agent::start(&c.a, "node-a")?;

    // A second agent on the same node is refused, saying why.
    let second =
        c.a.ns
            .command(&[
                AGENT,
                "agent",
                "run",
                "--listen",
                "127.0.0.1:9466",
                "--interval",
                "1s",
            ])
            .arg("--state-dir")
            .arg(&c.a.state_dir)
            .arg("--bpf-root")
            .arg(&c.a.bpf_root)
            .output()?;
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("another weir agent is already running"),
        "{stderr}"
    );

    // kill -9 in the middle of a counted exchange, restart, and the count is exact.
    let n = 400u64;
    let (pod_a, pod_b, ip_b) = (&c.pod_a, &c.pod_b, c.ip_b);
    std::thread::scope(|s| -> Result<()> {
        let exchange =
            s.spawn(move || traffic::udp_echo(pod_a, pod_b, ip_b, 9054, n as usize, 100));
        std::thread::sleep(Duration::from_millis(100));
        agent.kill9()?;
        let restarted = Agent::start(&c.a, "node-a")?;
        exchange
            .join()
            .map_err(|_| anyhow::anyhow!("traffic thread panicked"))??;
        let seen = flows(&c.a.ns)?;
        assert_eq!(
            find(&seen, "web", "egress", 17, 9054)?["packets"].as_u64(),
            Some(n)
        );
        assert_eq!(
            find(&seen, "web", "ingress", 17, 9054)?["packets"].as_u64(),
            Some(n)
        );

        // SIGTERM: a clean exit, and the programs keep counting without it.
        let status = restarted.process.terminate()?;
        assert!(status.success(), "SIGTERM exit: {status}");
        traffic::udp_echo(pod_a, pod_b, ip_b, 9055, 10, 100)?;
        let after = Agent::start(&c.a, "node-a")?;
        let seen = flows(&c.a.ns)?;
        assert_eq!(
            find(&seen, "web", "egress", 17, 9055)?["packets"].as_u64(),
            Some(10)
        );
        drop(after);
        Ok(())
    })?;
    Ok(())
}
