//! install-cni's SIGTERM decision against a real API server (the control
//! plane harness): the agent DaemonSet there → keep weir's files; being
//! deleted, gone, or this pod's access to it revoked → uninstall; the API
//! server unreachable → keep. First the lookup itself, then the real
//! binary end to end.
//!
//! Without the control plane tools these tests fail, saying how to build
//! them.

mod install_cni_common;

use std::time::Duration;

use install_cni_common::*;
use k8s_openapi::api::apps::v1::DaemonSet;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use weir_e2e::controlplane::ControlPlane;
use weir_e2e::objects;
use weir_operator::install_cni::uninstall::{self, DaemonSetLookup, TermAction};

const DS: &str = "weir-agent";

fn daemonset(finalizer: bool) -> DaemonSet {
    let mut ds: DaemonSet = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": { "name": DS },
        "spec": {
            "selector": { "matchLabels": { "app": "weir-agent" } },
            "template": {
                "metadata": { "labels": { "app": "weir-agent" } },
                "spec": { "containers": [{ "name": "install-cni", "image": "weir:test" }] }
            }
        }
    }))
    .unwrap();
    if finalizer {
        ds.metadata.finalizers = Some(vec!["weir.dev/test-hold".into()]);
    }
    ds
}

async fn release(api: &Api<DaemonSet>) {
    api.patch(
        DS,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "metadata": { "finalizers": null } })),
    )
    .await
    .expect("remove the finalizer");
}

/// A kubeconfig for a server nobody listens on.
fn unreachable_kubeconfig(cp: &ControlPlane) -> std::path::PathBuf {
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cp.kubeconfig_path()).unwrap()).unwrap();
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1".into();
    let path = cp.dir().join("kubeconfig-install-cni-unreachable");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

async fn client_from(path: &std::path::Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(path).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
    kube::Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lookup_reads_the_daemonset_as_the_api_server_has_it() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = "install-cni-lookup";
    objects::create_namespace(&client, ns).await.unwrap();
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let budget = Duration::from_secs(10);
    let lookup = || uninstall::lookup(&client, ns, DS, budget);

    assert_eq!(lookup().await, DaemonSetLookup::Gone);
    api.create(&PostParams::default(), &daemonset(true))
        .await
        .unwrap();
    assert_eq!(lookup().await, DaemonSetLookup::Exists);
    assert_eq!(uninstall::decide(&lookup().await).0, TermAction::Keep);

    // Deleted while a finalizer holds it: deletionTimestamp set.
    api.delete(DS, &DeleteParams::default()).await.unwrap();
    assert_eq!(lookup().await, DaemonSetLookup::BeingDeleted);
    assert_eq!(uninstall::decide(&lookup().await).0, TermAction::Uninstall);
    release(&api).await;
    assert_eq!(lookup().await, DaemonSetLookup::Gone);
    assert_eq!(uninstall::decide(&lookup().await).0, TermAction::Uninstall);

    // A service account without the RBAC to read it: refused (403).
    api.create(&PostParams::default(), &daemonset(false))
        .await
        .unwrap();
    let nobody = cp
        .impersonating_kubeconfig("system:serviceaccount:install-cni-lookup:nobody", &[])
        .unwrap();
    let refused = uninstall::lookup(&client_from(&nobody).await, ns, DS, budget).await;
    assert!(
        matches!(&refused, DaemonSetLookup::AccessRevoked(m) if m.starts_with("403")),
        "{refused:?}"
    );

    // Nobody there: unreachable within the budget, and the files stay.
    let start = std::time::Instant::now();
    let unreachable = uninstall::lookup(
        &client_from(&unreachable_kubeconfig(cp)).await,
        ns,
        DS,
        Duration::from_secs(2),
    )
    .await;
    assert!(
        matches!(unreachable, DaemonSetLookup::Unreachable(_)),
        "{unreachable:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(uninstall::decide(&unreachable).0, TermAction::Keep);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_uninstalls_only_when_the_daemonset_is_gone() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = "install-cni-sigterm";
    objects::create_namespace(&client, ns).await.unwrap();
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &daemonset(false))
        .await
        .unwrap();

    let node = Node::new("sigterm");
    node.write_primary("10-flannel.conflist", FLANNEL);
    let kubeconfig = cp.kubeconfig_path().to_str().unwrap().to_owned();
    let with = |kubeconfig: &str| {
        args(&[
            "--kubeconfig",
            kubeconfig,
            "--daemonset-name",
            DS,
            "--daemonset-namespace",
            ns,
            "--term-api-timeout",
            "2s",
        ])
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<String>>()
    };
    let start = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let installer = node.start(&args);
        wait_for("the ready file", || node.ready.exists(), installer.logger());
        installer
    };

    // The DaemonSet is there: a restart; everything stays.
    let admin = with(&kubeconfig);
    let mut installer = tokio::task::block_in_place(|| start(&admin));
    installer.wait_log(&format!(
        "weir's files stay while DaemonSet {ns}/{DS} exists"
    ));
    assert!(installer.term().success());
    assert!(
        installer.log().contains(
            "leaving weir's conflist and binary in place: the agent DaemonSet still exists"
        ),
        "{}",
        installer.log()
    );
    assert!(node.weir_file().is_some() && node.binary_ok());

    // The API server unreachable: kept too.
    let unreachable = with(unreachable_kubeconfig(cp).to_str().unwrap());
    let mut installer = tokio::task::block_in_place(|| start(&unreachable));
    assert!(installer.term().success());
    assert!(
        installer
            .log()
            .contains("could not say whether the agent DaemonSet exists"),
        "{}",
        installer.log()
    );
    assert!(node.weir_file().is_some() && node.binary_ok());

    // The pod's access revoked (helm uninstall took the RBAC first): an
    // uninstall, and the start said it would be.
    let nobody = cp
        .impersonating_kubeconfig("system:serviceaccount:install-cni-sigterm:nobody", &[])
        .unwrap();
    let revoked = with(nobody.to_str().unwrap());
    let mut installer = tokio::task::block_in_place(|| start(&revoked));
    installer.wait_log("grant this pod `get` on daemonsets");
    assert!(installer.term().success());
    assert!(
        installer
            .log()
            .contains("uninstalling weir from this node: the API server refused"),
        "{}",
        installer.log()
    );
    assert!(node.weir_file().is_none());
    assert!(!node.bin.join("weir").exists());

    // Installed again; then the DaemonSet goes before the SIGTERM: the
    // node is left as it was, flannel's conflist and plugin alone.
    let mut installer = tokio::task::block_in_place(|| start(&admin));
    api.delete(DS, &DeleteParams::default()).await.unwrap();
    assert!(installer.term().success());
    assert!(
        installer
            .log()
            .contains("uninstalling weir from this node: the agent DaemonSet is gone (404)"),
        "{}",
        installer.log()
    );
    assert_eq!(
        node.conf_names(),
        std::collections::BTreeSet::from(["10-flannel.conflist".to_string()])
    );
    assert_eq!(
        names(&node.bin),
        std::collections::BTreeSet::from(["flannel".to_string()])
    );
}
