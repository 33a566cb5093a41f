//! The user's whole path on a real cluster: two nodes, each with containerd,
//! runc, kubelet, kube-proxy and flanneld (VXLAN), a control plane with the
//! scheduler and the full controller manager (`e2e/cluster/cluster.sh`);
//! weir's image built by `scripts/image.sh` and imported; then only what a
//! user does: `helm install`, a CaptureProfile, pods through the real
//! kubelet, traffic from inside the pods, `kubectl get podflows`, an agent
//! deleted while traffic runs, `helm upgrade`, `helm uninstall`.
//!
//! Counts are exact: UDP datagrams of a known size, and a TCP transfer whose
//! wire segments the pods' own kernels count (`/proc/net/snmp`, SACK off so
//! every segment's header length is known).
//!
//! Needs root, the tools of scripts/bootstrap.sh (control plane and cluster
//! parts) and about 5 minutes; fails saying what is missing.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use weir_e2e::cluster::{Cluster, repo_root};

const NAME: &str = "weirt";
const API_PORT: u16 = 16444;
const NS: &str = "shop";
const OTHER_NS: &str = "other";
const SYSTEM_NS: &str = "weir-system";
const TOOLS_IMAGE: &str = "docker.io/weir-test/tools:1";
/// Ethernet + IPv4 + UDP in front of each datagram's payload.
const UDP4_OVERHEAD: i64 = 14 + 20 + 8;
/// Ethernet + IPv4 + TCP with timestamps (SACK off) per segment; SYN and
/// SYN-ACK carry 8 option bytes more.
const TCP4_HEADERS: i64 = 14 + 20 + 32;
/// VXLAN's outer Ethernet + IPv4 + UDP + VXLAN headers.
const VXLAN_OVERHEAD: i64 = 50;

struct Images {
    weir: PathBuf,
    tools: PathBuf,
}

/// `scripts/image.sh`: weir's image and the test tools image (OCI archives)
/// of this build (debug: what `cargo test` just built).
fn build_images() -> Result<Images> {
    let started = Instant::now();
    let build = |target: &str| -> Result<PathBuf> {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/image.sh"))
            .args(["--profile", "debug", target])
            .output()
            .context("running scripts/image.sh")?;
        ensure!(
            out.status.success(),
            "scripts/image.sh {target} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // `<ref> <archive> <digest>`
        let printed = String::from_utf8_lossy(&out.stdout);
        let archive = printed
            .lines()
            .last()
            .and_then(|l| l.split_whitespace().nth(1))
            .with_context(|| format!("scripts/image.sh {target} printed no archive: {printed}"))?;
        Ok(PathBuf::from(archive))
    };
    let images = Images {
        weir: build("weir")?,
        tools: build("tools")?,
    };
    eprintln!("images built in {:.0?}: {images:?}", started.elapsed());
    Ok(images)
}

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.weir.display(), self.tools.display())
    }
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the cluster test needs root (network, mount and UTS namespaces, cgroups): run `make test` as root"
    );
}

/// A pod of the tools image pinned to `node`, running `command`.
fn tools_pod(
    name: &str,
    ns: &str,
    node: &str,
    app: &str,
    command: &str,
    host_network: bool,
) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": ns, "labels": { "app": app } },
        "spec": pod_spec(node, command, host_network),
    })
}

fn pod_spec(node: &str, command: &str, host_network: bool) -> Value {
    let mut spec = json!({
        "nodeSelector": { "kubernetes.io/hostname": node },
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "tools", "image": TOOLS_IMAGE, "imagePullPolicy": "Never",
            "command": ["/bin/sh", "-c", command],
        }],
    });
    if host_network {
        spec["hostNetwork"] = json!(true);
    } else {
        // Without SACK every TCP segment's header length is known, so wire
        // bytes follow from segments and payload alone.
        spec["securityContext"] =
            json!({ "sysctls": [{ "name": "net.ipv4.tcp_sack", "value": "0" }] });
    }
    spec
}

fn manifests(c: &Cluster) -> String {
    let (n1, n2) = (c.node(1), c.node(2));
    let server_cmd = "weir-traffic udp-echo 7001 & weir-traffic udp-echo 7002 & weir-traffic udp-echo 7003 & exec weir-traffic tcp-sink 5201";
    let docs = vec![
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": NS } }),
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": OTHER_NS } }),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "server", "namespace": NS },
            "spec": {
                "replicas": 1,
                "selector": { "matchLabels": { "app": "server" } },
                "template": {
                    "metadata": { "labels": { "app": "server" } },
                    "spec": pod_spec(&n1, server_cmd, false),
                },
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "server", "namespace": NS },
            "spec": { "selector": { "app": "server" }, "ports": [
                { "name": "udp", "protocol": "UDP", "port": 7003, "targetPort": 7003 },
            ] },
        }),
        tools_pod("client", NS, &n2, "client", "exec sleep 100000", false),
        tools_pod(
            "client-local",
            NS,
            &n1,
            "client",
            "exec sleep 100000",
            false,
        ),
        // Selected by the profile's labels, but on the node's own network:
        // weir's CNI plugin never runs for it, nothing may touch the node.
        tools_pod("hostnet", NS, &n2, "client", "exec sleep 100000", true),
        tools_pod(
            "bystander-a",
            OTHER_NS,
            &n1,
            "client",
            "weir-traffic udp-echo 7001",
            false,
        ),
        tools_pod(
            "bystander-b",
            OTHER_NS,
            &n2,
            "client",
            "exec sleep 100000",
            false,
        ),
    ];
    docs.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

fn profile(flush: &str) -> String {
    json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "CaptureProfile",
        "metadata": { "name": "all", "namespace": NS },
        "spec": { "podSelector": {}, "flushInterval": flush, "flowTTL": "1h" },
    })
    .to_string()
}

fn pod_ip(c: &Cluster, ns: &str, pod: &str) -> Result<String> {
    let ip = c.kubectl([
        "get",
        "pod",
        "-n",
        ns,
        pod,
        "-o",
        "jsonpath={.status.podIP}",
    ])?;
    ensure!(!ip.is_empty(), "{ns}/{pod} has no IP");
    Ok(ip)
}

fn server_pod(c: &Cluster) -> Result<String> {
    let name = c.kubectl([
        "get",
        "pod",
        "-n",
        NS,
        "-l",
        "app=server",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ])?;
    ensure!(!name.is_empty(), "no server pod");
    Ok(name)
}

fn exec(c: &Cluster, ns: &str, pod: &str, cmd: &[&str]) -> Result<String> {
    let mut args = vec!["exec", "-n", ns, pod, "--"];
    args.extend(cmd);
    c.kubectl(&args)
}

fn exec_json(c: &Cluster, ns: &str, pod: &str, cmd: &[&str]) -> Result<Value> {
    let out = exec(c, ns, pod, cmd)?;
    serde_json::from_str(out.trim()).with_context(|| format!("{cmd:?} printed {out:?}"))
}

/// The pod's kernel's TCP segments out (retransmissions included).
fn tcp_out_segments(c: &Cluster, ns: &str, pod: &str) -> Result<i64> {
    let snmp = exec(c, ns, pod, &["cat", "/proc/net/snmp"])?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        bail!("no Tcp lines in {pod}'s /proc/net/snmp");
    };
    let field = |want: &str| -> Result<i64> {
        let i = names
            .split_whitespace()
            .position(|n| n == want)
            .context(want.to_owned())?;
        Ok(values
            .split_whitespace()
            .nth(i)
            .context(want.to_owned())?
            .parse()?)
    };
    Ok(field("OutSegs")? + field("RetransSegs")?)
}

fn podflows(c: &Cluster, ns: &str) -> Result<Vec<Value>> {
    let list = c.kubectl_json(&["get", "podflows", "-n", ns])?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// The PodFlows of `ns` to destination port `port` over `protocol`.
fn flows_to(c: &Cluster, ns: &str, protocol: &str, port: i64) -> Result<Vec<Value>> {
    Ok(podflows(c, ns)?
        .into_iter()
        .filter(|f| f["spec"]["protocol"] == protocol && f["spec"]["destination"]["port"] == port)
        .collect())
}

fn observer<'a>(flow: &'a Value, node: &str) -> Option<&'a Value> {
    flow["status"]["observers"]
        .as_array()?
        .iter()
        .find(|o| o["node"] == node)
}

fn counts(v: &Value) -> (i64, i64) {
    (
        v["packets"].as_i64().unwrap_or(-1),
        v["bytes"].as_i64().unwrap_or(-1),
    )
}

/// Waits until the one PodFlow to `port` has, at every one of `nodes`,
/// `forward` and `reverse` (packets, bytes) — exactly.
/// One conversation: from a pod of `NS` to a destination port of a pod of
/// `NS` (the new-peer check also talks to another namespace).
struct Conversation<'a> {
    source: &'a str,
    protocol: &'a str,
    port: i64,
}

fn wait_exact(
    c: &Cluster,
    what: &str,
    conversation: Conversation,
    nodes: &[String],
    forward: (i64, i64),
    reverse: (i64, i64),
) -> Result<Value> {
    c.wait(Duration::from_secs(60), what, || {
        let Conversation {
            source,
            protocol,
            port,
        } = &conversation;
        let found: Vec<Value> = flows_to(c, NS, protocol, *port)?
            .into_iter()
            .filter(|f| {
                f["spec"]["source"]["pod"] == *source && f["spec"]["destination"]["namespace"] == NS
            })
            .collect();
        ensure!(
            found.len() <= 1,
            "more than one PodFlow for one conversation: {found:#?}"
        );
        let Some(flow) = found.into_iter().next() else {
            return Ok(None);
        };
        let done = nodes.iter().all(|n| {
            observer(&flow, n).is_some_and(|o| {
                counts(&o["forward"]) == forward && counts(&o["reverse"]) == reverse
            })
        });
        if !done {
            bail!(
                "not exact yet: want forward {forward:?} reverse {reverse:?} at {nodes:?}: {}",
                flow["status"]
            );
        }
        Ok(Some(flow))
    })
    .with_context(|| agent_logs(c))
}

fn agent_logs(c: &Cluster) -> String {
    let out = c
        .kubectl_output(&[
            "logs",
            "-n",
            SYSTEM_NS,
            "-l",
            "app.kubernetes.io/component=agent",
            "-c",
            "agent",
            "--tail=30",
            "--prefix",
        ])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    format!("agent logs:\n{out}")
}

fn wait_pods_ready(c: &Cluster, ns: &str) -> Result<()> {
    c.kubectl([
        "wait",
        "--for=condition=Ready",
        "pod",
        "--all",
        "-n",
        ns,
        "--timeout=180s",
    ])
    .map(drop)
    .with_context(|| {
        format!(
            "pods of {ns} not ready: {}\n{}",
            c.kubectl(["get", "pods", "-n", ns, "-o", "wide"])
                .unwrap_or_default(),
            c.kubectl(["get", "events", "-n", ns]).unwrap_or_default()
        )
    })
}

/// The pod's interfaces, as `ip -o link` inside it shows them.
fn links(c: &Cluster, ns: &str, pod: &str) -> Result<Vec<String>> {
    let out = exec(c, ns, pod, &["ip", "-o", "link"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
        .collect())
}

fn is_split(links: &[String]) -> bool {
    ["eth0", "wi-eth0", "wx-eth0"]
        .iter()
        .all(|n| links.iter().any(|l| l == n))
}

/// The node's conflist that weir wrote, and whether its plugin is in place.
fn weir_installed(c: &Cluster, i: usize) -> Result<Option<Value>> {
    let conf = c.node_path(i, "/etc/cni/net.d/00-weir.conflist");
    let bin = c.node_path(i, "/opt/cni/bin/weir");
    if !conf.exists() || !bin.exists() {
        return Ok(None);
    }
    let list: Value = serde_json::from_str(&std::fs::read_to_string(&conf)?)
        .with_context(|| format!("{} is not JSON", conf.display()))?;
    Ok(Some(list))
}

fn node_links(c: &Cluster, i: usize) -> Result<String> {
    c.node_exec(i, &["ip", "-o", "link"])
}

#[test]
fn helm_install_on_a_real_cluster_counts_exactly_and_uninstalls_cleanly() -> Result<()> {
    require_root();
    let images = build_images()?;
    let c = Cluster::up(NAME, 2, API_PORT)?;
    let (n1, n2) = (c.node(1), c.node(2));
    let nodes = [n1.clone(), n2.clone()];
    c.import(&[&images.weir, &images.tools])?;

    // The chart lints clean and the API server takes every object it renders.
    let chart = repo_root().join("charts/weir");
    let chart = chart.to_string_lossy();
    let lint = c.helm(&["lint", "--strict", &chart])?;
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    let rendered = c.helm(&[
        "template",
        "weir",
        &chart,
        "-n",
        SYSTEM_NS,
        "--include-crds",
    ])?;
    c.kubectl(["create", "namespace", SYSTEM_NS])?;
    let dry = c.kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &rendered)?;
    assert!(
        dry.contains("daemonset.apps/weir-agent created (server dry run)"),
        "{dry}"
    );
    c.kubectl(["delete", "namespace", SYSTEM_NS, "--wait=true"])?;

    // 1. helm install, as the README says; every node gets weir last.
    c.helm(&[
        "install",
        "weir",
        &chart,
        "-n",
        SYSTEM_NS,
        "--create-namespace",
        "--wait",
        "--timeout",
        "5m",
        "--set",
        "agent.interval=1s",
        "--set",
        "image.pullPolicy=Never",
    ])
    .with_context(|| agent_logs(&c))?;
    for i in 1..=2 {
        let list = c.wait(
            Duration::from_secs(60),
            "weir's conflist and binary",
            || weir_installed(&c, i),
        )?;
        let plugins = list["plugins"].as_array().context("plugins")?;
        let types: Vec<&str> = plugins.iter().filter_map(|p| p["type"].as_str()).collect();
        assert_eq!(types, ["flannel", "portmap", "weir"], "node {i}: {list}");
        assert_eq!(list["name"], "cbr0", "the primary's network name");
    }

    // 2. A profile in shop; pods through the real kubelet.
    c.apply(&manifests(&c))?;
    c.apply(&profile("1s"))?;
    wait_pods_ready(&c, NS)?;
    wait_pods_ready(&c, OTHER_NS)?;
    let server = server_pod(&c)?;
    for (ns, pod) in [
        (NS, server.as_str()),
        (NS, "client"),
        (NS, "client-local"),
        (OTHER_NS, "bystander-a"),
    ] {
        let l = links(&c, ns, pod)?;
        assert!(is_split(&l), "{ns}/{pod} is not split: {l:?}");
    }
    // The host-network pod is the node: its devices are the node's, untouched.
    assert!(
        !links(&c, NS, "hostnet")?
            .iter()
            .any(|l| l.starts_with("wx-") || l.starts_with("wi-"))
    );
    let server_ip = pod_ip(&c, NS, &server)?;

    // Counting is on once a probe conversation shows up at both nodes.
    c.wait(
        Duration::from_secs(90),
        "counting on in client, client-local and server",
        || {
            exec(
                &c,
                NS,
                "client",
                &[
                    "weir-traffic",
                    "udp-send",
                    &format!("{server_ip}:7002"),
                    "1",
                    "10",
                ],
            )?;
            exec(
                &c,
                NS,
                "client-local",
                &[
                    "weir-traffic",
                    "udp-send",
                    &format!("{server_ip}:7002"),
                    "1",
                    "10",
                ],
            )?;
            let probes = flows_to(&c, NS, "UDP", 7002)?;
            let remote = probes.iter().any(|f| {
                f["spec"]["source"]["pod"] == "client"
                    && observer(f, &n1).is_some()
                    && observer(f, &n2).is_some()
            });
            let local = probes.iter().any(|f| {
                f["spec"]["source"]["pod"] == "client-local" && observer(f, &n1).is_some()
            });
            Ok((remote && local).then_some(()))
        },
    )
    .with_context(|| agent_logs(&c))?;

    // 3a. UDP across the nodes: exact wire packets and bytes each way.
    let (n, size) = (50i64, 300i64);
    let sent = exec_json(
        &c,
        NS,
        "client",
        &[
            "weir-traffic",
            "udp-send",
            &format!("{server_ip}:7001"),
            &n.to_string(),
            &size.to_string(),
        ],
    )?;
    assert_eq!(sent["echoed"], n);
    let wire = n * (UDP4_OVERHEAD + size);
    let flow = wait_exact(
        &c,
        "the cross-node UDP PodFlow, exact",
        Conversation {
            source: "client",
            protocol: "UDP",
            port: 7001,
        },
        &nodes,
        (n, wire),
        (n, wire),
    )?;
    assert_eq!(flow["spec"]["source"]["display"], "shop/client");
    assert_eq!(
        flow["spec"]["destination"]["display"],
        format!("shop/{server}")
    );
    assert_eq!(flow["spec"]["source"]["node"], n2.as_str());
    assert_eq!(flow["spec"]["destination"]["node"], n1.as_str());
    let flow = c.wait(
        Duration::from_secs(30),
        "the controller's summary with the overlay",
        || {
            let f = flows_to(&c, NS, "UDP", 7001)?
                .into_iter()
                .next()
                .context("gone")?;
            Ok(f["status"]["vxlan"]["lossPackets"].is_i64().then_some(f))
        },
    )?;
    for node in &nodes {
        let vx = &observer(&flow, node).context("observer")?["vxlan"];
        assert_eq!(vx["vni"], 1, "{node}: {vx}");
        assert_eq!(vx["encapPackets"], n, "{node}: {vx}");
        assert_eq!(vx["decapPackets"], n, "{node}: {vx}");
        assert_eq!(vx["encapBytes"], wire + n * VXLAN_OVERHEAD, "{node}: {vx}");
        // The forward direction's outer addresses: the client's node to the server's.
        assert_eq!(vx["outerSource"], c.node_ip(2), "{node}: {vx}");
        assert_eq!(vx["outerDestination"], c.node_ip(1), "{node}: {vx}");
    }
    let summary = &flow["status"]["vxlan"];
    assert_eq!(
        (
            summary["encapPackets"].as_i64(),
            summary["decapPackets"].as_i64()
        ),
        (Some(2 * n), Some(2 * n)),
        "{summary}"
    );
    assert_eq!(summary["lossPackets"], 0, "{summary}");
    assert_eq!(flow["status"]["packets"], 2 * n);
    assert_eq!(flow["status"]["bytes"], 2 * wire);
    // -o wide names the nodes and their real underlay addresses.
    let wide = c.kubectl([
        "get",
        "podflows",
        "-n",
        NS,
        "-o",
        "wide",
        "--field-selector",
        &format!(
            "metadata.name={}",
            flow["metadata"]["name"].as_str().unwrap()
        ),
    ])?;
    eprintln!("{wide}");
    for want in [n1.as_str(), n2.as_str(), &c.node_ip(1), &c.node_ip(2)] {
        assert!(wide.contains(want), "-o wide lacks {want}:\n{wide}");
    }

    // 3b. TCP across the nodes: the pods' kernels count the segments.
    let payload = 4i64 << 20;
    let (c0, s0) = (
        tcp_out_segments(&c, NS, "client")?,
        tcp_out_segments(&c, NS, &server)?,
    );
    let report = exec_json(
        &c,
        NS,
        "client",
        &[
            "weir-traffic",
            "tcp-send",
            &format!("{server_ip}:5201"),
            &payload.to_string(),
        ],
    )?;
    // The last ACK of the close may still be on its way.
    let (seg_c, seg_s) = c.wait(
        Duration::from_secs(10),
        "TCP segment counters settled",
        || {
            let (c1, s1) = (
                tcp_out_segments(&c, NS, "client")?,
                tcp_out_segments(&c, NS, &server)?,
            );
            std::thread::sleep(Duration::from_millis(300));
            let again = (
                tcp_out_segments(&c, NS, "client")?,
                tcp_out_segments(&c, NS, &server)?,
            );
            Ok((again == (c1, s1)).then_some((c1 - c0, s1 - s0)))
        },
    )?;
    let bytes_sent = report["bytesSent"].as_i64().context("bytesSent")?;
    assert!(bytes_sent >= payload, "{report}");
    // The server answers with the count it received, as text, then closes.
    let reply = format!("{payload}\n").len() as i64;
    let fwd = (seg_c, bytes_sent + TCP4_HEADERS * seg_c + 8);
    let rev = (seg_s, reply + TCP4_HEADERS * seg_s + 8);
    wait_exact(
        &c,
        "the cross-node TCP PodFlow, exact",
        Conversation {
            source: "client",
            protocol: "TCP",
            port: 5201,
        },
        &nodes,
        fwd,
        rev,
    )?;

    // 3c. The same node: one observer, no overlay.
    let sent = exec_json(
        &c,
        NS,
        "client-local",
        &[
            "weir-traffic",
            "udp-send",
            &format!("{server_ip}:7001"),
            "20",
            "100",
        ],
    )?;
    assert_eq!(sent["echoed"], 20);
    let local_wire = 20 * (UDP4_OVERHEAD + 100);
    c.wait(
        Duration::from_secs(60),
        "the same-node UDP PodFlow, exact",
        || {
            let f = flows_to(&c, NS, "UDP", 7001)?;
            let Some(f) = f
                .iter()
                .find(|f| f["spec"]["source"]["pod"] == "client-local")
            else {
                return Ok(None);
            };
            let o = observer(f, &n1).context("node 1 observer")?;
            ensure!(
                observer(f, &n2).is_none(),
                "node 2 saw a same-node conversation: {f}"
            );
            ensure!(
                o["vxlan"].is_null(),
                "same-node traffic has no overlay leg: {o}"
            );
            Ok((counts(&o["forward"]) == (20, local_wire)
                && counts(&o["reverse"]) == (20, local_wire))
                .then_some(()))
        },
    )?;

    // 3d. Through the Service's ClusterIP (kube-proxy DNATs on the client's
    // node, after weir saw the packet leave the pod): the client's node names
    // the Service address as the destination, the server's node the pod.
    let cluster_ip = c.kubectl([
        "get",
        "svc",
        "-n",
        NS,
        "server",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    let sent = exec_json(
        &c,
        NS,
        "client",
        &[
            "weir-traffic",
            "udp-send",
            &format!("{cluster_ip}:7003"),
            "10",
            "200",
        ],
    )?;
    assert_eq!(sent["echoed"], 10);
    let svc_wire = 10 * (UDP4_OVERHEAD + 200);
    c.wait(
        Duration::from_secs(60),
        "the PodFlows of the Service conversation",
        || {
            let f = flows_to(&c, NS, "UDP", 7003)?;
            let to_service = f
                .iter()
                .find(|f| f["spec"]["destination"]["ip"] == cluster_ip.as_str());
            let to_pod = f
                .iter()
                .find(|f| f["spec"]["destination"]["ip"] == server_ip.as_str());
            let (Some(to_service), Some(to_pod)) = (to_service, to_pod) else {
                return Ok(None);
            };
            let s = observer(to_service, &n2)
                .context("the client's node observes the Service address")?;
            let p = observer(to_pod, &n1).context("the server's node observes the pod")?;
            ensure!(
                to_service["spec"]["destination"]["display"] == cluster_ip.as_str(),
                "{to_service}"
            );
            ensure!(
                to_pod["spec"]["source"]["display"] == "shop/client",
                "{to_pod}"
            );
            Ok(
                (counts(&s["forward"]) == (10, svc_wire)
                    && counts(&p["forward"]) == (10, svc_wire))
                    .then_some(()),
            )
        },
    )?;

    // Not counted: another namespace's pods (split, but no profile there),
    // and the host-network pod (no CNI) — against the counted ones above.
    let by_ip = pod_ip(&c, OTHER_NS, "bystander-a")?;
    exec_json(
        &c,
        OTHER_NS,
        "bystander-b",
        &[
            "weir-traffic",
            "udp-send",
            &format!("{by_ip}:7001"),
            "5",
            "64",
        ],
    )?;
    exec_json(
        &c,
        NS,
        "hostnet",
        &[
            "weir-traffic",
            "udp-send",
            &format!("{server_ip}:7002"),
            "3",
            "64",
        ],
    )?;
    // One more counted exchange after both: once it is published, the
    // agents have read the maps since the uncounted traffic ran.
    exec_json(
        &c,
        NS,
        "client",
        &[
            "weir-traffic",
            "udp-send",
            &format!("{server_ip}:7001"),
            "1",
            "300",
        ],
    )?;
    wait_exact(
        &c,
        "the marker exchange",
        Conversation {
            source: "client",
            protocol: "UDP",
            port: 7001,
        },
        &nodes,
        (n + 1, wire + UDP4_OVERHEAD + 300),
        (n + 1, wire + UDP4_OVERHEAD + 300),
    )?;
    assert!(
        podflows(&c, OTHER_NS)?.is_empty(),
        "another namespace was published"
    );
    // The server counted what the host-network pod sent it (an address
    // then, the node's), but no flow names that pod as one of its ends.
    for f in podflows(&c, NS)? {
        for end in ["source", "destination"] {
            assert_ne!(
                f["spec"][end]["pod"], "hostnet",
                "the host-network pod was counted as a pod: {f}"
            );
        }
    }
    for i in 1..=2 {
        let l = node_links(&c, i)?;
        assert!(
            !l.contains("wx-") && !l.contains("wi-"),
            "node {i}'s own devices were split:\n{l}"
        );
    }

    // 3f. What a user watches and is told: kubectl weir (observe through
    // the API server with the user's own RBAC, top, graph) and alerts.
    visibility(&c, &server_ip)?;

    // 5. The agent on node 2 deleted while traffic runs: the totals stay exact.
    let agent2 = c.kubectl([
        "get",
        "pod",
        "-n",
        SYSTEM_NS,
        "-l",
        "app.kubernetes.io/component=agent",
        "--field-selector",
        &format!("spec.nodeName={n2}"),
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ])?;
    let long = (400i64, 500i64);
    let traffic = {
        let mut cmd = c.kubectl_command();
        cmd.args([
            "exec",
            "-n",
            NS,
            "client",
            "--",
            "weir-traffic",
            "udp-send",
            &format!("{server_ip}:7001"),
            &long.0.to_string(),
            &long.1.to_string(),
        ]);
        cmd.spawn()?
    };
    c.kubectl(["delete", "pod", "-n", SYSTEM_NS, &agent2, "--wait=false"])?;
    let out = traffic.wait_with_output()?;
    ensure!(
        out.status.success(),
        "traffic during the agent's restart failed"
    );
    c.kubectl([
        "rollout",
        "status",
        "daemonset/weir-agent",
        "-n",
        SYSTEM_NS,
        "--timeout=180s",
    ])?;
    let total = (
        n + 1 + long.0,
        wire + UDP4_OVERHEAD + 300 + long.0 * (UDP4_OVERHEAD + long.1),
    );
    wait_exact(
        &c,
        "exact totals after the agent's restart",
        Conversation {
            source: "client",
            protocol: "UDP",
            port: 7001,
        },
        &nodes,
        total,
        total,
    )?;

    // 8a. A profile the API server refuses, with the reason.
    let bad = c.apply_output(
        &json!({
            "apiVersion": "weir.dev/v1alpha1", "kind": "CaptureProfile",
            "metadata": { "name": "bad", "namespace": NS },
            "spec": { "podSelector": {}, "flushInterval": "0s" },
        })
        .to_string(),
    )?;
    assert!(!bad.status.success(), "a 0s flushInterval was accepted");
    let why = String::from_utf8_lossy(&bad.stderr);
    assert!(
        why.contains("flushInterval must be between 1s and 1h"),
        "{why}"
    );

    // 6. helm upgrade with a changed value: networking and counting go on.
    c.helm(&[
        "upgrade",
        "weir",
        &chart,
        "-n",
        SYSTEM_NS,
        "--wait",
        "--timeout",
        "5m",
        "--reuse-values",
        "--set",
        "cni.logLevel=debug",
        "--set",
        "agent.interval=2s",
    ])?;
    for i in 1..=2 {
        let list = c.wait(
            Duration::from_secs(60),
            "weir's conflist after the upgrade",
            || Ok(weir_installed(&c, i)?.filter(|l| l["plugins"][2]["logLevel"] == "debug")),
        )?;
        assert_eq!(list["plugins"][2]["type"], "weir");
    }
    exec_json(
        &c,
        NS,
        "client",
        &[
            "weir-traffic",
            "udp-send",
            &format!("{server_ip}:7001"),
            "5",
            "300",
        ],
    )?;
    let total = (total.0 + 5, total.1 + 5 * (UDP4_OVERHEAD + 300));
    wait_exact(
        &c,
        "counting after the upgrade",
        Conversation {
            source: "client",
            protocol: "UDP",
            port: 7001,
        },
        &nodes,
        total,
        total,
    )?;

    // 8b. Node 2's primary conflist broken: weir's goes (no chaining onto
    // garbage), with a log line; back when flannel's file is good again.
    let flannel_conf = c.node_path(2, "/etc/cni/net.d/10-flannel.conflist");
    let good = std::fs::read_to_string(&flannel_conf)?;
    std::fs::write(&flannel_conf, "{ not json")?;
    c.wait(
        Duration::from_secs(30),
        "node 2's weir conflist removed",
        || Ok((!c.node_path(2, "/etc/cni/net.d/00-weir.conflist").exists()).then_some(())),
    )?;
    let logs = c.kubectl([
        "logs",
        "-n",
        SYSTEM_NS,
        &installer_pod(&c, &n2)?,
        "-c",
        "install-cni",
    ])?;
    assert!(
        logs.contains("10-flannel.conflist"),
        "no log line names the broken file:\n{logs}"
    );
    std::fs::write(&flannel_conf, &good)?;
    c.wait(
        Duration::from_secs(30),
        "node 2's weir conflist back",
        || weir_installed(&c, 2),
    )?;

    // 4. Deleting the client removes its PodFlows; the profile the rest.
    c.kubectl([
        "delete",
        "pod",
        "-n",
        NS,
        "client",
        "--wait=true",
        "--timeout=60s",
    ])?;
    c.wait(
        Duration::from_secs(90),
        "the client's PodFlows gone",
        || {
            Ok((!podflows(&c, NS)?
                .iter()
                .any(|f| f["spec"]["source"]["pod"] == "client"))
            .then_some(()))
        },
    )?;
    assert!(
        !podflows(&c, NS)?.is_empty(),
        "client-local's PodFlows must stay"
    );
    c.kubectl(["delete", "captureprofile", "-n", NS, "all"])?;
    c.wait(
        Duration::from_secs(90),
        "every PodFlow gone with the profile",
        || Ok(podflows(&c, NS)?.is_empty().then_some(())),
    )?;

    // 7. helm uninstall: the nodes as before, running pods keep talking,
    // new pods start without weir, old split pods delete cleanly.
    c.helm(&[
        "uninstall",
        "weir",
        "-n",
        SYSTEM_NS,
        "--wait",
        "--timeout",
        "3m",
    ])?;
    for i in 1..=2 {
        c.wait(
            Duration::from_secs(60),
            "weir's files gone from the node",
            || {
                let conf = c.node_path(i, "/etc/cni/net.d/00-weir.conflist").exists();
                let bin = c.node_path(i, "/opt/cni/bin/weir").exists();
                Ok((!conf && !bin).then_some(()))
            },
        )?;
        let confs: Vec<String> = std::fs::read_dir(c.node_path(i, "/etc/cni/net.d"))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?;
        assert_eq!(confs, ["10-flannel.conflist"], "node {i}");
        // The agent took the VXLAN monitor (pinned TCX links) off the
        // node's NIC; it was there, since the overlay was counted above.
        let left = c.node_exec(
            i,
            &["sh", "-c", "ls /sys/fs/bpf/weir/vxlan 2>/dev/null; true"],
        )?;
        assert_eq!(
            left.trim(),
            "",
            "node {i}: the VXLAN monitor is still attached"
        );
    }
    let sent = exec_json(
        &c,
        NS,
        "client-local",
        &[
            "weir-traffic",
            "udp-send",
            &format!("{server_ip}:7001"),
            "5",
            "100",
        ],
    )?;
    assert_eq!(
        sent["echoed"], 5,
        "a split pod lost its network after uninstall"
    );
    c.apply(&tools_pod("after", NS, &n2, "later", "exec sleep 100000", false).to_string())?;
    c.kubectl([
        "wait",
        "--for=condition=Ready",
        "pod",
        "-n",
        NS,
        "after",
        "--timeout=120s",
    ])?;
    assert!(
        !is_split(&links(&c, NS, "after")?),
        "a pod created after uninstall was split"
    );
    c.kubectl(["delete", "deployment", "-n", NS, "server", "--wait=true"])?;
    c.kubectl([
        "delete",
        "pod",
        "-n",
        NS,
        "client-local",
        "--wait=true",
        "--timeout=60s",
    ])?;
    c.wait(Duration::from_secs(60), "old split pods gone", || {
        let left = c.kubectl([
            "get",
            "pods",
            "-n",
            NS,
            "-l",
            "app in (server,client)",
            "-o",
            "name",
        ])?;
        Ok(left.lines().all(|l| l.contains("hostnet")).then_some(()))
    })?;
    for i in 1..=2 {
        assert_eq!(
            node_links(&c, i)?
                .lines()
                .filter(|l| l.contains("wx-") || l.contains("wi-"))
                .count(),
            0
        );
    }
    Ok(())
}

/// The kubectl-weir binary of this build (scripts/image.sh built it).
fn plugin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                repo_root().join(t)
            }
        })
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("debug/kubectl-weir")
}

/// A kubeconfig for the cluster that authenticates with `token` only.
fn token_kubeconfig(c: &Cluster, user: &str, token: &str) -> Result<PathBuf> {
    let admin: Value =
        serde_json::from_str(&c.kubectl(["config", "view", "--raw", "-o", "json"])?)?;
    let cluster = admin["clusters"][0]["cluster"].clone();
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{ "name": "weir", "cluster": cluster }],
        "users": [{ "name": user, "user": { "token": token } }],
        "contexts": [{ "name": user, "context": { "cluster": "weir", "user": user, "namespace": NS } }],
        "current-context": user,
    });
    let path = std::env::temp_dir().join(format!("weir-{NAME}-{user}.kubeconfig"));
    std::fs::write(&path, config.to_string())?;
    Ok(path)
}

fn run_plugin(kubeconfig: &std::path::Path, args: &[&str]) -> Result<std::process::Output> {
    Command::new(plugin())
        .env_remove("KUBECONFIG")
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {}", plugin().display()))
}

/// The median of `xs` (sorted in place).
fn median(xs: &mut [Duration]) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// Step 3f (see the caller).
fn visibility(c: &Cluster, server_ip: &str) -> Result<()> {
    use std::io::BufRead as _;
    // viewer may get pods in shop; stranger may not. Both may find and
    // port-forward to the agents, as kubectl weir observe needs.
    c.apply(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: viewer, namespace: {NS}}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: stranger, namespace: {NS}}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: pod-reader, namespace: {NS}}}\n\
         rules: [{{apiGroups: [''], resources: [pods], verbs: [get, list]}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: viewer, namespace: {NS}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}}\n\
         subjects: [{{kind: ServiceAccount, name: viewer, namespace: {NS}}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: weir-observe, namespace: {SYSTEM_NS}}}\n\
         rules: [{{apiGroups: [''], resources: [pods], verbs: [get, list]}}, {{apiGroups: [''], resources: [pods/portforward], verbs: [get, create]}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: weir-observe, namespace: {SYSTEM_NS}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: weir-observe}}\n\
         subjects: [{{kind: ServiceAccount, name: viewer, namespace: {NS}}}, {{kind: ServiceAccount, name: stranger, namespace: {NS}}}]\n"
    ))?;
    let config = |user: &str| -> Result<PathBuf> {
        let token = c.kubectl(["create", "token", user, "-n", NS])?;
        token_kubeconfig(c, user, token.trim())
    };
    let (viewer, stranger) = (config("viewer")?, config("stranger")?);

    // The stranger's token is refused by every agent (403), named.
    let out = run_plugin(&stranger, &["observe", "-A", "--timeout", "30s"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the stranger observed: {stderr}");
    assert!(
        stderr.matches("(403)").count() == 2 && stderr.contains("may not get pods"),
        "both agents refuse the stranger: {stderr}"
    );

    // The viewer streams, through the API server, what the client sends;
    // how long from sending a datagram to its line (exec included).
    let mut child = Command::new(plugin())
        .env_remove("KUBECONFIG")
        .arg(format!("--kubeconfig={}", viewer.display()))
        .args([
            "observe", "-f", "-o", "jsonl", "--pod", "client", "--port", "7003",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("observe's stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Value)>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && tx.send((Instant::now(), v)).is_err()
            {
                break;
            }
        }
    });
    let send = || {
        exec_json(
            c,
            NS,
            "client",
            &[
                "weir-traffic",
                "udp-send",
                &format!("{server_ip}:7003"),
                "1",
                "64",
            ],
        )
    };
    // The first line shows the stream is up (port-forwards opened).
    let mut first = None;
    for _ in 0..30 {
        send()?;
        if let Ok(line) = rx.recv_timeout(Duration::from_secs(3)) {
            first = Some(line.1);
            break;
        }
    }
    let Some(first) = first else {
        let _ = child.kill();
        let said = child
            .wait_with_output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default();
        bail!("no observe line for the client's datagrams; observe said: {said}");
    };
    assert_eq!(first["flow"]["namespace"], NS, "{first}");
    assert_eq!(first["flow"]["pod"], "client", "{first}");
    let (mut with_exec, mut after_exec) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let t0 = Instant::now();
        let port = send()?["sourcePort"].clone();
        let sent = Instant::now();
        // The datagram's egress line: its flow has the datagram's source
        // port (lines of earlier datagrams may still be queued).
        loop {
            let (at, v) = rx
                .recv_timeout(Duration::from_secs(15))
                .context("no observe line for a datagram within 15 s")?;
            if v["flow"]["direction"] == "egress" && v["flow"]["sourcePort"] == port {
                assert_eq!(v["delta"]["packets"], 1, "{v}");
                assert_eq!(v["flow"]["bytes"], UDP4_OVERHEAD + 64, "{v}");
                ensure!(at >= t0, "a line before its datagram: {v}");
                with_exec.push(at - t0);
                after_exec.push(at.saturating_duration_since(sent));
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    eprintln!(
        "observe latency through the API server, agent.interval=1s, 7 datagrams: median {:?} from the exec's start (kubectl exec included), {:?} after it returned; all from start: {with_exec:?}",
        median(&mut with_exec.clone()),
        median(&mut after_exec)
    );

    // top and graph from the PodFlows, by workload.
    let admin = c.kubeconfig();
    let top = run_plugin(&admin, &["top", "-n", NS, "--by", "workload", "--once"])?;
    let text = String::from_utf8_lossy(&top.stdout);
    assert!(
        top.status.success(),
        "top: {}",
        String::from_utf8_lossy(&top.stderr)
    );
    assert!(
        text.contains("Deployment/server") && text.contains("client"),
        "top names the workloads:\n{text}"
    );
    let graph = run_plugin(&admin, &["graph", "-n", NS, "-o", "svg"])?;
    let svg = String::from_utf8_lossy(&graph.stdout);
    assert!(
        graph.status.success(),
        "graph: {}",
        String::from_utf8_lossy(&graph.stderr)
    );
    assert!(
        svg.contains("<svg") && svg.contains("server") && svg.contains("client"),
        "graph draws the workloads:\n{svg}"
    );

    // Alerts, asked for now with no learning window: what began before is
    // learned; a new peer (a pod of another namespace) is told, and a
    // refused TCP connection (the server's kernel answers RST) raises
    // TCPResets.
    c.kubectl([
        "patch",
        "captureprofile",
        "all",
        "-n",
        NS,
        "--type=merge",
        "-p",
        r#"{"spec":{"alerts":{"newPeer":{"learningWindow":"0s"},"tcpResets":{"count":1}}}}"#,
    ])?;
    c.wait(Duration::from_secs(30), "status.learningSince", || {
        let since = c.kubectl([
            "get",
            "captureprofile",
            "all",
            "-n",
            NS,
            "-o",
            "jsonpath={.status.learningSince}",
        ])?;
        Ok((!since.trim().is_empty()).then_some(()))
    })?;
    let stranger_ip = pod_ip(c, OTHER_NS, "bystander-a")?;
    exec_json(
        c,
        NS,
        "client",
        &[
            "weir-traffic",
            "udp-send",
            &format!("{stranger_ip}:7001"),
            "2",
            "64",
        ],
    )?;
    let refused = exec(
        c,
        NS,
        "client",
        &[
            "weir-traffic",
            "tcp-send",
            &format!("{server_ip}:5999"),
            "10",
        ],
    );
    assert!(refused.is_err(), "nothing listens on 5999: {refused:?}");
    let flow = c.wait(
        Duration::from_secs(60),
        "TCPResets=True on the refused conversation",
        || {
            let f = flows_to(c, NS, "TCP", 5999)?.into_iter().next();
            Ok(f.filter(|f| {
                f["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "TCPResets" && c["status"] == "True")
                })
            }))
        },
    )?;
    assert_eq!(
        flow["status"]["tcp"],
        json!({ "connections": 1, "resets": 1 }),
        "{flow}"
    );
    let name = flow["metadata"]["name"]
        .as_str()
        .context("name")?
        .to_owned();
    // The namespace's Events once both TCPResets ones are there, and what
    // those two are about.
    let (events, regarding) = c.wait(Duration::from_secs(30), "the TCPResets Events", || {
        let all: Value = serde_json::from_str(&c.kubectl([
            "get",
            "events.events.k8s.io",
            "-n",
            NS,
            "-o",
            "json",
        ])?)?;
        let regarding: Vec<String> = all["items"]
            .as_array()
            .context("items")?
            .iter()
            .filter(|e| e["reason"] == "TCPResets" && e["related"]["name"] == name.as_str())
            .map(|e| {
                format!(
                    "{}/{}",
                    e["regarding"]["kind"].as_str().unwrap_or(""),
                    e["regarding"]["name"].as_str().unwrap_or("")
                )
            })
            .collect();
        Ok((regarding.len() >= 2).then_some((all, regarding)))
    })?;
    assert!(
        regarding.contains(&"Pod/client".to_owned())
            && regarding.contains(&"CaptureProfile/all".to_owned()),
        "TCPResets told on the pod and the profile: {regarding:?}"
    );
    let told_new: Vec<String> = events["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter(|e| e["reason"] == "NewPeer" && e["regarding"]["kind"] == "Pod")
        .filter_map(|e| e["note"].as_str().map(str::to_owned))
        .collect();
    assert!(
        !told_new.is_empty()
            && told_new
                .iter()
                .all(|n| n.contains(&format!("{OTHER_NS}/Pod/bystander-a"))),
        "only the new peer is told: {told_new:?}"
    );
    let new_flow = flows_to(c, NS, "UDP", 7001)?
        .into_iter()
        .find(|f| f["spec"]["destination"]["pod"] == "bystander-a")
        .context("the PodFlow to the new peer")?;
    let conditions = new_flow["status"]["conditions"].to_string();
    assert!(
        conditions.contains(r#""reason":"UnknownPeer""#),
        "NewPeer=True on {}: {conditions}",
        new_flow["metadata"]["name"]
    );
    let refused_conditions = flow["status"]["conditions"].to_string();
    assert!(
        refused_conditions.contains(r#""reason":"KnownPeer""#),
        "the server was known before: {refused_conditions}"
    );
    Ok(())
}

fn installer_pod(c: &Cluster, node: &str) -> Result<String> {
    c.kubectl([
        "get",
        "pod",
        "-n",
        SYSTEM_NS,
        "-l",
        "app.kubernetes.io/component=agent",
        "--field-selector",
        &format!("spec.nodeName={node}"),
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ])
}
