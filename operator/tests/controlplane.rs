//! weir's CRDs on a real control plane (etcd + kube-apiserver from
//! scripts/controlplane-tools.sh): they install and become Established,
//! valid objects are stored with their defaults, CEL rejects invalid ones
//! with weir's messages, two nodes' agents apply their own PodFlow observer
//! entries side by side, and `kubectl get` prints the columns.
//!
//! The tests share one control plane per test binary
//! (`ControlPlane::shared`), each in a namespace of its own. Without the
//! control plane tools they fail, saying how to build them.

use std::path::Path;
use std::sync::OnceLock;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use weir_api::capture_profile::{conditions, reasons};
use weir_api::pod_flow::{SUMMARY_FIELD_MANAGER, agent_field_manager};
use weir_api::{
    CaptureProfile, CaptureProfileSpec, CaptureProfileStatus, DestinationEndpoint,
    DirectionCounters, Observer, PodFlow, PodFlowSpec, PodFlowStatus, Protocol, SourceEndpoint,
    VxlanCounters,
};
use weir_e2e::controlplane::ControlPlane;
use weir_e2e::objects;

const CRDS: [&str; 2] = ["captureprofiles.weir.dev", "podflows.weir.dev"];

/// The shared control plane, with weir's CRDs (the files in crds/, which
/// `crds.rs` checks are current) installed and Established.
fn cluster() -> &'static ControlPlane {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let cp = ControlPlane::shared();
    let installed = INSTALLED.get_or_init(|| {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../crds"));
        cp.apply_path(dir)
            .and_then(|_| cp.wait_established(&CRDS))
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    });
    if let Err(e) = installed {
        panic!("installing weir's CRDs failed: {e}");
    }
    cp
}

/// A fresh namespace for one test.
async fn namespace(client: &kube::Client, name: &str) {
    objects::create_namespace(client, name)
        .await
        .expect("create namespace");
}

/// The API server's message for a rejected request.
fn api_message(err: kube::Error) -> (u16, String) {
    match err {
        kube::Error::Api(status) => (status.code, status.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn selector(app: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some([("app".to_owned(), app.to_owned())].into()),
        ..Default::default()
    }
}

#[test]
fn crds_are_established_with_their_short_names() {
    let cp = cluster();
    let out = cp
        .kubectl_ok(["api-resources", "--api-group=weir.dev", "--no-headers"])
        .unwrap();
    let line = |plural: &str| {
        out.lines()
            .find(|l| l.starts_with(plural))
            .unwrap_or_else(|| panic!("{plural} not served:\n{out}"))
            .to_owned()
    };
    let cp_line = line("captureprofiles");
    assert!(
        cp_line.contains("cprof,cp")
            && cp_line.contains("weir.dev/v1alpha1")
            && cp_line.contains("true"),
        "{cp_line}"
    );
    let pf_line = line("podflows");
    assert!(
        pf_line.contains("pf") && pf_line.contains("PodFlow"),
        "{pf_line}"
    );
    for crd in CRDS {
        let est = cp
            .kubectl_ok([
                "get",
                &format!("crd/{crd}"),
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="Established")].status}"#,
            ])
            .unwrap();
        assert_eq!(est, "True", "{crd}");
    }
    // `kubectl explain` reads the schema's descriptions (the API server
    // publishes a new CRD's OpenAPI a moment after it is Established).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let explain = cp
            .kubectl(["explain", "captureprofiles.spec.maxPodFlows"])
            .unwrap();
        let text = String::from_utf8_lossy(&explain.stdout);
        if text.contains("The most PodFlows this profile keeps") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kubectl explain: {text}{}",
            String::from_utf8_lossy(&explain.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

#[tokio::test]
async fn valid_captureprofile_is_stored_with_defaults_and_prints_its_columns() {
    let cp = cluster();
    let client = cp.client().await.unwrap();
    namespace(&client, "cp-valid").await;
    let api: Api<CaptureProfile> = Api::namespaced(client.clone(), "cp-valid");

    // Only a selector: the API server fills in the defaults.
    let minimal = serde_json::json!({
        "apiVersion": "weir.dev/v1alpha1",
        "kind": "CaptureProfile",
        "metadata": { "name": "web" },
        "spec": { "podSelector": { "matchLabels": { "app": "web" } } },
    });
    let created = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(minimal).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(created.spec, CaptureProfileSpec::selecting(selector("web")));
    assert_eq!(created.spec.flush_interval, "10s");
    assert_eq!(created.spec.flow_ttl, "5m");
    assert_eq!(created.spec.max_pod_flows, 500);
    assert_eq!(created.spec.check(), Ok(()));

    // A full one, through kubectl.
    let full = r#"
apiVersion: weir.dev/v1alpha1
kind: CaptureProfile
metadata:
  name: db
  namespace: cp-valid
spec:
  podSelector:
    matchExpressions:
    - { key: tier, operator: In, values: [db] }
  protocols: [TCP, ICMP]
  ports: [5432, 6432]
  peerCIDRs: [10.0.0.0/8, "fd00::/8"]
  mode: Counters
  flushInterval: 1m30s
  flowTTL: 1h
  maxPodFlows: 10000
"#;
    cp.kubectl_stdin_ok(["apply", "-f", "-"], full).unwrap();
    let db = api.get("db").await.unwrap();
    assert_eq!(db.spec.protocols, [Protocol::Tcp, Protocol::Icmp]);
    assert_eq!(db.spec.flush_interval().unwrap().as_secs(), 90);
    assert_eq!(db.spec.check(), Ok(()));

    // The controller's status, and the columns that print it.
    let status = CaptureProfileStatus {
        conditions: vec![Condition {
            type_: conditions::READY.into(),
            status: "True".into(),
            reason: reasons::ACTIVE.into(),
            message: "applied on 2 nodes".into(),
            observed_generation: created.metadata.generation,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        }],
        observed_generation: created.metadata.generation,
        matched_pods: Some(3),
        active_flows: Some(17),
        flows_dropped_by_cap: Some(0),
        lost_samples: Some(0),
        learning_since: None,
        nodes: Vec::new(),
    };
    let patch = serde_json::json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "CaptureProfile", "metadata": { "name": "web" }, "status": status,
    });
    api.patch_status(
        "web",
        &PatchParams::apply(SUMMARY_FIELD_MANAGER),
        &Patch::Apply(&patch),
    )
    .await
    .unwrap();
    let table = cp.kubectl_ok(["get", "cprof", "-n", "cp-valid"]).unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "MATCHED", "FLOWS", "AGE"],
        "{table}"
    );
    let web: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(&web[..4], ["web", "True", "3", "17"], "{table}");
    let wide = cp
        .kubectl_ok(["get", "captureprofiles", "-n", "cp-valid", "-o", "wide"])
        .unwrap();
    let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "READY", "MATCHED", "FLOWS", "MODE", "DROPPED", "LOST", "AGE"
        ],
        "{wide}"
    );
}

#[tokio::test]
async fn cel_rejects_invalid_captureprofiles_with_weirs_messages() {
    let cp = cluster();
    let client = cp.client().await.unwrap();
    namespace(&client, "cp-invalid").await;

    // Through kubectl: the message reaches the user.
    let cases: &[(&str, &str)] = &[
        ("maxPodFlows: 0", "maxPodFlows must be between 1 and 10000"),
        (
            "maxPodFlows: 10001",
            "maxPodFlows must be between 1 and 10000",
        ),
        ("mode: Pcap", "mode Pcap is not supported yet: use Counters"),
        ("mode: Sampled", "Unsupported value: \"Sampled\""),
        (
            "peerCIDRs: [10.0.0.0/8, 10.1.2.3]",
            "peerCIDRs must be CIDRs such as 10.0.0.0/8 or fd00::/8",
        ),
        (
            "flushInterval: 500ms",
            "flushInterval must be between 1s and 1h",
        ),
        ("flushInterval: soon", "spec.flushInterval"),
        ("flowTTL: 48h", "flowTTL must be between 1s and 24h"),
        (
            "{ flushInterval: 1m, flowTTL: 30s }",
            "flowTTL must be at least flushInterval",
        ),
        ("ports: [0]", "ports must be between 1 and 65535"),
        (
            "{ protocols: [ICMP], ports: [80] }",
            "ports select TCP or UDP conversations",
        ),
        ("protocols: [GRE]", "Unsupported value: \"GRE\""),
        (
            "alerts: {rateSpike: {window: 10s}}",
            "rateSpike needs bytesPerSecond, packetsPerSecond or baselineMultiplier",
        ),
        (
            "alerts: {tcpResets: {}}",
            "tcpResets needs count or percent",
        ),
        (
            "alerts: {tcpResets: {percent: 150}}",
            "alerts.tcpResets.percent must be between 1 and 100",
        ),
        (
            "alerts: {eventInterval: 1s}",
            "alerts.eventInterval must be between 10s and 24h",
        ),
        (
            "alerts: {newPeer: {ipv4PrefixLength: 40}}",
            "alerts.newPeer.ipv4PrefixLength must be between 0 and 32",
        ),
    ];
    for (i, (field, message)) in cases.iter().enumerate() {
        // A flow mapping `{ a: 1, b: 2 }` is spliced in as its entries.
        let fields = field
            .trim_start_matches("{ ")
            .trim_end_matches(" }")
            .replace(", ", "\n  ");
        let yaml = format!(
            "apiVersion: weir.dev/v1alpha1\nkind: CaptureProfile\nmetadata:\n  name: bad-{i}\n  namespace: cp-invalid\nspec:\n  podSelector: {{}}\n  {fields}\n"
        );
        let out = cp.kubectl_stdin(["apply", "-f", "-"], &yaml).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{field}: accepted\n{yaml}");
        assert!(
            stderr.contains(message),
            "{field}: expected {message:?} in:\n{stderr}"
        );
        assert!(stderr.contains("is invalid"), "{field}: {stderr}");
    }

    // Through the client: 422 Invalid, with the message, and nothing stored.
    let api: Api<CaptureProfile> = Api::namespaced(client, "cp-invalid");
    let mut spec = CaptureProfileSpec::selecting(LabelSelector::default());
    spec.max_pod_flows = 0;
    let err = api
        .create(&PostParams::default(), &CaptureProfile::new("zero", spec))
        .await
        .unwrap_err();
    let (code, message) = api_message(err);
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains("spec.maxPodFlows")
            && message.contains("maxPodFlows must be between 1 and 10000"),
        "{message}"
    );
    assert!(api.get_opt("zero").await.unwrap().is_none());
    assert!(
        api.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

fn flow_spec(ns: &str) -> PodFlowSpec {
    PodFlowSpec {
        source: SourceEndpoint::pod(ns, "web-1", "10.244.1.5", "node-a"),
        destination: DestinationEndpoint::pod(ns, "db-0", "10.244.2.7", "node-b", Some(5432)),
        protocol: Protocol::Tcp,
        profile: "web".into(),
    }
}

/// What `node` counted: the source pod's node (`source_side`) encapsulates
/// forward packets and decapsulates reverse ones, the destination's node
/// the other way round.
fn observer(
    node: &str,
    source_side: bool,
    fwd: (i64, i64),
    rev: (i64, i64),
    last: &str,
) -> Observer {
    let (out, inn) = if source_side { (fwd, rev) } else { (rev, fwd) };
    let (outer_source, outer_destination) = ("192.168.50.1", "192.168.50.2");
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
        first_seen: Some(Time("2026-01-01T00:00:00Z".parse().unwrap())),
        last_seen: Some(Time(last.parse().unwrap())),
        vxlan: Some(VxlanCounters {
            vni: Some(1),
            outer_source: Some(
                if source_side {
                    outer_source
                } else {
                    outer_destination
                }
                .into(),
            ),
            outer_destination: Some(
                if source_side {
                    outer_destination
                } else {
                    outer_source
                }
                .into(),
            ),
            encap_packets: out.0,
            encap_bytes: out.1 + 50 * out.0,
            decap_packets: inn.0,
            decap_bytes: inn.1 + 50 * inn.0,
            loss_packets: None,
        }),
        tcp: None,
    }
}

/// The managers of the status subresource and the observer keys each owns.
fn observer_owners(pf: &PodFlow) -> Vec<(String, Vec<String>)> {
    let mut owners: Vec<(String, Vec<String>)> = pf
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .map(|m| {
            let fields = m
                .fields_v1
                .as_ref()
                .map(|f| f.0.to_string())
                .unwrap_or_default();
            let keys = ["node-a", "node-b"]
                .into_iter()
                .filter(|n| fields.contains(&format!(r#"k:{{\"node\":\"{n}\"}}"#)))
                .map(String::from)
                .collect();
            (m.manager.clone().unwrap_or_default(), keys)
        })
        .collect();
    owners.sort();
    owners
}

#[tokio::test]
async fn podflow_observers_from_two_nodes_coexist_and_print() {
    let cp = cluster();
    let client = cp.client().await.unwrap();
    let ns = "pf-observers";
    namespace(&client, ns).await;
    let api: Api<PodFlow> = Api::namespaced(client, ns);
    let spec = flow_spec(ns);
    let name = spec.object_name();
    let (mgr_a, mgr_b) = (agent_field_manager("node-a"), agent_field_manager("node-b"));

    // Both agents apply the same spec: they share it, no conflict.
    let flow = PodFlow::new(&name, spec.clone());
    for mgr in [&mgr_a, &mgr_b] {
        api.patch(&name, &PatchParams::apply(mgr), &Patch::Apply(&flow))
            .await
            .unwrap();
    }

    // Each applies its own observer entry to the status subresource.
    let a = observer("node-a", true, (10, 1000), (8, 800), "2026-01-01T00:01:00Z");
    let b = observer(
        "node-b",
        false,
        (10, 1000),
        (8, 800),
        "2026-01-01T00:01:01Z",
    );
    api.patch_status(
        &name,
        &PatchParams::apply(&mgr_a),
        &Patch::Apply(PodFlow::observer_patch(&name, &a)),
    )
    .await
    .unwrap();
    api.patch_status(
        &name,
        &PatchParams::apply(&mgr_b),
        &Patch::Apply(PodFlow::observer_patch(&name, &b)),
    )
    .await
    .unwrap();
    let got = api.get(&name).await.unwrap();
    let status = got.status.clone().unwrap();
    assert_eq!(status.observers.len(), 2, "{status:?}");
    assert_eq!(
        status.observers.iter().find(|o| o.node == "node-a"),
        Some(&a)
    );
    assert_eq!(
        status.observers.iter().find(|o| o.node == "node-b"),
        Some(&b)
    );
    assert_eq!(
        observer_owners(&got),
        [
            (mgr_a.clone(), vec!["node-a".to_owned()]),
            (mgr_b.clone(), vec!["node-b".to_owned()])
        ],
        "each agent owns exactly its own entry"
    );

    // node-a's next flush replaces its entry and leaves node-b's alone.
    let a2 = observer(
        "node-a",
        true,
        (25, 2500),
        (20, 2000),
        "2026-01-01T00:02:00Z",
    );
    api.patch_status(
        &name,
        &PatchParams::apply(&mgr_a),
        &Patch::Apply(PodFlow::observer_patch(&name, &a2)),
    )
    .await
    .unwrap();
    let status = api.get(&name).await.unwrap().status.unwrap();
    assert_eq!(
        status.observers.iter().find(|o| o.node == "node-a"),
        Some(&a2)
    );
    assert_eq!(
        status.observers.iter().find(|o| o.node == "node-b"),
        Some(&b)
    );

    // node-a cannot take over node-b's entry by mistake: that is a conflict.
    let err = api
        .patch_status(
            &name,
            &PatchParams::apply(&mgr_a),
            &Patch::Apply(PodFlow::observer_patch(&name, &a2_as_b(&a2))),
        )
        .await
        .unwrap_err();
    let (code, message) = api_message(err);
    assert_eq!(code, 409, "{message}");
    assert!(message.contains(&mgr_b), "{message}");

    // node-b's next flush catches up with node-a.
    let b2 = observer(
        "node-b",
        false,
        (25, 2500),
        (20, 2000),
        "2026-01-01T00:02:01Z",
    );
    api.patch_status(
        &name,
        &PatchParams::apply(&mgr_b),
        &Patch::Apply(PodFlow::observer_patch(&name, &b2)),
    )
    .await
    .unwrap();
    let mut status = api.get(&name).await.unwrap().status.unwrap();
    status.observers.sort_by(|x, y| x.node.cmp(&y.node));
    assert_eq!(status.observers, [a2.clone(), b2.clone()]);

    // The summary's writer folds the observers into the printed fields.
    let summary = PodFlowStatus::summarize(&spec, &status.observers);
    api.patch_status(
        &name,
        &PatchParams::apply(SUMMARY_FIELD_MANAGER),
        &Patch::Apply(PodFlow::summary_patch(&name, &summary)),
    )
    .await
    .unwrap();
    let got = api.get(&name).await.unwrap().status.unwrap();
    assert_eq!(got.packets, Some(45));
    assert_eq!(got.bytes, Some(4500));
    assert_eq!(
        got.observers.len(),
        2,
        "the summary leaves the observers alone"
    );
    assert_eq!(got.vxlan.as_ref().and_then(|v| v.loss_packets), Some(0));

    let table = cp.kubectl_ok(["get", "podflows", "-n", ns]).unwrap();
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
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
        "{table}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..8],
        [
            name.as_str(),
            "pf-observers/web-1",
            "pf-observers/db-0",
            "TCP",
            "5432",
            "45",
            "4500",
            "1"
        ],
        "{table}"
    );
    assert!(
        row[8].ends_with('d') || row[8].ends_with('y'),
        "LAST-SEEN is an age: {table}"
    );

    let wide = cp
        .kubectl_ok(["get", "pf", "-n", ns, "-o", "wide"])
        .unwrap();
    let mut lines = wide.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
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
            "LAST-SEEN",
            "SRC-NODE",
            "DST-NODE",
            "OUTER-SRC",
            "OUTER-DST"
        ],
        "{wide}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &row[9..],
        ["node-a", "node-b", "192.168.50.1", "192.168.50.2"],
        "{wide}"
    );

    // The spec is the conversation: it cannot change, not even by force.
    let mut changed = spec.clone();
    changed.destination.port = Some(5433);
    changed.destination.display = spec.destination.display.clone();
    let err = api
        .patch(
            &name,
            &PatchParams::apply(&mgr_a).force(),
            &Patch::Apply(&PodFlow::new(&name, changed)),
        )
        .await
        .unwrap_err();
    let (code, message) = api_message(err);
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains("spec is immutable: a PodFlow is one conversation"),
        "{message}"
    );
}

fn a2_as_b(a: &Observer) -> Observer {
    Observer {
        node: "node-b".into(),
        ..a.clone()
    }
}

#[test]
fn cel_rejects_inconsistent_podflows() {
    let cp = cluster();
    cp.kubectl_ok(["create", "namespace", "pf-invalid"])
        .unwrap();
    let good_source = "{ pod: web-1, namespace: pf-invalid, ip: 10.244.1.5, node: node-a, display: pf-invalid/web-1 }";
    let good_dest = "{ ip: 1.1.1.1, port: 53, display: 1.1.1.1 }";
    let cases: &[(&str, &str, &str, &str)] = &[
        // (source, destination, protocol, expected message)
        (
            good_source,
            "{ ip: 1.1.1.1, display: 1.1.1.1 }",
            "UDP",
            "destination.port is required for TCP and UDP",
        ),
        (
            good_source,
            good_dest,
            "ICMP",
            "destination.port is required for TCP and UDP, and not allowed for ICMP",
        ),
        (
            good_source,
            "{ ip: 1.1.1.1, port: 0, display: 1.1.1.1 }",
            "UDP",
            "port must be between 1 and 65535",
        ),
        (
            good_source,
            "{ ip: 1.1.1.1, port: 70000, display: 1.1.1.1 }",
            "UDP",
            "port must be between 1 and 65535",
        ),
        (
            good_source,
            "{ ip: one.one, port: 53, display: one.one }",
            "UDP",
            "ip must be an IPv4 or IPv6 address",
        ),
        (
            "{ pod: web-1, namespace: pf-invalid, ip: 10.244.1.5, node: node-a, display: web-1 }",
            good_dest,
            "UDP",
            "display must be namespace/pod",
        ),
        (
            good_source,
            "{ ip: 1.1.1.1, port: 53, display: dns }",
            "UDP",
            "display must be namespace/pod for a pod, else the ip",
        ),
        (
            good_source,
            "{ pod: db-0, ip: 10.244.2.7, port: 5432, display: db-0 }",
            "TCP",
            "destination.pod and destination.namespace are set together",
        ),
        (
            good_source,
            good_dest,
            "SCTP",
            "Unsupported value: \"SCTP\"",
        ),
    ];
    for (i, (source, destination, protocol, message)) in cases.iter().enumerate() {
        let yaml = format!(
            "apiVersion: weir.dev/v1alpha1\nkind: PodFlow\nmetadata:\n  name: bad-{i}\n  namespace: pf-invalid\nspec:\n  source: {source}\n  destination: {destination}\n  protocol: {protocol}\n  profile: web\n"
        );
        let out = cp.kubectl_stdin(["create", "-f", "-"], &yaml).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} accepted:\n{yaml}");
        assert!(
            stderr.contains(message),
            "case {i}: expected {message:?} in:\n{stderr}\n{yaml}"
        );
    }
    // The same fields, consistent, are accepted.
    let yaml = format!(
        "apiVersion: weir.dev/v1alpha1\nkind: PodFlow\nmetadata:\n  name: good\n  namespace: pf-invalid\nspec:\n  source: {good_source}\n  destination: {good_dest}\n  protocol: UDP\n  profile: web\n"
    );
    cp.kubectl_stdin_ok(["create", "-f", "-"], &yaml).unwrap();
}

#[test]
fn a_control_plane_of_its_own_stops_on_drop() {
    let cp = ControlPlane::start().expect("control plane");
    assert_eq!(
        cp.kubectl_ok(["get", "--raw", "/readyz"]).unwrap().trim(),
        "ok"
    );
    let version = cp.kubectl_ok(["version", "-o", "json"]).unwrap();
    let version: serde_json::Value = serde_json::from_str(&version).unwrap();
    assert_eq!(
        version["serverVersion"]["gitVersion"],
        weir_e2e::controlplane::kubernetes_version(),
        "{version}"
    );
    // The admin is in system:masters, and RBAC is on.
    let whoami = cp
        .kubectl_ok(["auth", "whoami", "-o", "jsonpath={.status.userInfo.groups}"])
        .unwrap();
    assert!(whoami.contains("system:masters"), "{whoami}");
    let can = cp
        .kubectl(["auth", "can-i", "list", "pods", "--as=nobody"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&can.stdout).trim(), "no");

    let pids = cp.pids();
    let dir = cp.dir().to_owned();
    assert_eq!(pids.len(), 2);
    let stopping = std::time::Instant::now();
    drop(cp);
    eprintln!("control plane stopped in {:?}", stopping.elapsed());
    for pid in pids {
        // SAFETY: probing a pid with signal 0.
        let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
        assert!(!alive, "process {pid} still runs after drop");
    }
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
}
