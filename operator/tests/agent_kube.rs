//! The node agent against a real control plane (etcd + kube-apiserver) and
//! the real data path (bridge + host-local + weir chained by cnitool, eBPF
//! counting): CaptureProfiles decide which pods count, the agent publishes
//! PodFlows with the exact counts of a counted exchange, profile filters
//! hold, an API server outage under traffic loses nothing, and the writes
//! stay within the agent's rate bound (checked against the API server's own
//! `apiserver_request_total`).
//!
//! There is no kubelet: the test creates the Node and Pod objects itself
//! (nodeName set, status.podIP patched to the IPs the CNI chain gave the
//! pods). The agent runs in the root network namespace, where the API
//! server listens, with the test node's `--state-dir` and `--bpf-root`
//! (pinned maps and node state are files) and `--no-vxlan`.
//!
//! Needs root, bpffs, scripts/bootstrap.sh's tools and the control plane
//! tools (scripts/controlplane-tools.sh); fails saying what is missing.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use weir_api::{Observer, PodFlow, Protocol};
use weir_e2e::agent::{AgentProcess, Endpoint};
use weir_e2e::chain::{ChainSpec, Node};
use weir_e2e::controlplane::ControlPlane;
use weir_e2e::netns::Netns;
use weir_e2e::wait::eventually;
use weir_e2e::{host, objects, traffic};
use weir_ebpf::abi::PodMode;

const AGENT: &str = env!("CARGO_BIN_EXE_weir-operator");
const NS: &str = "shop";
const NODE: &str = "node-a";
const QPS: f64 = 5.0;

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Agent {
    process: AgentProcess,
    addr: SocketAddr,
}

impl Agent {
    fn start(node: &Node, kubeconfig: &Path) -> Result<Self> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let mut cmd = Command::new(AGENT);
        cmd.args([
            "agent",
            "run",
            "--node-name",
            NODE,
            "--interval",
            "300ms",
            "--no-vxlan",
        ])
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--api-qps")
        .arg(QPS.to_string())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        // This test reads /flows for the counts; who may read them is
        // tests/flows_authz.rs's.
        .args(["--flows-auth", "none"])
        .arg("--state-dir")
        .arg(&node.state_dir)
        .arg("--bpf-root")
        .arg(&node.bpf_root)
        .env("RUST_LOG", "info,weir_operator=debug");
        let endpoint = Endpoint { ns: None, addr };
        let process = AgentProcess::spawn(
            cmd,
            &node.work_dir.join("agent-kube.log"),
            endpoint,
            Duration::from_secs(10),
        )?;
        Ok(Self { process, addr })
    }

    fn log(&self) -> String {
        self.process.log()
    }

    fn get(&self, path: &str) -> Result<String> {
        let endpoint = Endpoint {
            ns: None,
            addr: self.addr,
        };
        endpoint.get(path, Duration::from_secs(5))
    }

    /// Packets web sent to `port`, as the agent's own joined flows say.
    fn counted(&self, port: u64) -> Result<u64> {
        let flows: Vec<Value> = serde_json::from_str(&self.get("/flows")?)?;
        Ok(flows
            .iter()
            .filter(|f| {
                f["pod"] == "web" && f["direction"] == "egress" && f["destinationPort"] == port
            })
            .filter_map(|f| f["packets"].as_u64())
            .sum())
    }
}

async fn pod_flows(api: &Api<PodFlow>) -> Result<Vec<PodFlow>> {
    Ok(api.list(&ListParams::default()).await?.items)
}

fn on_port(flows: &[PodFlow], proto: Protocol, port: u16) -> Vec<PodFlow> {
    flows
        .iter()
        .filter(|f| f.spec.protocol == proto && f.spec.destination.port == Some(i32::from(port)))
        .cloned()
        .collect()
}

fn observer(flow: &PodFlow) -> Option<Observer> {
    flow.status
        .as_ref()?
        .observers
        .iter()
        .find(|o| o.node == NODE)
        .cloned()
}

/// The one PodFlow of `port` once this node's observer shows `packets` each way.
async fn published(
    api: &Api<PodFlow>,
    port: u16,
    packets: i64,
    timeout: Duration,
) -> Result<PodFlow> {
    eventually(
        timeout,
        &format!("PodFlow of UDP port {port} with {packets} packets each way"),
        || async {
            let flows = on_port(&pod_flows(api).await?, Protocol::Udp, port);
            if flows.len() > 1 {
                bail!("more than one PodFlow for one conversation: {flows:#?}");
            }
            Ok(flows.into_iter().next().filter(|f| {
                observer(f)
                    .is_some_and(|o| o.forward.packets == packets && o.reverse.packets == packets)
            }))
        },
    )
    .await
}

/// PodFlow APPLY requests the API server served, by its own metrics.
fn served_podflow_applies(cp: &ControlPlane) -> Result<u64> {
    Ok(cp.apiserver_requests(&[r#"resource="podflows""#, r#"verb="APPLY""#])? as u64)
}

async fn create_objects(client: &kube::Client, pods: &[(&str, IpAddr)]) -> Result<()> {
    objects::create_namespace_for_pods(client, NS).await?;
    objects::create_node(client, NODE, &[("InternalIP", "192.168.100.1")]).await?;
    for (name, ip) in pods {
        objects::create_running_pod(client, NS, name, NODE, *ip).await?;
    }
    Ok(())
}

fn profile(cp: &ControlPlane, name: &str, protocols: &[&str]) -> Result<()> {
    cp.apply(
        &json!({
            "apiVersion": "weir.dev/v1alpha1",
            "kind": "CaptureProfile",
            "metadata": { "name": name, "namespace": NS },
            "spec": { "podSelector": {}, "protocols": protocols, "flushInterval": "1s", "flowTTL": "1h" },
        })
        .to_string(),
    )?;
    Ok(())
}

fn sigstop(pid: u32, stop: bool) {
    // SAFETY: kill(2) on a child process of the control plane harness.
    unsafe {
        libc::kill(
            pid as libc::pid_t,
            if stop { libc::SIGSTOP } else { libc::SIGCONT },
        )
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_select_pods_and_podflows_carry_exact_counts_through_an_outage() -> Result<()> {
    host::require_privileged_host();
    let cp =
        ControlPlane::start().context("the control plane (etcd + kube-apiserver) is needed")?;
    cp.apply_path(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../crds")))?;
    cp.wait_established(&["captureprofiles.weir.dev", "podflows.weir.dev"])?;
    let client = cp.client().await?;

    let node = Node::new(
        "wkb",
        &ChainSpec::new("1.0.0", "10.246.0.0/24"),
        &host::weir_plugin_beside(AGENT),
    )?;
    let web = Netns::create("wkb-web")?;
    let db = Netns::create("wkb-db")?;
    let web_ip = Node::pod_ipv4(&node.add(&web, "eth0", NS, "web")?.ok()?.json()?)?;
    let db_ip = Node::pod_ipv4(&node.add(&db, "eth0", NS, "db")?.ok()?.json()?)?;
    let (web_id, db_id) = (node.pod_id(&web)?, node.pod_id(&db)?);
    create_objects(&client, &[("web", web_ip), ("db", db_ip)]).await?;
    // The pod as the API server has it: the owner reference must carry its uid.
    let web_uid = Api::<Pod>::namespaced(client.clone(), NS)
        .get("web")
        .await?
        .metadata
        .uid
        .context("pod uid")?;

    let started = Instant::now();
    let applies_before = served_podflow_applies(&cp)?;
    let agent = Agent::start(&node, cp.kubeconfig_path())?;
    let flows_api: Api<PodFlow> = Api::namespaced(client.clone(), NS);
    let wire = |size: u64| traffic::UDP4_OVERHEAD + size;

    // 1. No profile: the pods pass through uncounted and nothing is published.
    //    The agent is ready (Agent::start waited on /readyz): its pod and
    //    profile caches are synced, so "nothing" is its answer, not its absence.
    traffic::udp_echo(&web, &db, db_ip, 9100, 20, 200)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        (node.pod_mode(web_id)?, node.pod_mode(db_id)?),
        (PodMode::PassThrough, PodMode::PassThrough)
    );
    assert_eq!(agent.counted(9100)?, 0, "nothing counts without a profile");
    assert!(
        pod_flows(&flows_api).await?.is_empty(),
        "no PodFlows without a profile"
    );

    // 2. A profile selecting both pods: counting starts, and the counted
    //    exchange is published with its exact counts, once (both ends local).
    profile(&cp, "all", &[])?;
    eventually(Duration::from_secs(15), "both pods counting", || async {
        Ok(
            (node.pod_mode(web_id)? == PodMode::Count && node.pod_mode(db_id)? == PodMode::Count)
                .then_some(()),
        )
    })
    .await
    .with_context(|| agent.log())?;
    let (n, size) = (30i64, 300u64);
    traffic::udp_echo(&web, &db, db_ip, 9101, n as usize, size as usize)?;
    let flow = published(&flows_api, 9101, n, Duration::from_secs(20))
        .await
        .with_context(|| agent.log())?;
    let o = observer(&flow).unwrap();
    assert_eq!(o.forward.bytes, n * wire(size) as i64, "{o:?}");
    assert_eq!(o.reverse.bytes, n * wire(size) as i64, "{o:?}");
    assert!(
        o.first_seen.is_some() && o.last_seen >= o.first_seen,
        "{o:?}"
    );
    assert_eq!(o.vxlan, None, "the exchange stayed on the node");
    assert_eq!(flow.spec.source.display, "shop/web", "the client opened it");
    assert_eq!(flow.spec.destination.display, "shop/db");
    assert_eq!(
        (
            flow.spec.source.ip.clone(),
            flow.spec.destination.ip.clone()
        ),
        (web_ip.to_string(), db_ip.to_string())
    );
    assert_eq!(
        (
            flow.spec.source.node.as_deref(),
            flow.spec.destination.node.as_deref()
        ),
        (Some(NODE), Some(NODE))
    );
    assert_eq!(flow.spec.profile, "all");
    let labels = flow.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("weir.dev/profile").map(String::as_str),
        Some("all")
    );
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("weir")
    );
    let owners = flow.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(
        (
            owners[0].kind.as_str(),
            owners[0].name.as_str(),
            owners[0].uid.as_str()
        ),
        ("Pod", "web", web_uid.as_str())
    );
    assert_eq!(
        (owners[0].controller, owners[0].block_owner_deletion),
        (Some(false), Some(false))
    );
    assert!(
        on_port(&pod_flows(&flows_api).await?, Protocol::Udp, 9100).is_empty(),
        "uncounted traffic is never published"
    );
    // The agent owns exactly its own observer entry of the status.
    let managers: Vec<(String, Option<String>)> = flow
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| (m.manager.clone().unwrap_or_default(), m.subresource.clone()))
        .collect();
    assert!(
        managers.contains(&("weir-agent/node-a".into(), Some("status".into()))),
        "{managers:?}"
    );
    assert!(
        managers.contains(&("weir-agent/node-a".into(), None)),
        "{managers:?}"
    );

    // 3. Filters: TCP only — a UDP exchange is counted but not published, a
    //    TCP one is.
    profile(&cp, "all", &["TCP"])?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    traffic::udp_echo(&web, &db, db_ip, 9102, 10, 100)?;
    traffic::tcp_send(&web, &db, db_ip, 9103, 50_000)?;
    eventually(
        Duration::from_secs(20),
        "TCP PodFlow on port 9103",
        || async {
            let flows = on_port(&pod_flows(&flows_api).await?, Protocol::Tcp, 9103);
            Ok(flows
                .first()
                .and_then(observer)
                .filter(|o| o.forward.bytes > 50_000)
                .map(|_| ()))
        },
    )
    .await
    .with_context(|| agent.log())?;
    assert!(
        agent.counted(9102)? > 0,
        "the pod still counts: the filter is on publishing"
    );
    assert!(
        on_port(&pod_flows(&flows_api).await?, Protocol::Udp, 9102).is_empty(),
        "protocols [TCP] excludes UDP"
    );

    // 4. The API server stops (SIGSTOP) while traffic goes on: counting never
    //    waits for it, and once it is back the PodFlow has the exact totals.
    profile(&cp, "all", &[])?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    traffic::udp_echo(&web, &db, db_ip, 9104, 50, 100)?;
    published(&flows_api, 9104, 50, Duration::from_secs(20))
        .await
        .with_context(|| agent.log())?;
    let apiserver = cp.pids()[0];
    sigstop(apiserver, true);
    let outage = async {
        traffic::udp_echo(&web, &db, db_ip, 9104, 150, 100)?;
        // The agent keeps collecting while the API server is gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while agent.counted(9104)? != 200 {
            if Instant::now() > deadline {
                bail!(
                    "the agent did not count on during the outage: {} packets",
                    agent.counted(9104)?
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(())
    }
    .await;
    sigstop(apiserver, false);
    outage?;
    let flow = published(&flows_api, 9104, 200, Duration::from_secs(40))
        .await
        .with_context(|| agent.log())?;
    assert_eq!(
        observer(&flow).unwrap().forward.bytes,
        200 * wire(100) as i64
    );

    // 5. The rate bound, by the API server's own count of PodFlow applies.
    let applies = served_podflow_applies(&cp)? - applies_before;
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!("PodFlow applies served: {applies} in {elapsed:.1}s (bound {QPS}/s + burst)");
    assert!(
        applies >= 6,
        "at least spec + status of three PodFlows: {applies}"
    );
    assert!(
        applies as f64 <= QPS * elapsed + QPS,
        "{applies} applies in {elapsed:.1}s exceed {QPS}/s"
    );
    // Coalescing: with nothing changing, the agent stops writing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let quiet = served_podflow_applies(&cp)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        served_podflow_applies(&cp)?,
        quiet,
        "no writes without changes"
    );

    // 6. What users see.
    let table = cp.kubectl_ok(["get", "podflows", "-n", NS])?;
    eprintln!("{table}");
    let row = table
        .lines()
        .find(|l| l.contains("UDP") && l.contains("9101"))
        .with_context(|| format!("no 9101 row:\n{table}"))?;
    for part in ["shop/web", "shop/db"] {
        assert!(row.contains(part), "{part} not in {row:?}");
    }
    let wide = cp.kubectl_ok(["get", "pf", "-n", NS, "-o", "wide"])?;
    assert!(
        wide.lines()
            .any(|l| l.contains("9104") && l.matches(NODE).count() == 2),
        "{wide}"
    );

    drop(agent);
    Ok(())
}
