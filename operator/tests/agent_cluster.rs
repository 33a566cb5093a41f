//! Two nodes, one API server: the whole path of a PodFlow across the overlay.
//!
//! Two node network namespaces joined by flannel-style VXLAN
//! (`weir_e2e::flannel`), a pod on each chained through bridge, host-local
//! and weir by cnitool, one real kube-apiserver (etcd + kube-apiserver, with
//! the chart's CRDs and RBAC applied), the controller (the real binary, with
//! the chart's controller RBAC) and one agent per node running inside its
//! node namespace (so it finds `flannel.1` and monitors the underlay), with
//! the chart's agent RBAC, reaching the API server through a TCP relay into
//! the namespace (`weir_e2e::relay`).
//!
//! A CaptureProfile selects both pods; a counted exchange crosses the
//! overlay; the one PodFlow of the conversation then carries both nodes'
//! observer entries with the exact packet counts each way, the VNI and
//! outer addresses, encapsulated on the sender's node = decapsulated on the
//! receiver's, and the controller's summary with no loss. A pod the API
//! server does not know, behind the overlay, is named by its node (the
//! Nodes' addresses). Flows evicted from node A's map show up in the
//! profile's status as node A's map-pressure entry, summed into
//! `lostSamples` with the `MapPressure` condition and Event.
//!
//! Needs root, bpffs, scripts/bootstrap.sh's tools and the control plane
//! tools (scripts/controlplane-tools.sh); fails saying what is missing.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use weir_api::capture_profile::{conditions, pressure_reasons};
use weir_api::{
    CaptureProfile, DestinationEndpoint, Observer, PodFlow, PodFlowSpec, Protocol, SourceEndpoint,
};
use weir_e2e::agent::{AgentProcess, Endpoint};
use weir_e2e::chain::{ChainSpec, Node};
use weir_e2e::controlplane::ControlPlane;
use weir_e2e::flannel::{self, FlannelNode};
use weir_e2e::netns::Netns;
use weir_e2e::wait::eventually;
use weir_e2e::{host, objects, relay, traffic};
use weir_ebpf::BpfRoot;
use weir_ebpf::abi::PodMode;
use weir_ebpf::maps::NodeMaps;

const BIN: &str = env!("CARGO_BIN_EXE_weir-operator");
const NS: &str = "shop";
const SYSTEM_NS: &str = "weir-system";
const CONTROLLER_SA: &str = "system:serviceaccount:weir-system:weir-controller";
const AGENT_SA: &str = "system:serviceaccount:weir-system:weir-agent";
const UNDERLAY: [&str; 2] = ["192.168.100.1", "192.168.100.2"];
const AGENT_PORT: u16 = 9465;

/// Where a node's agent listens, inside the node namespace.
fn endpoint(ns: &Netns) -> Endpoint<'_> {
    Endpoint {
        ns: Some(ns),
        addr: SocketAddr::from(([127, 0, 0, 1], AGENT_PORT)),
    }
}

/// GET from inside a node namespace, where its agent listens.
fn http_get(ns: &Netns, path: &str) -> Result<String> {
    endpoint(ns).get(path, Duration::from_secs(5))
}

/// The chart rendered (with its CRDs) and applied: CRDs, service accounts,
/// RBAC (the Deployment and DaemonSet are stored; nothing runs them).
fn install_chart(cp: &ControlPlane) -> Result<()> {
    cp.install_chart(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/weir"),
        SYSTEM_NS,
        &["captureprofiles.weir.dev", "podflows.weir.dev"],
    )
}

/// A kubeconfig acting as `user` (the chart's RBAC) that reaches the API
/// server at `https://127.0.0.1:<port>` (a relay inside a node namespace).
fn kubeconfig_via(cp: &ControlPlane, user: &str, port: u16, name: &str) -> Result<PathBuf> {
    let base = cp.impersonating_kubeconfig(user, &[])?;
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&base)?)?;
    config["clusters"][0]["cluster"]["server"] = format!("https://127.0.0.1:{port}").into();
    let path = cp.dir().join(format!("kubeconfig-{name}"));
    std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
    Ok(path)
}

async fn create_objects(client: &kube::Client, pods: &[(&str, &str, IpAddr)]) -> Result<()> {
    objects::create_namespace_for_pods(client, NS).await?;
    for (name, ip) in [("node-a", UNDERLAY[0]), ("node-b", UNDERLAY[1])] {
        objects::create_node(client, name, &[("InternalIP", ip), ("Hostname", name)]).await?;
    }
    for (name, node, ip) in pods {
        objects::create_running_pod(client, NS, name, node, *ip).await?;
    }
    Ok(())
}

fn observer<'a>(flow: &'a PodFlow, node: &str) -> Option<&'a Observer> {
    flow.status
        .as_ref()?
        .observers
        .iter()
        .find(|o| o.node == node)
}

async fn udp_flows(api: &Api<PodFlow>, port: u16) -> Result<Vec<PodFlow>> {
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|f| {
            f.spec.protocol == Protocol::Udp && f.spec.destination.port == Some(i32::from(port))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_publish_one_podflow_with_both_observers_and_the_overlay_between_them()
-> Result<()> {
    host::require_privileged_host();
    let started = Instant::now();
    let cp =
        ControlPlane::start().context("the control plane (etcd + kube-apiserver) is needed")?;
    install_chart(&cp)?;
    let client = cp.client().await?;

    // Two nodes joined by flannel's VXLAN; web on A, db and a pod the API
    // server never hears of on B.
    let weir = host::weir_plugin_beside(BIN);
    let a = Node::new("wkca", &ChainSpec::new("1.0.0", "10.247.0.0/24"), &weir)?;
    let b = Node::new("wkcb", &ChainSpec::new("1.0.0", "10.247.1.0/24"), &weir)?;
    flannel::connect(
        &FlannelNode {
            ns: &a.ns,
            underlay_ip: UNDERLAY[0],
            pod_subnet: "10.247.0.0/24",
        },
        &FlannelNode {
            ns: &b.ns,
            underlay_ip: UNDERLAY[1],
            pod_subnet: "10.247.1.0/24",
        },
    )?;
    let web = Netns::create("wkca-web")?;
    let db = Netns::create("wkcb-db")?;
    let ghost = Netns::create("wkcb-ghost")?;
    let web_ip = Node::pod_ipv4(&a.add(&web, "eth0", NS, "web")?.ok()?.json()?)?;
    let db_ip = Node::pod_ipv4(&b.add(&db, "eth0", NS, "db")?.ok()?.json()?)?;
    let ghost_ip = Node::pod_ipv4(&b.add(&ghost, "eth0", NS, "ghost")?.ok()?.json()?)?;
    let (web_id, db_id, ghost_id) = (a.pod_id(&web)?, b.pod_id(&db)?, b.pod_id(&ghost)?);
    create_objects(
        &client,
        &[("web", "node-a", web_ip), ("db", "node-b", db_ip)],
    )
    .await?;

    // The controller on the host, each agent in its node, all with the
    // chart's RBAC.
    let controller = {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "controller",
            "--identity",
            "weir-test",
            "--lease-namespace",
            SYSTEM_NS,
            "--lease-duration=4s",
            "--renew-deadline=3s",
            "--retry-period=1s",
            "--map-pressure-window=10m",
            "--metrics-listen=",
        ])
        .env(
            "KUBECONFIG",
            cp.impersonating_kubeconfig(CONTROLLER_SA, &[])?,
        )
        .env("RUST_LOG", "info,weir_operator=debug")
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE");
        AgentProcess::start(cmd, &cp.dir().join("controller.log"))?
    };
    let server: std::net::SocketAddr = cp
        .server_url()
        .trim_start_matches("https://")
        .parse()
        .context("API server address")?;
    let mut agents = Vec::new();
    for (node, name) in [(&a, "node-a"), (&b, "node-b")] {
        let relay = relay::start(&node.ns, server)?;
        let kubeconfig = kubeconfig_via(&cp, AGENT_SA, relay.port, name)?;
        let mut cmd = node.ns.command(&[
            BIN,
            "agent",
            "run",
            "--node-name",
            name,
            "--interval",
            "300ms",
            "--api-qps",
            "5",
        ]);
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{AGENT_PORT}"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--state-dir")
            .arg(&node.state_dir)
            .arg("--bpf-root")
            .arg(&node.bpf_root)
            .env("RUST_LOG", "info,weir_operator=debug");
        agents.push(AgentProcess::start(
            cmd,
            &node.work_dir.join("agent-cluster.log"),
        )?);
    }
    let logs = |agents: &[AgentProcess]| {
        let mut text: Vec<String> = agents.iter().map(|p| p.log_tail(40)).collect();
        text.push(controller.log_tail(40));
        text.join("\n")
    };
    for (agent, node) in agents.iter_mut().zip([&a, &b]) {
        agent
            .wait_ready(endpoint(&node.ns), Duration::from_secs(15))
            .with_context(|| controller.log_tail(40))?;
    }

    // A profile selecting both pods: both start counting, the unknown pod
    // does not (no profile can select what the API server does not know).
    cp.apply(
        &json!({
            "apiVersion": "weir.dev/v1alpha1",
            "kind": "CaptureProfile",
            "metadata": { "name": "all", "namespace": NS },
            "spec": { "podSelector": {}, "flushInterval": "1s", "flowTTL": "1h" },
        })
        .to_string(),
    )?;
    eventually(Duration::from_secs(20), "web and db counting", || async {
        Ok(
            (a.pod_mode(web_id)? == PodMode::Count && b.pod_mode(db_id)? == PodMode::Count)
                .then_some(()),
        )
    })
    .await
    .with_context(|| logs(&agents))?;
    assert_eq!(b.pod_mode(ghost_id)?, PodMode::PassThrough);

    // 1. A counted exchange across the overlay.
    let (n, size) = (40i64, 300usize);
    let wire = (traffic::UDP4_OVERHEAD + size as u64) as i64;
    traffic::udp_echo(&web, &db, db_ip, 9301, n as usize, size)?;
    let flows: Api<PodFlow> = Api::namespaced(client.clone(), NS);
    let flow = eventually(
        Duration::from_secs(30),
        "the PodFlow with both observers and the controller's summary",
        || async {
            let found = udp_flows(&flows, 9301).await?;
            if found.len() > 1 {
                bail!("more than one PodFlow for one conversation: {found:#?}");
            }
            Ok(found.into_iter().next().filter(|f| {
                let full = |node| {
                    observer(f, node).is_some_and(|o| {
                        o.forward.packets == n
                            && o.reverse.packets == n
                            && o.vxlan
                                .as_ref()
                                .is_some_and(|v| v.encap_packets == n && v.decap_packets == n)
                    })
                };
                full("node-a")
                    && full("node-b")
                    && f.status
                        .as_ref()
                        .and_then(|s| s.vxlan.as_ref())
                        .is_some_and(|v| v.encap_packets == 2 * n)
            }))
        },
    )
    .await
    .with_context(|| logs(&agents))?;
    eprintln!("{flow:#?}");

    // The conversation: web on A opened it to db on B.
    assert_eq!(flow.spec.source.display, "shop/web");
    assert_eq!(flow.spec.destination.display, "shop/db");
    assert_eq!(flow.spec.source.ip, web_ip.to_string());
    assert_eq!(flow.spec.destination.ip, db_ip.to_string());
    assert_eq!(flow.spec.source.node.as_deref(), Some("node-a"));
    assert_eq!(flow.spec.destination.node.as_deref(), Some("node-b"));
    let status = flow.status.clone().unwrap();
    assert_eq!(status.observers.len(), 2, "{status:#?}");
    // Each node counted every packet each way, the same bytes.
    for node in ["node-a", "node-b"] {
        let o = observer(&flow, node).unwrap();
        assert_eq!(
            (o.forward.packets, o.forward.bytes),
            (n, n * wire),
            "{node}: {o:?}"
        );
        assert_eq!(
            (o.reverse.packets, o.reverse.bytes),
            (n, n * wire),
            "{node}: {o:?}"
        );
        let vx = o.vxlan.as_ref().unwrap();
        assert_eq!(vx.vni, Some(i64::from(flannel::VNI)), "{node}: {vx:?}");
        // Outer addresses of the forward direction: A's VTEP to B's.
        assert_eq!(vx.outer_source.as_deref(), Some(UNDERLAY[0]), "{node}");
        assert_eq!(vx.outer_destination.as_deref(), Some(UNDERLAY[1]), "{node}");
        assert_eq!(vx.loss_packets, None, "loss is the summary's: {vx:?}");
        // VXLAN adds 50 bytes to every frame on the underlay.
        assert_eq!(vx.encap_bytes, n * (wire + 50), "{node}: {vx:?}");
        assert_eq!(vx.decap_bytes, n * (wire + 50), "{node}: {vx:?}");
    }
    // Encapsulated on the sender's node = decapsulated on the receiver's.
    let (va, vb) = (
        observer(&flow, "node-a").unwrap().vxlan.clone().unwrap(),
        observer(&flow, "node-b").unwrap().vxlan.clone().unwrap(),
    );
    assert_eq!(
        va.encap_packets, vb.decap_packets,
        "forward: A encap = B decap"
    );
    assert_eq!(
        vb.encap_packets, va.decap_packets,
        "reverse: B encap = A decap"
    );
    assert_eq!((va.encap_packets, vb.encap_packets), (n, n));
    // The controller's summary: the source node's totals, no loss.
    let totals = status.totals.unwrap();
    assert_eq!(
        (totals.forward.packets, totals.reverse.packets),
        (n, n),
        "{status:#?}"
    );
    assert_eq!(status.packets, Some(2 * n));
    assert_eq!(status.bytes, Some(2 * n * wire));
    let vx = status.vxlan.clone().unwrap();
    assert_eq!(vx.vni, Some(1));
    assert_eq!(
        (vx.outer_source.as_deref(), vx.outer_destination.as_deref()),
        (Some(UNDERLAY[0]), Some(UNDERLAY[1]))
    );
    assert_eq!((vx.encap_packets, vx.decap_packets), (2 * n, 2 * n));
    assert_eq!(vx.loss_packets, Some(0), "{vx:?}");

    // 2. A pod behind the overlay that the API server does not know: only
    //    its address, and its node from the outer destination.
    traffic::udp_echo(&web, &ghost, ghost_ip, 9302, 10, 100)?;
    let to_ghost = eventually(
        Duration::from_secs(20),
        "the PodFlow to the unknown pod",
        || async {
            Ok(udp_flows(&flows, 9302)
                .await?
                .into_iter()
                .find(|f| observer(f, "node-a").is_some_and(|o| o.reverse.packets == 10)))
        },
    )
    .await
    .with_context(|| logs(&agents))?;
    assert_eq!(to_ghost.spec.destination.pod, None, "{:?}", to_ghost.spec);
    assert_eq!(to_ghost.spec.destination.display, ghost_ip.to_string());
    assert_eq!(
        to_ghost.spec.destination.node.as_deref(),
        Some("node-b"),
        "named from the VXLAN outer destination by the Nodes' addresses"
    );
    assert!(
        observer(&to_ghost, "node-b").is_none(),
        "B does not count the unknown pod"
    );

    // 2b. The same kind of conversation whose PodFlow someone created before
    //     without the destination's node: the spec is immutable, so A's
    //     apply is refused (422); A publishes its observer entry on the
    //     existing object anyway.
    let older = PodFlowSpec {
        source: SourceEndpoint::pod(NS, "web", &web_ip.to_string(), "node-a"),
        destination: DestinationEndpoint::address(&ghost_ip.to_string(), Some(9303)),
        protocol: Protocol::Udp,
        profile: "all".into(),
    };
    let older_name = older.object_name();
    flows
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "weir.dev/v1alpha1",
                "kind": "PodFlow",
                "metadata": { "name": older_name, "labels": {
                    "weir.dev/profile": "all", "app.kubernetes.io/managed-by": "weir" } },
                "spec": older,
            }))?,
        )
        .await?;
    traffic::udp_echo(&web, &ghost, ghost_ip, 9303, 7, 100)?;
    let kept = eventually(
        Duration::from_secs(20),
        "A's observer entry on the PodFlow created without the node",
        || async {
            let f = flows.get(&older_name).await?;
            Ok(observer(&f, "node-a")
                .is_some_and(|o| o.forward.packets == 7 && o.reverse.packets == 7)
                .then_some(f))
        },
    )
    .await
    .with_context(|| logs(&agents))?;
    assert_eq!(kept.spec, older, "the spec stays as it was created");
    let refused = cp.apiserver_requests(&[r#"resource="podflows""#, r#"code="422""#])?;
    assert!(
        refused >= 1.0,
        "A's spec (with node-b) was refused: {refused}"
    );
    assert_eq!(
        udp_flows(&flows, 9303).await?.len(),
        1,
        "no second object for the conversation"
    );

    // 3. Map pressure: two flows vanish from A's map without the agent
    //    deleting them (what an LRU eviction does). A's agent reports them
    //    in the profile's status as its own entry; the controller sums.
    let mut maps = NodeMaps::open(&BpfRoot::new(&a.bpf_root))?;
    let mut evicted = 0;
    for (key, _) in maps.flows()? {
        if (key.sport == 9302 || key.dport == 9302) && maps.remove_flow(&key)? {
            evicted += 1;
        }
    }
    assert_eq!(
        evicted, 2,
        "both directions of the conversation to the unknown pod"
    );
    let profiles: Api<CaptureProfile> = Api::namespaced(client.clone(), NS);
    let st = eventually(
        Duration::from_secs(20),
        "lostSamples 2 with MapPressure True",
        || async {
            let st = profiles.get("all").await?.status.unwrap_or_default();
            let pressure = st
                .conditions
                .iter()
                .any(|c| c.type_ == conditions::MAP_PRESSURE && c.status == "True");
            Ok((pressure && st.lost_samples == Some(2)).then_some(st))
        },
    )
    .await
    .with_context(|| logs(&agents))?;
    assert_eq!(st.nodes.len(), 1, "only A lost anything: {st:#?}");
    let entry = &st.nodes[0];
    assert_eq!(
        (
            entry.node.as_str(),
            entry.lost_samples,
            entry.lru_evictions,
            entry.failed_updates
        ),
        ("node-a", 2, 2, 0),
        "{entry:?}"
    );
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::MAP_PRESSURE)
        .unwrap();
    assert_eq!(c.reason, pressure_reasons::SAMPLES_LOST);
    assert!(c.message.contains("node-a: 2"), "{}", c.message);
    let events = Api::<Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await?;
    assert!(
        events.items.iter().any(|e| {
            e.reason.as_deref() == Some(conditions::MAP_PRESSURE)
                && e.type_.as_deref() == Some("Warning")
        }),
        "a MapPressure Event: {:#?}",
        events.items
    );
    let agent_metrics = http_get(&a.ns, "/metrics")?;
    assert!(
        agent_metrics.contains("weir_podflow_writer_oldest_pending_seconds"),
        "{agent_metrics}"
    );

    let wide = cp.kubectl_ok(["get", "podflows", "-n", NS, "-o", "wide"])?;
    eprintln!("{wide}");
    assert!(
        wide.lines()
            .any(|l| l.contains("shop/web") && l.contains("shop/db") && l.contains("node-b")),
        "{wide}"
    );
    let profile_row = cp.kubectl_ok(["get", "captureprofiles", "-n", NS, "-o", "wide"])?;
    eprintln!("{profile_row}");
    eprintln!("took {:.1}s", started.elapsed().as_secs_f64());
    drop(agents);
    drop(controller);
    Ok(())
}
