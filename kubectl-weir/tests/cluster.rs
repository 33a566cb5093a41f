//! The real `kubectl-weir` binary against a real API server (etcd +
//! kube-apiserver from the control plane harness): errors a user can act
//! on (no cluster, no CRDs, no CaptureProfile, no RBAC), then Deployments,
//! ReplicaSets, a StatefulSet's and a bare pod, PodFlows between them, and
//! what `graph` and `top` make of them.
//!
//! Needs the control plane binaries (scripts/controlplane-tools.sh); the
//! test fails and says what to build when they are missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kubectl_weir::fixture::{FakePod, podflow};
use serde_json::json;
use weir_api::PodFlow;
use weir_e2e::controlplane::ControlPlane;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn kubectl_weir(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-weir"))
        .env_remove("KUBECONFIG")
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .output()
        .expect("running kubectl-weir")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails_with(out: Output, needle: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{what} should fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains(needle),
        "{what}: stderr lacks {needle:?}: {stderr}"
    );
}

fn labels() -> serde_json::Value {
    json!({"app": "x"})
}

async fn create_ns(client: &kube::Client, name: &str) {
    weir_e2e::objects::create_namespace_for_pods(client, name)
        .await
        .unwrap();
}

fn pod_json(ns: &str, name: &str, owner: Option<(&str, &str, &str, &str)>) -> Pod {
    let mut meta = json!({"name": name, "namespace": ns, "labels": labels()});
    if let Some((api_version, kind, oname, uid)) = owner {
        meta["ownerReferences"] = json!([{"apiVersion": api_version, "kind": kind, "name": oname, "uid": uid, "controller": true}]);
    }
    serde_json::from_value(json!({
        "metadata": meta,
        "spec": {"automountServiceAccountToken": false, "containers": [{"name": "c", "image": "registry.invalid/x:1"}]}
    }))
    .unwrap()
}

fn workload_spec() -> serde_json::Value {
    json!({
        "selector": {"matchLabels": labels()},
        "template": {"metadata": {"labels": labels()}, "spec": {"containers": [{"name": "c", "image": "registry.invalid/x:1"}]}}
    })
}

fn fake(ns: &str, name: &str, node: &str, ip: &str) -> FakePod {
    FakePod {
        namespace: ns.into(),
        name: name.into(),
        deployment: String::new(),
        node: node.into(),
        ip: ip.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_and_top_against_a_real_api_server_with_actionable_errors() {
    // No cluster: a kubeconfig whose server refuses connections.
    let dir = std::env::temp_dir().join(format!("kubectl-weir-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dead = dir.join("dead-kubeconfig");
    std::fs::write(
        &dead,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}]\nusers: [{name: u, user: {token: x}}]\ncontexts: [{name: c, context: {cluster: c, user: u, namespace: shop}}]\ncurrent-context: c\n",
    )
    .unwrap();
    fails_with(
        kubectl_weir(&dead, &["graph", "-o", "dot"]),
        "no cluster access",
        "graph without a cluster",
    );
    fails_with(
        kubectl_weir(&dir.join("missing"), &["top", "--once"]),
        "no cluster access",
        "top with a missing kubeconfig",
    );

    let cp = ControlPlane::shared();
    let admin = cp.kubeconfig_path().to_path_buf();
    let client = cp.client().await.expect("a client for the control plane");

    // No CRDs yet.
    fails_with(
        kubectl_weir(&admin, &["graph", "-n", "shop", "-o", "dot"]),
        "weir's CRDs are not installed",
        "graph before the CRDs",
    );
    cp.apply_path(&repo_root().join("crds")).unwrap();
    cp.wait_established(&["captureprofiles.weir.dev", "podflows.weir.dev"])
        .unwrap();

    create_ns(&client, "shop").await;
    create_ns(&client, "pay").await;
    // No CaptureProfile in shop.
    fails_with(
        kubectl_weir(&admin, &["graph", "-n", "shop", "-o", "dot"]),
        "no CaptureProfile in namespace shop",
        "graph without a profile",
    );
    cp.apply(
        "apiVersion: weir.dev/v1alpha1\nkind: CaptureProfile\nmetadata: {name: all, namespace: shop}\nspec: {podSelector: {}}\n",
    )
    .unwrap();

    // shop: Deployment web → ReplicaSet → 2 pods; StatefulSet db → db-0;
    // pay: a bare pod.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let web = deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": workload_spec()}))
                .unwrap(),
        )
        .await
        .unwrap();
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "shop");
    let rs = rss
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "web-5d8f", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": web.metadata.uid.unwrap(), "controller": true}]},
                "spec": workload_spec()
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let rs_uid = rs.metadata.uid.unwrap();
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "shop");
    let db = sts
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "db"}, "spec": {"serviceName": "db", "selector": {"matchLabels": labels()}, "template": workload_spec()["template"]}})).unwrap())
        .await
        .unwrap();
    let db_uid = db.metadata.uid.unwrap();
    let shop_pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    for name in ["web-5d8f-aaaaa", "web-5d8f-bbbbb"] {
        shop_pods
            .create(
                &PostParams::default(),
                &pod_json(
                    "shop",
                    name,
                    Some(("apps/v1", "ReplicaSet", "web-5d8f", &rs_uid)),
                ),
            )
            .await
            .unwrap();
    }
    shop_pods
        .create(
            &PostParams::default(),
            &pod_json(
                "shop",
                "db-0",
                Some(("apps/v1", "StatefulSet", "db", &db_uid)),
            ),
        )
        .await
        .unwrap();
    let pay_pods: Api<Pod> = Api::namespaced(client.clone(), "pay");
    pay_pods
        .create(
            &PostParams::default(),
            &pod_json("pay", "api-standalone", None),
        )
        .await
        .unwrap();

    let web_a = fake("shop", "web-5d8f-aaaaa", "node-a", "10.244.1.10");
    let web_b = fake("shop", "web-5d8f-bbbbb", "node-a", "10.244.1.11");
    let db0 = fake("shop", "db-0", "node-b", "10.244.2.20");
    let api = fake("pay", "api-standalone", "node-b", "10.244.2.30");
    let flows: Vec<PodFlow> = vec![
        podflow(&web_a, Some(&db0), "", 5432, 40_000_000, 100, Some(1), 5),
        podflow(&web_b, Some(&db0), "", 5432, 20_000_000, 100, Some(1), 0),
        podflow(&web_a, None, "198.51.100.7", 443, 1_500_000, 30, None, 0),
        podflow(&web_b, Some(&api), "", 8080, 300_000, 10, Some(1), 0),
    ];
    let pf_api: Api<PodFlow> = Api::namespaced(client.clone(), "shop");
    for pf in &flows {
        let mut create = pf.clone();
        create.status = None;
        let created = pf_api
            .create(&PostParams::default(), &create)
            .await
            .unwrap();
        pf_api
            .patch_status(
                created.metadata.name.as_deref().unwrap(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": pf.status})),
            )
            .await
            .unwrap();
    }

    // graph -o dot: workloads by owner chain, edges with bytes, VNI, loss.
    let dot = ok(
        kubectl_weir(&admin, &["graph", "-n", "shop", "-o", "dot"]),
        "graph -o dot",
    );
    for needle in [
        "id=\"node:shop/Deployment/web\"",
        "id=\"node:shop/StatefulSet/db\"",
        "id=\"node:pay/Pod/api-standalone\"",
        "id=\"node:198.51.100.7\"",
        "label=\"shop\"",
        "label=\"pay\"",
        "id=\"edge:shop/Deployment/web->shop/StatefulSet/db\"",
        "label=\"57.2 MiB · 585.9 KiB/s\\nVNI 1\\nlost 5 pkts\"",
        "class=\"flow cross-node loss\"",
    ] {
        assert!(dot.contains(needle), "graph -o dot lacks {needle}:\n{dot}");
    }
    // --top 1: the busiest edge and the rest as (other) per namespace pair.
    let dot1 = ok(
        kubectl_weir(&admin, &["graph", "-n", "shop", "-o", "dot", "--top", "1"]),
        "graph --top 1",
    );
    assert!(
        dot1.contains("id=\"edge:shop/Deployment/web->shop/StatefulSet/db\""),
        "{dot1}"
    );
    assert!(
        dot1.contains("id=\"edge:shop/(other)->pay/(other)\""),
        "{dot1}"
    );
    assert!(
        dot1.contains("id=\"edge:shop/(other)->(other addresses)\""),
        "{dot1}"
    );
    // Mermaid and SVG/HTML come from the same graph.
    let mermaid = ok(
        kubectl_weir(&admin, &["graph", "-n", "shop", "-o", "mermaid"]),
        "graph -o mermaid",
    );
    assert!(
        mermaid.starts_with("flowchart LR") && mermaid.contains("sts/db"),
        "{mermaid}"
    );
    let html = ok(
        kubectl_weir(&admin, &["graph", "-A", "-o", "html"]),
        "graph -o html",
    );
    assert!(
        html.contains("<svg") && html.contains("deploy/web"),
        "{html}"
    );

    // top: by workload, bytes; web counts its three conversations.
    let top = ok(
        kubectl_weir(&admin, &["top", "-n", "shop", "--by", "workload", "--once"]),
        "top",
    );
    let lines: Vec<&str> = top.lines().collect();
    assert!(lines[0].starts_with("WORKLOAD"), "{top}");
    assert!(lines[1].starts_with("shop/Deployment/web "), "{top}");
    assert_eq!(
        lines[1].split_whitespace().last(),
        Some("4"),
        "web has 4 flows: {top}"
    );
    assert!(lines[2].starts_with("shop/StatefulSet/db "), "{top}");
    assert_eq!(
        lines[2].split_whitespace().last(),
        Some("2"),
        "db has 2 flows: {top}"
    );
    let pairs = ok(
        kubectl_weir(
            &admin,
            &[
                "top",
                "-A",
                "--by",
                "node-pair",
                "--sort",
                "packets",
                "--once",
            ],
        ),
        "top node-pair",
    );
    assert!(
        pairs.lines().nth(1).unwrap().starts_with("node-a → node-b"),
        "{pairs}"
    );
    // Not a terminal: --watch prints frames one after another, --count stops.
    let watch = ok(
        kubectl_weir(
            &admin,
            &[
                "top",
                "-n",
                "shop",
                "--watch",
                "--interval",
                "200ms",
                "--count",
                "2",
                "--sort",
                "rate",
            ],
        ),
        "top --watch",
    );
    assert_eq!(watch.matches("kubectl weir top").count(), 2, "{watch}");

    // A user without RBAC is told what is missing.
    let nobody = cp.impersonating_kubeconfig("nobody", &[]).unwrap();
    fails_with(
        kubectl_weir(&nobody, &["graph", "-n", "shop", "-o", "dot"]),
        "not allowed while listing PodFlows in namespace shop (403 Forbidden)",
        "graph without RBAC",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
