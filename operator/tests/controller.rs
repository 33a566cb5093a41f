//! The cluster controller (`weir-operator controller`, the real binary)
//! against a real control plane: etcd, kube-apiserver and
//! kube-controller-manager's garbage collector (scripts/controlplane-tools.sh).
//!
//! Setup, once per test binary: `helm lint` and `helm template` of
//! charts/weir (with its CRDs), everything rendered applied to the API
//! server, and two controller replicas (`weir-test-a`, `weir-test-b`) run
//! with exactly the chart's RBAC: their kubeconfig impersonates
//! `system:serviceaccount:weir-system:weir-controller`. PodFlows are written
//! the way the agents write them, through a client impersonating the agent's
//! service account (so the chart's agent RBAC is exercised too). There is no
//! kubelet: pods are API objects with a nodeName and a patched status.
//!
//! Each replica serves its metrics on a loopback port of its own
//! (`--metrics-listen`), and runs with a 4 s `--map-pressure-window`.
//!
//! Without the tools (etcd, kube-apiserver, kubectl, kube-controller-manager,
//! helm) every test fails, saying how to build them.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use weir_api::capture_profile::{conditions, pressure_reasons, reasons};
use weir_api::labels;
use weir_api::pod_flow::agent_field_manager;
use weir_api::{
    CaptureProfile, DestinationEndpoint, DirectionCounters, NodeLoss, Observer, PodFlow,
    PodFlowSpec, Protocol, SourceEndpoint, TcpConnections, VxlanCounters,
};
use weir_e2e::controlplane::ControlPlane;
use weir_e2e::objects;

const SYSTEM_NS: &str = "weir-system";
const CONTROLLER_SA: &str = "system:serviceaccount:weir-system:weir-controller";
const AGENT_SA: &str = "system:serviceaccount:weir-system:weir-agent";
const LEASE: &str = "weir-controller";
const REPLICAS: [&str; 2] = ["weir-test-a", "weir-test-b"];
const WAIT: Duration = Duration::from_secs(90);

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/weir")
}

// ---------------------------------------------------------------- setup

struct Setup {
    cp: &'static ControlPlane,
    controller_kubeconfig: PathBuf,
    agent_kubeconfig: PathBuf,
    logs: PathBuf,
}

/// The control plane with the chart installed and two controller replicas.
fn setup() -> &'static Setup {
    static SETUP: OnceLock<Result<Setup, String>> = OnceLock::new();
    match SETUP.get_or_init(|| try_setup().map_err(|e| format!("{e:#}"))) {
        Ok(s) => s,
        Err(e) => panic!("controller test setup failed: {e}"),
    }
}

fn try_setup() -> anyhow::Result<Setup> {
    let cp = ControlPlane::shared_with_gc();
    let logs = cp.dir().join("controllers");
    std::fs::create_dir_all(&logs)?;
    let s = Setup {
        cp,
        controller_kubeconfig: cp.impersonating_kubeconfig(CONTROLLER_SA, &[])?,
        agent_kubeconfig: cp.impersonating_kubeconfig(AGENT_SA, &[])?,
        logs,
    };
    cp.install_chart(
        &chart_dir(),
        SYSTEM_NS,
        &["captureprofiles.weir.dev", "podflows.weir.dev"],
    )?;
    for id in REPLICAS {
        start_replica(&s, id)?;
    }
    Ok(s)
}

impl Setup {
    fn helm_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        self.cp.helm_ok(args)
    }

    async fn client_from(&self, kubeconfig: &Path) -> kube::Client {
        let config = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(
            config,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// The admin.
    async fn admin(&self) -> kube::Client {
        self.cp.client().await.unwrap()
    }

    /// A client with the agent's RBAC (as the chart grants it).
    async fn agent(&self) -> kube::Client {
        self.client_from(&self.agent_kubeconfig).await
    }

    fn log_tail(&self, id: &str) -> String {
        let text = std::fs::read_to_string(self.logs.join(format!("{id}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }
}

/// Controller processes, spawned by one long-lived thread: they are bound
/// to it (PR_SET_PDEATHSIG) and so die with the test process.
type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
            loop {
                std::thread::park();
            }
        });
        Mutex::new(tx)
    })
}

fn replicas() -> &'static Mutex<HashMap<String, Child>> {
    static CHILDREN: OnceLock<Mutex<HashMap<String, Child>>> = OnceLock::new();
    extern "C" fn kill_all() {
        if let Some(children) = CHILDREN.get() {
            for child in children
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values_mut()
            {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    CHILDREN.get_or_init(|| {
        // SAFETY: registers a plain function with no arguments.
        unsafe { libc::atexit(kill_all) };
        Mutex::new(HashMap::new())
    })
}

/// The metrics port of each running replica.
fn metrics_ports() -> &'static Mutex<HashMap<String, u16>> {
    static PORTS: OnceLock<Mutex<HashMap<String, u16>>> = OnceLock::new();
    PORTS.get_or_init(Default::default)
}

fn start_replica(s: &Setup, id: &str) -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    metrics_ports().lock().unwrap().insert(id.to_owned(), port);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(s.logs.join(format!("{id}.log")))?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir-operator"));
    cmd.args([
        "controller",
        "--identity",
        id,
        "--lease-namespace",
        SYSTEM_NS,
        "--lease-name",
        LEASE,
        "--lease-duration=4s",
        "--renew-deadline=3s",
        "--retry-period=1s",
        "--orphan-sweep-interval=2s",
        "--map-pressure-window=4s",
    ])
    .arg(format!("--metrics-listen=127.0.0.1:{port}"))
    .env("KUBECONFIG", &s.controller_kubeconfig)
    .env("RUST_LOG", "info,weir_operator=debug")
    .env_remove("POD_NAME")
    .env_remove("POD_NAMESPACE")
    .stdin(Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner().lock().unwrap().send((cmd, tx))?;
    let child = rx.recv()??;
    replicas().lock().unwrap().insert(id.to_owned(), child);
    Ok(())
}

/// SIGKILL: no chance to release the lease.
fn kill_replica(id: &str) {
    let mut children = replicas().lock().unwrap();
    let mut child = children
        .remove(id)
        .unwrap_or_else(|| panic!("no replica {id}"));
    child.kill().unwrap();
    child.wait().unwrap();
}

// ---------------------------------------------------------------- helpers

/// [`weir_e2e::wait::eventually`] for checks that say why they are not
/// there yet; on timeout, panics with both replicas' logs.
async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let found = weir_e2e::wait::eventually(timeout, what, || {
        let check = f();
        async move { check.await.map(Some).map_err(anyhow::Error::msg) }
    })
    .await;
    match found {
        Ok(v) => v,
        Err(e) => {
            let s = setup();
            panic!(
                "{e}\n--- {} log:\n{}\n--- {} log:\n{}",
                REPLICAS[0],
                s.log_tail(REPLICAS[0]),
                REPLICAS[1],
                s.log_tail(REPLICAS[1])
            );
        }
    }
}

/// A namespace with its `default` service account (no controller makes it
/// here, and pods need it).
async fn namespace(client: &kube::Client, name: &str) {
    objects::create_namespace_for_pods(client, name)
        .await
        .expect("create namespace and default SA");
}

/// A pod as the API knows it: bound to `node`, running, with `ip`.
async fn pod(
    client: &kube::Client,
    ns: &str,
    name: &str,
    app: &str,
    node: &str,
    ip: &str,
    host_network: bool,
) -> Pod {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": { "app": app } },
        "spec": {
            "nodeName": node,
            "hostNetwork": host_network,
            "automountServiceAccountToken": false,
            "containers": [{ "name": "main", "image": "registry.invalid/none:1" }],
        },
    }))
    .unwrap();
    api.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let status = json!({ "status": { "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }] } });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch pod status")
}

async fn profile(
    client: &kube::Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> CaptureProfile {
    let api: Api<CaptureProfile> = Api::namespaced(client.clone(), ns);
    let p: CaptureProfile = serde_json::from_value(json!({
        "apiVersion": "weir.dev/v1alpha1",
        "kind": "CaptureProfile",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .unwrap();
    api.create(&PostParams::default(), &p)
        .await
        .expect("create profile")
}

fn spec(profile: &str, src: &Pod, dst: &Pod, port: u16) -> PodFlowSpec {
    let ip = |p: &Pod| p.status.as_ref().unwrap().pod_ip.clone().unwrap();
    let node = |p: &Pod| p.spec.as_ref().unwrap().node_name.clone().unwrap();
    let ns = src.namespace().unwrap();
    PodFlowSpec {
        source: SourceEndpoint::pod(&ns, &src.name_any(), &ip(src), &node(src)),
        destination: DestinationEndpoint::pod(
            &ns,
            &dst.name_any(),
            &ip(dst),
            &node(dst),
            Some(port),
        ),
        protocol: Protocol::Tcp,
        profile: profile.into(),
    }
}

fn observer(
    node: &str,
    fwd: (i64, i64),
    rev: (i64, i64),
    last_seen: Timestamp,
    vxlan: Option<VxlanCounters>,
) -> Observer {
    Observer {
        node: node.into(),
        forward: DirectionCounters {
            packets: fwd.0,
            bytes: fwd.1,
        },
        reverse: DirectionCounters {
            packets: rev.0,
            bytes: rev.1,
        },
        first_seen: Some(Time(last_seen - SignedDuration::from_secs(60))),
        last_seen: Some(Time(last_seen)),
        vxlan,
        tcp: None,
    }
}

/// A node's VXLAN counters of a conversation on VNI 1 (150-byte frames).
fn vx(src: &str, dst: &str, encap: i64, decap: i64) -> VxlanCounters {
    VxlanCounters {
        vni: Some(1),
        outer_source: Some(src.into()),
        outer_destination: Some(dst.into()),
        encap_packets: encap,
        encap_bytes: encap * 150,
        decap_packets: decap,
        decap_bytes: decap * 150,
        loss_packets: None,
    }
}

/// Publishes a PodFlow the way the agent of `observer.node` does: spec,
/// weir's labels and the ownerReference to `owner` applied as
/// `weir-agent/<node>`, then its own observer entry in the status.
async fn agent_apply(
    client: &kube::Client,
    ns: &str,
    spec: &PodFlowSpec,
    owner: &Pod,
    observer: &Observer,
) -> String {
    let name = spec.object_name();
    let api: Api<PodFlow> = Api::namespaced(client.clone(), ns);
    let pp = PatchParams::apply(&agent_field_manager(&observer.node));
    let body = json!({
        "apiVersion": "weir.dev/v1alpha1",
        "kind": "PodFlow",
        "metadata": {
            "name": name,
            "labels": { labels::PROFILE: spec.profile, labels::MANAGED_BY: labels::MANAGED_BY_WEIR },
            "ownerReferences": [{ "apiVersion": "v1", "kind": "Pod", "name": owner.name_any(), "uid": owner.uid().unwrap() }],
        },
        "spec": spec,
    });
    api.patch(&name, &pp, &Patch::Apply(&body))
        .await
        .expect("agent applies the PodFlow");
    api.patch_status(
        &name,
        &pp,
        &Patch::Apply(PodFlow::observer_patch(&name, observer)),
    )
    .await
    .expect("agent applies its observer entry");
    name
}

async fn status_of(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<weir_api::CaptureProfileStatus, String> {
    let p = Api::<CaptureProfile>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| e.to_string())?;
    p.status.ok_or_else(|| "no status yet".to_owned())
}

async fn flow_names(client: &kube::Client, ns: &str) -> Vec<String> {
    let mut names: Vec<String> = Api::<PodFlow>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|f| f.name_any())
        .collect();
    names.sort();
    names
}

async fn lease_holder(client: &kube::Client) -> Option<(String, i32)> {
    let lease = Api::<Lease>::namespaced(client.clone(), SYSTEM_NS)
        .get_opt(LEASE)
        .await
        .ok()??;
    let spec = lease.spec?;
    Some((spec.holder_identity?, spec.lease_transitions.unwrap_or(0)))
}

/// The reporting instances of the Events about `profile`.
async fn event_reporters(client: &kube::Client, ns: &str, profile: &str) -> Vec<(String, String)> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(profile))
        .map(|e| {
            (
                e.reason.unwrap_or_default(),
                e.reporting_instance.unwrap_or_default(),
            )
        })
        .collect()
}

/// GET `/metrics` of replica `id`.
fn scrape(id: &str) -> Result<String, String> {
    let port = *metrics_ports()
        .lock()
        .unwrap()
        .get(id)
        .ok_or_else(|| format!("no replica {id}"))?;
    let get = || -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET /metrics HTTP/1.1\r\nHost: controller\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    };
    let response = get().map_err(|e| format!("{id} /metrics: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{id}: no HTTP header end"))?;
    if !head.starts_with("HTTP/1.1 200") || !head.contains("application/openmetrics-text") {
        return Err(format!("{id}: {head}"));
    }
    Ok(body.to_owned())
}

/// The value of the sample `series` (name with labels, as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Applies `entry` to the profile's status as the agent of `entry.node`
/// does: its own list entry, its own field manager, no force.
async fn agent_reports_loss(client: &kube::Client, ns: &str, profile: &str, entry: &NodeLoss) {
    Api::<CaptureProfile>::namespaced(client.clone(), ns)
        .patch_status(
            profile,
            &PatchParams::apply(&agent_field_manager(&entry.node)),
            &Patch::Apply(CaptureProfile::node_loss_patch(profile, entry)),
        )
        .await
        .expect("the agent applies its map-pressure entry");
}

fn loss(node: &str, failed: i64, evicted: i64) -> NodeLoss {
    NodeLoss {
        node: node.into(),
        lost_samples: failed + evicted,
        failed_updates: failed,
        lru_evictions: evicted,
        node_failed_updates: failed + 100,
        node_lru_evictions: evicted + 100,
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn chart_lints_renders_what_the_nodes_need_and_carries_the_generated_crds() {
    let s = setup();
    let lint = s
        .helm_ok(&["lint", "--strict", &chart_dir().to_string_lossy()])
        .unwrap();
    assert!(lint.contains("0 chart(s) failed"), "{lint}");

    let rendered = s
        .helm_ok(&[
            "template",
            "weir",
            &chart_dir().to_string_lossy(),
            "--namespace",
            SYSTEM_NS,
        ])
        .unwrap();
    let docs: Vec<serde_json::Value> = rendered
        .split("\n---")
        .filter_map(|d| serde_yaml_ng::from_str::<serde_json::Value>(d).ok())
        .filter(|d| d.is_object())
        .collect();
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in:\n{rendered}"))
            .clone()
    };
    let ds = find("DaemonSet", "weir-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["serviceAccountName"], "weir-agent");
    let c = &pod["containers"][0];
    // Named capabilities, not privileged (the cluster e2e test runs with them).
    assert_eq!(c["securityContext"]["privileged"], false);
    assert_eq!(
        c["securityContext"]["capabilities"]["add"],
        serde_json::json!(["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN"])
    );
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert_eq!(c["args"][0], "agent");
    let node_name = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    let mounts_of = |c: &serde_json::Value| -> Vec<String> {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap().to_owned())
            .collect()
    };
    let mounts = mounts_of(c);
    for path in ["/sys/fs/bpf", "/var/lib/weir"] {
        assert!(
            mounts.iter().any(|m| m == path),
            "{path} not mounted: {mounts:?}"
        );
    }
    // The installer: the node's CNI directories, and nothing of bpffs.
    let installer = &pod["containers"][1];
    assert_eq!(installer["name"], "install-cni");
    assert_eq!(installer["args"][0], "install-cni");
    let mounts = mounts_of(installer);
    for path in ["/host/cni/bin", "/host/cni/net.d"] {
        assert!(
            mounts.iter().any(|m| m == path),
            "{path} not mounted: {mounts:?}"
        );
    }
    assert!(!mounts.iter().any(|m| m == "/sys/fs/bpf"), "{mounts:?}");
    let args: Vec<&str> = installer["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    for want in [
        "--conflist-name=00-weir.conflist",
        "--failure-policy=Ignore",
        "--attach=tc",
    ] {
        assert!(args.contains(&want), "{want} not in {args:?}");
    }
    let deploy = find("Deployment", "weir-controller");
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["args"][0], "controller");
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.contains(&"--metrics-listen=0.0.0.0:9466"), "{args:?}");
    assert_eq!(c["ports"][0]["name"], "metrics");
    assert_eq!(c["ports"][0]["containerPort"], 9466);
    let without = s
        .helm_ok(&[
            "template",
            "weir",
            &chart_dir().to_string_lossy(),
            "--set",
            "controller.metrics.enabled=false",
            "--show-only",
            "templates/controller-deployment.yaml",
        ])
        .unwrap();
    assert!(
        without.contains("- --metrics-listen=\n") && !without.contains("containerPort"),
        "{without}"
    );
    assert_eq!(
        deploy["spec"]["template"]["spec"]["serviceAccountName"],
        "weir-controller"
    );
    find("ClusterRole", "weir-controller");
    find("ClusterRole", "weir-agent");
    find("Role", "weir-controller-leader-election");

    // privileged: true only on request, and then with Bidirectional bpffs.
    let privileged = s
        .helm_ok(&[
            "template",
            "weir",
            &chart_dir().to_string_lossy(),
            "--set",
            "agent.privileged=true",
            "--show-only",
            "templates/agent-daemonset.yaml",
        ])
        .unwrap();
    assert!(
        privileged.contains("privileged: true")
            && privileged.contains("mountPropagation: Bidirectional"),
        "{privileged}"
    );

    // The chart's CRDs are the generated ones (crdgen writes and checks both).
    for m in weir_api::manifests() {
        let path = chart_dir().join("crds").join(&m.file_name);
        let have =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            have == m.yaml,
            "{} is stale: run `cargo run -p weir-api --bin crdgen`",
            path.display()
        );
    }
}

#[test]
fn rbac_grants_the_controller_what_it_uses_and_nothing_more() {
    let s = setup();
    // `resource`, `resource/name` or `resource:subresource`.
    let can = |verb: &str, resource: &str, ns: Option<&str>, user: &str| -> String {
        let (resource, sub) = resource
            .split_once(':')
            .map_or((resource, None), |(r, s)| (r, Some(s)));
        let mut args = vec![
            "auth".to_owned(),
            "can-i".into(),
            verb.into(),
            resource.into(),
            format!("--as={user}"),
        ];
        args.extend(sub.map(|s| format!("--subresource={s}")));
        match ns {
            Some(ns) => args.push(format!("--namespace={ns}")),
            None => args.push("--all-namespaces".into()),
        }
        let out = s.cp.kubectl(&args).unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let controller = |verb, resource, ns| can(verb, resource, ns, CONTROLLER_SA);
    for (verb, resource) in [
        ("list", "captureprofiles.weir.dev"),
        ("watch", "captureprofiles.weir.dev"),
        ("patch", "captureprofiles.weir.dev:status"),
        ("list", "podflows.weir.dev"),
        ("delete", "podflows.weir.dev"),
        ("patch", "podflows.weir.dev:status"),
        ("list", "pods"),
        ("create", "events.events.k8s.io"),
    ] {
        assert_eq!(
            controller(verb, resource, None),
            "yes",
            "controller: {verb} {resource}"
        );
    }
    assert_eq!(
        controller(
            "update",
            "leases.coordination.k8s.io/weir-controller",
            Some(SYSTEM_NS)
        ),
        "yes"
    );
    for (verb, resource, ns) in [
        ("create", "podflows.weir.dev", None),
        ("delete", "captureprofiles.weir.dev", None),
        ("update", "captureprofiles.weir.dev", None),
        ("delete", "pods", None),
        ("patch", "pods:status", None),
        ("update", "captureprofiles.weir.dev:status", None),
        ("list", "secrets", None),
        (
            "update",
            "leases.coordination.k8s.io/weir-controller",
            Some("default"),
        ),
        (
            "update",
            "leases.coordination.k8s.io/someone-elses",
            Some(SYSTEM_NS),
        ),
    ] {
        assert_eq!(
            controller(verb, resource, ns),
            "no",
            "controller must not: {verb} {resource} in {ns:?}"
        );
    }
    let agent = |verb, resource| can(verb, resource, None, AGENT_SA);
    assert_eq!(agent("patch", "podflows.weir.dev:status"), "yes");
    assert_eq!(agent("create", "podflows.weir.dev"), "yes");
    assert_eq!(agent("get", "nodes"), "yes");
    assert_eq!(
        agent("patch", "captureprofiles.weir.dev:status"),
        "yes",
        "its map-pressure entry"
    );
    assert_eq!(
        agent("delete", "podflows.weir.dev"),
        "no",
        "the agent never deletes"
    );
    for (verb, resource) in [
        ("patch", "captureprofiles.weir.dev"),
        ("update", "captureprofiles.weir.dev"),
        ("update", "captureprofiles.weir.dev:status"),
        ("delete", "captureprofiles.weir.dev"),
        ("create", "captureprofiles.weir.dev"),
    ] {
        assert_eq!(
            agent(verb, resource),
            "no",
            "the agent must not: {verb} {resource}"
        );
    }
}

#[tokio::test]
async fn profile_becomes_ready_counts_matched_pods_and_reports_invalid_selectors() {
    let s = setup();
    let admin = s.admin().await;
    let ns = "ctl-ready";
    namespace(&admin, ns).await;
    pod(&admin, ns, "web-1", "web", "node-a", "10.244.1.10", false).await;
    pod(&admin, ns, "web-2", "web", "node-b", "10.244.2.10", false).await;
    pod(&admin, ns, "web-host", "web", "node-a", "192.168.0.1", true).await;
    pod(&admin, ns, "db-0", "db", "node-b", "10.244.2.11", false).await;
    let created = profile(
        &admin,
        ns,
        "web",
        json!({ "podSelector": { "matchLabels": { "app": "web" } } }),
    )
    .await;

    let st = poll("Ready=True on profile web", WAIT, || async {
        let st = status_of(&admin, ns, "web").await?;
        match st.conditions.iter().find(|c| c.type_ == conditions::READY) {
            Some(c) if c.status == "True" && st.matched_pods == Some(2) => Ok(st),
            other => Err(format!("{other:?}, matched {:?}", st.matched_pods)),
        }
    })
    .await;
    let ready = st
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::READY)
        .unwrap();
    assert_eq!(ready.reason, reasons::ACTIVE);
    assert_eq!(ready.observed_generation, created.metadata.generation);
    assert_eq!(st.observed_generation, created.metadata.generation);
    assert_eq!(
        (st.active_flows, st.flows_dropped_by_cap, st.lost_samples),
        (Some(0), Some(0), Some(0))
    );
    let p = Api::<CaptureProfile>::namespaced(admin.clone(), ns)
        .get("web")
        .await
        .unwrap();
    assert!(
        p.finalizers()
            .iter()
            .any(|f| f == weir_operator::controller::FINALIZER),
        "{:?}",
        p.finalizers()
    );
    let status_managers: Vec<String> = p
        .managed_fields()
        .iter()
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(
        status_managers,
        ["weir-operator"],
        "status is applied by the controller's field manager"
    );

    // A selector the API server cannot judge but the controller can.
    profile(
        &admin,
        ns,
        "odd",
        json!({ "podSelector": { "matchExpressions": [{ "key": "app", "operator": "Matches", "values": ["web"] }] } }),
    )
    .await;
    let st = poll("Ready=False on profile odd", WAIT, || async {
        let st = status_of(&admin, ns, "odd").await?;
        match st.conditions.iter().find(|c| c.type_ == conditions::READY) {
            Some(c) if c.status == "False" => Ok(st),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let ready = st
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::READY)
        .unwrap();
    assert_eq!(ready.reason, reasons::INVALID_SELECTOR);
    assert!(ready.message.contains("Matches"), "{}", ready.message);
    assert_eq!(st.matched_pods, Some(0));
    let events = poll("a Warning event for odd", WAIT, || async {
        let ev = event_reporters(&admin, ns, "odd").await;
        if ev.iter().any(|(r, _)| r == reasons::INVALID_SELECTOR) {
            Ok(ev)
        } else {
            Err(format!("{ev:?}"))
        }
    })
    .await;
    assert!(
        events
            .iter()
            .all(|(_, who)| REPLICAS.contains(&who.as_str())),
        "{events:?}"
    );
    let ev = poll("a Ready event for web", WAIT, || async {
        let ev = event_reporters(&admin, ns, "web").await;
        if ev.iter().any(|(r, _)| r == "Ready") {
            Ok(ev)
        } else {
            Err(format!("{ev:?}"))
        }
    })
    .await;
    assert!(!ev.is_empty());

    // `kubectl get cprof` prints readiness and counts.
    let out = s.cp.kubectl_ok(["get", "cprof", "-n", ns]).unwrap();
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "MATCHED", "FLOWS", "AGE"],
        "{out}"
    );
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(&row[..4], ["web", "True", "2", "0"], "{out}");
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("odd "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(&row[..2], ["odd", "False"], "{out}");
}

#[tokio::test]
async fn summary_comes_from_both_observers_with_the_vxlan_loss_between_them() {
    let s = setup();
    let admin = s.admin().await;
    let agent = s.agent().await;
    let ns = "ctl-summary";
    namespace(&admin, ns).await;
    let web = pod(&admin, ns, "web-1", "web", "node-a", "10.244.1.5", false).await;
    let db = pod(&admin, ns, "db-0", "db", "node-b", "10.244.2.7", false).await;
    profile(
        &admin,
        ns,
        "all",
        json!({ "podSelector": {}, "flushInterval": "1s", "flowTTL": "10m" }),
    )
    .await;

    let now = Timestamp::now();
    let spec = spec("all", &web, &db, 5432);
    // node-a (the source's) sent 100 forward packets into the overlay,
    // node-b decapsulated 97 of them; node-b sent 80 back, node-a got 79.
    let a = observer(
        "node-a",
        (100, 15_000),
        (79, 11_850),
        now,
        Some(vx("192.168.0.1", "192.168.0.2", 100, 79)),
    );
    let b = observer(
        "node-b",
        (97, 14_550),
        (80, 12_000),
        now - SignedDuration::from_secs(1),
        Some(vx("192.168.0.2", "192.168.0.1", 80, 97)),
    );
    let name = agent_apply(&agent, ns, &spec, &web, &a).await;
    // Both agents own the flow by its source pod.
    agent_apply(&agent, ns, &spec, &web, &b).await;

    let api: Api<PodFlow> = Api::namespaced(admin.clone(), ns);
    let flow = poll("the summary from both observers", WAIT, || async {
        let f = api.get(&name).await.map_err(|e| e.to_string())?;
        let st = f.status.clone().ok_or("no status")?;
        match &st.vxlan {
            Some(v)
                if st.observers.len() == 2 && v.loss_packets.is_some() && st.packets.is_some() =>
            {
                Ok(f)
            }
            _ => Err(format!("{st:?}")),
        }
    })
    .await;
    let st = flow.status.clone().unwrap();
    assert_eq!(
        st.totals.unwrap().forward,
        a.forward,
        "totals are the source node's view"
    );
    assert_eq!((st.packets, st.bytes), (Some(179), Some(26_850)));
    let v = st.vxlan.unwrap();
    assert_eq!(
        v.loss_packets,
        Some(3 + 1),
        "encap on A minus decap on B (100-97), and back (80-79)"
    );
    assert_eq!((v.encap_packets, v.decap_packets), (180, 176));
    assert_eq!(v.outer_source.as_deref(), Some("192.168.0.1"));
    // Times are stored to the second.
    assert_eq!(
        st.last_seen.map(|t| t.0.as_second()),
        a.last_seen.map(|t| t.0.as_second())
    );
    let managers: BTreeMap<String, Vec<String>> = flow
        .managed_fields()
        .iter()
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .map(|m| {
            let fields = m
                .fields_v1
                .as_ref()
                .map(|f| f.0.clone())
                .unwrap_or_default();
            let keys = fields["f:status"]
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            (m.manager.clone().unwrap_or_default(), keys)
        })
        .collect();
    assert!(
        managers["weir-operator"].contains(&"f:vxlan".to_owned()),
        "{managers:?}"
    );
    assert!(
        !managers["weir-operator"].contains(&"f:observers".to_owned()),
        "the summary's writer owns no observer: {managers:?}"
    );
    assert_eq!(
        managers["weir-agent/node-a"],
        ["f:observers"],
        "{managers:?}"
    );

    // The profile counts it.
    poll("activeFlows 1", WAIT, || async {
        let st = status_of(&admin, ns, "all").await?;
        if st.active_flows == Some(1) {
            Ok(())
        } else {
            Err(format!("{st:?}"))
        }
    })
    .await;

    // `kubectl get podflows` prints the conversation and the summary.
    let out = s.cp.kubectl_ok(["get", "podflows", "-n", ns]).unwrap();
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "SOURCE",
            "DESTINATION",
            "PROTO",
            "PORT",
            "PACKETS",
            "BYTES",
            "VNI",
            "LAST-SEEN"
        ],
        "{out}"
    );
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..8],
        [
            name.as_str(),
            "ctl-summary/web-1",
            "ctl-summary/db-0",
            "TCP",
            "5432",
            "179",
            "26850",
            "1"
        ],
        "{out}"
    );
    let wide =
        s.cp.kubectl_ok(["get", "pf", "-n", ns, "-o", "wide"])
            .unwrap();
    assert!(wide.lines().next().unwrap().contains("OUTER-SRC"), "{wide}");
    assert!(
        wide.contains("192.168.0.1") && wide.contains("node-b"),
        "{wide}"
    );
}

#[tokio::test]
async fn flows_idle_longer_than_the_ttl_are_deleted() {
    let s = setup();
    let admin = s.admin().await;
    let agent = s.agent().await;
    let ns = "ctl-ttl";
    namespace(&admin, ns).await;
    let web = pod(&admin, ns, "web-1", "web", "node-a", "10.244.1.5", false).await;
    let db = pod(&admin, ns, "db-0", "db", "node-a", "10.244.1.6", false).await;
    profile(
        &admin,
        ns,
        "p",
        json!({ "podSelector": {}, "flushInterval": "1s", "flowTTL": "1m" }),
    )
    .await;
    let now = Timestamp::now();
    let old = agent_apply(
        &agent,
        ns,
        &spec("p", &web, &db, 80),
        &web,
        &observer(
            "node-a",
            (1, 60),
            (1, 60),
            now - SignedDuration::from_mins(5),
            None,
        ),
    )
    .await;
    let fresh = agent_apply(
        &agent,
        ns,
        &spec("p", &web, &db, 443),
        &web,
        &observer("node-a", (1, 60), (1, 60), now, None),
    )
    .await;
    poll("the idle flow deleted", WAIT, || async {
        let names = flow_names(&admin, ns).await;
        if names == [fresh.clone()] {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;
    assert_ne!(old, fresh);
    let st = poll("activeFlows 1", WAIT, || async {
        let st = status_of(&admin, ns, "p").await?;
        if st.active_flows == Some(1) {
            Ok(st)
        } else {
            Err(format!("{st:?}"))
        }
    })
    .await;
    assert_eq!(st.flows_dropped_by_cap, Some(0), "expiry is not the cap");
}

#[tokio::test]
async fn the_cap_evicts_the_least_recently_seen_and_counts_them() {
    let s = setup();
    let admin = s.admin().await;
    let agent = s.agent().await;
    let ns = "ctl-cap";
    namespace(&admin, ns).await;
    let web = pod(&admin, ns, "web-1", "web", "node-a", "10.244.1.5", false).await;
    let db = pod(&admin, ns, "db-0", "db", "node-b", "10.244.2.6", false).await;
    profile(
        &admin,
        ns,
        "capped",
        json!({ "podSelector": {}, "flushInterval": "1s", "maxPodFlows": 2 }),
    )
    .await;
    let now = Timestamp::now();
    let mut names = Vec::new();
    // Fixed lastSeen times: whichever reconcile sees the third, the least
    // recently seen (port 1002) is the one to go.
    for (port, age) in [(1001u16, 10i64), (1002, 30), (1003, 20)] {
        let o = observer(
            "node-a",
            (1, 60),
            (0, 0),
            now - SignedDuration::from_secs(age),
            None,
        );
        names.push(agent_apply(&agent, ns, &spec("capped", &web, &db, port), &web, &o).await);
    }
    let st = poll("one flow evicted and counted", WAIT, || async {
        let st = status_of(&admin, ns, "capped").await?;
        if st.flows_dropped_by_cap == Some(1) && st.active_flows == Some(2) {
            Ok(st)
        } else {
            Err(format!("{st:?}"))
        }
    })
    .await;
    assert_eq!(st.matched_pods, Some(2));
    let mut kept = vec![names[0].clone(), names[2].clone()];
    kept.sort();
    assert_eq!(
        flow_names(&admin, ns).await,
        kept,
        "the least recently seen (port 1002) went"
    );
    // A fourth conversation, the most recent: the oldest left goes, and the
    // count is cumulative.
    let o = observer("node-a", (1, 60), (0, 0), Timestamp::now(), None);
    let newest = agent_apply(&agent, ns, &spec("capped", &web, &db, 1004), &web, &o).await;
    poll("a second eviction counted", WAIT, || async {
        let st = status_of(&admin, ns, "capped").await?;
        if st.flows_dropped_by_cap == Some(2) && st.active_flows == Some(2) {
            Ok(())
        } else {
            Err(format!("{st:?}"))
        }
    })
    .await;
    let mut kept = vec![names[0].clone(), newest];
    kept.sort();
    assert_eq!(flow_names(&admin, ns).await, kept);
}

#[tokio::test]
async fn flows_of_a_deleted_pod_are_garbage_collected_by_kubernetes() {
    let s = setup();
    let admin = s.admin().await;
    let agent = s.agent().await;
    let ns = "ctl-gc";
    namespace(&admin, ns).await;
    let web = pod(&admin, ns, "web-1", "web", "node-a", "10.244.1.5", false).await;
    let other = pod(&admin, ns, "web-2", "web", "node-a", "10.244.1.7", false).await;
    let db = pod(&admin, ns, "db-0", "db", "node-b", "10.244.2.6", false).await;
    profile(
        &admin,
        ns,
        "p",
        json!({ "podSelector": {}, "flushInterval": "1s" }),
    )
    .await;
    let now = Timestamp::now();
    let gone = agent_apply(
        &agent,
        ns,
        &spec("p", &web, &db, 80),
        &web,
        &observer("node-a", (1, 60), (0, 0), now, None),
    )
    .await;
    let stays = agent_apply(
        &agent,
        ns,
        &spec("p", &other, &db, 80),
        &other,
        &observer("node-a", (1, 60), (0, 0), now, None),
    )
    .await;
    // No kubelet: a bound pod goes only when forced.
    Api::<Pod>::namespaced(admin.clone(), ns)
        .delete(
            "web-1",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // The garbage collector finds a new kind within its 30 s discovery resync.
    poll(
        "the garbage collector to delete the dead pod's flow",
        Duration::from_secs(150),
        || async {
            let names = flow_names(&admin, ns).await;
            if names == [stays.clone()] {
                Ok(())
            } else {
                Err(format!("{names:?} (expected only {stays}, not {gone})"))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_deleted_profile_takes_its_flows_and_only_those() {
    let s = setup();
    let admin = s.admin().await;
    let agent = s.agent().await;
    let ns = "ctl-delete";
    namespace(&admin, ns).await;
    let web = pod(&admin, ns, "web-1", "web", "node-a", "10.244.1.5", false).await;
    let db = pod(&admin, ns, "db-0", "db", "node-b", "10.244.2.6", false).await;
    profile(
        &admin,
        ns,
        "doomed",
        json!({ "podSelector": {}, "flushInterval": "1s" }),
    )
    .await;
    profile(
        &admin,
        ns,
        "kept",
        json!({ "podSelector": {}, "flushInterval": "1s" }),
    )
    .await;
    poll("the finalizer on doomed", WAIT, || async {
        let p = Api::<CaptureProfile>::namespaced(admin.clone(), ns)
            .get("doomed")
            .await
            .map_err(|e| e.to_string())?;
        if p.finalizers().is_empty() {
            Err("no finalizer yet".into())
        } else {
            Ok(())
        }
    })
    .await;
    let now = Timestamp::now();
    let o = observer("node-a", (1, 60), (0, 0), now, None);
    let d1 = agent_apply(&agent, ns, &spec("doomed", &web, &db, 80), &web, &o).await;
    let d2 = agent_apply(&agent, ns, &spec("doomed", &web, &db, 81), &web, &o).await;
    let k1 = agent_apply(&agent, ns, &spec("kept", &web, &db, 80), &web, &o).await;
    // Not weir's: same profile in its spec, but without weir's labels.
    let foreign_spec = spec("doomed", &web, &db, 9999);
    let foreign: PodFlow = serde_json::from_value(json!({
        "apiVersion": "weir.dev/v1alpha1",
        "kind": "PodFlow",
        "metadata": { "name": "not-weirs", "labels": { labels::PROFILE: "doomed" } },
        "spec": foreign_spec,
    }))
    .unwrap();
    let flows: Api<PodFlow> = Api::namespaced(admin.clone(), ns);
    flows
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    // weir's labels, but a profile that does not exist: the sweep takes it.
    let ghost = agent_apply(&agent, ns, &spec("ghost", &web, &db, 80), &web, &o).await;

    Api::<CaptureProfile>::namespaced(admin.clone(), ns)
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    poll("doomed and its flows gone", WAIT, || async {
        let names = flow_names(&admin, ns).await;
        let profile_gone = Api::<CaptureProfile>::namespaced(admin.clone(), ns)
            .get_opt("doomed")
            .await
            .map_err(|e| e.to_string())?
            .is_none();
        let mut want = vec![k1.clone(), "not-weirs".to_owned()];
        want.sort();
        if profile_gone && names == want {
            Ok(())
        } else {
            Err(format!("profile gone: {profile_gone}, flows {names:?}"))
        }
    })
    .await;
    for gone in [d1, d2, ghost] {
        assert!(flows.get_opt(&gone).await.unwrap().is_none(), "{gone}");
    }
    let ev = event_reporters(&admin, ns, "doomed").await;
    assert!(ev.iter().any(|(r, _)| r == "Deleted"), "{ev:?}");
}

#[tokio::test]
async fn one_replica_leads_and_a_killed_leader_hands_over() {
    let s = setup();
    let admin = s.admin().await;
    let ns = "ctl-leader";
    namespace(&admin, ns).await;

    let (leader, transitions) = poll("a lease holder", WAIT, || async {
        lease_holder(&admin)
            .await
            .filter(|(h, _)| REPLICAS.contains(&h.as_str()))
            .ok_or_else(|| "no holder".to_owned())
    })
    .await;
    let follower = REPLICAS.iter().find(|r| **r != leader).unwrap().to_string();
    // Only the leader reconciles: every Event about a new profile is its.
    profile(&admin, ns, "first", json!({ "podSelector": {} })).await;
    poll("first Ready", WAIT, || async {
        let st = status_of(&admin, ns, "first").await?;
        if st.conditions.iter().any(|c| c.status == "True") {
            Ok(())
        } else {
            Err(format!("{st:?}"))
        }
    })
    .await;
    let ev = event_reporters(&admin, ns, "first").await;
    assert!(
        !ev.is_empty() && ev.iter().all(|(_, who)| *who == leader),
        "only {leader} reports: {ev:?}"
    );
    assert_eq!(
        lease_holder(&admin).await.unwrap().0,
        leader,
        "the lease stays with {leader}"
    );

    kill_replica(&leader);
    let (holder, after) = poll("the follower to take the lease over", WAIT, || async {
        match lease_holder(&admin).await {
            Some((h, t)) if h == follower => Ok((h, t)),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(holder, follower);
    assert!(
        after > transitions,
        "leaseTransitions {transitions} -> {after}"
    );
    profile(&admin, ns, "second", json!({ "podSelector": {} })).await;
    poll("second Ready, reported by the new leader", WAIT, || async {
        let ev = event_reporters(&admin, ns, "second").await;
        if ev.iter().any(|(r, who)| r == "Ready" && *who == follower) {
            Ok(())
        } else {
            Err(format!("{ev:?}"))
        }
    })
    .await;

    // The killed replica comes back as a follower: the lease stays.
    start_replica(s, &leader).unwrap();
    // Positive control: the restarted replica is up and takes part in the
    // election (it answers, as a follower), so "the lease stays" below is
    // its decision, not its absence.
    poll(
        "the restarted replica answers as a follower",
        WAIT,
        || async {
            let text = scrape(&leader)?;
            match sample(&text, "weir_controller_leader") {
                Some(0.0) => Ok(()),
                other => Err(format!("weir_controller_leader {other:?}")),
            }
        },
    )
    .await;
    // Longer than the lease (4s): a follower that wanted it could take it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(lease_holder(&admin).await.unwrap().0, follower);
    assert_eq!(
        sample(&scrape(&leader).unwrap(), "weir_controller_leader"),
        Some(0.0),
        "the restarted replica still runs, as a follower"
    );
}

#[tokio::test]
async fn nodes_report_map_pressure_without_conflict_and_the_controller_sums_it() {
    let s = setup();
    let admin = s.admin().await;
    let agent = s.agent().await;
    let ns = "ctl-pressure";
    namespace(&admin, ns).await;
    pod(&admin, ns, "web-1", "web", "node-a", "10.244.1.5", false).await;
    profile(
        &admin,
        ns,
        "p",
        json!({ "podSelector": {}, "flushInterval": "1s" }),
    )
    .await;
    let condition = |st: &weir_api::CaptureProfileStatus| {
        st.conditions
            .iter()
            .find(|c| c.type_ == conditions::MAP_PRESSURE)
            .cloned()
    };
    let st = poll("Ready, nothing lost", WAIT, || async {
        let st = status_of(&admin, ns, "p").await?;
        match condition(&st) {
            Some(c) if c.status == "False" && st.lost_samples == Some(0) => Ok(st),
            _ => Err(format!("{st:?}")),
        }
    })
    .await;
    assert_eq!(
        condition(&st).unwrap().reason,
        pressure_reasons::NO_LOSS,
        "{st:?}"
    );

    // Two nodes, each applying only its own entry as its own field manager.
    agent_reports_loss(&agent, ns, "p", &loss("node-a", 1, 2)).await;
    agent_reports_loss(&agent, ns, "p", &loss("node-b", 0, 4)).await;
    let st = poll("lostSamples = 7, MapPressure True", WAIT, || async {
        let st = status_of(&admin, ns, "p").await?;
        match condition(&st) {
            Some(c) if c.status == "True" && st.lost_samples == Some(7) => Ok(st),
            _ => Err(format!("{st:?}")),
        }
    })
    .await;
    let c = condition(&st).unwrap();
    assert_eq!(c.reason, pressure_reasons::SAMPLES_LOST);
    assert!(
        c.message.contains("node-b: 4") && c.message.contains("node-a: 3"),
        "{}",
        c.message
    );
    let ready = st
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::READY)
        .expect("Ready stays");
    assert_eq!(ready.status, "True");
    poll("a MapPressure Event", WAIT, || async {
        let ev = event_reporters(&admin, ns, "p").await;
        if ev.iter().any(|(r, _)| r == conditions::MAP_PRESSURE) {
            Ok(())
        } else {
            Err(format!("{ev:?}"))
        }
    })
    .await;

    // One node's entry grows: the other's stays as it was, the sum follows.
    agent_reports_loss(&agent, ns, "p", &loss("node-a", 1, 12)).await;
    let st = poll("lostSamples = 17", WAIT, || async {
        let st = status_of(&admin, ns, "p").await?;
        if st.lost_samples == Some(17) {
            Ok(st)
        } else {
            Err(format!("{st:?}"))
        }
    })
    .await;
    let mut nodes = st.nodes.clone();
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    assert_eq!(nodes, [loss("node-a", 1, 12), loss("node-b", 0, 4)]);
    // Each entry has exactly one owner: its node's agent; the controller's
    // status apply holds the summary and never the entries.
    let p = Api::<CaptureProfile>::namespaced(admin.clone(), ns)
        .get("p")
        .await
        .unwrap();
    let managed = p.metadata.managed_fields.clone().unwrap_or_default();
    let owns = |manager: &str, key: &str| {
        managed.iter().any(|m| {
            m.manager.as_deref() == Some(manager)
                && m.subresource.as_deref() == Some("status")
                && m.fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.to_string().contains(key))
        })
    };
    assert!(
        owns("weir-agent/node-a", r#"k:{\"node\":\"node-a\"}"#),
        "{managed:#?}"
    );
    assert!(
        owns("weir-agent/node-b", r#"k:{\"node\":\"node-b\"}"#),
        "{managed:#?}"
    );
    assert!(!owns("weir-agent/node-a", r#"k:{\"node\":\"node-b\"}"#));
    assert!(!owns("weir-operator", "f:nodes"), "{managed:#?}");
    assert!(owns("weir-operator", "f:lostSamples"), "{managed:#?}");
    // An agent cannot take another node's entry without force: it conflicts.
    let stolen = Api::<CaptureProfile>::namespaced(agent.clone(), ns)
        .patch_status(
            "p",
            &PatchParams::apply(&agent_field_manager("node-a")),
            &Patch::Apply(CaptureProfile::node_loss_patch("p", &loss("node-b", 0, 0))),
        )
        .await;
    assert!(
        matches!(&stolen, Err(kube::Error::Api(e)) if e.code == 409),
        "{stolen:?}"
    );

    // No growth for the window (4 s): MapPressure goes False, the figure stays.
    let st = poll("MapPressure False after the window", WAIT, || async {
        let st = status_of(&admin, ns, "p").await?;
        match condition(&st) {
            Some(c) if c.status == "False" => Ok(st),
            _ => Err(format!("{st:?}")),
        }
    })
    .await;
    assert_eq!(st.lost_samples, Some(17));
    assert_eq!(condition(&st).unwrap().reason, pressure_reasons::NO_LOSS);
}

#[tokio::test]
async fn the_leader_serves_reconcile_and_deletion_metrics() {
    let s = setup();
    let admin = s.admin().await;
    let agent = s.agent().await;
    let ns = "ctl-metrics";
    namespace(&admin, ns).await;
    let (leader, _) = poll("a lease holder", WAIT, || async {
        lease_holder(&admin)
            .await
            .filter(|(h, _)| REPLICAS.contains(&h.as_str()))
            .ok_or_else(|| "no holder".to_owned())
    })
    .await;
    let follower = REPLICAS.iter().find(|r| **r != leader).unwrap().to_string();
    let deleted = |text: &str, reason: &str| {
        sample(
            text,
            &format!(r#"weir_controller_podflows_deleted_total{{reason="{reason}"}}"#),
        )
        .unwrap_or_else(|| panic!("no deletions by {reason} in:\n{text}"))
    };
    let reconciles = |text: &str| {
        sample(
            text,
            r#"weir_controller_reconciles_total{kind="CaptureProfile"}"#,
        )
        .unwrap_or_else(|| panic!("no reconcile count in:\n{text}"))
    };
    let before = scrape(&leader).unwrap();
    assert_eq!(sample(&before, "weir_controller_leader"), Some(1.0));
    let other = scrape(&follower).unwrap();
    assert_eq!(
        sample(&other, "weir_controller_leader"),
        Some(0.0),
        "{other}"
    );
    assert_eq!(
        sample(
            &other,
            r#"weir_controller_reconcile_duration_seconds_count{kind="CaptureProfile"}"#
        ),
        Some(0.0),
        "the follower does not reconcile: {other}"
    );

    // One flow past the TTL, three for a cap of two, then the profile goes.
    let web = pod(&admin, ns, "web-1", "web", "node-a", "10.244.1.5", false).await;
    let db = pod(&admin, ns, "db-0", "db", "node-b", "10.244.2.6", false).await;
    profile(
        &admin,
        ns,
        "m",
        json!({ "podSelector": {}, "flushInterval": "1s", "flowTTL": "1m", "maxPodFlows": 2 }),
    )
    .await;
    let now = Timestamp::now();
    for (port, age) in [(80u16, 600i64), (81, 10), (82, 30), (83, 20)] {
        let o = observer(
            "node-a",
            (1, 60),
            (0, 0),
            now - SignedDuration::from_secs(age),
            None,
        );
        agent_apply(&agent, ns, &spec("m", &web, &db, port), &web, &o).await;
    }
    poll("one expired and one evicted", WAIT, || async {
        let names = flow_names(&admin, ns).await;
        if names.len() == 2 {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;
    Api::<CaptureProfile>::namespaced(admin.clone(), ns)
        .delete("m", &DeleteParams::default())
        .await
        .unwrap();
    poll("the profile's flows deleted with it", WAIT, || async {
        let names = flow_names(&admin, ns).await;
        if names.is_empty() {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;

    let after = poll("the leader's counts", WAIT, || async {
        let text = scrape(&leader)?;
        if deleted(&text, "profile_deleted") >= deleted(&before, "profile_deleted") + 2.0 {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;
    assert!(
        deleted(&after, "ttl") >= deleted(&before, "ttl") + 1.0,
        "{after}"
    );
    assert!(
        deleted(&after, "cap") >= deleted(&before, "cap") + 1.0,
        "{after}"
    );
    assert!(reconciles(&after) >= reconciles(&before) + 3.0, "{after}");
    let durations = sample(
        &after,
        r#"weir_controller_reconcile_duration_seconds_count{kind="CaptureProfile"}"#,
    )
    .unwrap();
    assert_eq!(
        Some(durations),
        sample(
            &after,
            r#"weir_controller_reconciles_total{kind="CaptureProfile"}"#
        )
    );
    assert!(
        sample(
            &after,
            r#"weir_controller_reconciles_total{kind="OrphanSweep"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "the sweep runs every 2 s: {after}"
    );
    assert!(
        sample(&after, "weir_controller_podflow_summaries_total").is_some_and(|n| n >= 2.0),
        "{after}"
    );
    assert_eq!(sample(&after, "weir_controller_leader"), Some(1.0));
    assert!(after.trim_end().ends_with("# EOF"));
}

/// The conditions of PodFlow `name` as "Type=Status Reason" strings.
async fn flow_conditions(client: &kube::Client, ns: &str, name: &str) -> Vec<String> {
    let flow = Api::<PodFlow>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("get PodFlow");
    let mut out: Vec<String> = flow
        .status
        .map(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .map(|c| format!("{}={} {}", c.type_, c.status, c.reason))
        .collect();
    out.sort();
    out
}

/// Alert Events of the namespace: (reason, regarding kind/name, related
/// name, how many times it was told: its series' count, else 1).
async fn alert_events(client: &kube::Client, ns: &str) -> Vec<(String, String, String, i32)> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.action.as_deref() == Some("Alert") && e.type_.as_deref() == Some("Warning"))
        .map(|e| {
            let regarding = e.regarding.unwrap_or_default();
            (
                e.reason.unwrap_or_default(),
                format!(
                    "{}/{}",
                    regarding.kind.unwrap_or_default(),
                    regarding.name.unwrap_or_default()
                ),
                e.related.and_then(|r| r.name).unwrap_or_default(),
                e.series.map_or(1, |s| s.count),
            )
        })
        .collect()
}

/// A sample summed over both replicas (the leader may change mid-test).
fn summed(series: &str) -> f64 {
    REPLICAS
        .iter()
        .filter_map(|id| scrape(id).ok())
        .filter_map(|text| sample(&text, series))
        .sum()
}

#[tokio::test]
async fn alerts_become_conditions_events_and_metrics_without_a_storm() {
    let s = setup();
    let admin = s.admin().await;
    let agent = s.agent().await;
    let ns = "ctl-alerts";
    namespace(&admin, ns).await;
    let web = pod(&admin, ns, "web-1", "web", "node-a", "10.244.1.15", false).await;
    let db = pod(&admin, ns, "db-0", "db", "node-b", "10.244.2.17", false).await;
    // No learning window: every peer is new. One Event per conversation
    // and alert per hour.
    profile(
        &admin,
        ns,
        "watch",
        json!({
            "podSelector": {}, "flushInterval": "1s", "flowTTL": "1h",
            "alerts": {
                "eventInterval": "1h",
                "newPeer": { "learningWindow": "0s" },
                "rateSpike": { "bytesPerSecond": 100000, "window": "2s" },
                "tcpResets": { "count": 2 },
                "overlayLoss": { "packets": 3 },
            },
        }),
    )
    .await;

    // The learning window (none here) starts when the controller first
    // sees newPeer: conversations that began before it are learned.
    let since = poll("status.learningSince", WAIT, || async {
        status_of(&admin, ns, "watch")
            .await?
            .learning_since
            .ok_or_else(|| "no learningSince yet".to_owned())
    })
    .await;
    // web-1 → db-0, begun after it: 3 of 4 connections reset; node-a sent
    // 10 packets into the overlay, node-b took 7 out; then quiet.
    let quiet = since.0 + SignedDuration::from_secs(1);
    let conversation = spec("watch", &web, &db, 5432);
    let mut a = observer(
        "node-a",
        (10, 1500),
        (0, 0),
        quiet,
        Some(vx("192.168.0.1", "192.168.0.2", 10, 0)),
    );
    a.tcp = Some(TcpConnections {
        connections: 4,
        resets: 3,
    });
    a.first_seen = Some(Time(quiet));
    let mut b = observer(
        "node-b",
        (7, 1050),
        (0, 0),
        quiet,
        Some(vx("192.168.0.2", "192.168.0.1", 0, 7)),
    );
    b.first_seen = Some(Time(quiet));
    let name = agent_apply(&agent, ns, &conversation, &web, &a).await;
    agent_apply(&agent, ns, &conversation, &web, &b).await;

    let want = [
        "NewPeer=True UnknownPeer",
        "OverlayLoss=True PacketsLost",
        "RateSpike=False WithinLimits",
        "TCPResets=True ResetsSeen",
    ];
    poll("the alert conditions on the PodFlow", WAIT, || async {
        let got = flow_conditions(&admin, ns, &name).await;
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;

    // A spike: 2 MB more within a second or two.
    a.forward.bytes += 2_000_000;
    a.forward.packets += 1500;
    agent_apply(&agent, ns, &conversation, &web, &a).await;
    poll("RateSpike turns True", WAIT, || async {
        let got = flow_conditions(&admin, ns, &name).await;
        if got.contains(&"RateSpike=True AboveThreshold".to_owned()) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;

    // Each alert told once on the pod and once on the profile, related to
    // the PodFlow, although the controller judged it True every second.
    let events = poll(
        "one Event per alert on the pod and the profile",
        WAIT,
        || async {
            let events = alert_events(&admin, ns).await;
            if events.len() >= 8 {
                Ok(events)
            } else {
                Err(format!("{events:?}"))
            }
        },
    )
    .await;
    for alert in ["NewPeer", "OverlayLoss", "RateSpike", "TCPResets"] {
        for target in ["Pod/web-1", "CaptureProfile/watch"] {
            let told: Vec<i32> = events
                .iter()
                .filter(|(r, t, rel, _)| r == alert && t == target && *rel == name)
                .map(|e| e.3)
                .collect();
            assert_eq!(told, [1], "{alert} on {target}, told once: {events:?}");
        }
    }
    let raised = |alert: &str| {
        summed(&format!(
            r#"weir_alerts_total{{namespace="{ns}",profile="watch",alert="{alert}"}}"#
        ))
    };
    for alert in ["NewPeer", "OverlayLoss", "RateSpike", "TCPResets"] {
        assert_eq!(raised(alert), 1.0, "{alert} raised once");
    }
    poll("repeats held back by the event interval", WAIT, || async {
        let held = summed(&format!(
            r#"weir_alert_events_total{{namespace="{ns}",outcome="within_interval"}}"#
        ));
        if held > 0.0 {
            Ok(())
        } else {
            Err("no repeat held back yet".to_owned())
        }
    })
    .await;

    // A storm: 40 new peers at once. The namespace's budget (30 Events a
    // minute by default) lets fewer out; the rest are counted, and every
    // PodFlow still carries its condition.
    let before = alert_events(&admin, ns).await.len();
    let mut names = Vec::new();
    for i in 0..40u8 {
        let to = DestinationEndpoint::address(&format!("198.18.{i}.1"), Some(443));
        let storm = PodFlowSpec {
            destination: to,
            ..spec("watch", &web, &db, 443)
        };
        let mut o = observer("node-a", (1, 60), (0, 0), Timestamp::now(), None);
        o.first_seen = o.last_seen.clone();
        names.push(agent_apply(&agent, ns, &storm, &web, &o).await);
    }
    poll("every storm PodFlow judged a new peer", WAIT, || async {
        for n in &names {
            let got = flow_conditions(&admin, ns, n).await;
            if !got.contains(&"NewPeer=True UnknownPeer".to_owned()) {
                return Err(format!("{n}: {got:?}"));
            }
        }
        Ok(())
    })
    .await;
    let budget = summed(&format!(
        r#"weir_alert_events_total{{namespace="{ns}",outcome="namespace_budget"}}"#
    ));
    let sent_now = (alert_events(&admin, ns).await.len() - before) / 2;
    assert!(budget >= 1.0, "the namespace budget held some back");
    assert!(
        sent_now < 40 && sent_now as f64 + budget >= 40.0,
        "{sent_now} sent, {budget} held back by the budget"
    );
    assert_eq!(raised("NewPeer"), 41.0, "every new peer is counted");
}
