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

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Node as KubeNode, Pod, ServiceAccount};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use weir_e2e::chain::{ChainSpec, Node};
use weir_e2e::controlplane::ControlPlane;
use weir_e2e::netns::Netns;
use weir_e2e::{host, traffic};
use weir_ebpf::BpfRoot;
use weir_ebpf::abi::PodMode;
use weir_ebpf::maps::NodeMaps;
use weir_operator::crd::{Observer, PodFlow, Protocol};

const AGENT: &str = env!("CARGO_BIN_EXE_weir-operator");
const NS: &str = "shop";
const NODE: &str = "node-a";
const QPS: f64 = 5.0;

fn weir_plugin() -> PathBuf {
    let path = Path::new(AGENT).with_file_name("weir");
    assert!(
        path.exists(),
        "{} is missing: build the plugin first (cargo build -p weir-cni)",
        path.display()
    );
    path
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Agent {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Agent {
    fn start(node: &Node, kubeconfig: &Path) -> Result<Self> {
        let port = free_port()?;
        let log = node.work_dir.join("agent-kube.log");
        let child = std::process::Command::new(AGENT)
            .args([
                "agent",
                "run",
                "--node-name",
                NODE,
                "--interval",
                "300ms",
                "--no-vxlan",
            ])
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--api-qps")
            .arg(QPS.to_string())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--state-dir")
            .arg(&node.state_dir)
            .arg("--bpf-root")
            .arg(&node.bpf_root)
            .env("RUST_LOG", "info,weir_operator=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log)?))
            .spawn()?;
        let agent = Self { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while agent.get("/healthz").is_err() {
            if Instant::now() > deadline {
                bail!("agent did not come up; log:\n{}", agent.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(agent)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Result<String> {
        let mut stream = TcpStream::connect_timeout(
            &format!("127.0.0.1:{}", self.port).parse()?,
            Duration::from_secs(2),
        )?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("no HTTP header end")?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("{path}: {head}");
        }
        Ok(body.to_string())
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

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it gives `Some`, or fails with `what` after `timeout`.
async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?} {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn mode(node: &Node, pod_id: u32) -> Result<PodMode> {
    Ok(NodeMaps::open(&BpfRoot::new(&node.bpf_root))?.pod_mode(pod_id)?)
}

fn pod_id(node: &Node, pod: &Netns) -> Result<u32> {
    Ok(
        weir_cni::state::StateStore::new(&node.state_dir, &node.network)
            .list()?
            .into_iter()
            .find(|r| r.netns == pod.path().display().to_string())
            .context("no node state record for the pod")?
            .pod_id,
    )
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
    let metrics = cp.kubectl_ok(["get", "--raw", "/metrics"])?;
    Ok(metrics
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains(r#"resource="podflows""#)
                && l.contains(r#"verb="APPLY""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

async fn create_objects(client: &kube::Client, pods: &[(&str, IpAddr)]) -> Result<()> {
    let pp = PostParams::default();
    Api::<Namespace>::all(client.clone())
        .create(
            &pp,
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(NS.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
    // No controller manager makes the default service account here.
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("default".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<ServiceAccount>::namespaced(client.clone(), NS)
        .create(&pp, &sa)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let node: KubeNode = serde_json::from_value(json!({
        "metadata": { "name": NODE },
        "status": { "addresses": [{ "type": "InternalIP", "address": "192.168.100.1" }] },
    }))?;
    let nodes = Api::<KubeNode>::all(client.clone());
    nodes.create(&pp, &node).await?;
    nodes
        .patch_status(
            NODE,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": node.status })),
        )
        .await?;
    let api = Api::<Pod>::namespaced(client.clone(), NS);
    for (name, ip) in pods {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": { "app": name } },
            "spec": {
                "nodeName": NODE,
                "automountServiceAccountToken": false,
                "containers": [{ "name": "main", "image": "example.invalid/none" }],
            },
        }))?;
        api.create(&pp, &pod).await?;
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "phase": "Running", "podIP": ip.to_string(), "podIPs": [{ "ip": ip.to_string() }] } })),
        )
        .await?;
    }
    Ok(())
}

fn profile(cp: &ControlPlane, name: &str, protocols: &[&str]) -> Result<()> {
    let body = json!({
        "apiVersion": "weir.dev/v1alpha1",
        "kind": "CaptureProfile",
        "metadata": { "name": name, "namespace": NS },
        "spec": { "podSelector": {}, "protocols": protocols, "flushInterval": "1s", "flowTTL": "1h" },
    });
    cp.kubectl_stdin_ok(
        [
            "apply",
            "--server-side",
            "--field-manager=weir-tests",
            "-f",
            "-",
        ],
        &body.to_string(),
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
    cp.kubectl_ok([
        "apply",
        "--server-side",
        "--field-manager=weir-tests",
        "-f",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../crds"),
    ])?;
    cp.kubectl_ok([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/captureprofiles.weir.dev",
        "crd/podflows.weir.dev",
    ])?;
    let client = cp.client().await?;

    let node = Node::new(
        "wkb",
        &ChainSpec::new("1.0.0", "10.246.0.0/24"),
        &weir_plugin(),
    )?;
    let web = Netns::create("wkb-web")?;
    let db = Netns::create("wkb-db")?;
    let web_ip = Node::pod_ipv4(&node.add(&web, "eth0", NS, "web")?.ok()?.json()?)?;
    let db_ip = Node::pod_ipv4(&node.add(&db, "eth0", NS, "db")?.ok()?.json()?)?;
    let (web_id, db_id) = (pod_id(&node, &web)?, pod_id(&node, &db)?);
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
    tokio::time::sleep(Duration::from_secs(2)).await;
    traffic::udp_echo(&web, &db, db_ip, 9100, 20, 200)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        (mode(&node, web_id)?, mode(&node, db_id)?),
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
            (mode(&node, web_id)? == PodMode::Count && mode(&node, db_id)? == PodMode::Count)
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
