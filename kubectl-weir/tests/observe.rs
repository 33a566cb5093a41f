//! `kubectl weir observe` end to end against a real API server: the real
//! binary finds the agent pods, streams from the agent's real HTTP endpoint
//! (run in-process with a flow table holding flows of namespaces a and b)
//! with the user's token, which the agent reviews with the API server; the
//! user may get pods in a only, so even with -A only a's flows arrive. An
//! agent that cannot be reached is named.

use std::io::{BufRead as _, BufReader};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use weir_e2e::controlplane::ControlPlane;
use weir_ebpf::abi::{Direction, FlowCounters, FlowKey};
use weir_node_state::AttachmentRecord;
use weir_operator::agent::authz::FlowAuthz;
use weir_operator::agent::reading::FlowSink as _;
use weir_operator::agent::server::{self, Endpoints};
use weir_operator::agent::stream::Hub;
use weir_operator::agent::table::FlowTable;

fn record(pod_id: u32, namespace: &str, pod: &str) -> AttachmentRecord {
    weir_e2e::fixtures::attachment_record(pod_id, Some(namespace), pod)
}

fn table() -> FlowTable {
    let mut table = FlowTable::new("node-1");
    let directory: std::collections::HashMap<IpAddr, weir_operator::agent::peers::Peer> =
        Default::default();
    let mut round = table.round(&directory);
    round.records(&[record(1, "a", "web"), record(2, "b", "db")]);
    for (pod_id, dport) in [(1, 80), (1, 443), (2, 5432)] {
        let mut k = FlowKey {
            pod_id,
            direction: Direction::FromPod as u8,
            proto: 6,
            sport: 40000,
            dport,
            ..Default::default()
        };
        k.set_addrs(
            format!("10.244.0.{pod_id}").parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
        );
        round.pod_flow(
            &k,
            &FlowCounters {
                packets: 3,
                bytes: 300,
                ..Default::default()
            },
        );
    }
    round.finish(None, true);
    table
}

async fn agent_pod(client: &kube::Client, name: &str, node: &str, port: u16) {
    let api: Api<Pod> = Api::namespaced(client.clone(), "weir-system");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "weir", "app.kubernetes.io/component": "agent"}},
        "spec": {"nodeName": node, "automountServiceAccountToken": false, "containers": [{"name": "agent", "image": "example.invalid/weir", "ports": [{"name": "metrics", "containerPort": port}]}]}
    }))
    .unwrap();
    api.create(&PostParams::default(), &pod).await.unwrap();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}})),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_streams_the_namespaces_the_user_may_read_and_names_an_unreachable_agent() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.expect("a client for the control plane");
    for ns in ["weir-system", "a", "b"] {
        weir_e2e::objects::create_namespace_for_pods(&client, ns)
            .await
            .unwrap();
    }
    cp.kubectl_ok(["create", "serviceaccount", "observer", "-n", "a"])
        .unwrap();
    cp.apply(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: pod-reader, namespace: a}\nrules: [{apiGroups: [''], resources: [pods], verbs: [get]}]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: observer, namespace: a}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}\nsubjects: [{kind: ServiceAccount, name: observer, namespace: a}]\n",
    )
    .unwrap();
    let token = cp
        .kubectl_ok(["create", "token", "observer", "-n", "a"])
        .unwrap()
        .trim()
        .to_owned();

    // The agent of node-1 (reachable) and one of node-2 (its port closed).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let hub = Arc::new(Hub::new("node-1"));
    let endpoints = Arc::new(Endpoints {
        registry: Default::default(),
        flows: Arc::new(Mutex::new(table())),
        authz: Some(Arc::new(FlowAuthz::new(client.clone()))),
        stream: hub.clone(),
        node: "node-1".into(),
    });
    tokio::spawn(server::serve(
        listener,
        endpoints,
        weir_operator::http::Readiness::waiting("a test"),
    ));
    agent_pod(&client, "weir-agent-one", "node-1", port).await;
    agent_pod(&client, "weir-agent-two", "node-2", closed_port).await;

    let child = Command::new(env!("CARGO_BIN_EXE_kubectl-weir"))
        .env_remove("KUBECONFIG")
        .arg(format!("--kubeconfig={}", cp.kubeconfig_path().display()))
        .args([
            "observe",
            "--via",
            "direct",
            "-A",
            "-o",
            "jsonl",
            "--timeout",
            "60s",
            "--token",
            &token,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    weir_e2e::wait::eventually(
        Duration::from_secs(30),
        "observe connects to the agent",
        || {
            let listening = hub.listening();
            async move { anyhow::Ok(listening.then_some(())) }
        },
    )
    .await
    .unwrap();
    let views = table().views();
    hub.publish(&views);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "observe failed: {stderr}");
    let lines: Vec<Value> = BufReader::new(stdout.as_bytes())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "a's two flows only, though -A:\n{stdout}");
    for l in &lines {
        assert_eq!(l["flow"]["namespace"], "a", "{l}");
        assert_eq!(l["delta"]["packets"], 3, "{l}");
        assert_eq!(l["node"], "node-1");
    }
    assert!(
        stderr.contains("agent weir-agent-two on node node-2") && stderr.contains("unreachable"),
        "the unreachable agent is named: {stderr}"
    );

    // A token the API server refuses: told so.
    let refused = Command::new(env!("CARGO_BIN_EXE_kubectl-weir"))
        .env_remove("KUBECONFIG")
        .arg(format!("--kubeconfig={}", cp.kubeconfig_path().display()))
        .args([
            "observe",
            "--via",
            "direct",
            "-A",
            "--node",
            "node-1",
            "--token",
            "not-a-token",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("your token was refused (401"), "{stderr}");

    // Through the API server (the default), to nodes without a kubelet:
    // each agent is named with why (the local cluster test streams this way).
    let forwarded = Command::new(env!("CARGO_BIN_EXE_kubectl-weir"))
        .env_remove("KUBECONFIG")
        .arg(format!("--kubeconfig={}", cp.kubeconfig_path().display()))
        .args(["observe", "-A", "--timeout", "20s", "--token", &token])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&forwarded.stderr);
    assert!(!forwarded.status.success(), "{stderr}");
    for agent in [
        "weir-agent-one on node node-1",
        "weir-agent-two on node node-2",
    ] {
        assert!(
            stderr.contains(&format!("agent {agent}")) && stderr.contains("port-forward"),
            "{agent} is named with the port-forward's failure: {stderr}"
        );
    }
}
